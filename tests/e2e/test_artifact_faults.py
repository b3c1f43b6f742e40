"""The artifact directory fails under a running flow (a full disk, a read-only mount): the flow
fails with an error that says what to fix and how to go on, the journal holds only what was
written whole (no record points at a blob that is not there, no temporary file is left), and once
the directory is fixed `kitaru executions retry` completes it without running a completed
checkpoint again. The directory is a small tmpfs (the tests run as root); runs are counted
outside kitaru (tests/e2e/flows/crash_flows.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from kitaru.store import sync_view
from kitaru.store.sqlite import SQLiteStateStore

pytestmark = pytest.mark.e2e

SCRIPT = str(Path(__file__).parent / "flows" / "crash_flows.py")
STEPS = 6


def _mount(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["mount", *args], capture_output=True, text=True, timeout=30)


@pytest.fixture
def artifacts(kitaru_home: Path) -> Iterator[Path]:
    """The home's artifact directory as a tmpfs of its own, which the test can fill or remount."""
    path = kitaru_home / "artifacts"
    path.mkdir(parents=True)
    mounted = _mount("-t", "tmpfs", "-o", "size=4m,mode=0700", "tmpfs", str(path))
    if mounted.returncode != 0:
        pytest.skip(f"needs root to mount a tmpfs: {mounted.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True, timeout=30)


@pytest.mark.parametrize(
    ("fault", "options", "written"),
    [
        # Room for three 80 KB blobs (20 pages each of 64): the fourth write runs out of space.
        ("full", "size=256k", 3),
        ("read-only", "ro", 0),
    ],
)
def test_a_failed_artifact_write_fails_the_flow_cleanly_and_retry_completes_it(
    fault: str,
    options: str,
    written: int,
    artifacts: Path,
    tmp_path: Path,
    subprocess_env: dict[str, str],
    kitaru_cli: list[str],
    kitaru_home: Path,
) -> None:
    assert _mount("-o", f"remount,{options}", str(artifacts)).returncode == 0
    count_file = tmp_path / "count.txt"
    env = {**subprocess_env, "COUNT_FILE": str(count_file), "SLOW": "0"}
    run = subprocess.run(
        [sys.executable, SCRIPT, "chain", str(STEPS)],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    exec_id, status = run.stdout.split()
    assert status == "failed"

    store = sync_view(SQLiteStateStore(kitaru_home / "kitaru.db"))
    try:
        execution = store.get_execution(exec_id)
        assert execution is not None and execution.lease_owner is None
        reason = "No space left on device" if fault == "full" else "Read-only file system"
        error = execution.error or ""
        assert reason in error and str(artifacts) in error, error
        assert "Make room or make the directory writable" in error and "kitaru executions retry" in error
        # Only whole writes are recorded: each completed checkpoint's blob is there, nothing else.
        journal = store.read_journal(exec_id)
        outputs = [
            store.get_artifact(r.artifact_id or "") for r in journal if r.kind == "checkpoint_completed"
        ]
        assert len(outputs) == written
        blobs = sorted(p.name for p in artifacts.rglob("*") if p.is_file())
        assert blobs == sorted(a.content_hash.removeprefix("sha256:") for a in outputs if a is not None)
        assert [r.kind for r in journal][-1] == "flow_failed"

        assert _mount("-o", "remount,rw,size=4m", str(artifacts)).returncode == 0
        retried = subprocess.run(
            [*kitaru_cli, "executions", "retry", exec_id, "-o", "json"],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert retried.returncode == 0, retried.stderr
        assert json.loads(retried.stdout)["status"] == "completed"
        runs = Counter(line.strip() for line in count_file.read_text().splitlines())
        failed_at = written + 1  # its body ran, then its output could not be stored
        assert runs == Counter({**{f"big {i}": 1 for i in range(1, STEPS + 1)}, f"big {failed_at}": 2})
        completed = [r.call_id for r in store.read_journal(exec_id) if r.kind == "checkpoint_completed"]
        assert completed == ["big", *(f"big:{i}" for i in range(2, STEPS + 1))]
    finally:
        store.close()
