"""Async views of the stores that are still synchronous: a temporary bridge for issue 9.

# transition (issue 9): the Runner codes against the async store contracts, while the stores on
# this branch are still synchronous. ``as_async_state``/``as_async_artifacts`` give each sync store
# the async face the contracts promise: SQLite and memory run inline (their work never suspends, so
# a sync caller drives them with ``run_inline``), everything else runs on a worker thread with
# ``anyio.to_thread``. A store that is async already passes through untouched. The lead deletes
# this module when the async stores land.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterator
from functools import partial
from typing import Any

__all__ = ["as_async_artifacts", "as_async_state", "is_async_store"]

# Sync stores whose calls are cheap enough to make on the event loop itself (no socket; a SQLite
# WAL commit is ~27 µs, less than a thread hop).
_INLINE_STATE = frozenset({"SQLiteStateStore", "MemoryStateStore"})


def is_async_store(store: Any) -> bool:
    """Whether ``store`` already speaks the async contract (its ``get``/``commit`` are coroutines)."""
    probe = getattr(store, "commit", None) or getattr(store, "get", None)
    return probe is not None and inspect.iscoroutinefunction(probe)


class _AsyncOverSync:
    """Every public method of the wrapped sync store, as a coroutine function."""

    inline: bool = False

    def __init__(self, store: Any, inline: bool) -> None:
        self._sync = store
        self.inline = inline

    def __repr__(self) -> str:
        return f"async({self._sync!r})"

    @property
    def sync_store(self) -> Any:
        """The synchronous store behind this view."""
        return self._sync

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._sync, name)
        if name.startswith("_") or not callable(attr):
            return attr
        return self._wrap(attr)

    def _wrap(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        if self.inline:

            async def inline_call(*args: Any, **kwargs: Any) -> Any:
                return fn(*args, **kwargs)

            return inline_call

        async def threaded_call(*args: Any, **kwargs: Any) -> Any:
            import anyio.to_thread

            return await anyio.to_thread.run_sync(partial(fn, *args, **kwargs))

        return threaded_call

    async def aclose(self) -> None:
        close = getattr(self._sync, "close", None)
        if close is not None:
            await self._wrap(close)()


class _AsyncArtifacts(_AsyncOverSync):
    """An artifact store's async face: ``open``/``list`` as async iterators, ``put_stream`` taking
    an async iterable, ``uri_for`` staying a plain function (it does no I/O)."""

    def uri_for(self, key: str) -> str:
        return str(self._sync.uri_for(key))

    async def open(self, key: str, chunk_size: int = 1 << 20) -> AsyncIterator[bytes]:
        import anyio.to_thread

        chunks: Iterator[bytes] = await anyio.to_thread.run_sync(self._sync.open, key, chunk_size)
        done = object()
        while True:
            chunk = await anyio.to_thread.run_sync(next, chunks, done)
            if chunk is done:
                return
            yield chunk  # type: ignore[misc]

    async def list(self, prefix: str = "") -> AsyncIterator[str]:
        import anyio.to_thread

        keys = await anyio.to_thread.run_sync(lambda: list(self._sync.list(prefix)))
        for key in keys:
            yield key

    async def put_stream(self, key: str, chunks: AsyncIterable[bytes]) -> None:
        data = b"".join([chunk async for chunk in chunks])
        await self._wrap(self._sync.put)(key, data)


def as_async_state(store: Any) -> Any:
    """``store`` under the async StateStore contract (itself when it is async already)."""
    if is_async_store(store):
        return store
    return _AsyncOverSync(store, inline=type(store).__name__ in _INLINE_STATE)


def as_async_artifacts(store: Any) -> Any:
    """``store`` under the async ArtifactStore contract (itself when it is async already)."""
    if is_async_store(store):
        return store
    return _AsyncArtifacts(store, inline=False)
