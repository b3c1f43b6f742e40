"""Commands as Kitaru 0.18's documentation uses them: ``executions input --interactive`` (the
question and schema shown, the value asked for on stdin or a terminal), ``executions input``
followed by ``executions resume``, ``kitaru init [PATH]`` and ``kitaru status`` on a local stack."""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from pydantic import BaseModel

import kitaru
from kitaru.cli import main


class ReleaseDetails(BaseModel):
    notes: str
    major_version: int


@kitaru.flow
def release_flow(topic: str) -> str:
    approved = kitaru.wait(name="approve_release", schema=bool, question=f"Approve {topic}?")
    if not approved:
        return "REJECTED"
    details = kitaru.wait(name="release_details", schema=ReleaseDetails, question="Details?")
    return f"v{details.major_version}: {details.notes}"


def run(*args: str, stdin: str | None = None) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args), input=stdin)
    return result.exit_code, result.stdout, result.stderr


def status_of(exec_id: str) -> str:
    return kitaru.KitaruClient().executions.get(exec_id).status


class TestInteractiveInput:
    def test_it_shows_the_question_and_schema_and_asks_for_the_value(self) -> None:
        exec_id = release_flow.run("v1.0").exec_id
        # A value that is not JSON, then one the schema refuses, are asked for again.
        code, out, err = run(
            "executions", "input", exec_id, "--interactive", stdin="answer\nmaybe\n1\ntrue\n"
        )
        assert code == 0, err
        assert "waits on 'approve_release'" in out and "question: Approve v1.0?" in out
        assert "expects:  bool" in out and '"type": "boolean"' in out
        assert "not JSON" in err and "expected bool" in err
        assert status_of(exec_id) == "waiting"  # on to the next wait
        answer = '{"notes": "Bug fixes", "major_version": 2}'
        code, out, err = run("executions", "input", exec_id, "-i", stdin=f"a\n{answer}\n")
        assert code == 0, err
        assert "release_details" in out and '"major_version"' in out  # the model's JSON Schema
        assert f"execution {exec_id} is completed" in out
        assert kitaru.KitaruClient().executions.get(exec_id).status == "completed"

    def test_without_an_id_it_goes_through_every_waiting_execution(self) -> None:
        first = release_flow.run("one").exec_id
        second = release_flow.run("two").exec_id
        # skip the first, abort the second (with a reason), then nothing is left.
        code, out, err = run("executions", "input", "--interactive", stdin="skip\nabort\nno thanks\n")
        assert code == 0, err
        assert "[1/2]" in out and "[2/2]" in out
        assert status_of(first) == "waiting"
        assert status_of(second) == "failed"  # the flow does not catch KitaruWaitAborted
        code, out, _ = run("executions", "input", "-i", stdin="q\n")
        assert code == 0 and "[1/1]" in out and first in out
        done = release_flow.run("three").exec_id
        run("executions", "input", done, "--value", "false")
        code, out, _ = run("executions", "input", done, "-i")
        assert code == 0 and "nothing is waiting" in out

    def test_it_refuses_options_that_answer_for_it(self) -> None:
        exec_id = release_flow.run("x").exec_id
        for extra in (["--value", "true"], ["--abort"], ["-o", "json"]):
            code, _, err = run("executions", "input", exec_id, "--interactive", *extra)
            assert code == 2 and "--interactive" in err
        code, _, err = run("executions", "input", "--value", "true")
        assert code == 2 and "EXEC_ID" in err
        assert status_of(exec_id) == "waiting"

    def test_on_a_real_terminal(
        self, subprocess_env: dict[str, str], kitaru_cli: list[str], tmp_path: Path
    ) -> None:
        script = tmp_path / "gate.py"
        script.write_text(
            textwrap.dedent(
                """
                import kitaru

                @kitaru.flow
                def gate() -> bool:
                    return kitaru.wait(name="ok", schema=bool, question="Proceed?")

                print(gate.run().exec_id)
                """
            )
        )
        started = subprocess.run(
            [sys.executable, str(script)], env=subprocess_env, capture_output=True, text=True, timeout=120
        )
        exec_id = started.stdout.strip().splitlines()[-1]
        master, slave = pty.openpty()
        proc = subprocess.Popen(
            [*kitaru_cli, "executions", "input", exec_id, "-i"],
            stdin=slave,
            stdout=slave,
            stderr=slave,
            env=subprocess_env,
            cwd=tmp_path,
        )
        os.close(slave)
        shown = bytearray()
        answers = [(b"answer, abort, skip or quit", b"answer\n"), (b"value, as JSON", b"true\n")]
        deadline = time.monotonic() + 120
        try:
            while time.monotonic() < deadline:
                ready, _, _ = select.select([master], [], [], 1)
                if ready:
                    try:
                        chunk = os.read(master, 4096)
                    except OSError:
                        break
                    if not chunk:
                        break
                    shown += chunk
                if answers and answers[0][0] in shown:
                    os.write(master, answers.pop(0)[1])
                if proc.poll() is not None and not ready:
                    break
        finally:
            os.close(master)
            proc.wait(timeout=60)
        text = shown.decode(errors="replace")
        assert proc.returncode == 0, text
        assert "question: Proceed?" in text and "expects:  bool" in text
        assert f"execution {exec_id} is completed" in text


