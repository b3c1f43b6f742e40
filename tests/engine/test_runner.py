"""The Runner: a cancel stops an async flow at once (its cancel scope), and the client steers
executions through the active stack's orchestrator."""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any

import anyio
import pytest

import kitaru
from kitaru import KitaruClient, checkpoint, flow
from kitaru._engine.runtime import Runtime
from kitaru.local_stack import LocalOrchestrator, LocalStack

RAN: Counter[str] = Counter()
ASLEEP: list[anyio.Event] = []


@checkpoint
async def sleeps_for_an_hour() -> str:
    RAN["sleeping"] += 1
    for event in ASLEEP:
        event.set()
    await anyio.sleep(3600)
    RAN["woke"] += 1
    return "woke"


@checkpoint
async def after_sleep(x: str) -> str:
    RAN["after"] += 1
    return x


@flow
async def sleepy() -> str:
    return await after_sleep(await sleeps_for_an_hour())


class TestCancelScope:
    def test_cancel_interrupts_an_await_inside_an_async_checkpoint_at_once(self, runtime: Runtime) -> None:
        # The heartbeat sees the cancel (it beats every 0.05 s here) and cancels the body's scope:
        # the hour-long sleep ends now, not at the next checkpoint boundary (there is none).
        RAN.clear()
        result: dict[str, Any] = {}

        async def main() -> None:
            asleep = anyio.Event()
            ASLEEP.append(asleep)
            handle = await sleepy.start()
            result["id"] = handle.exec_id
            cancel = KitaruClient(runtime).executions.cancel
            with anyio.fail_after(60):  # a safety net, not a timing assertion
                await asleep.wait()
                await anyio.to_thread.run_sync(cancel, handle.exec_id)
                with pytest.raises(kitaru.KitaruExecutionCancelledError):
                    await handle.result()

        try:
            anyio.run(main)
        finally:
            ASLEEP.clear()
        assert RAN == {"sleeping": 1}  # neither woke nor went on
        kinds = [r.kind for r in runtime.state.read_journal(result["id"])]
        assert kinds[-1] == "flow_cancelled"
        assert "checkpoint_completed" not in kinds
        assert KitaruClient(runtime).executions.get(result["id"]).status == "cancelled"

    def test_cancel_interrupts_a_sync_run_of_an_async_flow(self, runtime: Runtime) -> None:
        # The same through the sync edge: run() blocks in the portal while the body sleeps.
        RAN.clear()
        outcome: dict[str, Any] = {}

        def run() -> None:
            try:
                sleepy.run().wait(timeout=60)
            except BaseException as exc:
                outcome["error"] = exc

        thread = threading.Thread(target=run)
        thread.start()
        try:
            for _ in range(6000):
                if RAN["sleeping"]:
                    break
                threading.Event().wait(0.01)
            [execution] = runtime.state.list_executions()
            KitaruClient(runtime).executions.cancel(execution.id)
        finally:
            thread.join(60)
        assert not thread.is_alive()
        assert isinstance(outcome.get("error"), kitaru.KitaruExecutionCancelledError)
        assert RAN == {"sleeping": 1}


# -- the orchestrator seam ------------------------------------------------------------------------


class RecordingOrchestrator:
    """A remote orchestrator's stand-in: it records what it was asked and drives nothing."""

    def __init__(self) -> None:
        self.submitted: list[str] = []
        self.cancelled: list[str] = []

    async def submit(self, exec_id: str) -> None:
        self.submitted.append(exec_id)

    async def cancel(self, exec_id: str) -> None:
        self.cancelled.append(exec_id)

    async def describe(self, exec_id: str) -> str:
        return f"job for {exec_id}"


@checkpoint
def step(x: int) -> int:
    RAN[f"step{x}"] += 1
    return x


@flow
def asks() -> str:
    step(1)
    return "yes" if kitaru.wait(name="ok", schema=bool) else "no"


@flow
def fails_once(fail: list[bool]) -> int:
    step(2)
    if RAN["failed"] == 0:
        RAN["failed"] += 1
        raise RuntimeError("first time")
    return step(3)


@pytest.fixture
def remote(monkeypatch: pytest.MonkeyPatch) -> RecordingOrchestrator:
    """The local stack type with an orchestrator that only records (a remote stack's shape)."""
    recorder = RecordingOrchestrator()
    monkeypatch.setattr(LocalStack, "orchestrator", lambda self: recorder)
    return recorder


