"""Chaos: the PostgreSQL server is killed (``pg_ctl stop -m immediate``) while a flow runs in
another process, then started again. The flow either retries through it to success or fails with
a clear store error; the journal stays whole; resuming completes it with each checkpoint completed
exactly once. Runs are counted outside kitaru (lines appended to a file)."""

from __future__ import annotations

import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from kitaru.store import sync_view
from kitaru.store.postgres import PostgresStateStore
from tests._process import wait_for
from tests._services.postgres import PostgresCluster

pytestmark = pytest.mark.e2e

FLOWS = Path(__file__).parent / "flows"
STEPS = 30


def _check_journal(store: PostgresStateStore, exec_id: str) -> None:
    """The journal is whole: ordered ids, one completion per call, each output the right value."""
    journal = store.read_journal(exec_id)
    ids = [r.id for r in journal]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    completed = [r for r in journal if r.kind == "checkpoint_completed"]
    assert Counter(r.call_id for r in completed) == Counter(
        ["step", *(f"step:{i}" for i in range(2, STEPS + 1))]
    )
    assert [r.seq for r in completed] == sorted(r.seq for r in completed)
    acc = 0
    for i, record in enumerate(completed, start=1):
        acc += i
        artifact = store.get_artifact(record.artifact_id or "")
        assert artifact is not None and artifact.inline == str(acc).encode(), (i, artifact)


@pytest.fixture
def chaos_env(
    tmp_path: Path, subprocess_env: dict[str, str], postgres_cluster: PostgresCluster, postgres_dsn: str
) -> dict[str, str]:
    (tmp_path / "marks").mkdir()
    return {
        **subprocess_env,
        "KITARU_PG_DSN": postgres_dsn,
        "COUNT_FILE": str(tmp_path / "count.txt"),
        "MARK_DIR": str(tmp_path / "marks"),
    }


def _start(env: dict[str, str], cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(FLOWS / "pg_chain.py"), "run", str(STEPS)],
        env=env,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _resume(env: dict[str, str], exec_id: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(FLOWS / "pg_chain.py"), "resume", exec_id],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_flow_retries_through_server_restarts(
    tmp_path: Path, chaos_env: dict[str, str], postgres_cluster: PostgresCluster, postgres_dsn: str
) -> None:
    env = {**chaos_env, "PG_RETRIES": "12"}
    proc = _start(env, tmp_path)
    try:
        for at in (5, 15, 25):  # kill the server three times during the run
            wait_for(tmp_path / "marks" / str(at), proc)
            postgres_cluster.stop("immediate")
            time.sleep(0.5)
            postgres_cluster.start()
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(60)
    assert proc.returncode == 0, err
    exec_id, status = out.split()
    if status != "completed":
        store = sync_view(PostgresStateStore(postgres_dsn))
        execution = store.get_execution(exec_id)
        store.close()
        pytest.fail(f"the flow ended {status}: {execution and execution.error}\n{err}")

    runs = Counter(int(line) for line in (tmp_path / "count.txt").read_text().split())
    assert runs == Counter(range(1, STEPS + 1)), runs  # every checkpoint ran exactly once
    store = sync_view(PostgresStateStore(postgres_dsn))
    try:
        _check_journal(store, exec_id)
        final = store.get_execution(exec_id)
        assert final is not None and final.status == "completed" and final.lease_owner is None
    finally:
        store.close()


def test_server_down_too_long_is_a_clear_error_then_resume_completes(
    tmp_path: Path, chaos_env: dict[str, str], postgres_cluster: PostgresCluster, postgres_dsn: str
) -> None:
    env = {**chaos_env, "PG_RETRIES": "2"}
    proc = _start(env, tmp_path)
    try:
        wait_for(tmp_path / "marks" / "10", proc)
        postgres_cluster.stop("immediate")
        try:
            out, err = proc.communicate(timeout=120)
        finally:
            postgres_cluster.start()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(60)
    assert proc.returncode != 0, out
    assert "KitaruStoreError" in err and "cannot reach the PostgreSQL state store" in err, err
    assert f"127.0.0.1:{postgres_cluster.port}" in err

    store = sync_view(PostgresStateStore(postgres_dsn))
    try:
        [execution] = store.list_executions()
        assert execution.status in {"running", "failed"}
        journal = store.read_journal(execution.id)
        before = Counter(r.call_id for r in journal if r.kind == "checkpoint_completed")
        assert set(before.values()) <= {1}
        done_before = len(before)
        assert 9 <= done_before < STEPS  # 10 had run when the server died; its commit may be lost

        resumed = _resume(env, execution.id)
        assert resumed.returncode == 0, resumed.stderr
        assert resumed.stdout.split() == [execution.id, str(sum(range(1, STEPS + 1))), "completed"]

        _check_journal(store, execution.id)
        runs = Counter(int(line) for line in (tmp_path / "count.txt").read_text().split())
        # Checkpoints whose completion was committed before the server died never ran again; the
        # one in flight when it died (its completion was lost) ran twice, at most.
        assert all(runs[i] == 1 for i in range(1, done_before + 1)), runs
        assert all(runs[i] in (1, 2) for i in range(done_before + 1, STEPS + 1)), runs
        assert sum(runs[i] == 2 for i in range(1, STEPS + 1)) <= 1, runs
    finally:
        store.close()
