"""One resource per running event loop: how a store that holds connections (an asyncpg pool, an
aiobotocore client, an Azure aio client) runs on its *caller's* loop.

Such a resource belongs to the loop it was made on, and one process may use a store from several
loops (kitaru's portal loop for sync callers, an application's own loop, a test's loop), so a store
keeps one per loop, opened by that loop's first call. Concurrent first calls on a loop share one
opening; a failed opening is forgotten, so the next call tries again.

Closing: :meth:`PerLoop.aclose` closes each resource on its own loop. A loop that shuts down first
(``asyncio.run`` returning, a test's loop ending) closes its resource itself: each one is held by an
async generator (its *keeper*) started on that loop, and a loop finalizes the async generators
still suspended on it as it shuts down (``shutdown_asyncgens``), so no connection is left for the
garbage collector (which would report it as a ResourceWarning).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Generic, TypeVar

__all__ = ["PerLoop"]

T = TypeVar("T")


class _Entry(Generic[T]):
    __slots__ = ("keeper", "opening", "value")

    def __init__(self, opening: asyncio.Task[tuple[T, AsyncGenerator[None, None]]]) -> None:
        self.opening = opening
        self.value: T | None = None
        self.keeper: AsyncGenerator[None, None] | None = None


class PerLoop(Generic[T]):
    """``await get()``: the running loop's resource, made by ``open()`` on first use and released
    by ``close(resource)`` (on its own loop) when :meth:`aclose` runs or the loop shuts down."""

    def __init__(self, open: Callable[[], Awaitable[T]], close: Callable[[T], Awaitable[None]]) -> None:
        self._open = open
        self._close = close
        self._lock = threading.Lock()
        self._entries: dict[asyncio.AbstractEventLoop, _Entry[T]] = {}

    def current(self) -> T | None:
        """The running loop's resource if it is open (no opening), else None."""
        entry = self._entries.get(asyncio.get_running_loop())
        return None if entry is None else entry.value

    async def get(self) -> T:
        loop = asyncio.get_running_loop()
        entry = self._entries.get(loop)
        if entry is not None and entry.value is not None:
            return entry.value
        if entry is None:
            with self._lock:
                entry = self._entries.get(loop)
                if entry is None:
                    entry = self._entries[loop] = _Entry(loop.create_task(self._opened()))
        try:
            value, keeper = await asyncio.shield(entry.opening)
        except BaseException:
            if entry.opening.done():
                with self._lock:
                    if self._entries.get(loop) is entry:
                        del self._entries[loop]
            raise
        if self._entries.get(loop) is not entry:  # closed while it opened
            await keeper.aclose()
            raise RuntimeError("closed while opening")
        entry.value, entry.keeper = value, keeper
        return value

    async def _opened(self) -> tuple[T, AsyncGenerator[None, None]]:
        value = await self._open()
        keeper = self._keep(asyncio.get_running_loop(), value)
        await keeper.asend(None)  # its first step ties it to this loop's shutdown
        return value, keeper

    async def _keep(self, loop: asyncio.AbstractEventLoop, value: T) -> AsyncGenerator[None, None]:
        try:
            yield
        finally:
            with self._lock:  # forget it, so a process that runs many loops does not keep them all
                entry = self._entries.get(loop)
                if entry is not None and entry.value is value:
                    del self._entries[loop]
            await self._close(value)

    async def aclose(self) -> None:
        """Release every loop's resource, each on its own loop; ``get`` opens anew afterwards."""
        with self._lock:
            entries = list(self._entries.items())
            self._entries.clear()
        here = asyncio.get_running_loop()
        for loop, entry in entries:
            keeper = entry.keeper
            if keeper is None:
                if loop is here:
                    entry.opening.cancel()  # an opening elsewhere is closed by get()'s check
                continue
            if loop is here:
                await keeper.aclose()
            elif loop.is_running():
                future = asyncio.run_coroutine_threadsafe(keeper.aclose(), loop)
                try:
                    await asyncio.wait_for(asyncio.wrap_future(future), 30)
                except asyncio.CancelledError:
                    if not future.cancelled():
                        raise  # this task was cancelled, not the close on the other loop
                    # That loop stopped before the close ran: its shutdown finalizes the keeper.
                except Exception:
                    pass  # that loop is stuck or stopping: its shutdown finalizes the keeper
            # A loop that ended finalized its keeper as it shut down.
