"""`kitaru login` makes the CLI and KitaruClient() talk to the server: a process with another home
(no access to the server's database) lists, answers and reads logs through the API."""

from __future__ import annotations

import json
import stat
import subprocess
from pathlib import Path

import pytest

from tests.server.conftest import ServerProcess, run_flow, wait_until

pytestmark = pytest.mark.e2e


def test_login_then_the_cli_goes_through_the_server(
    server: ServerProcess,
    keys: dict[str, str],
    server_env: dict[str, str],
    kitaru_cli: list[str],
    tmp_path: Path,
) -> None:
    exec_id = run_flow(server_env, "approve")
    elsewhere = {
        **server_env,
        "KITARU_HOME": str(tmp_path / "other-home"),
        "XDG_CONFIG_HOME": str(tmp_path / "cfg"),
    }

    def cli(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [*kitaru_cli, *args], env=elsewhere, capture_output=True, text=True, timeout=120, check=False
        )
        assert done.returncode == 0 or not check, (args, done.stdout, done.stderr)
        return done

    assert "not logged in" in cli("status").stdout
    bad = cli("login", server.url, "--key", "kitaru_0000_wrong", check=False)
    assert bad.returncode != 0 and "not valid" in bad.stderr
    out = cli("login", server.url, "--key", keys["answer"]).stdout
    assert "answer-key" in out
    login_file = tmp_path / "cfg" / "kitaru" / "login.json"
    assert stat.S_IMODE(login_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(login_file.parent.stat().st_mode) == 0o700
    assert f"logged in to {server.url}" in cli("status").stdout

    listed = json.loads(cli("executions", "list", "-o", "json").stdout)
    assert [e["id"] for e in listed] == [exec_id]
    assert "researching durable agents" in cli("executions", "logs", exec_id).stdout
    # The flow body printed nothing: its own output is empty through the server too.
    assert "researching" not in cli("executions", "logs", exec_id, "--source", "runner").stdout
    refused = cli("executions", "input", exec_id, "--value", '"yes"', check=False)
    assert refused.returncode != 0 and "does not match its schema" in refused.stderr
    cli("executions", "input", exec_id, "--value", "true")

    # KitaruClient() in a Python process picks the login up too.
    code = (
        "from kitaru.client import KitaruClient; import time\n"
        f"c = KitaruClient(); e = c.executions.get({exec_id!r})\n"
        "print(type(c).__name__, e.status in ('running', 'completed'))"
    )
    import sys

    py = subprocess.run(
        [sys.executable, "-c", code], env=elsewhere, capture_output=True, text=True, timeout=120
    )
    assert py.stdout.split() == ["RemoteClient", "True"], py.stderr
    wait_until(
        lambda: json.loads(cli("executions", "get", exec_id, "-o", "json").stdout)["status"] == "completed"
    )
    assert "logged out" in cli("logout").stdout
    assert not login_file.exists()
    assert json.loads(cli("executions", "list", "-o", "json").stdout) == []  # its own, empty home
