"""The SQLite state store runs the shared conformance suite, plus its schema handling."""

from __future__ import annotations

import functools
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import closing
from pathlib import Path
from typing import Any, TypeVar

import pytest

from kitaru.errors import KitaruStoreError
from kitaru.store import ExecutionRecord, JournalRecord, sync_view
from kitaru.store.catalog_conformance import CatalogStoreConformance
from kitaru.store.conformance import (
    KeyStoreConformance,
    SecretStoreConformance,
    StateStoreConformance,
    _answer,
    _completed,
    _waiting,
)
from kitaru.store.sqlite import SQLiteStateStore
from tests.store._listing import LISTINGS, VERSION_5_NEWEST_FIRST, version_5_database


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
        with pytest.raises(KitaruStoreError) as info:
            SQLiteStateStore(path)
        assert str(info.value) == (
            f"cannot open the state database {path}: file is not a database. If the file is not a "
            "kitaru database, move it aside or point KITARU_HOME elsewhere."
        )
        assert path.read_bytes() == garbage

    def test_unopenable_path_raises_store_error(self, tmp_path: Path) -> None:
        (tmp_path / "state.db").mkdir()
        with pytest.raises(KitaruStoreError):
            SQLiteStateStore(tmp_path / "state.db")


T = TypeVar("T")


def _long_journal(store: Any, exec_id: str, calls: int) -> None:
    """An execution with wait ``approve`` opened between ``calls`` checkpoints and ``calls`` more."""
    store.create_execution(_execution(exec_id), [])
    store.commit(
        exec_id,
        [JournalRecord(kind="checkpoint_completed", call_id=f"c{i}") for i in range(calls)]
        + [JournalRecord(kind="wait_opened", call_id="approve")]
        + [JournalRecord(kind="checkpoint_completed", call_id=f"d{i}") for i in range(calls)],
    )


def _vm_steps(store: Any, call: Callable[[], T]) -> tuple[int, T]:
    """How many SQLite VM steps ``call()`` ran on the store's connection, and its result."""
    steps = 0

    def count() -> int:
        nonlocal steps
        steps += 1
        return 0

    store.store._conn.set_progress_handler(count, 1)
    try:
        result = call()
    finally:
        store.store._conn.set_progress_handler(None, 1)
    return steps, result


class TestOneWaitRead:
    def test_reading_a_wait_costs_the_same_after_thousands_of_checkpoints(self, tmp_path: Path) -> None:
        """read_wait seeks the journal's index: SQLite runs as many VM steps for it in an execution
        of 5,000 checkpoints as in one of 5 (a scan of the execution's rows would run thousands
        more)."""
        store = sync_view(SQLiteStateStore(tmp_path / "state.db"))
        costs = {}
        try:
            for exec_id, calls in (("SMALL", 5), ("LARGE", 5_000)):
                _long_journal(store, exec_id, calls)
                store.cancel(exec_id)
            for exec_id in ("SMALL", "LARGE"):
                costs[exec_id], got = _vm_steps(store, lambda e=exec_id: store.read_wait(e, "approve"))
                assert [r.kind for r in got] == ["wait_opened", "cancel_requested"]
        finally:
            store.close()
        assert 0 < costs["LARGE"] <= costs["SMALL"] + 10, costs

    def test_answering_a_wait_costs_the_same_after_thousands_of_checkpoints(self, tmp_path: Path) -> None:
        """answer_wait's checks seek the journal's index too: as many VM steps in an execution of
        5,000 checkpoints as in one of 5."""
        store = sync_view(SQLiteStateStore(tmp_path / "state.db"))
        costs = {}
        try:
            for exec_id, calls in (("SMALL", 5), ("LARGE", 5_000)):
                _long_journal(store, exec_id, calls)
                record, artifact = _answer(exec_id)
                costs[exec_id], _ = _vm_steps(
                    store,
                    lambda e=exec_id, r=record, a=artifact: store.answer_wait(
                        e, r, a, owner="o", ttl=60.0, take_lease=False
                    ),
                )
                assert [r.kind for r in store.read_wait(exec_id, "approve")] == [
                    "wait_opened",
                    "wait_answered",
                ]
        finally:
            store.close()
        assert 0 < costs["LARGE"] <= costs["SMALL"] + 10, costs


