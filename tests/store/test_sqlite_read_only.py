"""Opening the SQLite store writes only when something must change: a current database opens
without the write lock, a read-only open never writes, and a schema that is behind says so."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import threading
from contextlib import closing
from pathlib import Path

import pytest

from kitaru.errors import KitaruStoreError
from kitaru.store import ExecutionRecord, sync_view
from kitaru.store.sqlite import SQLiteStateStore
from kitaru.store.sqlite._schema import _MIGRATIONS
from tests.store._listing import VERSION_5_NEWEST_FIRST, version_5_database


def _execution(exec_id: str) -> ExecutionRecord:
    return ExecutionRecord(
        id=exec_id, flow="f", target="m:f", sys_path=None, status="running", created_at=1.0, updated_at=1.0
    )


def test_a_current_database_opens_while_another_process_holds_the_write_lock(tmp_path: Path) -> None:
    path = tmp_path / "kitaru.db"
    store = sync_view(SQLiteStateStore(path))
    store.create_execution(_execution("E1"), [])
    store.close()
    with closing(sqlite3.connect(path, isolation_level=None)) as writer:
        writer.execute("BEGIN IMMEDIATE")  # a long commit elsewhere: opening must not queue on it
        for read_only in (False, True):
            again = sync_view(SQLiteStateStore(path, timeout=0.2, read_only=read_only))
            try:
                assert again.get_execution("E1") is not None
            finally:
                again.close()
        writer.execute("ROLLBACK")


def test_read_only_open_of_a_missing_database_creates_nothing(tmp_path: Path) -> None:
    path = tmp_path / "home" / "kitaru.db"
    store = sync_view(SQLiteStateStore(path, read_only=True))
    try:
        assert store.list_executions() == [] and store.get_execution("E1") is None
        with pytest.raises(KitaruStoreError, match="read-only"):
            store.create_execution(_execution("E1"), [])
    finally:
        store.close()
    assert not (tmp_path / "home").exists()


def test_read_only_open_of_a_database_behind_says_so_and_changes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "kitaru.db"
    with closing(sqlite3.connect(path)) as conn, conn:
        conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT)")
        conn.execute("INSERT INTO meta VALUES ('schema_version', '0')")
    before = path.read_bytes()
    with pytest.raises(KitaruStoreError, match="older than this kitaru") as info:
        SQLiteStateStore(path, read_only=True)
    assert "read-only command does not migrate" in str(info.value) and str(path) in str(info.value)
    assert path.read_bytes() == before

    # A read-write open migrates it.
    sync_view(SQLiteStateStore(path)).close()
    store = sync_view(SQLiteStateStore(path, read_only=True))
    try:
        assert store.list_executions() == []
    finally:
        store.close()


def test_read_only_store_refuses_writes(tmp_path: Path) -> None:
    path = tmp_path / "kitaru.db"
    sync_view(SQLiteStateStore(path)).close()
    store = sync_view(SQLiteStateStore(path, read_only=True))
    try:
        with pytest.raises(KitaruStoreError):
            store.create_execution(_execution("E1"), [])
    finally:
        store.close()
    check = sync_view(SQLiteStateStore(path))
    try:
        assert check.get_execution("E1") is None
    finally:
        check.close()


def test_read_only_open_of_a_missing_database_writes_nowhere(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The empty stand-in lives in memory: not in the home, and not in the working directory.
    monkeypatch.chdir(tmp_path)
    store = sync_view(SQLiteStateStore(tmp_path / "home" / "kitaru.db", read_only=True))
    try:
        assert store.list_executions() == []
    finally:
        store.close()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("exists", [True, False])
def test_a_read_only_store_serves_any_thread(tmp_path: Path, exists: bool) -> None:
    # The runtime and the server read from worker threads, not the thread that opened the store.
    path = tmp_path / "kitaru.db"
    if exists:
        writer = sync_view(SQLiteStateStore(path))
        writer.create_execution(_execution("E1"), [])
        writer.close()
    store = SQLiteStateStore(path, read_only=True)
    found: list[object] = []
    thread = threading.Thread(target=lambda: found.append(sync_view(store).list_executions()))
    thread.start()
    thread.join(timeout=60)
    sync_view(store).close()
    assert [[e.id for e in found[0]]] == [["E1"] if exists else []]  # type: ignore[attr-defined]


def test_read_only_open_of_a_newer_database_says_upgrade(tmp_path: Path) -> None:
    path = tmp_path / "kitaru.db"
    sync_view(SQLiteStateStore(path)).close()
    with closing(sqlite3.connect(path)) as conn, conn:
        conn.execute("UPDATE meta SET value = '999' WHERE key = 'schema_version'")
    before = path.read_bytes()
    with pytest.raises(KitaruStoreError) as info:
        SQLiteStateStore(path, read_only=True)
    assert str(info.value) == (
        f"the state database {path} has schema version 999, newer than this kitaru understands "
        f"({len(_MIGRATIONS)}). Upgrade kitaru."
    )
    assert path.read_bytes() == before


def test_read_only_open_reads_a_database_behind_by_indexes_only(tmp_path: Path) -> None:
    """After an upgrade whose migrations only add indexes (listing by time), a read-only command
    (`kitaru executions list`) reads the older database as it is, in time order, writing nothing;
    the first writer migrates it. Version 5: the schema before listing by time."""
    path = tmp_path / "kitaru.db"
    version_5_database(path)
    before = path.read_bytes()
    store = sync_view(SQLiteStateStore(path, read_only=True))
    try:
        assert [e.id for e in store.list_executions()] == VERSION_5_NEWEST_FIRST
        assert [e.id for e in store.list_executions(flow="f", before="order-42")] == ["01AAAA"]
    finally:
        store.close()
    assert path.read_bytes() == before

    sync_view(SQLiteStateStore(path)).close()
    with closing(sqlite3.connect(path)) as conn:
        version = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    assert version == (str(len(_MIGRATIONS)),)


def test_read_only_open_of_a_foreign_database_says_it_is_behind(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    with closing(sqlite3.connect(path)) as conn, conn:
        conn.execute("CREATE TABLE notes (text TEXT)")
    with pytest.raises(KitaruStoreError) as info:
        SQLiteStateStore(path, read_only=True)
    assert str(info.value) == (
        f"the state database {path} has schema version 0, older than this kitaru's "
        f"{len(_MIGRATIONS)}; a read-only command does not migrate it. Run a command that writes "
        "once, with write access to it (e.g. `kitaru executions resume`, or running a flow), or use "
        "the kitaru that wrote it."
    )


def test_read_only_open_of_a_file_that_is_not_a_database_says_so(tmp_path: Path) -> None:
    path = tmp_path / "kitaru.db"
    path.write_bytes(b"not a database, just text\n" * 200)
    with pytest.raises(KitaruStoreError) as info:
        SQLiteStateStore(path, read_only=True)
    assert str(info.value) == (
        f"cannot read the state database {path}: file is not a database. Check that it is "
        "readable, or point KITARU_HOME at the right home."
    )


# Run as root without the capabilities that bypass file modes, so a 0555 directory is read-only
# to it (tests/e2e/test_read_only_home.py does the same for the whole CLI).
_DROP = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search,-fowner", "--"]
_READER = """
import sys
from kitaru.store import sync_view
from kitaru.store.sqlite import SQLiteStateStore
store = sync_view(SQLiteStateStore(sys.argv[1], read_only=True))
print(",".join(e.id for e in store.list_executions()))
"""


def test_a_database_in_a_read_only_directory_is_read_from_its_file_alone(tmp_path: Path) -> None:
    # A cleanly closed database has no WAL index, and `mode=ro` cannot create one in a read-only
    # directory: the store falls back on reading the main file as immutable.
    if shutil.which("setpriv") is None:
        pytest.skip("needs setpriv (util-linux) to drop root's file-mode bypass")
    home = tmp_path / "home"
    path = home / "kitaru.db"
    writer = sync_view(SQLiteStateStore(path))
    writer.create_execution(_execution("E1"), [])
    writer.close()
    sync_view(SQLiteStateStore(tmp_path / "elsewhere.db", read_only=True)).close()
    assert sorted(os.listdir(home)) == ["kitaru.db"]
    os.chmod(path, 0o444)
    os.chmod(home, 0o555)
    try:
        probe = subprocess.run([*_DROP, "touch", str(home / "probe")], capture_output=True, timeout=60)
        if probe.returncode == 0:
            pytest.skip("setpriv could not drop the file-mode bypass here; nothing would be proven")
        done = subprocess.run(
            [*_DROP, sys.executable, "-c", _READER, str(path)], capture_output=True, text=True, timeout=120
        )
        assert (done.returncode, done.stdout.strip()) == (0, "E1"), done.stderr
        assert sorted(os.listdir(home)) == ["kitaru.db"]
    finally:
        os.chmod(home, 0o700)
        os.chmod(path, 0o600)
