"""The StateStore contract as JSON calls: ``POST /api/v1/store/<operation>`` with the operation's
keyword arguments, answered with ``{"result": ...}``. Both sides use this module, so an argument's
or a result's shape is written once (records by field name; inline bytes as base64)."""

from __future__ import annotations

from typing import Any

from kitaru.errors import KitaruUsageError
from kitaru.remote import _wire

__all__ = ["OPERATIONS", "call", "decode_result", "encode_arguments"]

#: Operation → (kind of each record-typed argument, kind of the result). Kinds: ``exec``,
#: ``execs``, ``record``, ``records``, ``artifact``, ``artifacts``; anything else is plain JSON.
OPERATIONS: dict[str, tuple[dict[str, str], str | None]] = {
    "create_execution": (
        {"execution": "exec", "artifacts": "artifacts", "records": "records"},
        "exec_created",
    ),
    "get_execution": ({}, "exec"),
    "match_execution_ids": ({}, None),
    "list_executions": ({}, "execs"),
    "acquire_lease": ({}, "exec"),
    "list_recoverable": ({}, "execs"),
    "renew_leases": ({}, None),
    "commit": ({"records": "records", "artifacts": "artifacts"}, None),
    "suspend": ({}, None),
    "answer_wait": ({"record": "record", "artifact": "artifact"}, None),
    "cancel": ({}, "exec"),
    "read_journal": ({}, "records"),
    "get_artifact": ({}, "artifact"),
    "list_artifacts": ({}, "artifacts"),
}


def _encode(kind: str | None, value: Any) -> Any:
    if value is None or kind is None:
        return value
    if kind == "exec":
        return _wire.execution_to_json(value)
    if kind == "execs":
        return [_wire.execution_to_json(v) for v in value]
    if kind == "exec_created":
        return [_wire.execution_to_json(value[0]), value[1]]
    if kind == "record":
        return _wire.journal_to_json(value)
    if kind == "records":
        return [_wire.journal_to_json(v) for v in value]
    if kind == "artifact":
        return _wire.artifact_to_json(value)
    if kind == "artifacts":
        return [_wire.artifact_to_json(v) for v in value]
    raise AssertionError(kind)


def _decode(kind: str | None, value: Any) -> Any:
    if value is None or kind is None:
        return value
    if kind == "exec":
        return _wire.execution_from_json(value)
    if kind == "execs":
        return [_wire.execution_from_json(v) for v in value]
    if kind == "exec_created":
        return _wire.execution_from_json(value[0]), bool(value[1])
    if kind == "record":
        return _wire.journal_from_json(value)
    if kind == "records":
        return [_wire.journal_from_json(v) for v in value]
    if kind == "artifact":
        return _wire.artifact_from_json(value)
    if kind == "artifacts":
        return [_wire.artifact_from_json(v) for v in value]
    raise AssertionError(kind)


def encode_arguments(operation: str, arguments: dict[str, Any]) -> dict[str, Any]:
    kinds = OPERATIONS[operation][0]
    out = {}
    for name, value in arguments.items():
        if isinstance(value, set | frozenset | tuple):
            value = sorted(value) if isinstance(value, set | frozenset) else list(value)
        out[name] = _encode(kinds.get(name), value)
    return out


def decode_result(operation: str, result: Any) -> Any:
    return _decode(OPERATIONS[operation][1], result)


async def call(store: Any, operation: str, arguments: dict[str, Any]) -> Any:
    """Run one operation on ``store`` (the server side) and return its JSON result."""
    spec = OPERATIONS.get(operation)
    if spec is None:
        raise KitaruUsageError(
            f"{operation!r} is not a state-store operation; the server offers "
            f"{', '.join(sorted(OPERATIONS))}."
        )
    kinds, result_kind = spec
    try:
        decoded = {name: _decode(kinds.get(name), value) for name, value in arguments.items()}
    except (TypeError, KeyError, ValueError) as exc:
        raise KitaruUsageError(f"bad arguments for the state-store operation {operation!r}: {exc}") from None
    result = await getattr(store, operation)(**decoded)
    return _encode(result_kind, result)
