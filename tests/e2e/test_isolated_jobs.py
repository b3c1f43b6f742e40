"""How a resumed parent treats an isolated call's remote job (kitaru/_engine/isolated.py), with real
processes, on a platform whose jobs are local processes known by name (the script's ``Jobs``: the
orchestrator seam ``call_job_name`` / ``submit_call`` / ``call_state`` every remote stack offers).
The cloud-specific halves are proven per platform in test_kubernetes.py, test_ecs.py,
test_cloudrun.py and test_aca.py; these are the two paths their doubles cannot reach on demand:

- a parent killed between its launch record and its submit: the resumed parent finds no job of
  that launch, submits that same launch, and the call runs once;
- a job that ended without recording an outcome (killed while its parent was dead too): the
  resumed parent launches the call again, as launch 2, under another job name.
"""

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
import subprocess
import sys
import time
from pathlib import Path

import kitaru
from kitaru._engine import isolated as iso
from kitaru._remote_jobs import CallState

D = Path(os.environ["ISO_DIR"])
JOBS = D / "jobs"
JOBS.mkdir(exist_ok=True)


class Jobs:
    \"\"\"A platform whose jobs are local processes: a job is a file named for it, holding its
    pid. Its state: running while the pid lives; its exit code when this process started it;
    else, gone, \"failed\" (nothing says more: as a platform that forgot why a job ended).\"\"\"

    procs = {}

    def call_job_name(self, exec_id, call_id, launch=1):
        return f"job-{call_id}-{launch}"

    async def submit_call(self, exec_id, call_id, launch=1):
        from kitaru._engine.runtime import get_runtime

        name = self.call_job_name(exec_id, call_id, launch)
        if (JOBS / name).exists():
            return  # that launch's job exists already
        if os.environ.get("DIE_BEFORE_SUBMIT") and not (D / "died").exists():
            (D / "died").touch()
            os.kill(os.getpid(), 9)  # the parent dies after its launch record, before the submit
        argv = [sys.executable, "-m", "kitaru.cli", "worker", "call", exec_id, call_id]
        env = {**os.environ, "KITARU_STACK": get_runtime().stack_name}
        self.procs[name] = subprocess.Popen(argv, env=env, start_new_session=True)
        (JOBS / name).write_text(str(self.procs[name].pid))

    async def call_state(self, exec_id, call_id, launch=1):
        name = self.call_job_name(exec_id, call_id, launch)
        if not (JOBS / name).exists():
            return CallState("missing")
        proc = self.procs.get(name)
        if proc is not None:
            code = proc.poll()
            if code is None:
                return CallState("running")
            return CallState("succeeded") if code == 0 else CallState("failed", f"exit code {code}")
        if gone(int((JOBS / name).read_text())):
            return CallState("failed", "its process is gone")
        return CallState("running")


def gone(pid):
    try:
        os.kill(pid, 0)
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] == "Z"  # a zombie nobody reaped yet
    except (ProcessLookupError, FileNotFoundError):
        return True


iso._remote_orchestrator = lambda runtime: Jobs()


@kitaru.checkpoint(runtime="isolated")
def isolated(x: int) -> dict:
    with (D / "runs.txt").open("a") as fh:
        fh.write(f"{os.getpid()}\\n")
    (D / f"started-{os.getpid()}").touch()
    deadline = time.monotonic() + 120
    while not (D / "release").exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    return {"value": x * 2, "pid": os.getpid()}


@kitaru.flow
def iso_flow(x: int) -> list:
    out = isolated(x)
    return [out["value"], out["pid"]]


