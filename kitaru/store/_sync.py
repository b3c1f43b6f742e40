"""A sync view of a store, for scripts, tests and tools that are not async.

``sync_view(store).read_journal(exec_id)`` calls the store's method and, when it returns a coroutine,
runs it to its end: inline when the store is ``inline`` (SQLite, memory: no thread hop), otherwise
on kitaru's one portal loop (:mod:`kitaru._portal`). Async iterators (``ArtifactStore.open``,
``list``) come back as plain iterators. A method that returns a plain value returns it unchanged, so
the view also works on a store that is still synchronous.

This is an edge adapter over the one async implementation of each store, never a second one.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from typing import Any

__all__ = ["SyncView", "sync_view"]


class SyncView:
    """Blocking calls onto an async store; see :func:`sync_view`."""

    __slots__ = ("_store",)

    def __init__(self, store: Any) -> None:
        self._store = store

    @property
    def store(self) -> Any:
        """The async store behind this view."""
        return self._store

    def __repr__(self) -> str:
        return f"sync_view({self._store!r})"

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._store, name)
        if not callable(attr):
            return attr
        inline = bool(getattr(self._store, "inline", False))

        def call(*args: Any, **kwargs: Any) -> Any:
            return _settle(attr(*args, **kwargs), inline)

        call.__name__ = name
        return call

    def close(self) -> None:
        """Close the store (``aclose()`` on an async store, ``close()`` on a sync one)."""
        aclose = getattr(self._store, "aclose", None)
        if aclose is not None:
            _settle(aclose(), bool(getattr(self._store, "inline", False)))
        else:
            self._store.close()


def _settle(result: Any, inline: bool) -> Any:
    if inspect.iscoroutine(result):
        return _run(result, inline)
    if inspect.isasyncgen(result) or hasattr(result, "__anext__"):
        return _iterate(result, inline)
    return result


def _run(awaitable: Any, inline: bool) -> Any:
    if inline:
        from kitaru._portal import run_inline

        return run_inline(awaitable)
    from kitaru._portal import run_sync

    return run_sync(_awaited, awaitable)


async def _awaited(coro: Any) -> Any:
    return await coro


def _iterate(agen: Any, inline: bool) -> Iterator[Any]:
    while True:
        try:
            yield _run(agen.__anext__(), inline)
        except StopAsyncIteration:
            return


def sync_view(store: Any) -> SyncView:
    """A blocking view of ``store`` (a state or artifact store); see the module docstring."""
    if isinstance(store, SyncView):
        return store
    return SyncView(store)
