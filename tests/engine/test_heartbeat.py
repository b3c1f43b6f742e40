"""The heartbeat keeps a runner's lease while the flow's event loop is blocked.

A flow body that blocks its loop (sync code in an async flow, a CPU-bound step) must not lose
its lease: another process would take the execution over and run its work a second time. The
heartbeat is a thread of its own; for PostgreSQL it renews on its own event loop and connection,
never through the (here blocked) loop that drives flows."""

from __future__ import annotations

import threading
from pathlib import Path

import anyio

from kitaru import flow
from kitaru._engine.runtime import Runtime, use_runtime
from kitaru.store.filesystem import FilesystemArtifactStore

BLOCKING = threading.Event()
RELEASE = threading.Event()


@flow
async def blocks_its_loop() -> str:
    BLOCKING.set()
    # Blocks the event loop (this is the user's mistake the heartbeat must survive), bounded.
    RELEASE.wait(60)
    return "done"


def _lease_expiries(dsn: str, seen: list[float], within: float) -> None:
    """Record each new lease expiry of the running execution, read on a connection of this
    thread's own (as another process would see it), until it was renewed twice or ``within``
    seconds passed."""
    from kitaru.store.postgres import PostgresStateStore

    async def watch() -> None:
        store = PostgresStateStore(dsn)
        try:
            with anyio.move_on_after(within):
                while True:
                    for record in await store.list_executions(status="running"):
                        if record.lease_expires_at and (not seen or record.lease_expires_at > seen[-1]):
                            seen.append(record.lease_expires_at)
                    if len(seen) >= 3:  # renewed twice while the loop was blocked
                        return
                    await anyio.sleep(0.02)
        finally:
            await store.aclose()

    anyio.run(watch)


def test_a_blocked_flow_loop_keeps_its_postgres_lease(postgres_dsn: str, tmp_path: Path) -> None:
    from kitaru.store.postgres import PostgresStateStore

    BLOCKING.clear()
    RELEASE.clear()
    runtime = Runtime(
        PostgresStateStore(postgres_dsn),
        FilesystemArtifactStore(tmp_path / "artifacts"),
        lease_ttl=3.0,
        heartbeat_interval=0.05,
    )
    seen: list[float] = []

    def watcher() -> None:
        try:
            if BLOCKING.wait(60):
                _lease_expiries(postgres_dsn, seen, within=20)
        finally:
            RELEASE.set()  # unblock the flow whatever was seen

    thread = threading.Thread(target=watcher)
    try:
        with use_runtime(runtime):
            thread.start()
            # An async flow started from sync code runs on kitaru's portal loop, which its body
            # now blocks.
            handle = blocks_its_loop.run()
            assert handle.wait(timeout=60) == "done"
    finally:
        RELEASE.set()
        thread.join(60)
        runtime.close()
    assert len(seen) >= 3, f"the lease was not renewed while the flow's loop was blocked: {seen}"
