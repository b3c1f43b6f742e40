"""What a Kitaru 0.18 user's code relies on beyond the client views: the flow handle's
``status``/``get()``, checkpoint futures (``.load()``), ``.product()``, the 0.18 error names, and
the automatic checkpoint events (synthesized from the journal)."""

from __future__ import annotations

import threading

import pytest
from click.testing import CliRunner

import kitaru
from kitaru._engine.runtime import Runtime
from kitaru.cli import main
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


class TestResume:
    def test_resume_of_a_completed_execution_raises_as_0_18_did(self, runtime: Runtime) -> None:
        # 0.18: "Only paused executions can be resumed" (a KitaruStateError); kept.
        handle = approval.run("v2")
        client = kitaru.KitaruClient()
        client.executions.input(handle.exec_id, True)
        with pytest.raises(KitaruStateError, match="is completed, so it cannot run again"):
            client.executions.resume(handle.exec_id)
        with pytest.raises(KitaruStateError):
            client.executions.get(handle.exec_id).resume()


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


FLAKY = {"n": 0}


@kitaru.checkpoint(retries=1, retry_delay=0, type="tool_call")
def flaky_tool() -> int:
    FLAKY["n"] += 1
    if FLAKY["n"] == 1:
        raise RuntimeError("api_key=sk-do-not-broadcast")
    kitaru.progress("second try")
    return 1


@kitaru.checkpoint(cache=True)
def cached_step(x: int) -> int:
    return x + 1


@kitaru.flow
def lifecycle() -> int:
    return flaky_tool() + cached_step(1)


class TestAutomaticCheckpointEvents:
    def test_each_attempt_is_framed_in_order_without_extra_journal_records(self, runtime: Runtime) -> None:
        FLAKY["n"] = 0
        first = lifecycle.run()
        assert first.wait(timeout=60) == 3
        events = list(kitaru.KitaruClient().executions.events(first.exec_id))
        assert [(e.checkpoint_id, e.kind.rpartition(".")[2], e.index) for e in events] == [
            ("flaky_tool", "started", 0),
            ("flaky_tool", "failed", 1),
            ("flaky_tool", "started", 2),
            ("flaky_tool", "progress", 3),
            ("flaky_tool", "returned", 4),
            ("cached_step", "started", 0),
            ("cached_step", "returned", 1),
        ]
        failed = events[1]
        assert failed.payload["error_type"] == "RuntimeError"
        assert "sk-do-not-broadcast" not in str(failed.payload)  # a generic message, as 0.18
        assert failed.payload["kitaru"]["checkpoint_type"] == "tool_call"
        assert events[0].payload["kitaru"]["checkpoint_type"] == "tool_call"
        assert len({e.correlation_id for e in events[:5]}) == 1
        # Derived, not written: the journal holds only the one progress event.
        journal = runtime.state.read_journal(first.exec_id)
        assert [r.kind for r in journal].count("event") == 1
        # A cache hit did not run its function: no events for it (as 0.18).
        FLAKY["n"] = 1
        second = lifecycle.run()
        second.wait(timeout=60)
        kinds = [(e.checkpoint_id, e.kind) for e in kitaru.KitaruClient().executions.events(second.exec_id)]
        assert ("cached_step", "kitaru.checkpoint.started") not in kinds
        assert ("flaky_tool", "kitaru.checkpoint.returned") in kinds

    def test_a_watcher_resuming_from_a_cursor_misses_nothing(self, runtime: Runtime) -> None:
        FLAKY["n"] = 0
        handle = lifecycle.run()
        handle.wait(timeout=60)
        client = kitaru.KitaruClient().executions
        everything = list(client.events(handle.exec_id))
        for n, event in enumerate(everything):
            later = [(e.checkpoint_id, e.kind) for e in client.events(handle.exec_id, since=event.cursor)]
            rest = [(e.checkpoint_id, e.kind) for e in everything[n + 1 :]]
            # Everything after it comes again (a derived start may come twice, nothing is lost).
            assert later[len(later) - len(rest) :] == rest

    def test_get_watch_prints_each_attempts_start(self, runtime: Runtime) -> None:
        FLAKY["n"] = 0
        handle = lifecycle.run()
        handle.wait(timeout=60)
        result = CliRunner().invoke(main, ["executions", "get", handle.exec_id, "--watch"])
        assert result.exit_code == 0, result.output
        lines = [line.split()[-2:] for line in result.stdout.splitlines() if line.endswith(" started")]
        assert lines == [["flaky_tool", "started"], ["flaky_tool", "started"], ["cached_step", "started"]]


@kitaru.checkpoint
def chatty(topic: str) -> str:
    print(f"researching {topic}")
    return topic


@kitaru.flow
def chatty_flow(topic: str) -> str:
    print("flow starts")
    return chatty(topic)


class TestLogs:
    def test_wait_hands_each_log_entry_to_a_sink_or_prints_it(
        self, runtime: Runtime, capsys: pytest.CaptureFixture[str]
    ) -> None:
        handle = chatty_flow.run("agents")
        seen: list[tuple[str | None, str]] = []
        assert (
            handle.wait(timeout=60, log_sink=lambda e: seen.append((e.checkpoint_name, e.message)))
            == "agents"
        )
        assert [(name, text.strip()) for name, text in seen] == [
            (None, "flow starts"),
            ("chatty", "researching agents"),
        ]
        capsys.readouterr()
        assert handle.wait(timeout=60, stream_logs=True) == "agents"
        assert capsys.readouterr().out.splitlines() == ["flow starts", "researching agents"]

    def test_cli_logs_source_grouped_and_verbose(self, runtime: Runtime) -> None:
        exec_id = chatty_flow.run("agents").exec_id

        def logs(*args: str) -> list[str]:
            result = CliRunner().invoke(main, ["executions", "logs", exec_id, *args])
            assert result.exit_code == 0, result.output
            return result.stdout.splitlines()

        assert logs("--source", "step") == ["[chatty] researching agents"]
        assert logs("--source", "runner") == ["[flow] flow starts"]
        assert logs("--grouped") == ["== flow ==", "flow starts", "", "== chatty ==", "researching agents"]
        verbose = logs("-vv", "--checkpoint", "chatty")
        assert len(verbose) == 1 and verbose[0].endswith("INFO  [chatty] researching agents")