# Executions whose ids do not sort by time (the created_at of row i is a permutation of i), over
# 40 flows and 4 statuses, a third of them deployed (versions 0-4).
_BULK_EXECUTIONS = """
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?)
INSERT INTO executions (id, flow, target, status, created_at, updated_at, metadata)
SELECT printf('g%06d', i), 'flow' || (i % 40), 'm:f',
       CASE i % 4 WHEN 0 THEN 'running' WHEN 1 THEN 'waiting' WHEN 2 THEN 'completed' ELSE 'failed' END,
       1000 + (i * 7919) % ?, 1000, CASE WHEN i % 3 = 0
       THEN json_object('deployment', json_object('version', i % 5)) ELSE '{}' END
FROM n
"""


def _bulk_store(path: Path, count: int) -> Any:
    sync_view(SQLiteStateStore(path)).close()  # the schema
    with closing(sqlite3.connect(path)) as conn, conn:
        conn.execute(_BULK_EXECUTIONS, (count, count))
        conn.execute("ANALYZE")
    return sync_view(SQLiteStateStore(path))


class TestListingOrder:
    def test_a_page_reads_by_index_whatever_the_filters(self, tmp_path: Path) -> None:
        """Each filter combination, with and without a cursor, walks an index in (created_at, id)
        order: SQLite's plan neither scans the table nor sorts in a temporary b-tree."""
        store = _bulk_store(tmp_path / "state.db", 4_000)
        sent: list[tuple[str, tuple[Any, ...]]] = []
        read = store.store._read

        def recording(sql: str, params: Any = ()) -> list[Any]:
            sent.append((sql, tuple(params)))
            return read(sql, params)

        store.store._read = recording
        try:
            for filters, indexes in LISTINGS:
                for cursor in (None, "g000100"):
                    sent.clear()
                    page = store.list_executions(limit=20, before=cursor, **filters)
                    assert page, (filters, cursor)
                    sql, params = sent[0]
                    plan = [row[3] for row in store.store._conn.execute(f"EXPLAIN QUERY PLAN {sql}", params)]
                    table = [step for step in plan if "executions USING" in step or "SCAN executions" in step]
                    assert not any("TEMP B-TREE" in step for step in plan), (filters, plan)
                    assert len(table) >= 1 and all("USING INDEX" in s or "PRIMARY KEY" in s for s in table)
                    used = {
                        step.split("USING INDEX ")[1].split(" ")[0] for step in table if "USING INDEX" in step
                    }
                    assert used & indexes, (filters, cursor, plan)
        finally:
            store.close()

    def test_a_page_costs_the_same_among_thousands_of_executions(self, tmp_path: Path) -> None:
        """A page of 20 (of one flow, after a cursor) runs about as many SQLite VM steps among
        20,000 executions as among 2,000: its cost follows the page, not the table."""
        costs = {}
        for count in (2_000, 20_000):
            store = _bulk_store(tmp_path / f"{count}.db", count)
            try:
                first = store.list_executions(flow="flow7", limit=20)
                costs[count], page = _vm_steps(
                    store, lambda s=store, c=first[-1].id: s.list_executions(flow="flow7", limit=20, before=c)
                )
                assert len(page) == 20
            finally:
                store.close()
        assert 0 < costs[20_000] <= costs[2_000] + 50, costs

    def test_pages_follow_creation_time_not_ids(self, tmp_path: Path) -> None:
        """Paging 4,000 executions whose ids are in another order than their creation times, 50 at
        a time, gives each once, newest first (a full sort in Python is the reference)."""
        store = _bulk_store(tmp_path / "state.db", 4_000)
        try:
            everything = store.list_executions(limit=10_000)
            for filters in ({}, {"status": "waiting"}, {"version": 3}):
                expected = [e.id for e in everything if all(_matches(e, k, v) for k, v in filters.items())]
                assert expected == [
                    e.id
                    for e in sorted(everything, key=lambda e: (e.created_at, e.id), reverse=True)
                    if all(_matches(e, k, v) for k, v in filters.items())
                ]
                got: list[str] = []
                before = None
                while page := store.list_executions(limit=50, before=before, **filters):
                    got += [e.id for e in page]
                    before = page[-1].id
                assert got == expected, filters
        finally:
            store.close()

    def test_an_older_database_is_migrated_and_lists_by_time(self, tmp_path: Path) -> None:
        """A database written before listing by time (schema version 5) is migrated on opening:
        its executions keep their data and list newest first, a chosen id among generated ones."""
        from kitaru.store.sqlite._schema import _MIGRATIONS

        path = tmp_path / "state.db"
        version_5_database(path)
        store = sync_view(SQLiteStateStore(path))
        try:
            assert [e.id for e in store.list_executions()] == VERSION_5_NEWEST_FIRST
            assert [e.id for e in store.list_executions(status="completed", before="order-42")] == ["01AAAA"]
        finally:
            store.close()
        indexes = {r[0] for r in _query(path, "SELECT name FROM sqlite_master WHERE type = 'index'")}
        assert {"executions_created", "executions_flow", "executions_status", "executions_version"} <= indexes
        assert _query(path, "SELECT value FROM meta WHERE key = 'schema_version'") == [
            (str(len(_MIGRATIONS)),)
        ]


