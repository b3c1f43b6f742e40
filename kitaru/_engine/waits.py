"""``wait()``: pause a flow for outside input without holding a process.

How a wait's schema travels (nothing stored is ever evaluated):

* When a wait opens, its ``wait_opened`` record carries the schema three ways: ``json_schema``
  (pydantic's JSON Schema, the contract), ``type`` (a structured reference: a JSON tree of the
  type's shape naming classes as ``module:qualname``, see :func:`type_ref`) and ``schema_text``
  (for people).
* Any process answering a wait (the CLI in another directory, a server without the user's code)
  checks the answer against the JSON Schema, strictly: ``"no"`` is not a bool, ``"3"`` and ``3.0``
  are not ints, ISO date strings are dates. Where the classes the reference names can be imported
  (or the wait was opened in this very process), the type is rebuilt from the tree and pydantic
  checks the answer too, so custom validators refuse a bad answer before it is recorded.
* The answer is stored as its JSON value. When the flow resumes, ``wait()`` validates that value
  with pydantic (strict, JSON mode) against the live schema object and returns the typed value.
  If the flow's own check refuses an answer the other checks let through (a validator the JSON
  Schema cannot express, answered where the class could not be imported), ``wait()`` raises
  :class:`KitaruWaitValidationError` naming the wait, the answer and the replay that gives a new
  one: nothing is coerced silently.
"""

from __future__ import annotations

import importlib
import json
import sys
import time
import types
import typing
from collections.abc import Callable, Mapping
from functools import cache, lru_cache
from types import ModuleType
from typing import Any, NoReturn

from kitaru.config import env_float
from kitaru.errors import (
    KitaruStoreError,
    KitaruUsageError,
    KitaruWaitTimeoutError,
    KitaruWaitValidationError,
)
from kitaru.store import JournalRecord

from .context import ExecutionContext, _current_call, _Suspend, require_flow, running_loop

__all__ = [
    "MAX_ANSWER_DEPTH",
    "WAIT_FN_NAME",
    "answer_json",
    "build_type",
    "check_answer",
    "describe_schema",
    "json_depth",
    "type_ref",
    "typed_answer",
    "wait",
    "wait_async",
]

#: The name every wait records in the journal (checkpoints record their function's qualname).
WAIT_FN_NAME = "kitaru.wait"

#: Answers nested deeper than this are refused: no schema a person answers needs more, and deeper
#: values would exhaust the interpreter's recursion limit in JSON and validation code.
MAX_ANSWER_DEPTH = 100

# Schemas of the waits opened in this process, by (execution, wait), so that an answer given here
# is checked with the very schema object (even one defined inside a function, which no other
# process can import).
_LIVE_SCHEMAS: dict[tuple[str, str], Any] = {}


# -- the structured type reference -----------------------------------------------------------

# Generic origins stored by name; anything else generic is stored by its class's module:qualname.
_NAMED_ORIGINS: dict[Any, str] = {
    list: "list",
    dict: "dict",
    tuple: "tuple",
    set: "set",
    frozenset: "frozenset",
    type: "type",
}
_ORIGINS_BY_NAME: dict[str, Any] = {name: origin for origin, name in _NAMED_ORIGINS.items()}


