"""CLI for replay, diff, graph, logs, watch and completion; bad input changes nothing."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter

import pytest
from click.testing import CliRunner

import kitaru
from kitaru.cli import main

RAN: Counter[str] = Counter()
GATE = threading.Event()


@kitaru.checkpoint
def fetch(topic: str) -> str:
    RAN["fetch"] += 1
    print(f"fetching {topic}")
    return f"facts about {topic}"


@kitaru.checkpoint
def write(facts: str) -> dict[str, object]:
    RAN["write"] += 1
    return {"title": facts.title(), "words": len(facts.split())}


@kitaru.flow
def article(topic: str) -> dict[str, object]:
    return write(fetch(topic))


@kitaru.checkpoint
def slow_step(i: int) -> int:
    GATE.wait(10)
    return i


@kitaru.flow
def slow_flow() -> int:
    return slow_step(1) + slow_step(2)


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.stdout, result.stderr


def executions_count() -> int:
    return len(kitaru.KitaruClient().executions.list(limit=1000))


@pytest.fixture(autouse=True)
def _reset() -> None:
    RAN.clear()
    GATE.clear()


class TestReplayCommand:
    def test_replay_with_override_then_diff(self) -> None:
        original = article.run("cats")
        code, out, err = run(
            "executions",
            "replay",
            original.exec_id,
            "--from",
            "write",
            "--override",
            'fetch="facts about dogs and more"',
            "-o",
            "json",
        )
        assert code == 0, err
        replay = json.loads(out)
        assert replay["original_exec_id"] == original.exec_id and replay["status"] == "completed"
        assert RAN == {"fetch": 1, "write": 2}
        code, out, _ = run("executions", "diff", original.exec_id, replay["id"])
        assert code == 0
        assert "~ checkpoint fetch: changed" in out and "~ checkpoint write: changed" in out
        assert '-  "words": 3' in out and '+  "words": 5' in out  # a readable JSON diff
        assert "differ" in out
        code, out, _ = run("executions", "diff", original.exec_id, replay["id"], "-o", "json")
        data = json.loads(out)
        assert {e["name"] for e in data["entries"] if e["status"] == "changed"} == {
            "fetch",
            "write",
            "result",
        }

    @pytest.mark.parametrize(
        ("args", "code", "message"),
        [
            (["--from", "nope"], 2, "Boundaries it has, in call order: fetch, write"),
            (["--from", "write", "--override", "fetch"], 2, "NAME=JSON"),
            (["--from", "write", "--override", "fetch=not json"], 2, "not JSON"),
            (["--from", "write", "--override", "write=1"], 2, "not before --from"),
            (["--from", "write", "--args", "[1]"], 2, "JSON object"),
            (["--from", "write", "--args", '{"nope": 1}'], 2, "no parameter 'nope'"),
        ],
    )
    def test_bad_replay_requests_change_nothing(self, args: list[str], code: int, message: str) -> None:
        original = article.run("cats")
        before = executions_count()
        got, _, err = run("executions", "replay", original.exec_id, *args)
        assert got == code and message in err
        assert executions_count() == before
        assert RAN == {"fetch": 1, "write": 1}

    def test_unknown_ids_for_each_new_command(self) -> None:
        for args in (
            ["executions", "replay", "NOPE", "--from", "x"],
            ["executions", "diff", "NOPE", "NOPE2"],
            ["executions", "graph", "NOPE"],
            ["executions", "logs", "NOPE"],
        ):
            code, _, err = run(*args)
            assert code == 5 and "kitaru executions list" in err, args


class TestInspection:
    def test_graph_logs_and_completion(self) -> None:
        handle = article.run("owls")
        code, out, _ = run("executions", "graph", handle.exec_id)
        assert code == 0 and "write" in out and "fetch (str" in out
        code, out, _ = run("executions", "graph", handle.exec_id, "-o", "json")
        edges = {(e["source"], e["target"]) for e in json.loads(out)["edges"]}
        assert edges == {("input:topic", "fetch"), ("fetch", "write"), ("write", "result")}
        code, out, _ = run("executions", "logs", handle.exec_id)
        assert code == 0 and out == "[fetch] fetching owls\n"
        code, out, _ = run("executions", "logs", handle.exec_id, "--checkpoint", "write")
        assert code == 0 and out == ""
        code, out, _ = run("completion", "bash")
        assert code == 0 and "_KITARU_COMPLETE" in out

    def test_watch_prints_checkpoints_as_they_complete(self) -> None:
        runner = threading.Thread(target=slow_flow.run)
        runner.start()
        try:
            for _ in range(500):
                found = kitaru.KitaruClient().executions.list()
                if found:
                    break
                time.sleep(0.01)
            threading.Timer(1.0, GATE.set).start()
            code, out, _ = run("executions", "get", found[0].id, "--watch", "--interval", "0.05")
        finally:
            GATE.set()
            runner.join(10)
        assert code == 0
        lines = out.splitlines()
        assert lines[0].endswith("is running")
        assert any("slow_step " in line and "completed" in line for line in lines)
        assert any("slow_step:2" in line and "completed" in line for line in lines)
        assert lines[-1].endswith("is completed")

    def test_every_command_has_help(self) -> None:
        commands = {
            "executions": [
                "list",
                "get",
                "input",
                "resume",
                "retry",
                "replay",
                "cancel",
                "diff",
                "graph",
                "logs",
            ],
            "artifacts": ["list", "get"],
        }
        for group, names in commands.items():
            for name in names:
                code, out, _ = run(group, name, "--help")
                assert code == 0 and "Usage" in out, (group, name)
