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

Kitaru 0.18's surface is here too: :class:`KitaruRunner` takes an :class:`OpenAIRunRequest` and
returns an :class:`OpenAIRunResult` (``checkpoint_strategy="calls"`` is ``per_call`` above,
``"runner_call"`` the same one checkpoint per run); its RunConfig comes from
``run_config_factory``; an ``interrupted`` result is resumed with :func:`wait_for_approval` (a
``kitaru.wait``) or :func:`build_resume_request`. Checkpoint configs (retries, cache, type) apply
to both classes.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

from kitaru._engine.flow import flow
from kitaru.errors import KitaruUsageError

from ._common import (
    AgentRef,
    CheckpointConfig,
    adapter_step,
    agent_run_result,
    at_flow_scope,
    checkpoint_config,
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
from pydantic import BaseModel, ConfigDict, Field, model_validator  # noqa: E402

if TYPE_CHECKING:
    from kitaru._engine.flow import Flow, FlowHandle

__all__ = [
    "CheckpointConfig",
    "CheckpointStrategy",
    "KitaruAgent",
    "KitaruRunner",
    "OpenAIApprovalDecision",
    "OpenAIInterruptionSummary",
    "OpenAIRunRequest",
    "OpenAIRunResult",
    "OpenAIRunStateEnvelope",
    "RunOutcome",
    "Strategy",
    "build_resume_request",
    "wait_for_approval",
]

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
    collection of names, or a function of name and arguments); ``approval_timeout`` is each
    approval wait's deadline in seconds (its ``expires_in``). ``model_checkpoint_config``,
    ``tool_checkpoint_config`` (with ``tool_checkpoint_config_by_name`` per tool, ``False`` for no
    checkpoint) and ``run_checkpoint_config`` (``runner_call``) set retries, cache and type of the
    checkpoints
    (:class:`~kitaru.adapters._common.CheckpointConfig`).
    """

    def __init__(
        self,
        agent: Agent[Any],
        *,
        name: str | None = None,
        strategy: Strategy = "per_call",
        approve: Approve = (),
        approval_timeout: float | None = None,
        model_checkpoint_config: CheckpointConfig | None = None,
        tool_checkpoint_config: CheckpointConfig | None = None,
        tool_checkpoint_config_by_name: Mapping[str, CheckpointConfig | Literal[False] | None] | None = None,
        run_checkpoint_config: CheckpointConfig | None = None,
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
        self.model_config = checkpoint_config(model_checkpoint_config, "model_checkpoint_config")
        self.tool_config = checkpoint_config(tool_checkpoint_config, "tool_checkpoint_config")
        self.run_config = checkpoint_config(run_checkpoint_config, "run_checkpoint_config")
        self.tool_config_by_name: dict[str, CheckpointConfig | None] = {
            tool: None
            if cfg is False
            else checkpoint_config(cfg, f"tool_checkpoint_config_by_name[{tool!r}]")
            for tool, cfg in (tool_checkpoint_config_by_name or {}).items()
        }
        self._ref: AgentRef = (
            register_agent("openai_agents", self.name, self) if self._findable else {"name": self.name}
        )
        self._flow: Flow[Any, Any] | None = None

    #: Whether another process can find this agent by name (to resume a flow its run opened).
    _findable = True

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
            config = durable.tool_config_by_name.get(tool.name, durable.tool_config)
            if not at_flow_scope() or config is None:
                return await invoke(ctx, args)

            async def tool_call(tool_name: str, arguments: str) -> Any:
                return await invoke(ctx, args)

            tool_call.__qualname__ = "openai_agents.tool_call"
            step = adapter_step(
                tool_call,
                name=safe_name(durable.name, "tool", tool.name),
                config=config,
                default_type="tool_call",
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
        step = adapter_step(
            runner_call, name=safe_name(self.name, "run"), config=self.run_config, default_type="llm_call"
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
                expires_in=self.approval_timeout,
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
        step = adapter_step(
            model_call,
            name=safe_name(self.durable.name, "model"),
            config=self.durable.model_config,
            default_type="llm_call",
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


# -- Kitaru 0.18's runner surface: requests in, serializable results out ----------------------------

_DENIAL = "Denied via Kitaru wait."


def _sdk_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("openai-agents")
    except PackageNotFoundError:
        return "unknown"


class OpenAIRunStateEnvelope(BaseModel):
    """A paused run's SDK ``RunState`` as JSON, with the SDK version that wrote it."""

    model_config = ConfigDict(extra="forbid")

    schema_version: Literal[1] = 1
    agents_sdk_version: str
    state_json: dict[str, Any]
    strict_sdk_version: bool = True
    context_codec: str | None = None
    created_at_iso: str = Field(default_factory=lambda: datetime.now(UTC).isoformat())
    warnings: list[str] = Field(default_factory=list)


