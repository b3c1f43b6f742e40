"""The durable core's contract, on each embedded store: runs, replays, waits, retries, errors."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import Counter
from dataclasses import dataclass

import pytest
from pydantic import BaseModel

import kitaru
from kitaru import KitaruClient, checkpoint, flow
from kitaru._engine.runtime import Runtime


class Doc(BaseModel):
    title: str
    tags: list[str]


class Approval(BaseModel):
    approved: bool
    note: str = ""


@dataclass
class Point:
    x: int
    y: float


def completed_calls(runtime: Runtime, exec_id: str) -> Counter[str]:
    return Counter(r.call_id for r in runtime.state.read_journal(exec_id) if r.kind == "checkpoint_completed")


class TestRunning:
    def test_sync_flow_returns_checkpoint_values(self, runtime: Runtime) -> None:
        ran: Counter[str] = Counter()

        @checkpoint
        def double(x: int) -> int:
            ran["double"] += 1
            return x * 2

        @flow
        def pipeline(x: int) -> int:
            a = double(x)
            return double(a) + 1

        handle = pipeline.run(5)
        assert handle.status == "completed"
        assert handle.wait(timeout=60) == 21
        assert ran["double"] == 2
        assert completed_calls(runtime, handle.exec_id) == {"double": 1, "double:2": 1}

    def test_async_flow_started_from_an_event_loop(self, runtime: Runtime) -> None:
        @checkpoint
        async def fetch(i: int) -> int:
            await asyncio.sleep(0)
            return i * 10

        @flow
        async def gather_flow(n: int) -> list[int]:
            return list(await asyncio.gather(*[fetch(i) for i in range(n)]))

        async def app() -> list[int]:
            handle = await gather_flow.start(4)
            return await handle.result(timeout=60)

        assert asyncio.run(app()) == [0, 10, 20, 30]

    def test_sync_flow_started_from_an_event_loop_runs_off_the_loop(self, runtime: Runtime) -> None:
        @flow
        def blocking() -> str:
            time.sleep(0.2)
            return "done"

        async def app() -> tuple[str, int]:
            ticks = 0

            async def ticker() -> None:
                nonlocal ticks
                while True:
                    ticks += 1
                    await asyncio.sleep(0.005)

            tick_task = asyncio.ensure_future(ticker())
            handle = await blocking.start()
            value = await handle.result(timeout=60)
            tick_task.cancel()
            return value, ticks

        value, ticks = asyncio.run(app())
        assert value == "done"
        assert ticks > 3  # the loop kept running while the flow slept

    def test_sync_flow_can_call_async_checkpoint(self, runtime: Runtime) -> None:
        @checkpoint
        async def draft(text: str) -> str:
            await asyncio.sleep(0)
            return text.upper()

        @flow
        def writer(text: str) -> str:
            return draft(text) + "!"

        assert writer.run("hi").wait(timeout=60) == "HI!"

    def test_run_inside_event_loop_points_to_start(self, runtime: Runtime) -> None:
        @flow
        def f() -> int:
            return 1

        async def app() -> None:
            f.run()

        with pytest.raises(kitaru.KitaruUsageError, match=r"await f\.start"):
            asyncio.run(app())

    def test_calling_a_flow_directly_is_an_error(self, runtime: Runtime) -> None:
        @flow
        def f() -> int:
            return 1

        with pytest.raises(kitaru.KitaruUsageError, match=r"f\.run"):
            f()

    def test_wrong_arguments_are_a_usage_error(self, runtime: Runtime) -> None:
        @flow
        def f(x: int) -> int:
            return x

        with pytest.raises(kitaru.KitaruUsageError, match="missing a required argument"):
            f.run()

    def test_checkpoint_outside_a_flow_runs_plainly(self, runtime: Runtime) -> None:
        @checkpoint
        def add(a: int, b: int) -> int:
            return a + b

        assert add(2, 3) == 5
        assert runtime.state.list_executions() == []

    def test_checkpoints_do_not_nest(self, runtime: Runtime) -> None:
        @checkpoint
        def inner() -> int:
            return 1

        @checkpoint
        def outer() -> int:
            return inner()

        @flow
        def f() -> int:
            return outer()

        handle = f.run()
        with pytest.raises(kitaru.KitaruUsageError, match="do not nest"):
            handle.wait(timeout=60)

    def test_decorators_reject_bad_targets_when_applied(self) -> None:
        with pytest.raises(kitaru.KitaruUsageError, match="generator"):

            @checkpoint
            def gen():  # type: ignore[no-untyped-def]
                yield 1

        with pytest.raises(kitaru.KitaruUsageError, match="retries"):
            checkpoint(retries=-1)(lambda: 1)

    def test_submit_and_map_run_concurrently_with_stable_ids(self, runtime: Runtime) -> None:
        barrier = threading.Barrier(3, timeout=5)

        @checkpoint
        def slow(i: int) -> int:
            barrier.wait(timeout=60)  # only passes if three calls run at the same time
            return i * i

        @flow
        def fan() -> list[int]:
            return slow.map([1, 2, 3])

        handle = fan.run()
        assert handle.wait(timeout=60) == [1, 4, 9]
        assert set(completed_calls(runtime, handle.exec_id)) == {"slow", "slow:2", "slow:3"}

    def test_idempotent_execution_id(self, runtime: Runtime) -> None:
        ran = Counter[str]()

        @checkpoint
        def work() -> str:
            ran["work"] += 1
            return "ok"

        @flow
        def f() -> str:
            return work()

        first = f.run(execution_id="order-42")
        second = f.run(execution_id="order-42")
        assert first.exec_id == second.exec_id == "order-42"
        assert second.wait(timeout=60) == "ok"
        assert ran["work"] == 1
        assert len(runtime.state.list_executions()) == 1

    def test_values_of_many_types_round_trip_through_checkpoints(self, runtime: Runtime) -> None:
        values = [Doc(title="t", tags=["a"]), Point(1, 2.5), b"\x00\x01", {"a": [1, {"b": None}]}]

        @checkpoint
        def echo(i: int) -> object:
            return values[i]

        @flow
        def f() -> list[object]:
            out = [echo(i) for i in range(len(values))]
            kitaru.wait(name="pause")
            return out

        handle = f.run()
        assert handle.status == "waiting", KitaruClient().executions.get(handle.exec_id).error
        # The resumed run gets every value back from the store, with its type.
        done = KitaruClient().executions.input(handle.exec_id, None)
        result = done.wait(timeout=60)
        assert result == values
        assert [type(v) for v in result] == [type(v) for v in values]


class TestResume:
    def test_resume_replays_completed_checkpoints_without_running_them(self, runtime: Runtime) -> None:
        ran = Counter[str]()
        crash = {"on": True}

        @checkpoint
        def step(i: int) -> int:
            ran[f"step{i}"] += 1
            if i == 3 and crash["on"]:
                raise KeyboardInterrupt  # a crash kitaru must not record as a failure
            return i

        @flow
        def f() -> int:
            return sum(step(i) for i in range(5))

        with pytest.raises(KeyboardInterrupt):
            f.run()
        [execution] = runtime.state.list_executions()
        assert execution.status == "running"
        crash["on"] = False
        handle = KitaruClient(runtime).executions.resume(execution.id)
        assert handle.wait(timeout=60) == 10
        assert ran == {"step0": 1, "step1": 1, "step2": 1, "step3": 2, "step4": 1}

    def test_divergent_resume_names_both_functions(self, runtime: Runtime) -> None:
        version = {"v": 1}

        @checkpoint
        def research() -> str:
            return "notes"

        @checkpoint
        def research_v2() -> str:
            return "other notes"

        @flow
        def f() -> str:
            notes = research() if version["v"] == 1 else research_v2()
            kitaru.wait(name="approve", schema=bool)
            return notes

        handle = f.run()
        assert handle.status == "waiting"
        version["v"] = 2
        with pytest.raises(kitaru.KitaruDivergenceError) as err:
            KitaruClient().executions.input(handle.exec_id, True)
        message = str(err.value)
        assert "research" in message and "research_v2" in message

    def test_changed_inputs_are_reported_not_silently_reused(
        self, runtime: Runtime, caplog: pytest.LogCaptureFixture
    ) -> None:
        config = {"topic": "cats"}

        @checkpoint
        def research(topic: str) -> str:
            return f"notes on {topic}"

        @flow
        def f() -> str:
            notes = research(config["topic"])
            kitaru.wait(name="go")
            return notes

        handle = f.run()
        config["topic"] = "dogs"
        with caplog.at_level(logging.WARNING, logger="kitaru"):
            result = KitaruClient().executions.input(handle.exec_id, None).wait(timeout=60)
        assert result == "notes on cats"  # the journal wins, as documented...
        assert "inputs changed" in caplog.text  # ...and the user is told
        kinds = [r.kind for r in runtime.state.read_journal(handle.exec_id)]
        assert "input_changed" in kinds

    def test_thousand_concurrent_checkpoints_keep_ids_across_resume(self, runtime: Runtime) -> None:
        ran = Counter[int]()

        @checkpoint
        async def square(i: int) -> int:
            ran[i] += 1
            await asyncio.sleep(0)
            return i * i

        @flow
        async def fan() -> int:
            values = await asyncio.gather(*[square(i) for i in range(1000)])
            kitaru.wait(name="check")
            return sum(values)

        handle = asyncio.run(_start_and_wait(fan))
        assert handle.status == "waiting"
        journal = runtime.state.read_journal(handle.exec_id)
        ids_before = {r.call_id: r.artifact_id for r in journal if r.kind == "checkpoint_completed"}
        assert len(ids_before) == 1000
        result = KitaruClient().executions.input(handle.exec_id, None).wait(timeout=60)
        assert result == sum(i * i for i in range(1000))
        assert set(ran.values()) == {1}  # nothing ran twice
        ids_after = {
            r.call_id: r.artifact_id
            for r in runtime.state.read_journal(handle.exec_id)
            if r.kind == "checkpoint_completed"
        }
        assert ids_after == ids_before
        # Call ids follow call order: square:k is the k-th call, i.e. square(k - 1).
        for call_id, artifact_id in ids_before.items():
            k = int(call_id.partition(":")[2] or 1)
            artifact = runtime.state.get_artifact(artifact_id)
            assert artifact is not None and runtime.load_artifact(artifact) == (k - 1) ** 2

    def test_resume_refuses_finished_executions_with_the_command_that_fits(self, runtime: Runtime) -> None:
        @flow
        def f() -> int:
            return 1

        handle = f.run()
        with pytest.raises(kitaru.KitaruStateError, match="completed"):
            KitaruClient().executions.resume(handle.exec_id)


async def _start_and_wait(fl: kitaru.Flow) -> kitaru.AsyncFlowHandle:  # type: ignore[type-arg]
    handle = await fl.start()
    await asyncio.wait_for(asyncio.shield(handle._task), 60)  # type: ignore[arg-type]
    return handle


class TestWaits:
    def test_wait_suspends_and_an_answer_completes(self, runtime: Runtime) -> None:
        ran = Counter[str]()

        @checkpoint
        def draft() -> str:
            ran["draft"] += 1
            return "text"

        @flow
        def review() -> str:
            text = draft()
            ok = kitaru.wait(name="approve", question="Publish?", schema=bool)
            return text if ok else "rejected"

        handle = review.run()
        assert handle.status == "waiting"
        execution = KitaruClient().executions.get(handle.exec_id)
        [w] = execution.open_waits
        assert (w.name, w.question, w.schema) == ("approve", "Publish?", "bool")
        done = KitaruClient().executions.input(handle.exec_id, True)
        assert done.wait(timeout=60) == "text"
        assert ran["draft"] == 1

    def test_bad_answer_is_rejected_and_changes_nothing(self, runtime: Runtime) -> None:
        @flow
        def review() -> bool:
            return bool(kitaru.wait(name="approve", schema=bool))

        handle = review.run()
        before = runtime.state.read_journal(handle.exec_id)
        with pytest.raises(kitaru.KitaruWaitValidationError, match="expected bool"):
            KitaruClient().executions.input(handle.exec_id, "banana")
        assert runtime.state.read_journal(handle.exec_id) == before
        assert handle.status == "waiting"
        assert KitaruClient().executions.input(handle.exec_id, False).wait(timeout=60) is False

    def test_answer_validated_against_a_pydantic_model(self, runtime: Runtime) -> None:
        @flow
        def review() -> str:
            answer = kitaru.wait(name="approve", schema=Approval)
            assert isinstance(answer, Approval)
            return answer.note

        handle = review.run()
        with pytest.raises(kitaru.KitaruWaitValidationError, match="approved"):
            KitaruClient().executions.input(handle.exec_id, {"note": "no flag"})
        done = KitaruClient().executions.input(handle.exec_id, {"approved": True, "note": "ok"})
        assert done.wait(timeout=60) == "ok"

    def test_except_exception_does_not_swallow_the_suspension(self, runtime: Runtime) -> None:
        swallowed = []

        @flow
        def careless() -> str:
            try:
                return str(kitaru.wait(name="input"))
            except Exception as exc:
                swallowed.append(exc)
                return "swallowed"

        handle = careless.run()
        assert handle.status == "waiting"
        assert swallowed == []

    def test_answering_a_closed_wait_is_refused(self, runtime: Runtime) -> None:
        @flow
        def f() -> object:
            return kitaru.wait(name="once")

        handle = f.run()
        client = KitaruClient()
        client.executions.input(handle.exec_id, 1)
        with pytest.raises(kitaru.KitaruStateError, match="completed"):
            client.executions.input(handle.exec_id, 2)
        with pytest.raises(kitaru.KitaruStateError, match="answered"):
            client.executions.input(handle.exec_id, 2, wait="once")

    def test_wait_timeout_raises_inside_the_flow(self, runtime: Runtime) -> None:
        @flow
        def f() -> str:
            try:
                kitaru.wait(name="slow", expires_in=0.05)
            except kitaru.KitaruWaitTimeoutError:
                return "defaulted"
            return "answered"

        handle = f.run()
        if handle.status == "waiting":
            time.sleep(0.1)
            handle = KitaruClient().executions.resume(handle.exec_id)
        # else: a slow machine spent the whole timeout before the flow could suspend, and the wait
        # timed out in the first run: the same outcome, reached earlier.
        assert handle.wait(timeout=60) == "defaulted"
        kinds = [r.kind for r in runtime.state.read_journal(handle.exec_id)]
        assert kinds.count("wait_timed_out") == 1 and "wait_answered" not in kinds

    def test_fast_answer_during_hold_continues_in_the_same_run(
        self, runtime: Runtime, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        # The hold only bounds the worst case: the flow continues as soon as the answer lands.
        monkeypatch.setenv("KITARU_WAIT_HOLD", "60")
        client = KitaruClient()

        def answer_soon() -> None:
            for _ in range(3000):
                executions = runtime.state.list_executions()
                if executions and client.executions.get(executions[0].id).open_waits:
                    client.executions.input(executions[0].id, "yes", resume=False)
                    return
                time.sleep(0.01)

        @flow
        def f() -> object:
            return kitaru.wait(name="quick")

        answerer = threading.Thread(target=answer_soon)
        answerer.start()
        handle = f.run()
        answerer.join()
        assert handle.status == "completed"
        assert handle.wait(timeout=60) == "yes"

    def test_wait_inside_a_checkpoint_is_an_error(self, runtime: Runtime) -> None:
        @checkpoint
        def step() -> object:
            return kitaru.wait()

        @flow
        def f() -> object:
            return step()

        with pytest.raises(kitaru.KitaruUsageError, match="cannot pause halfway"):
            f.run().wait(timeout=60)


class TestRetriesAndFailures:
    def test_retries_with_backoff_journal_every_attempt(self, runtime: Runtime) -> None:
        attempts = []

        @checkpoint(retries=3, retry_delay=0.01, backoff=2)
        def flaky() -> str:
            attempts.append(time.monotonic())
            if len(attempts) < 3:
                raise ConnectionError("try again")
            return "ok"

        @flow
        def f() -> str:
            return flaky()

        handle = f.run()
        assert handle.wait(timeout=60) == "ok"
        records = [r for r in runtime.state.read_journal(handle.exec_id) if r.call_id == "flaky"]
        assert [(r.kind, r.attempt) for r in records] == [
            ("checkpoint_failed", 1),
            ("checkpoint_failed", 2),
            ("checkpoint_completed", 3),
        ]
        assert all((r.data or {}).get("will_retry") for r in records[:2])
        # Second gap uses the doubled delay (jitter keeps each within 0.5x..1.5x).
        assert attempts[1] - attempts[0] >= 0.005
        assert attempts[2] - attempts[1] >= 0.01

    def test_retry_on_filters_exceptions(self, runtime: Runtime) -> None:
        calls = []

        @checkpoint(retries=5, retry_delay=0, retry_on=ConnectionError)
        def strict() -> None:
            calls.append(1)
            raise ValueError("not transient")

        @flow
        def f() -> None:
            strict()

        handle = f.run()
        assert handle.status == "failed"
        with pytest.raises(kitaru.KitaruExecutionError, match="ValueError: not transient") as err:
            handle.wait(timeout=60)
        assert isinstance(err.value.__cause__, ValueError)
        assert len(calls) == 1

    def test_failed_execution_retried_in_place_reuses_completed_checkpoints(self, runtime: Runtime) -> None:
        ran = Counter[str]()
        broken = {"yes": True}

        @checkpoint
        def fetch() -> int:
            ran["fetch"] += 1
            return 20

        @checkpoint
        def compute(x: int) -> int:
            ran["compute"] += 1
            if broken["yes"]:
                raise RuntimeError("bug")
            return x + 1

        @flow
        def f() -> int:
            return compute(fetch())

        handle = f.run()
        assert handle.status == "failed"
        broken["yes"] = False
        assert KitaruClient().executions.retry(handle.exec_id).wait(timeout=60) == 21
        assert ran == {"fetch": 1, "compute": 2}


class TestCancel:
    def test_cancel_waiting_execution_closes_its_waits(self, runtime: Runtime) -> None:
        @flow
        def f() -> object:
            return kitaru.wait(name="w")

        handle = f.run()
        client = KitaruClient()
        assert client.executions.cancel(handle.exec_id).status == "cancelled"
        with pytest.raises(kitaru.KitaruStateError, match="cancelled"):
            client.executions.input(handle.exec_id, 1)
        with pytest.raises(kitaru.KitaruExecutionCancelledError):
            handle.wait(timeout=60)

    def test_cancel_running_execution_stops_at_next_checkpoint(self, runtime: Runtime) -> None:
        started = threading.Event()
        ran = Counter[str]()

        @checkpoint
        def tick(i: int) -> int:
            ran["tick"] += 1
            started.set()
            time.sleep(0.02)
            return i

        @flow
        def forever() -> None:
            for i in range(10_000):
                tick(i)

        result: list[kitaru.FlowHandle] = []
        runner = threading.Thread(target=lambda: result.append(forever.run()))
        runner.start()
        assert started.wait(10)
        [execution] = runtime.state.list_executions()
        KitaruClient().executions.cancel(execution.id)
        runner.join(10)
        assert not runner.is_alive()
        assert result[0].status == "cancelled"
        assert ran["tick"] < 10_000
        with pytest.raises(kitaru.KitaruStateError, match="cancelled"):
            KitaruClient().executions.resume(execution.id)


class TestArtifactsAndMetadata:
    def test_save_load_log_and_artifact_listing(self, runtime: Runtime) -> None:
        @checkpoint
        def research(topic: str) -> str:
            kitaru.save("prompt", f"Research {topic}", type="prompt")
            kitaru.log(tokens=12)
            return "brief"

        @flow
        def first(topic: str) -> str:
            kitaru.log(team="docs")
            return research(topic)

        a = first.run("agents")
        assert a.wait(timeout=60) == "brief"

        @checkpoint
        def reuse(exec_id: str) -> str:
            return kitaru.load(exec_id, "prompt") + "!"

        @flow
        def second(exec_id: str) -> str:
            return reuse(exec_id)

        assert second.run(a.exec_id).wait(timeout=60) == "Research agents!"

        client = KitaruClient()
        execution = client.executions.get(a.exec_id)
        assert execution.metadata == {"team": "docs"}
        assert execution.checkpoints[0].metadata == {"tokens": 12}
        names = [(x.name, x.type) for x in client.artifacts.list(a.exec_id)]
        assert names == [
            ("topic", "input"),
            ("prompt", "prompt"),
            ("research", "output"),
            ("result", "result"),
        ]
        [prompt] = client.artifacts.list(a.exec_id, type="prompt")
        assert client.artifacts.get(prompt.id).load() == "Research agents"
        assert prompt.content_hash.startswith("sha256:") and prompt.size > 0

    def test_load_of_a_missing_artifact_names_what_exists(self, runtime: Runtime) -> None:
        @flow
        def producer() -> int:
            return 1

        done = producer.run()

        @flow
        def consumer(exec_id: str) -> object:
            return kitaru.load(exec_id, "nope")

        with pytest.raises(kitaru.KitaruNotFoundError, match="result"):
            consumer.run(done.exec_id).wait(timeout=60)

    def test_large_outputs_are_shared_blobs(self, runtime: Runtime) -> None:
        blob = bytes(range(256)) * 4096  # 1 MiB

        @checkpoint
        def big() -> bytes:
            return blob

        @flow
        def f() -> int:
            return len(big()) + len(big())

        handle = f.run()
        assert handle.wait(timeout=60) == 2 * len(blob)
        outputs = KitaruClient().artifacts.list(handle.exec_id, type="output")
        assert len(outputs) == 2 and outputs[0].content_hash == outputs[1].content_hash
        assert outputs[0].uri is not None and outputs[0].uri == outputs[1].uri
        key = "blobs/" + outputs[0].uri.rpartition("/blobs/")[2]
        assert list(runtime.artifacts.list("blobs/")) == [key]

    def test_current_execution_id_and_flow_only_calls(self, runtime: Runtime) -> None:
        seen = []

        @flow
        def f() -> None:
            seen.append(kitaru.current_execution_id())

        handle = f.run()
        assert seen == [handle.exec_id]
        with pytest.raises(kitaru.KitaruNotInFlowError):
            kitaru.current_execution_id()
        with pytest.raises(kitaru.KitaruNotInFlowError):
            kitaru.wait()
        with pytest.raises(kitaru.KitaruNotInFlowError):
            kitaru.save("x", 1)


class TestClientFromAsyncCode:
    def test_answering_an_async_flow_from_inside_an_event_loop(self, runtime: Runtime) -> None:
        @checkpoint
        async def double(x: int) -> int:
            return 2 * x

        @flow
        async def waiter(x: int) -> int:
            ok = kitaru.wait(name="go", schema=bool)
            return await double(x) if ok else 0

        async def app() -> int:
            handle = await waiter.start(21)
            await asyncio.wait_for(asyncio.shield(handle._task), 30)  # type: ignore[arg-type]
            assert handle.status == "waiting"
            # The client is blocking; called from async code it must still work.
            return KitaruClient().executions.input(handle.exec_id, True).wait(timeout=60)  # type: ignore[no-any-return]

        assert asyncio.run(app()) == 42
