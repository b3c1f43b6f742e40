"""The StateStore contract as JSON calls: ``POST /api/v1/store/<operation>`` with the operation's
keyword arguments, answered with ``{"result": ...}``. Both sides use this module, so an argument's
or a result's shape is written once (records by field name; inline bytes as base64).

Besides the StateStore, the side contracts a worker's flows need travel the same way: the
CatalogStore (the checkpoint cache, artifacts by tag) and the SecretStore, whose values are
ciphertext (base64 on the wire): the server stores and returns bytes it cannot decrypt, the key
stays with the worker or the CLI (``KITARU_SECRETS_KEY``). Changing a secret needs an ``admin``
key besides ``runner`` (:data:`ADMIN_OPERATIONS`): a job reads secrets, it does not set them."""

from __future__ import annotations

import base64
from dataclasses import asdict
from typing import Any

from kitaru.errors import KitaruUsageError
from kitaru.remote import _wire

__all__ = ["ADMIN_OPERATIONS", "OPERATIONS", "call", "decode_result", "encode_arguments"]

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
    "read_wait": ({}, "records"),
    "get_artifact": ({}, "artifact"),
    "list_artifacts": ({}, "artifacts"),
    "create_deployment": ({"record": "deployment"}, "deployment_created"),
    "get_deployment": ({}, "deployment"),
    "list_deployments": ({}, "deployments"),
    "list_tags": ({}, "tags"),
    "move_tags": ({"requests": "tag_requests"}, "moves"),
    "tag_history": ({}, "moves"),
    # CatalogStore
    "get_cache_entry": ({}, "cache_entry"),
    "put_cache_entry": ({"entry": "cache_entry"}, "cache_entry"),
    "clear_cache": ({}, None),
    "list_cache_entries": ({}, "cache_entries"),
    "find_artifacts": ({}, "artifacts"),
    # SecretStore (ciphertext only)
    "put_secret": ({"ciphertext": "bytes"}, "secret"),
    "get_secret": ({}, "secret"),
    "list_secrets": ({}, "secrets"),
    "delete_secret": ({}, None),
}

#: Operations that need the ``admin`` scope on top of ``runner``.
ADMIN_OPERATIONS = frozenset({"put_secret", "delete_secret"})

#: Deployment records are flat dataclasses: their JSON is their fields.
_FLAT = {
    "deployment": "DeploymentRecord",
    "tag": "TagRecord",
    "move": "TagMove",
    "tag_request": "TagRequest",
    "cache_entry": "CacheEntry",
}
#: List kinds of flat records: plural → singular.
_PLURAL = {"deployments": "deployment", "tags": "tag", "moves": "move", "tag_requests": "tag_request"}
_PLURAL["cache_entries"] = "cache_entry"


def _secret_to_json(record: Any) -> dict[str, Any]:
    data = asdict(record)
    data["ciphertext"] = base64.b64encode(record.ciphertext).decode("ascii")
    return data


def _secret_from_json(data: dict[str, Any]) -> Any:
    from kitaru.store import SecretRecord

    data = dict(data)
    return SecretRecord(**{**data, "ciphertext": base64.b64decode(data["ciphertext"], validate=True)})


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
    if kind == "deployment_created":
        return [asdict(value[0]), [asdict(m) for m in value[1]]]
    if kind == "bytes":
        return base64.b64encode(value).decode("ascii")
    if kind == "secret":
        return _secret_to_json(value)
    if kind == "secrets":
        return [_secret_to_json(v) for v in value]
    if kind in _FLAT:
        return asdict(value)
    if kind in _PLURAL:
        return [asdict(v) for v in value]
    raise AssertionError(kind)


def _flat(kind: str, data: dict[str, Any]) -> Any:
    import kitaru.store

    return getattr(kitaru.store, _FLAT[kind])(**data)


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
    if kind == "deployment_created":
        return _flat("deployment", value[0]), [_flat("move", m) for m in value[1]]
    if kind == "bytes":
        return base64.b64decode(value, validate=True)
    if kind == "secret":
        return _secret_from_json(value)
    if kind == "secrets":
        return [_secret_from_json(v) for v in value]
    if kind in _FLAT:
        return _flat(kind, value)
    if kind in _PLURAL:
        return [_flat(_PLURAL[kind], v) for v in value]
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
    method = getattr(store, operation, None)
    if method is None:
        raise KitaruUsageError(
            f"this server's state store does not offer {operation!r} (only SQLite, PostgreSQL and "
            "memory state stores keep the cache and secrets)."
        )
    try:
        decoded = {name: _decode(kinds.get(name), value) for name, value in arguments.items()}
    except (TypeError, KeyError, ValueError) as exc:
        raise KitaruUsageError(f"bad arguments for the state-store operation {operation!r}: {exc}") from None
    result = await method(**decoded)
    return _encode(result_kind, result)
