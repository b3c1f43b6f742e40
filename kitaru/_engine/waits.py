"""``wait()``: pause a flow for outside input without holding a process."""

from __future__ import annotations

import builtins
import time
import typing
from types import ModuleType
from typing import Any

from kitaru.config import env_float
from kitaru.errors import KitaruUsageError, KitaruWaitTimeoutError, KitaruWaitValidationError
from kitaru.store import JournalRecord

from .context import ExecutionContext, _current_call, _Suspend, require_flow

__all__ = ["WAIT_FN_NAME", "resolve_schema", "schema_ref", "validate_answer", "wait"]

#: The name every wait records in the journal (checkpoints record their function's qualname).
WAIT_FN_NAME = "kitaru.wait"


# Schemas seen by wait() in this process, so an answer given here needs no import (and works for
# types defined inside functions, which no other process can import).
_LIVE_SCHEMAS: dict[str, Any] = {}


def schema_ref(schema: Any) -> str | None:
    """A text form of a wait's schema that another process can turn back into the type."""
    if schema is None:
        return None
    if isinstance(schema, type) and "[" not in repr(schema):
        ref = f"type:{schema.__module__}:{schema.__qualname__}"
    else:
        ref = f"expr:{_type_expr(schema)}"
    _LIVE_SCHEMAS[ref] = schema
    return ref


def _type_expr(tp: Any) -> str:
    """``repr`` of typing constructs, with ``typing.`` and module prefixes left for eval."""
    text = repr(tp)
    return text.replace("typing.", "")


def resolve_schema(ref: str | None, flow_module: ModuleType | None) -> Any:
    """Turn a :func:`schema_ref` back into a type. ``flow_module`` stands in for ``__main__``."""
    if ref is None:
        return Any
    if ref in _LIVE_SCHEMAS:
        return _LIVE_SCHEMAS[ref]
    kind, _, rest = ref.partition(":")
    if kind == "type":
        module_name, _, qualname = rest.partition(":")
        if module_name == "builtins":
            return getattr(builtins, qualname)
        if module_name == "__main__" and flow_module is not None:
            obj: Any = flow_module
        else:
            import importlib

            obj = importlib.import_module(module_name)
        for part in qualname.split("."):
            obj = getattr(obj, part)
        return obj
    namespace: dict[str, Any] = {**vars(typing), "typing": typing}
    if flow_module is not None:
        namespace.update(vars(flow_module))
    return eval(rest, namespace)


def describe_schema(schema: Any) -> str:
    if schema is None or schema is Any:
        return "any JSON value"
    if isinstance(schema, type):
        return schema.__qualname__
    return _type_expr(schema)


def validate_answer(schema: Any, value: Any, *, where: str, fix: str) -> Any:
    """Validate ``value`` against ``schema`` with pydantic; the error names the expected type."""
    if schema is None or schema is Any:
        return value
    from pydantic import TypeAdapter, ValidationError

    try:
        return TypeAdapter(schema).validate_python(value)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'value'}: {e['msg']}" for e in exc.errors()
        )
        raise KitaruWaitValidationError(
            f"the answer {value!r} for {where} does not match its schema: expected "
            f"{describe_schema(schema)} ({problems}). The wait is still open; {fix}"
        ) from None


def wait(
    name: str | None = None,
    question: str | None = None,
    schema: Any = None,
    timeout: float | None = None,
    metadata: dict[str, Any] | None = None,
) -> Any:
    """Pause the flow until someone answers, then return the answer.

    If the journal already holds the answer (a resumed execution), it is returned at once.
    Otherwise the wait is recorded, the flow may hold for ``KITARU_WAIT_HOLD`` seconds (default 0)
    in case an answer comes fast, then it suspends: the execution becomes ``waiting`` and the
    process is released. Answer with ``kitaru executions input <id> --value JSON`` or
    ``KitaruClient().executions.input(id, value)``; the answer is validated against ``schema`` (any
    type pydantic can validate) and the flow resumes from the top, replaying its journal. After
    ``timeout`` seconds without an answer the wait raises :class:`KitaruWaitTimeoutError`.
    """
    ctx = require_flow("kitaru.wait()")
    frame = _current_call.get()
    if frame is not None:
        raise KitaruUsageError(
            f"kitaru.wait() was called inside checkpoint {frame.call.call_id!r}; a checkpoint "
            "cannot pause halfway. Call wait() from the flow body, between checkpoints."
        )
    if name is not None and (not name or ":" in name or "/" in name):
        raise KitaruUsageError(f"wait name {name!r} must be non-empty, without ':' or '/'.")
    if timeout is not None and timeout <= 0:
        raise KitaruUsageError(f"wait timeout must be positive seconds, got {timeout!r}.")
    call = ctx.begin_call(name or "wait", WAIT_FN_NAME)
    call_id = call.call_id

    def answered(record: JournalRecord) -> Any:
        artifact = ctx.stored_artifact(record)
        value = ctx.runtime.load_artifact(artifact)
        ctx.remember_output(value, artifact)  # an answer passed on to a checkpoint is lineage
        return value

    if call_id in ctx.answers:
        return answered(ctx.answers[call_id])
    if call_id in ctx.timed_out:
        raise KitaruWaitTimeoutError(f"wait {call_id!r} timed out before it was answered.")
    opened = ctx.opened.get(call_id)
    if opened is None:
        deadline = time.time() + timeout if timeout is not None else None
        data: dict[str, Any] = {
            "question": question,
            "schema": schema_ref(schema),
            "schema_text": describe_schema(schema),
            "metadata": metadata or {},
            "deadline": deadline,
        }
        if schema is not None:
            try:
                from pydantic import TypeAdapter

                data["json_schema"] = TypeAdapter(schema).json_schema()
            except Exception as exc:
                raise KitaruUsageError(
                    f"wait {call_id!r}: schema {schema!r} is not a type pydantic can validate "
                    f"({exc}). Use a type such as bool, str, a pydantic model or a dataclass."
                ) from exc
        opened = JournalRecord(
            kind="wait_opened",
            call_id=call_id,
            seq=call.seq,
            name=WAIT_FN_NAME,
            data=data,
            ts=time.time(),
        )
        ctx.commit([opened])
        ctx.opened[call_id] = opened
    deadline = (opened.data or {}).get("deadline")
    # Only poll while holding for a fast answer: an answer that lands after this point is seen
    # by the store's suspend(), which then refuses to suspend and the runner replays at once.
    hold_until = time.time() + env_float("KITARU_WAIT_HOLD", 0.0)
    while True:
        now = time.time()
        if deadline is not None and now >= deadline:
            ctx.commit([JournalRecord(kind="wait_timed_out", call_id=call_id, ts=now)])
            ctx.timed_out.add(call_id)
            raise KitaruWaitTimeoutError(
                f"wait {call_id!r} of execution {ctx.exec_id} got no answer within its timeout."
            )
        if now >= hold_until:
            break
        time.sleep(min(0.01, hold_until - now))
        record = _fetch_answer(ctx, call_id)
        if record is not None:
            ctx.answers[call_id] = record
            return answered(record)
    ctx.suspended_on.append(call_id)
    raise _Suspend()


def _fetch_answer(ctx: ExecutionContext, call_id: str) -> JournalRecord | None:
    for record in ctx.state.read_journal(ctx.exec_id):
        if record.kind == "wait_answered" and record.call_id == call_id:
            return record
    return None
