"""Durable OpenAI Agents SDK runs, at one of two granularities.

    from agents import Agent, function_tool
    from kitaru.adapters.openai_agents import KitaruAgent

    @function_tool(needs_approval=True)
    def refund(order: str) -> str: ...

    triage = Agent(name="triage", tools=[refund], handoffs=[billing])
    durable = KitaruAgent(triage)                  # at module level: a resumed run finds it

    @flow
    def support(question: str) -> str:
        return durable.run_sync(question).final_output

``strategy="per_call"`` (the default): each model call is a checkpoint (``triage.model``,
``triage.model:2``...) and each function-tool call too (``triage.tool.refund``), for the starting
agent and every agent it hands off to; a crashed run resumes without repeating a completed call.
Function tools run one at a time so their ids are the same on every replay. ``Runner.run``'s
result is returned as is.

``strategy="runner_call"``: the whole ``Runner.run`` is one checkpoint (``triage.run``), cheaper to
journal, coarser to resume; the result is a :class:`RunOutcome` (``final_output``,
``to_input_list()``, ``last_agent``).

Human approval: tools declared ``needs_approval`` (or named in ``approve=``) interrupt the SDK's run;
the adapter turns each interruption into a ``kitaru.wait`` (``triage.approve.refund``, answered
``true`` or ``false``) at flow scope, so the execution suspends without holding a process, then
continues the run with the decision (under ``runner_call``, from the run state the checkpoint
saved). The final output and the conversation items are saved as artifacts (``triage.output``,
``triage.items``). Inside a ``@checkpoint`` a run is plain; outside any flow ``run``/``run_sync``
open one (named after the agent) and ``run_flow`` returns its handle. Streaming is not durable.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from kitaru._engine.flow import flow
from kitaru.errors import KitaruUsageError

from ._common import (
    AgentRef,
    agent_run_result,
    at_flow_scope,
    find_agent,
    import_extra,
    in_checkpoint,
    register_agent,
    safe_name,
    stable_digest,
)

import_extra("agents", "openai-agents", "kitaru.adapters.openai_agents")

from agents import Agent, FunctionTool, Handoff, RunConfig, Runner  # noqa: E402
from agents.items import ModelResponse  # noqa: E402
from agents.models.interface import Model  # noqa: E402
from agents.run_config import ToolExecutionConfig  # noqa: E402
from agents.run_state import RunState  # noqa: E402

if TYPE_CHECKING:
    from kitaru._engine.flow import Flow, FlowHandle

__all__ = ["KitaruAgent", "RunOutcome", "Strategy"]

Strategy = Literal["per_call", "runner_call"]
Approve = bool | Collection[str] | Callable[[str, dict[str, Any]], bool]


@dataclass
class RunOutcome:
    """A finished run, in a form that can be stored: what ``runner_call`` checkpoints return and
    what a run that opened its own flow gives back."""

    final_output: Any
    items: list[Any] = field(default_factory=list)
    last_agent: str | None = None
    exec_id: str | None = None

    def to_input_list(self) -> list[Any]:
        """The conversation so far, as input items for a follow-up run."""
        return list(self.items)


class KitaruAgent:
    """An OpenAI Agents SDK ``Agent`` whose runs are durable: see the module docs.

    ``name`` names checkpoints, waits, artifacts and the flow opened outside one (default: the
    agent's name). ``approve`` adds tools that need a human's yes (True for all function tools, a
    collection of names, or a function of name and arguments); ``approval_timeout`` bounds each
    approval wait in seconds.
    """

    def __init__(
        self,
        agent: Agent[Any],
        *,
        name: str | None = None,
        strategy: Strategy = "per_call",
        approve: Approve = (),
        approval_timeout: float | None = None,
    ) -> None:
        if not isinstance(agent, Agent):
            raise KitaruUsageError(f"KitaruAgent wraps an agents.Agent, got {type(agent).__qualname__}.")
        if strategy not in ("per_call", "runner_call"):
            raise KitaruUsageError(f"strategy must be 'per_call' or 'runner_call', got {strategy!r}.")
        self.agent = agent
        self.name = safe_name(name or agent.name or "agent")
        self.strategy: Strategy = strategy
        self.approve = approve
        self.approval_timeout = approval_timeout
        self._ref: AgentRef = register_agent("openai_agents", self.name, self)
        self._flow: Flow[Any, Any] | None = None

    def __repr__(self) -> str:
        return f"<KitaruAgent {self.name!r} ({self.strategy}) wrapping agent {self.agent.name!r}>"

    # -- running ------------------------------------------------------------------------------

    async def run(self, input: Any, **kwargs: Any) -> Any:
        """Run durably (see the module docs); takes ``Runner.run``'s keyword arguments."""
        if at_flow_scope():
            if self.strategy == "runner_call":
                return await self._runner_call(input, kwargs)
            return await self._per_call(input, kwargs)
        if in_checkpoint():
            return await Runner.run(self.agent, input, **kwargs)
        import anyio.to_thread

        # Driven and read on a worker thread: the sync client's calls must not run on this loop.
        def run_and_read() -> Any:
            handle = self.run_flow(input, **kwargs)
            return agent_run_result(self.name, handle.exec_id, handle.status)

        return await anyio.to_thread.run_sync(run_and_read)

    def run_sync(self, input: Any, **kwargs: Any) -> Any:
        """:meth:`run` for synchronous code."""
        from kitaru._engine.context import current_execution, running_loop

        ctx = current_execution()
        if ctx is not None and at_flow_scope():
            if running_loop() is not None:
                raise KitaruUsageError(
                    f"{self.name}.run_sync() was called in an async flow: use `await {self.name}.run(...)`."
                )
            return ctx.run_async(functools.partial(self.run, input, **kwargs))
        if in_checkpoint():
            return Runner.run_sync(self.agent, input, **kwargs)
        handle = self.run_flow(input, **kwargs)
        return agent_run_result(self.name, handle.exec_id, handle.status)

    def run_flow(self, input: Any, **kwargs: Any) -> FlowHandle:
        """Start a run in a flow of its own; returns its handle (``waiting`` while an approval is
        open). ``handle.wait()`` gives a :class:`RunOutcome`."""
        extra = set(kwargs) - {"context", "max_turns"}
        if extra:
            raise KitaruUsageError(
                f"{self.name}: outside a flow, a durable run takes only the input, context and "
                f"max_turns (not {', '.join(sorted(extra))}); call it from your own @flow to pass more."
            )
        if self._flow is None:
            from kitaru._engine.flow import Flow

            self._flow = Flow(_agent_flow.fn, name=self.name)
        return self._flow.run(self._ref, input, kwargs.get("context"), kwargs.get("max_turns"))

    # -- per_call -----------------------------------------------------------------------------

    async def _per_call(self, input: Any, kwargs: dict[str, Any]) -> Any:
        if kwargs.get("previous_response_id") or kwargs.get("conversation_id"):
            raise KitaruUsageError(
                f"{self.name}: server-side conversation state (previous_response_id, conversation_id) "
                "cannot be replayed; pass the conversation as input items instead."
            )
        run_config: RunConfig = kwargs.pop("run_config", None) or RunConfig()
        execution = run_config.tool_execution or ToolExecutionConfig()
        # One function tool at a time: their checkpoint ids must follow the same order on replay.
        run_config = dataclasses.replace(
            run_config, tool_execution=dataclasses.replace(execution, max_function_tool_concurrency=1)
        )
        agent = self._durable(self.agent, run_config, {})
        if run_config.model is not None:
            run_config = dataclasses.replace(run_config, model=None)  # resolved into each agent
        result = await Runner.run(agent, input, run_config=run_config, **kwargs)
        while result.interruptions:
            state = result.to_state()
            for item in result.interruptions:
                if await self._ask(item.tool_name or "tool", _arguments(item.raw_item)):
                    state.approve(item)
                else:
                    state.reject(item)
            result = await Runner.run(agent, state, run_config=run_config, **kwargs)
        self._save(result.final_output, result.to_input_list())
        return result

    def _durable(self, agent: Agent[Any], run_config: RunConfig, memo: dict[int, Agent[Any]]) -> Agent[Any]:
        """A copy of ``agent`` (and the agents it hands off to) whose model calls and function
        tools are checkpoints at flow scope."""
        done = memo.get(id(agent))
        if done is not None:
            return done
        inner = _resolve_model(agent, run_config)
        clone = agent.clone(model=_KitaruModel(inner, self, agent.name))
        memo[id(agent)] = clone
        clone.tools = [self._durable_tool(t) if isinstance(t, FunctionTool) else t for t in agent.tools]
        clone.handoffs = [self._durable_handoff(h, run_config, memo) for h in agent.handoffs]
        return clone

    def _durable_handoff(self, target: Any, run_config: RunConfig, memo: dict[int, Agent[Any]]) -> Any:
        if isinstance(target, Agent):
            return self._durable(target, run_config, memo)
        if isinstance(target, Handoff):
            invoke = target.on_invoke_handoff

            async def on_invoke_handoff(ctx: Any, args: str) -> Any:
                return self._durable(await invoke(ctx, args), run_config, memo)

            return dataclasses.replace(target, on_invoke_handoff=on_invoke_handoff)
        return target

    def _durable_tool(self, tool: FunctionTool) -> FunctionTool:
        invoke = tool.on_invoke_tool
        durable = self

        async def on_invoke_tool(ctx: Any, args: str) -> Any:
            if not at_flow_scope():
                return await invoke(ctx, args)
            from kitaru._engine.checkpoint import Checkpoint

            async def tool_call(tool_name: str, arguments: str) -> Any:
                return await invoke(ctx, args)

            tool_call.__qualname__ = "openai_agents.tool_call"
            step = Checkpoint(
                tool_call,
                name=safe_name(durable.name, "tool", tool.name),
                retries=0,
                retry_delay=0,
                backoff=1,
                retry_on=(Exception,),
            )
            return await step(tool.name, args)

        approved: FunctionTool = self._with_approval(tool)
        return dataclasses.replace(approved, on_invoke_tool=on_invoke_tool)

    def _with_approval(self, tool: Any) -> Any:
        """``tool`` with the SDK's ``needs_approval`` set where ``approve=`` asks for it."""
        if not isinstance(tool, FunctionTool) or tool.needs_approval is not False:
            return tool
        approve, name = self.approve, tool.name
        if isinstance(approve, bool):
            return dataclasses.replace(tool, needs_approval=True) if approve else tool
        if callable(approve):
            rule = approve

            async def needs(_ctx: Any, params: dict[str, Any], _call_id: str) -> bool:
                return bool(rule(name, params))

            return dataclasses.replace(tool, needs_approval=needs)
        return dataclasses.replace(tool, needs_approval=True) if name in approve else tool

    # -- runner_call --------------------------------------------------------------------------

    async def _runner_call(self, input: Any, kwargs: dict[str, Any]) -> RunOutcome:
        from kitaru._engine.checkpoint import Checkpoint

        agent = self.agent.clone(tools=[self._with_approval(t) for t in self.agent.tools])

        async def runner_call(start: Any, decisions: dict[str, bool]) -> dict[str, Any]:
            if decisions:
                state = await RunState.from_json(agent, start)
                for item in state.get_interruptions():
                    call_id = _call_id(item.raw_item)
                    if decisions.get(call_id, False):
                        state.approve(item)
                    else:
                        state.reject(item)
                result = await Runner.run(agent, state, **kwargs)
            else:
                result = await Runner.run(agent, start, **kwargs)
            out: dict[str, Any] = {
                "final_output": result.final_output,
                "items": json.loads(json.dumps(result.to_input_list(), default=str)),
                "last_agent": result.last_agent.name,
            }
            if result.interruptions:
                out["interruptions"] = [
                    {
                        "call_id": _call_id(i.raw_item),
                        "tool": i.tool_name or "tool",
                        "args": _arguments(i.raw_item),
                    }
                    for i in result.interruptions
                ]
                out["state"] = result.to_state().to_json()
            return out

        runner_call.__qualname__ = "openai_agents.runner_call"
        step = Checkpoint(
            runner_call,
            name=safe_name(self.name, "run"),
            retries=0,
            retry_delay=0,
            backoff=1,
            retry_on=(Exception,),
        )
        out = await step(input, {})
        while out.get("interruptions"):
            decisions = {i["call_id"]: await self._ask(i["tool"], i["args"]) for i in out["interruptions"]}
            out = await step(out["state"], decisions)
        outcome = RunOutcome(out["final_output"], out["items"], out["last_agent"])
        self._save(outcome.final_output, outcome.items)
        return outcome

    # -- shared -------------------------------------------------------------------------------

    async def _ask(self, tool_name: str, args: dict[str, Any]) -> bool:
        # Awaited: a durable run is on an event loop, where only the awaitable wait can hold
        # (KITARU_WAIT_HOLD) for a fast answer.
        from kitaru._engine.waits import wait_async

        shown = ", ".join(f"{k}={v!r}" for k, v in args.items())
        return bool(
            await wait_async(
                name=safe_name(self.name, "approve", tool_name),
                question=f"Allow {self.name} to call {tool_name}({shown})?",
                schema=bool,
                timeout=self.approval_timeout,
                metadata={"agent": self.name, "tool": tool_name, "args": args},
            )
        )

    def _save(self, final_output: Any, items: list[Any]) -> None:
        from kitaru._engine.api import save

        save(f"{self.name}.items", json.loads(json.dumps(items, default=str)), type="messages")
        save(f"{self.name}.output", final_output, type="result")


def _resolve_model(agent: Agent[Any], run_config: RunConfig) -> Model:
    """The model the SDK would use for ``agent`` in this run (its own resolution order)."""
    if isinstance(run_config.model, Model):
        return run_config.model
    if isinstance(run_config.model, str):
        return run_config.model_provider.get_model(run_config.model)
    if isinstance(agent.model, Model):
        return agent.model
    return run_config.model_provider.get_model(agent.model)


def _arguments(raw: Any) -> dict[str, Any]:
    text = raw.get("arguments") if isinstance(raw, dict) else getattr(raw, "arguments", None)
    try:
        parsed = json.loads(text or "{}")
    except (TypeError, ValueError):
        return {"arguments": text}
    return parsed if isinstance(parsed, dict) else {"arguments": parsed}


def _call_id(raw: Any) -> str:
    value = raw.get("call_id") if isinstance(raw, dict) else getattr(raw, "call_id", None)
    return str(value or "")


@flow(name="openai_agents_agent")
async def _agent_flow(
    agent: AgentRef, input: Any, context: Any = None, max_turns: int | None = None
) -> RunOutcome:
    """The flow a durable run opens when started outside one."""
    from kitaru._engine.api import current_execution_id

    durable: KitaruAgent = find_agent("openai_agents", agent)
    kwargs: dict[str, Any] = {}
    if context is not None:
        kwargs["context"] = context
    if max_turns is not None:
        kwargs["max_turns"] = max_turns
    result = await durable.run(input, **kwargs)
    if isinstance(result, RunOutcome):
        result.exec_id = current_execution_id()
        return result
    return RunOutcome(
        final_output=result.final_output,
        items=json.loads(json.dumps(result.to_input_list(), default=str)),
        last_agent=result.last_agent.name,
        exec_id=current_execution_id(),
    )


# -- the model: each call a checkpoint --------------------------------------------------------------

_RESPONSE: Any = None


def _response_adapter() -> Any:
    global _RESPONSE
    if _RESPONSE is None:
        from pydantic import TypeAdapter

        _RESPONSE = TypeAdapter(ModelResponse)
    return _RESPONSE


_GET_RESPONSE_PARAMS = (
    "system_instructions",
    "input",
    "model_settings",
    "tools",
    "output_schema",
    "handoffs",
    "tracing",
)


class _KitaruModel(Model):
    """Wraps the agent's model: at flow scope each ``get_response`` is a checkpoint whose output is
    the response (as JSON), so a resumed run gets it back without calling the model."""

    def __init__(self, inner: Model, durable: KitaruAgent, agent_name: str) -> None:
        self.inner = inner
        self.durable = durable
        self.agent_name = agent_name

    async def get_response(self, *args: Any, **kwargs: Any) -> ModelResponse:
        if not at_flow_scope():
            return await self.inner.get_response(*args, **kwargs)
        from kitaru._engine.checkpoint import Checkpoint

        inner, agent_name = self.inner, self.agent_name
        named = dict(zip(_GET_RESPONSE_PARAMS, args, strict=False)) | kwargs
        fingerprint = stable_digest(
            [
                named.get("system_instructions"),
                json.loads(json.dumps(named.get("input"), default=str)),
                [getattr(t, "name", "") for t in named.get("tools") or []],
            ]
        )

        async def model_call(request: str) -> Any:
            started = time.perf_counter()
            response = await inner.get_response(*args, **kwargs)
            _log_usage(response, agent_name, inner, (time.perf_counter() - started) * 1000)
            return _response_adapter().dump_python(response, mode="json")

        model_call.__qualname__ = "openai_agents.model_call"
        step = Checkpoint(
            model_call,
            name=safe_name(self.durable.name, "model"),
            retries=0,
            retry_delay=0,
            backoff=1,
            retry_on=(Exception,),
        )
        dumped = await step(fingerprint)
        response: ModelResponse = _response_adapter().validate_python(dumped)
        return response

    def stream_response(self, *args: Any, **kwargs: Any) -> Any:
        if at_flow_scope():
            raise KitaruUsageError(
                f"{self.durable.name}: streamed runs are not durable; use run()/run_sync(), or stream "
                "inside a @checkpoint."
            )
        return self.inner.stream_response(*args, **kwargs)

    async def close(self) -> None:
        await self.inner.close()


def _log_usage(response: ModelResponse, agent_name: str, model: Model, latency_ms: float) -> None:
    from kitaru._engine.api import log

    usage = response.usage
    meta: dict[str, Any] = {"agent": agent_name}
    name = getattr(model, "model", None)  # the SDK's OpenAI models keep their name here
    if isinstance(name, str):
        meta["model"] = name
    meta.update(tokens_in=usage.input_tokens, tokens_out=usage.output_tokens, latency_ms=round(latency_ms, 1))
    log(**meta)
