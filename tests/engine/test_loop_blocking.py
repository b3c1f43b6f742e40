"""Nothing an async flow does blocks its event loop: commits, uploads and downloads, retry backoff
and waits all leave the loop's thread free. Proven by instrumenting the loop's thread so that a
blocking socket operation or ``time.sleep`` on it fails the test (not a timing assertion)."""

from __future__ import annotations

import inspect
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

import kitaru
from kitaru import KitaruClient, checkpoint, flow
from kitaru._engine.runtime import Runtime, use_runtime
from kitaru.store.filesystem import FilesystemArtifactStore

BLOCKED: list[str] = []
LOOP_THREAD: list[int] = []
ATTEMPTS: list[int] = []


def _on_loop() -> bool:
    return bool(LOOP_THREAD) and threading.get_ident() == LOOP_THREAD[0]


@pytest.fixture
def loop_guard(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Record (and refuse) blocking socket operations and time.sleep on the loop's thread."""
    real_sleep = time.sleep

    def sleep(seconds: float) -> None:
        if _on_loop():
            BLOCKED.append(f"time.sleep({seconds})")
        real_sleep(seconds)

    monkeypatch.setattr(time, "sleep", sleep)
    for name in ("connect", "send", "sendall", "recv", "recv_into", "sendto", "recvfrom", "accept"):
        real = getattr(socket.socket, name)

        def guarded(self: socket.socket, *args: Any, _real: Any = real, _name: str = name) -> Any:
            if _on_loop() and self.gettimeout() != 0.0:
                BLOCKED.append(f"socket.{_name} in blocking mode")
            return _real(self, *args)

        monkeypatch.setattr(socket.socket, name, guarded)
    # A store whose methods are still synchronous blocks whatever thread calls them: none of its
    # calls may happen on the loop's thread (async stores run there natively and are let be).
    from kitaru.store.postgres import PostgresStateStore

    for cls in (PostgresStateStore, FilesystemArtifactStore):
        for name, method in list(vars(cls).items()):
            if (
                name.startswith("_")
                or name == "uri_for"
                or not callable(method)
                or inspect.iscoroutinefunction(method)
                or inspect.isasyncgenfunction(method)
            ):
                continue

            def store_call(
                self: Any, *args: Any, _m: Any = method, _n: str = f"{cls.__name__}.{name}", **kw: Any
            ) -> Any:
                if _on_loop():
                    BLOCKED.append(f"{_n} (a synchronous store call)")
                return _m(self, *args, **kw)

            monkeypatch.setattr(cls, name, store_call)
    BLOCKED.clear()
    yield
    LOOP_THREAD.clear()


@checkpoint
async def big() -> bytes:
    return b"x" * (256 * 1024)  # over the inline limit: a blob in the artifact store


@checkpoint(retries=2, retry_delay=0.01)
async def flaky(data: bytes) -> int:
    ATTEMPTS.append(1)
    if len(ATTEMPTS) < 2:
        raise ConnectionError("transient")
    return len(data)


@flow
async def busy() -> int:
    size = await flaky(await big())
    if not kitaru.wait(name="go", schema=bool):
        return -1
    return size


def test_an_async_flow_never_blocks_its_loop(postgres_dsn: str, tmp_path: Path, loop_guard: None) -> None:
    from kitaru.store.postgres import PostgresStateStore

    ATTEMPTS.clear()
    runtime = Runtime(
        PostgresStateStore(postgres_dsn),
        FilesystemArtifactStore(tmp_path / "artifacts"),
        heartbeat_interval=0.05,
    )
    try:
        with use_runtime(runtime):

            async def main() -> tuple[str, int]:
                LOOP_THREAD.append(threading.get_ident())
                handle = await busy.start()
                with pytest.raises(kitaru.KitaruTimeoutError):
                    await handle.result(timeout=0.5)  # waits for an answer
                # The answer goes through the sync client on a worker thread; then the flow
                # resumes on this loop (replaying the big blob and the retried step).
                await anyio.to_thread.run_sync(
                    lambda: KitaruClient(runtime).executions.input(handle.exec_id, True, resume=False)
                )
                resumed = await busy.start(execution_id=handle.exec_id)
                await kitaru_resume(runtime, handle.exec_id)
                return resumed.exec_id, await resumed.result(timeout=60)

            try:
                _, result = anyio.run(main)
            finally:
                LOOP_THREAD.clear()  # the loop is gone: this thread may block again
    finally:
        runtime.close()
    assert result == 256 * 1024
    assert len(ATTEMPTS) == 2  # the retry ran, with its backoff, and was not repeated on resume
    assert BLOCKED == [], f"blocking calls on the event loop's thread: {BLOCKED}"


async def kitaru_resume(runtime: Runtime, exec_id: str) -> None:
    """Drive the waiting execution on, on this loop, as the local orchestrator does."""
    from kitaru.local_stack import LocalOrchestrator

    await LocalOrchestrator(runtime=runtime).submit(exec_id)
