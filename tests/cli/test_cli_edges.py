"""CLI edges: option checks, what `get` and `logs` show, config validation, `-o json`, completion."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from click.testing import CliRunner

import kitaru
from kitaru.cli import main
from kitaru.errors import KitaruConfigError, KitaruNotFoundError

QUESTION = "Publish this draft?\n\n# Title\n\nThe second paragraph, which a reviewer must read."


@kitaru.checkpoint
def step(n: int) -> int:
    print(f"step says {n}")
    return n * 10


@kitaru.checkpoint
def finish(values: list[int]) -> str:
    return f"total {sum(values)}"


@kitaru.flow
def three_steps() -> str:
    values = [step(1), step(2), step(3)]
    return finish(values)


@kitaru.flow
def asks() -> bool:
    first = step(1)
    return bool(kitaru.wait(name="publish", question=QUESTION, schema=bool)) and first > 0


def run(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args), env=env)
    return result.exit_code, result.stdout, result.stderr


class TestGetOptions:
    @pytest.mark.parametrize("interval", ["-1", "0"])
    def test_watch_interval_must_be_positive(self, interval: str) -> None:
        handle = three_steps.run()
        code, _, err = run("executions", "get", handle.exec_id, "--watch", "--interval", interval)
        assert code == 2
        assert "--interval" in err and interval in err

    def test_a_huge_id_is_not_found_rather_than_a_store_error(self) -> None:
        three_steps.run()
        code, _, err = run("executions", "get", "x" * 100_000)
        assert code == KitaruNotFoundError.exit_code
        assert "no execution" in err and "kitaru executions list" in err
        assert "cannot read" not in err


class TestGetShows:
    def test_the_whole_question_of_a_wait(self) -> None:
        handle = asks.run()
        code, out, _ = run("executions", "get", handle.exec_id)
        assert code == 0
        for line in QUESTION.splitlines():
            assert line in out

    def test_the_result_of_a_completed_execution(self) -> None:
        handle = three_steps.run()
        code, out, _ = run("executions", "get", handle.exec_id)
        assert code == 0
        assert "result     total 60" in out

    def test_reused_checkpoints_of_a_replay_are_marked_and_take_no_time(self) -> None:
        original = three_steps.run()
        replay = three_steps.replay(original.exec_id, "finish")
        code, out, _ = run("executions", "get", replay.exec_id)
        assert code == 0
        rows = {line.split()[0]: line for line in out.splitlines() if line.startswith(("step", "finish"))}
        for call in ("step", "step:2", "step:3"):
            cells = rows[call].split()
            assert cells[2] == "reused" and cells[4] == "-", rows[call]  # STATUS, TOOK
            assert f"from {original.exec_id}" in rows[call]
        assert rows["finish"].split()[2] == "completed" and " ms " in rows["finish"]
        code, out, _ = run("executions", "get", replay.exec_id, "-o", "json")
        calls = {c["call_id"]: c for c in json.loads(out)["checkpoints"]}
        assert calls["step"]["reused_from"] == original.exec_id and calls["step"]["started_at"] is None
        assert calls["finish"]["reused_from"] is None


class TestLogsCheckpoint:
    def test_a_bare_name_shows_every_call_and_a_numbered_id_one(self) -> None:
        handle = three_steps.run()
        code, out, _ = run("executions", "logs", handle.exec_id, "--checkpoint", "step")
        assert code == 0
        assert out.splitlines() == ["[step] step says 1", "[step:2] step says 2", "[step:3] step says 3"]
        code, out, _ = run("executions", "logs", handle.exec_id, "--checkpoint", "step:2")
        assert code == 0 and out.splitlines() == ["[step:2] step says 2"]
        code, out, _ = run("executions", "logs", handle.exec_id, "--checkpoint", "step:1")
        assert code == 0 and out.splitlines() == ["[step] step says 1"]

    def test_an_unknown_checkpoint_is_an_error_naming_the_known_ones(self) -> None:
        handle = three_steps.run()
        for unknown in ("stepp", "step:9"):
            code, out, err = run("executions", "logs", handle.exec_id, "--checkpoint", unknown)
            assert code == KitaruNotFoundError.exit_code and out == ""
            assert unknown in err and "finish, step" in err


class TestList:
    def test_an_empty_filtered_list_says_nothing_matches(self) -> None:
        three_steps.run()
        code, out, _ = run("executions", "list", "--flow", "nope")
        assert code == 0
        assert "no executions match flow 'nope'" in out and "no executions yet" not in out
        code, out, _ = run("executions", "list", "--status", "failed")
        assert "no executions match status failed" in out


class TestConfigValidation:
    def test_stack_create_refuses_an_unknown_state_scheme(self) -> None:
        code, _, err = run("stack", "create", "db", "--type", "local", "--state", "mysql://u:pw@h/db")
        assert code == KitaruConfigError.exit_code
        assert "sqlite://" in err and "postgresql://" in err
        assert "pw" not in err  # the URI's password is not echoed
        code, _, _ = run("stack", "show", "db")
        assert code != 0  # nothing was written
        code, _, err = run("stack", "create", "ok", "--type", "local", "--state", "sqlite:////tmp/k.db")
        assert code == 0, err

    def test_model_register_refuses_a_base_url_that_is_no_url(self) -> None:
        for bad in ("notaurl", "ftp://host/v1", "http://"):
            code, _, err = run("model", "register", "m", "--model", "openai/gpt-4o-mini", "--base-url", bad)
            assert code != 0 and "http(s)" in err, (bad, err)
        code, out, _ = run("model", "list", "-o", "json")
        assert json.loads(out)["models"] == []

    def test_the_built_in_local_stack_cannot_be_deleted(self) -> None:
        code, _, err = run("stack", "delete", "local")
        assert code == KitaruConfigError.exit_code
        assert "built-in 'local' stack cannot be deleted" in err and "unknown stack" not in err


class TestModelJson:
    def test_register_remove_default_speak_json(self) -> None:
        code, out, _ = run("model", "register", "fast", "--model", "openai/gpt-4o-mini", "-o", "json")
        assert code == 0
        registered = json.loads(out)
        assert registered["name"] == "fast" and registered["model"] == "openai/gpt-4o-mini"
        code, out, _ = run("model", "default", "fast", "-o", "json")
        assert code == 0 and json.loads(out)["default"] == "fast"
        code, out, _ = run("model", "remove", "fast", "-o", "json")
        assert code == 0 and json.loads(out)["removed"] == "fast"


class TestCompletion:
    def complete(self, shell: str, words: str) -> str:
        env = {"_KITARU_COMPLETE": f"{shell}_complete", "COMP_WORDS": words}
        # bash and zsh pass the index of the word being completed; fish passes the word itself.
        env["COMP_CWORD"] = str(len(words.split(" ")) - 1) if shell != "fish" else words.split(" ")[-1]
        result = CliRunner().invoke(main, [], env=env, prog_name="kitaru")
        assert result.exit_code == 0, result.output
        return result.stdout

    @pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
    def test_execution_ids_complete(self, shell: str) -> None:
        done = three_steps.run()
        waiting = asks.run()
        out = self.complete(shell, "kitaru executions get ")
        assert done.exec_id in out and waiting.exec_id in out
        out = self.complete(shell, f"kitaru executions input {waiting.exec_id[:-3]}")
        assert waiting.exec_id in out and done.exec_id not in out
        if shell != "bash":  # bash shows no descriptions
            assert "asks (waiting)" in out

    @pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
    def test_stack_names_complete(self, shell: str) -> None:
        code, _, err = run("stack", "create", "prod-eu", "--type", "local")
        assert code == 0, err
        out = self.complete(shell, "kitaru stack set ")
        assert "local" in out and "prod-eu" in out
        out = self.complete(shell, "kitaru stack show pro")
        assert "prod-eu" in out and "local" not in out


_meet = threading.Barrier(2, timeout=60)
_threads: set[str] = set()


@kitaru.checkpoint
def paired(i: int) -> int:
    _threads.add(threading.current_thread().name)
    _meet.wait()  # two at a time run together (the pool must allow at least two)
    return i


@kitaru.flow
def fan_out(n: int) -> list[int]:
    return paired.map(range(n))


class TestMaxThreads:
    def test_kitaru_max_threads_caps_the_submit_pool(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("KITARU_MAX_THREADS", "2")
        _threads.clear()
        assert fan_out.run(12).wait() == list(range(12))
        assert len(_threads) == 2, _threads

    def test_a_bad_value_is_a_config_error(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("KITARU_MAX_THREADS", "zero")
        with pytest.raises(KitaruConfigError, match="KITARU_MAX_THREADS='zero'"):
            fan_out.run(2).wait()


LOGGING_SCRIPT = """
import logging

