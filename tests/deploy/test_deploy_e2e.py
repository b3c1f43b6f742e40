"""The deploy story with real processes: deploy v1 from a project directory, start an execution
that waits, change a step and deploy v2, answer the first execution with the CLI from another
directory (it finishes on v1's code), invoke v2, roll back, invoke v1 again."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.deploy.conftest import agent_source

pytestmark = pytest.mark.e2e


def _run(cmd: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, (cmd, done.stdout, done.stderr)
    return done


def _py(code: str, env: dict[str, str], cwd: Path) -> str:
    return _run([sys.executable, "-c", code], env, cwd).stdout.strip()


def test_pinned_execution_new_invoke_and_rollback_across_processes(
    tmp_path: Path, subprocess_env: dict[str, str], kitaru_cli: list[str]
) -> None:
    project = tmp_path / "project"
    elsewhere = tmp_path / "elsewhere"
    project.mkdir()
    elsewhere.mkdir()
    agent = project / "shop_agent.py"
    agent.write_text(agent_source("v1", waits=True))

    def cli(*args: str) -> str:
        return _run([*kitaru_cli, *args], subprocess_env, elsewhere).stdout

    def answer(exec_id: str) -> str:
        done = json.loads(cli("executions", "input", exec_id, "--value", "true", "-o", "json"))
        assert done["status"] == "completed", done
        shown = json.loads(cli("artifacts", "get", done["result_artifact"], "-o", "json"))
        return str(shown.get("value", shown))

    first = _py(
        "import shop_agent\n"
        "d = shop_agent.review.deploy(message='first')\n"
        "h = shop_agent.review.invoke('t')\n"
        "print(d.version, h.exec_id, h.status)",
        subprocess_env,
        project,
    ).split()
    assert first[0] == "1" and first[2] == "waiting", first
    pinned = first[1]

    agent.write_text(agent_source("v2", waits=True))
    assert (
        _py(
            "import shop_agent; print(shop_agent.review.deploy(tag='default').version)",
            subprocess_env,
            project,
        )
        == "2"
    )

    # The CLI elsewhere has no shop_agent on its path: the code comes from the version's archive.
    assert answer(pinned) == "v1(t) approved by v1"

    invoked = json.loads(cli("deployments", "invoke", "review", "--args", '{"topic": "u"}', "-o", "json"))
    assert invoked["status"] == "waiting" and invoked["metadata"]["deployment"]["version"] == 2
    assert answer(invoked["id"]) == "v2(u) approved by v2"

    moved = json.loads(cli("deployments", "rollback", "review", "-o", "json"))
    assert (moved["tag"], moved["version"], moved["previous"]) == ("default", 1, 2)
    again = json.loads(
        cli("deployments", "invoke", "review@default", "--args", '{"topic": "w"}', "-o", "json")
    )
    assert again["metadata"]["deployment"]["version"] == 1
    assert answer(again["id"]) == "v1(w) approved by v1"

    by_version = json.loads(cli("executions", "list", "--flow", "review", "--version", "1", "-o", "json"))
    assert {e["id"] for e in by_version} == {pinned, again["id"]}
    history = json.loads(cli("deployments", "history", "review", "default", "-o", "json"))
    assert [(m["version"], m["action"]) for m in history] == [(1, "deploy"), (2, "deploy"), (1, "rollback")]
