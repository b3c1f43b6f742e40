"""Durable PydanticAI agents: every model request and every tool call is its own checkpoint.

    from pydantic_ai import Agent
    from kitaru.adapters.pydantic_ai import KitaruAgent

    agent = Agent("openai:gpt-4o-mini", name="support")

    @agent.tool_plain(requires_approval=True)
    def refund(order: str) -> str: ...

    durable = KitaruAgent(agent)          # at module level, so a resumed run can find it

    @flow
    def support(question: str) -> str:
        return durable.run_sync(question).output

Run inside a flow, a run's model requests are checkpoints ``support.model``, ``support.model:2``...
and its tool calls ``support.tool.refund``...: a crashed run resumes without repeating a model or
tool call that completed, and a replay reuses them. Tools that need a human -- declared with
PydanticAI's ``requires_approval=True``, raising ``ApprovalRequired``, or named in ``approve=`` --
open a ``kitaru.wait`` (``support.approve.refund``, answered ``true`` or ``false``) before their
checkpoint, at flow scope, so the execution suspends without holding a process. MCP servers are
toolsets too: their tool calls are checkpoints the same way (listing their tools is not, so the
server must be reachable when a run resumes). The output and the message history are saved as
artifacts (``support.output``, ``support.messages``).

Called inside a ``@checkpoint``, a run is plain (checkpoints do not nest): the enclosing checkpoint
is the durable unit. Called outside any flow, ``run``/``run_sync`` open one (flow ``support``),
resumable from any process with ``kitaru executions resume``; ``run_flow`` returns its handle.

Tool calls run one at a time inside a durable run, so that their checkpoint ids are the same on
every replay. ``run_stream`` and ``iter`` are not durable (run them inside a ``@checkpoint``).

Options (the surface of Kitaru 0.18's adapter): ``granular_checkpoints=False`` makes each run one
checkpoint (``support.run``, configured by ``turn_checkpoint_config``) instead of one per call;
``model_checkpoint_config`` / ``tool_checkpoint_config`` / ``tool_checkpoint_config_by_name`` /
``mcp_checkpoint_config`` set retries, cache and type of the per-call checkpoints (``False`` for a
tool name runs that tool at flow scope, uncheckpointed, where it may call ``kitaru.wait``);
``capture=CapturePolicy(...)`` decides what is recorded besides what replay needs;
``persist_message_history=True`` threads each run's messages into the next run of the instance;
``event_stream_handler`` streams a run's events to a handler (that run is one checkpoint); tools
marked with :func:`hitl_tool` ask a human through a ``kitaru.wait`` at flow scope.
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar

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
    reraise_control,
    safe_name,
    stable_digest,
)

import_extra("pydantic_ai", "pydantic-ai", "kitaru.adapters.pydantic_ai")

from pydantic_ai import Agent, FunctionToolset, Tool  # noqa: E402 - after the dependency check
from pydantic_ai.exceptions import ApprovalRequired, ModelRetry  # noqa: E402
from pydantic_ai.messages import ModelMessage, ModelMessagesTypeAdapter, ModelResponse  # noqa: E402
from pydantic_ai.models import Model, ModelRequestParameters  # noqa: E402
from pydantic_ai.models.wrapper import WrapperModel  # noqa: E402
from pydantic_ai.settings import ModelSettings  # noqa: E402
from pydantic_ai.tools import RunContext  # noqa: E402
from pydantic_ai.toolsets.abstract import AbstractToolset, ToolsetTool  # noqa: E402
from pydantic_ai.toolsets.wrapper import WrapperToolset  # noqa: E402

if TYPE_CHECKING:
    from kitaru._engine.flow import Flow, FlowHandle

__all__ = [
    "AgentResult",
    "CaptureMode",
    "CapturePolicy",
    "CheckpointConfig",
    "KitaruAgent",
    "hitl_tool",
    "wait_for_input",
    "wrap",
]

DepsT = TypeVar("DepsT")
OutputT = TypeVar("OutputT")

#: What a denied tool call returns to the model.
DENIED = "The tool call was denied by a human reviewer."
_RETRY = "__kitaru_model_retry__"
_NEEDS_APPROVAL = "__kitaru_approval_required__"

Approve = bool | Collection[str] | Callable[[str, dict[str, Any]], bool]

CaptureMode = Literal["full", "metadata"]
_LEGACY_MODES: dict[str, CaptureMode | None] = {"metadata_only": "metadata", "off": None}


@dataclass(frozen=True)
class CapturePolicy:
    """What a durable run records besides what replay needs (a checkpoint's output -- the model's
    response, the tool's result -- is always stored: a resumed run reads it back).

    - ``emit_child_events``: per-call metadata on each model and tool checkpoint (model, tokens,
      latency; tool timing and, per ``tool_capture``, arguments and result).
    - ``save_prompts``: the run's conversation as the ``<name>.messages`` artifact.
    - ``save_responses``: the run's output as the ``<name>.output`` artifact.
    - ``save_stream_transcripts``: the events an ``event_stream_handler`` saw, as ``<name>.stream``.
    - ``tool_capture`` (``"full"``: arguments and result; ``"metadata"``: timing only; ``None``:
      nothing) and ``tool_capture_overrides`` per tool name; approval waits show a tool's
      arguments only under ``"full"``.
    - ``correlate_otel_spans``: put the execution and call ids on the current OpenTelemetry span
      of each model and tool call (PydanticAI's instrumentation spans, when enabled).
    """

    emit_child_events: bool = True
    save_prompts: bool = True
    save_responses: bool = True
    save_stream_transcripts: bool = True
    tool_capture: CaptureMode | None = "full"
    tool_capture_overrides: Mapping[str, CaptureMode | None] = field(default_factory=dict)
    correlate_otel_spans: bool = True

    def __post_init__(self) -> None:
        modes = {"tool_capture": self.tool_capture, **self.tool_capture_overrides}
        for where, mode in modes.items():
            if mode not in ("full", "metadata", None) and mode not in _LEGACY_MODES:
                raise KitaruUsageError(
                    f"CapturePolicy: {where} must be 'full', 'metadata' or None, got {mode!r}."
                )
        # 0.18's older spellings still mean what they meant.
        object.__setattr__(self, "tool_capture", _LEGACY_MODES.get(str(self.tool_capture), self.tool_capture))
        object.__setattr__(
            self,
            "tool_capture_overrides",
            {k: _LEGACY_MODES.get(str(v), v) for k, v in self.tool_capture_overrides.items()},
        )

    def capture_mode_for_tool(self, name: str) -> CaptureMode | None:
        if not self.emit_child_events:
            return None
        return self.tool_capture_overrides.get(name, self.tool_capture)


# -- human-in-the-loop tools ------------------------------------------------------------------------

_HITL = "__kitaru_hitl__"


@dataclass(frozen=True)
class HitlConfig:
    question: str | None
    name: str | None
    schema: Any
    question_arg: str | None


def hitl_tool(
    *,
    question: str | None = None,
    name: str | None = None,
    schema: Any = bool,
    question_arg: str | None = "question",
) -> Callable[[Any], Any]:
    """Mark a tool (a function, before or after ``@agent.tool``, or a ``Tool``) as asking a human.

    In a durable run, calling it opens a ``kitaru.wait`` at flow scope (named ``name``, default
    ``<agent>.hitl.<tool>``) and the execution suspends until someone answers. The question is the
    tool's ``question_arg`` argument when the model passed one, else ``question``. With
    ``schema=bool`` the answer is a yes/no gate: yes runs the tool (its result, or True if it
    returns nothing, goes to the model), no returns a denial without running it. With any other
    schema the tool's body is not run: the validated answer is the tool's result.
    """

    def mark(target: Any) -> Any:
        config = HitlConfig(question, name, schema, question_arg)
        fn = target.function if isinstance(target, Tool) else target
        setattr(fn, _HITL, config)
        return target

    return mark


def _hitl_of(fn: Any) -> HitlConfig | None:
    found = getattr(fn, _HITL, None)
    return found if isinstance(found, HitlConfig) else None


def _hitl_tools(toolsets: Any) -> dict[str, HitlConfig]:
    """The hitl-marked tools among ``toolsets``, by tool name."""
    found: dict[str, HitlConfig] = {}

    def visit(toolset: AbstractToolset[Any]) -> None:
        if isinstance(toolset, FunctionToolset):
            for tool_name, tool in toolset.tools.items():
                config = _hitl_of(tool.function)
                if config is not None:
                    found[tool_name] = config

    for toolset in toolsets:
        toolset.apply(visit)
    return found


def wait_for_input(
    schema: Any = str,
    question: str | None = None,
    *,
    name: str | None = None,
    timeout: float | None = None,
    expires_in: float | None = None,
) -> Any:
    """Ask a human from a tool's body: ``kitaru.wait`` marked as coming from a PydanticAI tool
    (``timeout``: how long to hold for an answer; ``expires_in``: the wait's deadline).

    Waits live at flow scope, so the tool must not be a checkpoint: give it
    ``tool_checkpoint_config_by_name={"<tool>": False}``.
    """
    from kitaru._engine.waits import wait

    return wait(
        name=name,
        question=question,
        schema=schema,
        timeout=timeout,
        metadata={"adapter": "pydantic_ai", "source": "tool_body"},
        expires_in=expires_in,
    )


@dataclass
class AgentResult(Generic[OutputT]):
    """A run's result in a form that can be stored: what a run that opened its own flow returns,
    and what a run that is one checkpoint (``granular_checkpoints=False`` or an event stream
    handler) returns inside a flow. ``new_from`` is where this run's messages start."""

    output: OutputT
    messages_json: list[Any]
    exec_id: str
    new_from: int = 0

    def all_messages(self) -> list[ModelMessage]:
        return ModelMessagesTypeAdapter.validate_python(self.messages_json)

    def new_messages(self) -> list[ModelMessage]:
        return self.all_messages()[self.new_from :]


class KitaruAgent(Generic[DepsT, OutputT]):
    """A PydanticAI ``Agent`` whose runs are durable: see the module docs.

    ``name`` names the checkpoints, waits and artifacts (default: the agent's name, else
    ``agent``) and the flow opened for runs started outside one. ``approve`` adds tools that
    need a human's yes: True for all, a collection of tool names, or a function of the tool name
    and arguments. ``approval_timeout`` is each approval wait's deadline (seconds, its ``expires_in``).

    ``granular_checkpoints`` (default True): one checkpoint per model request and per tool call;
    False: one checkpoint per run (``<name>.run``), whose model and tool calls run inside it.
    ``model_checkpoint_config``, ``tool_checkpoint_config``, ``mcp_checkpoint_config`` (MCP tool
    calls) and ``turn_checkpoint_config`` configure those checkpoints (:class:`CheckpointConfig`);
    ``tool_checkpoint_config_by_name`` overrides per tool, ``False`` meaning no checkpoint (the
    tool runs at flow scope on every replay, and may call :func:`wait_for_input`). ``capture``
    is a :class:`CapturePolicy`. ``persist_message_history`` makes the instance one
    conversation: each run continues from the previous run's messages unless given
    ``message_history``. ``event_stream_handler`` receives every run's events (such a run is one
    checkpoint, never served from the cache: replay skips the handler, whose effects are progress
    only).
    """

    def __init__(
        self,
        agent: Agent[DepsT, OutputT],
        *,
        name: str | None = None,
        approve: Approve = (),
        approval_timeout: float | None = None,
        granular_checkpoints: bool = True,
        model_checkpoint_config: CheckpointConfig | None = None,
        tool_checkpoint_config: CheckpointConfig | None = None,
        tool_checkpoint_config_by_name: Mapping[str, CheckpointConfig | Literal[False] | None] | None = None,
        mcp_checkpoint_config: CheckpointConfig | None = None,
        turn_checkpoint_config: CheckpointConfig | None = None,
        persist_message_history: bool = False,
        capture: CapturePolicy | None = None,
        event_stream_handler: Callable[..., Any] | None = None,
    ) -> None:
        if not isinstance(agent, Agent):
            raise KitaruUsageError(f"KitaruAgent wraps a pydantic_ai.Agent, got {type(agent).__qualname__}.")
        self.agent = agent
        self.name = safe_name(name or agent.name or "agent")
        self.approve = approve
        self.approval_timeout = approval_timeout
        self.granular = bool(granular_checkpoints)
        per_call = {
            "model_checkpoint_config": model_checkpoint_config,
            "tool_checkpoint_config": tool_checkpoint_config,
            "tool_checkpoint_config_by_name": tool_checkpoint_config_by_name,
            "mcp_checkpoint_config": mcp_checkpoint_config,
        }
        if not self.granular and any(v for v in per_call.values()):
            given = ", ".join(k for k, v in per_call.items() if v)
            raise KitaruUsageError(
                f"{self.name}: {given} configure per-call checkpoints, which granular_checkpoints="
                "False does not open (the run is one checkpoint); use turn_checkpoint_config."
            )
        self.model_config = checkpoint_config(model_checkpoint_config, "model_checkpoint_config")
        self.tool_config = checkpoint_config(tool_checkpoint_config, "tool_checkpoint_config")
        self.mcp_config = checkpoint_config(mcp_checkpoint_config, "mcp_checkpoint_config")
        self.turn_config = checkpoint_config(turn_checkpoint_config, "turn_checkpoint_config")
        self.tool_config_by_name: dict[str, CheckpointConfig | None] = {
            tool: None
            if cfg is False
            else checkpoint_config(cfg, f"tool_checkpoint_config_by_name[{tool!r}]")
            for tool, cfg in (tool_checkpoint_config_by_name or {}).items()
        }
        if capture is not None and not isinstance(capture, CapturePolicy):
            raise KitaruUsageError(f"capture must be a CapturePolicy, got {capture!r}.")
        self.capture = capture or CapturePolicy()
        self.persist_message_history = bool(persist_message_history)
        self.event_stream_handler = event_stream_handler
        self._history: list[ModelMessage] = []
        if not self.granular:
            self._check_turn_mode("granular_checkpoints=False")
        self._ref: AgentRef = register_agent("pydantic_ai", self.name, self)
        self._flow: Flow[Any, Any] | None = None
        self._live_results: dict[str, Any] = {}

    def __repr__(self) -> str:
        return f"<KitaruAgent {self.name!r} wrapping {self.agent!r}>"

    def _check_turn_mode(self, why: str) -> None:
        """A run that is one checkpoint cannot ask a human (waits live at flow scope)."""
        asking = sorted(_hitl_tools(self.agent.toolsets))
        for toolset in self.agent.toolsets:
            if isinstance(toolset, FunctionToolset):
                asking += [n for n, t in toolset.tools.items() if t.requires_approval]
        if asking or self.approve:
            shown = ", ".join(asking) or "approve="
            raise KitaruUsageError(
                f"{self.name}: with {why} a run is one checkpoint, where no human can be asked "
                f"({shown} would). Keep granular checkpoints (the default) for agents with "
                "approval or hitl tools."
            )

    def tool_step_config(self, tool_name: str, mcp: bool) -> CheckpointConfig | None:
        """The checkpoint config of one tool's calls; None: the tool is not a checkpoint."""
        if tool_name in self.tool_config_by_name:
            return self.tool_config_by_name[tool_name]
        return self.mcp_config if mcp else self.tool_config

    # -- running ------------------------------------------------------------------------------

    def _with_history(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        if self.persist_message_history and kwargs.get("message_history") is None and self._history:
            return {**kwargs, "message_history": list(self._history)}
        return kwargs

    def _remember(self, result: Any) -> Any:
        if self.persist_message_history and hasattr(result, "all_messages"):
            self._history = list(result.all_messages())
        return result

    async def run(self, user_prompt: str | None = None, **kwargs: Any) -> Any:
        """Run the agent durably (see the module docs); takes ``Agent.run``'s arguments.

        Inside a flow this returns PydanticAI's ``AgentRunResult`` (an :class:`AgentResult` when
        the run is one checkpoint); outside one it opens a flow and returns an
        :class:`AgentResult` (``.output``, ``.all_messages()``, ``.exec_id``).
        """
        kwargs = self._with_history(kwargs)
        if at_flow_scope():
            return self._remember(await self._durable_run(user_prompt, kwargs))
        if in_checkpoint():
            self._check_plain()
            return self._remember(await self.agent.run(user_prompt, **self._plain_kwargs(kwargs)))
        import anyio.to_thread

        # The flow drives on a worker thread and returns once it completes or suspends; its
        # result is read there too (the sync client's calls must not run on this loop).
        def run_and_read() -> Any:
            handle = self.run_flow(user_prompt, **kwargs)
            return agent_run_result(self.name, handle.exec_id, handle.status)

        return self._remember(await anyio.to_thread.run_sync(run_and_read))

    def run_sync(self, user_prompt: str | None = None, **kwargs: Any) -> Any:
        """:meth:`run` for synchronous code."""
        from kitaru._engine.context import current_execution

        kwargs = self._with_history(kwargs)
        ctx = current_execution()
        if ctx is not None and at_flow_scope():
            from kitaru._engine.context import running_loop

            if running_loop() is not None:
                raise KitaruUsageError(
                    f"{self.name}.run_sync() was called in an async flow: use `await {self.name}.run(...)`."
                )
            return self._remember(ctx.run_async(self._durable_run, user_prompt, kwargs))
        if in_checkpoint():
            self._check_plain()
            return self._remember(self.agent.run_sync(user_prompt, **self._plain_kwargs(kwargs)))
        handle = self.run_flow(user_prompt, **kwargs)
        return self._remember(agent_run_result(self.name, handle.exec_id, handle.status))

    def _plain_kwargs(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        if self.event_stream_handler is not None and kwargs.get("event_stream_handler") is None:
            return {**kwargs, "event_stream_handler": self.event_stream_handler}
        return kwargs

    def _check_plain(self) -> None:
        # Inside the caller's checkpoint the agent runs as is: a hitl tool would run unasked.
        asking = sorted(_hitl_tools(self.agent.toolsets))
        if asking:
            raise KitaruUsageError(
                f"{self.name}: run inside a @checkpoint, where no human can be asked, but "
                f"{', '.join(asking)} is a hitl_tool. Call the agent from the flow body instead."
            )

    def run_flow(self, user_prompt: str | None = None, **kwargs: Any) -> FlowHandle:
        """Start a run in a flow of its own and return the flow's handle (it does not block on
        approvals: a waiting run's handle says ``waiting``). ``handle.wait()`` gives an
        :class:`AgentResult`."""
        return self._get_flow().run(self._ref, user_prompt, *self._flow_args(self._with_history(kwargs)))

    def _flow_args(self, kwargs: dict[str, Any]) -> tuple[Any, Any]:
        extra = set(kwargs) - {"deps", "message_history"}
        if extra:
            raise KitaruUsageError(
                f"{self.name}: outside a flow, a durable run takes only the prompt, deps and "
                f"message_history (not {', '.join(sorted(extra))}); call it from your own @flow "
                "to pass other arguments."
            )
        history = kwargs.get("message_history")
        history_json = ModelMessagesTypeAdapter.dump_python(list(history), mode="json") if history else None
        return kwargs.get("deps"), history_json

    def _get_flow(self) -> Flow[Any, Any]:
        if self._flow is None:
            from kitaru._engine.flow import Flow

            # Same function as the module-level flow (what another process imports to resume),
            # named after the agent so `kitaru executions list --flow NAME` finds its runs.
            self._flow = Flow(_agent_flow.fn, name=self.name)
        return self._flow

    async def _durable_run(self, user_prompt: str | None, kwargs: dict[str, Any]) -> Any:
        kwargs = dict(kwargs)
        handler = kwargs.pop("event_stream_handler", None) or self.event_stream_handler
        if handler is not None:
            # A stream cannot be split into per-call checkpoints: the run is one, never cached
            # (a cached result would skip the handler's progress).
            self._check_turn_mode("an event_stream_handler")
            return await self._turn_run(user_prompt, kwargs, handler)
        if not self.granular:
            return await self._turn_run(user_prompt, kwargs, None)
        model = kwargs.pop("model", None) or self.agent.model
        if model is None:
            raise KitaruUsageError(f"{self.name}: the agent has no model; pass model= or give the Agent one.")
        extra_toolsets = kwargs.pop("toolsets", None) or ()
        toolsets = [_KitaruToolset(t, self) for t in (*self.agent.toolsets, *extra_toolsets)]
        try:
            with (
                self.agent.override(model=_KitaruModel(model, self), toolsets=toolsets, tools=[]),
                Agent.parallel_tool_call_execution_mode("sequential"),
            ):
                result = await self.agent.run(user_prompt, **kwargs)
        except BaseExceptionGroup as group:
            reraise_control(group)
        messages = ModelMessagesTypeAdapter.dump_python(result.all_messages(), mode="json")
        self._save_run(messages, result.output)
        return result

    def _save_run(self, messages_json: list[Any], output: Any) -> None:
        from kitaru._engine.api import save

        if self.capture.save_prompts:
            save(f"{self.name}.messages", messages_json, type="messages")
        if self.capture.save_responses:
            save(f"{self.name}.output", output, type="result")

    async def _turn_run(
        self, user_prompt: str | None, kwargs: dict[str, Any], handler: Callable[..., Any] | None
    ) -> AgentResult[Any]:
        """The whole run as one checkpoint (``<name>.run``)."""
        from kitaru._engine.api import current_execution_id

        agent, capture, name = self.agent, self.capture, self.name
        history = kwargs.get("message_history") or []
        fingerprint = stable_digest(
            [
                user_prompt,
                ModelMessagesTypeAdapter.dump_python(list(history), mode="json"),
                sorted(k for k in kwargs if k != "message_history"),
            ]
        )

        async def agent_run(request: str) -> dict[str, Any]:
            run_kwargs = dict(kwargs)
            events: list[Any] = []
            if handler is not None:
                run_kwargs["event_stream_handler"] = _teeing(handler, events)
            result = await agent.run(user_prompt, **run_kwargs)
            if handler is not None and capture.save_stream_transcripts:
                from pydantic_core import to_jsonable_python

                from kitaru._engine.api import save

                save(f"{name}.stream", to_jsonable_python(events, fallback=repr), type="stream")
            return {
                "output": result.output,
                "messages": ModelMessagesTypeAdapter.dump_python(result.all_messages(), mode="json"),
                "new_from": len(history),
            }

        agent_run.__qualname__ = "pydantic_ai.agent_run"
        config: CheckpointConfig = {**self.turn_config}
        if handler is not None:
            config["cache"] = False
        step = adapter_step(agent_run, name=safe_name(name, "run"), config=config, default_type="llm_call")
        try:
            out = await step(fingerprint)
        except BaseExceptionGroup as group:
            reraise_control(group)
        self._save_run(out["messages"], out["output"])
        return AgentResult(out["output"], out["messages"], current_execution_id(), out["new_from"])

    # -- approvals ----------------------------------------------------------------------------

    def needs_approval(self, tool_name: str, args: dict[str, Any]) -> bool:
        if isinstance(self.approve, bool):
            return self.approve
        if callable(self.approve):
            return bool(self.approve(tool_name, args))
        return tool_name in self.approve

    def ask(self, tool_name: str, args: dict[str, Any], metadata: dict[str, Any] | None = None) -> bool:
        """Open (or read back) the approval wait for one tool call, at flow scope."""
        from kitaru._engine.waits import wait

        return bool(wait(**self._approval(tool_name, args, metadata)))

    async def aask(
        self, tool_name: str, args: dict[str, Any], metadata: dict[str, Any] | None = None
    ) -> bool:
        """:meth:`ask` on the event loop the run is on: the wait's ``KITARU_WAIT_HOLD`` hold is
        awaited (a durable run's tools always run on a loop, where the sync form cannot hold)."""
        from kitaru._engine.waits import wait_async

        return bool(await wait_async(**self._approval(tool_name, args, metadata)))

    async def ahitl(self, tool_name: str, args: dict[str, Any], config: HitlConfig) -> Any:
        """The wait of one call of a :func:`hitl_tool`, at flow scope; returns the answer."""
        from kitaru._engine.waits import wait_async

        asked = args.get(config.question_arg) if config.question_arg else None
        shown = ", ".join(f"{k}={v!r}" for k, v in args.items())
        question = (
            asked
            if isinstance(asked, str) and asked
            else config.question or f"Allow {self.name} to call {tool_name}({shown})?"
        )
        return await wait_async(
            name=config.name or safe_name(self.name, "hitl", tool_name),
            question=question,
            schema=config.schema,
            expires_in=self.approval_timeout,
            metadata={**self._wait_metadata(tool_name, args), "source": "hitl_tool"},
        )

    def _wait_metadata(self, tool_name: str, args: dict[str, Any]) -> dict[str, Any]:
        meta: dict[str, Any] = {"adapter": "pydantic_ai", "agent": self.name, "tool": tool_name}
        if self.capture.capture_mode_for_tool(tool_name) == "full":
            meta["args"] = args
        return meta

    def _approval(
        self, tool_name: str, args: dict[str, Any], metadata: dict[str, Any] | None
    ) -> dict[str, Any]:
        shown = ", ".join(f"{k}={v!r}" for k, v in args.items())
        meta = self._wait_metadata(tool_name, args)
        if metadata and "args" in meta:
            meta.update(metadata)  # the tool's own ApprovalRequired payload, under full capture
        return {
            "name": safe_name(self.name, "approve", tool_name),
            "question": f"Allow {self.name} to call {tool_name}({shown})?",
            "schema": bool,
            "expires_in": self.approval_timeout,
            "metadata": meta,
        }


def _teeing(handler: Callable[..., Any], events: list[Any]) -> Callable[..., Any]:
    """``handler`` fed the same events, each also appended to ``events`` (the transcript)."""

    async def tee(ctx: RunContext[Any], stream: Any) -> None:
        async def copied() -> Any:
            async for event in stream:
                events.append(event)
                yield event

        await handler(ctx, copied())

    return tee


def wrap(
    agent: Agent[Any, Any],
    *,
    name: str | None = None,
    tool_capture_config: Mapping[str, Any] | None = None,
    tool_capture_config_by_name: Mapping[str, Mapping[str, Any] | None] | None = None,
    **options: Any,
) -> KitaruAgent[Any, Any]:
    """Deprecated since Kitaru 0.18: ``KitaruAgent(agent, ...)``. The old per-tool capture configs
    (``{"mode": "full" | "metadata_only" | "off", "enabled": bool}``) become a
    :class:`CapturePolicy`."""
    warnings.warn(
        "kitaru.adapters.pydantic_ai.wrap() is deprecated: use KitaruAgent(agent, ...) "
        "(capture=CapturePolicy(...) replaces tool_capture_config).",
        DeprecationWarning,
        stacklevel=2,
    )

    def mode(config: Mapping[str, Any] | None, what: str) -> CaptureMode | None:
        if config is None:
            return None
        unknown = set(config) - {"mode", "enabled"}
        if unknown:
            raise KitaruUsageError(
                f"wrap(): {what} keys {sorted(unknown)} are not supported; use "
                "KitaruAgent(capture=CapturePolicy(tool_capture=...))."
            )
        if config.get("enabled") is False:
            return None
        raw = config.get("mode", "full")
        return _LEGACY_MODES.get(raw, raw)

    if tool_capture_config is not None or tool_capture_config_by_name:
        if "capture" in options:
            raise KitaruUsageError("wrap(): pass capture= or tool_capture_config=, not both.")
        options["capture"] = CapturePolicy(
            tool_capture=mode(tool_capture_config, "tool_capture_config")
            if tool_capture_config is not None
            else "full",
            tool_capture_overrides={
                tool: mode(cfg, f"tool_capture_config_by_name[{tool!r}]")
                for tool, cfg in (tool_capture_config_by_name or {}).items()
            },
        )
    return KitaruAgent(agent, name=name, **options)


@flow(name="pydantic_ai_agent")
async def _agent_flow(
    agent: AgentRef, user_prompt: str | None, deps: Any = None, message_history: list[Any] | None = None
) -> AgentResult[Any]:
    """The flow a durable run opens when started outside one."""
    from kitaru._engine.api import current_execution_id

    durable: KitaruAgent[Any, Any] = find_agent("pydantic_ai", agent)
    kwargs: dict[str, Any] = {}
    if deps is not None:
        kwargs["deps"] = deps
    # Always explicit: the history this flow was started with (run_flow already threaded the
    # instance's conversation into it), so the run inside does not add it again.
    kwargs["message_history"] = ModelMessagesTypeAdapter.validate_python(message_history or [])
    result = await durable.run(user_prompt, **kwargs)
    return AgentResult(
        output=result.output,
        messages_json=ModelMessagesTypeAdapter.dump_python(result.all_messages(), mode="json"),
        exec_id=current_execution_id(),
    )


# -- the model: each request a checkpoint -----------------------------------------------------------


class _KitaruModel(WrapperModel):
    def __init__(self, wrapped: Model | str, durable: KitaruAgent[Any, Any]) -> None:
        super().__init__(wrapped)
        self._durable = durable

    async def request(
        self,
        messages: list[ModelMessage],
        model_settings: ModelSettings | None,
        model_request_parameters: ModelRequestParameters,
    ) -> ModelResponse:
        if not at_flow_scope():
            return await super().request(messages, model_settings, model_request_parameters)
        wrapped, capture = self.wrapped, self._durable.capture
        fingerprint = stable_digest(
            [
                ModelMessagesTypeAdapter.dump_python(messages, mode="json"),
                dict(model_settings or {}),
                [t.name for t in model_request_parameters.function_tools],
                # A cached response is only reused for the same model.
                wrapped.model_name if self._durable.model_config.get("cache") else None,
            ]
        )

        async def model_request(request: str) -> list[Any]:
            _correlate(capture)
            started = time.perf_counter()
            response = await wrapped.request(messages, model_settings, model_request_parameters)
            if capture.emit_child_events:
                _log_usage(response, (time.perf_counter() - started) * 1000)
            dumped: list[Any] = ModelMessagesTypeAdapter.dump_python([response], mode="json")
            return dumped

        model_request.__qualname__ = "pydantic_ai.model_request"
        step = adapter_step(
            model_request,
            name=safe_name(self._durable.name, "model"),
            config=self._durable.model_config,
            default_type="llm_call",
        )
        dumped = await step(fingerprint)
        [response] = ModelMessagesTypeAdapter.validate_python(dumped)
        assert isinstance(response, ModelResponse)
        return response

    def request_stream(self, *args: Any, **kwargs: Any) -> Any:
        if at_flow_scope():
            raise KitaruUsageError(
                f"{self._durable.name}: streamed model responses are not durable; use run()/run_sync(), "
                "or stream inside a @checkpoint."
            )
        return super().request_stream(*args, **kwargs)


def _correlate(capture: CapturePolicy) -> None:
    """Put the execution and call ids on the current OpenTelemetry span (PydanticAI's span of
    this request or tool call when its instrumentation is on), so traces and runs join up."""
    if not capture.correlate_otel_spans:
        return
    try:
        from opentelemetry import trace
    except ImportError:
        return
    from kitaru._engine.context import current_call, current_execution

    span = trace.get_current_span()
    ctx, call = current_execution(), current_call()
    if ctx is None or not span.is_recording():
        return
    span.set_attribute("kitaru.execution_id", ctx.exec_id)
    if call is not None:
        span.set_attribute("kitaru.call_id", call.call.call_id)


def _log_usage(response: ModelResponse, latency_ms: float) -> None:
    from kitaru._engine.api import log

    usage = response.usage
    meta: dict[str, Any] = {
        "model": response.model_name,
        "tokens_in": usage.input_tokens,
        "tokens_out": usage.output_tokens,
        "latency_ms": round(latency_ms, 1),
    }
    try:
        meta["cost_usd"] = float(response.cost().total_price)
    except Exception:
        pass  # unknown model or provider: no price
    log(**meta)


# -- the tools: each call a checkpoint, approvals at flow scope -------------------------------------


def _is_mcp(toolset: AbstractToolset[Any]) -> bool:
    found = False

    def visit(ts: AbstractToolset[Any]) -> None:
        nonlocal found
        found = found or "mcp" in type(ts).__module__.lower()

    toolset.apply(visit)
    return found


@dataclass
class _KitaruToolset(WrapperToolset[Any]):
    durable: KitaruAgent[Any, Any]

    def __post_init__(self) -> None:
        self._hitl = _hitl_tools([self.wrapped])
        self._mcp = _is_mcp(self.wrapped)

    async def get_tools(self, ctx: RunContext[Any]) -> dict[str, ToolsetTool[Any]]:
        tools = await super().get_tools(ctx)
        if not at_flow_scope():
            return tools
        # Tools declared with requires_approval=True would end the run with deferred requests;
        # in a durable run kitaru asks the human itself (a wait), so they run as ordinary tools.
        out: dict[str, ToolsetTool[Any]] = {}
        for name, tool in tools.items():
            if tool.tool_def.kind == "unapproved":
                tool = dataclasses.replace(
                    tool,
                    tool_def=dataclasses.replace(
                        tool.tool_def,
                        kind="function",
                        metadata={**(tool.tool_def.metadata or {}), "kitaru_approval": True},
                    ),
                )
            out[name] = tool
        return out

    async def call_tool(
        self, name: str, tool_args: dict[str, Any], ctx: RunContext[Any], tool: ToolsetTool[Any]
    ) -> Any:
        if not at_flow_scope():
            return await super().call_tool(name, tool_args, ctx, tool)
        durable = self.durable
        hitl = self._hitl.get(name)
        if hitl is not None:
            # The wait is the durable anchor of this call; no checkpoint opens before it.
            answer = await durable.ahitl(name, tool_args, hitl)
            if hitl.schema is not bool:
                return answer
            if not answer:
                return DENIED
            ctx = dataclasses.replace(ctx, tool_call_approved=True)
            result = await self._call(name, tool_args, ctx, tool)
            return True if result is None else result
        needs = bool((tool.tool_def.metadata or {}).get("kitaru_approval")) or durable.needs_approval(
            name, tool_args
        )
        if needs:
            if not await durable.aask(name, tool_args):
                return DENIED
            ctx = dataclasses.replace(ctx, tool_call_approved=True)
        result = await self._call(name, tool_args, ctx, tool)
        if isinstance(result, dict) and _NEEDS_APPROVAL in result:
            # The tool itself raised ApprovalRequired: ask, then call it again, approved.
            if not await durable.aask(name, tool_args, metadata=result[_NEEDS_APPROVAL]):
                return DENIED
            ctx = dataclasses.replace(ctx, tool_call_approved=True)
            result = await self._call(name, tool_args, ctx, tool)
        if isinstance(result, dict) and _RETRY in result:
            raise ModelRetry(result[_RETRY])
        return result

    async def _call(
        self, name: str, tool_args: dict[str, Any], ctx: RunContext[Any], tool: ToolsetTool[Any]
    ) -> Any:
        """One call of the tool: a checkpoint, or -- configured ``False`` -- a plain call at
        flow scope (it runs again on every replay, and may wait for a human)."""
        wrapped, durable = self.wrapped, self.durable
        mode = durable.capture.capture_mode_for_tool(name)

        async def tool_call(tool_name: str, args: dict[str, Any] | None) -> Any:
            _correlate(durable.capture)
            started = time.perf_counter()
            try:
                result = await wrapped.call_tool(name, tool_args, ctx, tool)
            except ModelRetry as exc:
                # Recorded, so a resumed run sends the model the same retry without calling again.
                result = {_RETRY: exc.message}
            except ApprovalRequired as exc:
                result = {_NEEDS_APPROVAL: exc.metadata or {}}
            if mode is not None and in_checkpoint():
                from kitaru._engine.api import log

                elapsed = (time.perf_counter() - started) * 1000
                meta: dict[str, Any] = {"tool": name, "duration_ms": round(elapsed, 1)}
                if mode == "full":
                    from pydantic_core import to_jsonable_python

                    meta["args"] = to_jsonable_python(tool_args, fallback=repr)
                    meta["result"] = to_jsonable_python(result, fallback=repr)
                log(**meta)
            return result

        config = durable.tool_step_config(name, self._mcp)
        if config is None:
            try:
                return await wrapped.call_tool(name, tool_args, ctx, tool)
            except ApprovalRequired as exc:
                return {_NEEDS_APPROVAL: exc.metadata or {}}
        tool_call.__qualname__ = "pydantic_ai.tool_call"
        step = adapter_step(
            tool_call,
            name=safe_name(durable.name, "tool", name),
            config=config,
            default_type="mcp_call" if self._mcp else "tool_call",
        )
        # Without capture the arguments are not part of the call's recorded inputs either: the
        # call is identified by a digest of them.
        return await step(name, tool_args if mode is not None else stable_digest(tool_args))
