"""The SQLite state store runs the shared conformance suite, plus its schema handling."""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import AsyncIterator, Callable
from contextlib import closing
from pathlib import Path

import pytest

from kitaru.errors import KitaruStoreError
from kitaru.store import ExecutionRecord, JournalRecord, sync_view
from kitaru.store.catalog_conformance import CatalogStoreConformance
from kitaru.store.conformance import (
    KeyStoreConformance,
    SecretStoreConformance,
    StateStoreConformance,
)
from kitaru.store.sqlite import SQLiteStateStore


@pytest.fixture
async def state_store(tmp_path: Path) -> AsyncIterator[SQLiteStateStore]:
    store = SQLiteStateStore(tmp_path / "state.db")
    yield store
    await store.aclose()


class TestSQLiteKeyStore(KeyStoreConformance):
    """API keys of the team server."""


class TestSQLiteCatalogStore(CatalogStoreConformance):
    """The checkpoint cache and artifact tags."""


class TestSQLiteSecretStore(SecretStoreConformance):
    """Secrets (ciphertext only) for kitaru.secret()."""


class TestSQLiteStateStore(StateStoreConformance):
    def other_process_opener(self, state_store: SQLiteStateStore) -> Callable[[], SQLiteStateStore]:
        return functools.partial(SQLiteStateStore, state_store.path)


def _execution(exec_id: str) -> ExecutionRecord:
    return ExecutionRecord(
        id=exec_id,
        flow="f",
        target="m:f",
        sys_path=None,
        status="running",
        created_at=1.0,
        updated_at=1.0,
    )


def _query(path: Path, sql: str) -> list[tuple[object, ...]]:
    with closing(sqlite3.connect(path)) as conn:
        return conn.execute(sql).fetchall()


class TestSchema:
    def test_schema_version_is_recorded(self, tmp_path: Path) -> None:
        path = tmp_path / "state.db"
        sync_view(SQLiteStateStore(path)).close()
        rows = _query(path, "SELECT value FROM meta WHERE key = 'schema_version'")
        assert len(rows) == 1
        assert int(str(rows[0][0])) >= 1

    def test_database_is_in_wal_mode(self, tmp_path: Path) -> None:
        path = tmp_path / "state.db"
        sync_view(SQLiteStateStore(path)).close()
        assert _query(path, "PRAGMA journal_mode") == [("wal",)]

    def test_reopening_keeps_data_and_version(self, tmp_path: Path) -> None:
        path = tmp_path / "nested" / "dir" / "state.db"
        store = sync_view(SQLiteStateStore(path))
        store.create_execution(_execution("E1"), [])
        store.commit("E1", [JournalRecord(kind="log", data={"n": 1})])
        store.close()
        version = _query(path, "SELECT value FROM meta WHERE key = 'schema_version'")

        again = sync_view(SQLiteStateStore(path))
        try:
            assert again.get_execution("E1") == _execution("E1")
            assert [r.data for r in again.read_journal("E1")] == [{"n": 1}]
            again.create_execution(_execution("E2"), [])
        finally:
            again.close()
        assert _query(path, "SELECT value FROM meta WHERE key = 'schema_version'") == version

    def test_newer_schema_version_is_refused(self, tmp_path: Path) -> None:
        path = tmp_path / "state.db"
        sync_view(SQLiteStateStore(path)).close()
        with closing(sqlite3.connect(path)) as conn, conn:
            conn.execute("UPDATE meta SET value = '999' WHERE key = 'schema_version'")

        with pytest.raises(KitaruStoreError, match="Upgrade kitaru"):
            SQLiteStateStore(path)
        # Refusing left the database as it was.
        assert _query(path, "SELECT value FROM meta WHERE key = 'schema_version'") == [("999",)]

    def test_a_file_that_is_not_a_database_raises_store_error(self, tmp_path: Path) -> None:
        path = tmp_path / "state.db"
        garbage = b"not a database, just text\n" * 200
        path.write_bytes(garbage)
        with pytest.raises(KitaruStoreError, match="not a database"):
            SQLiteStateStore(path)
        assert path.read_bytes() == garbage

    def test_unopenable_path_raises_store_error(self, tmp_path: Path) -> None:
        (tmp_path / "state.db").mkdir()
        with pytest.raises(KitaruStoreError):
            SQLiteStateStore(tmp_path / "state.db")