def _matches(e: ExecutionRecord, key: str, value: Any) -> bool:
    if key == "version":
        return bool((e.metadata.get("deployment") or {}).get("version") == value)
    return bool(getattr(e, key) == value)


class TestGroupCommit:
    def test_a_burst_of_answers_commits_in_fewer_transactions_than_answers(self, tmp_path: Path) -> None:
        """Answers asked for in one turn of the loop are written in one transaction: 30 answers
        commit fewer than 30 times, and each is recorded once, durable for another connection."""
        import asyncio

        path = tmp_path / "state.db"

        async def main() -> None:
            store = SQLiteStateStore(path)
            try:
                ids = [await _waiting(store) for _ in range(30)]
                commits: list[str] = []
                store._conn.set_trace_callback(lambda sql: commits.append(sql) if sql == "COMMIT" else None)

                async def answer(exec_id: str) -> bool:
                    record, artifact = _answer(exec_id)
                    return await store.answer_wait(
                        exec_id, record, artifact, owner="elsewhere.invalid:1:a", ttl=60.0, take_lease=True
                    )

                assert await asyncio.gather(*(answer(i) for i in ids)) == [True] * len(ids)
                store._conn.set_trace_callback(None)
                assert 1 <= len(commits) < len(ids)
            finally:
                await store.aclose()

        asyncio.run(main())
        answered = _query(path, "SELECT count(*) FROM journal WHERE kind = 'wait_answered'")
        assert answered == [(30,)]

    def test_a_sync_caller_answers_at_once(self, tmp_path: Path) -> None:
        """Through ``sync_view`` (run inline: it must not suspend) an answer is written at once,
        even from code running on an event loop's thread (a sync client in an async app)."""
        import asyncio

        from kitaru.store import ArtifactRecord

        store = sync_view(SQLiteStateStore(tmp_path / "state.db"))
        try:
            runner = "elsewhere.invalid:1:runner"
            store.create_execution(_execution("S1"), [])
            store.acquire_lease("S1", runner, 60.0, allowed_statuses={"running"})
            store.commit("S1", [JournalRecord(kind="wait_opened", call_id="approve")], owner=runner)
            assert store.suspend("S1", runner, ["approve"])
            artifact = ArtifactRecord(
                id="AS1", exec_id="S1", name="approve", version=1, type="answer", serializer="json",
                data_type="builtins:bool", content_hash="sha256:x", size=4, call_id="approve",
                created_at=1.0, inline=b"true",
            )  # fmt: skip
            record = JournalRecord(kind="wait_answered", call_id="approve", artifact_id="AS1")

            async def on_a_loop() -> bool:
                return bool(
                    store.answer_wait("S1", record, artifact, owner=runner, ttl=60.0, take_lease=True)
                )

            assert asyncio.run(on_a_loop())
            assert store.get_execution("S1").status == "running"
        finally:
            store.close()


