"""An attempt a crash cut short is visible after resume: SIGKILL a runner mid-checkpoint, resume
from another process, and ``executions get`` shows that checkpoint's two attempts and the
interruption (the heartbeat noted the attempt in flight; the next runner journaled it)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from kitaru.store import sync_view
from kitaru.store.sqlite import SQLiteStateStore
from tests._process import wait_for

pytestmark = pytest.mark.e2e

FLOWS = Path(__file__).parent / "flows"


def wait_until_noted(store: SQLiteStateStore, call_id: str, timeout: float = 60) -> str:
    """The id of the one execution, once its runner's heartbeat has noted ``call_id`` in flight."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        executions = store.list_executions()
        if executions and call_id in (executions[0].metadata.get("inflight") or {}):
            return executions[0].id
        time.sleep(0.02)
    raise AssertionError(f"no heartbeat noted {call_id} in flight within {timeout} s")


def test_an_attempt_killed_mid_checkpoint_shows_after_resume(
    tmp_path: Path, subprocess_env: dict[str, str], kitaru_cli: list[str], kitaru_home: Path
) -> None:
    count_file, mark_file = tmp_path / "count.txt", tmp_path / "mark"
    env = {
        **subprocess_env,
        "COUNT_FILE": str(count_file),
        "MARK_FILE": str(mark_file),
        "SLOW_AT": "12",
        "KITARU_HEARTBEAT": "0.1",  # beat often, so the test need not wait for the default 2 s
    }
    proc = subprocess.Popen([sys.executable, str(FLOWS / "sixteen.py"), "100"], env=env, cwd=tmp_path)
    store = sync_view(SQLiteStateStore(kitaru_home / "kitaru.db"))
    try:
        wait_for(mark_file, proc)
        exec_id = wait_until_noted(store, "step:12")
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(30)

    env["SLOW_AT"] = "0"
    done = subprocess.run(
        [*kitaru_cli, "executions", "resume", exec_id],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0 and "completed" in done.stdout, done.stderr
    runs = Counter(int(line) for line in count_file.read_text().split())
    assert runs == Counter({**{i: 1 for i in range(1, 17)}, 12: 2}), runs

    shown = subprocess.run(
        [*kitaru_cli, "executions", "get", exec_id, "-o", "json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert shown.returncode == 0, shown.stderr
    execution = json.loads(shown.stdout)
    calls = {c["call_id"]: c for c in execution["checkpoints"]}
    assert len(calls) == 16
    step12 = calls["step:12"]
    assert (step12["status"], step12["attempts"], step12["interrupted"]) == ("completed", 2, 1)
    others = {(c["status"], c["attempts"], c["interrupted"]) for k, c in calls.items() if k != "step:12"}
    assert others == {("completed", 1, 0)}
    assert "inflight" not in execution["metadata"]  # the heartbeat's bookkeeping stays out of view

    text = subprocess.run(
        [*kitaru_cli, "executions", "get", exec_id],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    [row] = [line for line in text.stdout.splitlines() if line.startswith("step:12 ")]
    assert "interrupted x1" in row and " 2 " in row

    # The interruption is journaled once; a later look (or resume) does not add another.
    journal = store.read_journal(exec_id)
    interrupted = [r for r in journal if r.kind == "checkpoint_interrupted"]
    assert [(r.call_id, r.attempt) for r in interrupted] == [("step:12", 1)]
    store.close()
