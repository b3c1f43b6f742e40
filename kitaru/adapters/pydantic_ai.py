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
every replay. Streaming runs (``run_stream``, ``iter``, event stream handlers) are not durable.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar

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
    reraise_control,
    safe_name,
    stable_digest,
)

import_extra("pydantic_ai", "pydantic-ai", "kitaru.adapters.pydantic_ai")

from pydantic_ai import Agent  # noqa: E402 - after the dependency check
from pydantic_ai.exceptions import ApprovalRequired, ModelRetry  # noqa: E402
from pydantic_ai.messages import ModelMessage, ModelMessagesTypeAdapter, ModelResponse  # noqa: E402
from pydantic_ai.models import Model, ModelRequestParameters  # noqa: E402
from pydantic_ai.models.wrapper import WrapperModel  # noqa: E402
from pydantic_ai.settings import ModelSettings  # noqa: E402
from pydantic_ai.tools import RunContext  # noqa: E402
from pydantic_ai.toolsets.abstract import ToolsetTool  # noqa: E402
from pydantic_ai.toolsets.wrapper import WrapperToolset  # noqa: E402

if TYPE_CHECKING:
    from kitaru._engine.flow import Flow, FlowHandle

__all__ = ["AgentResult", "KitaruAgent"]

DepsT = TypeVar("DepsT")
OutputT = TypeVar("OutputT")

#: What a denied tool call returns to the model.
DENIED = "The tool call was denied by a human reviewer."
_RETRY = "__kitaru_model_retry__"
_NEEDS_APPROVAL = "__kitaru_approval_required__"

Approve = bool | Collection[str] | Callable[[str, dict[str, Any]], bool]


@dataclass
class AgentResult(Generic[OutputT]):
    """The result of a run that kitaru opened a flow for: the output, the message history, and the
    execution that holds them."""

    output: OutputT
    messages_json: list[Any]
    exec_id: str

    def all_messages(self) -> list[ModelMessage]:
        return ModelMessagesTypeAdapter.validate_python(self.messages_json)


