"""The server's background role with real processes: a runner SIGKILLed mid-flow is recovered by
the server with nobody typing anything; a wait with a 5-second deadline times out on its own; two
replicas on one PostgreSQL both take answers, and each timer fires once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from tests._process import wait_for
from tests.server.conftest import FLOWS, ServerProcess, create_key, run_flow, wait_until

pytestmark = pytest.mark.e2e


def counts(env: dict[str, str]) -> Counter[str]:
    path = Path(env["COUNT_FILE"])
    return Counter(path.read_text().split()) if path.exists() else Counter()


def test_a_killed_runner_is_recovered_by_the_server(
    server: ServerProcess, keys: dict[str, str], server_env: dict[str, str]
) -> None:
    runner = subprocess.Popen([sys.executable, str(FLOWS), "slow"], env=server_env)
    mark = Path(server_env["MARK_FILE"])
    wait_for(mark, runner, timeout=120)
    # The file exists a moment before the id is written into it.
    exec_id = wait_until(lambda: mark.read_text().strip(), 30, "the execution id in the mark file")
    os.kill(runner.pid, signal.SIGKILL)  # mid-checkpoint: the lease names a process that is gone
    runner.wait(30)

    with server.client(keys["read"]) as c:
        done = wait_until(
            lambda: (v := c.get(f"/api/v1/executions/{exec_id}").json())["status"] == "completed" and v,
            120,
            "recovery by the server",
        )
    assert done["checkpoints"][0]["attempts"] == 1  # the completed checkpoint did not run again
    assert counts(server_env) == {"research": 1, "slow_step": 2}  # the killed attempt, then the rerun
    assert f"recovering execution {exec_id} (runner gone)" in server.log.read_text()


def test_a_wait_deadline_fires_on_its_own(
    server: ServerProcess, keys: dict[str, str], server_env: dict[str, str]
) -> None:
    started = time.time()
    exec_id = run_flow(server_env, "deadline", "5")
    with server.client(keys["read"]) as c:
        assert c.get(f"/api/v1/executions/{exec_id}").json()["status"] == "waiting"
        done = wait_until(
            lambda: (v := c.get(f"/api/v1/executions/{exec_id}").json())["status"] == "completed" and v,
            120,
            "the deadline",
        )
    assert time.time() - started >= 5
    assert done["waits"][0]["status"] == "timed_out"
    assert counts(server_env) == {"timed_out": 1}


def test_two_replicas_on_one_postgres(
    kitaru_cli: list[str], server_env: dict[str, str], postgres_dsn: str, tmp_path: Path
) -> None:
    env = {**server_env, "KITARU_STACK__STATE": postgres_dsn}
    key = create_key(kitaru_cli, env, postgres_dsn, "both", "answer")
    replicas = [ServerProcess(kitaru_cli, env, postgres_dsn, tmp_path / f"replica{i}.log") for i in (1, 2)]
    try:
        answered = [run_flow(env, "approve") for _ in replicas]
        timers = [run_flow(env, "deadline", "5") for _ in range(3)]
        for replica, exec_id in zip(replicas, answered, strict=True):
            with replica.client(key) as c:
                response = c.post(f"/api/v1/executions/{exec_id}/waits/approve", json={"value": True})
                assert response.status_code == 202, response.text
        with replicas[0].client(key) as c:
            for exec_id in [*answered, *timers]:
                wait_until(
                    lambda exec_id=exec_id: (
                        c.get(f"/api/v1/executions/{exec_id}").json()["status"] == "completed"
                    ),
                    120,
                    f"execution {exec_id} to complete",
                )
    finally:
        for replica in replicas:
            replica.stop()
    assert counts(env) == {"research": 2, "publish": 2, "timed_out": 3}
    logs = [r.log.read_text() for r in replicas]
    for exec_id in timers:
        fired = sum(log.count(f"recovering execution {exec_id} (wait deadline passed)") for log in logs)
        assert fired == 1, logs
    # Without --access-log the servers log their own events (above) and no line per request.
    assert not any("POST /api/v1/executions" in log for log in logs), logs