def type_ref(schema: Any) -> dict[str, Any]:
    """A JSON tree describing ``schema``, from which :func:`build_type` rebuilds it without eval.

    Nodes: ``{"any": true}``, ``{"none": true}``, ``{"ellipsis": true}`` (in ``tuple[int, ...]``),
    ``{"class": "module:qualname"}`` (with ``"args"`` for a parametrized generic class such as a
    generic pydantic model), ``{"origin": "list"|"dict"|"tuple"|"set"|"frozenset"|"type"|"Union",
    "args": [...]}`` (``X | None`` is a Union with a none node), ``{"origin": "Literal", "values":
    [...]}``, ``{"origin": "Annotated", "args": [inner], "metadata": [text...]}`` (the metadata is
    for display: its constraints live in the JSON Schema) and ``{"opaque": text}`` for what cannot
    be described (such a wait is checked with its JSON Schema only, outside the flow).
    """
    if schema is None or schema is type(None):
        return {"none": True}
    if schema is Any:
        return {"any": True}
    if schema is Ellipsis:
        return {"ellipsis": True}
    origin = typing.get_origin(schema)
    args = typing.get_args(schema)
    if origin is typing.Annotated:
        return {
            "origin": "Annotated",
            "args": [type_ref(args[0])],
            "metadata": [repr(m)[:200] for m in args[1:]],
        }
    if origin is typing.Union or origin is types.UnionType:
        return {"origin": "Union", "args": [type_ref(a) for a in args]}
    if origin is typing.Literal:
        if all(v is None or type(v) in (str, int, bool) for v in args):
            return {"origin": "Literal", "values": list(args)}
        return {"opaque": _type_text(schema)}
    if origin is not None:
        name = _NAMED_ORIGINS.get(origin)
        if name is None and isinstance(origin, type):
            name = _class_path(origin)
        if name is None:
            return {"opaque": _type_text(schema)}
        return {"origin": name, "args": [type_ref(a) for a in args]}
    if isinstance(schema, type):
        generic = getattr(schema, "__pydantic_generic_metadata__", None)
        if generic and generic.get("origin") is not None and generic.get("args"):
            # A parametrized pydantic model (Page[Item]) is a class of its own that no module
            # holds; it is rebuilt by parametrizing its origin again.
            return {
                "class": _class_path(generic["origin"]),
                "args": [type_ref(a) for a in generic["args"]],
            }
        return {"class": _class_path(schema)}
    return {"opaque": _type_text(schema)}


