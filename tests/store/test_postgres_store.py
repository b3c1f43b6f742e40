"""The PostgreSQL state store runs the shared conformance suite against a real server, plus its
schema handling, its error translation and its behaviour while the server restarts."""

from __future__ import annotations

import functools
import json
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from kitaru._install import install_hint_pattern
from kitaru._portal import block_on
from kitaru.errors import KitaruConfigError, KitaruMissingDependencyError, KitaruStoreError
from kitaru.store import ExecutionRecord, JournalRecord, sync_view
from kitaru.store.catalog_conformance import CatalogStoreConformance
from kitaru.store.conformance import (
    KeyStoreConformance,
    SecretStoreConformance,
    StateStoreConformance,
    _answer,
    _live_owner,
    _waiting,
)
from kitaru.store.open import open_state_store
from kitaru.store.postgres import PostgresStateStore
from tests._services.postgres import PostgresCluster
from tests.store._listing import LISTINGS


@pytest.fixture(scope="class")
def class_dsn(postgres_cluster: PostgresCluster) -> str:
    """One database per test class: conformance tests only touch records they create."""
    return postgres_cluster.dsn(postgres_cluster.create_database())


@pytest.fixture
async def state_store(class_dsn: str) -> AsyncIterator[PostgresStateStore]:
    store = PostgresStateStore(class_dsn)
    yield store
    await store.aclose()


def _plan_nodes(plan: str) -> list[str]:
    """Each node of a PostgreSQL ``EXPLAIN (FORMAT JSON)`` plan: the index it reads, else its type."""
    nodes, found = [json.loads(plan)[0]["Plan"]], []
    while nodes:
        node = nodes.pop()
        found.append(node.get("Index Name") or node["Node Type"])
        nodes += node.get("Plans", [])
    return found


class TestPostgresKeyStore(KeyStoreConformance):
    """API keys of the team server."""


class TestPostgresCatalogStore(CatalogStoreConformance):
    """The checkpoint cache and artifact tags."""


class TestPostgresSecretStore(SecretStoreConformance):
    """Secrets (ciphertext only) for kitaru.secret()."""


class TestPostgresStateStore(StateStoreConformance):
    def other_process_opener(self, state_store: PostgresStateStore) -> Callable[[], PostgresStateStore]:
        return functools.partial(PostgresStateStore, state_store.dsn)


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


class TestSchema:
    def test_schema_version_is_recorded_in_its_own_schema(self, postgres_dsn: str) -> None:
        store = sync_view(PostgresStateStore(postgres_dsn))
        store.list_executions()
        store.close()
        version = _fetch(postgres_dsn, "SELECT value FROM kitaru.meta WHERE key = 'schema_version'")
        assert int(version) >= 1
        tables = _fetch(
            postgres_dsn,
            "SELECT string_agg(tablename, ',' ORDER BY tablename) FROM pg_tables WHERE schemaname = 'kitaru'",
        )
        assert tables.split(",") == [
            "api_keys",
            "artifacts",
            "cache_entries",
            "commits",
            "deployments",
            "ended_sessions",
            "executions",
            "journal",
            "meta",
            "secrets",
            "tag_moves",
            "tags",
        ]

    def test_a_fresh_database_is_migrated_by_concurrent_openers(
        self, postgres_cluster: PostgresCluster
    ) -> None:
        name = f"fresh_{time.monotonic_ns()}"
        postgres_cluster.execute(f"CREATE DATABASE {name}")
        dsn = postgres_cluster.dsn(name)
        barrier = threading.Barrier(6)
        errors: list[BaseException] = []

        def open_one() -> None:
            barrier.wait(timeout=60)
            try:
                opened = sync_view(PostgresStateStore(dsn, min_size=1, max_size=1))
                opened.list_executions()  # the first call opens the pool and checks the schema
                opened.close()
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=open_one) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert errors == []
        store = sync_view(PostgresStateStore(dsn))
        try:
            store.create_execution(_execution("E1"), [])
            assert store.get_execution("E1") == _execution("E1")
        finally:
            store.close()

    def test_reopening_keeps_data(self, postgres_dsn: str) -> None:
        store = sync_view(PostgresStateStore(postgres_dsn))
        store.create_execution(_execution("E1"), [])
        store.commit("E1", [JournalRecord(kind="log", data={"n": 1})])
        store.close()
        again = sync_view(PostgresStateStore(postgres_dsn))
        try:
            assert again.get_execution("E1") == _execution("E1")
            assert [r.data for r in again.read_journal("E1")] == [{"n": 1}]
        finally:
            again.close()

    def test_newer_schema_version_is_refused(self, postgres_dsn: str) -> None:
        _fetch(postgres_dsn, "UPDATE kitaru.meta SET value = '999' WHERE key = 'schema_version'")
        with pytest.raises(KitaruStoreError, match="Upgrade kitaru"):
            sync_view(PostgresStateStore(postgres_dsn)).list_executions()
        assert _fetch(postgres_dsn, "SELECT value FROM kitaru.meta") == "999"

    def test_ids_sort_bytewise_whatever_the_locale(self, postgres_cluster: PostgresCluster) -> None:
        # A database whose default collation is linguistic ("a" < "B" < "b"): ids still sort bytewise.
        name = f"icu_{time.monotonic_ns()}"
        try:
            postgres_cluster.execute(
                f"CREATE DATABASE {name} TEMPLATE template0 LOCALE_PROVIDER icu ICU_LOCALE 'en-US' LOCALE 'C'"
            )
        except Exception as exc:
            pytest.skip(f"this server cannot make an ICU database: {exc}")
        assert postgres_cluster.execute("SELECT 'a' < 'B'", name) is True
        store = sync_view(PostgresStateStore(postgres_cluster.dsn(name)))
        try:
            for exec_id in ("b", "B", "a", "A", "_", "0", "Ab", "ab"):
                store.create_execution(_execution(exec_id), [])
            assert [e.id for e in store.list_executions()] == ["b", "ab", "a", "_", "B", "Ab", "A", "0"]
            assert store.match_execution_ids("a", limit=10) == ["a", "ab"]
            assert store.match_execution_ids("A", limit=10) == ["A", "Ab"]
        finally:
            store.close()


