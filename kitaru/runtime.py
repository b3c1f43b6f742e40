"""Where code is running: the current execution, flow and checkpoint.

Code written for Kitaru 0.18 imported these helpers from ``kitaru.runtime`` (its examples print
``kitaru executions input <id>`` commands with ``_get_current_execution_id()``), so they keep
their 0.18 names and answers: ``None`` or ``False`` outside a flow, never an error. In new code,
:func:`kitaru.current_execution_id` says the same and raises outside a flow.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "CheckpointScope",
    "FlowScope",
    "_get_current_checkpoint",
    "_get_current_checkpoint_id",
    "_get_current_checkpoint_name",
    "_get_current_execution_id",
    "_get_current_flow",
    "_get_current_flow_id",
    "_is_inside_checkpoint",
    "_is_inside_flow",
]


@dataclass(frozen=True, slots=True)
class FlowScope:
    """The flow running here: its name, its code identity (``module:qualname``, or the script's
    path for scripts) as ``flow_id``, and the execution."""

    name: str | None
    flow_id: str | None = None
    execution_id: str | None = None


@dataclass(frozen=True, slots=True)
class CheckpointScope:
    """The checkpoint call running here: its name, its ``type`` (``@checkpoint(type=...)``, e.g.
    ``"llm_call"``; None when not given), the execution, and the call's id in the journal
    (``name``, ``name:2``...)."""

    name: str
    type: str | None
    execution_id: str | None = None
    checkpoint_id: str | None = None


def _get_current_flow() -> FlowScope | None:
    """The flow running in this context, or None."""
    from kitaru._engine.context import current_execution

    ctx = current_execution()
    if ctx is None:
        return None
    return FlowScope(name=ctx.execution.flow, flow_id=ctx.execution.target, execution_id=ctx.exec_id)


def _get_current_checkpoint() -> CheckpointScope | None:
    """The checkpoint call running in this context, or None (also at flow scope)."""
    from kitaru._engine.context import current_call

    frame = current_call()
    if frame is None:
        return None
    call = frame.call
    return CheckpointScope(
        name=call.call_id.rsplit(":", 1)[0] if call.call_id.rpartition(":")[2].isdigit() else call.call_id,
        type=frame.checkpoint_type,
        execution_id=frame.ctx.exec_id,
        checkpoint_id=call.call_id,
    )


def _get_current_execution_id() -> str | None:
    """The id of the execution running in this context, or None outside a flow."""
    scope = _get_current_flow()
    return scope.execution_id if scope is not None else None


def _get_current_flow_id() -> str | None:
    """The running flow's code identity, or None outside a flow."""
    scope = _get_current_flow()
    return scope.flow_id if scope is not None else None


def _get_current_checkpoint_id() -> str | None:
    """The running checkpoint call's id (``name``, ``name:2``...), or None outside one."""
    scope = _get_current_checkpoint()
    return scope.checkpoint_id if scope is not None else None


def _get_current_checkpoint_name() -> str | None:
    """The running checkpoint's name, or None outside one."""
    scope = _get_current_checkpoint()
    return scope.name if scope is not None else None


def _is_inside_flow() -> bool:
    """Whether a flow is running in this context."""
    return _get_current_flow() is not None


def _is_inside_checkpoint() -> bool:
    """Whether a checkpoint is running in this context."""
    return _get_current_checkpoint() is not None
