"""The CLI: output formats, and bad input that exits non-zero, says what to do, changes nothing."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from click.testing import CliRunner

import kitaru
from kitaru.cli import main


@kitaru.checkpoint
def shout(text: str) -> str:
    return text.upper()


@kitaru.flow
def approval_flow(text: str) -> str:
    loud = shout(text)
    if kitaru.wait(name="approve", question="Ship it?", schema=bool):
        return loud
    return "no"


@kitaru.flow
def done_flow() -> int:
    return 7


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.stdout, result.stderr


def journal_of(exec_id: str) -> list[object]:
    client = kitaru.KitaruClient()
    return list(client._runtime.state.read_journal(exec_id))


class TestReading:
    def test_help_lists_the_commands(self) -> None:
        code, out, _ = run("--help")
        assert code == 0 and "executions" in out and "artifacts" in out
        for group, command in [("executions", "input"), ("executions", "list"), ("artifacts", "get")]:
            code, out, _ = run(group, command, "--help")
            assert code == 0 and "Usage" in out

    def test_help_loads_nothing_heavy(self) -> None:
        # Not a timing assertion (slow machines exist): --help must not open stores or load
        # pydantic, stevedore or the SQLite driver.
        probe = subprocess.run(
            [
                sys.executable,
                "-c",
                "import sys; sys.argv=['kitaru','--help']\n"
                "from kitaru.cli import main\n"
                "try: main()\n"
                "except SystemExit: pass\n"
                "print(sorted(m for m in ('sqlite3', 'pydantic', 'stevedore', 'cloudpickle')"
                " if m in sys.modules))",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert probe.stdout.strip().endswith("[]"), probe.stdout + probe.stderr

    def test_list_and_get_in_text_and_json(self) -> None:
        handle = approval_flow.run("hi")
        code, out, _ = run("executions", "list")
        assert code == 0 and handle.exec_id in out and "waiting" in out
        code, out, _ = run("executions", "list", "-o", "json", "--status", "waiting")
        [row] = json.loads(out)
        assert row["id"] == handle.exec_id and row["flow"] == "approval_flow"
        code, out, _ = run("executions", "get", handle.exec_id[:20])
        assert code == 0 and "shout" in out and "approve" in out and "Ship it?" in out
        assert f"kitaru executions input {handle.exec_id}" in out
        code, out, _ = run("executions", "get", handle.exec_id, "-o", "json")
        data = json.loads(out)
        assert data["status"] == "waiting" and data["waits"][0]["schema"] == "bool"

    def test_artifacts_list_get_and_out(self, tmp_path: Path) -> None:
        handle = done_flow.run()
        code, out, _ = run("artifacts", "list", handle.exec_id, "-o", "json")
        [result] = json.loads(out)
        assert result["name"] == "result" and result["type"] == "result"
        code, out, _ = run("artifacts", "get", result["id"])
        assert code == 0 and "7" in out
        target = tmp_path / "value.json"
        code, out, _ = run("artifacts", "get", result["id"], "--out", str(target))
        assert code == 0 and target.read_bytes() == b"7"


class TestBadInput:
    def test_unknown_execution(self) -> None:
        for args in [
            ("executions", "get", "NOPE"),
            ("executions", "resume", "NOPE"),
            ("executions", "input", "NOPE", "--value", "1"),
            ("executions", "cancel", "NOPE"),
            ("artifacts", "list", "NOPE"),
        ]:
            code, _, err = run(*args)
            assert code == 5, args
            assert "kitaru executions list" in err

    def test_unknown_artifact(self) -> None:
        code, _, err = run("artifacts", "get", "NOPE")
        assert code == 5 and "kitaru artifacts list" in err

    def test_malformed_json_answer_changes_nothing(self) -> None:
        handle = approval_flow.run("hi")
        before = journal_of(handle.exec_id)
        code, _, err = run("executions", "input", handle.exec_id, "--value", "yes please")
        assert code == 2 and "not JSON" in err and "--value" in err
        assert journal_of(handle.exec_id) == before

    def test_wrong_type_answer_names_the_expected_type(self) -> None:
        handle = approval_flow.run("hi")
        before = journal_of(handle.exec_id)
        code, _, err = run("executions", "input", handle.exec_id, "--value", '"maybe"')
        assert code == 8 and "expected bool" in err and "still open" in err
        assert journal_of(handle.exec_id) == before
        code, out, _ = run("executions", "input", handle.exec_id, "--value", "true")
        assert code == 0 and "completed" in out
        assert handle.wait(timeout=60) == "HI"

    def test_wrong_state_names_the_command_that_fits(self) -> None:
        handle = done_flow.run()
        code, _, err = run("executions", "resume", handle.exec_id)
        assert code == 6 and "completed" in err
        code, _, err = run("executions", "retry", handle.exec_id)
        assert code == 6 and "completed" in err
        code, _, err = run("executions", "input", handle.exec_id, "--value", "1")
        assert code == 6 and "no open wait" in err
        code, _, err = run("executions", "cancel", handle.exec_id)
        assert code == 6 and "already completed" in err

    def test_unknown_wait_name_lists_open_waits(self) -> None:
        handle = approval_flow.run("hi")
        code, _, err = run("executions", "input", handle.exec_id, "--value", "true", "--wait", "nope")
        assert code == 5 and "approve" in err

    def test_ambiguous_prefix(self) -> None:
        ids = {done_flow.run().exec_id for _ in range(3)}
        common = ""
        for chars in zip(*ids, strict=False):
            if len(set(chars)) > 1:
                break
            common += chars[0]
        assert len(common) >= 1
        time.sleep(0)
        code, _, err = run("executions", "get", common)
        assert code == 2 and "several" in err
