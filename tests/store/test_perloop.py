"""PerLoop: one resource per running loop, closed on its own loop."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from typing import Any

import pytest

from kitaru.store._perloop import PerLoop


def test_aclose_survives_another_loop_stopping_before_its_close_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    # A runtime closing its stores races the loops they were used on (a heartbeat's loop ending):
    # when that loop stops before the close scheduled on it runs, its own shutdown closes the
    # resource, and aclose() must return instead of raising the other loop's cancellation.
    closed: list[str] = []

    async def open_() -> str:
        return "conn"

    async def close_(value: str) -> None:
        closed.append(value)

    per_loop: PerLoop[str] = PerLoop(open_, close_)
    other = asyncio.new_event_loop()
    thread = threading.Thread(target=other.run_forever, daemon=True)
    thread.start()
    try:
        assert asyncio.run_coroutine_threadsafe(per_loop.get(), other).result(10) == "conn"

        def stopped_before_running(coro: Any, loop: asyncio.AbstractEventLoop) -> Any:
            coro.close()
            future: concurrent.futures.Future[Any] = concurrent.futures.Future()
            future.cancel()  # what a loop that stops first does to work scheduled on it
            return future

        monkeypatch.setattr(asyncio, "run_coroutine_threadsafe", stopped_before_running)
        asyncio.run(per_loop.aclose())  # returns: no CancelledError escapes
    finally:
        monkeypatch.undo()
        other.call_soon_threadsafe(other.stop)
        thread.join(10)
        # The loop's own shutdown finalizes the keeper: the resource is closed there.
        other.run_until_complete(other.shutdown_asyncgens())
        other.close()
    assert closed == ["conn"]
