"""The future ``.submit()`` returns (loaded on first use: ``concurrent.futures`` is not light)."""

from __future__ import annotations

from concurrent.futures import Future
from typing import Any, TypeVar

T = TypeVar("T")

__all__ = ["CheckpointFuture"]


class CheckpointFuture(Future[T]):
    """A submitted checkpoint call: a :class:`concurrent.futures.Future` of its output, with the
    names Kitaru 0.18's checkpoint futures had. ``result()`` and ``load()`` give the value (a
    checkpoint here returns its value, so the two are the same); ``wait()`` blocks until the call
    has finished and raises what it raised."""

    def load(self, timeout: float | None = None) -> T:
        """The checkpoint's output, once it has finished (as ``result()``)."""
        return self.result(timeout)

    def wait(self, timeout: float | None = None) -> None:
        """Block until the call has finished; raises what the checkpoint raised."""
        self.result(timeout)

    def run(self, fn: Any, *args: Any) -> None:
        """Run ``fn(*args)`` into this future (on the thread that calls it); a future cancelled
        before it started is left alone."""
        if not self.set_running_or_notify_cancel():
            return
        try:
            value = fn(*args)
        except BaseException as exc:  # as ThreadPoolExecutor does: the caller sees it on result()
            self.set_exception(exc)
        else:
            self.set_result(value)