class TestCommitTokens:
    def test_every_write_leaves_a_token_and_old_ones_are_forgotten(self, postgres_dsn: str) -> None:
        _fetch(
            postgres_dsn,
            "INSERT INTO kitaru.commits (token, at) SELECT gen_random_uuid(), 1000.0 "
            "FROM generate_series(1, 50)",
        )
        store = sync_view(PostgresStateStore(postgres_dsn))
        try:
            store.create_execution(_execution("E1"), [])  # the store's first write tidies up
            store.commit("E1", [JournalRecord(kind="log")])
            store.acquire_lease("E1", "elsewhere.invalid:1:x", 60.0, allowed_statuses={"running"})
            assert _fetch(postgres_dsn, "SELECT count(*) FROM kitaru.commits WHERE at < 2000") == 0
            assert _fetch(postgres_dsn, "SELECT count(*) FROM kitaru.commits") == 3
        finally:
            store.close()


class TestFullPool:
    def test_a_server_pool_opens_every_connection_at_once_and_keeps_them(self, postgres_dsn: str) -> None:
        """``open_full_pool`` (the team server, at start) opens all ``max_size`` connections
        before any request, so a burst opens none; a store used only lazily opens one."""
        import asyncio

        count = (
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )

        async def main() -> None:
            lazy = PostgresStateStore(postgres_dsn, max_size=4)
            try:
                await lazy.get_execution("nope")
                assert await _afetch(postgres_dsn, count) == 1
            finally:
                await lazy.aclose()
            store = PostgresStateStore(postgres_dsn, max_size=4)
            try:
                await store.open_full_pool()
                assert await _afetch(postgres_dsn, count) == 4
                await asyncio.gather(*(store.get_execution(f"nope{n}") for n in range(20)))
                assert await _afetch(postgres_dsn, count) == 4  # the burst opened nothing
            finally:
                await store.aclose()

        asyncio.run(main())


async def _answer_approve(store: PostgresStateStore, exec_id: str) -> bool:
    record, artifact = _answer(exec_id)
    return await store.answer_wait(
        exec_id, record, artifact, owner=_live_owner("answerer"), ttl=60.0, take_lease=True
    )


def _count_reads(store: PostgresStateStore) -> list[int]:
    """From now on, ``[n]``: how many queries the store's reads have sent."""
    sent = [0]
    read = store._read

    async def counting(sql: str, *params: Any) -> list[Any]:
        sent[0] += 1
        return await read(sql, *params)

    store._read = counting  # type: ignore[method-assign]
    return sent


