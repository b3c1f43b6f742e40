"""Every option the README's CLI section lists does what it says: filters filter, --no-resume does
not resume, --all shows unchanged items, -o dot draws, --follow follows, cancel cancels, and the
completion scripts exist for each shell."""

from __future__ import annotations

import json
import queue
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path

import pytest
from click.testing import CliRunner

import kitaru
from kitaru.cli import main
from tests._process import wait_for

FLOWS = Path(__file__).resolve().parents[1] / "e2e" / "flows"
RAN: Counter[str] = Counter()


@pytest.fixture(autouse=True)
def _reset() -> None:
    RAN.clear()


@kitaru.checkpoint
def draft(topic: str) -> str:
    RAN["draft"] += 1
    kitaru.save("notes", f"notes on {topic}", type="context")
    return f"draft about {topic}"


@kitaru.checkpoint
def publish(text: str) -> str:
    RAN["publish"] += 1
    return f"published {text}"


@kitaru.flow
def review(topic: str) -> str:
    text = draft(topic)
    if not kitaru.wait(name="approve", question="Publish?", schema=bool):
        return "rejected"
    return publish(text)


@kitaru.flow
def other_flow() -> int:
    return 1


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.stdout, result.stderr


def status_of(exec_id: str) -> str:
    return kitaru.KitaruClient().executions.get(exec_id).status


class TestExecutions:
    def test_list_flow_keeps_only_that_flows_executions(self) -> None:
        mine = review.run("a").exec_id
        theirs = other_flow.run().exec_id
        code, out, _ = run("executions", "list", "--flow", "review", "-o", "json")
        assert code == 0
        assert [row["id"] for row in json.loads(out)] == [mine]
        code, out, _ = run("executions", "list", "--flow", "other_flow")
        assert code == 0 and theirs in out and mine not in out
        code, out, _ = run("executions", "list", "--flow", "nobody", "-o", "json")
        assert code == 0 and json.loads(out) == []

    def test_input_no_resume_records_the_answer_and_leaves_the_flow_alone(self) -> None:
        exec_id = review.run("b").exec_id
        code, out, err = run("executions", "input", exec_id, "--value", "true", "--no-resume")
        assert code == 0, err
        execution = kitaru.KitaruClient().executions.get(exec_id)
        assert execution.status == "waiting"  # not driven on here
        assert [(w.name, w.status) for w in execution.waits] == [("approve", "answered")]
        assert RAN == {"draft": 1}  # publish did not run
        # A later resume continues with the recorded answer.
        code, out, err = run("executions", "resume", exec_id)
        assert code == 0 and "completed" in out, err
        assert RAN == {"draft": 1, "publish": 1}

    def test_diff_all_lists_unchanged_items_too(self) -> None:
        client = kitaru.KitaruClient()
        a = review.run("same").exec_id
        b = review.run("same").exec_id
        client.executions.input(a, True).wait(timeout=60)
        client.executions.input(b, False).wait(timeout=60)
        code, short, _ = run("executions", "diff", a, b)
        assert code == 0
        assert (
            "~ wait approve: changed" in short
            and "~ result: changed" in short
            and "result result" not in short
        )
        assert "input topic" not in short and "checkpoint draft" not in short
        code, full, _ = run("executions", "diff", a, b, "--all")
        assert code == 0
        assert "= input topic: same" in full and "= checkpoint draft: same" in full
        assert "~ wait approve: changed" in full
        assert "- checkpoint publish: only in a" in full
        assert full.rstrip().endswith("3 differ, 2 the same")

    def test_graph_as_dot(self) -> None:
        handle = review.run("g")
        kitaru.KitaruClient().executions.input(handle.exec_id, True).wait(timeout=60)
        code, out, _ = run("executions", "graph", handle.exec_id, "-o", "dot")
        assert code == 0
        lines = out.strip().splitlines()
        assert lines[0] == f'digraph "{handle.exec_id}" {{' and lines[-1] == "}"
        assert '"input:topic" -> "draft"' in out  # the flow input fed draft
        assert '"draft" -> "publish"' in out  # draft's output fed publish
        assert '"publish" -> "result"' in out
        assert '"wait:approve" [label="approve", shape=diamond];' in out

    def test_cancel_a_waiting_execution(self) -> None:
        exec_id = review.run("c").exec_id
        code, out, err = run("executions", "cancel", exec_id[:20])
        assert code == 0, err
        assert out.strip() == f"execution {exec_id} is cancelled"
        assert status_of(exec_id) == "cancelled"
        # Cancelled is final: nothing revives it.
        code, _, err = run("executions", "input", exec_id, "--value", "true")
        assert code != 0 and "cancelled" in err
        code, _, err = run("executions", "resume", exec_id)
        assert code != 0 and "cancelled" in err
        assert RAN == {"draft": 1}

    def test_cancel_as_json(self) -> None:
        exec_id = review.run("j").exec_id
        code, out, _ = run("executions", "cancel", exec_id, "-o", "json")
        assert code == 0 and json.loads(out)["status"] == "cancelled"


