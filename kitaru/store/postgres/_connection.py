"""The PostgreSQL state store's plumbing: one pool per running loop, retries with backoff, error
translation, and the commit tokens that settle a write whose connection died after its COMMIT was
sent (the package docstring tells the whole story)."""

from __future__ import annotations

import asyncio
import logging
import os
import random
import socket
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import parse_qs, unquote, urlsplit

from kitaru._install import install_hint
from kitaru.errors import (
    KitaruConflictError,
    KitaruError,
    KitaruMissingDependencyError,
    KitaruStoreError,
)
from kitaru.store._perloop import PerLoop
from kitaru.store.postgres._schema import migrate

T = TypeVar("T")

# Named after the public module (not this private one), where users configure its logging.
_log = logging.getLogger("kitaru.store.postgres")

_UNKNOWN = (
    "It may or may not have been saved: resuming the execution reads its journal to find out "
    "(`kitaru executions get ID` shows it)."
)


#: Tokens are only read by the writer that lost its connection, within its retry window.
_TOKEN_LIFETIME = 3600.0


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


class _Connection:
    """The pools, retries and commit tokens every :class:`PostgresStateStore` call goes through."""

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
        self._full_loop: asyncio.AbstractEventLoop | None = None
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

    async def open_full_pool(self) -> None:
        """Open the running loop's pool now with all ``max_size`` connections, and keep them:
        none is closed for being idle, so none is opened again under load.

        For a long-lived process that answers bursts (the team server): a burst that finds the
        pool at ``min_size`` opens the rest of it while every request waits, and each opening is
        a PostgreSQL backend start (a fork and a login) on the same CPUs the burst needs. Other
        loops' pools (a flow body's thread) stay lazy and small."""
        self._full_loop = asyncio.get_running_loop()
        await self._ready()

    async def _open(self) -> Any:
        options = dict(self._pool_options)
        if self._full_loop is asyncio.get_running_loop():
            options["min_size"] = options["max_size"]
            options["max_inactive_connection_lifetime"] = 0

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
            return await self._asyncpg.create_pool(self.dsn, reset=no_reset, init=remember_backend, **options)

        pool = await self._retrying(create, "connecting")
        try:
            if not self._migrated:
                await self._retrying(lambda: migrate(pool, self._target), "checking the schema")
                self._migrated = True
        except BaseException:
            await _close_pool(pool)
            raise
        return pool

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

    async def aclose(self) -> None:
        """Close every loop's pool, each on its own loop (a loop that already ended closed its
        pool as it shut down); calls after this raise KitaruStoreError. Closing twice is fine."""
        with self._lock_pools:
            if self._closed:
                return
            self._closed = True
        await self._pools.aclose()


async def _close_pool(pool: Any) -> None:
    try:
        await asyncio.wait_for(pool.close(), 10)
    except Exception:
        pool.terminate()
