"""Durability with real processes: SIGKILL a flow mid-checkpoint, resume it from elsewhere."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from kitaru.store import sync_view
from kitaru.store.sqlite import SQLiteStateStore
from tests._process import wait_for

pytestmark = pytest.mark.e2e

FLOWS = Path(__file__).parent / "flows"


def test_sigkill_during_checkpoint_12_then_resume_from_another_process(
    tmp_path: Path, subprocess_env: dict[str, str], kitaru_cli: list[str], kitaru_home: Path
) -> None:
    count_file, mark_file = tmp_path / "count.txt", tmp_path / "mark"
    env = {**subprocess_env, "COUNT_FILE": str(count_file), "MARK_FILE": str(mark_file), "SLOW_AT": "12"}
    proc = subprocess.Popen([sys.executable, str(FLOWS / "sixteen.py"), "100"], env=env, cwd=tmp_path)
    try:
        wait_for(mark_file, proc)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(30)
    assert proc.returncode == -signal.SIGKILL

    store = sync_view(SQLiteStateStore(kitaru_home / "kitaru.db"))
    [execution] = store.list_executions()
    assert execution.status == "running"  # the killed runner never got to say anything else

    # Resume from another process, started in another directory, through the CLI.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env["SLOW_AT"] = "0"
    done = subprocess.run(
        [*kitaru_cli, "executions", "resume", execution.id],
        env=env,
        cwd=elsewhere,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "completed" in done.stdout

    runs = Counter(int(line) for line in count_file.read_text().split())
    assert all(runs[i] == 1 for i in range(1, 12)), runs  # paid once, never again
    assert runs[12] == 2  # interrupted once, then completed
    assert all(runs[i] == 1 for i in range(13, 17)), runs
    final = store.get_execution(execution.id)
    assert final is not None and final.status == "completed"
    completed = Counter(
        r.call_id for r in store.read_journal(execution.id) if r.kind == "checkpoint_completed"
    )
    assert len(completed) == 16 and set(completed.values()) == {1}
    result = subprocess.run(
        [*kitaru_cli, "executions", "get", execution.id, "-o", "json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert '"status": "completed"' in result.stdout
    artifact = store.get_artifact(final.result_artifact or "")
    assert artifact is not None and artifact.inline == str(100 + sum(range(1, 17))).encode()
    store.close()


def test_resume_is_refused_while_the_runner_is_alive(
    tmp_path: Path, subprocess_env: dict[str, str], kitaru_cli: list[str], kitaru_home: Path
) -> None:
    count_file, mark_file = tmp_path / "count.txt", tmp_path / "mark"
    env = {**subprocess_env, "COUNT_FILE": str(count_file), "MARK_FILE": str(mark_file), "SLOW_AT": "3"}
    proc = subprocess.Popen([sys.executable, str(FLOWS / "sixteen.py"), "0"], env=env, cwd=tmp_path)
    try:
        wait_for(mark_file, proc)
        store = sync_view(SQLiteStateStore(kitaru_home / "kitaru.db"))
        [execution] = store.list_executions()
        before = store.read_journal(execution.id)
        second = subprocess.run(
            [*kitaru_cli, "executions", "resume", execution.id],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert second.returncode != 0
        assert "being driven by" in second.stderr
        assert store.read_journal(execution.id) == before
        store.close()
    finally:
        proc.kill()
        proc.wait(30)