def _class_path(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


class _Unbuildable(Exception):
    """A type reference names something this process cannot rebuild (not importable, opaque)."""


def build_type(ref: Any, resolve: Callable[[str], type]) -> Any:
    """Rebuild the type a :func:`type_ref` tree describes. ``resolve`` turns ``module:qualname``
    into a class (or raises); nothing in the tree is evaluated. Raises ``_Unbuildable``."""
    if not isinstance(ref, dict):
        raise _Unbuildable(f"not a type reference: {ref!r}")
    if ref.get("none"):
        return type(None)
    if ref.get("any"):
        return Any
    if ref.get("ellipsis"):
        return Ellipsis
    if "class" in ref:
        cls = resolve(str(ref["class"]))
        if "args" in ref:
            return cls[tuple(build_type(a, resolve) for a in ref["args"])]  # type: ignore[index]
        return cls
    origin = ref.get("origin")
    if origin == "Literal":
        values = ref.get("values")
        if not isinstance(values, list) or not values:
            raise _Unbuildable(f"bad Literal reference: {ref!r}")
        return typing.Literal[tuple(values)]
    args = ref.get("args")
    if not isinstance(args, list):
        raise _Unbuildable(f"not a type reference: {ref!r}")
    built = tuple(build_type(a, resolve) for a in args)
    if origin == "Annotated":
        # Metadata (Field(gt=0), validators) is not rebuilt: its constraints are in the JSON
        # Schema, and the flow's own process applies all of it on resume.
        return built[0]
    if origin == "Union":
        return typing.Union[built]  # noqa: UP007 (built at runtime from a tuple)
    if origin in _ORIGINS_BY_NAME:
        return _ORIGINS_BY_NAME[origin][built]
    if isinstance(origin, str) and ":" in origin:
        return resolve(origin)[built]  # type: ignore[index]
    raise _Unbuildable(f"unknown origin {origin!r}")


def _class_resolver(flow_module: ModuleType | None) -> Callable[[str], type]:
    """Find ``module:qualname`` by import and attribute lookup; ``__main__`` means the flow's
    script (loaded under its private name when this process did not start it)."""

    def resolve(path: str) -> type:
        module_name, _, qualname = path.partition(":")
        if not module_name or not qualname or "<locals>" in qualname:
            raise _Unbuildable(f"{path!r} cannot be imported")
        try:
            if module_name == "__main__":
                if flow_module is None:
                    raise _Unbuildable(f"{path!r}: the flow's script is not loaded here")
                obj: Any = flow_module
            else:
                obj = sys.modules.get(module_name) or importlib.import_module(module_name)
            for part in qualname.split("."):
                obj = getattr(obj, part)
        except _Unbuildable:
            raise
        except Exception as exc:
            raise _Unbuildable(f"{path!r} cannot be imported here: {exc}") from exc
        if not isinstance(obj, type):
            raise _Unbuildable(f"{path!r} is not a class")
        return obj

    return resolve


def _type_text(tp: Any) -> str:
    """``repr`` of typing constructs, without the ``typing.`` noise."""
    return repr(tp).replace("typing.", "")


def describe_schema(schema: Any) -> str:
    """What a wait expects, for people (``schema_text``)."""
    if schema is None or schema is Any:
        return "any JSON value"
    if isinstance(schema, type) and typing.get_origin(schema) is None and "[" not in repr(schema):
        return schema.__qualname__
    if typing.get_origin(schema) is typing.Annotated:
        # Annotated[int, Field(gt=0)] reads as "int, Gt(gt=0)", not pydantic's FieldInfo repr.
        inner, *extra = typing.get_args(schema)
        notes = [repr(m) for e in extra for m in (getattr(e, "metadata", None) or [e])]
        return f"{describe_schema(inner)}, {', '.join(notes)}" if notes else describe_schema(inner)
    return _type_text(schema)


# -- checking answers --------------------------------------------------------------------------


def json_depth(value: Any) -> int:
    """How deeply lists and dicts nest in ``value`` (0 for a scalar), without recursion."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list | tuple):
            children = item
        else:
            deepest = max(deepest, depth)
            continue
        deepest = max(deepest, depth + 1)
        if depth + 1 > MAX_ANSWER_DEPTH:
            return depth + 1  # deep enough to refuse; no need to walk the rest
        stack.extend((child, depth + 1) for child in children)
    return deepest


def _shown(value: Any, limit: int = 200) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def answer_json(value: Any, *, where: str, fix: str) -> Any:
    """``value`` as the JSON value it is stored as: Python values given to the client (a model,
    a date, a Decimal, a tuple) become their JSON form (pydantic's), as if typed as JSON."""
    from kitaru.serialization import _is_json_native

    too_deep = KitaruWaitValidationError(
        f"the answer for {where} nests more than {MAX_ANSWER_DEPTH} levels deep. The wait is "
        f"still open; {fix}"
    )
    # Measured first (without recursion) and again after conversion: JSON and validation code
    # recurse once per level, and a deep enough value would exhaust the interpreter's stack.
    if json_depth(value) > MAX_ANSWER_DEPTH:
        raise too_deep
    try:
        if not _is_json_native(value):
            from pydantic_core import to_jsonable_python

            value = to_jsonable_python(value)
        # NaN and infinity are not JSON: refused here rather than stored as non-standard JSON.
        json.dumps(value, allow_nan=False)
    except (RecursionError, ValueError, TypeError) as exc:
        raise KitaruWaitValidationError(
            f"the answer for {where} cannot be turned into JSON ({_shown(exc, 120)}). The wait "
            f"is still open; {fix}"
        ) from None
    if json_depth(value) > MAX_ANSWER_DEPTH:
        raise too_deep
    return value


def check_answer(
    opened: Mapping[str, Any],
    value: Any,
    *,
    where: str,
    fix: str,
    live_schema: Any = None,
    flow_module: ModuleType | None = None,
) -> Any:
    """Check an answer against a wait's ``wait_opened`` data; returns it as its JSON value.

    The JSON Schema is checked first (strictly; it is all a process without the user's code
    has). Then pydantic checks it against the type: ``live_schema`` if the wait was opened in this
    process, else the type rebuilt from the structured reference when its classes are importable.
    A refusal raises :class:`KitaruWaitValidationError`; nothing is written either way.
    """
    value = answer_json(value, where=where, fix=fix)
    expected = opened.get("schema_text") or "any JSON value"
    json_schema = opened.get("json_schema")
    if isinstance(json_schema, dict):
        problems = _json_schema_problems(json_schema, value)
        if problems:
            raise KitaruWaitValidationError(
                f"the answer {_shown(value)} for {where} does not match its schema: expected "
                f"{expected} ({problems}). The wait is still open; {fix}"
            )
    schema = live_schema if live_schema is not None else _rebuilt_schema(opened, flow_module)
    if schema is not None and schema is not Any:
        from pydantic import ValidationError

        try:
            _adapter(schema).validate_json(json.dumps(value), strict=True)
        except ValidationError as exc:
            raise KitaruWaitValidationError(
                f"the answer {_shown(value)} for {where} does not match its schema: expected "
                f"{expected} ({_pydantic_problems(exc)}). The wait is still open; {fix}"
            ) from None
    return value


def _rebuilt_schema(opened: Mapping[str, Any], flow_module: ModuleType | None) -> Any:
    """The wait's type rebuilt from its structured reference, or None when this process cannot
    (its classes are not importable here): then the JSON Schema alone decides."""
    ref = opened.get("type")
    if ref is None:
        legacy = opened.get("schema")
        # Journals written before structured references name a class as text: `type:mod:qual`
        # is read as a name (never evaluated); `expr:...` is ignored, its JSON Schema decides.
        if isinstance(legacy, str) and legacy.startswith("type:"):
            ref = {"class": legacy.removeprefix("type:")}
        else:
            return None
    try:
        return build_type(ref, _class_resolver(flow_module))
    except Exception:
        # Any failure to rebuild (a class gone, not importable here, an odd tree) only means
        # the pydantic pre-check is skipped; the flow validates again with its own schema.
        return None


@cache
def _json_validator_class() -> Any:
    """A 2020-12 validator (pydantic's dialect) whose ``integer`` is strict (``3.0`` is not an
    int, matching pydantic's strict mode) and whose time formats are parsed the way pydantic
    parses them, so this check and the flow's agree on what a date is."""
    from jsonschema import Draft202012Validator, validators

    def is_integer(checker: Any, instance: Any) -> bool:
        return isinstance(instance, int) and not isinstance(instance, bool)

    type_checker = Draft202012Validator.TYPE_CHECKER.redefine("integer", is_integer)
    return validators.extend(Draft202012Validator, type_checker=type_checker)  # type: ignore[no-untyped-call]


@cache
def _format_checker() -> Any:
    import datetime
    import uuid

    from jsonschema import FormatChecker
    from pydantic import ValidationError

    # jsonschema's own date-time check needs an optional library and follows RFC 3339 (which
    # refuses the naive datetimes pydantic accepts): parse these formats with pydantic instead.
    checker = FormatChecker(formats=("email", "ipv4", "ipv6"))
    for fmt, tp in (
        ("date", datetime.date),
        ("date-time", datetime.datetime),
        ("time", datetime.time),
        ("duration", datetime.timedelta),
        ("uuid", uuid.UUID),
    ):

        def check(instance: object, tp: Any = tp) -> bool:
            if not isinstance(instance, str):
                return True  # formats only constrain strings
            _adapter(tp).validate_json(json.dumps(instance), strict=True)
            return True

        checker.checks(fmt, raises=ValidationError)(check)
    return checker


def _json_schema_problems(json_schema: dict[str, Any], value: Any) -> str:
    """Why ``value`` does not match ``json_schema`` ("" if it does)."""
    from jsonschema.exceptions import best_match

    try:
        validator = _json_validator_class()(json_schema, format_checker=_format_checker())
        errors = list(validator.iter_errors(value))
    except RecursionError:
        return f"nested too deeply to check (at most {MAX_ANSWER_DEPTH} levels)"
    except Exception as exc:  # a stored schema jsonschema cannot use: the store was altered
        raise KitaruStoreError(
            f"the wait's stored JSON Schema cannot be used ({_shown(exc, 160)}); the state store "
            "holds a damaged wait record. Restore the store, or replay the execution."
        ) from exc
    if not errors:
        return ""
    best = best_match(errors)
    assert best is not None
    path = "/".join(str(p) for p in best.absolute_path) or "value"
    more = f"; and {len(errors) - 1} more" if len(errors) > 1 else ""
    return f"{path}: {_shown(best.message, 200)}{more}"


def _pydantic_problems(exc: Any) -> str:
    return "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'value'}: {e['msg']}" for e in exc.errors()[:5])


def _adapter(schema: Any) -> Any:
    """A pydantic TypeAdapter for ``schema``, built once per schema (building one is slow)."""
    try:
        hash(schema)
    except TypeError:
        from pydantic import TypeAdapter

        return TypeAdapter(schema)
    return _cached_adapter(schema)


@lru_cache(maxsize=256)
def _cached_adapter(schema: Any) -> Any:
    from pydantic import TypeAdapter

    return TypeAdapter(schema)


def typed_answer(schema: Any, value: Any, serializer: str, *, call_id: str, exec_id: str) -> Any:
    """The answer as the flow sees it: its stored JSON value validated by pydantic against the
    live ``schema`` (strict, JSON mode), so a model comes back as the model, a date as a date."""
    if schema is None or schema is Any or serializer != "json":
        # No schema: the JSON value is the answer. Not JSON: an answer recorded before answers
        # were stored as JSON, already validated and typed when it was recorded.
        return value
    from pydantic import ValidationError

    try:
        return _adapter(schema).validate_json(json.dumps(value), strict=True)
    except ValidationError as exc:
        raise KitaruWaitValidationError(
            f"wait {call_id!r} of execution {exec_id}: its recorded answer {_shown(value)} does "
            f"not validate against the flow's schema {describe_schema(schema)} "
            f"({_pydantic_problems(exc)}). It passed the wait's JSON Schema when it was given, "
            "where the flow's own checks could not run. Ask again by replaying from the wait: "
            f"`kitaru executions replay {exec_id} --from {call_id}` (or replay from a later call "
            f"with `--override {call_id}=JSON`)."
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
    ``KitaruClient().executions.input(id, value)``; the answer is checked against ``schema``'s
    JSON Schema (and with pydantic where its classes are importable), stored as JSON, and the flow
    resumes from the top, replaying its journal: here the answer is validated against ``schema``
    (any type pydantic can validate, strictly) and returned typed. After
    ``timeout`` seconds without an answer the wait raises :class:`KitaruWaitTimeoutError`.

    In an async flow, ``await kitaru.wait_async(...)`` is the same wait with the hold awaited.
    This sync form works there too, but never holds (sleeping would block the event loop): with
    it an async flow suspends at once.
    """
    pending = _Pending.open(name, question, schema, timeout, metadata, "kitaru.wait()")
    if pending.done:
        return pending.value
    pending.ctx.commit(pending.new_records)
    # Only poll while holding for a fast answer: an answer that lands after this point is seen
    # by the store's suspend(), which then refuses to suspend and the runner replays at once.
    # Called from an async body (on the event loop), this sync form never holds: sleeping would
    # block the loop. `await kitaru.wait_async(...)` holds there with anyio.sleep.
    hold = env_float("KITARU_WAIT_HOLD", 0.0) if running_loop() is None else 0.0
    hold_until = time.time() + hold
    while True:
        now = time.time()
        if pending.expired(now):
            pending.ctx.commit(pending.timed_out(now))
            pending.raise_timed_out()
        if now >= hold_until:
            break
        time.sleep(min(_POLL, hold_until - now))
        journal = pending.ctx.state_call(pending.ctx.runtime.astate.read_journal, pending.ctx.exec_id)
        if pending.found_answer(journal):
            return pending.answered()
    pending.suspend()


async def wait_async(
    name: str | None = None,
    question: str | None = None,
    schema: Any = None,
    timeout: float | None = None,  # noqa: ASYNC109 (the wait's deadline, recorded; not a call timeout)
    metadata: dict[str, Any] | None = None,
) -> Any:
    """:func:`wait` for async flows: ``await kitaru.wait_async(...)``.

    The same wait (same journal records, ids, schema checks and answers; an execution may switch
    between the two forms), but the ``KITARU_WAIT_HOLD`` hold is awaited: the journal is polled
    with the state store's async calls between ``anyio.sleep``s, so the event loop stays free for
    the app's other work while the flow holds for a fast answer.
    """
    import anyio

    pending = _Pending.open(name, question, schema, timeout, metadata, "kitaru.wait_async()")
    if pending.done:
        return pending.value
    ctx = pending.ctx
    if pending.new_records:
        await ctx.acommit(pending.new_records)
    hold_until = time.time() + env_float("KITARU_WAIT_HOLD", 0.0)
    while True:
        now = time.time()
        if pending.expired(now):
            await ctx.acommit(pending.timed_out(now))
            pending.raise_timed_out()
        if now >= hold_until:
            break
        await anyio.sleep(min(_POLL, hold_until - now))
        if pending.found_answer(await ctx.runtime.astate.read_journal(ctx.exec_id)):
            if not ctx.inline:
                await ctx.preload_artifacts()  # the answer's record, read without blocking
            return pending.answered()
    pending.suspend()


#: How often a holding wait looks for its answer in the journal (seconds).
_POLL = 0.01


class _Pending:
    """One wait() call between its journal checks and its hold: what both forms share."""

    __slots__ = ("call_id", "ctx", "deadline", "done", "new_records", "schema", "value")

    def __init__(self, ctx: ExecutionContext, call_id: str, schema: Any) -> None:
        self.ctx = ctx
        self.call_id = call_id
        self.schema = schema
        self.done = False
        self.value: Any = None
        self.new_records: list[JournalRecord] = []
        self.deadline: float | None = None

    @classmethod
    def open(
        cls,
        name: str | None,
        question: str | None,
        schema: Any,
        timeout: float | None,
        metadata: dict[str, Any] | None,
        what: str,
    ) -> _Pending:
        """Check the call, give it its id, and return the answer the journal holds (``done``) or
        the ``wait_opened`` record still to commit (``new_records``; empty when it is recorded)."""
        ctx = require_flow(what)
        frame = _current_call.get()
        if frame is not None:
            raise KitaruUsageError(
                f"{what} was called inside checkpoint {frame.call.call_id!r}; a checkpoint "
                "cannot pause halfway. Call it from the flow body, between checkpoints."
            )
        if name is not None and (not name or ":" in name or "/" in name):
            raise KitaruUsageError(f"wait name {name!r} must be non-empty, without ':' or '/'.")
        if timeout is not None and timeout <= 0:
            raise KitaruUsageError(f"wait timeout must be positive seconds, got {timeout!r}.")
        call = ctx.begin_call(name or "wait", WAIT_FN_NAME)
        pending = cls(ctx, call.call_id, schema)
        call_id = call.call_id
        if schema is not None:
            _LIVE_SCHEMAS[(ctx.exec_id, call_id)] = schema
        if call_id in ctx.answers:
            pending.done, pending.value = True, pending.answered()
            return pending
        if call_id in ctx.timed_out:
            raise KitaruWaitTimeoutError(f"wait {call_id!r} timed out before it was answered.")
        opened = ctx.opened.get(call_id)
        if opened is None:
            deadline = time.time() + timeout if timeout is not None else None
            data: dict[str, Any] = {
                "question": question,
                "schema_text": describe_schema(schema),
                "metadata": metadata or {},
                "deadline": deadline,
            }
            if schema is not None:
                try:
                    data["json_schema"] = _adapter(schema).json_schema()
                    data["type"] = type_ref(schema)
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
            pending.new_records = [opened]
            ctx.opened[call_id] = opened
        pending.deadline = (opened.data or {}).get("deadline")
        return pending

    def answered(self) -> Any:
        """The recorded answer, typed by the live schema (and remembered as lineage)."""
        ctx = self.ctx
        artifact = ctx.stored_artifact(ctx.answers[self.call_id])
        value = typed_answer(
            self.schema,
            ctx.load_artifact(artifact),
            artifact.serializer,
            call_id=self.call_id,
            exec_id=ctx.exec_id,
        )
        ctx.remember_output(value, artifact)  # an answer passed on to a checkpoint is lineage
        return value

    def found_answer(self, journal: list[JournalRecord]) -> bool:
        for record in journal:
            if record.kind == "wait_answered" and record.call_id == self.call_id:
                self.ctx.answers[self.call_id] = record
                self.ctx._referenced.append(record.artifact_id or "")
                return True
        return False

    def expired(self, now: float) -> bool:
        return self.deadline is not None and now >= self.deadline

    def timed_out(self, now: float) -> list[JournalRecord]:
        self.ctx.timed_out.add(self.call_id)
        return [JournalRecord(kind="wait_timed_out", call_id=self.call_id, ts=now)]

    def raise_timed_out(self) -> NoReturn:
        raise KitaruWaitTimeoutError(
            f"wait {self.call_id!r} of execution {self.ctx.exec_id} got no answer within its timeout."
        )

    def suspend(self) -> NoReturn:
        self.ctx.suspended_on.append(self.call_id)
        raise _Suspend()
