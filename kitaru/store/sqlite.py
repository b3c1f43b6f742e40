"""The embedded state store: one SQLite file in WAL mode.

WAL with ``synchronous=NORMAL`` survives a killed process (the case kitaru exists for) without an
fsync per commit; ``KITARU_SQLITE_SYNC=FULL`` adds the fsync for power-loss durability. Writes use
``BEGIN IMMEDIATE`` so concurrent processes queue on the write lock instead of failing a lock upgrade.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import quote

from kitaru.errors import (
    KitaruConflictError,
    KitaruLeaseError,
    KitaruNotFoundError,
    KitaruStoreError,
)
from kitaru.store import (
    ONCE_ONLY_KINDS,
    ApiKeyRecord,
    ArtifactRecord,
    DeploymentRecord,
    ExecutionRecord,
    JournalRecord,
    TagMove,
    TagRecord,
    TagRequest,
    _rules,
)
from kitaru.store._rules import lease_holder_alive

__all__ = ["SQLiteStateStore", "lease_holder_alive"]


# Each entry moves the schema one version forward; the applied version lives in `meta`.
#
# Every b-tree a commit touches costs a WAL page write (~15 us here), and a checkpoint commit is
# the hot path, so the layout keeps them few: the journal's one index serves both lookups by
# execution and the once-only rule (`once` holds the call id for once-only kinds and NULL for the
# rest, and NULLs never collide in a UNIQUE index); artifacts are one clustered b-tree, listed
# per execution through the journal records that reference them.
_MIGRATIONS: list[str] = [
    """
    CREATE TABLE executions (
        id TEXT PRIMARY KEY,
        flow TEXT NOT NULL,
        target TEXT NOT NULL,
        sys_path TEXT,
        status TEXT NOT NULL,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        error TEXT,
        result_artifact TEXT,
        original_exec_id TEXT,
        lease_owner TEXT,
        lease_expires_at REAL,
        metadata TEXT NOT NULL DEFAULT '{}'
    );
    CREATE INDEX executions_flow ON executions (flow, id);
    CREATE INDEX executions_status ON executions (status, id);
    CREATE TABLE journal (
        id INTEGER PRIMARY KEY,
        exec_id TEXT NOT NULL,
        kind TEXT NOT NULL,
        call_id TEXT,
        once TEXT,
        seq INTEGER,
        name TEXT,
        attempt INTEGER,
        artifact_id TEXT,
        data TEXT,
        ts REAL NOT NULL
    );
    CREATE UNIQUE INDEX journal_exec ON journal (exec_id, kind, once);
    CREATE TABLE artifacts (
        id TEXT PRIMARY KEY,
        exec_id TEXT NOT NULL,
        name TEXT NOT NULL,
        version INTEGER NOT NULL,
        type TEXT NOT NULL,
        serializer TEXT NOT NULL,
        data_type TEXT NOT NULL,
        content_hash TEXT NOT NULL,
        size INTEGER NOT NULL,
        call_id TEXT,
        created_at REAL NOT NULL,
        inline BLOB,
        uri TEXT
    ) WITHOUT ROWID;
    """,
    # Deployments (issue 11): versions are immutable rows; a tag is one row per (flow, tag); every
    # move of a tag is a row of `tag_moves`, written in the same transaction as the move.
    """
    CREATE TABLE deployments (
        flow TEXT NOT NULL,
        version INTEGER NOT NULL,
        target TEXT NOT NULL,
        archive_key TEXT NOT NULL,
        archive_sha256 TEXT NOT NULL,
        created_by TEXT NOT NULL,
        created_at REAL NOT NULL,
        image TEXT,
        stack TEXT,
        message TEXT,
        requirements TEXT NOT NULL DEFAULT '{}',
        PRIMARY KEY (flow, version)
    ) WITHOUT ROWID;
    CREATE TABLE tags (
        flow TEXT NOT NULL,
        tag TEXT NOT NULL,
        version INTEGER NOT NULL,
        weight INTEGER,
        updated_at REAL NOT NULL,
        PRIMARY KEY (flow, tag)
    ) WITHOUT ROWID;
    CREATE TABLE tag_moves (
        id INTEGER PRIMARY KEY,
        flow TEXT NOT NULL,
        tag TEXT NOT NULL,
        version INTEGER,
        previous INTEGER,
        weight INTEGER,
        action TEXT NOT NULL,
        who TEXT NOT NULL,
        ts REAL NOT NULL
    );
    CREATE INDEX tag_moves_flow ON tag_moves (flow, tag, id);
    """,
    # The team server's API keys (hashes only; `kitaru server keys`).
    """
    CREATE TABLE api_keys (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        key_hash TEXT NOT NULL,
        scopes TEXT NOT NULL,
        created_at REAL NOT NULL,
        revoked_at REAL
    );
    """,
]

_DEPLOYMENT_COLUMNS = (
    "flow, version, target, archive_key, archive_sha256, created_by, created_at, image, stack, "
    "message, requirements"
)
_MOVE_COLUMNS = "flow, tag, version, previous, weight, action, who, ts, id"


def _deployment_from_row(row: Sequence[Any]) -> DeploymentRecord:
    return DeploymentRecord(
        flow=row[0],
        version=row[1],
        target=row[2],
        archive_key=row[3],
        archive_sha256=row[4],
        created_by=row[5],
        created_at=row[6],
        image=row[7],
        stack=row[8],
        message=row[9],
        requirements=json.loads(row[10]),
    )


def _move_from_row(row: Sequence[Any]) -> TagMove:
    return TagMove(*row)


_EXEC_COLUMNS = (
    "id, flow, target, sys_path, status, created_at, updated_at, error, result_artifact, "
    "original_exec_id, lease_owner, lease_expires_at, metadata"
)
_ARTIFACT_COLUMNS = (
    "id, exec_id, name, version, type, serializer, data_type, content_hash, size, call_id, "
    "created_at, inline, uri"
)

# Primary result codes (the low byte of an extended code) that a read-only open falls back on.
_SQLITE_READONLY = 8
_SQLITE_CANTOPEN = 14


_INSERT_JOURNAL = (
    "INSERT INTO journal (exec_id, kind, call_id, once, seq, name, attempt, artifact_id, data, ts) "
    "VALUES (?,?,?,?,?,?,?,?,?,?)"
)


def _journal_row(exec_id: str, r: JournalRecord, now: float) -> tuple[Any, ...]:
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
    )


def _artifact_row(a: ArtifactRecord) -> tuple[Any, ...]:
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
    )


class SQLiteStateStore:
    """A :class:`~kitaru.store.StateStore` in one SQLite database file."""

    inline: ClassVar[bool] = True

    def __init__(
        self, path: str | os.PathLike[str], *, timeout: float = 30.0, read_only: bool = False
    ) -> None:
        # ``sqlite:////abs/x.db`` parses to ``//abs/x.db``, which POSIX (and pathlib) keep as is:
        # one leading slash, so messages show the path people know.
        text = os.fspath(path)
        self.path = Path("/" + text.lstrip("/") if text.startswith("//") else text)
        self.read_only = read_only
        self._building_stand_in = False  # the one write a read-only store makes: see below
        self._lock = threading.RLock()
        if read_only:
            self._conn = self._connect_read_only(timeout)
            return
        try:
            self._create_private()
            self._conn = sqlite3.connect(
                self.path, timeout=timeout, isolation_level=None, check_same_thread=False
            )
        except (OSError, sqlite3.Error) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
            raise KitaruStoreError(
                f"cannot open the state database {self.path}: {reason}. Check that the directory is "
                "writable, or point KITARU_HOME somewhere that is."
            ) from exc
        sync = os.environ.get("KITARU_SQLITE_SYNC", "NORMAL").upper()
        if sync not in {"OFF", "NORMAL", "FULL", "EXTRA"}:
            sync = "NORMAL"
        try:
            # Only what must change is written: a database already in WAL mode and at the current
            # schema opens without a write, so reading works where writing cannot (a full disk).
            if self._conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute(f"PRAGMA synchronous={sync}")
            if self._schema_version() != len(_MIGRATIONS):
                self._migrate()
        except sqlite3.Error as exc:
            self._conn.close()
            raise KitaruStoreError(
                f"cannot open the state database {self.path}: {exc}. If the file is not a kitaru "
                "database, move it aside or point KITARU_HOME elsewhere."
            ) from exc
        except BaseException:
            self._conn.close()
            raise

    # -- plumbing ---------------------------------------------------------------------------

    def _create_private(self) -> None:
        """Create the database file, and its directory, private to their owner (0600 / 0700).

        SQLite gives the ``-wal`` and ``-shm`` files it creates the mode of the database file, so
        making the file first (instead of letting ``connect`` make it through the umask) keeps
        all three private."""
        from kitaru.config import private_dir

        private_dir(self.path.parent)
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return
        try:
            os.fchmod(fd, 0o600)  # the umask may have dropped the owner's bits
        finally:
            os.close(fd)

    def _connect_read_only(self, timeout: float) -> sqlite3.Connection:
        """Open without writing anything: for inspection on a read-only home or a full disk.

        ``mode=ro`` still needs the WAL index (``-shm``), which it cannot create in a read-only
        directory; then the database is opened ``immutable``, which reads the main file alone
        (what a cleanly closed WAL database holds). A database that does not exist yet reads as
        an empty one, in memory, rather than being created."""
        if not self.path.exists():
            self._conn = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
            self._building_stand_in = True
            try:
                self._migrate()
            finally:
                self._building_stand_in = False
            return self._conn
        base = "file:" + quote(str(self.path)) + "?mode=ro"
        conn: sqlite3.Connection | None = None
        for uri in (base, base + "&immutable=1"):
            try:
                conn = sqlite3.connect(
                    uri, uri=True, timeout=timeout, isolation_level=None, check_same_thread=False
                )
                self._conn = conn
                version = self._schema_version()
                break
            except sqlite3.Error as exc:
                if conn is not None:
                    conn.close()
                    conn = None
                code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
                if uri.endswith("immutable=1") or code not in {_SQLITE_READONLY, _SQLITE_CANTOPEN}:
                    raise KitaruStoreError(
                        f"cannot read the state database {self.path}: {exc}. Check that it is "
                        "readable, or point KITARU_HOME at the right home."
                    ) from exc
        assert conn is not None
        if version != len(_MIGRATIONS):
            conn.close()
            if version > len(_MIGRATIONS):
                raise KitaruStoreError(
                    f"the state database {self.path} has schema version {version}, newer than this "
                    f"kitaru understands ({len(_MIGRATIONS)}). Upgrade kitaru."
                )
            raise KitaruStoreError(
                f"the state database {self.path} has schema version {version}, older than this "
                f"kitaru's {len(_MIGRATIONS)}; a read-only command does not migrate it. Run a "
                "command that writes once, with write access to it (e.g. `kitaru executions "
                "resume`, or running a flow), or use the kitaru that wrote it."
            )
        return conn

    def _schema_version(self) -> int:
        """The schema version recorded in the database (0: a new or foreign database)."""
        meta = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'"
        if not self._conn.execute(meta).fetchone():
            return 0
        row = self._conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        return int(row[0]) if row else 0

    def _migrate(self) -> None:
        with self._write() as cur:
            cur.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)")
            row = cur.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            version = int(row[0]) if row else 0
            if version > len(_MIGRATIONS):
                raise KitaruStoreError(
                    f"the state database {self.path} has schema version {version}, newer than this "
                    f"kitaru understands ({len(_MIGRATIONS)}). Upgrade kitaru."
                )
            for script in _MIGRATIONS[version:]:
                for statement in script.split(";"):
                    if statement.strip():
                        cur.execute(statement)
            cur.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('schema_version', ?)",
                (str(len(_MIGRATIONS)),),
            )

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Cursor]:
        if self.read_only and not self._building_stand_in:
            raise KitaruStoreError(
                f"the state database {self.path} was opened read-only, for inspection; this "
                "operation writes. Run it with a client that is not read-only."
            )
        with self._lock:
            cur = self._conn.cursor()
            try:
                cur.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise KitaruStoreError(f"cannot write to {self.path}: {exc}") from exc
            try:
                yield cur
            except BaseException:
                self._conn.rollback()
                raise
            try:
                cur.execute("COMMIT")
            except sqlite3.Error as exc:
                self._conn.rollback()
                raise KitaruStoreError(f"commit to {self.path} failed: {exc}") from exc

    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        with self._lock:
            try:
                return self._conn.execute(sql, params).fetchall()
            except sqlite3.Error as exc:
                raise KitaruStoreError(f"cannot read {self.path}: {exc}") from exc

    @staticmethod
    def _check_lease(cur: sqlite3.Cursor, exec_id: str, owner: str | None) -> str | None:
        """The execution's status, after checking that ``owner`` (if given) holds its lease."""
        row = cur.execute("SELECT lease_owner, status FROM executions WHERE id = ?", (exec_id,)).fetchone()
        if row is None:
            if owner is None:
                return None
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
                f"INSERT INTO artifacts ({_ARTIFACT_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
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
        clauses: list[str] = []
        params: list[Any] = []
        if before is not None:
            clauses.append("id < ?")
            params.append(before)
        if flow is not None:
            clauses.append("flow = ?")
            params.append(flow)
        if status is not None:
            clauses.append("status = ?")
            params.append(status)
        if version is not None:
            clauses.append("json_extract(metadata, '$.deployment.version') = ?")
            params.append(version)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        rows = self._read(
            f"SELECT {_EXEC_COLUMNS} FROM executions {where} ORDER BY id DESC LIMIT ?",
            (*params, limit),
        )
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
            "NULL OR lease_expires_at <= ? OR substr(lease_owner, 1, ?) = ?) ORDER BY id",
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
            "AND k.once = j.once)) ORDER BY id LIMIT ?",
            (now, limit),
        )
        found += map(_exec_from_row, waiting)
        return sorted(found, key=lambda e: e.id)[:limit]

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
                        f"INSERT INTO artifacts ({_ARTIFACT_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
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
        now = time.time()
        with self._write() as cur:
            row = cur.execute(
                "SELECT status, lease_owner, lease_expires_at FROM executions WHERE id = ?",
                (exec_id,),
            ).fetchone()
            if row is None:
                raise KitaruNotFoundError(f"no execution {exec_id!r}")
            status, holder, expires = row
            _rules.check_answerable(exec_id, status)
            kinds = {
                r[0]
                for r in cur.execute(
                    "SELECT kind FROM journal WHERE exec_id = ? AND call_id = ?",
                    (exec_id, record.call_id),
                ).fetchall()
            }
            _rules.check_wait_open(exec_id, record.call_id, kinds)
            cur.execute(
                f"INSERT INTO artifacts ({_ARTIFACT_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
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

    async def read_journal(self, exec_id: str) -> list[JournalRecord]:
        rows = self._read(
            "SELECT kind, call_id, seq, name, attempt, artifact_id, data, ts, id FROM journal "
            "WHERE exec_id = ? ORDER BY id",
            (exec_id,),
        )
        return [
            JournalRecord(
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
            for r in rows
        ]

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

    # -- deployments ------------------------------------------------------------------------

    @staticmethod
    def _move(
        cur: sqlite3.Cursor, flow: str, requests: Sequence[TagRequest], who: str, action: str | None
    ) -> list[TagMove]:
        """Plan and write tag moves inside the caller's write transaction (which holds SQLite's
        one write lock, so nothing read here changes before the writes)."""
        versions = [r[0] for r in cur.execute("SELECT version FROM deployments WHERE flow = ?", (flow,))]
        tags = {
            r[0]: (r[1], r[2])
            for r in cur.execute("SELECT tag, version, weight FROM tags WHERE flow = ?", (flow,))
        }

        def history(tag: str) -> list[int | None]:
            rows = cur.execute(
                "SELECT version FROM tag_moves WHERE flow = ? AND tag = ? ORDER BY id", (flow, tag)
            ).fetchall()
            return [r[0] for r in rows]

        moves = _rules.plan_tag_moves(
            flow, requests, versions, tags, history, who=who, now=time.time(), action=action
        )
        for m in moves:
            if m.version is None:
                cur.execute("DELETE FROM tags WHERE flow = ? AND tag = ?", (flow, m.tag))
            else:
                cur.execute(
                    "INSERT OR REPLACE INTO tags (flow, tag, version, weight, updated_at) VALUES (?,?,?,?,?)",
                    (flow, m.tag, m.version, m.weight, m.ts),
                )
            cur.execute(
                "INSERT INTO tag_moves (flow, tag, version, previous, weight, action, who, ts) "
                "VALUES (?,?,?,?,?,?,?,?)",
                (flow, m.tag, m.version, m.previous, m.weight, m.action, m.who, m.ts),
            )
            m.id = cur.lastrowid
        return moves

    async def create_deployment(
        self, record: DeploymentRecord, *, tag: str | None = None, weight: int | None = None
    ) -> tuple[DeploymentRecord, list[TagMove]]:
        d = record
        with self._write() as cur:
            row = cur.execute("SELECT MAX(version) FROM deployments WHERE flow = ?", (d.flow,)).fetchone()
            version = (row[0] or 0) + 1
            cur.execute(
                f"INSERT INTO deployments ({_DEPLOYMENT_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                (
                    d.flow,
                    version,
                    d.target,
                    d.archive_key,
                    d.archive_sha256,
                    d.created_by,
                    d.created_at,
                    d.image,
                    d.stack,
                    d.message,
                    json.dumps(d.requirements),
                ),
            )
            requests = _rules.deploy_requests(tag, weight, version, version == 1)
            moves = self._move(cur, d.flow, requests, d.created_by, "deploy")
        return dataclasses.replace(d, version=version), moves

    async def get_deployment(self, flow: str, version: int) -> DeploymentRecord | None:
        rows = self._read(
            f"SELECT {_DEPLOYMENT_COLUMNS} FROM deployments WHERE flow = ? AND version = ?", (flow, version)
        )
        return _deployment_from_row(rows[0]) if rows else None

    async def list_deployments(self, flow: str | None = None) -> list[DeploymentRecord]:
        where, params = ("WHERE flow = ?", (flow,)) if flow is not None else ("", ())
        rows = self._read(
            f"SELECT {_DEPLOYMENT_COLUMNS} FROM deployments {where} ORDER BY flow, version", params
        )
        return [_deployment_from_row(r) for r in rows]

    async def list_tags(self, flow: str | None = None) -> list[TagRecord]:
        where, params = ("WHERE flow = ?", (flow,)) if flow is not None else ("", ())
        rows = self._read(
            f"SELECT flow, tag, version, weight, updated_at FROM tags {where} ORDER BY flow, tag", params
        )
        return [TagRecord(*r) for r in rows]

    async def move_tags(self, flow: str, requests: Sequence[TagRequest], *, who: str) -> list[TagMove]:
        with self._write() as cur:
            return self._move(cur, flow, requests, who, None)

    async def tag_history(self, flow: str, tag: str | None = None) -> list[TagMove]:
        sql = f"SELECT {_MOVE_COLUMNS} FROM tag_moves WHERE flow = ?"
        params: tuple[Any, ...] = (flow,)
        if tag is not None:
            sql, params = sql + " AND tag = ?", (flow, tag)
        return [_move_from_row(r) for r in self._read(sql + " ORDER BY id", params)]

    # -- API keys of the team server ----------------------------------------------------------

    async def create_api_key(self, key: ApiKeyRecord) -> None:
        with self._write() as cur:
            try:
                cur.execute(
                    "INSERT INTO api_keys (id, name, key_hash, scopes, created_at, revoked_at) "
                    "VALUES (?,?,?,?,?,?)",
                    (key.id, key.name, key.key_hash, json.dumps(key.scopes), key.created_at, key.revoked_at),
                )
            except sqlite3.IntegrityError:
                raise _rules.key_exists(key.name) from None

    async def get_api_key(self, key_id: str) -> ApiKeyRecord | None:
        rows = self._read(f"SELECT {_KEY_COLUMNS} FROM api_keys WHERE id = ?", (key_id,))
        return _key_from_row(rows[0]) if rows else None

    async def list_api_keys(self) -> list[ApiKeyRecord]:
        rows = self._read(f"SELECT {_KEY_COLUMNS} FROM api_keys ORDER BY created_at, id")
        return [_key_from_row(r) for r in rows]

    async def revoke_api_key(self, name: str) -> ApiKeyRecord:
        with self._write() as cur:
            cur.execute(
                "UPDATE api_keys SET revoked_at = ? WHERE name = ? AND revoked_at IS NULL",
                (time.time(), name),
            )
            row = cur.execute(f"SELECT {_KEY_COLUMNS} FROM api_keys WHERE name = ?", (name,)).fetchone()
        if row is None:
            raise _rules.no_such_key(name)
        return _key_from_row(row)

    async def aclose(self) -> None:
        with self._lock:
            self._conn.close()


_KEY_COLUMNS = "id, name, key_hash, scopes, created_at, revoked_at"


def _key_from_row(row: Sequence[Any]) -> ApiKeyRecord:
    return ApiKeyRecord(row[0], row[1], row[2], json.loads(row[3]), row[4], row[5])