class TestOpening:
    @pytest.mark.parametrize(
        ("setting", "level"),
        [(None, 1), ("off", 0), ("Normal", 1), ("full", 2), ("EXTRA", 3), ("fsync-please", 1)],
    )
    def test_kitaru_sqlite_sync_sets_durability(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, setting: str | None, level: int
    ) -> None:
        # Any case is taken; a value SQLite does not know keeps the default (NORMAL) rather than
        # whatever SQLite would make of it.
        if setting is None:
            monkeypatch.delenv("KITARU_SQLITE_SYNC", raising=False)
        else:
            monkeypatch.setenv("KITARU_SQLITE_SYNC", setting)
        store = SQLiteStateStore(tmp_path / "state.db")
        try:
            assert store._conn.execute("PRAGMA synchronous").fetchall() == [(level,)]
        finally:
            sync_view(store).close()

    def test_a_url_path_with_a_double_slash_names_the_file_as_people_know_it(self, tmp_path: Path) -> None:
        # `sqlite:////abs/x.db` parses to `//abs/x.db`; messages must show `/abs/x.db`.
        path = tmp_path / "state.db"
        store = sync_view(SQLiteStateStore("/" + str(path)))
        try:
            store.create_execution(_execution("E1"), [])
        finally:
            store.close()
        for given in ("/" + str(path), str(path)):
            again = sync_view(SQLiteStateStore(given))
            assert again.path == path
            again.close()
        assert _query(path, "SELECT id FROM executions") == [("E1",)]

    def test_a_relative_path_stays_relative(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.chdir(tmp_path)
        store = sync_view(SQLiteStateStore("state.db"))
        assert store.path == Path("state.db")
        store.close()
        assert (tmp_path / "state.db").is_file()

    def test_a_home_that_cannot_be_made_says_why(self, tmp_path: Path) -> None:
        (tmp_path / "home").write_text("a file where the home directory should be")
        path = tmp_path / "home" / "kitaru" / "state.db"
        with pytest.raises(KitaruStoreError) as info:
            SQLiteStateStore(path)
        # The message names the file in the way, not only the database it could not make.
        assert str(info.value) == (
            f"cannot open the state database {path}: {tmp_path / 'home'}: File exists. Check that the "
            "directory is writable, or point KITARU_HOME somewhere that is."
        )

    def test_a_database_name_the_system_refuses_says_why(self, tmp_path: Path) -> None:
        path = tmp_path / ("x" * 300 + ".db")
        with pytest.raises(KitaruStoreError) as info:
            SQLiteStateStore(path)
        assert str(info.value) == (
            f"cannot open the state database {path}: File name too long. Check that the directory is "
            "writable, or point KITARU_HOME somewhere that is."
        )

    def test_a_database_path_that_is_a_directory_says_so(self, tmp_path: Path) -> None:
        path = tmp_path / "state.db"
        path.mkdir()
        with pytest.raises(KitaruStoreError) as info:
            SQLiteStateStore(path)
        assert str(info.value) == (
            f"cannot open the state database {path}: unable to open database file. Check that the "
            "directory is writable, or point KITARU_HOME somewhere that is."
        )

    def test_a_failed_read_names_the_database(self, tmp_path: Path) -> None:
        path = tmp_path / "state.db"
        store = sync_view(SQLiteStateStore(path))
        try:
            with closing(sqlite3.connect(path)) as conn, conn:
                conn.execute("DROP TABLE executions")  # a damaged (or foreign) database
            with pytest.raises(KitaruStoreError) as info:
                store.get_execution("E1")
            assert str(info.value).startswith(f"cannot read {path}: ") and "executions" in str(info.value)
        finally:
            store.close()


# Another process holding a write transaction until its stdin closes (a script writing the
# database directly, a backup tool, an interactive shell left open).
_HOLDER = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN IMMEDIATE")
conn.execute("UPDATE executions SET updated_at = updated_at")
print("holding", flush=True)
sys.stdin.read()
conn.execute("ROLLBACK")
"""


class TestALongWriteLockOfAnotherProcess:
    def test_a_commit_says_who_to_look_for_and_writes_nothing_then_works_once_released(
        self, tmp_path: Path
    ) -> None:
        path = tmp_path / "state.db"
        store = sync_view(SQLiteStateStore(path, timeout=0.2))
        holder = None
        try:
            execution = _execution("E1")
            store.create_execution(execution, [])
            holder = subprocess.Popen(
                [sys.executable, "-c", _HOLDER, str(path)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            assert holder.stdout is not None and holder.stdout.readline() == "holding\n"
            with pytest.raises(KitaruStoreError) as info:
                store.commit(execution.id, [_completed("step")])
            message = str(info.value)
            assert f"cannot write to {path}: database is locked" in message
            assert "more than 0.2 s" in message and f"fuser {path}" in message
            assert "kitaru executions retry" in message
            assert store.read_journal(execution.id) == []  # nothing half-written

            holder.communicate("", timeout=30)
            store.commit(execution.id, [_completed("step")])
            assert [r.call_id for r in store.read_journal(execution.id)] == ["step"]
        finally:
            if holder is not None and holder.poll() is None:
                holder.kill()
                holder.wait(30)
            store.close()