class KitaruAgent(Generic[DepsT, OutputT]):
    """A PydanticAI ``Agent`` whose runs are durable: see the module docs.

    ``name`` names the checkpoints, waits and artifacts (default: the agent's name, else
    ``agent``) and the flow opened for runs started outside one. ``approve`` adds tools that
    need a human's yes: True for all, a collection of tool names, or a function of the tool name
    and arguments. ``approval_timeout`` bounds each approval wait (seconds).
    """

    def __init__(
        self,
        agent: Agent[DepsT, OutputT],
        *,
        name: str | None = None,
        approve: Approve = (),
        approval_timeout: float | None = None,
    ) -> None:
        if not isinstance(agent, Agent):
            raise KitaruUsageError(f"KitaruAgent wraps a pydantic_ai.Agent, got {type(agent).__qualname__}.")
        self.agent = agent
        self.name = safe_name(name or agent.name or "agent")
        self.approve = approve
        self.approval_timeout = approval_timeout
        self._ref: AgentRef = register_agent("pydantic_ai", self.name, self)
        self._flow: Flow[Any, Any] | None = None
        self._live_results: dict[str, Any] = {}

    def __repr__(self) -> str:
        return f"<KitaruAgent {self.name!r} wrapping {self.agent!r}>"

    # -- running ------------------------------------------------------------------------------

    async def run(self, user_prompt: str | None = None, **kwargs: Any) -> Any:
        """Run the agent durably (see the module docs); takes ``Agent.run``'s arguments.

        Inside a flow this returns PydanticAI's ``AgentRunResult``; outside one it opens a flow and
        returns an :class:`AgentResult` (``.output``, ``.all_messages()``, ``.exec_id``).
        """
        if at_flow_scope():
            return await self._durable_run(user_prompt, kwargs)
        if in_checkpoint():
            return await self.agent.run(user_prompt, **kwargs)
        import anyio.to_thread

        # The flow drives on a worker thread and returns once it completes or suspends; its
        # result is read there too (the sync client's calls must not run on this loop).
        def run_and_read() -> Any:
            handle = self.run_flow(user_prompt, **kwargs)
            return agent_run_result(self.name, handle.exec_id, handle.status)

        return await anyio.to_thread.run_sync(run_and_read)

    def run_sync(self, user_prompt: str | None = None, **kwargs: Any) -> Any:
        """:meth:`run` for synchronous code."""
        from kitaru._engine.context import current_execution

        ctx = current_execution()
        if ctx is not None and at_flow_scope():
            from kitaru._engine.context import running_loop

            if running_loop() is not None:
                raise KitaruUsageError(
                    f"{self.name}.run_sync() was called in an async flow: use `await {self.name}.run(...)`."
                )
            return ctx.run_async(self._durable_run, user_prompt, kwargs)
        if in_checkpoint():
            return self.agent.run_sync(user_prompt, **kwargs)
        handle = self.run_flow(user_prompt, **kwargs)
        return agent_run_result(self.name, handle.exec_id, handle.status)

    def run_flow(self, user_prompt: str | None = None, **kwargs: Any) -> FlowHandle:
        """Start a run in a flow of its own and return the flow's handle (it does not block on
        approvals: a waiting run's handle says ``waiting``). ``handle.wait()`` gives an
        :class:`AgentResult`."""
        return self._get_flow().run(self._ref, user_prompt, *self._flow_args(kwargs))

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
        if kwargs.get("event_stream_handler") is not None:
            raise KitaruUsageError(
                f"{self.name}: event stream handlers are not durable (their events would be lost on "
                "resume); drop event_stream_handler or run the agent inside a @checkpoint."
            )
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
        from kitaru._engine.api import save

        save(
            f"{self.name}.messages",
            ModelMessagesTypeAdapter.dump_python(result.all_messages(), mode="json"),
            type="messages",
        )
        save(f"{self.name}.output", result.output, type="result")
        return result

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

    def _approval(
        self, tool_name: str, args: dict[str, Any], metadata: dict[str, Any] | None
    ) -> dict[str, Any]:
        shown = ", ".join(f"{k}={v!r}" for k, v in args.items())
        return {
            "name": safe_name(self.name, "approve", tool_name),
            "question": f"Allow {self.name} to call {tool_name}({shown})?",
            "schema": bool,
            "timeout": self.approval_timeout,
            "metadata": {"agent": self.name, "tool": tool_name, "args": args, **(metadata or {})},
        }


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
    if message_history:
        kwargs["message_history"] = ModelMessagesTypeAdapter.validate_python(message_history)
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
        from kitaru._engine.checkpoint import Checkpoint

        wrapped = self.wrapped
        fingerprint = stable_digest(
            [
                ModelMessagesTypeAdapter.dump_python(messages, mode="json"),
                dict(model_settings or {}),
                [t.name for t in model_request_parameters.function_tools],
            ]
        )

        async def model_request(request: str) -> list[Any]:
            started = time.perf_counter()
            response = await wrapped.request(messages, model_settings, model_request_parameters)
            _log_usage(response, (time.perf_counter() - started) * 1000)
            dumped: list[Any] = ModelMessagesTypeAdapter.dump_python([response], mode="json")
            return dumped

        model_request.__qualname__ = "pydantic_ai.model_request"
        step = Checkpoint(
            model_request,
            name=safe_name(self._durable.name, "model"),
            retries=0,
            retry_delay=0,
            backoff=1,
            retry_on=(Exception,),
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


@dataclass
class _KitaruToolset(WrapperToolset[Any]):
    durable: KitaruAgent[Any, Any]

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
        needs = bool((tool.tool_def.metadata or {}).get("kitaru_approval")) or durable.needs_approval(
            name, tool_args
        )
        if needs:
            if not await durable.aask(name, tool_args):
                return DENIED
            ctx = dataclasses.replace(ctx, tool_call_approved=True)
        result = await self._checkpointed(name, tool_args, ctx, tool)
        if isinstance(result, dict) and _NEEDS_APPROVAL in result:
            # The tool itself raised ApprovalRequired: ask, then call it again, approved.
            if not await durable.aask(name, tool_args, metadata=result[_NEEDS_APPROVAL]):
                return DENIED
            ctx = dataclasses.replace(ctx, tool_call_approved=True)
            result = await self._checkpointed(name, tool_args, ctx, tool)
        if isinstance(result, dict) and _RETRY in result:
            raise ModelRetry(result[_RETRY])
        return result

    async def _checkpointed(
        self, name: str, tool_args: dict[str, Any], ctx: RunContext[Any], tool: ToolsetTool[Any]
    ) -> Any:
        from kitaru._engine.checkpoint import Checkpoint

        wrapped = self.wrapped

        async def tool_call(tool_name: str, args: dict[str, Any]) -> Any:
            try:
                return await wrapped.call_tool(name, tool_args, ctx, tool)
            except ModelRetry as exc:
                # Recorded, so a resumed run sends the model the same retry without calling again.
                return {_RETRY: exc.message}
            except ApprovalRequired as exc:
                return {_NEEDS_APPROVAL: exc.metadata or {}}

        tool_call.__qualname__ = "pydantic_ai.tool_call"
        step = Checkpoint(
            tool_call,
            name=safe_name(self.durable.name, "tool", name),
            retries=0,
            retry_delay=0,
            backoff=1,
            retry_on=(Exception,),
        )
        return await step(name, tool_args)
