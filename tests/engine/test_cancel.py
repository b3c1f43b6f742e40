"""Cancel is final: a cancelled execution stops at its next checkpoint boundary and never runs again."""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

import kitaru
from kitaru import KitaruClient, checkpoint, flow
from kitaru._engine.runtime import Runtime


def kinds(runtime: Runtime, exec_id: str) -> list[tuple[str, str | None]]:
    return [(r.kind, r.call_id) for r in runtime.state.read_journal(exec_id)]


def cancel_while_inside(
    runtime: Runtime, start: Callable[[], Any], inside: threading.Event, release: threading.Event
) -> tuple[str, list[Any]]:
    """Start a flow on a thread, cancel it while a checkpoint runs, then let the checkpoint end."""
    # Only the checkpoint's own commit can see the cancel in time: the heartbeat is far away.
    runtime.heartbeat_interval = 20.0
    result: list[Any] = []
    runner = threading.Thread(target=lambda: result.append(start()))
    runner.start()
    try:
        assert inside.wait(30)
        [execution] = runtime.state.list_executions()
        assert KitaruClient().executions.cancel(execution.id).status == "cancelled"
    finally:
        release.set()
        runner.join(60)
    assert not runner.is_alive()
    return execution.id, result


class TestCancelIsFinal:
    @pytest.mark.parametrize("then", ["checkpoint", "wait", "return", "fail"])
    def test_cancel_during_a_checkpoint_stops_the_flow_there(self, runtime: Runtime, then: str) -> None:
        inside, release = threading.Event(), threading.Event()
        ran: Counter[str] = Counter()

        @checkpoint
        def slow() -> int:
            ran["slow"] += 1
            inside.set()
            assert release.wait(30)
            return 1

        @checkpoint
        def after(x: int) -> int:
            ran["after"] += 1
            return x

        @flow
        def f() -> object:
            value = slow()
            if then == "checkpoint":
                return after(value)
            if then == "wait":
                return kitaru.wait(name="approve", schema=bool)
            if then == "fail":
                raise RuntimeError("boom")
            return value

        exec_id, result = cancel_while_inside(runtime, f.run, inside, release)

        assert ran == {"slow": 1}  # the next checkpoint never ran
        assert result[0].status == "cancelled"
        journal = kinds(runtime, exec_id)
        assert ("checkpoint_completed", "slow") in journal  # finished as the cancel came: kept
        assert ("flow_cancelled", None) in journal
        assert not {k for k, _ in journal} & {"wait_opened", "flow_completed", "flow_failed"}
        stored = runtime.state.get_execution(exec_id)
        assert stored is not None and stored.status == "cancelled" and stored.lease_owner is None
        with pytest.raises(kitaru.KitaruExecutionCancelledError):
            result[0].wait(timeout=10)

    def test_a_cancelled_execution_refuses_answers_resume_and_retry(self, runtime: Runtime) -> None:
        inside, release = threading.Event(), threading.Event()
        ran: Counter[str] = Counter()

        @checkpoint
        def slow() -> int:
            ran["slow"] += 1
            inside.set()
            assert release.wait(30)
            return 1

        @flow
        def f() -> object:
            slow()
            answer = kitaru.wait(name="approve", schema=bool)
            ran["after the wait"] += 1
            return answer

        exec_id, _ = cancel_while_inside(runtime, f.run, inside, release)
        client = KitaruClient()

        for attempt in (
            lambda: client.executions.input(exec_id, True, wait="approve"),
            lambda: client.executions.input(exec_id, True),
            lambda: client.executions.resume(exec_id),
            lambda: client.executions.retry(exec_id),
        ):
            with pytest.raises(kitaru.KitaruStateError, match="cancelled") as caught:
                attempt()
            assert "stays cancelled" in str(caught.value)
            assert f"kitaru executions replay {exec_id}" in str(caught.value)

        assert ran == {"slow": 1}
        assert client.executions.get(exec_id).status == "cancelled"

    def test_cancel_during_an_async_checkpoint(self, runtime: Runtime) -> None:
        inside, release = threading.Event(), threading.Event()
        ran: Counter[str] = Counter()

        @checkpoint
        async def slow() -> int:
            ran["slow"] += 1
            inside.set()
            await asyncio.to_thread(release.wait, 30)
            return 1

        @checkpoint
        async def after(x: int) -> int:
            ran["after"] += 1
            return x

        @flow
        async def f() -> int:
            return await after(await slow())

        exec_id, result = cancel_while_inside(runtime, f.run, inside, release)

        assert ran == {"slow": 1}
        assert result[0].status == "cancelled"
        assert ("checkpoint_completed", "slow") in kinds(runtime, exec_id)
