"""`kitaru init` writes a commented project file and never overwrites one; `kitaru info` reports
the version, the active stack and where it came from, the server, and whether the stores answer."""

from __future__ import annotations

import json
import socket
import tomllib
from pathlib import Path

import pytest
from click.testing import CliRunner

import kitaru
from kitaru.cli import main


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.stdout, result.stderr


class TestInit:
    def test_writes_a_commented_project_file_that_takes_effect(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.chdir(tmp_path)
        code, _, err = run("init", "--stack", "proj")
        assert code == 0, err
        text = (tmp_path / "kitaru.toml").read_text()
        assert text.count("\n# ") >= 5  # commented for a person to read
        data = tomllib.loads(text)
        assert data == {"active_stack": "proj", "stacks": {"proj": {"type": "local"}}}
        (tmp_path / "sub").mkdir()
        monkeypatch.chdir(tmp_path / "sub")  # found from below, too
        assert kitaru.current_stack().name == "proj"
        # The commented project-local store lines work as written once uncommented.
        (tmp_path / "kitaru.toml").write_text(
            text.replace("# state = ", "state = ", 1).replace("# artifacts = ", "artifacts = ", 1)
        )
        exec_id = _one_run()
        assert (tmp_path / ".kitaru" / "kitaru.db").exists()
        assert kitaru.KitaruClient().executions.get(exec_id).status == "completed"

    def test_refuses_to_overwrite(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.chdir(tmp_path)
        (tmp_path / "kitaru.toml").write_text("# mine\n")
        code, _, err = run("init")
        assert code == 3 and "exists already" in err
        assert (tmp_path / "kitaru.toml").read_text() == "# mine\n"


@kitaru.flow
def tiny() -> int:
    return 1


def _one_run() -> str:
    handle = tiny.run()
    handle.wait(timeout=60)
    return handle.exec_id


class TestInfo:
    def test_json_report(self, monkeypatch: pytest.MonkeyPatch, kitaru_home: Path) -> None:
        code, out, err = run("info", "-o", "json")
        assert code == 0, err
        report = json.loads(out)
        assert report["version"] == kitaru.__version__
        assert report["stack"] == {
            "name": "local",
            "source": "default",
            "type": "local",
            "declared_in": "default",
        }
        assert report["server"] is None
        assert report["stores"]["state"]["reachable"] and report["stores"]["artifacts"]["reachable"]
        assert report["home"] == str(kitaru_home)
        assert report["secrets_key"] == "not set"

    def test_says_where_the_stack_came_from(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        kitaru.create_stack("dev", "local", state=f"sqlite:///{tmp_path / 'dev.db'}")
        monkeypatch.setenv("KITARU_STACK", "dev")
        code, out, _ = run("info", "-o", "json")
        assert code == 0 and json.loads(out)["stack"]["source"] == "KITARU_STACK"
        code, out, _ = run("info")
        assert code == 0 and "stack:     dev (local), active from KITARU_STACK" in out

    def test_an_unusable_store_exits_4(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        garbage = tmp_path / "garbage.db"
        garbage.write_bytes(b"this is not a SQLite database" * 200)
        kitaru.create_stack("broken", "local", state=f"sqlite:///{garbage}")
        monkeypatch.setenv("KITARU_STACK", "broken")
        code, out, _ = run("info", "-o", "json")
        assert code == 4
        state = json.loads(out)["stores"]["state"]
        assert state["reachable"] is False and state["error"]

    def test_reports_the_server_without_its_key(self, monkeypatch: pytest.MonkeyPatch) -> None:
        with socket.socket() as s:  # a port nothing listens on
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        monkeypatch.setenv("KITARU_SERVER", f"http://127.0.0.1:{port}")
        monkeypatch.setenv("KITARU_API_KEY", "kitaru_abc_SECRETPART")
        code, out, _ = run("info", "-o", "json")
        assert code == 0  # the stack's stores answer; the server is reported, not required
        server = json.loads(out)["server"]
        assert server["url"] == f"http://127.0.0.1:{port}" and server["reachable"] is False
        assert "SECRETPART" not in out
