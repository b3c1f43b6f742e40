"""Chaos for the S3 artifact store: the S3 server goes down while a flow (in another process) is
writing a checkpoint's output to it, then comes back on the same port with its data.

Either the store's retries ride through the outage and the flow completes, or it fails with a
clear store error naming the bucket and endpoint; the journal stays whole either way, and resuming
completes the flow with each checkpoint completed exactly once. Runs are counted outside kitaru."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from kitaru.stack import artifact_store_for_uri
from kitaru.store import StateStore, sync_view
from kitaru.store.sqlite import SQLiteStateStore
from tests._process import wait_for
from tests._services import missing
from tests._services.s3 import INSTALL, RestartableMoto, moto_installed

pytestmark = pytest.mark.e2e

FLOWS = Path(__file__).parent / "flows"
STEPS, PAUSE_AT = 12, 5


@pytest.fixture
def moto() -> Iterator[RestartableMoto]:
    if not moto_installed():
        missing("moto[server] (the S3 emulator)", INSTALL)
    server = RestartableMoto().start()
    yield server
    server.stop()


def _payload(i: int) -> bytes:
    return hashlib.sha256(str(i).encode()).digest() * 2500


def _check_whole(store: StateStore, exec_id: str, artifacts: str, options: dict[str, str]) -> None:
    """Ordered journal, one completion per checkpoint, each output's blob in S3 with its bytes."""
    journal = store.read_journal(exec_id)
    ids = [r.id for r in journal]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    completed = [r for r in journal if r.kind == "checkpoint_completed"]
    assert Counter(r.call_id for r in completed) == Counter(
        ["step", *(f"step:{i}" for i in range(2, STEPS + 1))]
    )
    blobs = sync_view(artifact_store_for_uri(artifacts, **options))
    try:
        for i, record in enumerate(completed, start=1):
            artifact = store.get_artifact(record.artifact_id or "")
            assert artifact is not None and artifact.inline is None and artifact.uri is not None
            key = artifact.uri.removeprefix(artifacts + "/")
            assert blobs.get(key) == _payload(i)
    finally:
        getattr(blobs, "close", lambda: None)()


@pytest.mark.parametrize("outage", ["outlasts_retries", "shorter_than_retries"])
def test_s3_server_down_mid_flow(
    outage: str,
    moto: RestartableMoto,
    tmp_path: Path,
    subprocess_env: dict[str, str],
    kitaru_cli: list[str],
) -> None:
    bucket = moto.create_bucket()
    artifacts = f"s3://{bucket}/chaos"
    options = moto.options()
    if outage == "outlasts_retries":
        retries = {"retries": "2", "retry_base_delay": "0.05", "retry_max_delay": "0.1"}
    else:
        retries = {"retries": "10", "retry_base_delay": "0.2", "retry_max_delay": "1.0"}
    state = tmp_path / "state.db"
    keys = {
        "state": f"sqlite:///{state}",
        "artifacts": artifacts,
        **options,
        **retries,
        "connect_timeout": "1",
    }
    config = tmp_path / "config.toml"
    config.write_text(
        'active_stack = "chaos"\n[stacks.chaos]\ntype = "aws"\n'
        + "".join(f'{k} = "{v}"\n' for k, v in keys.items())
    )
    marks = tmp_path / "marks"
    marks.mkdir()
    count = tmp_path / "count.txt"
    env = {
        **subprocess_env,
        "KITARU_CONFIG": str(config),
        "COUNT_FILE": str(count),
        "MARK_DIR": str(marks),
        "PAUSE_AT": str(PAUSE_AT),
    }

    proc = subprocess.Popen(
        [sys.executable, str(FLOWS / "s3_chaos.py"), str(STEPS)],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(marks / "paused", proc)
        moto.stop()  # checkpoint PAUSE_AT is about to write its output: S3 is gone
        (marks / "go").write_text("")
        if outage == "outlasts_retries":
            out, err = proc.communicate(timeout=120)
            moto.start()
        else:
            time.sleep(0.5)
            moto.start()
            out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
    assert proc.returncode == 0, err
    exec_id, _status = out.split()

    store = sync_view(SQLiteStateStore(state))
    try:
        execution = store.get_execution(exec_id)
        assert execution is not None
        if outage == "outlasts_retries":
            # A clear error, naming what failed and where; nothing half-written in the journal.
            assert execution.status == "failed", execution
            assert (
                execution.error and "unreachable" in execution.error and moto.endpoint_url in execution.error
            )
            assert bucket in execution.error
            completed = [r.call_id for r in store.read_journal(exec_id) if r.kind == "checkpoint_completed"]
            assert completed == ["step", *(f"step:{i}" for i in range(2, PAUSE_AT))]
            done = subprocess.run(
                [*kitaru_cli, "executions", "retry", exec_id],
                env=env,
                cwd=tmp_path,
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert done.returncode == 0, done.stderr
        execution = store.get_execution(exec_id)
        assert execution is not None and execution.status == "completed", execution
        _check_whole(store, exec_id, artifacts, options)
        runs = Counter(int(line) for line in count.read_text().split())
        again = 2 if outage == "outlasts_retries" else 1  # the checkpoint whose write failed ran again
        assert runs == Counter({**{i: 1 for i in range(1, STEPS + 1)}, PAUSE_AT: again}), runs
        result = store.get_artifact(execution.result_artifact or "")
        expected = hashlib.sha256(b"".join(_payload(i) for i in range(1, STEPS + 1))).hexdigest()
        assert result is not None and result.inline is not None and expected.encode() in result.inline
    finally:
        store.close()
