"""The PydanticAI adapter's options from Kitaru 0.18: checkpoint modes and configs, what is captured,
a conversation threaded through runs, event stream handlers, and tools that ask a human (offline
test models)."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import AsyncIterable
from typing import Any

import pytest

pytest.importorskip("pydantic_ai")

from pydantic_ai import Agent, RunContext
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart, ToolCallPart
from pydantic_ai.models.function import AgentInfo, FunctionModel
from pydantic_ai.models.test import TestModel

import kitaru
from kitaru import KitaruClient, checkpoint, flow
from kitaru._engine.runtime import Runtime
from kitaru.adapters.pydantic_ai import (
    DENIED,
    AgentResult,
    CapturePolicy,
    KitaruAgent,
    hitl_tool,
    wait_for_input,
    wrap,
)
from kitaru.store import CatalogStore
from tests.adapters.test_pydantic_ai import Scripted, completed, two_tool_agent


def checkpoints(exec_id: str) -> dict[str, Any]:
    return {c.call_id: c for c in KitaruClient().executions.get(exec_id).checkpoints}


def artifact_names(exec_id: str) -> set[str]:
    return {a.name for a in KitaruClient().artifacts.list(exec_id)}


class TestTurnMode:
    def test_a_run_is_one_checkpoint_and_a_resume_repeats_nothing(self, runtime: Runtime) -> None:
        script, ran = Scripted(), Counter[str]()
        durable = KitaruAgent(
            two_tool_agent(script, ran), granular_checkpoints=False, turn_checkpoint_config={"type": "turn"}
        )

        @flow
        def f() -> str:
            result = durable.run_sync("hi")
            assert isinstance(result, AgentResult) and len(result.new_messages()) == 6
            kitaru.wait(name="go", schema=bool)
            return str(result.output)

        handle = f.run()
        assert completed(runtime, handle.exec_id) == ["helper.run"]
        assert checkpoints(handle.exec_id)["helper.run"].type == "turn"
        assert (
            KitaruClient().executions.input(handle.exec_id, True).wait(timeout=60) == "final after 3 requests"
        )
        assert script.requests == 3 and ran == {"tool_a": 1, "tool_b": 1}
        assert {"helper.output", "helper.messages"} <= artifact_names(handle.exec_id)

    def test_per_call_configs_and_approval_tools_are_refused(self) -> None:
        agent = two_tool_agent(Scripted(), Counter(), requires_approval=True)
        with pytest.raises(kitaru.KitaruUsageError, match="tool_b"):
            KitaruAgent(agent, granular_checkpoints=False)
        plain = two_tool_agent(Scripted(), Counter())
        with pytest.raises(kitaru.KitaruUsageError, match="turn_checkpoint_config"):
            KitaruAgent(plain, granular_checkpoints=False, model_checkpoint_config={"retries": 1})


class TestCheckpointConfigs:
    def test_retries_apply_per_model_and_per_tool_name(self, runtime: Runtime) -> None:
        failures = Counter[str]()
        script = Scripted()

        def flaky_model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
            if not failures["model"]:
                failures["model"] += 1
                raise RuntimeError("provider hiccup")
            return script(messages, info)

        agent = Agent(FunctionModel(flaky_model), name="helper")
        ran = Counter[str]()

        @agent.tool_plain
        def tool_a(x: int) -> str:
            ran["tool_a"] += 1
            if ran["tool_a"] == 1:
                raise RuntimeError("flaky api")
            return "a"

        @agent.tool_plain
        def tool_b(x: int) -> str:
            ran["tool_b"] += 1
            return "b"

        durable = KitaruAgent(
            agent,
            model_checkpoint_config={"retries": 1, "retry_delay": 0},
            tool_checkpoint_config={"type": "lookup"},
            tool_checkpoint_config_by_name={"tool_a": {"retries": 2, "retry_delay": 0}},
        )

        @flow
        def f() -> str:
            return str(durable.run_sync("hi").output)

        handle = f.run()
        assert handle.wait(timeout=60) == "final after 3 requests"
        assert ran == {"tool_a": 2, "tool_b": 1} and failures["model"] == 1
        cps = checkpoints(handle.exec_id)
        assert cps["helper.model"].type == "llm_call"
        assert cps["helper.tool.tool_a"].type == "tool_call"
        assert cps["helper.tool.tool_b"].type == "lookup"

    def test_a_failing_tool_without_retries_fails_the_run(self, runtime: Runtime) -> None:
        agent = Agent(FunctionModel(Scripted()), name="helper")

        @agent.tool_plain
        def tool_a(x: int) -> str:
            raise RuntimeError("down")

        durable = KitaruAgent(agent)

        @flow
        def f() -> str:
            return str(durable.run_sync("hi").output)

        handle = f.run()
        assert handle.status == "failed"

    def test_cache_reuses_calls_across_executions(self, runtime: Runtime) -> None:
        if not isinstance(runtime.astate, CatalogStore):
            pytest.skip("this state store keeps no cache")
        script, ran = Scripted(), Counter[str]()
        durable = KitaruAgent(
            two_tool_agent(script, ran),
            model_checkpoint_config={"cache": True},
            tool_checkpoint_config={"cache": True},
        )

        @flow
        def f() -> str:
            return str(durable.run_sync("hi").output)

        assert f.run().wait(timeout=60) == "final after 3 requests"
        assert f.run().wait(timeout=60) == "final after 3 requests"
        assert script.requests == 3 and ran == {"tool_a": 1, "tool_b": 1}

    def test_a_tool_configured_false_is_no_checkpoint_and_may_wait(self, runtime: Runtime) -> None:
        def model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
            n = sum(isinstance(m, ModelResponse) for m in messages) + 1
            if n == 1:
                return ModelResponse(parts=[ToolCallPart("ask_user", {"question": "Favourite colour?"})])
            answer = messages[-1].parts[0].content  # type: ignore[union-attr]
            return ModelResponse(parts=[TextPart(f"you said {answer}")])

        agent = Agent(FunctionModel(model), name="asker")

        @agent.tool_plain
        def ask_user(question: str) -> str:
            return str(wait_for_input(schema=str, question=question, name="colour"))

        durable = KitaruAgent(agent, tool_checkpoint_config_by_name={"ask_user": False})

        @flow
        def f() -> str:
            return str(durable.run_sync("go").output)

        handle = f.run()
        assert handle.status == "waiting"
        [w] = KitaruClient().executions.get(handle.exec_id).open_waits
        assert w.name == "colour" and w.question == "Favourite colour?"
        assert KitaruClient().executions.input(handle.exec_id, "blue").wait(timeout=60) == "you said blue"
        assert "asker.tool.ask_user" not in completed(runtime, handle.exec_id)

    def test_wait_for_input_takes_the_wait_timeout_and_expires_in(self, runtime: Runtime) -> None:
        def model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
            return ModelResponse(parts=[ToolCallPart("ask_user", {"question": "Colour?"})])

        agent = Agent(FunctionModel(model), name="asker")

        @agent.tool_plain
        def ask_user(question: str) -> str:
            return str(wait_for_input(schema=str, question=question, timeout=0, expires_in=3600))

        durable = KitaruAgent(agent, tool_checkpoint_config_by_name={"ask_user": False})

        @flow
        def f() -> str:
            return str(durable.run_sync("go").output)

        before = time.time()
        handle = f.run()
        assert handle.status == "waiting"
        [w] = KitaruClient().executions.get(handle.exec_id).open_waits
        assert w.deadline is not None and before + 3600 <= w.deadline <= time.time() + 3600

    @pytest.mark.parametrize("config, kind", [(None, "mcp_call"), ({"type": "remote"}, "remote")])
    def test_mcp_tool_calls_take_the_mcp_config(self, runtime: Runtime, config: Any, kind: str) -> None:
        fastmcp = pytest.importorskip("fastmcp")
        from pydantic_ai.mcp import MCPToolset

        server = fastmcp.FastMCP("weather")

        @server.tool
        def forecast(city: str) -> str:
            return f"sunny in {city}"

        agent = Agent(TestModel(), name="w", toolsets=[MCPToolset(server)])
        durable = KitaruAgent(agent, mcp_checkpoint_config=config, tool_checkpoint_config={"type": "local"})

        @flow
        def f() -> str:
            return str(durable.run_sync("weather?").output)

        handle = f.run()
        handle.wait(timeout=60)
        assert checkpoints(handle.exec_id)["w.tool.forecast"].type == kind

    @pytest.mark.parametrize(
        "config, match",
        [({"retry": 3}, "unknown keys"), ({"runtime": "isolated"}, "isolated"), ({"retries": -1}, "retries")],
    )
    def test_bad_configs_are_refused(self, config: dict[str, Any], match: str) -> None:
        with pytest.raises(kitaru.KitaruUsageError, match=match):
            KitaruAgent(two_tool_agent(Scripted(), Counter()), tool_checkpoint_config=config)  # type: ignore[arg-type]


class TestCapturePolicy:
    def run(self, capture: CapturePolicy, **kw: Any) -> tuple[str, dict[str, Any]]:
        durable = KitaruAgent(two_tool_agent(Scripted(), Counter()), capture=capture, **kw)

        @flow
        def f() -> str:
            return str(durable.run_sync("hi").output)

        handle = f.run()
        handle.wait(timeout=60)
        return handle.exec_id, checkpoints(handle.exec_id)

    def test_full_capture_records_tool_arguments_and_results(self, runtime: Runtime) -> None:
        exec_id, cps = self.run(CapturePolicy())
        meta = cps["helper.tool.tool_a"].metadata
        assert meta["args"] == {"x": 1} and meta["result"] == "a1" and "duration_ms" in meta
        assert "tokens_in" in cps["helper.model"].metadata
        assert {"helper.messages", "helper.output"} <= artifact_names(exec_id)

    def test_metadata_and_none_capture_per_tool(self, runtime: Runtime) -> None:
        _, cps = self.run(
            CapturePolicy(tool_capture="metadata", tool_capture_overrides={"tool_b": None}),
        )
        meta_a = cps["helper.tool.tool_a"].metadata
        assert "duration_ms" in meta_a and "args" not in meta_a and "result" not in meta_a
        assert "duration_ms" not in cps["helper.tool.tool_b"].metadata

    def test_no_child_events_and_no_saved_prompts_or_responses(self, runtime: Runtime) -> None:
        exec_id, cps = self.run(
            CapturePolicy(emit_child_events=False, save_prompts=False, save_responses=False)
        )
        assert "tokens_in" not in cps["helper.model"].metadata
        assert "duration_ms" not in cps["helper.tool.tool_a"].metadata
        names = artifact_names(exec_id)
        assert "helper.messages" not in names and "helper.output" not in names

    @pytest.mark.parametrize("tool_capture, shown", [("full", True), ("metadata_only", False)])
    def test_wait_metadata_shows_arguments_only_under_full_capture(
        self, runtime: Runtime, tool_capture: Any, shown: bool
    ) -> None:
        capture = CapturePolicy(tool_capture=tool_capture)
        durable = KitaruAgent(two_tool_agent(Scripted(), Counter()), approve={"tool_b"}, capture=capture)

        @flow
        def f() -> str:
            return str(durable.run_sync("hi").output)

        handle = f.run()
        [w] = KitaruClient().executions.get(handle.exec_id).open_waits
        assert ("args" in w.metadata) is shown and w.metadata["tool"] == "tool_b"

    def test_bad_modes_are_refused(self) -> None:
        with pytest.raises(kitaru.KitaruUsageError, match="tool_capture"):
            CapturePolicy(tool_capture="everything")  # type: ignore[arg-type]

    @pytest.mark.parametrize("correlate", [True, False])
    def test_ids_are_put_on_the_current_otel_span(self, runtime: Runtime, correlate: bool) -> None:
        from opentelemetry import trace

        class Recording(trace.NonRecordingSpan):
            def __init__(self) -> None:
                super().__init__(trace.INVALID_SPAN_CONTEXT)
                self.attrs: dict[str, Any] = {}

            def is_recording(self) -> bool:
                return True

            def set_attribute(self, key: str, value: Any) -> None:
                self.attrs[key] = value

        span = Recording()
        durable = KitaruAgent(
            two_tool_agent(Scripted(), Counter()), capture=CapturePolicy(correlate_otel_spans=correlate)
        )

        @flow
        async def f() -> str:
            with trace.use_span(span):
                return str((await durable.run("hi")).output)

        handle = f.run()
        handle.wait(timeout=60)
        if correlate:
            assert span.attrs["kitaru.execution_id"] == handle.exec_id
            assert span.attrs["kitaru.call_id"].startswith("helper.")
        else:
            assert span.attrs == {}


class TestMessageHistory:
    def test_each_run_continues_the_last_in_a_flow(self, runtime: Runtime) -> None:
        seen: list[int] = []

        def model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
            seen.append(len(messages))
            return ModelResponse(parts=[TextPart(f"turn {len(seen)}")])

        durable = KitaruAgent(Agent(FunctionModel(model), name="chat"), persist_message_history=True)

        @flow
        def f() -> list[str]:
            first = durable.run_sync("Hi, I am Alice.").output
            second = durable.run_sync("What's my name?").output
            return [str(first), str(second)]

        assert f.run().wait(timeout=60) == ["turn 1", "turn 2"]
        assert seen == [1, 3]  # the second request carried the first exchange

    def test_outside_a_flow_and_an_explicit_history_wins(self, runtime: Runtime) -> None:
        seen: list[int] = []

        def model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
            seen.append(len(messages))
            return ModelResponse(parts=[TextPart("ok")])

        durable = KitaruAgent(Agent(FunctionModel(model), name="solo_chat"), persist_message_history=True)
        durable.run_sync("one")
        durable.run_sync("two")
        durable.run_sync("three", message_history=[])
        plain = KitaruAgent(Agent(FunctionModel(model), name="forgetful"))
        plain.run_sync("one")
        plain.run_sync("two")
        assert seen == [1, 3, 1, 1, 1]


def streaming_agent(ran: Counter[str]) -> Agent[None, str]:
    # TestModel streams (FunctionModel needs a stream function); it calls every tool once.
    agent = Agent(TestModel(), name="helper")

    @agent.tool_plain
    def tool_a(x: int) -> str:
        ran["tool_a"] += 1
        return f"a{x}"

    return agent


class TestEventStreamHandler:
    def test_the_handler_sees_events_and_the_run_is_one_checkpoint(self, runtime: Runtime) -> None:
        ran = Counter[str]()
        kinds: list[str] = []

        async def handler(ctx: RunContext[None], events: AsyncIterable[Any]) -> None:
            async for event in events:
                kinds.append(event.event_kind)

        durable = KitaruAgent(streaming_agent(ran), event_stream_handler=handler)

        @flow
        def f() -> str:
            out = str(durable.run_sync("hi").output)
            kitaru.wait(name="go")
            return out

        handle = f.run()
        assert completed(runtime, handle.exec_id) == ["helper.run"]
        assert "function_tool_call" in kinds
        [stream] = [a for a in KitaruClient().artifacts.list(handle.exec_id) if a.name == "helper.stream"]
        assert len(stream.load()) == len(kinds)
        before = len(kinds)
        assert KitaruClient().executions.input(handle.exec_id, None).wait(timeout=60) == '{"tool_a":"a0"}'
        assert len(kinds) == before and ran == {"tool_a": 1}  # replay skips the handler and the run

    def test_no_transcript_when_the_policy_says_so(self, runtime: Runtime) -> None:
        async def handler(ctx: RunContext[None], events: AsyncIterable[Any]) -> None:
            async for _ in events:
                pass

        durable = KitaruAgent(
            streaming_agent(Counter()), capture=CapturePolicy(save_stream_transcripts=False)
        )

        @flow
        def f() -> str:
            return str(durable.run_sync("hi", event_stream_handler=handler).output)

        handle = f.run()
        handle.wait(timeout=60)
        assert "helper.stream" not in artifact_names(handle.exec_id)


def hitl_agent(ran: Counter[str], **hitl: Any) -> Agent[None, str]:
    def model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        n = sum(isinstance(m, ModelResponse) for m in messages) + 1
        if n == 1:
            return ModelResponse(
                parts=[ToolCallPart("publish", {"headline": "Durable", "question": "Ship it?"})]
            )
        result = messages[-1].parts[0].content  # type: ignore[union-attr]
        return ModelResponse(parts=[TextPart(f"tool said {result}")])

    agent = Agent(FunctionModel(model), name="editor")

    @agent.tool_plain
    @hitl_tool(**hitl)
    def publish(headline: str, question: str = "") -> str:
        ran["publish"] += 1
        return f"published {headline}"

    return agent


class TestHitlTool:
    @pytest.mark.parametrize("answer, said, runs", [(True, "published Durable", 1), (False, DENIED, 0)])
    def test_a_yes_no_gate_runs_the_tool_only_when_approved(
        self, runtime: Runtime, answer: bool, said: str, runs: int
    ) -> None:
        ran = Counter[str]()
        durable = KitaruAgent(hitl_agent(ran, question="Approve publishing?", question_arg=None))

        @flow
        def f() -> str:
            return str(durable.run_sync("go").output)

        handle = f.run()
        [w] = KitaruClient().executions.get(handle.exec_id).open_waits
        assert w.name == "editor.hitl.publish" and w.question == "Approve publishing?"
        assert w.metadata["source"] == "hitl_tool"
        assert ran["publish"] == 0  # nothing ran before the human answered
        assert KitaruClient().executions.input(handle.exec_id, answer).wait(timeout=60) == f"tool said {said}"
        assert ran["publish"] == runs
        assert ("editor.tool.publish" in completed(runtime, handle.exec_id)) is bool(runs)

    def test_any_other_schema_makes_the_answer_the_result(self, runtime: Runtime) -> None:
        ran = Counter[str]()
        durable = KitaruAgent(hitl_agent(ran, schema=str, name="review"))

        @flow
        def f() -> str:
            return str(durable.run_sync("go").output)

        handle = f.run()
        [w] = KitaruClient().executions.get(handle.exec_id).open_waits
        assert w.name == "review" and w.question == "Ship it?"  # the model's question argument
        assert (
            KitaruClient().executions.input(handle.exec_id, "not yet").wait(timeout=60) == "tool said not yet"
        )
        assert ran["publish"] == 0

    def test_inside_a_checkpoint_a_hitl_tool_is_refused(self, runtime: Runtime) -> None:
        durable = KitaruAgent(hitl_agent(Counter()))

        @checkpoint
        def inner() -> str:
            return str(durable.run_sync("go").output)

        @flow
        def f() -> str:
            return inner()

        handle = f.run()
        with pytest.raises(kitaru.KitaruError, match="hitl_tool"):
            handle.wait(timeout=60)


def test_wrap_is_a_deprecated_kitaru_agent(runtime: Runtime) -> None:
    agent = two_tool_agent(Scripted(), Counter())
    with pytest.warns(DeprecationWarning, match="KitaruAgent"):
        durable = wrap(agent, name="legacy", tool_capture_config={"mode": "metadata_only"})
    assert isinstance(durable, KitaruAgent) and durable.name == "legacy"
    assert durable.capture.tool_capture == "metadata"
    with pytest.warns(DeprecationWarning):
        off = wrap(agent, tool_capture_config_by_name={"tool_a": {"enabled": False}})
    assert off.capture.capture_mode_for_tool("tool_a") is None
    with pytest.warns(DeprecationWarning), pytest.raises(kitaru.KitaruUsageError, match="save_args"):
        wrap(agent, tool_capture_config={"save_args": False})
