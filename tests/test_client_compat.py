"""The client as code written for the original Kitaru (0.18) reads it: the original's names on
the views, its method parameters, its replay spelling (``checkpoint.<name>`` overrides, flow
inputs as keyword arguments), and none of it changing the JSON this client already gives."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

import kitaru
from kitaru import KitaruClient
from kitaru._engine.runtime import Runtime
from kitaru.cli import main
from kitaru.client import ExecutionHandle, ExecutionStatus, FailureInfo
from kitaru.errors import FailureOrigin, KitaruNotFoundError, KitaruUsageError

TRIES = {"n": 0}


@kitaru.checkpoint
def research(topic: str) -> str:
    kitaru.save("sources", [topic, "web"], type="context")
    kitaru.save("scratch", 1)
    return f"notes about {topic}"


@kitaru.checkpoint
def draft(notes: str) -> str:
    print(f"drafting from {notes}")
    return f"Draft from {notes}"


@kitaru.flow
def pipeline(topic: str) -> str:
    print("pipeline starts")
    return draft(research(topic))


@kitaru.flow
def twice(topic: str) -> str:
    return draft(research(topic)) + " | " + draft(research(topic + "!"))


@kitaru.checkpoint(retries=1)
def shaky(x: int) -> int:
    TRIES["n"] += 1
    raise ValueError(f"no {x}")


@kitaru.flow
def failing(x: int) -> int:
    return shaky(x)


@kitaru.flow
def gated(topic: str) -> str:
    notes = research(topic)
    if kitaru.wait(name="approve", question=f"Publish {topic}?", schema=bool):
        return draft(notes)
    return "rejected"


def cli(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.stdout, result.stderr


class TestExecutionStatus:
    def test_a_str_enum_that_compares_and_dumps_as_its_text(self, runtime: Runtime) -> None:
        execution = KitaruClient().executions.get(pipeline.run("a").exec_id)
        assert isinstance(execution.status, ExecutionStatus)
        assert execution.status == "completed" == ExecutionStatus.COMPLETED
        assert execution.status.value == "completed" and f"{execution.status}" == "completed"
        assert execution.status.is_finished and execution.status.is_successful
        assert not ExecutionStatus.WAITING.is_finished
        assert json.loads(json.dumps(execution.to_dict()))["status"] == "completed"

    def test_json_output_keeps_its_shape(self, runtime: Runtime) -> None:
        exec_id = pipeline.run("a").exec_id
        code, out, err = cli("executions", "get", exec_id, "-o", "json")
        assert code == 0, err
        shown = json.loads(out)
        assert set(shown) == {
            "id", "flow", "status", "created_at", "updated_at", "target", "error",
            "original_exec_id", "metadata", "checkpoints", "waits", "result_artifact",
        }  # fmt: skip
        assert shown["status"] == "completed"
        first = shown["checkpoints"][0]
        assert first["attempts"] == 1 and isinstance(first["attempts"], int)
        assert len(first["saved_artifacts"]) == 2  # the one field added


class TestExecutionView:
    def test_the_original_names(self, runtime: Runtime) -> None:
        execution = KitaruClient().executions.get(pipeline.run("a").exec_id)
        assert execution.exec_id == execution.id and execution.flow_name == "pipeline"
        assert execution.started_at.timestamp() == pytest.approx(execution.created_at)
        assert execution.ended_at is not None and execution.ended_at >= execution.started_at
        assert execution.failure is None and execution.pending_wait is None
        assert execution.status_reason is None and execution.stack_name == runtime.stack_name
        assert [c.name for c in execution.list_checkpoints()] == ["research", "draft"]
        assert execution.refresh() == execution

    def test_a_failure_says_whose_it_was_with_its_traceback(self, runtime: Runtime) -> None:
        with pytest.raises(kitaru.KitaruExecutionError):
            failing.run(3).wait(timeout=60)
        execution = KitaruClient().executions.latest(flow="failing")
        failure = execution.failure
        assert isinstance(failure, FailureInfo)
        assert failure.origin == FailureOrigin.USER_CODE == "user_code"
        assert failure.exception_type == "ValueError" and failure.message == "ValueError: no 3"
        assert failure.traceback is not None and 'raise ValueError(f"no {x}")' in failure.traceback
        assert execution.ended_at is not None

    def test_a_running_or_waiting_execution_has_not_ended(self, runtime: Runtime) -> None:
        execution = KitaruClient().executions.get(gated.run("a").exec_id)
        assert execution.status == ExecutionStatus.WAITING and execution.ended_at is None
        assert execution.pending_wait is not None and execution.pending_wait.name == "approve"
        assert execution.pending_wait.wait_id == "approve"
        assert execution.pending_wait.entered_waiting_at is not None
        # A list()'s summary has no waits; its pending wait is read when asked for.
        [summary] = KitaruClient().executions.list(flow="gated")
        assert summary.pending_wait == execution.pending_wait

    def test_a_view_not_read_through_a_client_says_so(self, runtime: Runtime) -> None:
        from kitaru.client import Execution

        execution = KitaruClient().executions.get(pipeline.run("a").exec_id)
        detached = Execution(**{k: getattr(execution, k) for k in Execution.__dataclass_fields__})
        assert detached.status == ExecutionStatus.COMPLETED
        with pytest.raises(KitaruUsageError, match="not read through a KitaruClient"):
            detached.refresh()


class TestCheckpointCalls:
    def test_attempts_count_and_iterate(self, runtime: Runtime) -> None:
        with pytest.raises(kitaru.KitaruExecutionError):
            failing.run(1).wait(timeout=60)
        [call] = KitaruClient().executions.latest(flow="failing").checkpoints
        assert call.attempts == 2 and call.attempts + 1 == 3 and json.dumps(call.attempts) == "2"
        attempts = list(call.attempts)
        assert len(call.attempts) == 2 and [a.attempt_id for a in attempts] == ["shaky#1", "shaky#2"]
        assert all(a.status == ExecutionStatus.FAILED for a in attempts)
        assert call.attempts[-1].failure is not None
        assert call.attempts[-1].failure.exception_type == "ValueError"
        assert call.failure == call.attempts[-1].failure
        assert call.attempts[0].started_at is not None and call.attempts[0].ended_at is not None

    def test_name_and_artifacts_of_each_call(self, runtime: Runtime) -> None:
        execution = KitaruClient().executions.get(twice.run("a").exec_id)
        assert [c.name for c in execution.checkpoints] == ["research", "draft", "research", "draft"]
        second = execution.checkpoints[2]
        assert second.call_id == "research:2" and second.failure is None
        assert [a.load() for a in second.artifacts] == ["notes about a!", ["a!", "web"], 1]
        assert len(execution.artifacts) == 8  # outputs and saves, no inputs, no result

    def test_a_replayed_call_lists_the_original_artifacts_it_reused(self, runtime: Runtime) -> None:
        client = KitaruClient()
        source = pipeline.run("a").exec_id
        replayed = client.executions.get(client.executions.replay(source, "draft").exec_id)
        reused = replayed.checkpoints[0]
        assert reused.original_call_id == "research" and replayed.checkpoints[1].original_call_id is None
        assert [a.exec_id for a in reused.artifacts] == [source] * 3


class TestArtifacts:
    def test_kind_and_save_type(self, runtime: Runtime) -> None:
        exec_id = pipeline.run("a").exec_id
        found = {a.name: a for a in KitaruClient().artifacts.list(exec_id)}
        seen = {name: (a.kind, a.save_type, a.producing_call) for name, a in found.items()}
        assert seen == {
            "topic": ("input", "external", None),
            "sources": ("context", "manual", "research"),
            "scratch": ("save", "manual", "research"),
            "research": (None, "step_output", "research"),
            "draft": (None, "step_output", "draft"),
            "result": ("result", "step_output", None),
        }
        assert found["sources"].artifact_id == found["sources"].id
        assert found["sources"].metadata == {"kitaru_artifact_type": "context"}

    def test_list_filters_by_kind_call_and_limit(self, runtime: Runtime) -> None:
        artifacts = KitaruClient().artifacts
        exec_id = twice.run("a").exec_id
        assert [a.call_id for a in artifacts.list(exec_id, kind="context")] == ["research", "research:2"]
        assert len(artifacts.list(exec_id, producing_call="research")) == 6  # both calls
        assert len(artifacts.list(exec_id, producing_call="research:2")) == 3
        assert [a.name for a in artifacts.list(exec_id, limit=2)] == ["topic", "sources"]
        with pytest.raises(KitaruUsageError, match="limit=0"):
            artifacts.list(exec_id, limit=0)


class TestMethods:
    def test_pending_waits_of_one_execution(self, runtime: Runtime) -> None:
        client = KitaruClient()
        first = gated.run("a").exec_id
        gated.run("b")
        assert [(w.exec_id, w.name) for w in client.executions.pending_waits(first)] == [(first, "approve")]
        assert client.executions.pending_waits(first, flow="pipeline") == []
        client.executions.input(first, True)
        assert client.executions.pending_waits(first) == []
        assert len(client.executions.pending_waits()) == 1

    def test_list_takes_a_status_enum_checks_it_and_no_limit(self, runtime: Runtime) -> None:
        client = KitaruClient()
        for topic in "abc":
            pipeline.run(topic)
        assert len(client.executions.list(status=ExecutionStatus.COMPLETED)) == 3
        assert len(client.executions.list(limit=None)) == 3 and len(client.executions.list(limit=2)) == 2
        with pytest.raises(KitaruUsageError, match="no execution status"):
            client.executions.list(status="done")
        with pytest.raises(KitaruUsageError, match="limit=0"):
            client.executions.list(limit=0)

    def test_latest_of_nothing_is_a_lookup_error(self, runtime: Runtime) -> None:
        with pytest.raises(LookupError):
            KitaruClient().executions.latest(flow="pipeline")
        assert issubclass(KitaruNotFoundError, LookupError)

    def test_logs_by_source_and_limit(self, runtime: Runtime) -> None:
        logs = KitaruClient().executions.logs
        exec_id = pipeline.run("a").exec_id
        assert [e.message for e in logs(exec_id, source="runner")] == ["pipeline starts\n"]
        [step] = logs(exec_id, source="step")
        assert (step.checkpoint_name, step.level, step.source) == ("draft", "INFO", "step")
        assert step.timestamp.startswith("20") and step.message == "drafting from notes about a\n"
        assert [e.message for e in logs(exec_id, limit=1)] == ["pipeline starts\n"]
        with pytest.raises(KitaruUsageError, match="no checkpoint"):
            logs(exec_id, source="runner", checkpoint="draft")
        with pytest.raises(KitaruUsageError, match="source='stdout'"):
            logs(exec_id, source="stdout")
        with pytest.raises(KitaruUsageError, match="limit=0"):
            logs(exec_id, limit=0)

    def test_steering_calls_return_a_handle_that_is_also_a_view(self, runtime: Runtime) -> None:
        client = KitaruClient()
        exec_id = gated.run("a").exec_id
        handle = client.executions.input(exec_id, wait="approve", value=True)
        assert isinstance(handle, ExecutionHandle) and isinstance(handle, kitaru.FlowHandle)
        assert handle.wait(timeout=60) == "Draft from notes about a"
        assert handle.status == ExecutionStatus.COMPLETED and handle.status.value == "completed"
        assert handle.flow_name == "gated" and handle.failure is None
        assert [c.name for c in handle.checkpoints] == ["research", "draft"]
        assert handle.refresh().exec_id == exec_id
        with pytest.raises(AttributeError, match="no_such_thing"):
            handle.no_such_thing  # noqa: B018


class TestReplay:
    def test_checkpoint_prefixed_overrides_name_a_checkpoint(self, runtime: Runtime) -> None:
        client = KitaruClient()
        source = pipeline.run("a").exec_id
        handle = client.executions.replay(source, from_="draft", overrides={"checkpoint.research": "mine"})
        assert handle.wait(timeout=60) == "Draft from mine"
        assert handle.original_exec_id == source

    def test_a_checkpoint_called_twice_needs_its_call_id(self, runtime: Runtime) -> None:
        client = KitaruClient()
        source = twice.run("a").exec_id
        with pytest.raises(KitaruUsageError, match=r"called 2 times.*research, research:2"):
            client.executions.replay(source, from_="draft:2", overrides={"checkpoint.research": "x"})
        handle = client.executions.replay(source, from_="draft:2", overrides={"checkpoint.research:2": "x"})
        assert handle.wait(timeout=60) == "Draft from notes about a | Draft from x"
        with pytest.raises(KitaruUsageError, match="has no checkpoint 'nope'; its checkpoints: research"):
            client.executions.replay(source, from_="draft:2", overrides={"checkpoint.nope": "x"})
        with pytest.raises(KitaruUsageError, match="overridden twice"):
            client.executions.replay(
                source, from_="draft:2", overrides={"checkpoint.research:2": 1, "research:2": 2}
            )

    def test_wait_prefixed_overrides_name_a_wait(self, runtime: Runtime) -> None:
        client = KitaruClient()
        source = gated.run("a").exec_id
        client.executions.input(source, True)
        handle = client.executions.replay(source, from_="draft", overrides={"wait.approve": False})
        assert handle.wait(timeout=60) == "rejected"

    def test_flow_inputs_as_keyword_arguments(self, runtime: Runtime) -> None:
        client = KitaruClient()
        source = pipeline.run("a").exec_id
        assert client.executions.replay(source, from_="research", topic="b").wait(timeout=60) == (
            "Draft from notes about b"
        )
        assert pipeline.replay(exec_id=source, from_="research", topic="c").wait(timeout=60) == (
            "Draft from notes about c"
        )
        execution = client.executions.get(source)
        assert execution.replay(from_="research", topic="d").wait(timeout=60) == "Draft from notes about d"
        with pytest.raises(KitaruUsageError, match="given both in args= and as a keyword"):
            client.executions.replay(source, "research", args={"topic": "x"}, topic="y")
        with pytest.raises(KitaruUsageError, match="has no parameter 'tpoic'"):
            client.executions.replay(source, "research", tpoic="x")

    def test_cli_overrides_json(self, runtime: Runtime, tmp_path: Path) -> None:
        source = pipeline.run("a").exec_id
        overrides = json.dumps({"checkpoint.research": "from the CLI"})
        code, out, err = cli(
            "executions", "replay", source, "--from", "draft", "--overrides", overrides,
            "--args", '{"topic": "z"}', "-o", "json",
        )  # fmt: skip
        assert code == 0, err
        # The replayed flow's own print comes first (this process drives it).
        replayed = KitaruClient().executions.get(json.loads(out[out.index("{\n") :])["id"])
        assert replayed.status == "completed" and replayed.checkpoints[0].overridden
        assert replayed.checkpoints[1].artifacts[0].load() == "Draft from from the CLI"
        code, _, err = cli("executions", "replay", source, "--from", "draft", "--overrides", "[1]")
        assert code == 2 and "JSON object" in err
        code, _, err = cli(
            "executions", "replay", source, "--from", "draft", "--overrides", overrides,
            "--override", 'checkpoint.research="again"',
        )  # fmt: skip
        assert code == 2 and "give it once" in err
