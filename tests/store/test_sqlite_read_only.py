"""Opening the SQLite store writes only when something must change: a current database opens
without the write lock, a read-only open never writes, and a schema that is behind says so."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

import pytest

from kitaru.errors import KitaruStoreError
from kitaru.store import ExecutionRecord, sync_view
from kitaru.store.sqlite import SQLiteStateStore


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
