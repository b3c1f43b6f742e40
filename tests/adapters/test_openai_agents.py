"""The OpenAI Agents SDK adapter, driven by an offline implementation of the SDK's Model interface:
per-call and per-run checkpoints, approvals through waits, handoffs, runs that open their own flow,
and a killed process resumed without paying twice."""

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

pytest.importorskip("agents")

from agents import Agent, function_tool, set_tracing_disabled
from agents.items import ModelResponse
from agents.models.interface import Model
from agents.testing import assistant_message, function_call
from agents.usage import Usage

import kitaru
from kitaru import KitaruClient, checkpoint, flow
from kitaru._engine.runtime import Runtime
from kitaru._install import install_hint_pattern
from kitaru.adapters.openai_agents import KitaruAgent, RunOutcome
from kitaru.store import sync_view
from kitaru.store.sqlite import SQLiteStateStore
from tests._process import wait_for

FLOWS = Path(__file__).parent / "flows"


@pytest.fixture(autouse=True)
def no_tracing() -> None:
    set_tracing_disabled(True)  # the SDK would otherwise try to export traces


class ScriptedModel(Model):
    """Calls ``first`` then ``second`` (tool names), then answers; counts its calls."""

    def __init__(self, first: str = "tool_a", second: str = "tool_b", answer: str = "final") -> None:
        self.calls = 0
        self.first, self.second, self.answer = first, second, answer

    async def get_response(
        self, system_instructions: Any, input: Any, *args: Any, **kwargs: Any
    ) -> ModelResponse:
        self.calls += 1
        done = [i for i in input if isinstance(i, dict) and i.get("type") == "function_call_output"]
        n = len(done) + 1
        if n == 1 and self.first:
            out = [function_call(self.first, {"x": 1}, call_id="c1")]
        elif n == 2 and self.second:
            out = [function_call(self.second, {"x": 2}, call_id="c2")]
        else:
            out = [assistant_message(f"{self.answer} after {n} calls")]
        usage = Usage(requests=1, input_tokens=10, output_tokens=3, total_tokens=13)
        return ModelResponse(output=out, usage=usage, response_id=None)

    def stream_response(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError


def two_tool_agent(model: ScriptedModel, ran: Counter[str], **b_kw: Any) -> Agent[Any]:
    @function_tool
    def tool_a(x: int) -> str:
        ran["tool_a"] += 1
        return f"a{x}"

    @function_tool(**b_kw)
    def tool_b(x: int) -> str:
        ran["tool_b"] += 1
        return f"b{x}"

    return Agent(name="helper", model=model, tools=[tool_a, tool_b])


def completed(runtime: Runtime, exec_id: str) -> list[str]:
    return [r.call_id or "" for r in runtime.state.read_journal(exec_id) if r.kind == "checkpoint_completed"]


class TestPerCall:
    def test_every_model_call_and_tool_call_is_a_checkpoint(self, runtime: Runtime) -> None:
        model, ran = ScriptedModel(), Counter[str]()
        durable = KitaruAgent(two_tool_agent(model, ran))

        @flow
        def f(q: str) -> str:
            return str(durable.run_sync(q).final_output)

        handle = f.run("hi")
        assert handle.wait(timeout=60) == "final after 3 calls"
        assert completed(runtime, handle.exec_id) == [
            "helper.model",
            "helper.tool.tool_a",
            "helper.model:2",
            "helper.tool.tool_b",
            "helper.model:3",
        ]
        arts = {a.name: a for a in KitaruClient().artifacts.list(handle.exec_id)}
        assert arts["helper.output"].load() == "final after 3 calls"
        assert [i.get("type") for i in arts["helper.items"].load()][1:3] == [
            "function_call",
            "function_call_output",
        ]
        checkpoints = KitaruClient().executions.get(handle.exec_id).checkpoints
        [first] = [c for c in checkpoints if c.call_id == "helper.model"]
        assert first.type == "llm_call"
        assert first.metadata == {
            "agent": "helper",
            "tokens_in": 10,
            "tokens_out": 3,
            "latency_ms": pytest.approx(first.metadata["latency_ms"]),
        }

    def test_a_resumed_run_repeats_no_call(self, runtime: Runtime) -> None:
        model, ran = ScriptedModel(), Counter[str]()
        durable = KitaruAgent(two_tool_agent(model, ran))

        @flow
        def f() -> str:
            out = str(durable.run_sync("hi").final_output)
            kitaru.wait(name="go")
            return out

        handle = f.run()
        assert handle.status == "waiting" and model.calls == 3
        assert KitaruClient().executions.input(handle.exec_id, None).wait(timeout=60) == "final after 3 calls"
        assert model.calls == 3 and ran == {"tool_a": 1, "tool_b": 1}
        assert "input_changed" not in [r.kind for r in runtime.state.read_journal(handle.exec_id)]

    def test_handoff_agents_are_durable_too(self, runtime: Runtime) -> None:
        specialist_model = ScriptedModel(first="", second="", answer="specialist")
        specialist = Agent(name="specialist", model=specialist_model)
        triage_model = ScriptedModel(first="transfer_to_specialist", second="")
        triage = Agent(name="triage", model=triage_model, handoffs=[specialist])
        durable = KitaruAgent(triage)

        @flow
        def f() -> str:
            out = str(durable.run_sync("help").final_output)
            kitaru.wait(name="go")
            return out

        handle = f.run()
        assert completed(runtime, handle.exec_id) == ["triage.model", "triage.model:2"]
        assert KitaruClient().executions.input(handle.exec_id, None).wait(timeout=60).startswith("specialist")
        assert (triage_model.calls, specialist_model.calls) == (1, 1)
        logs = [r.data for r in runtime.state.read_journal(handle.exec_id) if r.kind == "log"]
        assert [d["agent"] for d in logs if d] == ["triage", "specialist"]

    def test_async_flow_and_checkpoint_scope(self, runtime: Runtime) -> None:
        import asyncio

        model, ran = ScriptedModel(), Counter[str]()
        durable = KitaruAgent(two_tool_agent(model, ran))

        @checkpoint
        async def inside() -> str:
            return str((await durable.run("hi")).final_output)

        @flow
        async def f() -> list[str]:
            return [str((await durable.run("hi")).final_output), await inside()]

        async def app() -> list[str]:
            return await (await f.start()).result(timeout=60)

        assert asyncio.run(app()) == ["final after 3 calls", "final after 3 calls"]

    def test_server_side_conversation_state_is_refused(self, runtime: Runtime) -> None:
        durable = KitaruAgent(two_tool_agent(ScriptedModel(), Counter()))

        @flow
        def f() -> str:
            return str(durable.run_sync("hi", previous_response_id="resp_1").final_output)

        with pytest.raises(kitaru.KitaruUsageError, match="previous_response_id"):
            f.run().wait(timeout=60)


class TestApprovals:
    def test_needs_approval_suspends_and_runs_once_when_approved(self, runtime: Runtime) -> None:
        model, ran = ScriptedModel(), Counter[str]()
        durable = KitaruAgent(two_tool_agent(model, ran, needs_approval=True))

        @flow
        def f() -> str:
            return str(durable.run_sync("hi").final_output)

        handle = f.run()
        assert handle.status == "waiting" and ran == {"tool_a": 1} and model.calls == 2
        [w] = KitaruClient().executions.get(handle.exec_id).open_waits
        assert w.name == "helper.approve.tool_b" and "tool_b(x=2)" in (w.question or "")
        assert KitaruClient().executions.input(handle.exec_id, True).wait(timeout=60) == "final after 3 calls"
        assert ran == {"tool_a": 1, "tool_b": 1} and model.calls == 3

    def test_denied_tools_never_run(self, runtime: Runtime) -> None:
        model, ran = ScriptedModel(), Counter[str]()
        durable = KitaruAgent(two_tool_agent(model, ran), approve={"tool_b"})

        @flow
        def f() -> Any:
            return durable.run_sync("hi").to_input_list()

        handle = f.run()
        items = KitaruClient().executions.input(handle.exec_id, False).wait(timeout=60)
        assert ran == {"tool_a": 1}
        outputs = [i for i in items if i.get("type") == "function_call_output" and i.get("call_id") == "c2"]
        assert outputs and "tool_b" not in ran

    def test_approve_as_a_function_of_arguments(self, runtime: Runtime) -> None:
        model, ran = ScriptedModel(), Counter[str]()
        durable = KitaruAgent(two_tool_agent(model, ran), approve=lambda name, args: args.get("x") == 1)

        @flow
        def f() -> str:
            return str(durable.run_sync("hi").final_output)

        handle = f.run()
        [w] = KitaruClient().executions.get(handle.exec_id).open_waits
        assert w.name == "helper.approve.tool_a"
        assert KitaruClient().executions.input(handle.exec_id, True).wait(timeout=60) == "final after 3 calls"


class TestRunnerCall:
    def test_the_whole_run_is_one_checkpoint(self, runtime: Runtime) -> None:
        model, ran = ScriptedModel(), Counter[str]()
        durable = KitaruAgent(two_tool_agent(model, ran), strategy="runner_call")

        @flow
        def f() -> Any:
            out = durable.run_sync("hi")
            kitaru.wait(name="go")
            return out

        handle = f.run()
        assert completed(runtime, handle.exec_id) == ["helper.run"]
        outcome = KitaruClient().executions.input(handle.exec_id, None).wait(timeout=60)
        assert isinstance(outcome, RunOutcome)
        assert outcome.final_output == "final after 3 calls" and outcome.last_agent == "helper"
        assert model.calls == 3 and ran == {"tool_a": 1, "tool_b": 1}

    def test_approvals_continue_from_the_saved_run_state(self, runtime: Runtime) -> None:
        model, ran = ScriptedModel(), Counter[str]()
        durable = KitaruAgent(two_tool_agent(model, ran, needs_approval=True), strategy="runner_call")

        @flow
        def f() -> Any:
            return durable.run_sync("hi").final_output

        handle = f.run()
        assert handle.status == "waiting" and model.calls == 2
        assert KitaruClient().executions.input(handle.exec_id, True).wait(timeout=60) == "final after 3 calls"
        assert completed(runtime, handle.exec_id) == ["helper.run", "helper.run:2"]
        assert model.calls == 3 and ran == {"tool_a": 1, "tool_b": 1}

    def test_bad_strategy(self) -> None:
        with pytest.raises(kitaru.KitaruUsageError, match="runner_call"):
            KitaruAgent(Agent(name="a"), strategy="each")  # type: ignore[arg-type]


class TestOutsideAFlow:
    def test_run_sync_opens_a_flow(self, runtime: Runtime) -> None:
        model, ran = ScriptedModel(), Counter[str]()
        durable = KitaruAgent(two_tool_agent(model, ran), name="solo")
        outcome = durable.run_sync("hi")
        assert isinstance(outcome, RunOutcome) and outcome.final_output == "final after 3 calls"
        assert KitaruClient().executions.get(outcome.exec_id or "").flow == "solo"
        assert outcome.to_input_list()[0] == {"content": "hi", "role": "user"}

    def test_a_waiting_run_says_how_to_answer(self, runtime: Runtime) -> None:
        durable = KitaruAgent(two_tool_agent(ScriptedModel(), Counter()), name="asks", approve=True)
        with pytest.raises(kitaru.KitaruStateError, match="kitaru executions input"):
            durable.run_sync("hi")
        with pytest.raises(kitaru.KitaruUsageError, match="run_config"):
            durable.run_flow("hi", run_config=None)

    def test_wraps_only_agents(self) -> None:
        with pytest.raises(kitaru.KitaruUsageError):
            KitaruAgent(object())  # type: ignore[arg-type]


def test_missing_extra_names_it() -> None:
    code = (
        "import sys; sys.modules['agents'] = None\n"
        "try:\n    import kitaru.adapters.openai_agents\n"
        "except Exception as exc:\n    print(type(exc).__name__, exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "KitaruMissingDependencyError" in out.stdout
    assert re.search(install_hint_pattern("openai-agents"), out.stdout), out.stdout


@pytest.mark.e2e
@pytest.mark.parametrize("mode", ["explicit", "implicit", "runner"])
def test_sigkill_after_the_second_model_call_then_resume_from_the_cli(
    mode: str, tmp_path: Path, subprocess_env: dict[str, str], kitaru_cli: list[str], kitaru_home: Path
) -> None:
    count, mark = tmp_path / "count.txt", tmp_path / "mark"
    env = {**subprocess_env, "COUNT_FILE": str(count), "MARK_FILE": str(mark), "SLOW_TOOL": "publish"}
    proc = subprocess.Popen([sys.executable, str(FLOWS / "oai_agent.py"), mode], env=env, cwd=tmp_path)
    try:
        wait_for(mark)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(30)
    assert count.read_text().split("\n")[:4] == ["model 1", "tool lookup", "model 2", "tool publish"]
    store = sync_view(SQLiteStateStore(kitaru_home / "kitaru.db"))
    [execution] = store.list_executions()
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
    assert lines == {"model 1": 1, "model 2": 1, "model 3": 1, "tool lookup": 1, "tool publish": 2}
    store.close()


@pytest.mark.e2e
def test_an_approval_releases_the_process_and_the_cli_answer_resumes_it(
    tmp_path: Path, subprocess_env: dict[str, str], kitaru_cli: list[str]
) -> None:
    count = tmp_path / "count.txt"
    env = {**subprocess_env, "COUNT_FILE": str(count), "MARK_FILE": str(tmp_path / "mark")}
    started = subprocess.run(
        [sys.executable, str(FLOWS / "oai_agent.py"), "approval"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert started.returncode == 0, started.stderr
    exec_id, status = started.stdout.split()
    assert status == "waiting"
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
        # The run is on an event loop: the approval's wait holds there with anyio.sleep
        # (KITARU_WAIT_HOLD), and an answer that lands meanwhile is taken at once.
        import threading
        import time

        monkeypatch.setenv("KITARU_WAIT_HOLD", "60")
        model, ran = ScriptedModel(), Counter[str]()
        durable = KitaruAgent(two_tool_agent(model, ran, needs_approval=True))
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
            return str((await durable.run("hi")).final_output)

        approver = threading.Thread(target=approve_soon)
        approver.start()
        handle = f.run()
        approver.join(60)
        assert handle.status == "completed"
        assert handle.wait(timeout=60) == "final after 3 calls"
        assert ran == {"tool_a": 1, "tool_b": 1}