if __name__ == "__main__":
    import logging

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    print("result:", iso_flow.run(20, execution_id=sys.argv[1]).wait())
"""


@pytest.fixture
def setup(tmp_path: Path, subprocess_env: dict[str, str]) -> tuple[Path, Path, dict[str, str]]:
    work = tmp_path / "iso"
    work.mkdir()
    script = work / "iso_jobs.py"
    script.write_text(SCRIPT)
    return work, script, {**subprocess_env, "ISO_DIR": str(work), "KITARU_LEASE_TTL": "3"}


def _run(script: Path, env: dict[str, str], exec_id: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(script), exec_id],
        env=env,
        cwd=script.parent,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _gone(pid: int, timeout: float = 60) -> None:
    import time

    deadline = time.monotonic() + timeout
    while True:
        try:
            os.kill(pid, 0)
            with open(f"/proc/{pid}/stat") as f:
                if f.read().split(")")[-1].split()[0] == "Z":
                    return  # a zombie its new parent has not reaped yet
        except (ProcessLookupError, FileNotFoundError):
            return
        assert time.monotonic() < deadline, f"process {pid} still runs"
        time.sleep(0.05)


def _launches(env: dict[str, str], exec_id: str) -> list[str]:
    """The job names of the call's launch records, in order."""
    from kitaru._engine.isolated import LAUNCHED
    from kitaru.store import sync_view
    from kitaru.store.open import open_state_store

    store = sync_view(open_state_store(f"sqlite:///{env['KITARU_HOME']}/kitaru.db"))
    try:
        return [str((r.data or {}).get("job")) for r in store.read_journal(exec_id) if r.kind == LAUNCHED]
    finally:
        store.close()


def test_a_parent_killed_before_its_submit_submits_that_launch_on_resume(
    setup: tuple[Path, Path, dict[str, str]],
) -> None:
    work, script, env = setup
    (work / "release").touch()
    first = _run(script, {**env, "DIE_BEFORE_SUBMIT": "1"}, "iso-before-submit")
    out, err = first.communicate(timeout=120)
    assert first.returncode == -signal.SIGKILL, out + err
    assert not (work / "jobs" / "job-isolated-1").exists()  # recorded, never submitted

    resumed = _run(script, {**env, "DIE_BEFORE_SUBMIT": "1"}, "iso-before-submit")
    out, err = resumed.communicate(timeout=180)
    assert resumed.returncode == 0, out + err
    assert "its job job-isolated-1 is not there; submitting it" in err
    [child] = (work / "runs.txt").read_text().split()
    assert f"result: [40, {child}]" in out
    assert sorted(p.name for p in (work / "jobs").iterdir()) == ["job-isolated-1"]
    assert _launches(env, "iso-before-submit") == ["job-isolated-1"]  # the same launch, submitted once


def test_a_job_that_ended_without_an_outcome_is_launched_again_on_resume(
    setup: tuple[Path, Path, dict[str, str]],
) -> None:
    work, script, env = setup
    parent = _run(script, env, "iso-lost-job")
    wait_for(work / "runs.txt", parent, timeout=120)  # launch 1's job runs, held on `release`
    parent.send_signal(signal.SIGKILL)
    parent.wait(timeout=60)
    for pipe in (parent.stdout, parent.stderr):
        assert pipe is not None
        pipe.close()
    # Its job dies too, before recording anything (a lost node): the worker's process is killed.
    job = int((work / "jobs" / "job-isolated-1").read_text())
    assert int((work / "runs.txt").read_text().split()[0]) == job
    os.kill(job, signal.SIGKILL)
    _gone(job)

    (work / "release").touch()
    resumed = _run(script, env, "iso-lost-job")
    out, err = resumed.communicate(timeout=180)
    assert resumed.returncode == 0, out + err
    assert (
        "its job job-isolated-1 ended without an outcome (failed: its process is gone); launching it again"
        in err
    )
    first, second = (work / "runs.txt").read_text().split()
    assert f"result: [40, {second}]" in out
    assert first != second
    assert int((work / "jobs" / "job-isolated-2").read_text()) == int(second)
    assert _launches(env, "iso-lost-job") == ["job-isolated-1", "job-isolated-2"]