class TestGroupCommit:
    def test_a_burst_of_answers_commits_in_fewer_transactions_than_answers(self, postgres_dsn: str) -> None:
        """Concurrent answers on one loop are group-committed: 30 answers leave fewer commit tokens
        (one per transaction) than answers, and every answer is recorded once."""
        import asyncio

        async def main() -> None:
            store = PostgresStateStore(postgres_dsn)
            try:
                ids = [await _waiting(store) for _ in range(30)]
                count = "SELECT count(*) FROM kitaru.commits"
                before = await _afetch(postgres_dsn, count)
                assert await asyncio.gather(*(_answer_approve(store, i) for i in ids)) == [True] * len(ids)
                transactions = await _afetch(postgres_dsn, count) - before
                assert 1 <= transactions < len(ids)
                answered = "SELECT count(*) FROM kitaru.journal WHERE kind = 'wait_answered'"
                assert await _afetch(postgres_dsn, answered) == len(ids)
            finally:
                await store.aclose()

        asyncio.run(main())

    def test_two_answers_to_one_wait_in_groups_written_at_once_record_one(self, postgres_dsn: str) -> None:
        """Several groups are written at once (each on its own connection): 120 answers, two to
        each of 60 waits, span groups that commit concurrently; each wait takes exactly one answer
        and the other is refused as answered, whichever group it landed in."""
        import asyncio

        from kitaru.errors import KitaruStateError
        from kitaru.store.postgres import _executions

        assert _executions._WRITERS > 1 and 60 > _executions._WRITE_GROUP  # the groups overlap

        async def main() -> None:
            store = PostgresStateStore(postgres_dsn)
            try:
                ids = [await _waiting(store) for _ in range(60)]

                async def answer(exec_id: str) -> object:
                    try:
                        return await _answer_approve(store, exec_id)
                    except KitaruStateError as exc:
                        return exc

                # First answers to all 60, then second answers: the two to a wait are 60 apart.
                outcomes = await asyncio.gather(*(answer(i) for _ in (1, 2) for i in ids))
                for k, exec_id in enumerate(ids):
                    pair = [outcomes[k], outcomes[k + len(ids)]]
                    assert sum(o is True for o in pair) == 1, (exec_id, pair)
                    assert sum(isinstance(o, KitaruStateError) for o in pair) == 1, (exec_id, pair)
                answered = "SELECT count(*) FROM kitaru.journal WHERE kind = 'wait_answered'"
                assert await _afetch(postgres_dsn, answered) == len(ids)
            finally:
                await store.aclose()

        asyncio.run(main())

    def test_concurrent_journal_reads_share_queries_and_each_gets_its_own(self, postgres_dsn: str) -> None:
        """Journal reads asked for together go in a few queries; each caller gets its execution's
        records in order (none for an unknown one), as a read of its own would."""
        import asyncio

        async def main() -> None:
            store = PostgresStateStore(postgres_dsn)
            try:
                ids = [f"R{n:02d}" for n in range(30)]
                for n, exec_id in enumerate(ids):
                    await store.create_execution(_execution(exec_id), [])
                    await store.commit(
                        exec_id, [JournalRecord(kind="log", call_id=f"{exec_id}-{i}") for i in range(n % 4)]
                    )
                expected = {exec_id: await store.read_journal(exec_id) for exec_id in ids}
                queries = _count_reads(store)
                asked = [*ids, ids[3], "unknown"]
                got = await asyncio.gather(*(store.read_journal(exec_id) for exec_id in asked))
                assert got == [*(expected[i] for i in ids), expected[ids[3]], []]
                assert [r.call_id for r in got[7]] == ["R07-0", "R07-1", "R07-2"]
                assert 1 <= queries[0] < len(asked)
            finally:
                await store.aclose()

        asyncio.run(main())

    def test_concurrent_wait_reads_share_queries_and_each_gets_its_own(self, postgres_dsn: str) -> None:
        """Wait reads asked for together go in a few queries, besides journal reads made at the same
        time; each caller gets its execution's records of its wait (and a cancel), as alone."""
        import asyncio

        async def main() -> None:
            store = PostgresStateStore(postgres_dsn)
            try:
                ids = [f"W{n:02d}" for n in range(30)]
                for n, exec_id in enumerate(ids):
                    await store.create_execution(_execution(exec_id), [])
                    names = [f"w{i}" for i in range(n % 3 + 1)]
                    await store.commit(
                        exec_id,
                        [JournalRecord(kind="checkpoint_completed", call_id=name) for name in names]
                        + [JournalRecord(kind="wait_opened", call_id=name) for name in names],
                    )
                    if n % 5 == 0:
                        await store.commit(exec_id, [JournalRecord(kind="wait_timed_out", call_id="w0")])
                    if n % 7 == 0:
                        await store.cancel(exec_id)
                asked = [(exec_id, f"w{i}") for exec_id in ids for i in range(3)] + [("unknown", "w0")]
                expected = [await store.read_wait(*a) for a in asked]
                journals = {exec_id: await store.read_journal(exec_id) for exec_id in ids}
                queries = _count_reads(store)
                got = await asyncio.gather(
                    *(store.read_wait(*a) for a in asked), *(store.read_journal(i) for i in ids)
                )
                assert got[: len(asked)] == expected
                assert got[len(asked) :] == [journals[i] for i in ids]
                assert 2 <= queries[0] < len(asked)
                # W00: w0 opened, timed out, then the execution cancelled; W05: w0 timed out only.
                assert [r.kind for r in expected[0]] == ["wait_opened", "wait_timed_out", "cancel_requested"]
                assert [r.kind for r in expected[1]] == ["cancel_requested"]
                assert [(r.kind, r.call_id) for r in expected[5 * 3 + 2]] == [("wait_opened", "w2")]
                assert [r.kind for r in expected[5 * 3]] == ["wait_opened", "wait_timed_out"]
                assert expected[-1] == []
            finally:
                await store.aclose()

        asyncio.run(main())


