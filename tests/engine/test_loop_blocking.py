"""Nothing an async flow does blocks its event loop: commits, uploads and downloads, retry backoff,
model calls and the wait hold all leave the loop's thread free. Proven by instrumenting the loop's
thread so that a blocking socket operation, ``time.sleep`` or a blocking hop onto kitaru's portal
on it fails the test (not a timing assertion). The flow runs against PostgreSQL, S3 (moto) and a
local model provider over HTTP."""

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
from tests._services.s3 import MotoServer, s3_server
from tests.llm.conftest import FakeProvider, provider

__all__ = ["provider", "s3_server"]  # fixtures used here

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
    # Sync code that waits for kitaru's portal loop (a store call made the blocking way) stalls
    # the loop it runs on just the same, whatever the portal does meanwhile.
    from anyio.from_thread import BlockingPortal

    real_call = BlockingPortal.call

    def portal_call(self: BlockingPortal, func: Any, *args: Any) -> Any:
        if _on_loop():
            BLOCKED.append(f"a blocking portal call of {getattr(func, '__qualname__', func)}")
        return real_call(self, func, *args)

    monkeypatch.setattr(BlockingPortal, "call", portal_call)
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


@checkpoint
async def summarize(size: int) -> str:
    # Inside a checkpoint: recorded under it, inline.
    return await kitaru.allm(f"summarize {size} bytes", model="openai/gpt-4o-mini", name="summary")


@flow
async def busy() -> int:
    size = await flaky(await big())
    # At flow scope (a checkpoint of its own); the provider rate-limits the first attempt.
    await kitaru.allm("plan", model="openai/gpt-4o-mini")
    await summarize(size)
    # Held (KITARU_WAIT_HOLD) before suspending: the hold polls the journal on this loop.
    if not await kitaru.wait_async(name="go", schema=bool):
        return -1
    return size


@pytest.mark.parametrize("artifacts", ["filesystem", "s3"])
def test_an_async_flow_never_blocks_its_loop(
    artifacts: str,
    postgres_dsn: str,
    tmp_path: Path,
    provider: FakeProvider,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
    loop_guard: None,
) -> None:
    from kitaru.store.postgres import PostgresStateStore

    monkeypatch.setenv("KITARU_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.setenv("OPENAI_BASE_URL", provider.url + "/v1")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    monkeypatch.setenv("KITARU_LLM_BACKOFF", "0.01")
    monkeypatch.setenv("KITARU_WAIT_HOLD", "0.2")
    provider.fail(429, retry_after="0.01")
    ATTEMPTS.clear()
    runtime = Runtime(
        PostgresStateStore(postgres_dsn),
        _artifact_store(artifacts, tmp_path, request),
        heartbeat_interval=0.05,
    )
    try:
        with use_runtime(runtime):

            async def main() -> tuple[str, int]:
                LOOP_THREAD.append(threading.get_ident())
                handle = await busy.start()
                await _until_waiting(runtime, handle.exec_id)  # held, then suspended for an answer
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
    assert provider.count == 3  # a 429, then the call; then the checkpoint's: none repeated on resume
    assert BLOCKED == [], f"blocking calls on the event loop's thread: {BLOCKED}"


async def _until_waiting(runtime: Runtime, exec_id: str) -> None:
    with anyio.fail_after(60):
        while True:
            record = await runtime.astate.get_execution(exec_id)
            if record is not None and record.status == "waiting":
                return
            await anyio.sleep(0.01)


def _artifact_store(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> Any:
    if kind == "filesystem":
        return FilesystemArtifactStore(tmp_path / "artifacts")
    pytest.importorskip("kitaru_stack_aws")
    from kitaru.stack import artifact_store_for_uri

    server: MotoServer = request.getfixturevalue("s3_server")
    return artifact_store_for_uri(f"s3://{server.create_bucket()}/kitaru", **server.options())


async def kitaru_resume(runtime: Runtime, exec_id: str) -> None:
    """Drive the waiting execution on, on this loop, as the local orchestrator does."""
    from kitaru.local_stack import LocalOrchestrator

    await LocalOrchestrator(runtime=runtime).submit(exec_id)
