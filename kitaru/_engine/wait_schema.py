"""A wait's schema as data: the structured type reference, and checking answers against it.

Split from :mod:`kitaru._engine.waits` (which re-exports these names): what a wait records about
its schema, how any process rebuilds and checks an answer without the user's code, and how the
flow's own process types the answer on resume. Nothing stored is ever evaluated.
"""

from __future__ import annotations

import importlib
import json
import sys
import types
import typing
from collections.abc import Callable, Mapping
from functools import cache, lru_cache
from types import ModuleType
from typing import Any

from kitaru.errors import KitaruStoreError, KitaruWaitValidationError

__all__ = [
    "MAX_ANSWER_DEPTH",
    "answer_json",
    "build_type",
    "check_answer",
    "describe_schema",
    "json_depth",
    "type_ref",
    "typed_answer",
]

#: Answers nested deeper than this are refused: no schema a person answers needs more, and deeper
#: values would exhaust the interpreter's recursion limit in JSON and validation code.
MAX_ANSWER_DEPTH = 100


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
    if isinstance(schema, type):
        return schema.__qualname__  # a parametrized pydantic model too: `Page[Item]`
    if typing.get_origin(schema) is typing.Annotated:
        # Annotated[int, Field(gt=0)] reads as "int, Gt(gt=0)", not pydantic's FieldInfo repr; a
        # Field without constraints (a description) adds nothing.
        inner, *extra = typing.get_args(schema)
        notes = [repr(m) for e in extra for m in _constraints(e)]
        return f"{describe_schema(inner)}, {', '.join(notes)}" if notes else describe_schema(inner)
    return _type_text(schema)


def _constraints(metadata: Any) -> list[Any]:
    """The constraints an ``Annotated`` metadata item stands for: a pydantic ``Field``'s own
    (its ``metadata`` list, empty for one that only describes), else the item itself."""
    from pydantic.fields import FieldInfo

    return list(metadata.metadata) if isinstance(metadata, FieldInfo) else [metadata]


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


@lru_cache(maxsize=256)
def _json_validator(schema_text: str) -> Any:
    return _json_validator_class()(json.loads(schema_text), format_checker=_format_checker())


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
        # Building a validator costs up to ~10x checking a value with it (a server answers many
        # waits of one schema): built once per schema, keyed by its canonical text.
        validator = _json_validator(json.dumps(json_schema, sort_keys=True))
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
