"""``@checkpoint(runtime="isolated")`` with real processes: the call runs in a process of its own,
and a parent killed with SIGKILL, after the child committed or while it runs, never gets the call
run a second time once the execution resumes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests._process import wait_for

pytestmark = pytest.mark.e2e

SCRIPT = """
import os
import sys
import time
from pathlib import Path

import kitaru

D = Path(os.environ["ISO_DIR"])


@kitaru.checkpoint(runtime="isolated", type="tool_call")
def isolated(x: int) -> dict:
    with (D / "runs.txt").open("a") as fh:
        fh.write(f"{os.getpid()}\\n")
    deadline = time.monotonic() + 120
    while not (D / "release").exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    return {"value": x * 2, "pid": os.getpid()}


@kitaru.checkpoint
def after(out: dict) -> int:
    (D / "after-started").write_text(str(os.getpid()))
    deadline = time.monotonic() + 120
    while not (D / "release-after").exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    return out["value"] + 1


@kitaru.flow
def iso(x: int) -> list:
    out = isolated(x)
    return [after(out), out["pid"], os.getpid()]


if __name__ == "__main__":
    handle = iso.run(20, execution_id=sys.argv[1])
    print("result:", handle.wait())
"""


def _start(script: Path, env: dict[str, str], exec_id: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(script), exec_id],
        env=env,
        cwd=script.parent,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.fixture
def setup(tmp_path: Path, subprocess_env: dict[str, str]) -> tuple[Path, Path, dict[str, str]]:
    work = tmp_path / "iso"
    work.mkdir()
    script = work / "iso_flow.py"
    script.write_text(SCRIPT)
    env = {**subprocess_env, "ISO_DIR": str(work), "KITARU_LEASE_TTL": "3"}
    return work, script, env


def test_an_isolated_call_runs_in_a_process_of_its_own(setup: tuple[Path, Path, dict[str, str]]) -> None:
    work, script, env = setup
    (work / "release").touch()
    (work / "release-after").touch()
    proc = _start(script, env, "iso-own-process")
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, out + err
    line = next(x for x in out.splitlines() if x.startswith("result:"))
    value, child_pid, parent_pid = eval(line.removeprefix("result:"))
    assert value == 41
    assert child_pid != parent_pid
    assert (work / "runs.txt").read_text().split() == [str(child_pid)]

    import kitaru

    calls = {c.call_id: c for c in kitaru.KitaruClient().executions.get("iso-own-process").checkpoints}
    assert calls["isolated"].status == "completed" and calls["isolated"].type == "tool_call"


def test_a_parent_killed_after_the_child_committed_does_not_run_it_again(
    setup: tuple[Path, Path, dict[str, str]],
) -> None:
    work, script, env = setup
    (work / "release").touch()
    parent = _start(script, env, "iso-after-commit")
    wait_for(work / "after-started", parent, timeout=120)  # the isolated call committed before
    parent.send_signal(signal.SIGKILL)
    parent.communicate(timeout=60)
    (work / "release-after").touch()
    resumed = _start(script, env, "iso-after-commit")
    out, err = resumed.communicate(timeout=180)
    assert resumed.returncode == 0, out + err
    assert "result: [41," in out, out + err
    assert len((work / "runs.txt").read_text().split()) == 1


def test_a_parent_killed_while_the_child_runs_waits_for_that_child_on_resume(
    setup: tuple[Path, Path, dict[str, str]],
) -> None:
    work, script, env = setup
    parent = _start(script, env, "iso-mid-call")
    wait_for(work / "runs.txt", parent, timeout=120)  # the child runs, blocked on `release`
    child_pid = int((work / "runs.txt").read_text().split()[0])
    parent.send_signal(signal.SIGKILL)
    parent.wait(timeout=60)  # not communicate(): the live child still holds the parent's pipes
    for pipe in (parent.stdout, parent.stderr):
        assert pipe is not None
        pipe.close()
    os.kill(child_pid, 0)  # the child outlives its parent
    resumed = _start(script, env, "iso-mid-call")
    (work / "release").touch()
    (work / "release-after").touch()
    out, err = resumed.communicate(timeout=180)
    assert resumed.returncode == 0, out + err
    assert f"result: [41, {child_pid}," in out, out + err
    assert (work / "runs.txt").read_text().split() == [str(child_pid)]
