"""Kitaru 0.18's OpenAI Agents SDK surface: KitaruRunner runs OpenAIRunRequests into
OpenAIRunResults, with a checkpoint per model/tool call ("calls") or per run ("runner_call"), its
RunConfig from run_config_factory, and approvals through wait_for_approval (offline model)."""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import pytest

pytest.importorskip("agents")

from agents import RunConfig

import kitaru
from kitaru import KitaruClient, checkpoint, flow
from kitaru._engine.runtime import Runtime
from kitaru.adapters.openai_agents import (
    KitaruRunner,
    OpenAIApprovalDecision,
    OpenAIRunRequest,
    OpenAIRunResult,
    OpenAIRunStateEnvelope,
    build_resume_request,
    wait_for_approval,
)
from tests.adapters.test_openai_agents import ScriptedModel, no_tracing, two_tool_agent

__all__ = ["no_tracing"]  # the autouse fixture, imported to apply here


def completed(runtime: Runtime, exec_id: str) -> list[str]:
    return [r.call_id or "" for r in runtime.state.read_journal(exec_id) if r.kind == "checkpoint_completed"]


def approving_flow(runner: KitaruRunner) -> Any:
    @flow
    def f(q: str) -> Any:
        result = runner.run_sync(OpenAIRunRequest.start(q))
        while result.status == "interrupted":
            result = runner.run_sync(wait_for_approval(result))
        return result

    return f


class TestCalls:
    def test_each_model_and_tool_call_is_a_checkpoint(self, runtime: Runtime) -> None:
        model, ran = ScriptedModel(), Counter[str]()
        runner = KitaruRunner(two_tool_agent(model, ran))

        @flow
        def f(q: str) -> Any:
            result = runner.run_sync(OpenAIRunRequest.start(q, metadata={"ticket": 7}))
            kitaru.wait(name="go")
            return result

        handle = f.run("hi")
        assert completed(runtime, handle.exec_id) == [
            "helper.model",
            "helper.tool.tool_a",
            "helper.model:2",
            "helper.tool.tool_b",
            "helper.model:3",
        ]
        result = KitaruClient().executions.input(handle.exec_id, None).wait(timeout=60)
        assert isinstance(result, OpenAIRunResult) and result.status == "completed"
        assert result.final_output == "final after 3 calls" and result.usage["input_tokens"] == 30
        assert result.output_artifact_name == "helper.output"
        assert model.calls == 3 and ran == {"tool_a": 1, "tool_b": 1}  # the resume repeated none
        assert KitaruClient().executions.get(handle.exec_id).metadata["openai_run_request"] == {"ticket": 7}

    def test_calls_refuse_to_run_inside_a_checkpoint(self, runtime: Runtime) -> None:
        runner = KitaruRunner(two_tool_agent(ScriptedModel(), Counter()))

        @checkpoint
        def inner() -> Any:
            return runner.run_sync(OpenAIRunRequest.start("hi"))

        @flow
        def f() -> Any:
            return inner()

        with pytest.raises(kitaru.KitaruError, match="runner_call"):
            f.run().wait(timeout=60)

    def test_outside_a_flow_the_run_is_plain(self) -> None:
        model = ScriptedModel()
        result = KitaruRunner(two_tool_agent(model, Counter())).run_sync(OpenAIRunRequest.start("hi"))
        assert result.status == "completed" and model.calls == 3


class TestRunnerCall:
    def test_the_whole_run_is_one_checkpoint(self, runtime: Runtime) -> None:
        model, ran = ScriptedModel(), Counter[str]()
        runner = KitaruRunner(
            two_tool_agent(model, ran),
            checkpoint_strategy="runner_call",
            run_checkpoint_config={"type": "agent"},
        )

        @flow
        def f(q: str) -> str:
            result = runner.run_sync(OpenAIRunRequest.start(q))
            kitaru.wait(name="go")
            return str(result.final_output)

        handle = f.run("hi")
        assert completed(runtime, handle.exec_id) == ["helper.run"]
        [cp] = KitaruClient().executions.get(handle.exec_id).checkpoints
        assert cp.type == "agent"
        assert KitaruClient().executions.input(handle.exec_id, None).wait(timeout=60) == "final after 3 calls"
        assert model.calls == 3 and ran == {"tool_a": 1, "tool_b": 1}