class OpenAIInterruptionSummary(BaseModel):
    """One tool call a paused run waits on (``index`` addresses it in a decision)."""

    model_config = ConfigDict(extra="forbid")

    index: int
    kind: str
    tool_name: str | None = None
    call_id: str | None = None
    message: str | None = None
    arguments: dict[str, Any] | None = None
    arguments_preview: str | None = None


class OpenAIApprovalDecision(BaseModel):
    """Approve or reject one interruption of a paused run."""

    model_config = ConfigDict(extra="forbid")

    interruption_index: int = 0
    approve: bool
    rejection_message: str | None = None

    @model_validator(mode="after")
    def _consistent(self) -> OpenAIApprovalDecision:
        if self.approve and self.rejection_message is not None:
            raise ValueError("an approval carries no rejection_message")
        if not self.approve and self.rejection_message == "":
            raise ValueError("a rejection_message, when given, must not be empty")
        return self


OpenAIInput = str | list[dict[str, Any]]


class OpenAIRunRequest(BaseModel):
    """What :class:`KitaruRunner` runs: a fresh input (:meth:`start`) or a paused run's state
    with a decision (:meth:`resume`). ``metadata`` is recorded with the run."""

    model_config = ConfigDict(extra="forbid")

    schema_version: Literal[1] = 1
    kind: Literal["start", "resume"]
    input: OpenAIInput | None = None
    pending_state: OpenAIRunStateEnvelope | None = None
    decision: OpenAIApprovalDecision | None = None
    max_turns: int | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)

    @classmethod
    def start(
        cls, input: OpenAIInput, *, max_turns: int | None = None, metadata: dict[str, Any] | None = None
    ) -> OpenAIRunRequest:
        return cls(kind="start", input=input, max_turns=max_turns, metadata=metadata or {})

    @classmethod
    def resume(
        cls,
        pending_state: OpenAIRunStateEnvelope,
        decision: OpenAIApprovalDecision,
        *,
        max_turns: int | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> OpenAIRunRequest:
        return cls(
            kind="resume",
            pending_state=pending_state,
            decision=decision,
            max_turns=max_turns,
            metadata=metadata or {},
        )

    @model_validator(mode="after")
    def _by_kind(self) -> OpenAIRunRequest:
        if self.kind == "start" and (self.input is None or self.pending_state or self.decision):
            raise ValueError("kind='start' takes input, and no pending_state or decision")
        if self.kind == "resume" and (self.pending_state is None or self.decision is None or self.input):
            raise ValueError("kind='resume' takes pending_state and decision, and no input")
        return self


class OpenAIRunResult(BaseModel):
    """A run's outcome, storable: ``completed`` with ``final_output``, or ``interrupted`` with
    the ``pending_state`` and ``interruptions`` a resume request needs."""

    model_config = ConfigDict(extra="forbid")

    schema_version: Literal[1] = 1
    status: Literal["completed", "interrupted"]
    final_output: Any | None = None
    pending_state: OpenAIRunStateEnvelope | None = None
    interruptions: list[OpenAIInterruptionSummary] = Field(default_factory=list)
    last_response_id: str | None = None
    usage: dict[str, Any] | None = None
    estimated_cost_usd: float | None = None
    event_log_artifact_name: str | None = None
    run_summary_artifact_name: str | None = None
    state_artifact_name: str | None = None
    output_artifact_name: str | None = None
    warnings: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _by_status(self) -> OpenAIRunResult:
        if self.status == "completed" and self.pending_state is not None:
            raise ValueError("a completed result has no pending_state")
        if self.status == "interrupted" and (self.pending_state is None or not self.interruptions):
            raise ValueError("an interrupted result needs pending_state and interruptions")
        return self


CheckpointStrategy = Literal["calls", "runner_call"]


class _RunnerAgent(KitaruAgent):
    # A runner never opens a flow of its own, so it takes no name in the registry (where it
    # would shadow a KitaruAgent of the same name that does).
    _findable = False


class KitaruRunner:
    """Kitaru 0.18's way to run an OpenAI Agents SDK agent durably: ``run(OpenAIRunRequest)``
    returns an :class:`OpenAIRunResult`.

    ``checkpoint_strategy="calls"`` (default): at flow scope each model call and each function
    tool call is a checkpoint (the same machinery as :class:`KitaruAgent`'s ``per_call``), so a
    resumed run repeats none that completed; it may not run inside a ``@checkpoint``.
    ``"runner_call"``: the whole run is one checkpoint (``<name>.run``). A run that hits a tool
    needing approval comes back ``interrupted``: :func:`wait_for_approval` asks a human (a
    ``kitaru.wait``) and returns the request that resumes it. ``run_config_factory`` builds the
    SDK ``RunConfig`` of each run (its model, model provider, settings). The checkpoint configs
    are :class:`KitaruAgent`'s. ``strict_sdk_version`` refuses to resume a state written by
    another openai-agents version.
    """

    def __init__(
        self,
        agent: Agent[Any],
        *,
        name: str | None = None,
        checkpoint_strategy: CheckpointStrategy = "calls",
        run_config_factory: Callable[[], RunConfig | None] | None = None,
        run_checkpoint_config: CheckpointConfig | None = None,
        model_checkpoint_config: CheckpointConfig | None = None,
        tool_checkpoint_config: CheckpointConfig | None = None,
        tool_checkpoint_config_by_name: Mapping[str, CheckpointConfig | Literal[False] | None] | None = None,
        strict_sdk_version: bool = True,
    ) -> None:
        if checkpoint_strategy not in ("calls", "runner_call"):
            raise KitaruUsageError(
                f"checkpoint_strategy must be 'calls' or 'runner_call', got {checkpoint_strategy!r}."
            )
        if run_config_factory is not None and not callable(run_config_factory):
            raise KitaruUsageError("run_config_factory must be a function returning a RunConfig (or None).")
        self.agent = agent
        self.checkpoint_strategy: CheckpointStrategy = checkpoint_strategy
        self.run_config_factory = run_config_factory
        self.strict_sdk_version = strict_sdk_version
        # The per-call machinery is KitaruAgent's; the runner only changes what goes in and out.
        self._durable = _RunnerAgent(
            agent,
            name=name,
            strategy="per_call" if checkpoint_strategy == "calls" else "runner_call",
            model_checkpoint_config=model_checkpoint_config,
            tool_checkpoint_config=tool_checkpoint_config,
            tool_checkpoint_config_by_name=tool_checkpoint_config_by_name,
            run_checkpoint_config=run_checkpoint_config,
        )
        self.name = self._durable.name

    def __repr__(self) -> str:
        return f"<KitaruRunner {self.name!r} ({self.checkpoint_strategy})>"

    async def run(self, request: OpenAIRunRequest, *, context: Any = None) -> OpenAIRunResult:
        """Run or resume the agent (see the class docs)."""
        if not isinstance(request, OpenAIRunRequest):
            raise KitaruUsageError(
                f"{self.name}: KitaruRunner.run takes an OpenAIRunRequest, got {type(request).__name__}; "
                "wrap the input: runner.run(OpenAIRunRequest.start(input))."
            )
        if self.checkpoint_strategy == "calls":
            if in_checkpoint():
                raise KitaruUsageError(
                    f"{self.name}: checkpoint_strategy='calls' opens a checkpoint per model and tool "
                    "call, and checkpoints do not nest: call the runner from the flow body, or use "
                    "checkpoint_strategy='runner_call'."
                )
            result = await self._run_sdk(request, context, durable=at_flow_scope())
        elif at_flow_scope():

            async def runner_call(req: dict[str, Any]) -> dict[str, Any]:
                done = await self._run_sdk(request, context, durable=False)
                return done.model_dump(mode="json")

            runner_call.__qualname__ = "openai_agents.runner_call"
            step = adapter_step(
                runner_call,
                name=safe_name(self.name, "run"),
                config=self._durable.run_config,
                default_type="llm_call",
            )
            result = OpenAIRunResult.model_validate(await step(request.model_dump(mode="json")))
        else:
            result = await self._run_sdk(request, context, durable=False)
        if at_flow_scope():
            result = self._record(request, result)
        return result

    def run_sync(self, request: OpenAIRunRequest, *, context: Any = None) -> OpenAIRunResult:
        """:meth:`run` for synchronous code."""
        from kitaru._engine.context import current_execution, running_loop

        if running_loop() is not None:
            raise KitaruUsageError(
                f"{self.name}.run_sync() cannot run on a running event loop: "
                f"use `await {self.name}.run(...)`."
            )
        ctx = current_execution()
        if ctx is not None and at_flow_scope():
            result: OpenAIRunResult = ctx.run_async(functools.partial(self.run, request, context=context))
            return result
        import anyio

        return anyio.run(functools.partial(self.run, request, context=context))

    def _run_config(self) -> RunConfig:
        made = self.run_config_factory() if self.run_config_factory is not None else None
        if made is not None and not isinstance(made, RunConfig):
            raise KitaruUsageError(f"{self.name}: run_config_factory returned {made!r}, not a RunConfig.")
        return made or RunConfig()

    async def _run_sdk(self, request: OpenAIRunRequest, context: Any, *, durable: bool) -> OpenAIRunResult:
        run_config = self._run_config()
        agent: Agent[Any] = self.agent
        if durable:
            execution = run_config.tool_execution or ToolExecutionConfig()
            # One function tool at a time: their checkpoint ids must follow the same order on replay.
            run_config = dataclasses.replace(
                run_config, tool_execution=dataclasses.replace(execution, max_function_tool_concurrency=1)
            )
            agent = self._durable._durable(self.agent, run_config, {})
            if run_config.model is not None:
                run_config = dataclasses.replace(run_config, model=None)  # resolved into each agent
        start: Any = request.input
        if request.kind == "resume":
            start = await self._resumed_state(request, agent)
        result = await Runner.run(
            agent, start, run_config=run_config, max_turns=request.max_turns or 10, context=context
        )
        return _run_result(result, self.strict_sdk_version)

    async def _resumed_state(self, request: OpenAIRunRequest, agent: Agent[Any]) -> Any:
        envelope, decision = request.pending_state, request.decision
        assert envelope is not None and decision is not None  # the request's validator saw to it
        if (
            self.strict_sdk_version
            and envelope.strict_sdk_version
            and envelope.agents_sdk_version != _sdk_version()
        ):
            raise KitaruUsageError(
                f"{self.name}: this paused run was saved by openai-agents {envelope.agents_sdk_version}, "
                f"but {_sdk_version()} is installed; install that version, or pass "
                "strict_sdk_version=False to KitaruRunner if the state format is known to match."
            )
        state = await RunState.from_json(agent, envelope.state_json)
        pending = state.get_interruptions()
        if not 0 <= decision.interruption_index < len(pending):
            raise KitaruUsageError(
                f"{self.name}: the paused run has {len(pending)} interruption(s); "
                f"interruption_index={decision.interruption_index} names none of them."
            )
        item = pending[decision.interruption_index]
        if decision.approve:
            state.approve(item)
        else:
            state.reject(item, rejection_message=decision.rejection_message)
        return state

    def _record(self, request: OpenAIRunRequest, result: OpenAIRunResult) -> OpenAIRunResult:
        """Artifacts of a run at flow scope: its output, or the state a resume needs."""
        from kitaru._engine.api import log, save

        if request.metadata:
            log(openai_run_request=request.metadata)
        if result.status == "completed":
            save(f"{self.name}.output", result.final_output, type="result")
            return result.model_copy(update={"output_artifact_name": f"{self.name}.output"})
        save(f"{self.name}.state", result.model_dump(mode="json")["pending_state"], type="state")
        return result.model_copy(update={"state_artifact_name": f"{self.name}.state"})


def _run_result(result: Any, strict_sdk_version: bool) -> OpenAIRunResult:
    usage = result.context_wrapper.usage
    used = {
        "requests": usage.requests,
        "input_tokens": usage.input_tokens,
        "output_tokens": usage.output_tokens,
        "total_tokens": usage.total_tokens,
    }
    if not result.interruptions:
        return OpenAIRunResult(
            status="completed",
            final_output=result.final_output,
            last_response_id=result.last_response_id,
            usage=used,
        )
    envelope = OpenAIRunStateEnvelope(
        agents_sdk_version=_sdk_version(),
        state_json=result.to_state().to_json(),
        strict_sdk_version=strict_sdk_version,
    )
    summaries = []
    for index, item in enumerate(result.interruptions):
        raw = item.raw_item
        text = raw.get("arguments") if isinstance(raw, dict) else getattr(raw, "arguments", None)
        summaries.append(
            OpenAIInterruptionSummary(
                index=index,
                kind=type(item).__name__,
                tool_name=item.tool_name,
                call_id=_call_id(raw) or None,
                arguments=_arguments(raw),
                arguments_preview=text[:500] if isinstance(text, str) else None,
            )
        )
    return OpenAIRunResult(
        status="interrupted",
        pending_state=envelope,
        interruptions=summaries,
        last_response_id=result.last_response_id,
        usage=used,
    )


def _interruption(result: OpenAIRunResult, index: int | None, what: str) -> OpenAIInterruptionSummary:
    if result.status != "interrupted" or result.pending_state is None:
        raise KitaruUsageError(f"{what} needs an interrupted OpenAIRunResult (this one is {result.status}).")
    if index is None:
        return result.interruptions[0]
    for item in result.interruptions:
        if item.index == index:
            return item
    known = ", ".join(str(i.index) for i in result.interruptions)
    raise KitaruUsageError(f"{what}: no interruption {index} (the result has {known}).")


def build_resume_request(
    result: OpenAIRunResult,
    *,
    approve: bool,
    interruption_index: int | None = None,
    rejection_message: str | None = None,
) -> OpenAIRunRequest:
    """The request that resumes an interrupted run with one decision."""
    item = _interruption(result, interruption_index, "build_resume_request()")
    assert result.pending_state is not None
    decision = OpenAIApprovalDecision(
        interruption_index=item.index, approve=approve, rejection_message=rejection_message
    )
    return OpenAIRunRequest.resume(result.pending_state, decision)


def wait_for_approval(
    result: OpenAIRunResult,
    *,
    name: str | None = None,
    interruption_index: int | None = None,
    denial_message: str = _DENIAL,
    timeout: float | None = None,
    expires_in: float | None = None,
) -> OpenAIRunRequest:
    """Ask a human (a ``kitaru.wait``, answered true or false) whether the interrupted tool call
    may run, and return the request that resumes the run with the answer. Flow scope only.
    ``timeout`` and ``expires_in`` are the wait's: how long to hold for an answer (as in 0.18),
    and its deadline."""
    from kitaru._engine.waits import wait

    if not at_flow_scope():
        raise KitaruUsageError(
            "wait_for_approval() must be called from a flow's body (waits do not run inside a "
            "checkpoint or outside a flow)."
        )
    item = _interruption(result, interruption_index, "wait_for_approval()")
    tool = item.tool_name or "tool"
    approved = bool(
        wait(
            name=name or "OpenAI tool approval",  # 0.18's name: repeated ones count up (`:2`...)
            question=f"Approve OpenAI tool call `{tool}`" + (f" ({item.call_id})?" if item.call_id else "?"),
            schema=bool,
            timeout=timeout,
            metadata={
                "adapter": "openai_agents",
                "source": "approval_bridge",
                "interruption_index": item.index,
                "tool_name": item.tool_name,
                "call_id": item.call_id,
            },
            expires_in=expires_in,
        )
    )
    return build_resume_request(
        result,
        approve=approved,
        interruption_index=item.index,
        rejection_message=None if approved else denial_message,
    )
