"""Tampering with the artifact store, seen from real processes: a changed blob fails the resumed
execution clearly (never a wrong value), retry completes once the blob is restored, and a planted
pickle never runs, neither on resume nor on `kitaru artifacts get`."""

from __future__ import annotations

import pickle
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from kitaru.store import sync_view
from kitaru.store.sqlite import SQLiteStateStore

pytestmark = pytest.mark.e2e

FLOWS = Path(__file__).parent / "flows"
N = 100_000


class Touch:
    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (Path(self.path),))


def start(kind: str, env: dict[str, str], cwd: Path) -> str:
    done = subprocess.run(
        [sys.executable, str(FLOWS / "blob_wait.py"), str(N), kind],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    exec_id, status = done.stdout.split()[-2:]
    assert status == "waiting"
    return exec_id


def blob_path(home: Path, exec_id: str) -> tuple[str, str, Path]:
    store = sync_view(SQLiteStateStore(home / "kitaru.db"))
    try:
        [artifact] = store.list_artifacts(exec_id, name="produce", type="output")
    finally:
        store.close()
    assert artifact.uri is not None and artifact.uri.startswith("file://")
    blob = home / "artifacts" / "blobs" / artifact.uri.rpartition("/blobs/")[2]
    return artifact.id, artifact.content_hash, blob


def cli(
    kitaru_cli: list[str], *args: str, env: dict[str, str], cwd: Path
) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*kitaru_cli, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=120)


def test_truncated_blob_fails_the_resume_then_retry_completes_after_restoring_it(
    tmp_path: Path, subprocess_env: dict[str, str], kitaru_cli: list[str], kitaru_home: Path
) -> None:
    exec_id = start("text", subprocess_env, tmp_path)
    artifact_id, content_hash, blob = blob_path(kitaru_home, exec_id)
    original = blob.read_bytes()
    blob.write_bytes(original[:-11] + b'"')  # valid JSON, ten characters short

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    answer = ["executions", "input", exec_id, "--value", "true"]
    answered = cli(kitaru_cli, *answer, env=subprocess_env, cwd=elsewhere)
    assert answered.returncode == 4, answered.stdout + answered.stderr
    assert artifact_id in answered.stderr and content_hash in answered.stderr
    assert f"expected {N + 2} bytes" in answered.stderr and f"found {N - 8} bytes" in answered.stderr
    assert f"kitaru executions retry {exec_id}" in answered.stderr and "Traceback" not in answered.stderr
    shown = cli(kitaru_cli, "executions", "get", exec_id, env=subprocess_env, cwd=elsewhere)
    assert "status     failed" in shown.stdout and artifact_id in shown.stdout

    blob.write_bytes(original)
    retried = cli(kitaru_cli, "executions", "retry", exec_id, env=subprocess_env, cwd=elsewhere)
    assert retried.returncode == 0, retried.stderr
    assert f"execution {exec_id} is completed" in retried.stdout
    store = sync_view(SQLiteStateStore(kitaru_home / "kitaru.db"))
    try:
        record = store.get_execution(exec_id)
        assert record is not None and record.result_artifact is not None
        result = store.get_artifact(record.result_artifact)
        assert result is not None and result.inline == str(N).encode()
    finally:
        store.close()


def test_a_planted_pickle_never_runs(
    tmp_path: Path, subprocess_env: dict[str, str], kitaru_cli: list[str], kitaru_home: Path
) -> None:
    exec_id = start("pickle", subprocess_env, tmp_path)
    artifact_id, _, blob = blob_path(kitaru_home, exec_id)
    pwned = tmp_path / "pwned"
    blob.write_bytes(pickle.dumps(Touch(pwned)))

    shown = cli(kitaru_cli, "artifacts", "get", artifact_id, env=subprocess_env, cwd=tmp_path)
    assert shown.returncode == 0 and "cloudpickle" in shown.stdout and "--load" in shown.stdout
    loaded = cli(kitaru_cli, "artifacts", "get", artifact_id, "--load", env=subprocess_env, cwd=tmp_path)
    assert loaded.returncode == 4 and artifact_id in loaded.stderr
    answer = ["executions", "input", exec_id, "--value", "true"]
    answered = cli(kitaru_cli, *answer, env=subprocess_env, cwd=tmp_path)
    assert answered.returncode == 4 and artifact_id in answered.stderr
    assert not pwned.exists()


def test_a_damaged_blob_is_repaired_by_the_next_process_that_writes_its_value(
    tmp_path: Path, subprocess_env: dict[str, str], kitaru_cli: list[str], kitaru_home: Path
) -> None:
    first = start("text", subprocess_env, tmp_path)
    artifact_id, _, blob = blob_path(kitaru_home, first)
    original = blob.read_bytes()
    blob.write_bytes(original[: len(original) // 2])  # a copy cut short (a full disk, a bad restore)

    # Another process computes the same value: it must not be refused by the damaged blob.
    second = start("text", subprocess_env, tmp_path)
    assert blob.read_bytes() == original
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for exec_id in (first, second):  # the first execution reads its output again, repaired
        answered = cli(
            kitaru_cli, "executions", "input", exec_id, "--value", "true", env=subprocess_env, cwd=elsewhere
        )
        assert answered.returncode == 0 and "completed" in answered.stdout, answered.stdout + answered.stderr
    store = sync_view(SQLiteStateStore(kitaru_home / "kitaru.db"))
    try:
        for exec_id in (first, second):
            record = store.get_execution(exec_id)
            assert record is not None and record.status == "completed"
            result = store.get_artifact(record.result_artifact or "")
            assert result is not None and result.inline == str(N).encode()
        assert store.get_artifact(artifact_id) is not None
    finally:
        store.close()


def test_a_deleted_blob_without_a_backup_is_made_again_by_the_replay_the_error_names(
    tmp_path: Path, subprocess_env: dict[str, str], kitaru_cli: list[str], kitaru_home: Path
) -> None:
    exec_id = start("text", subprocess_env, tmp_path)
    artifact_id, content_hash, blob = blob_path(kitaru_home, exec_id)
    original = blob.read_bytes()
    blob.unlink()

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    answered = cli(
        kitaru_cli, "executions", "input", exec_id, "--value", "true", env=subprocess_env, cwd=elsewhere
    )
    assert answered.returncode == 4, answered.stdout + answered.stderr
    error = answered.stderr
    assert artifact_id in error and "is missing from the artifact store" in error and content_hash in error
    replay = f"kitaru executions replay {exec_id} --from produce"
    assert replay in error and f"kitaru executions retry {exec_id}" in error, error

    replayed = cli(kitaru_cli, *replay.split()[1:], env=subprocess_env, cwd=tmp_path)
    assert replayed.returncode == 0 and "waiting on 'go'" in replayed.stdout, (
        replayed.stdout + replayed.stderr
    )
    assert blob.read_bytes() == original  # the replayed checkpoint wrote the same bytes back
    retried = cli(kitaru_cli, "executions", "retry", exec_id, env=subprocess_env, cwd=elsewhere)
    assert retried.returncode == 0 and f"execution {exec_id} is completed" in retried.stdout, retried.stderr