import kitaru

log = logging.getLogger("my.agent")


@kitaru.checkpoint
def fetch() -> int:
    log.warning("fetching inside a checkpoint")
    return 1


@kitaru.flow
def logs_things() -> int:
    log.warning("starting in the flow body")
    log.info("an info record is below the default level")
    return fetch()


if __name__ == "__main__":
    handle = logs_things.run()
    print("done", handle.exec_id, handle.wait())
"""


def test_logging_inside_a_flow_still_reaches_the_console(
    tmp_path: Path, subprocess_env: dict[str, str], kitaru_cli: list[str]
) -> None:
    script = tmp_path / "logging_flow.py"
    script.write_text(LOGGING_SCRIPT)
    done = subprocess.run(
        [sys.executable, str(script)], env=subprocess_env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    # As Python prints them with no logging configured: warnings on stderr, info not at all.
    assert "starting in the flow body" in done.stderr
    assert "fetching inside a checkpoint" in done.stderr
    assert "an info record" not in done.stderr
    exec_id = done.stdout.split()[1]
    # ...and still captured into the journal, once each (as log records, not again as stderr).
    logs = subprocess.run(
        [*kitaru_cli, "executions", "logs", exec_id, "-o", "json"],
        env=subprocess_env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    entries = [json.loads(line) for line in logs.stdout.splitlines()]
    texts = [(e["stream"], e["call_id"], e["text"].strip()) for e in entries]
    assert texts == [
        ("log", None, "WARNING my.agent: starting in the flow body"),
        ("log", "fetch", "WARNING my.agent: fetching inside a checkpoint"),
    ]
    # With -v each line shows the record's own level once, beside its time and call.
    verbose = subprocess.run(
        [*kitaru_cli, "executions", "logs", exec_id, "-v"],
        env=subprocess_env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    lines = [line.split(" ", 2)[2] for line in verbose.stdout.splitlines()]  # after the date and time
    assert lines == [
        "WARNING [flow] my.agent: starting in the flow body",
        "WARNING [fetch] my.agent: fetching inside a checkpoint",
    ]
