"""``kitaru.wait(timeout=)`` is the hold (as in Kitaru 0.18), ``expires_in=`` the deadline.

``timeout=N``: the flow keeps its process up to N seconds for an answer before it suspends; an
answer in that window is taken in the same run (the execution never becomes ``waiting``), and the
wait never expires because of it. ``expires_in=N``: the wait's recorded deadline, after which the
flow's ``wait()`` raises ``KitaruWaitTimeoutError``."""

from __future__ import annotations

import threading
import time

import anyio
import anyio.to_thread
import pytest

import kitaru
from kitaru import KitaruClient, flow
from kitaru._engine.runtime import Runtime


def answer_while_open(runtime: Runtime, value: object, seen: list[str]) -> None:
    """Answer the first execution's wait as another process would (recording nothing else), once
    it is open; ``seen`` gets the execution's status at that moment."""
    client = KitaruClient()
    for _ in range(6000):
        executions = runtime.state.list_executions()
        if executions:
            execution = client.executions.get(executions[0].id)
            if execution.open_waits:
                seen.append(execution.status)
                # Listed as owed while the flow holds, as 0.18's pending_waits(exec_id) did.
                [pending] = client.executions.pending_waits(execution.id)
                seen.append(pending.name)
                client.executions.input(execution.id, value, resume=False)
                return
        time.sleep(0.01)


def kinds(runtime: Runtime, exec_id: str) -> list[str]:
    return [r.kind for r in runtime.state.read_journal(exec_id)]


class TestTimeoutIsTheHold:
    def test_an_answer_within_the_hold_is_taken_without_suspending(self, runtime: Runtime) -> None:
        @flow
        def f() -> object:
            return kitaru.wait(name="quick", schema=bool, timeout=120)

        seen: list[str] = []
        answerer = threading.Thread(target=answer_while_open, args=(runtime, True, seen))
        answerer.start()
        handle = f.run()
        answerer.join(timeout=120)
        assert seen == ["running", "quick"]  # the flow held: it never became "waiting"
        assert handle.status == "completed"
        assert handle.wait(timeout=60) is True

    def test_the_async_form_holds_too(self, runtime: Runtime) -> None:
        @flow
        async def f() -> object:
            return await kitaru.wait_async(name="quick", schema=str, timeout=120)

        seen: list[str] = []

        async def main() -> object:
            async with anyio.create_task_group() as tg:
                tg.start_soon(anyio.to_thread.run_sync, answer_while_open, runtime, "yes", seen)
                handle = await f.start()
                return await handle.result(timeout=120)

        assert anyio.run(main) == "yes"
        assert seen == ["running", "quick"]

    def test_the_wait_does_not_expire_when_the_hold_ends(self, runtime: Runtime) -> None:
        @flow
        def f() -> str:
            try:
                return "yes" if kitaru.wait(name="late", schema=bool, timeout=0.1) else "no"
            except kitaru.KitaruWaitTimeoutError:
                return "expired"

        handle = f.run()
        assert handle.status == "waiting"  # the hold ended without an answer: released
        time.sleep(0.3)  # well past the hold: a deadline of 0.1 s would have passed
        client = KitaruClient()
        assert client.executions.get(handle.exec_id).open_waits[0].deadline is None
        assert client.executions.resume(handle.exec_id).status == "waiting"  # still open
        assert client.executions.recover() == []  # nothing to time out
        assert client.executions.input(handle.exec_id, True).wait(timeout=60) == "yes"
        assert "wait_timed_out" not in kinds(runtime, handle.exec_id)

    def test_a_resume_without_an_answer_does_not_hold_again(self, runtime: Runtime) -> None:
        # The hold counts from the wait's opening: once it has passed, a replay that reaches the
        # unanswered wait (`kitaru executions resume`) suspends at once instead of holding anew.
        @flow
        def f() -> object:
            return kitaru.wait(name="slowly", schema=bool, timeout=3)

        started = time.monotonic()
        handle = f.run()
        assert handle.status == "waiting"
        assert time.monotonic() - started >= 3  # the first run held for the whole hold
        started = time.monotonic()
        assert KitaruClient().executions.resume(handle.exec_id).status == "waiting"
        assert time.monotonic() - started < 3

    def test_timeout_overrides_the_global_hold(
        self, runtime: Runtime, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("KITARU_WAIT_HOLD", "600")

        @flow
        def f() -> object:
            return kitaru.wait(name="now", schema=bool, timeout=0)

        handle = f.run()  # timeout=0: suspends at once, not after KITARU_WAIT_HOLD's 600 s
        assert handle.status == "waiting"

    def test_the_sync_form_refuses_to_hold_on_an_event_loop(self, runtime: Runtime) -> None:
        @flow
        async def f() -> object:
            return kitaru.wait(name="blocking", schema=bool, timeout=5)

        with pytest.raises(kitaru.KitaruUsageError, match=r"await kitaru\.wait_async"):
            f.run().wait(timeout=60)

    def test_bad_values_are_refused(self, runtime: Runtime) -> None:
        @flow
        def hold(seconds: float) -> object:
            return kitaru.wait(name="w", timeout=seconds)

        @flow
        def expire(seconds: float) -> object:
            return kitaru.wait(name="w", expires_in=seconds)

        with pytest.raises(kitaru.KitaruUsageError, match="timeout="):
            hold.run(-1).wait(timeout=60)
        with pytest.raises(kitaru.KitaruUsageError, match="expires_in="):
            expire.run(0).wait(timeout=60)


class TestExpiresInIsTheDeadline:
    def test_expires_in_is_recorded_as_the_deadline(self, runtime: Runtime) -> None:
        @flow
        def f() -> object:
            return kitaru.wait(name="bounded", schema=bool, expires_in=3600)

        before = time.time()
        handle = f.run()
        [wait] = KitaruClient().executions.get(handle.exec_id).open_waits
        assert wait.deadline is not None and before + 3600 <= wait.deadline <= time.time() + 3600

    def test_a_deadline_during_the_hold_times_out_in_the_same_run(self, runtime: Runtime) -> None:
        @flow
        def f() -> str:
            try:
                kitaru.wait(name="bounded", schema=bool, timeout=120, expires_in=0.2)
            except kitaru.KitaruWaitTimeoutError:
                return "defaulted"
            return "answered"

        handle = f.run()
        assert handle.status == "completed"
        assert handle.wait(timeout=60) == "defaulted"
        assert kinds(runtime, handle.exec_id).count("wait_timed_out") == 1
