"""Inspection needs no write access: on a read-only home, every read-only command works.

Tests run as root, which ignores file modes. The commands here run as root *without* the
capabilities that bypass them (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER dropped from the
bounding set with ``setpriv``), so a 0555 directory and 0444 files really are read-only to them;
the test first proves that such a process cannot create a file there.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from kitaru.store import sync_view
from kitaru.store.sqlite import SQLiteStateStore

pytestmark = pytest.mark.e2e

FLOWS = Path(__file__).parent / "flows"
DROP = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search,-fowner", "--"]


def without_override(cmd: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*DROP, *cmd], env=env, cwd=cwd, capture_output=True, text=True, timeout=120)


def make_read_only(root: Path) -> dict[str, tuple[int, bytes]]:
    """Take write permission away from everything under ``root``; returns each file's mode and bytes."""
    before = {}
    for path in sorted(root.rglob("*"), reverse=True):
        if path.is_file():
            before[str(path)] = (path.stat().st_mode, path.read_bytes())
            os.chmod(path, 0o444)
        else:
            os.chmod(path, 0o555)
    os.chmod(root, 0o555)
    return before


@pytest.fixture(params=["wal-left", "closed-cleanly"])
def wal(request: pytest.FixtureRequest) -> str:
    """A killed or exited process leaves the -wal and -shm files; the last clean close removes them
    (then a read-only reader cannot create the WAL index it needs, and reads the file alone)."""
    return str(request.param)


@pytest.fixture
def restore_modes(kitaru_home: Path) -> object:
    yield None
    # Give write permission back so pytest can remove the directory.
    for path in [kitaru_home, *kitaru_home.rglob("*")]:
        if path.exists():
            os.chmod(path, stat.S_IMODE(path.stat().st_mode) | 0o700)


def test_inspection_commands_work_on_a_read_only_home(
    tmp_path: Path,
    subprocess_env: dict[str, str],
    kitaru_cli: list[str],
    kitaru_home: Path,
    restore_modes: object,
    wal: str,
) -> None:
    if shutil.which("setpriv") is None:
        pytest.skip("needs setpriv (util-linux) to run a command without root's file-mode bypass")
    started = subprocess.run(
        [sys.executable, str(FLOWS / "blob_wait.py"), "100000", "text"],
        env=subprocess_env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert started.returncode == 0, started.stderr
    exec_id = started.stdout.split()[-2]
    listed = subprocess.run(
        [*kitaru_cli, "artifacts", "list", exec_id, "-o", "json"],
        env=subprocess_env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    output_id = next(a["id"] for a in json.loads(listed.stdout) if a["name"] == "produce")
    if wal == "closed-cleanly":
        sync_view(SQLiteStateStore(kitaru_home / "kitaru.db")).close()
    assert (kitaru_home / "kitaru.db-wal").exists() == (wal == "wal-left")
    before = make_read_only(kitaru_home)

    probe = without_override(["touch", str(kitaru_home / "probe")], subprocess_env, tmp_path)
    if probe.returncode == 0:
        pytest.skip("setpriv could not drop the file-mode bypass here; nothing would be proven")

    out = tmp_path / "value.json"
    for args, expect in [
        (["executions", "list"], exec_id),
        (["executions", "get", exec_id], "waiting"),
        (["executions", "logs", exec_id], "producing 100000 text"),
        (["executions", "graph", exec_id], "produce"),
        (["executions", "diff", exec_id, exec_id], "0 differ"),
        (["artifacts", "list", exec_id], output_id),
        (["artifacts", "get", output_id], "100002 bytes"),
        (["artifacts", "get", output_id, "--out", str(out)], "wrote 100002 bytes"),
    ]:
        done = without_override([*kitaru_cli, *args], subprocess_env, tmp_path)
        assert done.returncode == 0 and expect in done.stdout, (args, done.stdout, done.stderr)
    assert out.read_bytes() == b'"' + b"x" * 100_000 + b'"'

    # Nothing under the home changed, and no file (-wal, -shm, journal) appeared.
    after = {str(p): (p.stat().st_mode, p.read_bytes()) for p in kitaru_home.rglob("*") if p.is_file()}
    assert after == {k: (stat.S_IFREG | 0o444, v[1]) for k, v in before.items()}