class TestRunConfigFactory:
    def test_each_run_gets_its_config_from_the_factory(self, runtime: Runtime) -> None:
        made: list[RunConfig] = []
        model, ran = ScriptedModel(), Counter[str]()

        def factory() -> RunConfig:
            made.append(RunConfig(model=model))
            return made[-1]

        agent = two_tool_agent(ScriptedModel(), ran).clone(model="gpt-unused")
        runner = KitaruRunner(agent, run_config_factory=factory)

        @flow
        def f() -> str:
            first = runner.run_sync(OpenAIRunRequest.start("one")).final_output
            second = runner.run_sync(OpenAIRunRequest.start("two")).final_output
            return f"{first} / {second}"

        handle = f.run()
        assert handle.wait(timeout=60) == "final after 3 calls / final after 3 calls"
        assert len(made) == 2 and model.calls == 6
        assert "helper.model:6" in completed(runtime, handle.exec_id)  # the factory's model, checkpointed

    def test_a_factory_returning_something_else_is_refused(self) -> None:
        runner = KitaruRunner(
            two_tool_agent(ScriptedModel(), Counter()), run_config_factory=lambda: {"model": "x"}
        )
        with pytest.raises(kitaru.KitaruUsageError, match="RunConfig"):
            runner.run_sync(OpenAIRunRequest.start("hi"))


class TestApprovals:
    @pytest.mark.parametrize("strategy", ["calls", "runner_call"])
    @pytest.mark.parametrize("answer", [True, False])
    def test_an_interrupted_run_waits_for_a_human_then_resumes(
        self, runtime: Runtime, strategy: Any, answer: bool
    ) -> None:
        model, ran = ScriptedModel(), Counter[str]()
        runner = KitaruRunner(two_tool_agent(model, ran, needs_approval=True), checkpoint_strategy=strategy)
        handle = approving_flow(runner).run("hi")
        assert handle.status == "waiting" and ran == {"tool_a": 1}
        [w] = KitaruClient().executions.get(handle.exec_id).open_waits
        assert w.name == "OpenAI tool approval" and "tool_b" in (w.question or "")
        assert w.metadata["call_id"] == "c2"
        result = KitaruClient().executions.input(handle.exec_id, answer).wait(timeout=60)
        assert result.status == "completed" and result.final_output == "final after 3 calls"
        assert ran == ({"tool_a": 1, "tool_b": 1} if answer else {"tool_a": 1})
        assert model.calls == 3

    def test_the_approval_wait_holds_for_timeout_and_expires_after_expires_in(self, runtime: Runtime) -> None:
        runner = KitaruRunner(two_tool_agent(ScriptedModel(), Counter(), needs_approval=True))

        @flow
        def f(q: str) -> Any:
            result = runner.run_sync(OpenAIRunRequest.start(q))
            while result.status == "interrupted":
                result = runner.run_sync(wait_for_approval(result, timeout=2, expires_in=3600))
            return result

        started, before = time.monotonic(), time.time()
        handle = f.run("hi")
        assert handle.status == "waiting" and time.monotonic() - started >= 2  # held 2 s first
        [w] = KitaruClient().executions.get(handle.exec_id).open_waits
        assert w.deadline is not None and before + 3600 <= w.deadline <= time.time() + 3600

    def test_build_resume_request_and_the_sdk_version_check(self, runtime: Runtime) -> None:
        runner = KitaruRunner(two_tool_agent(ScriptedModel(), Counter(), needs_approval=True))
        interrupted = runner.run_sync(OpenAIRunRequest.start("hi"))
        assert interrupted.status == "interrupted" and interrupted.interruptions[0].tool_name == "tool_b"
        assert interrupted.interruptions[0].arguments == {"x": 2}
        request = build_resume_request(interrupted, approve=False, rejection_message="not today")
        assert request.decision == OpenAIApprovalDecision(approve=False, rejection_message="not today")
        assert runner.run_sync(request).status == "completed"
        assert interrupted.pending_state is not None
        old = interrupted.pending_state.model_copy(update={"agents_sdk_version": "0.0.1"})
        stale = OpenAIRunRequest.resume(old, OpenAIApprovalDecision(approve=True))
        with pytest.raises(kitaru.KitaruUsageError, match=r"0\.0\.1"):
            runner.run_sync(stale)
        lenient = KitaruRunner(runner.agent, strict_sdk_version=False)
        assert lenient.run_sync(stale).status == "completed"
        with pytest.raises(kitaru.KitaruUsageError, match="completed"):
            build_resume_request(lenient.run_sync(stale), approve=True)


class TestRequests:
    def test_requests_are_checked(self) -> None:
        envelope = OpenAIRunStateEnvelope(agents_sdk_version="1", state_json={})
        with pytest.raises(ValueError, match="start"):
            OpenAIRunRequest(kind="start")
        with pytest.raises(ValueError, match="resume"):
            OpenAIRunRequest(kind="resume", input="x", pending_state=envelope)
        with pytest.raises(ValueError, match="rejection_message"):
            OpenAIApprovalDecision(approve=True, rejection_message="no")
        with pytest.raises(kitaru.KitaruUsageError, match=r"OpenAIRunRequest\.start"):
            KitaruRunner(two_tool_agent(ScriptedModel(), Counter())).run_sync("hi")  # type: ignore[arg-type]
        with pytest.raises(kitaru.KitaruUsageError, match="checkpoint_strategy"):
            KitaruRunner(two_tool_agent(ScriptedModel(), Counter()), checkpoint_strategy="turns")  # type: ignore[arg-type]