class TestOneWaitRead:
    def test_reading_a_wait_uses_its_indexes_not_the_journal(self, postgres_dsn: str) -> None:
        """read_wait's query finds a wait's records and a cancel through their own indexes: its plan
        for an execution of 3,000 checkpoints touches no other index and scans no table."""
        import asyncio

        import asyncpg  # type: ignore[import-untyped,unused-ignore]

        from kitaru.store.postgres._executions import _READ_WAITS

        async def main() -> list[str]:
            store = PostgresStateStore(postgres_dsn)
            try:
                await store.create_execution(_execution("BIG"), [])
                await store.commit(
                    "BIG",
                    [JournalRecord(kind="checkpoint_completed", call_id=f"c{i}") for i in range(3_000)]
                    + [JournalRecord(kind="wait_opened", call_id="approve")],
                )
                await store.cancel("BIG")
                assert [r.kind for r in await store.read_wait("BIG", "approve")] == [
                    "wait_opened",
                    "cancel_requested",
                ]
            finally:
                await store.aclose()
            conn = await asyncpg.connect(postgres_dsn)
            try:
                await conn.execute("ANALYZE kitaru.journal")
                await conn.execute("SET enable_seqscan = off")  # the table is small for a server
                plan = await conn.fetchval(f"EXPLAIN (FORMAT JSON) {_READ_WAITS}", ["BIG"], ["approve"])
            finally:
                await conn.close()
            return _plan_nodes(plan)

        found = asyncio.run(main())
        assert {"journal_once", "journal_cancel"} <= set(found), found
        assert "journal_exec" not in found and "Seq Scan" not in found, found


# Executions whose ids do not sort by time (the created_at of row i is a permutation of i), over
# 40 flows and 4 statuses, a third of them deployed (versions 0-4).
_BULK_EXECUTIONS = """
INSERT INTO kitaru.executions (id, flow, target, status, created_at, updated_at, metadata)
SELECT 'g' || lpad(i::text, 6, '0'), 'flow' || (i % 40), 'm:f',
       (ARRAY['running', 'waiting', 'completed', 'failed'])[1 + i % 4],
       1000 + (i * 7919) % $1, 1000, CASE WHEN i % 3 = 0
       THEN json_build_object('deployment', json_build_object('version', i % 5))::text ELSE '{}' END
FROM generate_series(1, $1) AS i
"""