class TestArtifacts:
    def test_list_by_name_and_by_type(self) -> None:
        handle = review.run("n")
        kitaru.KitaruClient().executions.input(handle.exec_id, True).wait(timeout=60)
        code, out, _ = run("artifacts", "list", handle.exec_id, "-o", "json")
        assert code == 0
        everything = {(a["name"], a["type"]) for a in json.loads(out)}
        assert everything == {
            ("topic", "input"),
            ("notes", "context"),
            ("draft", "output"),
            ("approve", "answer"),
            ("publish", "output"),
            ("result", "result"),
        }
        code, out, _ = run("artifacts", "list", handle.exec_id, "--name", "notes", "-o", "json")
        assert code == 0 and [(a["name"], a["type"]) for a in json.loads(out)] == [("notes", "context")]
        code, out, _ = run("artifacts", "list", handle.exec_id, "--type", "output", "-o", "json")
        assert code == 0 and [a["name"] for a in json.loads(out)] == ["draft", "publish"]
        code, out, _ = run("artifacts", "list", handle.exec_id, "--type", "answer")
        assert code == 0 and "approve" in out and "draft" not in out and "topic" not in out


class TestCompletion:
    @pytest.mark.parametrize(
        ("shell", "marker"),
        [
            ("bash", "complete -o nosort -F"),
            ("zsh", "#compdef kitaru"),
            ("fish", "complete --no-files --command kitaru"),
        ],
    )
    def test_each_shell_gets_a_script(self, shell: str, marker: str) -> None:
        code, out, _ = run("completion", shell)
        assert code == 0 and marker in out and "_KITARU_COMPLETE" in out

    @pytest.mark.parametrize("shell", ["zsh", "fish"])
    def test_completions_answer_for_the_shell(self, shell: str) -> None:
        # What the shell's script runs on <TAB>: the command names come back.
        # zsh passes the index of the word under the cursor, fish the word itself.
        cword = "1" if shell == "zsh" else "exec"
        env = {"_KITARU_COMPLETE": f"{shell}_complete", "COMP_WORDS": "kitaru exec", "COMP_CWORD": cword}
        result = CliRunner().invoke(main, [], env=env, prog_name="kitaru")
        assert result.exit_code == 0
        assert "executions" in result.stdout

    def test_an_unknown_shell_is_refused(self) -> None:
        code, _, err = run("completion", "tcsh")
        assert code == 2 and "bash" in err and "fish" in err


class TestLogsFollow:
    def test_follow_prints_new_lines_and_ends_with_the_execution(
        self, tmp_path: Path, subprocess_env: dict[str, str], kitaru_cli: list[str]
    ) -> None:
        marks = tmp_path / "marks"
        marks.mkdir()
        env = {**subprocess_env, "MARK_DIR": str(marks)}
        flow_proc = subprocess.Popen(
            [sys.executable, str(FLOWS / "follow_logs.py")],
            env=env,
            cwd=tmp_path,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        follower: subprocess.Popen[str] | None = None
        try:
            wait_for(marks / "id", flow_proc)
            exec_id = (marks / "id").read_text()
            follower = subprocess.Popen(
                [*kitaru_cli, "executions", "logs", exec_id, "--follow"],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
            )
            lines: queue.Queue[str] = queue.Queue()
            stdout = follower.stdout
            assert stdout is not None

            def read() -> None:
                try:
                    for line in stdout:
                        lines.put(line)
                except ValueError:  # closed by the cleanup below after a failure
                    pass

            threading.Thread(target=read, daemon=True).start()

            def next_line() -> str:
                try:
                    return lines.get(timeout=60).rstrip("\n")
                except queue.Empty:
                    raise AssertionError("logs --follow printed nothing new within 60 s") from None

            assert next_line() == "[first] line one"
            (marks / "go").write_text("")  # now the flow prints its second line...
            assert next_line() == "[second] line two"  # ...and the follower, still running, shows it
            assert follower.poll() is None  # the execution still runs: so does the follower
            (marks / "end").write_text("")
            assert follower.wait(timeout=60) == 0  # ends when the execution ends
            assert flow_proc.wait(timeout=60) == 0
            assert status_of(exec_id) == "completed"
        finally:
            for proc in (flow_proc, follower):
                if proc is not None:
                    if proc.poll() is None:
                        proc.kill()
                    proc.wait(30)
                    if proc.stdout is not None:
                        proc.stdout.close()
