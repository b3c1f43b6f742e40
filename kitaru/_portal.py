"""The one door from sync code into kitaru's async core: a process-wide blocking portal.

Sync callers (``Flow.run()``, ``FlowHandle.wait()``, the sync client, the CLI, ``sync_view``) run
coroutines on one event loop that lives in a daemon thread, started on first use. There is no other
improvised loop anywhere: no ``asyncio.run``, no ``new_event_loop``, no loop per store.

The thread is a daemon so that a process never hangs at exit on it; an ``atexit`` hook stops the
portal first, so that the coroutines it hosts get to close their connections.
"""

from __future__ import annotations

import atexit
import os
import threading
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

from kitaru.errors import KitaruUsageError

if TYPE_CHECKING:
    from anyio.from_thread import BlockingPortal

__all__ = ["block_on", "in_portal_thread", "portal", "run_inline", "run_sync", "running_inline"]

T = TypeVar("T")

_lock = threading.Lock()
_portal: BlockingPortal | None = None
_thread: threading.Thread | None = None


def _start() -> BlockingPortal:
    import anyio
    from anyio.from_thread import BlockingPortal

    ready = threading.Event()
    box: dict[str, Any] = {}

    async def serve() -> None:
        async with BlockingPortal() as p:
            box["portal"] = p
            ready.set()
            await p.sleep_until_stopped()

    def main() -> None:
        try:
            anyio.run(serve)
        except BaseException as exc:  # pragma: no cover - reported to the starter below
            box["error"] = exc
            ready.set()

    thread = threading.Thread(target=main, name="kitaru-portal", daemon=True)
    thread.start()
    ready.wait()
    if "error" in box:
        raise RuntimeError(f"kitaru could not start its event loop thread: {box['error']!r}")
    global _thread
    _thread = thread
    return box["portal"]  # type: ignore[no-any-return]


def portal() -> BlockingPortal:
    """The process's portal, started on first use."""
    global _portal
    if _portal is None:
        with _lock:
            if _portal is None:
                _portal = _start()
    return _portal


def in_portal_thread() -> bool:
    return _thread is not None and threading.current_thread() is _thread


def run_sync(fn: Callable[..., Awaitable[T]], *args: Any) -> T:
    """Run ``await fn(*args)`` on the portal's loop and return its result, from sync code.

    Refused from a thread that runs an event loop: blocking there would stall that loop (and
    deadlock the portal's own thread).
    """
    from kitaru._engine.context import running_loop

    if running_loop() is not None:
        raise KitaruUsageError(
            "a blocking kitaru call was made from a thread that runs an event loop; use the "
            "awaitable form of the call (e.g. `await flow.start(...)`, `await handle.result()`)."
        )
    return portal().call(fn, *args)


def block_on(awaitable: Awaitable[T]) -> T:
    """Await ``awaitable`` on the portal's loop and return its result, blocking this thread.

    The sync view of a store that is not ``inline`` calls this. Unlike :func:`run_sync` it is
    allowed on a thread that runs another event loop (that loop stalls while the call runs); it is
    refused on the portal's own thread, where it could only deadlock.
    """
    # transition (issue 9): the old engine commits through `sync_view` from the loop of an async
    # flow; once the Runner awaits the stores natively, sync views run only off-loop and this may
    # refuse a running loop the way run_sync does.
    if in_portal_thread():
        raise KitaruUsageError(
            "a blocking store call was made on kitaru's portal loop, which would wait on itself; "
            "await the store's coroutine instead."
        )
    return portal().call(_awaited, awaitable)


async def _awaited(awaitable: Awaitable[T]) -> T:
    return await awaitable


def run_inline(coro: Any) -> Any:
    """Run a coroutine that never suspends (an ``inline`` store's method) to its end, here.

    This is how sync code calls SQLite without a thread hop: its coroutines do their work and
    return without awaiting anything that yields. While it runs, :func:`running_inline` is true
    in this thread, so a store method that would otherwise wait for company (the SQLite store's
    grouped answers) does its work at once.
    """
    _inline.depth = getattr(_inline, "depth", 0) + 1
    try:
        coro.send(None)
    except StopIteration as stop:
        return stop.value
    finally:
        _inline.depth -= 1
    coro.close()
    raise RuntimeError(
        f"{coro!r} suspended, so it cannot run inline: its store is not `inline` (run it on the "
        "portal with run_sync instead)."
    )


_inline = threading.local()


def running_inline() -> bool:
    """Whether this thread is inside :func:`run_inline` (a coroutine that must not suspend)."""
    return getattr(_inline, "depth", 0) > 0


def _stop() -> None:
    global _portal
    with _lock:
        p, _portal = _portal, None
    if p is not None:
        try:
            p.call(p.stop)
        except Exception:
            pass  # the loop is already gone: nothing left to close


atexit.register(_stop)


def _forget_in_child() -> None:
    # A forked child has only the thread that forked: the portal's loop thread is not in it, so
    # calls to the inherited portal would wait forever (and the lock may be held by a thread that
    # no longer exists). The child starts its own portal on first use.
    global _lock, _portal, _thread
    _lock = threading.Lock()
    _portal = None
    _thread = None


os.register_at_fork(after_in_child=_forget_in_child)
