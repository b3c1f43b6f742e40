"""The SQLite state store's executions, journal and artifacts."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
import weakref
from collections.abc import Iterable, Sequence
from typing import Any

from kitaru.errors import (
    KitaruConflictError,
    KitaruError,
    KitaruLeaseError,
    KitaruNotFoundError,
    KitaruStoreError,
)
from kitaru.store import (
    ArtifactRecord,
    ExecutionRecord,
    JournalRecord,
    _rules,
)
from kitaru.store._rows import artifact_row as _artifact_row
from kitaru.store._rows import journal_record
from kitaru.store._rows import journal_row as _journal_row
from kitaru.store.sqlite._connection import _Connection

_EXEC_COLUMNS = (
    "id, flow, target, sys_path, status, created_at, updated_at, error, result_artifact, "
    "original_exec_id, lease_owner, lease_expires_at, metadata"
)
_ARTIFACT_COLUMNS = (
    "id, exec_id, name, version, type, serializer, data_type, content_hash, size, call_id, "
    "created_at, inline, uri, tags"
)


_INSERT_JOURNAL = (
    "INSERT INTO journal (exec_id, kind, call_id, once, seq, name, attempt, artifact_id, data, ts) "
    "VALUES (?,?,?,?,?,?,?,?,?,?)"
)
_JOURNAL_READ = "kind, call_id, seq, name, attempt, artifact_id, data, ts, id"
# One wait's records: two seeks of the journal's one index, (exec_id, kind, once) for the wait's
# once-only records and (exec_id, kind) for a cancel, whatever the journal's length. A single
# WHERE with an OR would make SQLite walk every index entry of the execution instead.
_READ_WAIT = (
    f"SELECT {_JOURNAL_READ} FROM journal WHERE exec_id = ?1 "
    "AND kind IN ('wait_opened', 'wait_answered', 'wait_timed_out') AND once = ?2 "
    f"UNION ALL SELECT {_JOURNAL_READ} FROM journal WHERE exec_id = ?1 AND kind = 'cancel_requested' "
    "ORDER BY id"
)

# Listing: newest first by creation time, ties by id (ids need not sort by time: a caller may
# choose one). The cursor is an execution's id; the page continues after that execution's place,
# found by a scalar subquery on the primary key, so one statement reads the page. Each filter has
# an index ending in (created_at, id) (migration 6), so a page walks one index backwards from the
# cursor and stops after `limit` rows: no scan, no sort. An unknown cursor makes the bound NULL
# (no rows); only an empty page asks whether the cursor exists.
_VERSION = "json_extract(metadata, '$.deployment.version')"
_AFTER_CURSOR = "(created_at, id) < ((SELECT created_at FROM executions WHERE id = ?), ?)"
_NEWEST_FIRST = "ORDER BY created_at DESC, id DESC"
_CURSOR_EXISTS = "SELECT 1 FROM executions WHERE id = ?"


def _input_record(artifact: ArtifactRecord) -> JournalRecord:
    return JournalRecord(kind="input", call_id=artifact.name, artifact_id=artifact.id)


def _exec_from_row(row: Sequence[Any]) -> ExecutionRecord:
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


def _artifact_from_row(row: Sequence[Any]) -> ArtifactRecord:
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
        inline=row[11],
        uri=row[12],
        tags=json.loads(row[13]) if row[13] else [],
    )


class _Executions(_Connection):
    """Executions, leases, commits, waits, the journal and artifacts."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Answers waiting for their group's transaction, per event loop (their futures' loop).
        self._answers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, list[Any]] = (
            weakref.WeakKeyDictionary()
        )

    @staticmethod
    def _check_lease(cur: sqlite3.Cursor, exec_id: str, owner: str | None) -> str:
        """The execution's status, after checking that ``owner`` (if given) holds its lease."""
        row = cur.execute("SELECT lease_owner, status FROM executions WHERE id = ?", (exec_id,)).fetchone()
        if row is None:  # with or without an owner: records of no execution would be orphans
            raise KitaruNotFoundError(f"no execution {exec_id!r}")
        if owner is not None and row[0] != owner:
            raise KitaruLeaseError(
                f"execution {exec_id} is now driven by {row[0] or 'nobody'} (status {row[1]}); "
                "this runner lost its lease and stops without writing."
            )
        return str(row[1])

    # -- executions -------------------------------------------------------------------------

    async def create_execution(
        self,
        execution: ExecutionRecord,
        artifacts: Sequence[ArtifactRecord],
        records: Sequence[JournalRecord] = (),
    ) -> tuple[ExecutionRecord, bool]:
        e = execution
        with self._write() as cur:
            row = cur.execute(f"SELECT {_EXEC_COLUMNS} FROM executions WHERE id = ?", (e.id,)).fetchone()
            if row is not None:
                return _exec_from_row(row), False
            cur.execute(
                f"INSERT INTO executions ({_EXEC_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (
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
                ),
            )
            cur.executemany(
                f"INSERT INTO artifacts ({_ARTIFACT_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                [_artifact_row(a) for a in artifacts],
            )
            cur.executemany(
                _INSERT_JOURNAL,
                [_journal_row(e.id, _input_record(a), e.created_at) for a in artifacts if a.type == "input"],
            )
            cur.executemany(_INSERT_JOURNAL, [_journal_row(e.id, r, e.created_at) for r in records])
        return e, True

    async def get_execution(self, exec_id: str) -> ExecutionRecord | None:
        rows = self._read(f"SELECT {_EXEC_COLUMNS} FROM executions WHERE id = ?", (exec_id,))
        return _exec_from_row(rows[0]) if rows else None

    async def match_execution_ids(self, prefix: str, limit: int = 2) -> list[str]:
        escaped = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        # LIKE ignores ASCII case; the substr comparison makes the match exact, like startswith.
        rows = self._read(
            "SELECT id FROM executions WHERE id LIKE ? ESCAPE '\\' AND substr(id, 1, ?) = ? "
            "ORDER BY id LIMIT ?",
            (escaped + "%", len(prefix), prefix, limit),
        )
        return [r[0] for r in rows]

    async def list_executions(
        self,
        *,
        flow: str | None = None,
        status: str | None = None,
        limit: int = 50,
        version: int | None = None,
        before: str | None = None,
    ) -> list[ExecutionRecord]:
        _rules.check_page_size(limit)
        clauses: list[str] = []
        params: list[Any] = []
        if before is not None:
            clauses.append(_AFTER_CURSOR)
            params += [before, before]
        if flow is not None:
            clauses.append("flow = ?")
            params.append(flow)
        if status is not None:
            clauses.append("status = ?")
            params.append(status)
        if version is not None:
            clauses.append(f"{_VERSION} = ?")
            params.append(version)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        rows = self._read(
            f"SELECT {_EXEC_COLUMNS} FROM executions {where} {_NEWEST_FIRST} LIMIT ?", (*params, limit)
        )
        if not rows and before is not None and not self._read(_CURSOR_EXISTS, (before,)):
            raise _rules.unknown_cursor(before)
        return [_exec_from_row(r) for r in rows]

    async def acquire_lease(
        self,
        exec_id: str,
        owner: str,
        ttl: float,
        *,
        allowed_statuses: Iterable[str],
        set_status: str | None = "running",
    ) -> ExecutionRecord:
        allowed = set(allowed_statuses)
        now = time.time()
        with self._write() as cur:
            row = cur.execute(f"SELECT {_EXEC_COLUMNS} FROM executions WHERE id = ?", (exec_id,)).fetchone()
            if row is None:
                raise KitaruNotFoundError(
                    f"no execution {exec_id!r}. List executions with `kitaru executions list`."
                )
            record = _exec_from_row(row)
            _rules.check_acquirable(exec_id, record.status, allowed)
            _rules.check_takeover(exec_id, record.lease_owner, record.lease_expires_at, owner, now)
            status = set_status or record.status
            cur.execute(
                "UPDATE executions SET lease_owner = ?, lease_expires_at = ?, status = ?, "
                "updated_at = ? WHERE id = ?",
                (owner, now + ttl, status, now, exec_id),
            )
        record.lease_owner, record.lease_expires_at, record.status = owner, now + ttl, status
        record.updated_at = now
        return record

    async def list_recoverable(self, *, limit: int = 100) -> list[ExecutionRecord]:
        now = time.time()
        # Local holders are checked in Python (is their process alive?); the query narrows to them.
        running = self._read(
            f"SELECT {_EXEC_COLUMNS} FROM executions WHERE status = 'running' AND (lease_owner IS "
            "NULL OR lease_expires_at <= ? OR substr(lease_owner, 1, ?) = ?) ORDER BY created_at, id",
            (now, len(_rules.HOST) + 1, _rules.HOST + ":"),
        )
        found = [
            e
            for e in map(_exec_from_row, running)
            if _rules.lease_free(e.lease_owner, e.lease_expires_at, now)
        ]
        # A wait's deadline lives in its `wait_opened` record; the journal index finds each
        # waiting execution's waits and whether they were closed.
        waiting = self._read(
            f"SELECT {_EXEC_COLUMNS} FROM executions e WHERE status = 'waiting' AND EXISTS ("
            "SELECT 1 FROM journal j WHERE j.exec_id = e.id AND j.kind = 'wait_opened' "
            "AND json_extract(j.data, '$.deadline') <= ? AND NOT EXISTS (SELECT 1 FROM journal k "
            "WHERE k.exec_id = e.id AND k.kind IN ('wait_answered', 'wait_timed_out') "
            "AND k.once = j.once)) ORDER BY created_at, id LIMIT ?",
            (now, limit),
        )
        found += map(_exec_from_row, waiting)
        return sorted(found, key=lambda e: (e.created_at, e.id))[:limit]

    async def renew_leases(self, owner: str, exec_ids: Sequence[str], ttl: float) -> dict[str, str]:
        if not exec_ids:
            return {}
        marks = ",".join("?" * len(exec_ids))
        with self._write() as cur:
            cur.execute(
                f"UPDATE executions SET lease_expires_at = ? WHERE lease_owner = ? AND id IN ({marks})",
                (time.time() + ttl, owner, *exec_ids),
            )
            rows = cur.execute(
                f"SELECT id, status FROM executions WHERE id IN ({marks})", tuple(exec_ids)
            ).fetchall()
        return {r[0]: r[1] for r in rows}

    async def commit(
        self,
        exec_id: str,
        records: Sequence[JournalRecord],
        artifacts: Sequence[ArtifactRecord] = (),
        *,
        owner: str | None = None,
        status: str | None = None,
        error: str | None = None,
        result_artifact: str | None = None,
        release_lease: bool = False,
        metadata: dict[str, Any] | None = None,
    ) -> str | None:
        now = time.time()
        try:
            with self._write() as cur:
                current = self._check_lease(cur, exec_id, owner)
                if status is not None and current is not None:
                    _rules.check_status_change(exec_id, current, status)
                if artifacts:
                    cur.executemany(
                        f"INSERT INTO artifacts ({_ARTIFACT_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                        [_artifact_row(a) for a in artifacts],
                    )
                if records:
                    cur.executemany(_INSERT_JOURNAL, [_journal_row(exec_id, r, now) for r in records])
                if metadata:
                    row = cur.execute("SELECT metadata FROM executions WHERE id = ?", (exec_id,)).fetchone()
                    merged = {**(json.loads(row[0]) if row and row[0] else {}), **metadata}
                    cur.execute(
                        "UPDATE executions SET metadata = ? WHERE id = ?",
                        (json.dumps(merged), exec_id),
                    )
                if status is not None or release_lease or result_artifact is not None:
                    sets: list[str] = ["updated_at = ?"]
                    params: list[Any] = [now]
                    if status is not None:
                        sets.append("status = ?")
                        params.append(status)
                        sets.append("error = ?")
                        params.append(error)
                    if result_artifact is not None:
                        sets.append("result_artifact = ?")
                        params.append(result_artifact)
                    if release_lease:
                        sets.append("lease_owner = NULL, lease_expires_at = NULL")
                    cur.execute(f"UPDATE executions SET {', '.join(sets)} WHERE id = ?", (*params, exec_id))
            return status if status is not None and current is not None else current
        except sqlite3.IntegrityError as exc:
            raise KitaruConflictError(
                f"execution {exec_id}: a record already exists for this call ({exc}); another "
                "runner completed it first."
            ) from exc
        except sqlite3.Error as exc:
            raise KitaruStoreError(f"commit to {self.path} failed: {exc}") from exc

    async def suspend(self, exec_id: str, owner: str, waiting_on: Sequence[str]) -> bool:
        with self._write() as cur:
            current = self._check_lease(cur, exec_id, owner)
            _rules.check_status_change(exec_id, current or "", "waiting")
            if waiting_on:
                marks = ",".join("?" * len(waiting_on))
                answered = cur.execute(
                    "SELECT 1 FROM journal WHERE exec_id = ? AND kind = 'wait_answered' "
                    f"AND once IN ({marks}) LIMIT 1",
                    (exec_id, *waiting_on),
                ).fetchone()
                if answered:
                    return False
            cur.execute(
                "UPDATE executions SET status = 'waiting', lease_owner = NULL, "
                "lease_expires_at = NULL, updated_at = ? WHERE id = ?",
                (time.time(), exec_id),
            )
        return True

    async def answer_wait(
        self,
        exec_id: str,
        record: JournalRecord,
        artifact: ArtifactRecord,
        *,
        owner: str,
        ttl: float,
        take_lease: bool,
    ) -> bool:
        """Answers awaited on an event loop are group-committed: those asked for in one turn of
        the loop (a burst of requests is read in one) are written after it, in one transaction,
        each with the statements and checks it would have alone; each caller returns once that
        committed, with its own outcome. A transaction that fails as a whole is written again
        answer by answer. A sync caller (run inline, without a loop to wait on) writes at once."""
        from kitaru._portal import running_inline

        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if loop is None or running_inline():  # a sync caller: nothing to wait for, write it now
            with self._write() as cur:
                now = time.time()
                return self._answer_in(cur, exec_id, record, artifact, owner, ttl, take_lease, now=now)
        pending = self._answers.get(loop)
        if pending is None:
            pending = self._answers[loop] = []
        answer = (exec_id, record, artifact, owner, ttl, take_lease, loop.create_future())
        pending.append(answer)
        if len(pending) == 1:
            loop.call_soon(self._write_answers, loop)
        took: bool = await answer[-1]
        return took

    def _write_answers(self, loop: asyncio.AbstractEventLoop) -> None:
        answers = self._answers.pop(loop, [])
        outcomes: list[tuple[bool, BaseException | None]] = []
        try:
            with self._write() as cur:
                now = time.time()
                for a in answers:
                    try:
                        outcomes.append((self._answer_in(cur, *a[:6], now=now), None))
                    except KitaruError as exc:  # raised before that answer wrote anything
                        outcomes.append((False, exc))
        except KitaruError as exc:  # the database itself refused (locked, full): the same for all
            outcomes = [(False, exc)] * len(answers)
        except Exception as exc:
            if len(answers) == 1:
                outcomes = [(False, exc)]
            else:  # one answer broke the transaction (a driver error): each on its own
                outcomes = []
                for a in answers:
                    try:
                        with self._write() as cur:
                            outcomes.append((self._answer_in(cur, *a[:6], now=time.time()), None))
                    except Exception as one:
                        outcomes.append((False, one))
        for a, (took, error) in zip(answers, outcomes, strict=True):
            future = a[-1]
            if future.done():  # its caller went away
                continue
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(took)

    @staticmethod
    def _answer_in(
        cur: sqlite3.Cursor,
        exec_id: str,
        record: JournalRecord,
        artifact: ArtifactRecord,
        owner: str,
        ttl: float,
        take_lease: bool,
        *,
        now: float,
    ) -> bool:
        """One answer inside the caller's write transaction: every check before the first write."""
        row = cur.execute(
            "SELECT status, lease_owner, lease_expires_at FROM executions WHERE id = ?",
            (exec_id,),
        ).fetchone()
        if row is None:
            raise KitaruNotFoundError(f"no execution {exec_id!r}")
        status, holder, expires = row
        _rules.check_answerable(exec_id, status)
        # By (exec_id, kind, once), the index: `call_id = ?` read every record of the execution.
        kinds = {
            r[0]
            for r in cur.execute(
                "SELECT kind FROM journal WHERE exec_id = ? "
                "AND kind IN ('wait_opened', 'wait_answered', 'wait_timed_out') AND once = ?",
                (exec_id, record.call_id),
            ).fetchall()
        }
        _rules.check_wait_open(exec_id, record.call_id, kinds)
        cur.execute(
            f"INSERT INTO artifacts ({_ARTIFACT_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            _artifact_row(artifact),
        )
        cur.execute(_INSERT_JOURNAL, _journal_row(exec_id, record, now))
        if take_lease and status == "waiting" and _rules.lease_free(holder, expires, now):
            cur.execute(
                "UPDATE executions SET status = 'running', lease_owner = ?, "
                "lease_expires_at = ?, updated_at = ? WHERE id = ?",
                (owner, now + ttl, now, exec_id),
            )
            return True
        return False

    async def cancel(self, exec_id: str) -> ExecutionRecord:
        now = time.time()
        with self._write() as cur:
            row = cur.execute(f"SELECT {_EXEC_COLUMNS} FROM executions WHERE id = ?", (exec_id,)).fetchone()
            if row is None:
                raise KitaruNotFoundError(f"no execution {exec_id!r}")
            record = _exec_from_row(row)
            _rules.check_cancellable(exec_id, record.status)
            # A waiting execution has no runner: it is cancelled now. A running one is marked, and
            # its runner stops at the next checkpoint boundary (it sees the status on lease renewal).
            cur.execute(
                "UPDATE executions SET status = 'cancelled', updated_at = ?, lease_owner = "
                "CASE WHEN status = 'waiting' THEN NULL ELSE lease_owner END WHERE id = ?",
                (now, exec_id),
            )
            cur.execute(
                "INSERT INTO journal (exec_id, kind, ts) VALUES (?, 'cancel_requested', ?)",
                (exec_id, now),
            )
        record.status = "cancelled"
        return record

    # -- journal and artifacts ----------------------------------------------------------------

    async def read_journal(self, exec_id: str, after: int = 0) -> list[JournalRecord]:
        sql = f"SELECT {_JOURNAL_READ} FROM journal WHERE exec_id = ?"
        rows = (
            self._read(f"{sql} AND id > ? ORDER BY id", (exec_id, after))
            if after
            else self._read(f"{sql} ORDER BY id", (exec_id,))
        )
        return [journal_record(r) for r in rows]

    async def read_wait(self, exec_id: str, name: str) -> list[JournalRecord]:
        return [journal_record(r) for r in self._read(_READ_WAIT, (exec_id, name))]

    async def get_artifact(self, artifact_id: str) -> ArtifactRecord | None:
        rows = self._read(f"SELECT {_ARTIFACT_COLUMNS} FROM artifacts WHERE id = ?", (artifact_id,))
        return _artifact_from_row(rows[0]) if rows else None

    async def list_artifacts(
        self, exec_id: str, *, name: str | None = None, type: str | None = None
    ) -> list[ArtifactRecord]:
        columns = ", ".join(f"a.{c.strip()}" for c in _ARTIFACT_COLUMNS.split(","))
        sql = (
            f"SELECT {columns} FROM journal j JOIN artifacts a ON a.id = j.artifact_id "
            "WHERE j.exec_id = ? AND j.kind != 'load'"
        )
        params: list[Any] = [exec_id]
        if name is not None:
            sql += " AND a.name = ?"
            params.append(name)
        if type is not None:
            sql += " AND a.type = ?"
            params.append(type)
        rows = self._read(sql + " GROUP BY a.id ORDER BY MIN(j.id)", params)
        return [_artifact_from_row(r) for r in rows]
