"""``await kitaru.wait_async()``: the wait of async flows, whose ``KITARU_WAIT_HOLD`` hold is awaited.

The sync ``kitaru.wait()`` called from an async body never holds (it would block the loop); the
awaitable form holds with ``anyio.sleep`` and reads the journal with the store's async calls, so
the app's other tasks keep running while the flow waits for a fast answer."""

from __future__ import annotations

import time

import anyio
import anyio.to_thread
import pytest

import kitaru
from kitaru import KitaruClient, flow
from kitaru._engine.runtime import Runtime


@flow
async def quick() -> object:
    return await kitaru.wait_async(name="quick", question="ok?", schema=str)


@flow
async def quick_sync_form() -> object:
    return kitaru.wait(name="quick", schema=str)


async def _answer_when_open(exec_id: str, value: object) -> None:
    """Answer the wait as another process would, through the sync client on a worker thread,
    once it is recorded (every wait here is bounded)."""
    client = KitaruClient()
    with anyio.fail_after(60):
        while True:  # polling what another process would see
            if await anyio.to_thread.run_sync(lambda: client.executions.get(exec_id).open_waits):
                break
            await anyio.sleep(0.01)
    await anyio.to_thread.run_sync(lambda: client.executions.input(exec_id, value, resume=False))


class TestHold:
    def test_a_fast_answer_during_the_hold_continues_in_the_same_run_and_the_loop_stays_free(
        self, runtime: Runtime, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("KITARU_WAIT_HOLD", "60")

        async def main() -> tuple[object, int, str]:
            ticks = 0
            handle = await quick.start()

            async def ticker() -> None:
                nonlocal ticks
                while True:
                    ticks += 1
                    await anyio.sleep(0.005)

            async with anyio.create_task_group() as tg:
                tg.start_soon(ticker)
                await _answer_when_open(handle.exec_id, "yes")
                value = await handle.result(timeout=30)
                tg.cancel_scope.cancel()
            return value, ticks, handle.status

        value, ticks, status = anyio.run(main)
        assert value == "yes"
        assert status == "completed"
        assert ticks > 1  # the loop ran the app's other task while the flow held
        # Answered with resume=False: only a flow that held for it (never suspended) finished.
        kinds = [r.kind for r in runtime.state.read_journal(quick_exec_ids(runtime)[0])]
        assert kinds.count("wait_opened") == 1 and kinds.count("wait_answered") == 1

    def test_a_result_timeout_while_it_holds_is_a_kitaru_timeout(
        self, runtime: Runtime, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("KITARU_WAIT_HOLD", "60")

        async def main() -> None:
            handle = await quick.start()
            with pytest.raises(kitaru.KitaruTimeoutError, match="still running"):
                await handle.result(timeout=0.2)
            await _answer_when_open(handle.exec_id, "late")  # let it finish
            assert await handle.result(timeout=30) == "late"

        anyio.run(main)

    def test_without_a_hold_it_suspends_and_resumes_with_the_typed_answer(self, runtime: Runtime) -> None:
        handle = quick.run()
        assert handle.status == "waiting"
        [opened] = KitaruClient().executions.get(handle.exec_id).open_waits
        assert (opened.name, opened.question) == ("quick", "ok?")
        assert KitaruClient().executions.input(handle.exec_id, "sure").wait(timeout=60) == "sure"

    def test_the_sync_form_in_an_async_flow_does_not_hold(
        self, runtime: Runtime, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        # Documented: sleeping would block the loop, so kitaru.wait() suspends at once there.
        monkeypatch.setenv("KITARU_WAIT_HOLD", "60")
        handle = quick_sync_form.run()
        assert handle.status == "waiting"
        assert KitaruClient().executions.input(handle.exec_id, "y").wait(timeout=60) == "y"

    def test_the_two_forms_share_one_journal(self, runtime: Runtime) -> None:
        # An execution that waited under one form is answered and resumed under the other.
        handle = quick_sync_form.run()
        record = runtime.state.get_execution(handle.exec_id)
        assert record is not None
        sync_opened = [r for r in runtime.state.read_journal(handle.exec_id) if r.kind == "wait_opened"]
        other = quick.run()
        async_opened = [r for r in runtime.state.read_journal(other.exec_id) if r.kind == "wait_opened"]
        assert [(r.call_id, r.name, r.seq) for r in sync_opened] == [
            (r.call_id, r.name, r.seq) for r in async_opened
        ]

    def test_a_deadline_during_the_hold_times_out(
        self, runtime: Runtime, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("KITARU_WAIT_HOLD", "60")

        @flow
        async def bounded() -> object:
            try:
                return await kitaru.wait_async(name="bounded", expires_in=0.2)
            except kitaru.KitaruWaitTimeoutError:
                return "defaulted"

        assert bounded.run().wait(timeout=60) == "defaulted"

    def test_inside_a_checkpoint_it_is_an_error(self, runtime: Runtime) -> None:
        @kitaru.checkpoint
        async def step() -> object:
            return await kitaru.wait_async()

        @flow
        async def f() -> object:
            return await step()

        with pytest.raises(
            kitaru.KitaruUsageError, match=r"kitaru\.wait_async\(\) was called inside checkpoint 'step'"
        ):
            f.run().wait(timeout=60)

    def test_outside_a_flow_it_is_an_error(self) -> None:
        async def main() -> object:
            return await kitaru.wait_async()

        with pytest.raises(kitaru.KitaruNotInFlowError, match=r"kitaru\.wait_async\(\)"):
            anyio.run(main)

    def test_it_records_its_question_schema_metadata_and_deadline(self, runtime: Runtime) -> None:
        @flow
        async def ship() -> object:
            return await kitaru.wait_async(
                name="ship", question="Ship it?", schema=bool, expires_in=3600, metadata={"ticket": 7}
            )

        before = time.time()
        handle = ship.run()
        client = KitaruClient()
        [w] = client.executions.get(handle.exec_id).open_waits
        assert (w.name, w.question, w.schema, w.metadata) == ("ship", "Ship it?", "bool", {"ticket": 7})
        assert w.deadline is not None and before + 3600 <= w.deadline <= time.time() + 3600
        with pytest.raises(kitaru.KitaruWaitValidationError, match="expected bool"):
            client.executions.input(handle.exec_id, "yes")
        assert client.executions.input(handle.exec_id, True).wait(timeout=60) is True


def quick_exec_ids(runtime: Runtime) -> list[str]:
    return [e.id for e in runtime.state.list_executions() if e.flow == "quick"]