class TestInputThenResume:
    def test_the_documented_pair_succeeds(self) -> None:
        exec_id = release_flow.run("v2").exec_id
        code, out, err = run("executions", "input", exec_id, "--value", "false")
        assert code == 0 and "completed" in out, err
        code, out, err = run("executions", "resume", exec_id)
        assert code == 0, err
        assert f"execution {exec_id} is completed" in out and "nothing to resume" in err
        code, out, _ = run("executions", "resume", exec_id, "-o", "json")
        assert code == 0 and json.loads(out)["status"] == "completed"

    def test_a_resume_after_an_input_that_reached_the_next_wait_reports_it(self) -> None:
        exec_id = release_flow.run("v3").exec_id
        assert run("executions", "input", exec_id, "--value", "true")[0] == 0
        code, out, err = run("executions", "resume", exec_id)
        assert code == 0, err
        assert "is waiting" in out and "release_details" in out


class TestInit:
    def test_init_makes_a_directory_a_project(self, tmp_path: Path) -> None:
        project = tmp_path / "agents"
        project.mkdir()
        code, out, err = run("init", str(project), "-o", "json")
        assert code == 0, err
        assert json.loads(out) == {
            "path": str(project),
            "file": str(project / "kitaru.toml"),
            "stack": "project",
        }
        assert 'active_stack = "project"' in (project / "kitaru.toml").read_text()
        code, _, err = run("init", str(project))
        assert code == 3 and "exists already" in err
        code, _, err = run("init", str(tmp_path / "missing"))
        assert code == 3 and "not a directory" in err


class TestStatus:
    def test_local_status_shows_the_stack_its_stores_home_and_environment(
        self, monkeypatch: pytest.MonkeyPatch, kitaru_home: Path
    ) -> None:
        monkeypatch.setenv("KITARU_SECRETS_KEY", "very-secret-key")
        monkeypatch.setenv("KITARU_STACK__STATE", "postgresql://kitaru:hunter2@db.internal/kitaru")
        code, out, err = run("status")
        assert code == 0, err
        assert "not logged in" in out
        assert "stack:      local (local)" in out
        assert f"home:       {kitaru_home}" in out
        assert "state:      postgresql://kitaru:****@db.internal/kitaru" in out
        assert "KITARU_SECRETS_KEY=****" in out
        assert "very-secret-key" not in out and "hunter2" not in out
        code, out, _ = run("status", "-o", "json")
        info = json.loads(out)
        assert info["server"] is None and info["stack"] == "local" and info["connection"] == "local"
        assert info["artifacts"].startswith("file://")
        assert info["environment"]["KITARU_SECRETS_KEY"] == "****"


class TestWatchShowsProgress:
    def test_progress_appears_while_the_checkpoint_still_runs(
        self, subprocess_env: dict[str, str], kitaru_cli: list[str], tmp_path: Path
    ) -> None:
        from tests._process import wait_for

        script = tmp_path / "long.py"
        script.write_text(
            textwrap.dedent(
                """
                import os, time
                from pathlib import Path
                import kitaru

                @kitaru.checkpoint
                def long_step() -> str:
                    kitaru.progress("halfway there", percent=0.5)
                    kitaru.events.publish("rows.loaded", {"rows": 7})
                    Path(os.environ["PUBLISHED_FILE"]).touch()
                    deadline = time.monotonic() + 120
                    while not Path(os.environ["RELEASE_FILE"]).exists() and time.monotonic() < deadline:
                        time.sleep(0.01)
                    return "done"

                @kitaru.flow
                def long_flow() -> str:
                    return long_step()

                print(long_flow.run().wait())
                """
            )
        )
        env = {
            **subprocess_env,
            "PUBLISHED_FILE": str(tmp_path / "published"),
            "RELEASE_FILE": str(tmp_path / "release"),
        }
        runner = subprocess.Popen(
            [sys.executable, str(script)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        watch = None
        try:
            wait_for(tmp_path / "published", runner, timeout=120)
            [execution] = json.loads(
                subprocess.run(
                    [*kitaru_cli, "executions", "list", "-o", "json"],
                    env=env,
                    capture_output=True,
                    text=True,
                    timeout=120,
                ).stdout
            )
            watch = subprocess.Popen(
                [*kitaru_cli, "executions", "get", execution["id"], "--watch", "--interval", "0.05"],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            assert watch.stdout is not None
            lines = []
            for line in watch.stdout:  # the checkpoint is still blocked: these are live
                lines.append(line)
                if "rows.loaded" in line:
                    break
            assert not (tmp_path / "release").exists()
            said = "".join(lines)
            # What it is comes first, then what it has done so far.
            assert "is running" in lines[0], said
            assert "long_step" in said and "progress  50% halfway there" in said, said
            assert 'event rows.loaded {"rows": 7}' in said
            (tmp_path / "release").touch()
            rest, err = watch.communicate(timeout=120)
            assert watch.returncode == 0, err
            assert "long_step                completed" in rest and "is completed" in rest
        finally:
            (tmp_path / "release").touch()
            out, err = runner.communicate(timeout=120)
            if watch is not None and watch.poll() is None:
                watch.kill()
        assert runner.returncode == 0 and "done" in out, err
