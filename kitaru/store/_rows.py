"""Row tuples both SQL state stores write (SQLite and PostgreSQL share the column order), so a
record's columns are listed once."""

from __future__ import annotations

import json
from typing import Any

from kitaru.store import ONCE_ONLY_KINDS, ArtifactRecord, JournalRecord

__all__ = ["artifact_row", "journal_record", "journal_row"]


def journal_row(exec_id: str, r: JournalRecord, now: float) -> tuple[Any, ...]:
    return (
        exec_id,
        r.kind,
        r.call_id,
        r.call_id if r.kind in ONCE_ONLY_KINDS else None,
        r.seq,
        r.name,
        r.attempt,
        r.artifact_id,
        json.dumps(r.data) if r.data is not None else None,
        r.ts or now,
    )


def journal_record(r: Any) -> JournalRecord:
    """A journal record from the columns both stores read back: kind, call_id, seq, name,
    attempt, artifact_id, data (JSON text), ts, id."""
    return JournalRecord(
        kind=r[0],
        call_id=r[1],
        seq=r[2],
        name=r[3],
        attempt=r[4],
        artifact_id=r[5],
        data=json.loads(r[6]) if r[6] is not None else None,
        ts=r[7],
        id=r[8],
    )


def artifact_row(a: ArtifactRecord) -> tuple[Any, ...]:
    return (
        a.id,
        a.exec_id,
        a.name,
        a.version,
        a.type,
        a.serializer,
        a.data_type,
        a.content_hash,
        a.size,
        a.call_id,
        a.created_at,
        a.inline,
        a.uri,
        json.dumps(a.tags) if a.tags else None,
    )
