"""Waits answered by the CLI from another process in another directory: every schema shape,
with types defined in a script run as ``__main__`` or in a module, is checked before anything is
written and reaches the flow typed."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from kitaru import KitaruClient
from kitaru.store import sync_view
from kitaru.store.sqlite import SQLiteStateStore

pytestmark = pytest.mark.e2e

FLOWS = Path(__file__).parent / "flows"

# (wait, a refused answer, what its refusal says, the accepted answer)
ANSWERS = [
    (
        "items",
        '[{"name": "  ", "price": "1.5"}]',
        "name is blank",  # the model's own validator, run by the CLI before recording
        '[{"name": "tea", "price": "1.50", "when": "2026-01-31"}]',
    ),
    ("maybe", '{"name": "cup"}', "'price' is a required property", '{"name": "cup", "price": 2}'),
    ("amounts", '["1.5", "lots"]', "valid decimal", '["1.50", 2]'),
    ("count", '"3"', "is not of type 'integer'", "3"),
    (
        "groups",
        '{"a": [{"name": "x", "price": 1, "when": "2026-02-30"}]}',
        "is not a 'date'",
        '{"a": [{"name": "x", "price": 1, "when": "2026-02-28"}]}',
    ),
]

SEEN = [
    "[Item(name='tea', price=Decimal('1.50'), when=datetime.date(2026, 1, 31))]",
    "Item(name='cup', price=Decimal('2'), when=None)",
    "[Decimal('1.50'), Decimal('2')]",
    "3",
    "{'a': [Item(name='x', price=Decimal('1'), when=datetime.date(2026, 2, 28))]}",
]


def _start(how: str, flow: str, project: Path, env: dict[str, str]) -> str:
    """Run the flow until it waits, in its own process; returns the execution id."""
    if how == "script":
        command = [sys.executable, "wait_shapes.py", flow]
    else:
        command = [sys.executable, "-c", f"import wait_shapes; wait_shapes.main({flow!r})"]
    started = subprocess.run(command, cwd=project, env=env, capture_output=True, text=True, timeout=120)
    assert started.returncode == 0, started.stderr
    store = sync_view(SQLiteStateStore(Path(env["KITARU_HOME"]) / "kitaru.db"))
    try:
        [execution] = [e for e in store.list_executions() if e.status == "waiting"]
    finally:
        store.close()
    return execution.id


def _answered(home: Path, exec_id: str) -> set[str | None]:
    store = sync_view(SQLiteStateStore(home / "kitaru.db"))
    try:
        return {r.call_id for r in store.read_journal(exec_id) if r.kind == "wait_answered"}
    finally:
        store.close()


@pytest.mark.parametrize("how", ["script", "module"])
def test_every_shape_is_checked_elsewhere_and_reaches_the_flow_typed(
    how: str, tmp_path: Path, subprocess_env: dict[str, str], kitaru_cli: list[str], kitaru_home: Path
) -> None:
    project, elsewhere = tmp_path / "project", tmp_path / "elsewhere"
    project.mkdir()
    elsewhere.mkdir()
    shutil.copy(FLOWS / "wait_shapes.py", project)
    exec_id = _start(how, "shapes", project, subprocess_env)

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*kitaru_cli, *args],
            cwd=elsewhere,
            env=subprocess_env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    for i, (wait, refused, why, accepted) in enumerate(ANSWERS):
        done = _answered(kitaru_home, exec_id)
        bad = cli("executions", "input", exec_id, "--value", refused)
        assert bad.returncode == 8, (wait, bad.stdout, bad.stderr)
        assert why in bad.stderr and "still open" in bad.stderr and "Traceback" not in bad.stderr, bad.stderr
        assert _answered(kitaru_home, exec_id) == done  # nothing written
        good = cli("executions", "input", exec_id, "--value", accepted)
        assert good.returncode == 0, (wait, good.stdout, good.stderr)
        following = ANSWERS[i + 1][0] if i + 1 < len(ANSWERS) else None
        assert (f"waiting on {following!r}" if following else "completed") in good.stdout, good.stdout

    client = KitaruClient()
    execution = client.executions.get(exec_id)
    assert execution.status == "completed"
    assert client.artifacts.get(execution.result_artifact or "").load() == SEEN


def test_an_answer_the_flow_refuses_fails_it_with_the_replay_that_asks_again(
    tmp_path: Path, subprocess_env: dict[str, str], kitaru_cli: list[str], kitaru_home: Path
) -> None:
    project, elsewhere = tmp_path / "project", tmp_path / "elsewhere"
    project.mkdir()
    elsewhere.mkdir()
    shutil.copy(FLOWS / "wait_shapes.py", project)
    exec_id = _start("script", "even", project, subprocess_env)

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*kitaru_cli, *args],
            cwd=elsewhere,
            env=subprocess_env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    # 3 is an int (the JSON Schema and the rebuilt type agree), but the flow's validator says no.
    answered = cli("executions", "input", exec_id, "--value", "3")
    assert answered.returncode == 8, (answered.stdout, answered.stderr)
    error = answered.stderr
    assert "wait 'even'" in error and "answer 3 " in error and "must be even" in error, error
    assert f"kitaru executions replay {exec_id} --from even" in error, error
    assert "Traceback" not in error
    assert KitaruClient().executions.get(exec_id).status == "failed"  # no silent coercion

    replayed = cli("executions", "replay", exec_id, "--from", "even", "-o", "json")
    assert replayed.returncode == 0, replayed.stderr
    replay_id = json.loads(replayed.stdout)["id"]
    assert json.loads(replayed.stdout)["status"] == "waiting"
    again = cli("executions", "input", replay_id, "--value", "4")
    assert again.returncode == 0 and "completed" in again.stdout, again.stderr
    client = KitaruClient()
    assert client.artifacts.get(client.executions.get(replay_id).result_artifact or "").load() == 4