class TestListingOrder:
    def test_a_page_reads_by_index_whatever_the_filters(self, postgres_dsn: str) -> None:
        """Among 20,000 executions, each filter combination, with and without a cursor, walks an
        index in (created_at, id) order: the plan has no sequential scan and no sort, and the
        cursor's place is one primary-key lookup."""
        import asyncio

        import asyncpg  # type: ignore[import-untyped,unused-ignore]

        async def main() -> list[str]:
            conn = await asyncpg.connect(postgres_dsn)
            problems = []
            store = PostgresStateStore(postgres_dsn)
            try:
                await conn.execute(_BULK_EXECUTIONS, 20_000)
                await conn.execute("ANALYZE kitaru.executions")
                sent: list[tuple[str, tuple[Any, ...]]] = []
                read = store._read

                async def recording(sql: str, *params: Any) -> list[Any]:
                    sent.append((sql, params))
                    return await read(sql, *params)

                store._read = recording  # type: ignore[method-assign]

                async def plan_of(sql: str, params: tuple[Any, ...]) -> list[str]:
                    plan = await conn.fetchval(f"EXPLAIN (FORMAT JSON) {sql}", *params)
                    return _plan_nodes(plan)

                for filters, indexes in LISTINGS:
                    for cursor in (None, "g000100"):
                        sent.clear()
                        assert await store.list_executions(limit=50, before=cursor, **filters), filters
                        sql, params = sent[0]
                        found = await plan_of(sql, params)
                        if "Seq Scan" in found or not indexes & set(found):
                            problems.append(f"{filters} cursor={cursor}: {found}")
                        if cursor is not None and "executions_pkey" not in found:
                            problems.append(f"{filters}: the cursor is not found by its id: {found}")
                        if not filters and {"Sort", "Incremental Sort"} & set(found):
                            problems.append(f"the unfiltered list cursor={cursor} sorts: {found}")
                        # Where a filter matches a few thousand rows the planner may rightly fetch
                        # them by index and sort those; with sorting priced out, an index must give
                        # the order itself (were there none, the plan would sort anyway).
                        await conn.execute("SET enable_sort = off")
                        found = await plan_of(sql, params)
                        await conn.execute("RESET enable_sort")
                        if {"Sort", "Incremental Sort", "Seq Scan"} & set(found):
                            problems.append(f"{filters} cursor={cursor} has no ordered index: {found}")
            finally:
                await store.aclose()
                await conn.close()
            return problems

        problems = asyncio.run(main())
        assert problems == [], "\n".join(problems)

    def test_an_older_database_is_migrated_and_lists_by_time(self, postgres_cluster: PostgresCluster) -> None:
        """A database written before listing by time (schema version 6) is migrated when a store
        opens it: its executions list newest first, a chosen id among generated ones."""
        from kitaru.store.postgres._schema import _MIGRATIONS

        name = f"older_{time.monotonic_ns()}"
        postgres_cluster.execute(f"CREATE DATABASE {name}")
        dsn = postgres_cluster.dsn(name)
        rows = ", ".join(
            f"('{i}', 'f', 'm:f', 'completed', {t}, {t})"
            for i, t in (("01AAAA", 1), ("order-42", 2), ("01BBBB", 3))
        )
        older = (
            "CREATE SCHEMA kitaru; CREATE TABLE kitaru.meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);"
            + "".join(_MIGRATIONS[:6])
            + "INSERT INTO kitaru.meta VALUES ('schema_version', '6');"
            + "INSERT INTO kitaru.executions (id, flow, target, status, created_at, updated_at) "
            + f"VALUES {rows};"
        )

        async def write_older() -> None:
            import asyncpg  # type: ignore[import-untyped,unused-ignore]

            conn = await asyncpg.connect(dsn)
            try:
                await conn.execute(older)  # a script: several statements, no parameters
            finally:
                await conn.close()

        import asyncio

        asyncio.run(write_older())
        store = sync_view(PostgresStateStore(dsn))
        try:
            assert [e.id for e in store.list_executions()] == ["01BBBB", "order-42", "01AAAA"]
            assert [e.id for e in store.list_executions(flow="f", before="order-42")] == ["01AAAA"]
        finally:
            store.close()
        assert _fetch(dsn, "SELECT value FROM kitaru.meta") == str(len(_MIGRATIONS))
        indexes = _fetch(
            dsn, "SELECT string_agg(indexname, ',') FROM pg_indexes WHERE tablename = 'executions'"
        )
        assert {"executions_created", "executions_flow", "executions_status", "executions_version"} <= set(
            str(indexes).split(",")
        )


