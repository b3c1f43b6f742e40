"""Flows defined in scripts (run as ``python script.py``) resume from any directory: replays of
them too, and importing the script to resume it never starts another execution."""

from __future__ import annotations

import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from kitaru.store import sync_view
from kitaru.store.sqlite import SQLiteStateStore

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]

UNGUARDED = """
from pathlib import Path

import kitaru

COUNTER = Path(__file__).with_name("paid.txt")


@kitaru.checkpoint
def paid(x: int) -> int:
    with COUNTER.open("a") as fh:
        fh.write("paid\\n")
    return x * 2


@kitaru.flow
def unguarded(x: int) -> int:
    doubled = paid(x)
    if kitaru.wait(name="go", question="Go on?", schema=bool):
        return doubled
    return 0


# No `if __name__ == "__main__":` guard: importing this script runs this line.
handle = unguarded.run(21)
print("top level:", handle.exec_id, handle.status, handle.wait() if handle.status == "completed" else "")
"""


def _cli(
    kitaru_cli: list[str], env: dict[str, str], cwd: Path, *args: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*kitaru_cli, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=120)


def test_replay_of_a_script_flow_is_answered_and_completes_from_another_directory(
    tmp_path: Path, subprocess_env: dict[str, str], kitaru_cli: list[str], kitaru_home: Path
) -> None:
    started = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "quickstart.py"), "durable agents"],
        env=subprocess_env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert started.returncode == 0, started.stderr
    match = re.search(r"execution (\w+) is waiting", started.stdout)
    assert match, started.stdout
    original = match.group(1)

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    replayed = _cli(
        kitaru_cli, subprocess_env, elsewhere, "executions", "replay", original, "--from", "draft"
    )
    assert replayed.returncode == 0, replayed.stderr
    match = re.search(r"execution (\w+) is waiting", replayed.stdout)
    assert match, replayed.stdout
    replay_id = match.group(1)
    assert replay_id != original

    store = sync_view(SQLiteStateStore(kitaru_home / "kitaru.db"))
    try:
        first, replay = store.get_execution(original), store.get_execution(replay_id)
        assert first is not None and replay is not None
        # The replay records the same code identity as the original: the script's absolute path.
        assert (replay.target, replay.sys_path) == (first.target, first.sys_path)
        assert replay.target == f"{(ROOT / 'examples' / 'quickstart.py').resolve()}:review_flow"

        answered = _cli(
            kitaru_cli, subprocess_env, elsewhere, "executions", "input", replay_id, "--value", "true"
        )
        assert answered.returncode == 0, answered.stderr
        assert f"execution {replay_id} is completed" in answered.stdout
        final = store.get_execution(replay_id)
        assert final is not None and final.status == "completed"
        runs = Counter(r.call_id for r in store.read_journal(replay_id) if r.kind == "checkpoint_completed")
        assert runs == {"research": 1, "draft": 1, "publish": 1}
    finally:
        store.close()


def test_resuming_an_unguarded_script_does_not_start_a_second_execution(
    tmp_path: Path, subprocess_env: dict[str, str], kitaru_cli: list[str], kitaru_home: Path
) -> None:
    project = tmp_path / "project"
    project.mkdir()
    script = project / "unguarded.py"
    script.write_text(UNGUARDED)
    started = subprocess.run(
        [sys.executable, str(script)],
        env=subprocess_env,
        cwd=project,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert started.returncode == 0, started.stderr
    match = re.search(r"top level: (\w+) waiting", started.stdout)
    assert match, started.stdout
    exec_id = match.group(1)
    assert (project / "paid.txt").read_text().split() == ["paid"]

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    answered = _cli(kitaru_cli, subprocess_env, elsewhere, "executions", "input", exec_id, "--value", "true")
    assert answered.returncode == 0, answered.stderr
    assert f"execution {exec_id} is completed" in answered.stdout

    # The checkpoint was paid for once, and the script's import made no execution of its own.
    assert (project / "paid.txt").read_text().split() == ["paid"]
    store = sync_view(SQLiteStateStore(kitaru_home / "kitaru.db"))
    try:
        [execution] = store.list_executions()
        assert execution.id == exec_id and execution.status == "completed"
    finally:
        store.close()
    # Said once, with the reason and the fix.
    assert answered.stderr.count("skipped") == 1, answered.stderr
    assert "unguarded.run()" in answered.stderr
    assert 'if __name__ == "__main__":' in answered.stderr
