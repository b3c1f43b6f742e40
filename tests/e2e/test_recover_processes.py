"""Recovery and cancel with real processes: `kitaru executions recover` drives on what a dead runner
left, times out waits past their deadline, and never runs a checkpoint twice; a cancel from another
process stops a runner before its next checkpoint."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from kitaru.store import ExecutionRecord, sync_view
from kitaru.store.sqlite import SQLiteStateStore
from tests._process import wait_for

pytestmark = pytest.mark.e2e

FLOWS = Path(__file__).parent / "flows"


@pytest.fixture
def env(tmp_path: Path, subprocess_env: dict[str, str]) -> dict[str, str]:
    return {
        **subprocess_env,
        "COUNT_FILE": str(tmp_path / "count"),
        "MARK_FILE": str(tmp_path / "mark"),
        "RELEASE_FILE": str(tmp_path / "release"),
    }


def counts(env: dict[str, str]) -> Counter[str]:
    return Counter(Path(env["COUNT_FILE"]).read_text().split())


def only_execution(kitaru_home: Path) -> ExecutionRecord:
    store = sync_view(SQLiteStateStore(kitaru_home / "kitaru.db"))
    try:
        [execution] = store.list_executions()
        return execution
    finally:
        store.close()


def journal_kinds(kitaru_home: Path, exec_id: str) -> list[tuple[str, str | None]]:
    store = sync_view(SQLiteStateStore(kitaru_home / "kitaru.db"))
    try:
        return [(r.kind, r.call_id) for r in store.read_journal(exec_id)]
    finally:
        store.close()


def cli(
    kitaru_cli: list[str], env: dict[str, str], cwd: Path, *args: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*kitaru_cli, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=120)


def start_held(env: dict[str, str], cwd: Path) -> subprocess.Popen[str]:
    """A runner of the `held` flow, inside its first checkpoint once MARK_FILE exists."""
    proc = subprocess.Popen(
        [sys.executable, str(FLOWS / "hold_and_count.py"), "held"],
        env=env,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for(Path(env["MARK_FILE"]), proc)
    return proc


def test_recover_from_two_processes_at_once_after_a_sigkill(
    tmp_path: Path, env: dict[str, str], kitaru_cli: list[str], kitaru_home: Path
) -> None:
    runner = start_held(env, tmp_path)
    os.kill(runner.pid, signal.SIGKILL)
    runner.communicate(timeout=30)
    execution = only_execution(kitaru_home)
    assert execution.status == "running"

    # Watching it says the runner is gone and what to run, and stops.
    watch = cli(kitaru_cli, env, tmp_path, "executions", "get", execution.id, "--watch", "--interval", "0.05")
    assert watch.returncode == 6, watch
    assert "runner is gone" in watch.stderr and "kitaru executions recover" in watch.stderr

    # Two recoveries at once, from other directories: one drives it, the other skips it.
    Path(env["RELEASE_FILE"]).touch()
    recoverers = []
    for name in ("a", "b"):
        cwd = tmp_path / name
        cwd.mkdir()
        recoverers.append(
            subprocess.Popen(
                [*kitaru_cli, "executions", "recover", "-o", "json"],
                env=env,
                cwd=cwd,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    reports: list[dict[str, Any]] = []
    for proc in recoverers:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        reports += json.loads(out)

    assert [r["outcome"] for r in reports if r["outcome"] != "skipped"] == ["completed"]
    assert {(r["exec_id"], r["reason"]) for r in reports} == {(execution.id, "runner_gone")}
    # `first` was interrupted once and completed once; nothing ran twice after that.
    assert counts(env) == {"first": 2, "second": 1}
    assert only_execution(kitaru_home).status == "completed"
    completed = Counter(c for k, c in journal_kinds(kitaru_home, execution.id) if k == "checkpoint_completed")
    assert completed == {"first": 1, "second": 1}

    again = cli(kitaru_cli, env, tmp_path, "executions", "recover")
    assert again.returncode == 0 and "nothing to recover" in again.stdout


def test_recover_times_out_a_wait_past_its_deadline(
    tmp_path: Path, env: dict[str, str], kitaru_cli: list[str], kitaru_home: Path
) -> None:
    env = {**env, "WAIT_TIMEOUT": "3"}
    started = subprocess.run(
        [sys.executable, str(FLOWS / "hold_and_count.py"), "approval"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert started.returncode == 0 and "waiting" in started.stdout, started
    execution = only_execution(kitaru_home)

    # Not yet due: recover leaves it alone (the test waits for the deadline, not a fixed time).
    store = sync_view(SQLiteStateStore(kitaru_home / "kitaru.db"))
    [opened] = [r for r in store.read_journal(execution.id) if r.kind == "wait_opened"]
    store.close()
    deadline = (opened.data or {})["deadline"]
    while time.time() <= deadline:
        time.sleep(0.05)

    done = cli(kitaru_cli, env, tmp_path, "executions", "recover", "-o", "json")
    assert done.returncode == 0, done.stderr
    [report] = json.loads(done.stdout)
    assert (report["exec_id"], report["reason"], report["outcome"]) == (
        execution.id,
        "wait_deadline",
        "completed",
    )
    assert ("wait_timed_out", "approve") in journal_kinds(kitaru_home, execution.id)
    result = cli(kitaru_cli, env, tmp_path, "executions", "get", execution.id, "-o", "json")
    artifact = cli(
        kitaru_cli, env, tmp_path, "artifacts", "get", json.loads(result.stdout)["result_artifact"]
    )
    assert "timed out" in artifact.stdout  # the flow saw KitaruWaitTimeoutError
    assert counts(env) == {"second": 1}

    again = cli(kitaru_cli, env, tmp_path, "executions", "recover", "-o", "json")
    assert again.returncode == 0 and json.loads(again.stdout) == []


def test_cancel_from_another_process_during_a_checkpoint(
    tmp_path: Path, env: dict[str, str], kitaru_cli: list[str], kitaru_home: Path
) -> None:
    # A heartbeat far away: the runner sees the cancel at its checkpoint's own commit.
    env = {**env, "KITARU_HEARTBEAT": "600", "KITARU_LEASE_TTL": "3600"}
    runner = start_held(env, tmp_path)
    try:
        execution = only_execution(kitaru_home)
        cancelled = cli(kitaru_cli, env, tmp_path, "executions", "cancel", execution.id)
        assert cancelled.returncode == 0, cancelled.stderr
    finally:
        Path(env["RELEASE_FILE"]).touch()
        out, err = runner.communicate(timeout=120)
    assert runner.returncode == 0, err
    assert "cancelled" in out

    assert counts(env) == {"first": 1}  # the next checkpoint never ran
    assert only_execution(kitaru_home).status == "cancelled"
    for command in ("resume", "retry"):
        refused = cli(kitaru_cli, env, tmp_path, "executions", command, execution.id)
        assert refused.returncode == 6
        assert "stays cancelled" in refused.stderr and "kitaru executions replay" in refused.stderr
    assert only_execution(kitaru_home).status == "cancelled"
