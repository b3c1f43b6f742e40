"""What a checkpoint call promises beyond its output: how it runs outside a flow, how ``.submit()``
and ``.map()`` run it, and what a failed attempt leaves in the journal for `executions get`."""

from __future__ import annotations

import contextvars
import random

import pytest

import kitaru
from kitaru import checkpoint, flow
from kitaru._engine.runtime import Runtime


@checkpoint
def scale(x: int, factor: int = 1) -> int:
    return x * factor


@checkpoint
async def ascale(x: int) -> int:
    return x * 2


class TestOutsideAFlow:
    def test_a_call_runs_the_plain_function(self) -> None:
        assert scale(3, factor=4) == 12

    def test_submit_and_map_run_the_plain_function(self) -> None:
        assert scale.submit(3, factor=4).result(timeout=60) == 12
        assert scale.map([1, 2], [10, 20]) == [10, 40]

    def test_an_async_checkpoint_cannot_be_submitted(self) -> None:
        with pytest.raises(kitaru.KitaruUsageError) as info:
            ascale.submit(1)
        assert str(info.value) == (
            "checkpoint 'ascale' is async: run several at once with asyncio.gather instead of .submit()."
        )


REQUEST = contextvars.ContextVar("REQUEST", default="unset")


class TestSubmitAndMap:
    def test_map_zips_to_the_shortest_iterable(self, runtime: Runtime) -> None:
        @flow
        def fan() -> list[int]:
            return scale.map([1, 2, 3], [10, 20])

        assert fan.run().wait(timeout=60) == [10, 40]

    def test_a_submitted_call_sees_the_flow_body_s_context(self, runtime: Runtime) -> None:
        # Context set by the body (a request id, a tracing span) follows the call onto its thread.
        @checkpoint
        def which() -> str:
            return REQUEST.get()

        @flow
        def traced() -> list[str]:
            REQUEST.set("req-42")
            return [which.submit().result(timeout=60), *which.map([])]

        assert traced.run().wait(timeout=60) == ["req-42"]


class TestCalls:
    def test_each_call_s_output_is_a_new_version_of_its_name(self, runtime: Runtime) -> None:
        # `kitaru.load(exec_id, "scale", version=2)` finds the second call's output.
        @flow
        def twice() -> int:
            return scale(1) + scale(2)

        handle = twice.run()
        assert handle.wait(timeout=60) == 3
        outputs = runtime.state.list_artifacts(handle.exec_id, type="output")
        assert [(a.name, a.version, a.call_id) for a in outputs] == [
            ("scale", 1, "scale"),
            ("scale", 2, "scale:2"),
        ]

    def test_a_checkpoint_called_inside_another_says_they_do_not_nest(self, runtime: Runtime) -> None:
        @checkpoint
        def outer() -> int:
            return scale(1)

        @flow
        def nested() -> int:
            return outer()

        with pytest.raises(kitaru.KitaruUsageError) as info:
            nested.run().wait(timeout=60)
        assert str(info.value) == (
            "checkpoint 'scale' was called inside checkpoint 'outer'; checkpoints do not nest. Call it "
            "from the flow body, or drop @checkpoint from the inner function."
        )


class TestFailedAttempts:
    def test_each_failed_attempt_is_journaled_with_its_error_and_retry(
        self, runtime: Runtime, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        # The jitter is drawn from [0.5, 1.5]; pinned to its top, the delays are exact.
        def top_of(low: float, high: float) -> float:
            assert (low, high) == (0.5, 1.5)
            return high

        monkeypatch.setattr(random, "uniform", top_of)

        @checkpoint(retries=2, retry_delay=0.01, backoff=3, type="tool_call")
        def flaky() -> None:
            kitaru.log(trying=True)
            kitaru.save("partial", "half done")
            print("attempt output")
            raise ValueError("boom")

        @flow
        def f() -> None:
            flaky()

        handle = f.run()
        with pytest.raises(kitaru.KitaruExecutionError):
            handle.wait(timeout=60)
        journal = runtime.state.read_journal(handle.exec_id)
        failed = [r for r in journal if r.kind == "checkpoint_failed"]
        assert [(r.call_id, r.seq, r.attempt) for r in failed] == [
            ("flaky", 1, 1),
            ("flaky", 1, 2),
            ("flaky", 1, 3),
        ]
        assert [((r.data or {})["will_retry"], (r.data or {})["retry_in"]) for r in failed] == [
            (True, pytest.approx(0.015)),
            (True, pytest.approx(0.045)),
            (False, None),
        ]
        for r in failed:
            data = r.data or {}
            assert data["error"] == "ValueError: boom"
            assert data["traceback"].startswith("Traceback (most recent call last):\n")
            assert 'raise ValueError("boom")' in data["traceback"]
            # The attempt's start rides along: its type, when it started, its inputs' fingerprint.
            assert data["type"] == "tool_call" and "fp" in data and isinstance(data["started_at"], float)
            assert isinstance(r.ts, float) and r.ts >= data["started_at"]
        # Logs and printed output of failed attempts are kept; their saves are not.
        kinds = [r.kind for r in journal if r.call_id == "flaky"]
        assert kinds.count("log") == 3 and kinds.count("output") >= 3
        assert runtime.state.list_artifacts(handle.exec_id, type="save") == []
