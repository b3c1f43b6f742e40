"""The PostgreSQL state store's executions, journal and artifacts."""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Awaitable, Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from kitaru.errors import (
    KitaruError,
    KitaruLeaseError,
    KitaruNotFoundError,
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
from kitaru.store.postgres._batches import Batches, Call, settle
from kitaru.store.postgres._connection import _Attempt, _Connection
from kitaru.store.postgres._statements import (
    _ARTIFACT_ARRAYS,
    _ARTIFACT_COLUMNS,
    _EXEC_COLUMNS,
    _INSERT_ARTIFACT,
    _INSERT_EXECUTION,
    _INSERT_JOURNAL,
    _JOURNAL_ARRAYS,
    _JOURNAL_FIELDS,
    _LOCK_EXECUTION,
    _LOCK_EXECUTIONS,
    _artifact_from_row,
    _commit_statement,
    _exec_from_row,
    _exec_row,
)

# Listing: newest first by creation time, ties by id (ids need not sort by time: a caller may
# choose one). The cursor is an execution's id; the scalar subquery on the primary key finds its
# place (an InitPlan, run once), so the row comparison is an index bound and one statement reads
# the page. Each filter has an index ending in (created_at, id) (migration 7): a page walks one
# backwards from the cursor and stops after `limit` rows. An unknown cursor makes the bound NULL
# (no rows); only an empty page asks whether the cursor exists.
_VERSION = "(metadata::jsonb -> 'deployment' ->> 'version')"
_AFTER_CURSOR = "(created_at, id) < ((SELECT created_at FROM kitaru.executions WHERE id = ${n}), ${n})"
_NEWEST_FIRST = "ORDER BY created_at DESC, id DESC"
_CURSOR_EXISTS = "SELECT 1 FROM kitaru.executions WHERE id = $1"


@dataclass(slots=True, frozen=True)
class _Answer:
    """One caller's answer waiting for its group's commit."""

    exec_id: str
    record: JournalRecord
    artifact: ArtifactRecord
    owner: str
    ttl: float
    take_lease: bool


#: How many answer groups one loop writes at once (each on its own connection), and the most
#: answers one group takes.
_WRITERS = 3
_WRITE_GROUP = 50


#: How many grouped reads of one kind (journals, waits) one loop runs at once, and how many reads
#: one query serves.
_READERS = 4
_READ_GROUP = 100
_JOURNAL_READ = "kind, call_id, seq, name, attempt, artifact_id, data, ts, id, exec_id"

# The records of the asked waits: the wait's once-only records through `journal_once`, a cancel
# through `journal_cancel` (a BitmapOr of the two), never the rest of a journal. A group asks for
# every name in every execution; the few records of another pair are dropped in Python.
_READ_WAITS = (
    f"SELECT {_JOURNAL_READ} FROM kitaru.journal WHERE exec_id = ANY($1::text[]) "
    "AND (once = ANY($2::text[]) OR kind = 'cancel_requested') "
    "AND kind IN ('wait_opened', 'wait_answered', 'wait_timed_out', 'cancel_requested') "
    "ORDER BY exec_id, id"
)

_Key = TypeVar("_Key", bound=Hashable)


def _grouped_reads(
    fetch: Callable[[list[_Key]], Awaitable[dict[_Key, list[Any]]]], what: str
) -> Batches[_Key, list[Any]]:
    """Reads of one kind, grouped: ``fetch`` gets up to ``_READ_GROUP`` distinct keys in one query
    and returns the rows of each; a key it leaves out has none."""

    async def read(batch: list[Call[_Key, list[Any]]]) -> None:
        rows = await fetch(list(dict.fromkeys(key for key, _ in batch)))
        for key, future in batch:
            settle(future, rows.get(key, []))

    return Batches(read, workers=_READERS, size=_READ_GROUP, what=what)


class _Executions(_Connection):
    """Executions, leases, commits, waits and artifacts (every write locks the execution's row)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._answers: Batches[_Answer, bool] = Batches(
            self._write_answers, workers=_WRITERS, size=_WRITE_GROUP, what="answer's write"
        )
        self._journal_reads = _grouped_reads(self._fetch_journals, "journal read")
        self._wait_reads = _grouped_reads(self._fetch_waits, "wait read")

    @staticmethod
    async def _lock(conn: Any, attempt: _Attempt, exec_id: str) -> ExecutionRecord | None:
        """Lock the execution's row for this transaction and record its token (None if there is no
        such execution)."""
        row = await conn.fetchrow(_LOCK_EXECUTION, exec_id, attempt.token, time.time())
        return _exec_from_row(row) if row is not None else None

    # -- executions -------------------------------------------------------------------------

    async def create_execution(
        self,
        execution: ExecutionRecord,
        artifacts: Sequence[ArtifactRecord],
        records: Sequence[JournalRecord] = (),
    ) -> tuple[ExecutionRecord, bool]:
        e = execution
        journal = [
            _journal_row(e.id, JournalRecord(kind="input", call_id=a.name, artifact_id=a.id), e.created_at)
            for a in artifacts
            if a.type == "input"
        ]
        journal += [_journal_row(e.id, r, e.created_at) for r in records]

        async def body(conn: Any, attempt: _Attempt) -> tuple[ExecutionRecord, bool]:
            if not await conn.fetchval(_INSERT_EXECUTION, *_exec_row(e), attempt.token, time.time()):
                # The id exists: an idempotent start.
                row = await conn.fetchrow(
                    f"SELECT {_EXEC_COLUMNS} FROM kitaru.executions WHERE id = $1", e.id
                )
                return _exec_from_row(row), False
            if artifacts:
                await conn.executemany(_INSERT_ARTIFACT, [_artifact_row(a) for a in artifacts])
            if journal:
                await conn.executemany(_INSERT_JOURNAL, journal)
            return e, True

        return await self._write(body, f"creating execution {e.id}")

    async def get_execution(self, exec_id: str) -> ExecutionRecord | None:
        rows = await self._read(f"SELECT {_EXEC_COLUMNS} FROM kitaru.executions WHERE id = $1", exec_id)
        return _exec_from_row(rows[0]) if rows else None

    async def match_execution_ids(self, prefix: str, limit: int = 2) -> list[str]:
        # A range on the primary key (ids sort bytewise) the index can serve, and an exact test.
        rows = await self._read(
            "SELECT id FROM kitaru.executions WHERE id >= $1 AND id < $1 || chr(1114111) "
            "AND starts_with(id, $1) ORDER BY id LIMIT $2",
            prefix,
            limit,
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
            params.append(before)
            clauses.append(_AFTER_CURSOR.format(n=len(params)))
        if flow is not None:
            params.append(flow)
            clauses.append(f"flow = ${len(params)}")
        if status is not None:
            params.append(status)
            clauses.append(f"status = ${len(params)}")
        if version is not None:
            params.append(str(version))
            clauses.append(f"{_VERSION} = ${len(params)}")
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        params.append(limit)
        sql = f"SELECT {_EXEC_COLUMNS} FROM kitaru.executions {where} {_NEWEST_FIRST} LIMIT ${len(params)}"
        rows = await self._read(sql, *params)
        if not rows and before is not None and not await self._read(_CURSOR_EXISTS, before):
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

        async def body(conn: Any, attempt: _Attempt) -> ExecutionRecord:
            now = time.time()
            record = await self._lock(conn, attempt, exec_id)
            if record is None:
                raise KitaruNotFoundError(
                    f"no execution {exec_id!r}. List executions with `kitaru executions list`."
                )
            _rules.check_acquirable(exec_id, record.status, allowed)
            _rules.check_takeover(exec_id, record.lease_owner, record.lease_expires_at, owner, now)
            status = set_status or record.status
            await conn.execute(
                "UPDATE kitaru.executions SET lease_owner = $1, lease_expires_at = $2, status = $3, "
                "updated_at = $4 WHERE id = $5",
                owner,
                now + ttl,
                status,
                now,
                exec_id,
            )
            record.lease_owner, record.lease_expires_at, record.status = owner, now + ttl, status
            record.updated_at = now
            return record

        return await self._write(body, f"taking the lease of execution {exec_id}")

    async def list_recoverable(self, *, limit: int = 100) -> list[ExecutionRecord]:
        now = time.time()
        # Local holders are checked in Python (is their process alive?); the query narrows to them.
        running = await self._read(
            f"SELECT {_EXEC_COLUMNS} FROM kitaru.executions WHERE status = 'running' AND "
            "(lease_owner IS NULL OR lease_expires_at <= $1 OR starts_with(lease_owner, $2)) "
            "ORDER BY created_at, id",
            now,
            _rules.HOST + ":",
        )
        found = [
            e
            for e in map(_exec_from_row, running)
            if _rules.lease_free(e.lease_owner, e.lease_expires_at, now)
        ]
        # A wait's deadline lives in its `wait_opened` record; the once-index finds each waiting
        # execution's waits and whether they were closed.
        waiting = await self._read(
            f"SELECT {_EXEC_COLUMNS} FROM kitaru.executions e WHERE status = 'waiting' AND "
            "EXISTS (SELECT 1 FROM kitaru.journal j WHERE j.exec_id = e.id AND "
            "j.kind = 'wait_opened' AND j.once IS NOT NULL AND "
            "(j.data::jsonb ->> 'deadline')::float8 <= $1 AND NOT EXISTS (SELECT 1 FROM "
            "kitaru.journal k WHERE k.exec_id = e.id AND k.kind IN ('wait_answered', "
            "'wait_timed_out') AND k.once = j.once)) ORDER BY created_at, id LIMIT $2",
            now,
            limit,
        )
        found += map(_exec_from_row, waiting)
        return sorted(found, key=lambda e: (e.created_at, e.id))[:limit]

    async def renew_leases(self, owner: str, exec_ids: Sequence[str], ttl: float) -> dict[str, str]:
        if not exec_ids:
            return {}
        ids = list(exec_ids)
        await self._ready()

        async def op() -> dict[str, str]:
            # Setting an expiry is idempotent: safe to retry whatever happened to a previous try.
            async with self._pool.acquire() as conn:
                rows = await conn.fetch(
                    "WITH renewed AS (UPDATE kitaru.executions SET lease_expires_at = $1 "
                    "WHERE lease_owner = $2 AND id = ANY($3::text[]) RETURNING id) "
                    "SELECT id, status FROM kitaru.executions WHERE id = ANY($3::text[])",
                    time.time() + ttl,
                    owner,
                    ids,
                )
            return {r[0]: r[1] for r in rows}

        return await self._retrying(op, "renewing leases")

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
        journal = [_journal_row(exec_id, r, now) for r in records]
        artifact_rows = [_artifact_row(a) for a in artifacts]
        sets: list[tuple[str, Any]] = []
        if status is not None or release_lease or result_artifact is not None:
            sets.append(("updated_at", now))
            if status is not None:
                sets += [("status", status), ("error", error)]
            if result_artifact is not None:
                sets.append(("result_artifact", result_artifact))
            if release_lease:
                sets += [("lease_owner", None), ("lease_expires_at", None)]
        what = f"committing to execution {exec_id}"

        def lost_lease(holder: str | None, status: str) -> KitaruError:
            return KitaruLeaseError(
                f"execution {exec_id} is now driven by {holder or 'nobody'} (status {status}); this "
                "runner lost its lease and stops without writing."
            )

        refused = _rules.refused_from(status) if status is not None else []

        async def fast(conn: Any, attempt: _Attempt) -> str | None:
            # The hot path: one statement, so a checkpoint costs BEGIN, this, COMMIT.
            sql, params = _commit_statement(
                exec_id, owner, journal, artifact_rows, sets, attempt.token, refused
            )
            ok, found, holder, current = await conn.fetchrow(sql, *params)
            if not ok:
                if not found:
                    raise KitaruNotFoundError(f"no execution {exec_id!r}")
                if owner is not None and holder != owner:
                    raise lost_lease(holder, current)
                _rules.check_status_change(exec_id, current, status or current)
            return status if status is not None and found else current

        async def merging(conn: Any, attempt: _Attempt) -> str | None:
            # Metadata is merged with what is stored, read under the row lock.
            record = await self._lock(conn, attempt, exec_id)
            if record is None:
                raise KitaruNotFoundError(f"no execution {exec_id!r}")
            if owner is not None and record.lease_owner != owner:
                raise lost_lease(record.lease_owner, record.status)
            if status is not None:
                _rules.check_status_change(exec_id, record.status, status)
            if artifact_rows:
                await conn.executemany(_INSERT_ARTIFACT, artifact_rows)
            if journal:
                await conn.executemany(_INSERT_JOURNAL, journal)
            changes = [*sets, ("metadata", json.dumps({**record.metadata, **(metadata or {})}))]
            assignments = ", ".join(f"{column} = ${n}" for n, (column, _) in enumerate(changes, start=2))
            await conn.execute(
                f"UPDATE kitaru.executions SET {assignments} WHERE id = $1",
                exec_id,
                *(value for _, value in changes),
            )
            return status or record.status

        if metadata:
            return await self._write(merging, what)
        return await self._write(fast, what, single=True)

    async def suspend(self, exec_id: str, owner: str, waiting_on: Sequence[str]) -> bool:
        waits = list(waiting_on)

        async def body(conn: Any, attempt: _Attempt) -> bool:
            record = await self._lock(conn, attempt, exec_id)
            if record is None:
                raise KitaruNotFoundError(f"no execution {exec_id!r}")
            if record.lease_owner != owner:
                raise KitaruLeaseError(
                    f"execution {exec_id} is now driven by {record.lease_owner or 'nobody'} (status "
                    f"{record.status}); this runner lost its lease and stops without writing."
                )
            _rules.check_status_change(exec_id, record.status, "waiting")
            if waits and await conn.fetchval(
                "SELECT 1 FROM kitaru.journal WHERE exec_id = $1 AND kind = 'wait_answered' "
                "AND once = ANY($2::text[]) LIMIT 1",
                exec_id,
                waits,
            ):
                return False
            await conn.execute(
                "UPDATE kitaru.executions SET status = 'waiting', lease_owner = NULL, "
                "lease_expires_at = NULL, updated_at = $1 WHERE id = $2",
                time.time(),
                exec_id,
            )
            return True

        return await self._write(body, f"suspending execution {exec_id}")

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
        """Answers are group-committed: the answers that arrive on this loop while the groups
        before are being written go together in the next one (up to ``_WRITE_GROUP``), in one
        transaction of five round trips whatever its size (lock every row, read their waits'
        records, write, commit), instead of seven each. Each caller returns only once its own
        answer committed, and with its own outcome (an answer refused by the rules does not hold
        back the others)."""
        return await self._answers(_Answer(exec_id, record, artifact, owner, ttl, take_lease))

    async def _write_answers(self, batch: list[Call[_Answer, bool]]) -> None:
        """Write one group of answers.

        Up to ``_WRITERS`` groups are written at once, each of at most ``_WRITE_GROUP`` answers: the
        first answers of a burst are written while the server still reads and checks the later
        ones, so the database works beside the event loop instead of after it. Concurrent groups
        lock their executions' rows in id order (no deadlock), and a group reads its waits'
        records after its locks: two groups answering one wait cannot both take it."""
        if len(batch) == 1:
            ((a, future),) = batch
            settle(future, await self._answer_one(a))
            return
        answers = [a for a, _ in batch]
        try:
            outcomes = await self._write(
                functools.partial(self._answer_group, answers=answers), f"answering {len(answers)} waits"
            )
        except Exception:
            # A group that fails as a whole (not for one answer's rules: those were checked inside)
            # is written again answer by answer, so each caller gets its own outcome.
            for a, future in batch:
                try:
                    settle(future, await self._answer_one(a))
                except Exception as one:
                    settle(future, error=one)
            return
        for (_, future), (took, error) in zip(batch, outcomes, strict=True):
            settle(future, took, error)

    async def _answer_group(
        self, conn: Any, attempt: _Attempt, *, answers: Sequence[_Answer]
    ) -> list[tuple[bool, Exception | None]]:
        now = time.time()
        ids = sorted({a.exec_id for a in answers})
        # Rows locked in id order, so concurrent groups (other replicas) never deadlock.
        rows = await conn.fetch(_LOCK_EXECUTIONS, ids, attempt.token, now)
        executions: dict[str, list[Any]] = {r[0]: [r[1], r[2], r[3]] for r in rows}
        # Read after the lock (a statement of its own, so its snapshot sees what the holders of the
        # locks committed before).
        kinds: dict[tuple[str, str], set[str]] = {}
        for r in await conn.fetch(
            "SELECT exec_id, once, kind FROM kitaru.journal WHERE exec_id = ANY($1::text[]) "
            "AND once = ANY($2::text[]) AND kind IN ('wait_opened', 'wait_answered', 'wait_timed_out')",
            ids,
            sorted({a.record.call_id or "" for a in answers}),
        ):
            kinds.setdefault((r[0], r[1]), set()).add(r[2])
        outcomes: list[tuple[bool, Exception | None]] = []
        artifacts: list[tuple[Any, ...]] = []
        journal: list[tuple[Any, ...]] = []
        leases: list[tuple[str, str, float]] = []
        for a in answers:
            execution = executions.get(a.exec_id)
            try:
                if execution is None:
                    raise KitaruNotFoundError(f"no execution {a.exec_id!r}")
                status, holder, expires = execution
                _rules.check_answerable(a.exec_id, status)
                seen = kinds.setdefault((a.exec_id, a.record.call_id or ""), set())
                _rules.check_wait_open(a.exec_id, a.record.call_id, seen)
            except KitaruError as exc:
                outcomes.append((False, exc))
                continue
            seen.add("wait_answered")  # a second answer to it in this group is refused
            artifacts.append(_artifact_row(a.artifact))
            journal.append(_journal_row(a.exec_id, a.record, now))
            took = a.take_lease and status == "waiting" and _rules.lease_free(holder, expires, now)
            if took:
                execution[:] = ["running", a.owner, now + a.ttl]
                leases.append((a.exec_id, a.owner, now + a.ttl))
            outcomes.append((took, None))
        if journal:
            params: list[Any] = []

            def arrays(rows: Sequence[tuple[Any, ...]], types: Sequence[str]) -> str:
                out = []
                for column, type_ in zip(zip(*rows, strict=True), types, strict=True):
                    params.append(list(column))
                    out.append(f"${len(params)}::{type_}")
                return ", ".join(out)

            arts = arrays(artifacts, _ARTIFACT_ARRAYS)
            records = arrays(journal, ("text[]", *_JOURNAL_ARRAYS))
            sql = (
                f"WITH arts AS (INSERT INTO kitaru.artifacts ({_ARTIFACT_COLUMNS}) "
                f"SELECT * FROM unnest({arts})), "
                f"jr AS (INSERT INTO kitaru.journal (exec_id, {_JOURNAL_FIELDS}) SELECT exec_id, "
                f"{_JOURNAL_FIELDS} FROM unnest({records}) WITH ORDINALITY AS r(exec_id, "
                f"{_JOURNAL_FIELDS}, n) ORDER BY n) "
            )
            if leases:
                lease_arrays = arrays(leases, ("text[]", "text[]", "float8[]"))
                params.append(now)
                sql += (
                    "UPDATE kitaru.executions e SET status = 'running', lease_owner = u.owner, "
                    f"lease_expires_at = u.expires, updated_at = ${len(params)} "
                    f"FROM unnest({lease_arrays}) AS u(id, owner, expires) WHERE e.id = u.id"
                )
            else:
                sql += "SELECT 1"
            await conn.execute(sql, *params)
        return outcomes

    async def _answer_one(self, a: _Answer) -> bool:
        exec_id, record = a.exec_id, a.record

        async def body(conn: Any, attempt: _Attempt) -> bool:
            now = time.time()
            execution = await self._lock(conn, attempt, exec_id)
            if execution is None:
                raise KitaruNotFoundError(f"no execution {exec_id!r}")
            _rules.check_answerable(exec_id, execution.status)
            kinds = {
                r[0]
                for r in await conn.fetch(
                    "SELECT kind FROM kitaru.journal WHERE exec_id = $1 AND once = $2 "
                    "AND kind IN ('wait_opened', 'wait_answered', 'wait_timed_out')",
                    exec_id,
                    record.call_id,
                )
            }
            _rules.check_wait_open(exec_id, record.call_id, kinds)
            await conn.execute(_INSERT_ARTIFACT, *_artifact_row(a.artifact))
            await conn.execute(_INSERT_JOURNAL, *_journal_row(exec_id, record, now))
            holder, expires = execution.lease_owner, execution.lease_expires_at
            if a.take_lease and execution.status == "waiting" and _rules.lease_free(holder, expires, now):
                await conn.execute(
                    "UPDATE kitaru.executions SET status = 'running', lease_owner = $1, "
                    "lease_expires_at = $2, updated_at = $3 WHERE id = $4",
                    a.owner,
                    now + a.ttl,
                    now,
                    exec_id,
                )
                return True
            return False

        return await self._write(body, f"answering wait {record.call_id!r} of execution {exec_id}")

    async def cancel(self, exec_id: str) -> ExecutionRecord:
        async def body(conn: Any, attempt: _Attempt) -> ExecutionRecord:
            now = time.time()
            record = await self._lock(conn, attempt, exec_id)
            if record is None:
                raise KitaruNotFoundError(f"no execution {exec_id!r}")
            _rules.check_cancellable(exec_id, record.status)
            # A waiting execution has no runner: it is cancelled now. A running one is marked, and
            # its runner stops at the next checkpoint boundary (it sees the status on lease renewal).
            await conn.execute(
                "UPDATE kitaru.executions SET status = 'cancelled', updated_at = $1, lease_owner = "
                "CASE WHEN status = 'waiting' THEN NULL ELSE lease_owner END WHERE id = $2",
                now,
                exec_id,
            )
            await conn.execute(
                "INSERT INTO kitaru.journal (exec_id, kind, ts) VALUES ($1, 'cancel_requested', $2)",
                exec_id,
                now,
            )
            record.status = "cancelled"
            return record

        return await self._write(body, f"cancelling execution {exec_id}")

    # -- journal and artifacts ----------------------------------------------------------------

    async def read_journal(self, exec_id: str, after: int = 0) -> list[JournalRecord]:
        """Whole journals are read grouped like answers: those asked for on this loop while
        earlier reads are out go in one query (``exec_id = ANY(...)``), so a burst of answers, or
        many drivers resuming at once, costs a few round trips instead of one each. A read
        ``after`` a record (a follower's) is its own query over ``journal_exec``'s range."""
        if after:
            rows = await self._read(
                f"SELECT {_JOURNAL_READ} FROM kitaru.journal WHERE exec_id = $1 AND id > $2 ORDER BY id",
                exec_id,
                after,
            )
            return [journal_record(r) for r in rows]
        return [journal_record(r) for r in await self._journal_reads(exec_id)]

    async def _fetch_journals(self, ids: list[str]) -> dict[str, list[Any]]:
        rows = await self._read(
            f"SELECT {_JOURNAL_READ} FROM kitaru.journal WHERE exec_id = ANY($1::text[]) "
            "ORDER BY exec_id, id",  # the index's order: each journal in its order
            sorted(ids),
        )
        by_execution: dict[str, list[Any]] = {}
        for r in rows:
            by_execution.setdefault(r[9], []).append(r)
        return by_execution

    async def read_wait(self, exec_id: str, name: str) -> list[JournalRecord]:
        """Grouped like journal reads: the waits asked for on this loop while earlier reads are out
        go in one query, so a burst of answers to the server costs a few round trips."""
        return [journal_record(r) for r in await self._wait_reads((exec_id, name))]

    async def _fetch_waits(self, keys: list[tuple[str, str]]) -> dict[tuple[str, str], list[Any]]:
        rows = await self._read(
            _READ_WAITS, sorted({exec_id for exec_id, _ in keys}), sorted({name for _, name in keys})
        )
        by_execution: dict[str, list[Any]] = {}
        for r in rows:
            by_execution.setdefault(r[9], []).append(r)
        return {
            (exec_id, name): [
                r for r in by_execution.get(exec_id, ()) if r[1] == name or r[0] == "cancel_requested"
            ]
            for exec_id, name in keys
        }

    async def get_artifact(self, artifact_id: str) -> ArtifactRecord | None:
        rows = await self._read(
            f"SELECT {_ARTIFACT_COLUMNS} FROM kitaru.artifacts WHERE id = $1", artifact_id
        )
        return _artifact_from_row(rows[0]) if rows else None

    async def list_artifacts(
        self, exec_id: str, *, name: str | None = None, type: str | None = None
    ) -> list[ArtifactRecord]:
        columns = ", ".join(f"a.{c.strip()}" for c in _ARTIFACT_COLUMNS.split(","))
        sql = (
            f"SELECT {columns} FROM kitaru.journal j JOIN kitaru.artifacts a ON a.id = j.artifact_id "
            "WHERE j.exec_id = $1 AND j.kind != 'load'"
        )
        params: list[Any] = [exec_id]
        if name is not None:
            params.append(name)
            sql += f" AND a.name = ${len(params)}"
        if type is not None:
            params.append(type)
            sql += f" AND a.type = ${len(params)}"
        rows = await self._read(sql + " GROUP BY a.id ORDER BY MIN(j.id)", *params)
        return [_artifact_from_row(r) for r in rows]