class TestOpening:
    @pytest.mark.parametrize("scheme", ["postgresql", "postgres"])
    def test_open_state_store_by_uri(self, postgres_dsn: str, scheme: str) -> None:
        store = sync_view(open_state_store(scheme + postgres_dsn.removeprefix("postgresql")))
        try:
            assert isinstance(store.store, PostgresStateStore)
            assert store.list_executions() == []
        finally:
            store.close()

    def test_unknown_scheme_names_both_and_hides_credentials(self) -> None:
        with pytest.raises(KitaruConfigError, match="postgresql://") as caught:
            open_state_store("mysql://x:hunter2@y/z")
        assert "hunter2" not in str(caught.value)

    def test_unresolvable_host_is_not_retried(self) -> None:
        started = time.monotonic()
        with pytest.raises(KitaruStoreError, match="cannot resolve"):
            store = sync_view(
                PostgresStateStore("postgresql://u:pw@no-such-host.invalid:5432/db", retries=5, backoff=1.0)
            )
            sync_view(store).list_executions()
        assert time.monotonic() - started < 5

    def test_missing_asyncpg_names_the_extra(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setitem(sys.modules, "asyncpg", None)
        with pytest.raises(KitaruMissingDependencyError, match=install_hint_pattern("postgres")):
            PostgresStateStore("postgresql://u@127.0.0.1:1/db")

    def test_refused_connection_names_the_host_and_hides_the_password(self) -> None:
        port = _closed_port()
        dsn = f"postgresql://alice:s3cr3t-pw@127.0.0.1:{port}/kitaru"
        started = time.monotonic()
        with pytest.raises(KitaruStoreError) as caught:
            sync_view(PostgresStateStore(dsn, retries=2, backoff=0.01)).list_executions()
        message = str(caught.value)
        assert f"127.0.0.1:{port}" in message
        assert "pg_isready" in message
        assert "s3cr3t-pw" not in message and "s3cr3t-pw" not in repr(caught.value.__cause__)
        assert time.monotonic() - started < 10

    def test_wrong_password_is_a_clear_store_error(self, postgres_cluster: PostgresCluster) -> None:
        role = f"kitaru_pw_{time.monotonic_ns()}"
        postgres_cluster.execute(f"CREATE ROLE {role} LOGIN PASSWORD 'right-one'")
        dsn = postgres_cluster.dsn("postgres", user=role, password="wrong-one")
        with pytest.raises(KitaruStoreError, match="password") as caught:
            sync_view(PostgresStateStore(dsn, retries=1, backoff=0.01)).list_executions()
        assert "wrong-one" not in str(caught.value)
        assert role in str(caught.value)

    def test_missing_database_says_how_to_create_it(self, postgres_cluster: PostgresCluster) -> None:
        with pytest.raises(KitaruStoreError, match="createdb"):
            store = sync_view(
                PostgresStateStore(postgres_cluster.dsn("no_such_database"), retries=1, backoff=0.01)
            )
            sync_view(store).list_executions()

    def test_closing_under_load_ends_every_call(self, postgres_dsn: str) -> None:
        store = sync_view(PostgresStateStore(postgres_dsn))
        store.create_execution(_execution("E1"), [])
        outcomes: list[str] = []

        def hammer() -> None:
            while True:
                try:
                    store.read_journal("E1")
                except KitaruStoreError:
                    outcomes.append("closed")
                    return

        threads = [threading.Thread(target=hammer) for _ in range(6)]
        for t in threads:
            t.start()
        time.sleep(0.2)
        store.close()
        for t in threads:
            t.join(15)
        assert not any(t.is_alive() for t in threads)
        assert outcomes == ["closed"] * 6

    def test_a_closed_store_raises_store_error(self, postgres_dsn: str) -> None:
        store = sync_view(PostgresStateStore(postgres_dsn))
        store.close()
        store.close()  # twice is fine
        with pytest.raises(KitaruStoreError, match="closed"):
            store.list_executions()


class TestServerRestart:
    """The server goes away and comes back: calls retry through it, or fail with a clear error."""

    def test_calls_retry_through_a_restart(
        self, postgres_cluster: PostgresCluster, postgres_dsn: str
    ) -> None:
        store = sync_view(PostgresStateStore(postgres_dsn, retries=10, backoff=0.05))
        try:
            store.create_execution(_execution("E1"), [])
            postgres_cluster.stop("immediate")
            restarter = threading.Timer(1.0, postgres_cluster.start)
            restarter.start()
            try:
                store.commit("E1", [JournalRecord(kind="log", data={"during": "restart"})])
                journal = store.read_journal("E1")
            finally:
                restarter.join()
            assert [r.data for r in journal] == [{"during": "restart"}]
        finally:
            store.close()
            _ensure_running(postgres_cluster)

    def test_a_server_that_stays_down_is_a_clear_error(
        self, postgres_cluster: PostgresCluster, postgres_dsn: str
    ) -> None:
        store = sync_view(PostgresStateStore(postgres_dsn, retries=2, backoff=0.05))
        try:
            store.create_execution(_execution("E1"), [])
            postgres_cluster.stop("immediate")
            try:
                with pytest.raises(KitaruStoreError, match="cannot reach the PostgreSQL state store"):
                    store.commit("E1", [JournalRecord(kind="log")])
                with pytest.raises(KitaruStoreError, match=f"127.0.0.1:{postgres_cluster.port}"):
                    store.read_journal("E1")
            finally:
                postgres_cluster.start()
            # Nothing was written, and the store works again once the server is back.
            assert store.read_journal("E1") == []
            store.commit("E1", [JournalRecord(kind="log")])
            assert len(store.read_journal("E1")) == 1
        finally:
            store.close()
            _ensure_running(postgres_cluster)


class TestCommitLostInFlight:
    """The connection dies after the COMMIT (or the autocommitted statement) was sent: before
    trying again, the store learns from the server whether that write landed."""

    @pytest.mark.parametrize("metadata", [None, {"m": 1}], ids=["one_statement", "transaction"])
    def test_a_commit_that_landed_is_not_applied_again(
        self, postgres_dsn: str, monkeypatch: pytest.MonkeyPatch, metadata: dict[str, int] | None
    ) -> None:
        store = sync_view(PostgresStateStore(postgres_dsn, backoff=0.01))
        real = PostgresStateStore._attempt
        losses = [ConnectionResetError("lost while reading the answer")]

        async def answer_lost(self: PostgresStateStore, body: Any, attempt: Any, single: bool) -> Any:
            result = await real(self, body, attempt, single)
            if losses:
                raise losses.pop()
            return result

        try:
            store.create_execution(_execution("E1"), [])
            monkeypatch.setattr(PostgresStateStore, "_attempt", answer_lost)
            # "log" records may repeat: only settling the lost attempt keeps a retry from adding one.
            store.commit("E1", [JournalRecord(kind="log", data={"n": 1})], metadata=metadata)
            assert losses == []
            assert [r.data for r in store.read_journal("E1")] == [{"n": 1}]
        finally:
            store.close()

    def test_a_commit_that_never_landed_is_run_again(
        self, postgres_dsn: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        store = sync_view(PostgresStateStore(postgres_dsn, backoff=0.01))
        real = PostgresStateStore._attempt
        runs: list[str] = []

        async def commit_lost(self: PostgresStateStore, body: Any, attempt: Any, single: bool) -> Any:
            runs.append("try")
            if len(runs) > 1:
                return await real(self, body, attempt, single)
            async with self._pool.acquire() as conn:
                tx = conn.transaction()
                await tx.start()
                await body(conn, attempt)
                attempt.sent = True
                await tx.rollback()  # as if the COMMIT never reached the server
            raise ConnectionResetError("lost while sending COMMIT")

        try:
            store.create_execution(_execution("E1"), [])
            monkeypatch.setattr(PostgresStateStore, "_attempt", commit_lost)
            store.commit("E1", [JournalRecord(kind="log", data={"n": 1})])
            assert runs == ["try", "try"]
            assert [r.data for r in store.read_journal("E1")] == [{"n": 1}]
        finally:
            store.close()

    def test_a_backend_left_holding_the_transaction_is_ended_first(
        self, postgres_dsn: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The client lost its socket, but the server still holds the transaction open (and the
        execution's row lock): it is terminated, then the write is settled and run again."""
        import asyncpg  # type: ignore[import-untyped,unused-ignore]

        store = sync_view(PostgresStateStore(postgres_dsn, backoff=0.01))
        real = PostgresStateStore._attempt
        stranded: list[Any] = []
        pids: list[int] = []

        async def stranded_transaction(
            self: PostgresStateStore, body: Any, attempt: Any, single: bool
        ) -> Any:
            if stranded:
                return await real(self, body, attempt, single)
            conn = await asyncpg.connect(postgres_dsn)
            stranded.append(conn)
            pids.append(conn.get_server_pid())
            started = await conn.fetchval(
                "SELECT backend_start FROM pg_stat_activity WHERE pid = $1", pids[0]
            )
            attempt.backend = (pids[0], started)
            await conn.execute("BEGIN")
            await body(conn, attempt)  # written and locked, never committed
            attempt.sent = True
            raise ConnectionResetError("lost while sending COMMIT")

        try:
            store.create_execution(_execution("E1"), [])
            monkeypatch.setattr(PostgresStateStore, "_attempt", stranded_transaction)
            store.commit("E1", [JournalRecord(kind="log", data={"n": 1})], metadata={"m": 1})
            assert [r.data for r in store.read_journal("E1")] == [{"n": 1}]
            # Its client socket is still open here: the server process was ended by the store.
            assert _fetch(postgres_dsn, f"SELECT count(*) FROM pg_stat_activity WHERE pid = {pids[0]}") == 0
        finally:
            if stranded:

                async def drop() -> None:
                    stranded[0].terminate()

                block_on(drop())
            store.close()

    def test_a_statement_timeout_is_settled_and_retried(
        self, postgres_dsn: str, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A commit waits on a row lock longer than ``command_timeout``: the timed-out try is
        settled (it did not land) and retried until the lock is released; one record results."""
        import asyncio

        import asyncpg  # type: ignore[import-untyped,unused-ignore]

        store = sync_view(PostgresStateStore(postgres_dsn, command_timeout=0.3, backoff=0.05, retries=10))
        store.create_execution(_execution("E1"), [])
        locked = threading.Event()

        async def hold_the_row() -> None:
            conn = await asyncpg.connect(postgres_dsn)
            try:
                async with conn.transaction():
                    await conn.execute("SELECT 1 FROM kitaru.executions WHERE id = 'E1' FOR UPDATE")
                    locked.set()
                    await asyncio.sleep(1.5)
            finally:
                await conn.close()

        holder = threading.Thread(target=asyncio.run, args=(hold_the_row(),))
        holder.start()
        try:
            assert locked.wait(10)
            store.commit("E1", [JournalRecord(kind="log", data={"n": 1})])
            assert [r.data for r in store.read_journal("E1")] == [{"n": 1}]
            assert "TimeoutError" in caplog.text  # it did time out, and was retried
        finally:
            holder.join(10)
            store.close()

    def test_an_outcome_that_cannot_be_learned_is_reported_not_guessed(
        self, postgres_dsn: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        store = sync_view(PostgresStateStore(postgres_dsn, retries=3, backoff=0.01))
        real = PostgresStateStore._attempt
        runs: list[str] = []

        async def answer_lost(self: PostgresStateStore, body: Any, attempt: Any, single: bool) -> Any:
            runs.append("try")
            await real(self, body, attempt, single)
            raise ConnectionResetError("lost while reading the answer")

        async def unreachable(self: PostgresStateStore, attempt: Any, what: str) -> bool:
            raise ConnectionRefusedError("the server is gone again")

        try:
            store.create_execution(_execution("E1"), [])
            monkeypatch.setattr(PostgresStateStore, "_attempt", answer_lost)
            monkeypatch.setattr(PostgresStateStore, "_landed", unreachable)
            with pytest.raises(KitaruStoreError, match="may or may not have been saved"):
                store.commit("E1", [JournalRecord(kind="log", data={"n": 1})])
            assert runs == ["try"]  # never run again on a guess
            assert [r.data for r in store.read_journal("E1")] == [{"n": 1}]
        finally:
            store.close()


def _ensure_running(cluster: PostgresCluster) -> None:
    try:
        cluster.execute("SELECT 1")
    except Exception:
        cluster.start()


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _afetch(dsn: str, sql: str) -> Any:
    import asyncpg  # type: ignore[import-untyped,unused-ignore]

    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetchval(sql)
    finally:
        await conn.close()


def _fetch(dsn: str, sql: str) -> object:
    import asyncio

    import asyncpg  # type: ignore[import-untyped,unused-ignore]

    async def run() -> object:
        conn = await asyncpg.connect(dsn)
        try:
            return await conn.fetchval(sql)
        finally:
            await conn.close()

    return asyncio.run(run())
