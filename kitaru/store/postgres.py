"""The server state store: PostgreSQL through asyncpg, for teams and remote runners.

Every call runs on the caller's event loop: no private loop, no thread hop. An asyncpg pool belongs
to the loop it was made on, and a process may use one store from several loops (kitaru's portal loop
for sync callers, an application's own loop), so the store keeps one pool per running loop, opened
on that loop's first call (the schema is checked once per store, on the first pool); ``aclose()``
closes every pool, each on its own loop, and a loop that shuts down first closes its pool itself
(:mod:`kitaru.store._perloop`).

Concurrency is PostgreSQL's: every write that reads before it writes (commit with a lease check,
lease takeover, suspend, answering a wait, cancel) locks the execution's row with
``SELECT ... FOR UPDATE`` first, so concurrent runners in any number of processes queue on that row
instead of racing. The once-only rule is a partial unique index, as in SQLite.

Connection trouble (the server restarting, a dropped socket) is retried with backoff a bounded
number of times when that is safe: reads always; writes whose transaction never reached COMMIT; and
a write whose connection died after its COMMIT (or its one autocommitted statement) was sent only
once the server shows whether it landed. Every write transaction also inserts a random token into
``kitaru.commits``; after making sure the old connection's backend has ended (so its transaction is
over), the token's presence says "committed". Transaction ids cannot settle this: after a crash the
server may hand an id whose WAL was lost to another transaction.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import random
import socket
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar
from urllib.parse import parse_qs, unquote, urlsplit

from kitaru._install import install_hint
from kitaru.errors import (
    KitaruConflictError,
    KitaruError,
    KitaruLeaseError,
    KitaruMissingDependencyError,
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
from kitaru.store._perloop import PerLoop

__all__ = ["PostgresStateStore"]

T = TypeVar("T")

_log = logging.getLogger(__name__)

_UNKNOWN = (
    "It may or may not have been saved: resuming the execution reads its journal to find out "
    "(`kitaru executions get ID` shows it)."
)

#: Held (per transaction) while the schema is checked and migrated, so two processes opening a
#: fresh database at once do not both create it. Any constant works; this one spells "kitaru".
_MIGRATION_LOCK = 0x6B6974617275

# Each entry moves the schema one version forward; the applied version lives in `kitaru.meta`.
#
# Everything lives in the `kitaru` schema so the database may be shared with other applications.
# Ids and names sort bytewise (COLLATE "C"): sortable ids must list in the same order as on SQLite
# whatever the database's locale is, and prefix matches must be case-sensitive.
# The journal is ordered by its bigserial id. `once` holds the call id for once-only kinds and NULL
# for the rest (the kinds are decided in Python, like SQLite's); the unique index covers only the
# non-NULL rows, so it stays small. Artifacts are listed per execution through the journal records
# that reference them (a replay's journal points at its original's outputs). `commits` holds one
# random token per write transaction, read only to settle a write whose answer was lost; rows older
# than an hour are deleted now and then (the BRIN index on `at` keeps that cheap, and costs inserts
# almost nothing).
_MIGRATIONS: list[str] = [
    """
    CREATE TABLE kitaru.executions (
        id TEXT COLLATE "C" PRIMARY KEY,
        flow TEXT COLLATE "C" NOT NULL,
        target TEXT NOT NULL,
        sys_path TEXT,
        status TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        updated_at DOUBLE PRECISION NOT NULL,
        error TEXT,
        result_artifact TEXT,
        original_exec_id TEXT,
        lease_owner TEXT,
        lease_expires_at DOUBLE PRECISION,
        metadata TEXT NOT NULL DEFAULT '{}'
    );
    CREATE INDEX executions_flow ON kitaru.executions (flow, id);
    CREATE INDEX executions_status ON kitaru.executions (status, id);
    CREATE TABLE kitaru.journal (
        id BIGSERIAL PRIMARY KEY,
        exec_id TEXT COLLATE "C" NOT NULL,
        kind TEXT NOT NULL,
        call_id TEXT,
        once TEXT,
        seq INTEGER,
        name TEXT,
        attempt INTEGER,
        artifact_id TEXT,
        data TEXT,
        ts DOUBLE PRECISION NOT NULL
    );
    CREATE INDEX journal_exec ON kitaru.journal (exec_id, id);
    CREATE UNIQUE INDEX journal_once ON kitaru.journal (exec_id, kind, once) WHERE once IS NOT NULL;
    CREATE TABLE kitaru.artifacts (
        id TEXT PRIMARY KEY,
        exec_id TEXT NOT NULL,
        name TEXT NOT NULL,
        version INTEGER NOT NULL,
        type TEXT NOT NULL,
        serializer TEXT NOT NULL,
        data_type TEXT NOT NULL,
        content_hash TEXT NOT NULL,
        size BIGINT NOT NULL,
        call_id TEXT,
        created_at DOUBLE PRECISION NOT NULL,
        inline BYTEA,
        uri TEXT
    );
    CREATE TABLE kitaru.commits (
        token UUID PRIMARY KEY,
        at DOUBLE PRECISION NOT NULL
    );
    CREATE INDEX commits_at ON kitaru.commits USING brin (at);
    """,
    # Deployments (issue 11): versions are immutable rows; a tag is one row per (flow, tag); every
    # move is a row of `tag_moves` written in the move's transaction, which holds a transaction
    # advisory lock on the flow (so version numbers and moves of one flow queue, other flows not).
    """
    CREATE TABLE kitaru.deployments (
        flow TEXT COLLATE "C" NOT NULL,
        version INTEGER NOT NULL,
        target TEXT NOT NULL,
        archive_key TEXT NOT NULL,
        archive_sha256 TEXT NOT NULL,
        created_by TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        image TEXT,
        stack TEXT,
        message TEXT,
        requirements TEXT NOT NULL DEFAULT '{}',
        PRIMARY KEY (flow, version)
    );
    CREATE TABLE kitaru.tags (
        flow TEXT COLLATE "C" NOT NULL,
        tag TEXT COLLATE "C" NOT NULL,
        version INTEGER NOT NULL,
        weight INTEGER,
        updated_at DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (flow, tag)
    );
    CREATE TABLE kitaru.tag_moves (
        id BIGSERIAL PRIMARY KEY,
        flow TEXT COLLATE "C" NOT NULL,
        tag TEXT COLLATE "C" NOT NULL,
        version INTEGER,
        previous INTEGER,
        weight INTEGER,
        action TEXT NOT NULL,
        who TEXT NOT NULL,
        ts DOUBLE PRECISION NOT NULL
    );
    CREATE INDEX tag_moves_flow ON kitaru.tag_moves (flow, tag, id);
    """,
    # The team server's API keys (hashes only; `kitaru server keys`).
    """
    CREATE TABLE kitaru.api_keys (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        key_hash TEXT NOT NULL,
        scopes TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        revoked_at DOUBLE PRECISION
    );
    """,
]

_DEPLOYMENT_COLUMNS = (
    "flow, version, target, archive_key, archive_sha256, created_by, created_at, image, stack, "
    "message, requirements"
)
_MOVE_COLUMNS = "flow, tag, version, previous, weight, action, who, ts, id"
#: Namespaces the per-flow advisory lock of tag moves (the two-key form keeps it apart from
#: `_MIGRATION_LOCK` and from other applications' one-key locks).
_DEPLOY_LOCK_SPACE = 0x6B69

_EXEC_COLUMNS = (
    "id, flow, target, sys_path, status, created_at, updated_at, error, result_artifact, "
    "original_exec_id, lease_owner, lease_expires_at, metadata"
)
_ARTIFACT_COLUMNS = (
    "id, exec_id, name, version, type, serializer, data_type, content_hash, size, call_id, "
    "created_at, inline, uri"
)
_INSERT_EXECUTION = (
    "WITH token AS (INSERT INTO kitaru.commits (token, at) VALUES ($14, $15)) "
    f"INSERT INTO kitaru.executions ({_EXEC_COLUMNS}) "
    "VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13) ON CONFLICT (id) DO NOTHING RETURNING 1"
)
_INSERT_ARTIFACT = (
    f"INSERT INTO kitaru.artifacts ({_ARTIFACT_COLUMNS}) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13)"
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
#: Tokens are only read by the writer that lost its connection, within its retry window.
_TOKEN_LIFETIME = 3600.0


_ARTIFACT_ARRAYS = (
    "text[]", "text[]", "text[]", "int4[]", "text[]", "text[]", "text[]", "text[]", "int8[]", "text[]",
    "float8[]", "bytea[]", "text[]",
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
        f"{status_ok} FROM ex), $2::text IS NULL) AS ok)",
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
    )


_KEY_COLUMNS = "id, name, key_hash, scopes, created_at, revoked_at"


def _key_from_row(row: Any) -> ApiKeyRecord:
    return ApiKeyRecord(row[0], row[1], row[2], json.loads(row[3]), row[4], row[5])


def _import_asyncpg() -> Any:
    try:
        import asyncpg  # type: ignore[import-untyped,unused-ignore]
    except ImportError as exc:
        raise KitaruMissingDependencyError(
            "the PostgreSQL state store needs asyncpg, which is not installed. Install it with: "
            + install_hint("postgres")
        ) from exc
    return asyncpg


@dataclass(frozen=True, slots=True)
class _Target:
    """Where the DSN points, for messages: everything but the password."""

    host: str
    port: str
    database: str
    user: str
    secrets: tuple[str, ...]

    @classmethod
    def parse(cls, dsn: str) -> _Target:
        try:
            parts = urlsplit(dsn)
            query = parse_qs(parts.query)
            port = str(parts.port or "")
        except ValueError:
            return cls("?", "?", "?", "?", ())
        host = unquote(parts.hostname or "") or (query.get("host") or ["localhost"])[0]
        user = unquote(parts.username or "") or (query.get("user") or [os.environ.get("PGUSER", "")])[0]
        database = unquote(parts.path.lstrip("/")) or (query.get("dbname") or [user])[0]
        secrets = [unquote(parts.password or ""), *query.get("password", [])]
        return cls(
            host=host,
            port=port or (query.get("port") or [os.environ.get("PGPORT", "5432")])[0],
            database=database,
            user=user or "?",
            secrets=tuple(s for s in secrets if s),
        )

    def __str__(self) -> str:
        return f"postgresql://{self.user}@{self.host}:{self.port}/{self.database}"

    def scrub(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, "***")
        return text


class _Attempt:
    """One try of a write: its token, the backend that ran it, whether its outcome may be unknown
    (the COMMIT, or the one autocommitted statement, was sent), and what it returned."""

    __slots__ = ("backend", "result", "sent", "token")

    def __init__(self) -> None:
        self.token = uuid.uuid4()
        self.backend: tuple[int, Any] | None = None
        self.sent = False
        self.result: Any = None


class PostgresStateStore:
    """A :class:`~kitaru.store.StateStore` in a PostgreSQL database (``postgresql://`` URI).

    Not ``inline``: its calls await the network. Opening it connects to nothing; each event loop's
    first call opens that loop's pool, so a wrong address or password surfaces there.

    ``min_size``/``max_size`` bound the connection pool. Transient connection errors are retried
    ``retries`` times with exponential backoff starting at ``backoff`` seconds (capped at 5 s);
    ``command_timeout`` bounds each statement.
    """

    inline: ClassVar[bool] = False

    def __init__(
        self,
        dsn: str,
        *,
        min_size: int = 1,
        max_size: int = 10,
        retries: int = 8,
        backoff: float = 0.1,
        connect_timeout: float = 10.0,
        command_timeout: float = 60.0,
    ) -> None:
        self._asyncpg = _import_asyncpg()
        self.dsn = dsn
        self._target = _Target.parse(dsn)
        self._retries = max(0, retries)
        self._backoff = backoff
        self._pool_options = {
            "min_size": min(min_size, max_size),
            "max_size": max_size,
            "timeout": connect_timeout,
            "command_timeout": command_timeout,
        }
        self._pid = os.getpid()
        self._closed = False
        self._lock_pools = threading.Lock()
        self._pools: PerLoop[Any] = PerLoop(self._open, _close_pool)
        self._migrated = False
        self._writes = 0
        self._backend_starts: dict[int, Any] = {}

    def __repr__(self) -> str:
        return f"PostgresStateStore({str(self._target)!r})"

    # -- plumbing: one pool per running loop ---------------------------------------------------

    def _closed_error(self) -> KitaruStoreError:
        return KitaruStoreError(f"the PostgreSQL state store {self._target} is closed.")

    async def _ready(self) -> Any:
        """This loop's pool, opened (and the schema checked) on its first call."""
        if self._closed:
            raise self._closed_error()
        if os.getpid() != self._pid:
            raise KitaruStoreError(
                f"the PostgreSQL state store {self._target} was opened in process {self._pid} and "
                "cannot be used after a fork; open a new store in this process."
            )
        try:
            return await self._pools.get()
        except RuntimeError:
            if self._closed:  # closed while this loop's pool was opening
                raise self._closed_error() from None
            raise

    @property
    def _pool(self) -> Any:
        """The running loop's pool (opened by :meth:`_ready`, which every call awaits first)."""
        pool = self._pools.current()
        if pool is None:
            raise self._closed_error()
        return pool

    async def _open(self) -> Any:
        async def no_reset(conn: Any) -> None:
            # The pool's default reset (RESET ALL, UNLISTEN, advisory unlock...) costs a round trip on
            # every release; this store keeps no session state, and an open transaction is rolled
            # back by the pool regardless.
            return None

        async def remember_backend(conn: Any) -> None:
            # Identifies the server process behind a connection beyond its pid (pids are reused),
            # for settling a write whose answer was lost.
            self._backend_starts[conn.get_server_pid()] = await conn.fetchval(
                "SELECT backend_start FROM pg_stat_activity WHERE pid = pg_backend_pid()"
            )

        async def create() -> Any:
            return await self._asyncpg.create_pool(
                self.dsn, reset=no_reset, init=remember_backend, **self._pool_options
            )

        pool = await self._retrying(create, "connecting")
        try:
            if not self._migrated:
                await self._retrying(lambda: self._migrate(pool), "checking the schema")
                self._migrated = True
        except BaseException:
            await _close_pool(pool)
            raise
        return pool

    async def _migrate(self, pool: Any) -> None:
        async with pool.acquire() as conn:
            # Checked without the lock first: an up-to-date database needs no privilege to create.
            version = self._check_version(await self._schema_version(conn))
            if version == len(_MIGRATIONS):
                return
            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK)
                await conn.execute(
                    "CREATE SCHEMA IF NOT EXISTS kitaru; CREATE TABLE IF NOT EXISTS kitaru.meta "
                    "(key TEXT PRIMARY KEY, value TEXT NOT NULL)"
                )
                # Another process may have migrated while this one waited for the lock.
                version = self._check_version(await self._schema_version(conn))
                for script in _MIGRATIONS[version:]:
                    await conn.execute(script)
                await conn.execute(
                    "INSERT INTO kitaru.meta (key, value) VALUES ('schema_version', $1) "
                    "ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
                    str(len(_MIGRATIONS)),
                )

    def _check_version(self, version: int) -> int:
        if version > len(_MIGRATIONS):
            raise KitaruStoreError(
                f"the state database {self._target} has schema version {version}, newer than this "
                f"kitaru understands ({len(_MIGRATIONS)}). Upgrade kitaru."
            )
        return version

    @staticmethod
    async def _schema_version(conn: Any) -> int:
        if await conn.fetchval("SELECT to_regclass('kitaru.meta') IS NULL"):
            return 0
        value = await conn.fetchval("SELECT value FROM kitaru.meta WHERE key = 'schema_version'")
        return int(value) if value else 0

    # -- plumbing: retries and error translation ----------------------------------------------

    def _transient(self, exc: BaseException) -> bool:
        """Errors after which the same call may succeed: the connection, not the request, failed."""
        pg = self._asyncpg
        if isinstance(exc, socket.gaierror):
            return False  # the host name does not resolve: retrying will not fix a typo
        if isinstance(exc, OSError | asyncio.TimeoutError):
            return True  # refused, reset, unreachable, timed out
        if isinstance(
            exc,
            pg.PostgresConnectionError  # class 08: the connection broke
            | pg.CannotConnectNowError  # the server is starting up or shutting down
            | pg.AdminShutdownError
            | pg.CrashShutdownError
            | pg.TooManyConnectionsError
            | pg.TransactionRollbackError,  # deadlock or serialization failure: rolled back
        ):
            return True
        return isinstance(exc, pg.InterfaceError) and "closed" in str(exc)

    def _translate(self, exc: BaseException, what: str) -> KitaruError:
        """A kitaru error for a driver error that is not worth retrying (or no longer)."""
        pg = self._asyncpg
        detail = self._target.scrub(f"{type(exc).__name__}: {exc}")
        target = self._target
        if isinstance(exc, pg.UniqueViolationError):
            return KitaruConflictError(
                f"{what}: a record already exists for this call ({detail}); another runner "
                "completed it first."
            )
        if isinstance(exc, pg.InvalidAuthorizationSpecificationError | pg.InvalidPasswordError):
            return KitaruStoreError(
                f"PostgreSQL at {target.host}:{target.port} refused user {target.user!r} ({detail}). "
                "Check the user and password in the stack's `state` URI (or PGPASSWORD / ~/.pgpass)."
            )
        if isinstance(exc, socket.gaierror):
            return KitaruStoreError(
                f"cannot resolve the PostgreSQL host {target.host!r} ({detail}). Check the host name "
                "in the stack's `state` URI."
            )
        if isinstance(exc, pg.InvalidCatalogNameError):
            return KitaruStoreError(
                f"PostgreSQL at {target.host}:{target.port} has no database {target.database!r} "
                f"({detail}). Create it (`createdb -h {target.host} -p {target.port} "
                f"{target.database}`) or fix the database name in the stack's `state` URI."
            )
        if isinstance(exc, pg.TransactionRollbackError | pg.TooManyConnectionsError):
            return KitaruStoreError(
                f"{what} failed on PostgreSQL {target} after {self._retries + 1} tries ({detail}): "
                "the server is overloaded or many runners contend for the same execution. Lower "
                "the number of concurrent runners, or raise the server's max_connections."
            )
        if self._transient(exc):
            return KitaruStoreError(
                f"cannot reach the PostgreSQL state store {target} ({detail}) after "
                f"{self._retries + 1} tries. Check that the server is running and accepts TCP "
                f"connections on {target.host}:{target.port} (`pg_isready -h {target.host} -p "
                f"{target.port}`), and that the stack's `state` URI names the right host, port and "
                "database."
            )
        return KitaruStoreError(f"{what} failed on PostgreSQL {target}: {detail}")

    def _log_retry(self, what: str, exc: BaseException, attempt: int) -> None:
        # One warning per call that runs into trouble; the retries after it are debug noise.
        if attempt < self._retries:
            _log.log(
                logging.WARNING if attempt == 0 else logging.DEBUG,
                "PostgreSQL state store %s: %s failed (%s); retrying (%d of %d, about %.0f s in all)",
                self._target,
                what,
                self._target.scrub(f"{type(exc).__name__}: {exc}"),
                attempt + 1,
                self._retries,
                sum(min(5.0, self._backoff * 2**n) for n in range(self._retries)),
            )

    def _delay(self, attempt: int) -> float:
        return float(min(5.0, self._backoff * 2**attempt) * random.uniform(0.75, 1.25))

    async def _retrying(self, op: Callable[[], Awaitable[T]], what: str) -> T:
        """Run ``op`` (a read, or a write that is safe to run again), retrying transient failures."""
        for attempt in range(self._retries + 1):
            try:
                return await op()
            except KitaruError:
                raise
            except Exception as exc:
                if self._closed:
                    raise self._closed_error() from None
                if not self._transient(exc) or attempt == self._retries:
                    raise self._translate(exc, what) from None
                self._log_retry(what, exc, attempt)
            await asyncio.sleep(self._delay(attempt))
        raise AssertionError("unreachable")

    async def _read(self, sql: str, *params: Any) -> list[Any]:
        await self._ready()

        async def op() -> list[Any]:
            async with self._pool.acquire() as conn:
                return list(await conn.fetch(sql, *params))

        return await self._retrying(op, "reading the state")

    async def _write(
        self, body: Callable[[Any, _Attempt], Awaitable[T]], what: str, *, single: bool = False
    ) -> T:
        """Run ``body(conn, attempt)`` in a transaction (``single``: body is one statement, run in
        autocommit); retry it while that cannot apply it twice.

        ``body`` writes ``attempt.token`` into ``kitaru.commits`` with its changes. When the
        connection dies after the COMMIT (or the single statement) was sent, the next try first
        settles that attempt: if its token is there it committed and its result is returned;
        otherwise ``body`` runs again.
        """
        await self._ready()
        pending: _Attempt | None = None
        last: BaseException | None = None
        self._writes += 1
        if self._writes % 1000 == 1:
            await self._forget_old_tokens()
        for n in range(self._retries + 1):
            if n:
                await asyncio.sleep(self._delay(n - 1))
            attempt = _Attempt()
            try:
                if pending is not None:
                    if await self._landed(pending, what):
                        return pending.result  # type: ignore[no-any-return]
                    pending = None
                return await self._attempt(body, attempt, single)
            except KitaruError:
                raise
            except Exception as exc:
                if self._closed:
                    raise self._closed_error() from None
                if not self._transient(exc):
                    raise self._translate(exc, what) from None
                if attempt.sent:
                    pending = attempt
                last = exc
                self._log_retry(what, exc, n)
        error = self._translate(last, what) if last is not None else KitaruStoreError(what)
        if pending is not None:
            error = type(error)(f"{error} The last change was cut off while committing. {_UNKNOWN}")
        raise error from None

    async def _attempt(
        self, body: Callable[[Any, _Attempt], Awaitable[T]], attempt: _Attempt, single: bool
    ) -> T:
        async with self._pool.acquire() as conn:
            pid = conn.get_server_pid()
            attempt.backend = (pid, self._backend_starts.get(pid))
            if single:
                attempt.sent = True
                attempt.result = await body(conn, attempt)
                return attempt.result  # type: ignore[no-any-return]
            tx = conn.transaction()
            await tx.start()
            try:
                attempt.result = await body(conn, attempt)
            except BaseException:
                if not conn.is_closed():
                    try:
                        await tx.rollback()
                    except Exception:
                        conn.terminate()  # the pool replaces it
                raise
            attempt.sent = True
            await tx.commit()
            return attempt.result  # type: ignore[no-any-return]

    async def _landed(self, attempt: _Attempt, what: str) -> bool:
        """Whether a write whose answer was lost committed: once the backend that ran it has
        ended (terminated here if it lingers), its transaction is over, and the token tells."""
        async with self._pool.acquire() as conn:
            pid, started = attempt.backend or (None, None)
            # The same connection (after a statement timeout, say) is idle: its statement is over.
            if pid is not None and started is not None and pid != conn.get_server_pid():
                deadline = time.monotonic() + 30
                end = "pg_terminate_backend(pid)"
                while True:
                    try:
                        lingering = await conn.fetchval(
                            f"SELECT {end} FROM pg_stat_activity WHERE pid = $1 AND backend_start = $2",
                            pid,
                            started,
                        )
                    except self._asyncpg.InsufficientPrivilegeError:
                        end = "true"  # not allowed to end it: wait for it to end by itself
                        continue
                    if lingering is None:
                        break
                    if time.monotonic() > deadline:
                        raise KitaruStoreError(
                            f"{what}: the connection to PostgreSQL {self._target} was lost while "
                            f"committing, and its server process (pid {pid}) does not end. {_UNKNOWN}"
                        )
                    await asyncio.sleep(0.05)
            landed: bool = await conn.fetchval(
                "SELECT EXISTS (SELECT 1 FROM kitaru.commits WHERE token = $1)", attempt.token
            )
            return landed

    async def _forget_old_tokens(self) -> None:
        try:
            async with self._pool.acquire() as conn:
                # In bounded batches, so no write waits long behind the housekeeping.
                await conn.execute(
                    "DELETE FROM kitaru.commits WHERE ctid = ANY(ARRAY("
                    "SELECT ctid FROM kitaru.commits WHERE at < $1 LIMIT 10000))",
                    time.time() - _TOKEN_LIFETIME,
                )
        except Exception:
            pass  # housekeeping only: the next round tries again

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
        clauses: list[str] = []
        params: list[Any] = []
        if before is not None:
            params.append(before)
            clauses.append(f"id < ${len(params)}")
        if flow is not None:
            params.append(flow)
            clauses.append(f"flow = ${len(params)}")
        if status is not None:
            params.append(status)
            clauses.append(f"status = ${len(params)}")
        if version is not None:
            params.append(str(version))
            clauses.append(f"metadata::jsonb -> 'deployment' ->> 'version' = ${len(params)}")
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        params.append(limit)
        sql = f"SELECT {_EXEC_COLUMNS} FROM kitaru.executions {where} ORDER BY id DESC LIMIT ${len(params)}"
        rows = await self._read(sql, *params)
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
            "ORDER BY id",
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
            "'wait_timed_out') AND k.once = j.once)) ORDER BY id LIMIT $2",
            now,
            limit,
        )
        found += map(_exec_from_row, waiting)
        return sorted(found, key=lambda e: e.id)[:limit]

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
            if owner is not None:
                if record is None:
                    raise KitaruNotFoundError(f"no execution {exec_id!r}")
                if record.lease_owner != owner:
                    raise lost_lease(record.lease_owner, record.status)
            if record is not None and status is not None:
                _rules.check_status_change(exec_id, record.status, status)
            if artifact_rows:
                await conn.executemany(_INSERT_ARTIFACT, artifact_rows)
            if journal:
                await conn.executemany(_INSERT_JOURNAL, journal)
            if record is None:
                return None
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
            await conn.execute(_INSERT_ARTIFACT, *_artifact_row(artifact))
            await conn.execute(_INSERT_JOURNAL, *_journal_row(exec_id, record, now))
            holder, expires = execution.lease_owner, execution.lease_expires_at
            if take_lease and execution.status == "waiting" and _rules.lease_free(holder, expires, now):
                await conn.execute(
                    "UPDATE kitaru.executions SET status = 'running', lease_owner = $1, "
                    "lease_expires_at = $2, updated_at = $3 WHERE id = $4",
                    owner,
                    now + ttl,
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

    async def read_journal(self, exec_id: str) -> list[JournalRecord]:
        rows = await self._read(
            "SELECT kind, call_id, seq, name, attempt, artifact_id, data, ts, id FROM kitaru.journal "
            "WHERE exec_id = $1 ORDER BY id",
            exec_id,
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

    # -- deployments ----------------------------------------------------------------------------

    @staticmethod
    async def _move(
        conn: Any, attempt: _Attempt, flow: str, requests: Sequence[TagRequest], who: str, action: str | None
    ) -> list[TagMove]:
        """Plan and write tag moves in the caller's transaction, which holds the flow's lock."""
        versions = [
            r[0] for r in await conn.fetch("SELECT version FROM kitaru.deployments WHERE flow = $1", flow)
        ]
        tags = {
            r[0]: (r[1], r[2])
            for r in await conn.fetch("SELECT tag, version, weight FROM kitaru.tags WHERE flow = $1", flow)
        }
        histories: dict[str, list[int | None]] = {}
        for req in requests:
            if req.action == "rollback" and req.version is None:
                rows = await conn.fetch(
                    "SELECT version FROM kitaru.tag_moves WHERE flow = $1 AND tag = $2 ORDER BY id",
                    flow,
                    req.tag,
                )
                histories[req.tag] = [r[0] for r in rows]
        moves = _rules.plan_tag_moves(
            flow,
            requests,
            versions,
            tags,
            lambda tag: histories.get(tag, []),
            who=who,
            now=time.time(),
            action=action,
        )
        for m in moves:
            if m.version is None:
                await conn.execute("DELETE FROM kitaru.tags WHERE flow = $1 AND tag = $2", flow, m.tag)
            else:
                await conn.execute(
                    "INSERT INTO kitaru.tags (flow, tag, version, weight, updated_at) "
                    "VALUES ($1,$2,$3,$4,$5) "
                    "ON CONFLICT (flow, tag) DO UPDATE SET version = EXCLUDED.version, "
                    "weight = EXCLUDED.weight, updated_at = EXCLUDED.updated_at",
                    flow,
                    m.tag,
                    m.version,
                    m.weight,
                    m.ts,
                )
            m.id = await conn.fetchval(
                "INSERT INTO kitaru.tag_moves (flow, tag, version, previous, weight, action, who, ts) "
                "VALUES ($1,$2,$3,$4,$5,$6,$7,$8) RETURNING id",
                flow,
                m.tag,
                m.version,
                m.previous,
                m.weight,
                m.action,
                m.who,
                m.ts,
            )
        return moves

    @staticmethod
    async def _lock_flow(conn: Any, attempt: _Attempt, flow: str) -> None:
        """Take the flow's deployment lock for this transaction and record its token."""
        await conn.execute("SELECT pg_advisory_xact_lock($1, hashtext($2))", _DEPLOY_LOCK_SPACE, flow)
        await conn.execute(
            "INSERT INTO kitaru.commits (token, at) VALUES ($1, $2)", attempt.token, time.time()
        )

    async def create_deployment(
        self, record: DeploymentRecord, *, tag: str | None = None, weight: int | None = None
    ) -> tuple[DeploymentRecord, list[TagMove]]:
        d = record

        async def body(conn: Any, attempt: _Attempt) -> tuple[DeploymentRecord, list[TagMove]]:
            await self._lock_flow(conn, attempt, d.flow)
            version = (
                await conn.fetchval("SELECT MAX(version) FROM kitaru.deployments WHERE flow = $1", d.flow)
                or 0
            ) + 1
            await conn.execute(
                f"INSERT INTO kitaru.deployments ({_DEPLOYMENT_COLUMNS}) "
                "VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11)",
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
            )
            requests = _rules.deploy_requests(tag, weight, version, version == 1)
            moves = await self._move(conn, attempt, d.flow, requests, d.created_by, "deploy")
            return dataclasses.replace(d, version=version), moves

        return await self._write(body, f"deploying flow {d.flow}")

    async def get_deployment(self, flow: str, version: int) -> DeploymentRecord | None:
        rows = await self._read(
            f"SELECT {_DEPLOYMENT_COLUMNS} FROM kitaru.deployments WHERE flow = $1 AND version = $2",
            flow,
            version,
        )
        return _deployment_from_row(rows[0]) if rows else None

    async def list_deployments(self, flow: str | None = None) -> list[DeploymentRecord]:
        where, params = ("WHERE flow = $1", [flow]) if flow is not None else ("", [])
        rows = await self._read(
            f"SELECT {_DEPLOYMENT_COLUMNS} FROM kitaru.deployments {where} ORDER BY flow, version", *params
        )
        return [_deployment_from_row(r) for r in rows]

    async def list_tags(self, flow: str | None = None) -> list[TagRecord]:
        where, params = ("WHERE flow = $1", [flow]) if flow is not None else ("", [])
        rows = await self._read(
            f"SELECT flow, tag, version, weight, updated_at FROM kitaru.tags {where} ORDER BY flow, tag",
            *params,
        )
        return [TagRecord(*r) for r in rows]

    async def move_tags(self, flow: str, requests: Sequence[TagRequest], *, who: str) -> list[TagMove]:
        async def body(conn: Any, attempt: _Attempt) -> list[TagMove]:
            await self._lock_flow(conn, attempt, flow)
            return await self._move(conn, attempt, flow, requests, who, None)

        return await self._write(body, f"moving tags of flow {flow}")

    async def tag_history(self, flow: str, tag: str | None = None) -> list[TagMove]:
        sql = f"SELECT {_MOVE_COLUMNS} FROM kitaru.tag_moves WHERE flow = $1"
        params: list[Any] = [flow]
        if tag is not None:
            sql += " AND tag = $2"
            params.append(tag)
        return [TagMove(*r) for r in await self._read(sql + " ORDER BY id", *params)]

    # -- closing ------------------------------------------------------------------------------

    # -- API keys of the team server ----------------------------------------------------------

    async def create_api_key(self, key: ApiKeyRecord) -> None:
        async def body(conn: Any, attempt: _Attempt) -> None:
            await conn.execute(
                "INSERT INTO kitaru.commits (token, at) VALUES ($1, $2)", attempt.token, time.time()
            )
            inserted = await conn.fetchval(
                "INSERT INTO kitaru.api_keys (id, name, key_hash, scopes, created_at, revoked_at) "
                "VALUES ($1,$2,$3,$4,$5,$6) ON CONFLICT DO NOTHING RETURNING 1",
                key.id,
                key.name,
                key.key_hash,
                json.dumps(key.scopes),
                key.created_at,
                key.revoked_at,
            )
            if not inserted:
                raise _rules.key_exists(key.name)

        await self._write(body, f"creating API key {key.name!r}")

    async def get_api_key(self, key_id: str) -> ApiKeyRecord | None:
        rows = await self._read(f"SELECT {_KEY_COLUMNS} FROM kitaru.api_keys WHERE id = $1", key_id)
        return _key_from_row(rows[0]) if rows else None

    async def list_api_keys(self) -> list[ApiKeyRecord]:
        rows = await self._read(f"SELECT {_KEY_COLUMNS} FROM kitaru.api_keys ORDER BY created_at, id")
        return [_key_from_row(r) for r in rows]

    async def revoke_api_key(self, name: str) -> ApiKeyRecord:
        async def body(conn: Any, attempt: _Attempt) -> ApiKeyRecord:
            await conn.execute(
                "INSERT INTO kitaru.commits (token, at) VALUES ($1, $2)", attempt.token, time.time()
            )
            await conn.execute(
                "UPDATE kitaru.api_keys SET revoked_at = $1 WHERE name = $2 AND revoked_at IS NULL",
                time.time(),
                name,
            )
            row = await conn.fetchrow(f"SELECT {_KEY_COLUMNS} FROM kitaru.api_keys WHERE name = $1", name)
            if row is None:
                raise _rules.no_such_key(name)
            return _key_from_row(row)

        return await self._write(body, f"revoking API key {name!r}")

    async def aclose(self) -> None:
        """Close every loop's pool, each on its own loop (a loop that already ended closed its
        pool as it shut down); calls after this raise KitaruStoreError. Closing twice is fine."""
        with self._lock_pools:
            if self._closed:
                return
            self._closed = True
        await self._pools.aclose()


def _deployment_from_row(row: Any) -> DeploymentRecord:
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


async def _close_pool(pool: Any) -> None:
    try:
        await asyncio.wait_for(pool.close(), 10)
    except Exception:
        pool.terminate()
