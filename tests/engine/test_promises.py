"""Promises the README makes that no other test pinned: each test here failed against a bug
planted in the core (replay's seed filter, diff's wait answers, divergence under an explicit
name, the durability settings) or covers a documented setting nobody exercised."""

from __future__ import annotations

import os
import time
from collections import Counter
from pathlib import Path

import pytest

import kitaru
from kitaru import KitaruClient, checkpoint, flow
from kitaru._engine.runtime import Runtime, get_runtime
from kitaru.store import sync_view
from kitaru.store.filesystem import FilesystemArtifactStore
from kitaru.store.sqlite import SQLiteStateStore

RAN: Counter[str] = Counter()
BIG = bytes(range(256)) * 512  # 128 KiB: over the inline limit, so a file in the artifact store


@pytest.fixture(autouse=True)
def _reset() -> None:
    RAN.clear()


# -- replay keeps what a reused checkpoint logged, saved, printed and loaded --------------------


@checkpoint
def source() -> str:
    return "upstream notes"


@flow
def upstream() -> str:
    return source()


@checkpoint
def gather(other: str) -> str:
    RAN["gather"] += 1
    notes = kitaru.load(other, "source")
    print("gathered the notes")
    kitaru.log(tokens=42)
    kitaru.save("context", {"notes": notes}, type="context")
    return notes.upper()


@checkpoint
def finish(text: str) -> str:
    RAN["finish"] += 1
    return text + "!"


@flow
def two_steps(other: str) -> str:
    return finish(gather(other))


class TestReplayKeepsTheReusedCallsRecords:
    def test_logs_saves_output_and_load_edges_of_reused_checkpoints(self, runtime: Runtime) -> None:
        other = upstream.run().exec_id
        original = two_steps.run(other)
        assert original.wait(timeout=60) == "UPSTREAM NOTES!"
        client = KitaruClient()

        replay = client.executions.replay(original.exec_id, "finish")
        assert replay.wait(timeout=60) == "UPSTREAM NOTES!"
        assert RAN == {"gather": 1, "finish": 2}  # gather was reused, not run again

        # What gather logged is still shown under it...
        [call] = [c for c in client.executions.get(replay.exec_id).checkpoints if c.call_id == "gather"]
        assert call.metadata.get("tokens") == 42
        # ...what it printed is in the replay's logs...
        texts = [e.text for e in client.executions.logs(replay.exec_id, checkpoint="gather")]
        assert any("gathered the notes" in t for t in texts), texts
        # ...what it saved is among the replay's artifacts (the same artifact, not a copy)...
        [saved] = client.artifacts.list(replay.exec_id, name="context")
        [original_saved] = client.artifacts.list(original.exec_id, name="context")
        assert saved.id == original_saved.id and saved.load() == {"notes": "upstream notes"}
        # ...and its load of the other execution's artifact is still an edge of the lineage.
        graph = client.executions.graph(replay.exec_id)
        sources = {e.source for e in graph.inputs_of("gather")}
        assert f"{other}/source" in sources, sources


# -- diff compares wait answers ------------------------------------------------------------------


@flow
def approve_flow(topic: str) -> str:
    kitaru.wait(name="approve", question="Ship?", schema=bool)
    return topic


class TestDiff:
    def test_wait_answers_are_compared(self, runtime: Runtime) -> None:
        client = KitaruClient()
        a = approve_flow.run("same")
        b = approve_flow.run("same")
        client.executions.input(a.exec_id, True).wait(timeout=60)
        client.executions.input(b.exec_id, False).wait(timeout=60)

        diff = client.executions.diff(a.exec_id, b.exec_id)
        entries = {(e.kind, e.name): e for e in diff.entries}
        # Same input and same result: only the answer tells the two executions apart.
        assert entries[("input", "topic")].status == "same"
        assert entries[("result", "result")].status == "same"
        wait = entries[("wait", "approve")]
        assert wait.status == "changed"
        assert wait.detail is not None and "true" in wait.detail and "false" in wait.detail
        assert [(e.kind, e.name) for e in diff.changed] == [("wait", "approve")]

    def test_an_answer_in_one_execution_only(self, runtime: Runtime) -> None:
        client = KitaruClient()
        a = approve_flow.run("x")
        b = approve_flow.run("x")
        client.executions.input(a.exec_id, True).wait(timeout=60)
        diff = client.executions.diff(a.exec_id, b.exec_id)
        assert {(e.kind, e.name, e.status) for e in diff.changed} >= {("wait", "approve", "only_a")}


# -- @checkpoint(name=...): the call id, and divergence under an unchanged id --------------------


VERSION = {"v": 1}


@checkpoint(name="fetch")
def fetch_from_api(n: int) -> int:
    RAN["api"] += 1
    return n * 10


@checkpoint(name="fetch")
def fetch_from_cache(n: int) -> int:
    RAN["cache"] += 1
    return n * 10


@flow
def named_flow(n: int) -> int:
    fetch = fetch_from_api if VERSION["v"] == 1 else fetch_from_cache
    first = fetch(n)
    second = fetch(n + 1)
    if not kitaru.wait(name="go", schema=bool):
        return -1
    return first + second


