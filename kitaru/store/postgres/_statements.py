"""The SQL statements of the PostgreSQL state store's executions, journal and artifacts, and the
conversions between their rows and records."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Sequence
from typing import Any

from kitaru.store import (
    ArtifactRecord,
    ExecutionRecord,
)

_EXEC_COLUMNS = (
    "id, flow, target, sys_path, status, created_at, updated_at, error, result_artifact, "
    "original_exec_id, lease_owner, lease_expires_at, metadata"
)
_ARTIFACT_COLUMNS = (
    "id, exec_id, name, version, type, serializer, data_type, content_hash, size, call_id, "
    "created_at, inline, uri, tags"
)
_INSERT_EXECUTION = (
    "WITH token AS (INSERT INTO kitaru.commits (token, at) VALUES ($14, $15)) "
    f"INSERT INTO kitaru.executions ({_EXEC_COLUMNS}) "
    "VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13) ON CONFLICT (id) DO NOTHING RETURNING 1"
)
_INSERT_ARTIFACT = (
    f"INSERT INTO kitaru.artifacts ({_ARTIFACT_COLUMNS}) "
    "VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13,$14)"
)
_INSERT_JOURNAL = (
    "INSERT INTO kitaru.journal (exec_id, kind, call_id, once, seq, name, attempt, artifact_id, data, ts) "
    "VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10)"
)
# The first statement of a write transaction locks the execution's row and records the
# transaction's token, in one round trip (the token settles a COMMIT whose connection died).
_LOCK_EXECUTION = (
    "WITH token AS (INSERT INTO kitaru.commits (token, at) VALUES ($2, $3)) "
    f"SELECT {_EXEC_COLUMNS} FROM kitaru.executions WHERE id = $1 FOR UPDATE"
)

# The same for a group of answers: every execution's row, locked in id order.
_LOCK_EXECUTIONS = (
    "WITH token AS (INSERT INTO kitaru.commits (token, at) VALUES ($2, $3)) "
    "SELECT id, status, lease_owner, lease_expires_at FROM kitaru.executions "
    "WHERE id = ANY($1::text[]) ORDER BY id FOR UPDATE"
)

_ARTIFACT_ARRAYS = (
    "text[]", "text[]", "text[]", "int4[]", "text[]", "text[]", "text[]", "text[]", "int8[]", "text[]",
    "float8[]", "bytea[]", "text[]", "text[]",
)  # fmt: skip
_JOURNAL_FIELDS = "kind, call_id, once, seq, name, attempt, artifact_id, data, ts"
_JOURNAL_ARRAYS = ("text[]", "text[]", "text[]", "int4[]", "text[]", "int4[]", "text[]", "text[]", "float8[]")


def _commit_statement(
    exec_id: str,
    owner: str | None,
    journal: Sequence[tuple[Any, ...]],
    artifacts: Sequence[tuple[Any, ...]],
    sets: Sequence[tuple[str, Any]],
    token: uuid.UUID,
    refused_from: Sequence[str] = (),
) -> tuple[str, list[Any]]:
    """One statement for a whole commit (atomic on its own, no BEGIN/COMMIT needed): lock the
    execution's row, check the lease, insert the artifacts, journal records (as arrays) and the
    commit's token, update the row; nothing is written unless the lease check passed and, when the
    commit changes the status, the current status is not in ``refused_from`` (see
    :mod:`kitaru.store._rules`). Returns the statement and its parameters.

    Its one row: (lease ok, execution found, lease owner, status).
    """
    params: list[Any] = [exec_id, owner, token, time.time()]

    def param(value: Any, cast: str = "") -> str:
        params.append(value)
        return f"${len(params)}::{cast}" if cast else f"${len(params)}"

    # `ok` reads `ex` first whatever the owner (COALESCE evaluates left to right), so the row is
    # always locked before anything is inserted: concurrent commits to one execution queue on it.
    status_ok = ""
    if refused_from:
        status_ok = f" AND NOT (status = ANY({param(list(refused_from), 'text[]')}))"
    ctes = [
        "ex AS (SELECT lease_owner, status FROM kitaru.executions WHERE id = $1 FOR UPDATE)",
        "ok AS (SELECT COALESCE((SELECT (lease_owner = $2 OR $2 IS NULL)"
        f"{status_ok} FROM ex), false) AS ok)",  # no such execution: nothing is written
        "token AS (INSERT INTO kitaru.commits (token, at) SELECT $3, $4 WHERE (SELECT ok FROM ok))",
    ]
    if artifacts:
        arrays = ", ".join(
            param(list(c), t) for c, t in zip(zip(*artifacts, strict=True), _ARTIFACT_ARRAYS, strict=True)
        )
        ctes.append(
            f"arts AS (INSERT INTO kitaru.artifacts ({_ARTIFACT_COLUMNS}) "
            f"SELECT * FROM unnest({arrays}) WHERE (SELECT ok FROM ok))"
        )
    if journal:
        columns = zip(*(row[1:] for row in journal), strict=True)  # every row's exec_id is $1
        arrays = ", ".join(param(list(c), t) for c, t in zip(columns, _JOURNAL_ARRAYS, strict=True))
        # Ids are drawn in the order of the batch (ORDER BY the array position).
        ctes.append(
            f"jr AS (INSERT INTO kitaru.journal (exec_id, {_JOURNAL_FIELDS}) "
            f"SELECT $1, {_JOURNAL_FIELDS} FROM unnest({arrays}) WITH ORDINALITY "
            f"AS r({_JOURNAL_FIELDS}, n) WHERE (SELECT ok FROM ok) ORDER BY n)"
        )
    if sets:
        assignments = ", ".join(f"{column} = {param(value)}" for column, value in sets)
        ctes.append(
            f"up AS (UPDATE kitaru.executions SET {assignments} WHERE id = $1 AND (SELECT ok FROM ok))"
        )
    sql = (
        f"WITH {', '.join(ctes)} SELECT (SELECT ok FROM ok), EXISTS (SELECT 1 FROM ex), "
        "(SELECT lease_owner FROM ex), (SELECT status FROM ex)"
    )
    return sql, params


def _exec_row(e: ExecutionRecord) -> tuple[Any, ...]:
    return (
        e.id,
        e.flow,
        e.target,
        e.sys_path,
        e.status,
        e.created_at,
        e.updated_at,
        e.error,
        e.result_artifact,
        e.original_exec_id,
        e.lease_owner,
        e.lease_expires_at,
        json.dumps(e.metadata),
    )


def _exec_from_row(row: Any) -> ExecutionRecord:
    return ExecutionRecord(
        id=row[0],
        flow=row[1],
        target=row[2],
        sys_path=row[3],
        status=row[4],
        created_at=row[5],
        updated_at=row[6],
        error=row[7],
        result_artifact=row[8],
        original_exec_id=row[9],
        lease_owner=row[10],
        lease_expires_at=row[11],
        metadata=json.loads(row[12]) if row[12] else {},
    )


def _artifact_from_row(row: Any) -> ArtifactRecord:
    return ArtifactRecord(
        id=row[0],
        exec_id=row[1],
        name=row[2],
        version=row[3],
        type=row[4],
        serializer=row[5],
        data_type=row[6],
        content_hash=row[7],
        size=row[8],
        call_id=row[9],
        created_at=row[10],
        inline=bytes(row[11]) if row[11] is not None else None,
        uri=row[12],
        tags=json.loads(row[13]) if row[13] else [],
    )
