"""``kitaru worker run <exec_id>``, the command every remote job runs: its exit codes tell the
platform whether another attempt can help (kitaru/worker.py). Real processes on a local stack;
the Kubernetes side (the pod failure policy keyed on these codes) is in test_kubernetes.py."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from kitaru.worker import EXIT_CANNOT_RUN, EXIT_DONE, EXIT_FLOW_FAILED, EXIT_RETRY
from tests._process import wait_for

pytestmark = pytest.mark.e2e

SCRIPT = """
import sys, time
from pathlib import Path
import kitaru
from kitaru import checkpoint, flow

@flow
def waits() -> bool:
    return kitaru.wait(name="go", schema=bool)

@flow
def fails() -> None:
    raise ValueError("broken on purpose")

@checkpoint
def hold(mark: str) -> None:
    Path(mark).write_text("held")
    time.sleep(60)

@flow
def holds(mark: str) -> None:
    hold(mark)

if __name__ == "__main__":
    name = sys.argv[1]
    handle = {"waits": waits, "fails": fails, "holds": holds}[name].run(*sys.argv[2:])
    print(handle.exec_id, handle.status, flush=True)
"""


@pytest.fixture
def script(tmp_path: Path) -> Path:
    path = tmp_path / "project" / "worker_flows.py"
    path.parent.mkdir()
    path.write_text(SCRIPT)
    return path


def _start(script: Path, env: dict[str, str], *args: str) -> tuple[str, str]:
    done = subprocess.run(
        [sys.executable, str(script), *args], env=env, capture_output=True, text=True, timeout=120
    )
    exec_id, status = done.stdout.split()[-2:] if done.stdout.strip() else ("", done.stderr)
    return exec_id, status


def _worker(cli: list[str], env: dict[str, str], exec_id: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*cli, "worker", "run", exec_id], env=env, cwd=cwd, capture_output=True, text=True, timeout=120
    )


def test_waiting_and_completed_exit_0_and_a_failed_flow_exits_10(
    script: Path, subprocess_env: dict[str, str], kitaru_cli: list[str], tmp_path: Path
) -> None:
    exec_id, status = _start(script, subprocess_env, "waits")
    assert status == "waiting"
    # Driven again with no answer: it suspends again, which is not a failure.
    done = _worker(kitaru_cli, subprocess_env, exec_id, tmp_path)
    assert done.returncode == EXIT_DONE, done.stderr
    assert f"execution {exec_id} is waiting" in done.stderr
    subprocess.run(
        [*kitaru_cli, "executions", "input", exec_id, "--value", "true", "--no-resume"],
        env=subprocess_env,
        check=True,
        capture_output=True,
        timeout=120,
    )
    done = _worker(kitaru_cli, subprocess_env, exec_id, tmp_path)
    assert done.returncode == EXIT_DONE, done.stderr
    assert f"execution {exec_id} is completed" in done.stderr
    # Once finished, a late attempt of the same job has nothing to do.
    assert _worker(kitaru_cli, subprocess_env, exec_id, tmp_path).returncode == EXIT_DONE

    exec_id, status = _start(script, subprocess_env, "fails")
    assert status == "failed"
    done = _worker(kitaru_cli, subprocess_env, exec_id, tmp_path)
    assert done.returncode == EXIT_FLOW_FAILED, done.stderr
    assert "broken on purpose" in done.stderr


def test_an_unknown_execution_cannot_run_and_an_unreachable_store_is_worth_retrying(
    subprocess_env: dict[str, str], kitaru_cli: list[str], tmp_path: Path
) -> None:
    done = _worker(kitaru_cli, subprocess_env, "01NOSUCHEXECUTION000000000", tmp_path)
    assert done.returncode == EXIT_CANNOT_RUN, done.stderr
    assert "no execution" in done.stderr
    # The stack as a Job's pod gets it: from the environment alone; its database is down.
    env = {
        **subprocess_env,
        "KITARU_STACK": "pod",
        "KITARU_STACK__TYPE": "local",
        "KITARU_STACK__STATE": "postgresql://kitaru@127.0.0.1:9/kitaru?connect_timeout=5",
    }
    done = _worker(kitaru_cli, env, "01NOSUCHEXECUTION000000000", tmp_path)
    assert done.returncode == EXIT_RETRY, (done.returncode, done.stderr)


def test_a_lease_held_by_a_live_runner_is_worth_retrying(
    script: Path, subprocess_env: dict[str, str], kitaru_cli: list[str], tmp_path: Path
) -> None:
    env = {**subprocess_env, "KITARU_LEASE_TTL": "3"}
    mark = tmp_path / "held"
    holder = subprocess.Popen(
        [sys.executable, str(script), "holds", str(mark)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(mark, holder, timeout=90)
        from kitaru.client import KitaruClient

        [execution] = KitaruClient().executions.list(flow="holds")
        done = _worker(kitaru_cli, env, execution.id, tmp_path)
        assert done.returncode == EXIT_RETRY, done.stderr
        assert "being driven by" in done.stderr
    finally:
        holder.kill()
        holder.communicate(timeout=30)
