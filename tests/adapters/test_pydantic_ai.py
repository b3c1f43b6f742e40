"""The PydanticAI adapter: per-request and per-tool checkpoints, approvals through waits, runs that
open their own flow, and a killed process resumed without paying twice (offline test models)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("pydantic_ai")

from pydantic_ai import Agent, RunContext
from pydantic_ai.exceptions import ApprovalRequired, ModelRetry
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart, ToolCallPart
from pydantic_ai.models.function import AgentInfo, FunctionModel
from pydantic_ai.models.test import TestModel

import kitaru
from kitaru import KitaruClient, checkpoint, flow
from kitaru._engine.runtime import Runtime
from kitaru._install import install_hint_pattern
from kitaru.adapters.pydantic_ai import DENIED, AgentResult, KitaruAgent
from kitaru.store import sync_view
from kitaru.store.sqlite import SQLiteStateStore
from tests._process import wait_for

FLOWS = Path(__file__).parent / "flows"


def completed(runtime: Runtime, exec_id: str) -> list[str]:
    return [r.call_id or "" for r in runtime.state.read_journal(exec_id) if r.kind == "checkpoint_completed"]


class Scripted:
    """A FunctionModel script: calls ``tool_a`` then ``tool_b``, then answers; counts requests."""

    def __init__(self, first: str = "tool_a", second: str = "tool_b") -> None:
        self.requests = 0
        self.first, self.second = first, second

    def __call__(self, messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        self.requests += 1
        n = sum(isinstance(m, ModelResponse) for m in messages) + 1
        if n == 1:
            return ModelResponse(parts=[ToolCallPart(self.first, {"x": 1})])
        if n == 2:
            return ModelResponse(parts=[ToolCallPart(self.second, {"x": 2})])
        return ModelResponse(parts=[TextPart(f"final after {n} requests")])


def two_tool_agent(script: Scripted, ran: Counter[str], **tool_kw: Any) -> Agent[None, str]:
    agent = Agent(FunctionModel(script), name="helper")

    @agent.tool_plain
    def tool_a(x: int) -> str:
        ran["tool_a"] += 1
        return f"a{x}"

    @agent.tool_plain(**tool_kw)
    def tool_b(x: int) -> str:
        ran["tool_b"] += 1
        return f"b{x}"

    return agent


class TestInAFlow:
    def test_every_model_request_and_tool_call_is_a_checkpoint(self, runtime: Runtime) -> None:
        script, ran = Scripted(), Counter[str]()
        durable = KitaruAgent(two_tool_agent(script, ran))

        @flow
        def run_agent(q: str) -> str:
            return str(durable.run_sync(q).output)

        handle = run_agent.run("hi")
        assert handle.wait(timeout=60) == "final after 3 requests"
        assert completed(runtime, handle.exec_id) == [
            "helper.model",
            "helper.tool.tool_a",
            "helper.model:2",
            "helper.tool.tool_b",
            "helper.model:3",
        ]
        arts = {a.name: a for a in KitaruClient().artifacts.list(handle.exec_id)}
        assert arts["helper.output"].load() == "final after 3 requests"
        assert arts["helper.output"].type == "result"
        messages = arts["helper.messages"].load()
        assert arts["helper.messages"].type == "messages" and len(messages) == 6
        [model_cp] = [
            c
            for c in KitaruClient().executions.get(handle.exec_id).checkpoints
            if c.call_id == "helper.model"
        ]
        assert model_cp.metadata["model"].startswith("function:")
        assert model_cp.metadata["tokens_in"] > 0 and "latency_ms" in model_cp.metadata

    def test_a_resumed_run_repeats_no_model_request_or_tool_call(self, runtime: Runtime) -> None:
        script, ran = Scripted(), Counter[str]()
        durable = KitaruAgent(two_tool_agent(script, ran))

        @flow
        def run_then_wait(q: str) -> str:
            first = durable.run_sync(q).output
            kitaru.wait(name="go", schema=bool)
            return str(first)

        handle = run_then_wait.run("hi")
        assert handle.status == "waiting" and script.requests == 3
        KitaruClient().executions.input(handle.exec_id, True).wait(timeout=60)
        assert script.requests == 3 and ran == {"tool_a": 1, "tool_b": 1}
        kinds = [r.kind for r in runtime.state.read_journal(handle.exec_id)]
        assert "input_changed" not in kinds  # the replayed requests are recognised as the same

    def test_test_model_calls_every_tool(self, runtime: Runtime) -> None:
        agent = Agent(TestModel(), name="t")
        seen: list[int] = []

        @agent.tool_plain
        def add(a: int, b: int) -> int:
            seen.append(a + b)
            return a + b

        durable = KitaruAgent(agent, name="calc")

        @flow
        def f() -> Any:
            return durable.run_sync("add").output

        handle = f.run()
        assert handle.wait(timeout=60) == '{"add":0}'
        assert completed(runtime, handle.exec_id) == ["calc.model", "calc.tool.add", "calc.model:2"]

    def test_async_flow(self, runtime: Runtime) -> None:
        import asyncio

        script, ran = Scripted(), Counter[str]()
        durable = KitaruAgent(two_tool_agent(script, ran))

        @flow
        async def f() -> str:
            return str((await durable.run("hi")).output)

        async def app() -> str:
            return await (await f.start()).result(timeout=60)

        assert asyncio.run(app()) == "final after 3 requests"

    def test_inside_a_checkpoint_the_run_is_plain(self, runtime: Runtime) -> None:
        script, ran = Scripted(), Counter[str]()
        durable = KitaruAgent(two_tool_agent(script, ran))

        @checkpoint
        async def research(q: str) -> str:
            return str((await durable.run(q)).output)

        @flow
        def f() -> str:
            return research("hi")

        handle = f.run()
        assert handle.wait(timeout=60) == "final after 3 requests"
        assert completed(runtime, handle.exec_id) == ["research"]

    def test_a_tool_asking_for_a_retry_is_not_called_again_on_resume(self, runtime: Runtime) -> None:
        calls = Counter[str]()

        def model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
            n = sum(isinstance(m, ModelResponse) for m in messages) + 1
            if n <= 2:
                return ModelResponse(parts=[ToolCallPart("flaky", {"x": n})])
            return ModelResponse(parts=[TextPart("ok")])

        agent = Agent(FunctionModel(model), name="r")

        @agent.tool_plain(retries=2)
        def flaky(x: int) -> str:
            calls[x] += 1
            if x == 1:
                raise ModelRetry("try x=2")
            return "fine"

        durable = KitaruAgent(agent)

        @flow
        def f() -> str:
            out = str(durable.run_sync("go").output)
            kitaru.wait(name="go")
            return out

        handle = f.run()
        KitaruClient().executions.input(handle.exec_id, None).wait(timeout=60)
        assert calls == {1: 1, 2: 1}
        assert completed(runtime, handle.exec_id)[:2] == ["r.model", "r.tool.flaky"]


class TestMCP:
    def test_mcp_tool_calls_are_checkpoints(self, runtime: Runtime) -> None:
        fastmcp = pytest.importorskip("fastmcp")
        from pydantic_ai.mcp import MCPToolset

        calls = Counter[str]()
        server = fastmcp.FastMCP("weather")

        @server.tool
        def forecast(city: str) -> str:
            calls[city] += 1
            return f"sunny in {city}"

        durable = KitaruAgent(Agent(TestModel(), name="w", toolsets=[MCPToolset(server)]))

        @flow
        def f() -> str:
            out = str(durable.run_sync("weather?").output)
            kitaru.wait(name="go")
            return out

        handle = f.run()
        assert completed(runtime, handle.exec_id) == ["w.model", "w.tool.forecast", "w.model:2"]
        assert (
            KitaruClient().executions.input(handle.exec_id, None).wait(timeout=60)
            == '{"forecast":"sunny in a"}'
        )
        assert calls == {"a": 1}  # the resumed run replayed the MCP call instead of repeating it


class TestApprovals:
    def test_requires_approval_suspends_then_runs_once_when_approved(self, runtime: Runtime) -> None:
        script, ran = Scripted(), Counter[str]()
        durable = KitaruAgent(two_tool_agent(script, ran, requires_approval=True))

        @flow
        def f() -> str:
            return str(durable.run_sync("hi").output)

        handle = f.run()
        assert handle.status == "waiting"
        execution = KitaruClient().executions.get(handle.exec_id)
        [w] = execution.open_waits
        assert w.name == "helper.approve.tool_b" and "tool_b(x=2)" in (w.question or "")
        assert ran == {"tool_a": 1} and script.requests == 2
        assert (
            KitaruClient().executions.input(handle.exec_id, True).wait(timeout=60) == "final after 3 requests"
        )
        assert ran == {"tool_a": 1, "tool_b": 1} and script.requests == 3

    def test_a_denied_tool_never_runs_and_the_model_is_told(self, runtime: Runtime) -> None:
        script, ran = Scripted(), Counter[str]()
        durable = KitaruAgent(two_tool_agent(script, ran), approve={"tool_b"})

        @flow
        def f() -> Any:
            return durable.run_sync("hi").all_messages()

        handle = f.run()
        messages = KitaruClient().executions.input(handle.exec_id, False).wait(timeout=60)
        assert ran == {"tool_a": 1}
        returns = [p for m in messages for p in m.parts if getattr(p, "tool_name", None) == "tool_b"]
        assert any(getattr(p, "content", None) == DENIED for p in returns)

    def test_approve_can_be_a_function_of_the_arguments(self, runtime: Runtime) -> None:
        script, ran = Scripted(), Counter[str]()
        durable = KitaruAgent(two_tool_agent(script, ran), approve=lambda name, args: args["x"] == 1)

        @flow
        def f() -> str:
            return str(durable.run_sync("hi").output)

        handle = f.run()
        [w] = KitaruClient().executions.get(handle.exec_id).open_waits
        assert w.name == "helper.approve.tool_a"
        assert (
            KitaruClient().executions.input(handle.exec_id, True).wait(timeout=60) == "final after 3 requests"
        )

    def test_a_tool_raising_approval_required(self, runtime: Runtime) -> None:
        script = Scripted(first="guarded", second="guarded")
        agent = Agent(FunctionModel(script), name="g")
        ran = Counter[str]()

        @agent.tool
        def guarded(ctx: RunContext[None], x: int) -> str:
            if x == 2 and not ctx.tool_call_approved:
                raise ApprovalRequired(metadata={"why": "x is 2"})
            ran[x] += 1
            return f"g{x}"

        durable = KitaruAgent(agent)

        @flow
        def f() -> str:
            return str(durable.run_sync("hi").output)

        handle = f.run()
        [w] = KitaruClient().executions.get(handle.exec_id).open_waits
        assert w.name == "g.approve.guarded"
        assert (
            KitaruClient().executions.input(handle.exec_id, True).wait(timeout=60) == "final after 3 requests"
        )
        assert ran == {1: 1, 2: 1}


class TestOutsideAFlow:
    def test_run_sync_opens_a_flow_named_after_the_agent(self, runtime: Runtime) -> None:
        script, ran = Scripted(), Counter[str]()
        durable = KitaruAgent(two_tool_agent(script, ran), name="solo")
        result = durable.run_sync("hi")
        assert isinstance(result, AgentResult)
        assert result.output == "final after 3 requests" and len(result.all_messages()) == 6
        execution = KitaruClient().executions.get(result.exec_id)
        assert execution.flow == "solo" and execution.status == "completed"
        assert "solo.model:3" in completed(runtime, result.exec_id)

    def test_async_run_opens_a_flow(self, runtime: Runtime) -> None:
        import asyncio

        script, ran = Scripted(), Counter[str]()
        durable = KitaruAgent(two_tool_agent(script, ran), name="solo_async")
        result = asyncio.run(durable.run("hi"))
        assert result.output == "final after 3 requests"

    def test_a_waiting_run_says_how_to_answer(self, runtime: Runtime) -> None:
        script, ran = Scripted(), Counter[str]()
        durable = KitaruAgent(two_tool_agent(script, ran), name="ask", approve=True)
        with pytest.raises(kitaru.KitaruStateError, match="kitaru executions input"):
            durable.run_sync("hi")
        handle = durable.run_flow("hi")
        assert handle.status == "waiting"

    def test_message_history_and_deps_pass_through(self, runtime: Runtime) -> None:
        agent = Agent(TestModel(custom_output_text="fine"), name="h", deps_type=str)
        seen: list[str] = []

        @agent.tool
        def whoami(ctx: RunContext[str]) -> str:
            seen.append(ctx.deps)
            return ctx.deps

        durable = KitaruAgent(agent)
        first = durable.run_sync("one", deps="alice")
        second = durable.run_sync("two", deps="bob", message_history=first.all_messages())
        assert len(second.all_messages()) == len(first.all_messages()) + 2
        durable.run_sync("three", deps="carol")
        assert seen == ["alice", "carol"]  # the continued conversation needed no tool
        with pytest.raises(kitaru.KitaruUsageError, match="model_settings"):
            durable.run_sync("x", model_settings={})

    def test_wraps_only_agents(self) -> None:
        with pytest.raises(kitaru.KitaruUsageError):
            KitaruAgent(object())  # type: ignore[arg-type]


def test_missing_extra_names_it() -> None:
    code = (
        "import sys; sys.modules['pydantic_ai'] = None\n"
        "try:\n    import kitaru.adapters.pydantic_ai\n"
        "except Exception as exc:\n    print(type(exc).__name__, exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "KitaruMissingDependencyError" in out.stdout
    assert re.search(install_hint_pattern("pydantic-ai"), out.stdout), out.stdout


# -- real processes ------------------------------------------------------------------------------


@pytest.mark.e2e
@pytest.mark.parametrize("mode", ["explicit", "implicit"])
def test_sigkill_after_the_second_model_request_then_resume_from_the_cli(
    mode: str, tmp_path: Path, subprocess_env: dict[str, str], kitaru_cli: list[str], kitaru_home: Path
) -> None:
    count, mark = tmp_path / "count.txt", tmp_path / "mark"
    env = {**subprocess_env, "COUNT_FILE": str(count), "MARK_FILE": str(mark), "SLOW_TOOL": "publish"}
    proc = subprocess.Popen([sys.executable, str(FLOWS / "pai_agent.py"), mode], env=env, cwd=tmp_path)
    try:
        wait_for(mark)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(30)
    assert count.read_text().split("\n")[:4] == ["model 1", "tool lookup", "model 2", "tool publish"]

    store = sync_view(SQLiteStateStore(kitaru_home / "kitaru.db"))
    [execution] = store.list_executions()
    assert execution.status == "running"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env.pop("SLOW_TOOL")
    done = subprocess.run(
        [*kitaru_cli, "executions", "resume", execution.id],
        env=env,
        cwd=elsewhere,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "completed" in done.stdout
    lines = Counter(count.read_text().split("\n")[:-1])
    # Every model request was paid for once; only the tool that was interrupted ran again.
    assert lines == {"model 1": 1, "model 2": 1, "model 3": 1, "tool lookup": 1, "tool publish": 2}
    final = store.get_execution(execution.id)
    assert final is not None and final.status == "completed"
    assert final.flow == ("write" if mode == "explicit" else "writer")
    store.close()


@pytest.mark.e2e
def test_an_approval_releases_the_process_and_the_cli_answer_resumes_it(
    tmp_path: Path, subprocess_env: dict[str, str], kitaru_cli: list[str], kitaru_home: Path
) -> None:
    count = tmp_path / "count.txt"
    env = {**subprocess_env, "COUNT_FILE": str(count), "MARK_FILE": str(tmp_path / "mark")}
    started = subprocess.run(
        [sys.executable, str(FLOWS / "pai_agent.py"), "approval"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert started.returncode == 0, started.stderr
    exec_id, status = started.stdout.split()
    assert status == "waiting"
    assert count.read_text().split() == ["model", "1", "tool", "lookup", "model", "2"]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    done = subprocess.run(
        [*kitaru_cli, "executions", "input", exec_id, "--value", "true"],
        env=env,
        cwd=elsewhere,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "completed" in done.stdout
    assert Counter(count.read_text().split("\n")[:-1]) == {
        "model 1": 1,
        "model 2": 1,
        "model 3": 1,
        "tool lookup": 1,
        "tool publish": 1,
    }


class TestApprovalHold:
    def test_an_approval_answered_during_the_hold_continues_in_the_same_run(
        self, runtime: Runtime, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        # Tool calls of a durable run are on an event loop: the approval's wait holds there with
        # anyio.sleep (KITARU_WAIT_HOLD), and an answer that lands meanwhile is taken at once.
        import threading
        import time

        monkeypatch.setenv("KITARU_WAIT_HOLD", "60")
        script, ran = Scripted(), Counter[str]()
        durable = KitaruAgent(two_tool_agent(script, ran), name="held", approve={"tool_b"})
        client = KitaruClient()

        def approve_soon() -> None:
            for _ in range(3000):
                executions = runtime.state.list_executions()
                if executions and client.executions.get(executions[0].id).open_waits:
                    client.executions.input(executions[0].id, True, resume=False)
                    return
                time.sleep(0.01)

        @flow
        async def f() -> str:
            return str((await durable.run("hi")).output)

        approver = threading.Thread(target=approve_soon)
        approver.start()
        handle = f.run()
        approver.join(60)
        assert handle.status == "completed"
        assert handle.wait(timeout=60) == "final after 3 requests"
        assert ran == {"tool_a": 1, "tool_b": 1}
