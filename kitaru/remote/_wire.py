"""Store records and kitaru errors as JSON, the same way on the server and in its clients.

Bytes (inline artifacts) travel as base64; an error travels as its class name and message and is
raised again as the same class on the other side, so a caller of the HTTP state store sees exactly
the error the store behind the server raised (what the conformance suite checks)."""

from __future__ import annotations

import base64
from dataclasses import asdict
from typing import Any

import kitaru.errors as errors
from kitaru.store import ArtifactRecord, ExecutionRecord, JournalRecord

__all__ = [
    "artifact_from_json",
    "artifact_to_json",
    "error_from_json",
    "error_to_json",
    "execution_from_json",
    "execution_to_json",
    "journal_from_json",
    "journal_to_json",
]


def execution_to_json(record: ExecutionRecord) -> dict[str, Any]:
    return asdict(record)


def execution_from_json(data: dict[str, Any]) -> ExecutionRecord:
    return ExecutionRecord(**data)


def journal_to_json(record: JournalRecord) -> dict[str, Any]:
    return asdict(record)


def journal_from_json(data: dict[str, Any]) -> JournalRecord:
    return JournalRecord(**data)


def artifact_to_json(record: ArtifactRecord, *, with_bytes: bool = True) -> dict[str, Any]:
    data = asdict(record)
    inline = data.pop("inline")
    if with_bytes:
        data["inline"] = base64.b64encode(inline).decode("ascii") if inline is not None else None
    else:
        data["inline"] = inline is not None
    return data


def artifact_from_json(data: dict[str, Any]) -> ArtifactRecord:
    data = dict(data)
    inline = data.pop("inline", None)
    return ArtifactRecord(**data, inline=base64.b64decode(inline) if isinstance(inline, str) else None)


#: HTTP status of each kitaru error a request may raise (the most specific class wins).
STATUS_OF: tuple[tuple[type[errors.KitaruError], int], ...] = (
    (errors.KitaruNotFoundError, 404),
    (errors.KitaruLeaseError, 409),
    (errors.KitaruConflictError, 409),
    (errors.KitaruStateError, 409),
    (errors.KitaruWaitValidationError, 422),
    (errors.KitaruDivergenceError, 422),
    (errors.KitaruUsageError, 400),
    (errors.KitaruConfigError, 400),
    (errors.KitaruSerializationError, 422),
    (errors.KitaruStoreError, 503),
)


def status_of(exc: errors.KitaruError) -> int:
    for cls, status in STATUS_OF:
        if isinstance(exc, cls):
            return status
    return 500


def error_to_json(exc: errors.KitaruError) -> dict[str, Any]:
    return {"error": {"type": type(exc).__name__, "message": str(exc)}}


def error_from_json(data: Any, status: int) -> errors.KitaruError:
    """The kitaru error a server answered with (its own class when it is one of kitaru's)."""
    detail = data.get("error") if isinstance(data, dict) else None
    if isinstance(detail, dict):
        cls = getattr(errors, str(detail.get("type")), None)
        message = str(detail.get("message"))
        if isinstance(cls, type) and issubclass(cls, errors.KitaruError):
            return cls(message)
        return errors.KitaruError(message)
    return errors.KitaruStoreError(f"the kitaru server answered HTTP {status}: {str(data)[:200]}")