class TestOrchestratorSeam:
    def test_the_local_stack_drives_in_this_process(self) -> None:
        from kitaru.stack import load_stack

        assert isinstance(load_stack().orchestrator(), LocalOrchestrator)

    def test_an_answer_goes_to_the_stacks_orchestrator(
        self, runtime: Runtime, remote: RecordingOrchestrator
    ) -> None:
        RAN.clear()
        handle = asks.run()
        assert handle.status == "waiting"
        answered = KitaruClient().executions.input(handle.exec_id, True)
        # Recorded, handed to the orchestrator, and not driven here.
        assert remote.submitted == [handle.exec_id]
        assert answered.status == "waiting"
        assert RAN["step1"] == 1
        [wait] = KitaruClient().executions.get(handle.exec_id).waits
        assert wait.status == "answered"
        # What the orchestrator's job would do: drive it on (here, the local orchestrator).
        outcome = anyio.run(LocalOrchestrator(runtime=runtime).submit, handle.exec_id)
        assert outcome.status == "completed"
        assert outcome.value == "yes"

    def test_resume_retry_recover_and_cancel_go_through_the_orchestrator(
        self, runtime: Runtime, remote: RecordingOrchestrator
    ) -> None:
        RAN.clear()
        failed = fails_once.run([True])
        with pytest.raises(kitaru.KitaruExecutionError):
            failed.wait()
        client = KitaruClient()
        client.executions.retry(failed.exec_id)
        waiting = asks.run()
        client.executions.resume(waiting.exec_id)
        client.executions.cancel(waiting.exec_id)
        assert remote.submitted == [failed.exec_id, waiting.exec_id]
        assert remote.cancelled == [waiting.exec_id]
        assert RAN["step3"] == 0  # nothing was driven in this process

    def test_without_the_seam_a_client_drives_here(self, runtime: Runtime) -> None:
        RAN.clear()
        handle = asks.run()
        assert KitaruClient().executions.input(handle.exec_id, False).wait(timeout=60) == "no"


# -- a sync checkpoint of an async flow, replayed on the Runner's loop ------------------------

BIG = 70 * 1024  # above the 64 KiB inline limit: the output is a blob in the artifact store


@checkpoint
def big_sync_output(x: int) -> bytes:
    RAN["big"] += 1
    return bytes([x]) * BIG


@flow
async def async_flow_with_a_big_sync_output() -> int:
    data = big_sync_output(7)  # a sync checkpoint called from the async body: it runs on the loop
    answer = kitaru.wait(name="go", question="go?", schema=int)
    return len(data) + answer


class TestSyncCheckpointOfAnAsyncFlow:
    def test_its_blob_output_replays_when_the_flow_resumes_from_a_sync_edge(self, runtime: Runtime) -> None:
        # Driven through the sync edges (run(), the client), the async body runs on kitaru's portal
        # loop; after the wait, replaying the sync checkpoint needs its blob, which sync code on
        # that loop cannot read without blocking it. The Runner reads it before the body runs.
        RAN.clear()
        handle = async_flow_with_a_big_sync_output.run()
        assert handle.status == "waiting"
        KitaruClient(runtime).executions.input(handle.exec_id, 1)
        assert handle.wait(timeout=60) == BIG + 1
        assert RAN["big"] == 1  # replayed from its blob, not run again


@flow
def saves_data() -> str:
    kitaru.save("data", "payload")
    return "ok"


@flow
async def async_flow_that_loads(source: str) -> str:
    value: str = await kitaru.aload(source, "data")
    return value


@flow
async def async_flow_that_loads_with_the_sync_api(source: str) -> str:
    value: str = kitaru.load(source, "data")  # sync API, on the loop the body runs on
    return value


class TestLoadFromAnAsyncFlow:
    def test_aload_works_in_an_async_flow_run_from_a_sync_edge(self, runtime: Runtime) -> None:
        source = saves_data.run().exec_id
        assert async_flow_that_loads.run(source).wait(timeout=60) == "payload"

    def test_the_sync_load_in_async_code_works_inline_or_names_aload(self, runtime: Runtime) -> None:
        # On an inline store (SQLite, memory) the sync form costs no hop and works; on one that
        # needs the event loop (PostgreSQL) it cannot wait for the loop it runs on, and says what
        # to use instead rather than blocking or failing obscurely.
        source = saves_data.run().exec_id
        handle = async_flow_that_loads_with_the_sync_api.run(source)
        if runtime.inline:
            assert handle.wait(timeout=60) == "payload"
        else:
            with pytest.raises(kitaru.KitaruUsageError, match=r"await kitaru\.aload"):
                handle.wait(timeout=60)


@checkpoint
def creates_a_key_twice() -> None:
    raise kitaru.KitaruConflictError("api key 'ci' exists already")


@flow
def conflicting() -> None:
    creates_a_key_twice()


class TestAConflictOfTheFlowsOwn:
    def test_fails_the_execution_instead_of_leaving_it_running_unowned(self, runtime: Runtime) -> None:
        """A conflict is another runner's doing only when the lease went with it: with the lease
        still held, the execution fails with the error (it was left running, its lease held by a
        runner that had stopped, to fail the same way after every recovery)."""
        handle = conflicting.run()
        with pytest.raises(kitaru.KitaruConflictError, match="exists already"):
            handle.wait(timeout=30)
        execution = KitaruClient().executions.get(handle.exec_id)
        assert execution.status == "failed" and "exists already" in (execution.error or "")
        assert runtime.state.get_execution(handle.exec_id).lease_owner is None  # type: ignore[union-attr]
