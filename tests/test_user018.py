"""What a Kitaru 0.18 user's code relies on beyond the client views: the flow handle's
``status``/``get()``, checkpoint futures (``.load()``), ``.product()``, the 0.18 error names, and
the automatic checkpoint events (synthesized from the journal)."""

from __future__ import annotations

import threading

import pytest

import kitaru
from kitaru._engine.runtime import Runtime
from kitaru.client import ExecutionStatus
from kitaru.errors import KitaruStateError

GATE = threading.Event()


@kitaru.checkpoint
def shout(item: str) -> str:
    return item.upper()


@kitaru.checkpoint
def pair(letter: str, n: int) -> str:
    return f"{letter}{n}"


@kitaru.flow
def fan_out(items: list[str]) -> dict[str, object]:
    futures = [shout.submit(item) for item in items]
    first = futures[0]
    first.wait()
    return {
        "loaded": [f.load() for f in futures],
        "results": [f.result() for f in futures],
        "done": first.done() and not first.running(),
        "product": pair.product(["a", "b"], [1, 2]),
    }


@kitaru.flow
def approval(topic: str) -> str:
    if kitaru.wait(name="approve", question=f"Publish {topic}?", schema=bool):
        return f"published {topic}"
    return "rejected"


class TestCheckpointFutures:
    def test_submit_futures_load_wait_and_product(self, runtime: Runtime) -> None:
        result = fan_out.run(["x", "y"]).wait(timeout=60)
        assert result == {
            "loaded": ["X", "Y"],
            "results": ["X", "Y"],
            "done": True,
            "product": ["a1", "a2", "b1", "b2"],
        }
        calls = [c.call_id for c in kitaru.KitaruClient().executions.latest().checkpoints]
        assert sorted(calls) == sorted(["shout", "shout:2", "pair", "pair:2", "pair:3", "pair:4"])


class TestFlowHandle:
    def test_status_is_an_execution_status(self, runtime: Runtime) -> None:
        handle = fan_out.run(["x"])
        handle.wait(timeout=60)
        assert handle.status is ExecutionStatus.COMPLETED
        assert handle.status.is_finished and handle.status.is_successful

    def test_get_returns_a_finished_result_and_refuses_an_unfinished_one(self, runtime: Runtime) -> None:
        handle = approval.run("v1")
        assert handle.status == "waiting" and not handle.status.is_finished
        with pytest.raises(KitaruStateError, match=r"still waiting.*executions input"):
            handle.get()
        kitaru.KitaruClient().executions.input(handle.exec_id, True)
        assert handle.get() == "published v1"


@kitaru.checkpoint
def broken(source: str) -> str:
    raise ValueError(f"{source} is not ready")


@kitaru.flow
def ingest(source: str) -> str:
    return broken(source)


class TestErrorNames:
    def test_a_user_code_failure_is_a_kitaru_user_code_error_with_0_18s_fields(
        self, runtime: Runtime
    ) -> None:
        with pytest.raises(kitaru.KitaruUserCodeError) as caught:
            ingest.run("s3://bucket").wait(timeout=60)
        exc = caught.value
        assert isinstance(exc, kitaru.KitaruExecutionError)
        assert exc.exec_id and exc.status == "failed"
        assert exc.failure_origin == kitaru.FailureOrigin.USER_CODE
        assert isinstance(exc.__cause__, ValueError)
        # The same, read back by a handle that did not drive it (no local outcome).
        with pytest.raises(kitaru.KitaruUserCodeError) as again:
            kitaru.KitaruClient().executions.get(exc.exec_id)  # still readable
            from kitaru._engine.handles import FlowHandle

            FlowHandle(exc.exec_id, runtime).wait(timeout=60)
        assert again.value.failure_origin == kitaru.FailureOrigin.USER_CODE

    def test_the_other_0_18_names_catch_what_they_named(self) -> None:
        assert issubclass(kitaru.KitaruDivergenceError, kitaru.KitaruExecutionError)
        assert kitaru.KitaruDivergenceError("x").failure_origin == kitaru.FailureOrigin.DIVERGENCE
        assert kitaru.KitaruContextError is kitaru.KitaruNotInFlowError
        assert kitaru.KitaruBackendError is kitaru.KitaruStoreError
        assert kitaru.KitaruLogRetrievalError is kitaru.KitaruStoreError
        assert kitaru.KitaruRuntimeError is kitaru.KitaruError
        with pytest.raises(kitaru.KitaruContextError):
            kitaru.progress("outside any checkpoint")
