"""Crashes beyond the SQLite chain: SIGKILL a real process, then resume through the CLI from
another process, on PostgreSQL state with S3 artifacts, in an async flow with concurrent
checkpoints, and during a wait hold. Each time: no completed checkpoint runs again, and the
result is right. Runs are counted outside kitaru (tests/e2e/flows/crash_flows.py)."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from kitaru.stack import artifact_store_for_uri
from kitaru.store import StateStore, sync_view
from kitaru.store.postgres import PostgresStateStore
from kitaru.store.sqlite import SQLiteStateStore
from tests._process import wait_for
from tests._services.s3 import MotoServer, s3_server

__all__ = ["s3_server"]

pytestmark = pytest.mark.e2e

FLOWS = Path(__file__).parent / "flows"
SCRIPT = str(FLOWS / "crash_flows.py")


def runs_of(count_file: Path) -> Counter[str]:
    return Counter(line.strip() for line in count_file.read_text().splitlines() if line.strip())


def until(condition: Callable[[], Any], what: str, timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"{what} did not happen within {timeout} s")


def completed(store: StateStore, exec_id: str) -> Counter[str]:
    return Counter(r.call_id or "" for r in store.read_journal(exec_id) if r.kind == "checkpoint_completed")


def kill(proc: subprocess.Popen[Any]) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait(30) == -signal.SIGKILL


def cli(
    kitaru_cli: list[str], env: dict[str, str], cwd: Path, *args: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*kitaru_cli, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=120)


@pytest.fixture
def env(tmp_path: Path, subprocess_env: dict[str, str]) -> dict[str, str]:
    marks = tmp_path / "marks"
    marks.mkdir()
    return {
        **subprocess_env,
        "COUNT_FILE": str(tmp_path / "count.txt"),
        "MARK_DIR": str(marks),
        "SLOW": "1",
        "KITARU_HEARTBEAT": "0.1",
    }


@pytest.fixture
def elsewhere(tmp_path: Path) -> Path:
    """Resumes run from another directory than the one the flow started in."""
    path = tmp_path / "elsewhere"
    path.mkdir()
    return path


def test_postgres_state_and_s3_artifacts_survive_sigkill(
    tmp_path: Path,
    env: dict[str, str],
    elsewhere: Path,
    kitaru_cli: list[str],
    postgres_dsn: str,
    s3_server: MotoServer,
) -> None:
    steps, slow_at = 8, 5
    bucket = s3_server.create_bucket()
    artifacts = f"s3://{bucket}/crash"
    keys = {"state": postgres_dsn, "artifacts": artifacts, **s3_server.options()}
    config = tmp_path / "config.toml"
    config.write_text(
        'active_stack = "prod"\n[stacks.prod]\ntype = "aws"\n'
        + "".join(f'{k} = "{v}"\n' for k, v in keys.items())
    )
    env = {**env, "KITARU_CONFIG": str(config), "SLOW_AT": str(slow_at)}
    proc = subprocess.Popen([sys.executable, SCRIPT, "chain", str(steps)], env=env, cwd=tmp_path)
    store = sync_view(PostgresStateStore(postgres_dsn))
    try:
        try:
            wait_for(Path(env["MARK_DIR"]) / "slow", proc)
            exec_id = (Path(env["MARK_DIR"]) / "slow").read_text()
            assert len(completed(store, exec_id)) == slow_at - 1
        finally:
            kill(proc)
        assert store.get_execution(exec_id).status == "running"  # type: ignore[union-attr]

        env["SLOW"] = "0"
        done = cli(kitaru_cli, env, elsewhere, "executions", "resume", exec_id)
        assert done.returncode == 0 and "completed" in done.stdout, done.stderr

        runs = runs_of(Path(env["COUNT_FILE"]))
        assert runs == Counter({**{f"big {i}": 1 for i in range(1, steps + 1)}, f"big {slow_at}": 2}), runs
        assert completed(store, exec_id) == Counter(["big", *(f"big:{i}" for i in range(2, steps + 1))])
        execution = store.get_execution(exec_id)
        assert execution is not None and execution.status == "completed"
        # Every output is a blob in S3 (not inline in PostgreSQL), with the bytes it should have.
        blobs = sync_view(artifact_store_for_uri(artifacts, **s3_server.options()))
        try:
            outputs = [
                store.get_artifact(r.artifact_id or "")
                for r in store.read_journal(exec_id)
                if r.kind == "checkpoint_completed"
            ]
            for i, artifact in enumerate(outputs, start=1):
                assert artifact is not None and artifact.inline is None and artifact.uri is not None
                assert artifact.uri.startswith(f"{artifacts}/blobs/")
                assert blobs.get(artifact.uri.removeprefix(artifacts + "/")) == _payload(i)
        finally:
            getattr(blobs, "close", lambda: None)()
        shown = cli(kitaru_cli, env, elsewhere, "executions", "get", exec_id, "-o", "json")
        expected = hashlib.sha256(b"".join(_payload(i) for i in range(1, steps + 1))).hexdigest()
        result = store.get_artifact(execution.result_artifact or "")
        assert result is not None and result.inline == json.dumps(expected).encode()
        assert json.loads(shown.stdout)["status"] == "completed"
    finally:
        store.close()


def _payload(i: int) -> bytes:
    return hashlib.sha256(str(i).encode()).digest() * 2500


def test_async_flow_killed_with_eight_checkpoints_in_flight(
    tmp_path: Path, env: dict[str, str], elsewhere: Path, kitaru_cli: list[str], kitaru_home: Path
) -> None:
    marks = Path(env["MARK_DIR"])
    proc = subprocess.Popen([sys.executable, SCRIPT, "fanout"], env=env, cwd=tmp_path)
    store = sync_view(SQLiteStateStore(kitaru_home / "kitaru.db"))
    try:
        try:
            for i in range(4, 8):
                wait_for(marks / f"slow-{i}", proc)
            exec_id = (marks / "slow-4").read_text()
            # The fast half completed (one group commit); the slow half is in flight.
            until(lambda: len(completed(store, exec_id)) == 4, "the fast checkpoints' commit")
            until(
                lambda: len(store.get_execution(exec_id).metadata.get("inflight") or {}) == 4,  # type: ignore[union-attr]
                "the heartbeat's note of the four attempts in flight",
            )
        finally:
            kill(proc)
        assert completed(store, exec_id) == Counter(["work", "work:2", "work:3", "work:4"])

        env["SLOW"] = "0"
        done = cli(kitaru_cli, env, elsewhere, "executions", "resume", exec_id)
        assert done.returncode == 0 and "completed" in done.stdout, done.stderr

        runs = runs_of(Path(env["COUNT_FILE"]))
        assert runs == Counter(
            {**{f"work {i}": 1 for i in range(4)}, **{f"work {i}": 2 for i in range(4, 8)}}
        )
        assert completed(store, exec_id) == Counter(["work", *(f"work:{i}" for i in range(2, 9))])
        execution = store.get_execution(exec_id)
        assert execution is not None and execution.status == "completed"
        result = store.get_artifact(execution.result_artifact or "")
        assert result is not None and result.inline == str(sum(i * i for i in range(8))).encode()
        shown = json.loads(cli(kitaru_cli, env, elsewhere, "executions", "get", exec_id, "-o", "json").stdout)
        attempts = {c["call_id"]: (c["attempts"], c["interrupted"]) for c in shown["checkpoints"]}
        assert attempts == {
            **{cid: (1, 0) for cid in ["work", "work:2", "work:3", "work:4"]},
            **{f"work:{i}": (2, 1) for i in range(5, 9)},
        }
    finally:
        store.close()


def test_killed_during_a_wait_hold_then_answered_and_resumed(
    tmp_path: Path, env: dict[str, str], elsewhere: Path, kitaru_cli: list[str], kitaru_home: Path
) -> None:
    env = {**env, "KITARU_WAIT_HOLD": "120"}  # the process holds on the wait instead of suspending
    marks = Path(env["MARK_DIR"])
    proc = subprocess.Popen([sys.executable, SCRIPT, "hold"], env=env, cwd=tmp_path)
    store = sync_view(SQLiteStateStore(kitaru_home / "kitaru.db"))
    try:
        try:
            wait_for(marks / "holding", proc)
            exec_id = (marks / "holding").read_text()
            until(
                lambda: any(r.kind == "wait_opened" for r in store.read_journal(exec_id)),
                "the wait's opening",
            )
            assert store.get_execution(exec_id).status == "running"  # type: ignore[union-attr]
        finally:
            kill(proc)

        answered = cli(kitaru_cli, env, elsewhere, "executions", "input", exec_id, "--value", "true")
        assert answered.returncode == 0, answered.stderr
        if store.get_execution(exec_id).status != "completed":  # type: ignore[union-attr]
            # The answer is recorded; the dead holder's execution is still "running": resume it.
            done = cli(kitaru_cli, env, elsewhere, "executions", "resume", exec_id)
            assert done.returncode == 0 and "completed" in done.stdout, done.stderr

        assert runs_of(Path(env["COUNT_FILE"])) == Counter({"before 1": 1, "after 1": 1})
        journal = store.read_journal(exec_id)
        assert [r.kind for r in journal].count("wait_opened") == 1
        assert [r.kind for r in journal].count("wait_answered") == 1
        execution = store.get_execution(exec_id)
        assert execution is not None and execution.status == "completed"
        result = store.get_artifact(execution.result_artifact or "")
        assert result is not None and result.inline == b'"published draft on crashes"'
    finally:
        store.close()
