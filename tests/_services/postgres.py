"""A throwaway PostgreSQL cluster from Debian's server binaries, for tests and benchmarks.

:class:`PostgresCluster` runs ``initdb`` into a temporary directory (as the ``postgres`` user when
this process is root: initdb refuses to run as root) and ``pg_ctl`` on a free port of 127.0.0.1,
with ``fsync=off`` (a test cluster need not survive a power cut). It has no pytest in it, so
``benchmarks/run.py`` starts the same cluster. The fixtures give one cluster per test session and a
fresh database per test, copied from a template that already holds kitaru's schema.

Authentication: the ``postgres`` superuser connects without a password over TCP (trust); every other
role needs its password (scram), so tests can see a refused login.
"""

from __future__ import annotations

import asyncio
import atexit
import glob
import itertools
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests._services import missing

__all__ = ["PostgresCluster", "find_bindir", "postgres_cluster", "postgres_dsn"]

INSTALL = "apt-get install -y postgresql"
_TEMPLATE = "kitaru_template"


def find_bindir() -> Path | None:
    """The newest installed server's ``bin`` directory (Debian layout), or None."""
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: [int(x) if x.isdigit() else 0 for x in Path(p).parent.parent.name.split(".")],
    )
    return Path(found[-1]).parent if found else None


def _temp_root() -> str | None:
    """A temporary directory every user can traverse (the server runs as ``postgres``)."""
    for candidate in (tempfile.gettempdir(), "/tmp", "/var/tmp"):
        path = Path(candidate).resolve()
        if path.is_dir() and all(p.stat().st_mode & 0o001 for p in (path, *path.parents)):
            return str(path)
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PostgresCluster:
    """One PostgreSQL server in a temporary directory; :meth:`start`, :meth:`stop`, :meth:`destroy`."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.port = _free_port()
        self.base = Path(tempfile.mkdtemp(prefix="kitaru-pg-", dir=_temp_root()))
        self.base.chmod(0o755)  # the postgres user must reach the data dir inside
        self.datadir = self.base / "data"
        self.logfile = self.base / "server.log"
        self._as_root = os.geteuid() == 0
        self._names = itertools.count(1)
        self._template_ready = False

    # -- the server -----------------------------------------------------------------------------

    def _run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        cmd = [str(self.bindir / args[0]), *args[1:]]
        if self._as_root:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=self.base)
        if done.returncode != 0:
            log = self.logfile.read_text(errors="replace")[-3000:] if self.logfile.exists() else ""
            raise RuntimeError(
                f"{' '.join(cmd)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}\n{log}"
            )
        return done

    def init(self) -> None:
        if self._as_root:
            shutil.chown(self.base, "postgres", "postgres")
        pwfile = self.base / "pw"
        pwfile.write_text("postgres\n")
        if self._as_root:
            shutil.chown(pwfile, "postgres", "postgres")
        self._run(
            "initdb",
            "-D",
            str(self.datadir),
            "-U",
            "postgres",
            "--pwfile",
            str(pwfile),
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
        )
        hba = self.datadir / "pg_hba.conf"
        # The superuser connects without a password over TCP; everyone else needs theirs.
        hba.write_text(
            "host all postgres 127.0.0.1/32 trust\nhost all all 127.0.0.1/32 scram-sha-256\n"
            + hba.read_text()
        )

    def start(self) -> None:
        options = " ".join(
            [
                f"-p {self.port}",
                "-c listen_addresses=127.0.0.1",
                "-c unix_socket_directories=''",
                "-c fsync=off",
                "-c synchronous_commit=on",
                "-c full_page_writes=off",
                "-c max_connections=300",
                "-c shared_buffers=64MB",
            ]
        )
        self._run("pg_ctl", "-D", str(self.datadir), "-l", str(self.logfile), "-o", options, "-w", "start")

    def stop(self, mode: str = "fast") -> None:
        """Stop the server; ``immediate`` is a crash as far as clients can tell."""
        self._run("pg_ctl", "-D", str(self.datadir), "-m", mode, "-w", "stop")

    def destroy(self) -> None:
        if (self.datadir / "postmaster.pid").exists():
            try:
                self.stop("immediate")
            except (RuntimeError, subprocess.TimeoutExpired):
                pass
        shutil.rmtree(self.base, ignore_errors=True)

    # -- databases ------------------------------------------------------------------------------

    def dsn(self, database: str = "postgres", *, user: str = "postgres", password: str = "") -> str:
        auth = f"{user}:{password}" if password else user
        return f"postgresql://{auth}@127.0.0.1:{self.port}/{database}"

    def execute(self, sql: str, database: str = "postgres") -> Any:
        """Run ``sql`` as the superuser; the first row's first value."""
        import asyncpg  # type: ignore[import-untyped,unused-ignore]

        async def run() -> Any:
            conn = await asyncpg.connect(self.dsn(database))
            try:
                return await conn.fetchval(sql)
            finally:
                await conn.close()

        return asyncio.run(run())

    def create_database(self, prefix: str = "kitaru_test") -> str:
        """A new database holding kitaru's (empty) schema; returns its name."""
        if not self._template_ready:
            from kitaru.store.postgres import PostgresStateStore

            self.execute(f"CREATE DATABASE {_TEMPLATE}")
            from kitaru.store import sync_view

            template = sync_view(PostgresStateStore(self.dsn(_TEMPLATE), min_size=1, max_size=1))
            template.list_executions()  # the first call creates the schema
            template.close()
            self._template_ready = True
        name = f"{prefix}_{next(self._names)}"
        self.execute(f"CREATE DATABASE {name} TEMPLATE {_TEMPLATE}")
        return name

    @classmethod
    def launch(cls) -> PostgresCluster:
        """A running cluster, or RuntimeError naming what is missing."""
        bindir = find_bindir()
        if bindir is None:
            raise FileNotFoundError(f"no /usr/lib/postgresql/*/bin/initdb: {INSTALL}")
        cluster = cls(bindir)
        atexit.register(cluster.destroy)  # a server outlives its parent: stop it however we exit
        try:
            cluster.init()
            cluster.start()
        except BaseException:
            cluster.destroy()
            raise
        return cluster


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[PostgresCluster]:
    """One throwaway PostgreSQL server for the whole session."""
    if find_bindir() is None:
        missing("PostgreSQL server", INSTALL)
    cluster = PostgresCluster.launch()
    try:
        yield cluster
    finally:
        cluster.destroy()


@pytest.fixture
def postgres_dsn(postgres_cluster: PostgresCluster) -> str:
    """The DSN of a fresh database (with kitaru's schema) for this test alone."""
    return postgres_cluster.dsn(postgres_cluster.create_database())
