"""Calls of one kind made on an event loop while earlier ones are out, served a batch at a time.

A burst of answers or reads then costs a few round trips to PostgreSQL instead of one each, and
a lone call is not held back: it starts its batch at once. Answers and grouped reads (journals,
waits) are the same mechanism with different sizes, so they share this one.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from kitaru.errors import KitaruStoreError

_Item = TypeVar("_Item")
_Result = TypeVar("_Result")

#: One call in a batch: what was asked, and the future its caller awaits.
Call = tuple[_Item, asyncio.Future[_Result]]


def settle(
    future: asyncio.Future[_Result], result: _Result | None = None, error: BaseException | None = None
) -> None:
    """Give a call its outcome, unless its caller went away (cancelled): then nobody is told."""
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)  # type: ignore[arg-type]


@dataclass(slots=True)
class _Queue(Generic[_Item, _Result]):
    pending: list[Call[_Item, _Result]] = field(default_factory=list)
    workers: int = 0  # running; a worker leaves (and counts itself out) only when none is pending
    tasks: set[asyncio.Task[None]] = field(default_factory=set)


class Batches(Generic[_Item, _Result]):
    """Up to ``workers`` tasks per loop take the pending calls ``size`` at a time and hand each
    batch to ``process``, which settles every call's future (those it leaves unsettled because it
    raised get its exception). Several workers let the first calls of a burst be served while the
    event loop still prepares the later ones. A call always starts after it was made, so it sees
    every write that returned before it."""

    def __init__(
        self,
        process: Callable[[list[Call[_Item, _Result]]], Awaitable[None]],
        *,
        workers: int,
        size: int,
        what: str,
    ) -> None:
        self._process = process
        self._workers = workers
        self._size = size
        self._what = what
        # Per event loop, like the pools: a call's future belongs to the loop that awaits it.
        self._queues: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Queue[_Item, _Result]] = (
            weakref.WeakKeyDictionary()
        )

    async def __call__(self, item: _Item) -> _Result:
        loop = asyncio.get_running_loop()
        queue = self._queues.get(loop)
        if queue is None:
            queue = self._queues[loop] = _Queue()
        future: asyncio.Future[_Result] = loop.create_future()
        queue.pending.append((item, future))
        if queue.workers < self._workers:
            queue.workers += 1
            queue.tasks.add(task := loop.create_task(self._work(queue)))
            task.add_done_callback(queue.tasks.discard)
        return await future

    async def _work(self, queue: _Queue[_Item, _Result]) -> None:
        try:
            while queue.pending:
                batch, queue.pending = queue.pending[: self._size], queue.pending[self._size :]
                try:
                    await self._process(batch)
                except BaseException as exc:
                    for _, future in batch:
                        settle(future, error=exc)
                    if not isinstance(exc, Exception):
                        raise
        finally:
            queue.workers -= 1
            if not queue.workers:  # cancelled with calls still queued: fail them, not hang
                for _, future in queue.pending:
                    settle(future, error=KitaruStoreError(f"the {self._what} was cancelled."))
                queue.pending = []
