"""A sync view of a store, for scripts, tests and tools that are not async.

``sync_view(store).read_journal(exec_id)`` calls the store's method and, when it returns a coroutine,
runs it to its end: inline when the store is ``inline`` (SQLite, memory: no thread hop), otherwise
on kitaru's one portal loop (:mod:`kitaru._portal`). Async iterators (``ArtifactStore.open``,
``list``) come back as plain iterators, and ``put_stream`` takes a plain iterable (its chunks are
pulled in a worker thread, so a producer that blocks never stalls the portal's loop). A method that
returns a plain value returns it unchanged, so the view also works on a store that is still
synchronous. ``close()`` awaits the store's ``aclose()``.

This is an edge adapter over the one async implementation of each store, never a second one.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from kitaru.store import (
        ArtifactRecord,
        DeploymentRecord,
        ExecutionRecord,
        JournalRecord,
        TagMove,
        TagRecord,
        TagRequest,
    )

__all__ = ["SyncArtifactStore", "SyncStateStore", "SyncView", "sync_view"]


class SyncStateStore(Protocol):
    """What a sync view of a :class:`~kitaru.store.StateStore` offers: the same methods, blocking
    (their duties are the async protocol's). For type checking the sync callers."""

    # transition (issue 9): typed for the engine, client and CLI that still call stores
    # synchronously; with the Runner in, scripts and tests are the only users.

    def create_execution(
        self,
        execution: ExecutionRecord,
        artifacts: Sequence[ArtifactRecord],
        records: Sequence[JournalRecord] = (),
    ) -> tuple[ExecutionRecord, bool]: ...
    def get_execution(self, exec_id: str) -> ExecutionRecord | None: ...
    def match_execution_ids(self, prefix: str, limit: int = 2) -> list[str]: ...
    def list_executions(
        self,
        *,
        flow: str | None = None,
        status: str | None = None,
        limit: int = 50,
        version: int | None = None,
        before: str | None = None,
    ) -> list[ExecutionRecord]: ...
    def acquire_lease(
        self,
        exec_id: str,
        owner: str,
        ttl: float,
        *,
        allowed_statuses: Iterable[str],
        set_status: str | None = "running",
    ) -> ExecutionRecord: ...
    def list_recoverable(self, *, limit: int = 100) -> list[ExecutionRecord]: ...
    def renew_leases(self, owner: str, exec_ids: Sequence[str], ttl: float) -> dict[str, str]: ...
    def commit(
        self,
        exec_id: str,
        records: Sequence[JournalRecord],
        artifacts: Sequence[ArtifactRecord] = (),
        *,
        owner: str | None = None,
        status: str | None = None,
        error: str | None = None,
        result_artifact: str | None = None,
        release_lease: bool = False,
        metadata: dict[str, Any] | None = None,
    ) -> str | None: ...
    def suspend(self, exec_id: str, owner: str, waiting_on: Sequence[str]) -> bool: ...
    def answer_wait(
        self,
        exec_id: str,
        record: JournalRecord,
        artifact: ArtifactRecord,
        *,
        owner: str,
        ttl: float,
        take_lease: bool,
    ) -> bool: ...
    def cancel(self, exec_id: str) -> ExecutionRecord: ...
    def read_journal(self, exec_id: str, after: int = 0) -> list[JournalRecord]: ...
    def read_wait(self, exec_id: str, name: str) -> list[JournalRecord]: ...
    def get_artifact(self, artifact_id: str) -> ArtifactRecord | None: ...
    def list_artifacts(
        self, exec_id: str, *, name: str | None = None, type: str | None = None
    ) -> list[ArtifactRecord]: ...
    def create_deployment(
        self, record: DeploymentRecord, *, tag: str | None = None, weight: int | None = None
    ) -> tuple[DeploymentRecord, list[TagMove]]: ...
    def get_deployment(self, flow: str, version: int) -> DeploymentRecord | None: ...
    def list_deployments(self, flow: str | None = None) -> list[DeploymentRecord]: ...
    def list_tags(self, flow: str | None = None) -> list[TagRecord]: ...
    def move_tags(self, flow: str, requests: Sequence[TagRequest], *, who: str) -> list[TagMove]: ...
    def tag_history(self, flow: str, tag: str | None = None) -> list[TagMove]: ...
    def close(self) -> None: ...


class SyncArtifactStore(Protocol):
    """What a sync view of an :class:`~kitaru.store.ArtifactStore` offers, blocking."""

    uri: str

    def uri_for(self, key: str) -> str: ...
    def put(self, key: str, data: bytes) -> None: ...
    def put_stream(self, key: str, chunks: Iterable[bytes]) -> None: ...
    def get(self, key: str) -> bytes: ...
    def open(self, key: str, chunk_size: int = 1 << 20) -> Iterator[bytes]: ...
    def exists(self, key: str) -> bool: ...
    def list(self, prefix: str = "") -> Iterator[str]: ...
    def delete(self, key: str) -> None: ...
    def close(self) -> None: ...


class SyncView:
    """Blocking calls onto an async store; see :func:`sync_view`."""

    __slots__ = ("_calls", "_inline", "_store")

    def __init__(self, store: Any) -> None:
        self._store = store
        self._inline = bool(getattr(store, "inline", False))
        # One blocking wrapper per method name, made on first use: the view sits on the hot path
        # of every checkpoint commit of the old engine (transition), so no closure per call.
        self._calls: dict[str, Callable[..., Any]] = {}

    @property
    def store(self) -> Any:
        """The async store behind this view."""
        return self._store

    def __repr__(self) -> str:
        return f"sync_view({self._store!r})"

    def __getattr__(self, name: str) -> Any:
        cached = self._calls.get(name)
        if cached is not None:
            return cached
        attr = getattr(self._store, name)
        if not callable(attr):
            return attr
        inline = self._inline

        def call(*args: Any, **kwargs: Any) -> Any:
            return _settle(attr(*args, **kwargs), inline)

        call.__name__ = name
        self._calls[name] = call
        return call

    def put_stream(self, key: str, chunks: Iterable[bytes]) -> Any:
        """``put_stream`` with a plain iterable of chunks (an async iterable is passed on as is)."""
        if hasattr(chunks, "__aiter__"):
            source: Any = chunks
        else:
            # An inline store must not suspend, so its chunks are pulled right here.
            source = _pulled_inline(chunks) if self._inline else _pulled_in_thread(chunks)
        return _settle(self._store.put_stream(key, source), self._inline)

    def close(self) -> None:
        """Close the store (``aclose()`` on an async store, ``close()`` on a sync one)."""
        aclose = getattr(self._store, "aclose", None)
        if aclose is not None:
            _settle(aclose(), self._inline)
        else:
            self._store.close()


def _settle(result: Any, inline: bool) -> Any:
    if inspect.iscoroutine(result):
        return _run(result, inline)
    if inspect.isasyncgen(result) or hasattr(result, "__anext__"):
        return _iterate(result, inline)
    return result


def _run(awaitable: Any, inline: bool) -> Any:
    from kitaru._portal import block_on, run_inline

    if inline:
        return run_inline(awaitable)
    return block_on(awaitable)


def _iterate(agen: Any, inline: bool) -> Iterator[Any]:
    try:
        while True:
            try:
                item = _run(agen.__anext__(), inline)
            except StopAsyncIteration:
                return
            yield item
    finally:
        # A consumer that stops early closes the stream now (its file or connection), on the loop
        # it ran on, rather than leaving it to the garbage collector.
        aclose = getattr(agen, "aclose", None)
        if aclose is not None:
            _run(aclose(), inline)


async def _pulled_inline(chunks: Iterable[bytes]) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk


async def _pulled_in_thread(chunks: Iterable[bytes]) -> AsyncIterator[bytes]:
    import anyio.to_thread

    it = iter(chunks)
    while (chunk := await anyio.to_thread.run_sync(next, it, None)) is not None:
        yield chunk


def sync_view(store: Any) -> SyncView:
    """A blocking view of ``store`` (a state or artifact store); see the module docstring."""
    if isinstance(store, SyncView):
        return store
    return SyncView(store)