class TestCheckpointName:
    def test_name_sets_the_call_ids_and_the_artifact_name(self, runtime: Runtime) -> None:
        VERSION["v"] = 1
        handle = named_flow.run(1)
        assert handle.status == "waiting"
        execution = KitaruClient().executions.get(handle.exec_id)
        ids = [(c.call_id, c.function) for c in execution.checkpoints]
        assert ids == [("fetch", "fetch_from_api"), ("fetch:2", "fetch_from_api")]
        outputs = KitaruClient().artifacts.list(handle.exec_id, type="output")
        assert [(a.name, a.version, a.call_id) for a in outputs] == [
            ("fetch", 1, "fetch"),
            ("fetch", 2, "fetch:2"),
        ]
        assert KitaruClient().executions.input(handle.exec_id, True).wait(timeout=60) == 30
        assert RAN == {"api": 2}  # the resume reused both calls

    def test_another_function_under_the_same_call_id_is_divergence(self, runtime: Runtime) -> None:
        VERSION["v"] = 1
        handle = named_flow.run(1)
        assert handle.status == "waiting"
        before = runtime.state.read_journal(handle.exec_id)
        VERSION["v"] = 2  # same call ids ("fetch", "fetch:2"), another function behind them
        with pytest.raises(kitaru.KitaruDivergenceError) as err:
            KitaruClient().executions.input(handle.exec_id, True)
        message = str(err.value)
        assert "fetch_from_api" in message and "fetch_from_cache" in message
        assert RAN == {"api": 2}  # the new function never ran on the old journal
        after = runtime.state.read_journal(handle.exec_id)
        completed = [r for r in after if r.kind == "checkpoint_completed"]
        assert completed == [r for r in before if r.kind == "checkpoint_completed"]


# -- FlowHandle.wait(timeout) ----------------------------------------------------------------------


class TestHandleWaitTimeout:
    def test_a_waiting_execution_times_out_and_stays_waiting(self, runtime: Runtime) -> None:
        handle = approve_flow.run("t")
        assert handle.status == "waiting"
        with pytest.raises(kitaru.KitaruTimeoutError) as err:
            handle.wait(timeout=0.2)
        assert handle.exec_id in str(err.value) and "waiting" in str(err.value)
        assert handle.status == "waiting"  # giving up waiting changes nothing
        assert KitaruClient().executions.input(handle.exec_id, True).wait(timeout=60) == "t"


# -- settings read from the environment -------------------------------------------------------------


@checkpoint
def lease_left() -> float:
    runtime = get_runtime()
    record = runtime.state.get_execution(kitaru.current_execution_id())
    assert record is not None and record.lease_expires_at is not None
    return record.lease_expires_at - time.time()


@flow
def lease_probe() -> float:
    return lease_left()


@checkpoint
def big_output() -> bytes:
    return BIG


@flow
def big_flow() -> int:
    return len(big_output())


class TestSettings:
    def test_lease_ttl_sets_how_long_a_lease_lasts(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("KITARU_LEASE_TTL", "500")
        left = lease_probe.run().wait(timeout=60)
        assert 400 < left <= 500  # the default would be 30 s

    def test_default_lease_ttl_is_30_s(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.delenv("KITARU_LEASE_TTL", raising=False)
        left = lease_probe.run().wait(timeout=60)
        assert 0 < left <= 30

    def test_home_defaults_to_xdg_data_home(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.delenv("KITARU_HOME")
        data = tmp_path / "xdg-data"
        monkeypatch.setenv("XDG_DATA_HOME", str(data))
        handle = big_flow.run()
        assert handle.wait(timeout=60) == len(BIG)
        home = data / "kitaru"
        assert (home / "kitaru.db").is_file()
        assert any((home / "artifacts").rglob("*")), "the blob is under the XDG home"
        store = sync_view(SQLiteStateStore(home / "kitaru.db"))
        try:
            assert [e.id for e in store.list_executions()] == [handle.exec_id]
        finally:
            store.close()

    @pytest.mark.parametrize(("setting", "expected"), [(None, 1), ("FULL", 2), ("normal", 1)])
    def test_sqlite_synchronous_follows_kitaru_sqlite_sync(
        self, setting: str | None, expected: int, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        # NORMAL (1) survives a killed process; FULL (2) adds an fsync per commit. OFF (0) would
        # lose committed checkpoints on a power cut and is never the default.
        if setting is None:
            monkeypatch.delenv("KITARU_SQLITE_SYNC", raising=False)
        else:
            monkeypatch.setenv("KITARU_SQLITE_SYNC", setting)
        state = get_runtime().astate
        assert isinstance(state, SQLiteStateStore)
        [(level,)] = state._conn.execute("PRAGMA synchronous").fetchall()
        assert level == expected
        [(mode,)] = state._conn.execute("PRAGMA journal_mode").fetchall()
        assert mode == "wal"

    @pytest.mark.parametrize(("setting", "fsyncs"), [("1", True), ("0", False), (None, False)])
    def test_kitaru_fsync_syncs_artifact_files(
        self, setting: str | None, fsyncs: bool, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        if setting is None:
            monkeypatch.delenv("KITARU_FSYNC", raising=False)
        else:
            monkeypatch.setenv("KITARU_FSYNC", setting)
        synced: list[int] = []
        real_fsync = os.fsync

        def counting_fsync(fd: int) -> None:
            # Count only artifact files: SQLite syncs through its own C code, not os.fsync.
            if os.path.basename(os.readlink(f"/proc/self/fd/{fd}")).startswith(".tmp-"):
                synced.append(fd)
            real_fsync(fd)

        monkeypatch.setattr(os, "fsync", counting_fsync)
        runtime = get_runtime()
        assert isinstance(runtime.aartifacts, FilesystemArtifactStore)
        assert big_flow.run().wait(timeout=60) == len(BIG)
        assert bool(synced) is fsyncs, synced
