"""Opening the SQLite state store: creating its file private to its owner, migrating it, the
read-only open for inspection, and the locked read and write transactions every call goes through."""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

from kitaru.errors import KitaruStoreError
from kitaru.store.sqlite._schema import _MIGRATIONS, READABLE_FROM

# Primary result codes (the low byte of an extended code) that a read-only open falls back on.
_SQLITE_READONLY = 8
_SQLITE_CANTOPEN = 14


class _Connection:
    """The database connection, its lock and schema, shared by every :class:`SQLiteStateStore` call."""

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
        self._timeout = timeout
        if read_only:
            self._conn = self._connect_read_only(timeout)
            return
        try:
            self._create_private()
            self._conn = sqlite3.connect(
                self.path, timeout=timeout, isolation_level=None, check_same_thread=False
            )
        except (OSError, sqlite3.Error) as exc:
            reason: object = exc
            if isinstance(exc, OSError) and exc.strerror:
                # The strerror reads better than the repr, but must keep the file in the way when
                # it is not the database itself (a file where the home directory should be).
                reason = exc.strerror
                if exc.filename is not None and Path(os.fsdecode(exc.filename)) != self.path:
                    reason = f"{os.fsdecode(exc.filename)}: {exc.strerror}"
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
        if not READABLE_FROM <= version <= len(_MIGRATIONS):
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
                raise KitaruStoreError(f"cannot write to {self.path}: {exc}{self._locked_hint(exc)}") from exc
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

    def _locked_hint(self, exc: sqlite3.Error) -> str:
        """What to do about a lock that outlasted the busy timeout: someone else's long write
        transaction (a process writing the database directly, a backup tool, an open shell)."""
        if "locked" not in str(exc) and "busy" not in str(exc):
            return ""
        return (
            f". Another process held a write transaction on it for more than {self._timeout:g} s; "
            f"find it (`fuser {self.path}`), let it finish or stop it, then run this again (an "
            "execution that failed on it continues with `kitaru executions retry <exec_id>`)"
        )

    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        with self._lock:
            try:
                return self._conn.execute(sql, params).fetchall()
            except sqlite3.Error as exc:
                raise KitaruStoreError(f"cannot read {self.path}: {exc}") from exc

    async def aclose(self) -> None:
        with self._lock:
            self._conn.close()
