"""What people reach for around waits: everything waiting on them (oldest first, with question and
schema), aborting a wait (the flow sees KitaruWaitAborted), and the latest execution of a flow."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

import kitaru
from kitaru._engine.runtime import Runtime
from kitaru.cli import main
from kitaru.errors import KitaruNotFoundError, KitaruStateError, KitaruWaitAborted


@kitaru.flow
def approve(topic: str) -> str:
    if kitaru.wait(name="approve", question=f"Publish {topic}?", schema=bool):
        return "published"
    return "kept"


@kitaru.flow
def careful(topic: str) -> str:
    try:
        kitaru.wait(name="review", question="Looks right?", schema=bool)
    except KitaruWaitAborted as exc:
        return f"aborted: {exc.reason}"
    return "reviewed"


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.stdout, result.stderr


class TestPendingWaits:
    def test_open_waits_oldest_first_with_question_and_schema(self, runtime: Runtime) -> None:
        client = kitaru.KitaruClient()
        first = approve.run("a").exec_id
        second = careful.run("b").exec_id
        third = approve.run("c").exec_id
        client.executions.input(third, True)  # answered: no longer pending
        done = approve.run("d").exec_id
        client.executions.input(done, False)

        pending = client.executions.pending_waits()
        assert [(p.exec_id, p.name) for p in pending] == [(first, "approve"), (second, "review")]
        assert pending[0].question == "Publish a?" and pending[0].flow == "approve"
        # 0.18's PendingWait.schema is the JSON Schema; the short type text is `expects`.
        assert pending[0].schema == {"type": "boolean"} and pending[0].expects == "bool"
        assert pending[0].json_schema == pending[0].schema
        assert pending[0].opened_at is not None and pending[0].opened_at <= (pending[1].opened_at or 0)
        assert [p.exec_id for p in client.executions.pending_waits(flow="careful")] == [second]

    def test_cli_lists_them(self, runtime: Runtime) -> None:
        exec_id = approve.run("x").exec_id
        code, out, err = run("executions", "waits", "-o", "json")
        assert code == 0, err
        [row] = json.loads(out)
        assert row["exec_id"] == exec_id and row["question"] == "Publish x?"
        assert row["schema"] == {"type": "boolean"} and row["expects"] == "bool"
        code, out, _ = run("executions", "waits")
        assert code == 0 and exec_id in out and "Publish x?" in out
        kitaru.KitaruClient().executions.input(exec_id, True)
        code, out, _ = run("executions", "waits")
        assert code == 0 and "nothing is waiting" in out


class TestAbort:
    def test_the_flow_sees_the_abort_and_its_reason(self, runtime: Runtime) -> None:
        client = kitaru.KitaruClient()
        exec_id = careful.run("x").exec_id
        handle = client.executions.abort_wait(exec_id, reason="wrong topic")
        assert handle.wait(timeout=60) == "aborted: wrong topic"
        execution = client.executions.get(exec_id)
        assert execution.status == "completed"
        assert [(w.name, w.status) for w in execution.waits] == [("review", "aborted")]

    def test_an_uncaught_abort_fails_the_execution(self, runtime: Runtime) -> None:
        client = kitaru.KitaruClient()
        exec_id = approve.run("x").exec_id
        # The abort is what the caller asked for: abort_wait() returns the handle (0.18 returned
        # the execution), whose status says the flow failed and whose wait() raises the abort.
        handle = client.executions.abort_wait(exec_id, reason="no budget")
        assert handle.exec_id == exec_id and handle.status == "failed"
        with pytest.raises(KitaruWaitAborted, match="was aborted: no budget") as caught:
            handle.wait(timeout=30)
        assert caught.value.wait == "approve" and caught.value.reason == "no budget"
        execution = client.executions.get(exec_id)
        assert execution.status == "failed" and "KitaruWaitAborted" in (execution.error or "")
        assert handle.failure is not None and "no budget" in handle.failure.message

    def test_an_aborted_wait_takes_no_answer_and_an_answered_one_no_abort(self, runtime: Runtime) -> None:
        client = kitaru.KitaruClient()
        aborted = careful.run("x").exec_id
        client.executions.abort_wait(aborted, resume=False)
        with pytest.raises(KitaruStateError, match="aborted"):
            client.executions.input(aborted, True, wait="review")
        answered = careful.run("y").exec_id
        client.executions.input(answered, True, resume=False)
        with pytest.raises(KitaruStateError, match="answered"):
            client.executions.abort_wait(answered, wait="review")

    def test_cli_abort_exits_9_when_the_flow_does_not_catch_it(self, runtime: Runtime) -> None:
        exec_id = approve.run("x").exec_id
        code, _, err = run("executions", "input", exec_id, "--abort", "--reason", "stop")
        assert code == KitaruWaitAborted.exit_code == 9
        assert "aborted: stop" in err
        caught = careful.run("y").exec_id
        code, out, err = run("executions", "input", caught, "--abort", "-o", "json")
        assert code == 0, err
        assert json.loads(out)["status"] == "completed"

    def test_cli_needs_value_or_abort(self, runtime: Runtime) -> None:
        exec_id = approve.run("x").exec_id
        for args in ([], ["--abort", "--value", "true"], ["--value", "true", "--reason", "r"]):
            code, _, err = run("executions", "input", exec_id, *args)
            assert code == 2, err
        assert kitaru.KitaruClient().executions.get(exec_id).open_waits


def test_latest(runtime: Runtime) -> None:
    client = kitaru.KitaruClient()
    with pytest.raises(KitaruNotFoundError, match="of flow 'approve'"):
        client.executions.latest(flow="approve")
    approve.run("a")
    newest = approve.run("b").exec_id
    other = careful.run("c").exec_id
    assert client.executions.latest(flow="approve").id == newest
    latest = client.executions.latest()
    assert latest.id == other and latest.waits  # the full view, with its waits
    assert client.executions.latest(flow="approve", status="waiting").id == newest


SCRIPT = textwrap.dedent(
    """
    import sys
    import kitaru

    @kitaru.flow
    def gate() -> str:
        try:
            kitaru.wait(name="go", question="Go?", schema=bool)
        except kitaru.KitaruWaitAborted as exc:
            print("ABORTED", exc.reason, flush=True)
            raise
        return "went"

    if __name__ == "__main__":
        print("EXEC", gate.run().exec_id)
    """
)


def test_abort_from_another_process(tmp_path: Path, kitaru_home: Path) -> None:
    """A flow suspended by one process, listed and aborted by the CLI from another directory:
    the abort resumes it there, the flow sees the reason, and the CLI exits 9."""
    (tmp_path / "gate.py").write_text(SCRIPT)
    env = {**os.environ, "KITARU_HOME": str(kitaru_home)}
    started = subprocess.run(
        [sys.executable, "gate.py"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert started.returncode == 0, started.stderr
    exec_id = started.stdout.split("EXEC", 1)[1].split()[0]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    cli = [sys.executable, "-m", "kitaru.cli", "executions"]
    waits = subprocess.run(
        [*cli, "waits", "-o", "json"], cwd=elsewhere, env=env, capture_output=True, text=True, timeout=120
    )
    assert [w["exec_id"] for w in json.loads(waits.stdout)] == [exec_id]
    aborted = subprocess.run(
        [*cli, "input", exec_id, "--abort", "--reason", "not today"],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert aborted.returncode == 9, aborted.stderr
    assert "ABORTED not today" in aborted.stdout
    assert kitaru.KitaruClient().executions.get(exec_id).status == "failed"


def test_ids_made_in_one_millisecond_keep_their_order() -> None:
    # What makes latest() and "newest first" right for executions started back to back.
    from kitaru._ids import new_id

    ids = [new_id() for _ in range(2000)]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
