"""Flows run as ECS tasks, end to end with real processes: moto's ECS API in this process with the
agent of tests/_services/ecs.py (it runs each task's overridden command as a local process and
reports its exit code through DescribeTasks), PostgreSQL for state and moto S3 for artifacts and
code archives. The tasks run ``kitaru worker run <exec_id>`` from this checkout's environment (the
stack's ``worker_command``; the double ignores images).

ECS has no job-level retry: a task that dies is retried by whoever next observes the execution
(the server's recovery loop; here `kitaru executions recover`, as cron would run it). Checkpoint
runs are counted outside kitaru by the flows of flows/k8s_flows.py."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from kitaru.store import sync_view
from kitaru.store.open import open_state_store
from tests._services.ecs import EcsDouble, ecs_double
from tests._services.postgres import find_bindir
from tests._services.s3 import MotoServer, s3_server

__all__ = ["ecs_double", "s3_server"]

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
FLOWS = Path(__file__).parent / "flows"
_clusters = itertools.count(1)


def _toml(value: Any) -> str:
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{json.dumps(k)} = {_toml(v)}" for k, v in value.items()) + " }"
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    return json.dumps(str(value))


@dataclass
class Ecs:
    """An aws stack running its flows on the ECS double, and what a test needs around it."""

    double: EcsDouble
    cluster: str
    state: str
    env: dict[str, str]
    counts: Path
    marks: Path
    cli: list[str]
    tmp: Path

    def run_cli(
        self, *args: str, cwd: Path | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [*self.cli, *args], env=self.env, cwd=cwd or self.tmp, capture_output=True, text=True, timeout=120
        )
        if check:
            assert done.returncode == 0, (
                f"kitaru {' '.join(args)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
            )
        return done

    def counted(self) -> Counter[str]:
        return Counter(self.counts.read_text().splitlines()) if self.counts.exists() else Counter()

    def execution(self, exec_id: str) -> Any:
        store = sync_view(open_state_store(self.state))
        try:
            return store.get_execution(exec_id)
        finally:
            store.close()

    def journal(self, exec_id: str) -> list[Any]:
        store = sync_view(open_state_store(self.state))
        try:
            return list(store.read_journal(exec_id))
        finally:
            store.close()

    def status_becomes(self, exec_id: str, *statuses: str, timeout: float = 90) -> Any:
        return self.double.wait_for(
            lambda: (r := self.execution(exec_id)) is not None and r.status in statuses and r,
            timeout,
            f"execution {exec_id} becoming {'/'.join(statuses)}",
        )

    def tasks(self, exec_id: str | None = None) -> list[dict[str, Any]]:
        """The tasks started (of one execution), in RunTask order, as DescribeTasks reports them."""
        tasks = self.double.describe(self.cluster, list(self.double.started))
        if exec_id is not None:
            tasks = [t for t in tasks if tag(t, "kitaru:execution") == exec_id]
        return tasks

    def stopped(self, arn: str, timeout: float = 90) -> dict[str, Any]:
        return self.double.wait_for(
            lambda: (t := self.double.describe(self.cluster, [arn])[0])["lastStatus"] == "STOPPED" and t,
            timeout,
            f"task {arn} stopping",
        )

    def recover_until_new_task(self, exec_id: str, known: int, timeout: float = 90) -> list[dict[str, Any]]:
        """Run `kitaru executions recover` (as cron or the server would) until it starts a task
        beyond the ``known`` ones: the dead runner's lease must expire first."""

        def attempt() -> list[dict[str, Any]] | None:
            if len(self.tasks(exec_id)) > known:
                return self.tasks(exec_id)
            self.run_cli("executions", "recover")
            tasks = self.tasks(exec_id)
            return tasks if len(tasks) > known else None

        found: list[dict[str, Any]] = self.double.wait_for(attempt, timeout, f"a task beyond {known}")
        return found


def tag(task: dict[str, Any], key: str) -> str | None:
    return next((t["value"] for t in task.get("tags") or [] if t["key"] == key), None)


@pytest.fixture
def ecs(
    ecs_double: EcsDouble,
    s3_server: MotoServer,
    request: pytest.FixtureRequest,
    tmp_path: Path,
    subprocess_env: dict[str, str],
    kitaru_cli: list[str],
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Ecs]:
    if find_bindir() is None:
        pytest.skip("PostgreSQL server binaries are needed (apt-get install postgresql)")
    state = request.getfixturevalue("postgres_dsn")
    artifacts = f"s3://{s3_server.create_bucket()}/kitaru"
    cluster = f"kitaru-{os.getpid()}-{next(_clusters)}"
    ecs_double.client("ecs").create_cluster(clusterName=cluster)
    # The task's process: this checkout importable, as an image would have it installed.
    ecs_double.base_env["PYTHONPATH"] = subprocess_env["PYTHONPATH"]
    keys: dict[str, Any] = {
        "type": "aws",
        "state": state,
        "artifacts": artifacts,
        **s3_server.options(),
        "cluster": cluster,
        "ecs_endpoint_url": ecs_double.endpoint_url,
        "image": "kitaru-worker:test",
        "subnets": ecs_double.default_subnets()[:1],
        "security_groups": ["sg-kitaru-test"],
        "execution_role_arn": "arn:aws:iam::123456789012:role/kitaru-execution",
        "task_role_arn": "arn:aws:iam::123456789012:role/kitaru-task",
        # Test-only: the agent runs commands on this machine, so the worker is this checkout's.
        "worker_command": [sys.executable, "-m", "kitaru.cli"],
        "env": {"KITARU_HOME": str(tmp_path / "task-home"), "PYTHONUNBUFFERED": "1", "KITARU_LEASE_TTL": "6"},
        "tags": {"team": "agents"},
        "max_retries": 2,
    }
    config = tmp_path / "config.toml"
    body = "\n".join(f"{k} = {_toml(v)}" for k, v in keys.items())
    config.write_text(f'active_stack = "ecs"\n\n[stacks.ecs]\n{body}\n')
    monkeypatch.setenv("KITARU_CONFIG", str(config))
    marks = tmp_path / "marks"
    marks.mkdir()
    yield Ecs(
        double=ecs_double,
        cluster=cluster,
        state=state,
        env={**subprocess_env, "KITARU_CONFIG": str(config)},
        counts=tmp_path / "counts.txt",
        marks=marks,
        cli=kitaru_cli,
        tmp=tmp_path,
    )


@pytest.fixture
def k8s_flows(monkeypatch: pytest.MonkeyPatch) -> Any:
    """The test flows (shared with the Kubernetes e2e), imported as a top-level module of flows/
    so their source root, the code archive, is that small directory."""
    monkeypatch.syspath_prepend(str(FLOWS))
    import k8s_flows

    return k8s_flows


def test_the_quickstart_runs_as_ecs_tasks_and_its_wait_holds_no_task(ecs: Ecs) -> None:
    elsewhere = ecs.tmp / "elsewhere"
    elsewhere.mkdir()
    quickstart = subprocess.Popen(
        [sys.executable, str(ROOT / "examples" / "quickstart.py"), "durable agents"],
        env=ecs.env,
        cwd=ecs.tmp,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        [first] = ecs.double.wait_for(lambda: ecs.tasks(), 90, "a task")
        exec_id = tag(first, "kitaru:execution")
        assert exec_id
        assert tag(first, "kitaru:flow") == "review_flow"
        assert tag(first, "team") == "agents"
        assert first["launchType"] == "FARGATE"
        [override] = first["overrides"]["containerOverrides"]
        assert override["name"] == "worker"
        assert override["command"][-3:] == ["worker", "run", exec_id]
        env = {e["name"]: e["value"] for e in override["environment"]}
        assert env["KITARU_STACK"] == "ecs" and env["KITARU_STACK__TYPE"] == "aws"
        # Credentials stay out of overrides (anyone who may DescribeTasks reads them): the task's
        # role supplies them.
        assert not any("SECRET" in name or "ACCESS_KEY" in name for name in env)
        definition = ecs.double.client("ecs").describe_task_definition(
            taskDefinition=first["taskDefinitionArn"]
        )
        registered = definition["taskDefinition"]
        assert registered["containerDefinitions"][0]["image"] == "kitaru-worker:test"
        assert registered["executionRoleArn"].endswith("role/kitaru-execution")
        assert registered["taskRoleArn"].endswith("role/kitaru-task")
        assert registered["requiresCompatibilities"] == ["FARGATE"]

        # It waits, and no task is alive: the task exited 0 when the execution suspended.
        ecs.status_becomes(exec_id, "waiting")
        stopped = ecs.stopped(first["taskArn"])
        assert stopped["containers"][0]["exitCode"] == 0
        assert stopped["stopCode"] == "EssentialContainerExited"
        ecs.double.wait_for(lambda: not ecs.double.alive(), 30, "no task alive")
        assert quickstart.poll() in (None, 0)

        # The answer, from another directory, starts a new task that completes the flow.
        before_input = time.time()
        ecs.run_cli("executions", "input", exec_id, "--value", "true", cwd=elsewhere)
        input_returned = time.time()
        tasks = ecs.double.wait_for(
            lambda: len(ecs.tasks(exec_id)) == 2 and ecs.tasks(exec_id), 30, "a 2nd task"
        )
        ecs.status_becomes(exec_id, "completed")
        assert ecs.stopped(tasks[1]["taskArn"])["containers"][0]["exitCode"] == 0
        # Both runs used the one task definition registered from the stack's keys.
        assert tasks[0]["taskDefinitionArn"] == tasks[1]["taskDefinitionArn"]

        out, err = quickstart.communicate(timeout=90)
        assert quickstart.returncode == 0, err
        assert "published" in out or "is waiting for approval" in out
    finally:
        if quickstart.poll() is None:
            quickstart.kill()
            quickstart.communicate()

    journal = ecs.journal(exec_id)
    completed = Counter(r.call_id for r in journal if r.kind == "checkpoint_completed")
    assert completed == {"research": 1, "draft": 1, "publish": 1}
    started = Counter(r.call_id for r in journal if r.kind == "checkpoint_started")
    assert all(n == 1 for n in started.values()), started
    assert len(ecs.tasks(exec_id)) == 2  # one task per run: nothing was retried

    from kitaru._engine.handles import blocking
    from kitaru.stack import load_stack

    described = blocking(load_stack("ecs").orchestrator().describe, exec_id)
    assert described.count("STOPPED (done: stop code EssentialContainerExited, exit code 0") == 2, described

    answered = next(r.ts for r in journal if r.kind == "wait_answered")
    resumed = min(r.ts for r in journal if r.ts > answered and r.kind != "wait_answered")
    print(
        f"\nanswer -> the flow running again in the new ECS task: {resumed - answered:.2f} s "
        f"(the input command: {input_returned - before_input:.2f} s, of which the answer was "
        f"recorded after {answered - before_input:.2f} s and the task started by "
        f"{input_returned - answered:.2f} s after it; then {resumed - input_returned:.2f} s to the "
        "new task's first journal write, including its process start)"
    )


def test_a_flow_with_its_own_image_runs_on_a_task_definition_with_that_image(
    ecs: Ecs, k8s_flows: Any
) -> None:
    def definition(task: dict[str, Any]) -> dict[str, Any]:
        found = ecs.double.client("ecs").describe_task_definition(taskDefinition=task["taskDefinitionArn"])
        registered: dict[str, Any] = found["taskDefinition"]
        return registered

    handle = k8s_flows.own_image.run(str(ecs.counts))
    assert handle.wait(timeout=120) == "ok"
    [own] = ecs.tasks(handle.exec_id)
    assert definition(own)["containerDefinitions"][0]["image"] == k8s_flows.OWN_IMAGE == "kitaru-worker:own"
    # The stack's other flows keep the stack's image, on the definition registered for it.
    (ecs.marks / "go").write_text("1")
    plain = k8s_flows.eight.run(str(ecs.counts), str(ecs.marks))
    assert plain.wait(timeout=120) == sum(range(1, 9))
    [task] = ecs.tasks(plain.exec_id)
    assert definition(task)["containerDefinitions"][0]["image"] == "kitaru-worker:test"
    assert task["taskDefinitionArn"] != own["taskDefinitionArn"]


def test_a_task_killed_mid_checkpoint_is_retried_by_recovery_and_resumes(ecs: Ecs, k8s_flows: Any) -> None:
    from tests._process import wait_for

    handle = k8s_flows.eight.run(str(ecs.counts), str(ecs.marks))
    wait_for(ecs.marks / "slow", timeout=90)
    [task] = ecs.tasks(handle.exec_id)
    ecs.double.kill(task["taskArn"])  # SIGKILL in the middle of checkpoint 5 of 8
    killed = ecs.stopped(task["taskArn"])
    assert killed["containers"][0]["exitCode"] == 137
    (ecs.marks / "go").write_text("1")
    _, second = ecs.recover_until_new_task(handle.exec_id, 1)
    assert tag(second, "kitaru:attempt") == "1"
    assert handle.wait(timeout=120) == sum(range(1, 9))
    assert ecs.stopped(second["taskArn"])["containers"][0]["exitCode"] == 0
    counted = ecs.counted()
    assert {i: counted[f"step {i}"] for i in range(1, 9)} == {1: 1, 2: 1, 3: 1, 4: 1, 5: 2, 6: 1, 7: 1, 8: 1}
    # A completed execution is not submitted again.
    ecs.run_cli("executions", "recover")
    assert len(ecs.tasks(handle.exec_id)) == 2


def test_a_spot_interruption_is_retried_and_resumes(ecs: Ecs, k8s_flows: Any) -> None:
    from tests._process import wait_for

    handle = k8s_flows.eight.run(str(ecs.counts), str(ecs.marks))
    wait_for(ecs.marks / "slow", timeout=90)
    [task] = ecs.tasks(handle.exec_id)
    ecs.double.interrupt(task["taskArn"])
    assert ecs.stopped(task["taskArn"])["stopCode"] == "SpotInterruption"
    (ecs.marks / "go").write_text("1")
    _, second = ecs.recover_until_new_task(handle.exec_id, 1)
    assert tag(second, "kitaru:attempt") == "1"
    assert handle.wait(timeout=120) == sum(range(1, 9))
    counted = ecs.counted()
    assert {i: counted[f"step {i}"] for i in (1, 2, 3, 4, 6, 7, 8)} == dict.fromkeys((1, 2, 3, 4, 6, 7, 8), 1)


def test_tasks_that_fail_to_start_are_retried_up_to_max_retries_then_the_execution_fails(
    ecs: Ecs, k8s_flows: Any
) -> None:
    (ecs.marks / "go").write_text("1")
    ecs.double.fail_next_start(3)  # the first run and both retries (max_retries = 2)
    handle = k8s_flows.eight.run(str(ecs.counts), str(ecs.marks))
    [first] = ecs.tasks(handle.exec_id)
    assert ecs.stopped(first["taskArn"])["stopCode"] == "TaskFailedToStart"
    tasks = ecs.recover_until_new_task(handle.exec_id, 1)
    ecs.stopped(tasks[1]["taskArn"])
    tasks = ecs.recover_until_new_task(handle.exec_id, 2)
    assert [tag(t, "kitaru:attempt") for t in tasks] == ["0", "1", "2"]
    ecs.stopped(tasks[2]["taskArn"])
    # The next observer finds the retries spent: the execution fails, naming why.
    recovered = ecs.run_cli("executions", "recover")
    record = ecs.status_becomes(handle.exec_id, "failed", timeout=30)
    assert "TaskFailedToStart" in record.error and "max_retries = 2" in record.error, record.error
    assert "CannotPullContainerError" in record.error
    assert len(ecs.tasks(handle.exec_id)) == 3, recovered.stdout
    assert ecs.counted() == Counter()
    # Once the cause is fixed, `retry` starts counting again and the flow runs.
    # (The CLI reports the status it sees at once, still "failed" until the task takes the lease;
    # on a remote stack that makes it exit 1 though the task was started: checked below instead.)
    ecs.run_cli("executions", "retry", handle.exec_id, check=False)
    ecs.status_becomes(handle.exec_id, "completed")
    assert handle.wait(timeout=120) == sum(range(1, 9))
    assert tag(ecs.tasks(handle.exec_id)[3], "kitaru:attempt") == "0"


def test_a_failing_flow_is_marked_failed_and_not_retried(ecs: Ecs, k8s_flows: Any) -> None:
    from kitaru.errors import KitaruExecutionError

    handle = k8s_flows.boom.run(str(ecs.counts))
    with pytest.raises(KitaruExecutionError, match="the flow itself is broken"):
        handle.wait(timeout=120)
    [task] = ecs.tasks(handle.exec_id)
    assert ecs.stopped(task["taskArn"])["containers"][0]["exitCode"] == 10
    ecs.run_cli("executions", "recover")
    assert len(ecs.tasks(handle.exec_id)) == 1
    assert ecs.counted() == {"before": 1}


def test_cancel_stops_the_task_and_the_execution_stays_cancelled(ecs: Ecs, k8s_flows: Any) -> None:
    from tests._process import wait_for

    handle = k8s_flows.sleepy.run(str(ecs.counts), str(ecs.marks))
    wait_for(ecs.marks / "started", timeout=90)
    [task] = ecs.tasks(handle.exec_id)
    ecs.run_cli("executions", "cancel", handle.exec_id)
    assert ecs.execution(handle.exec_id).status == "cancelled"
    stopped = ecs.stopped(task["taskArn"], timeout=30)
    assert stopped["stopCode"] == "UserInitiated"
    assert "cancelled" in stopped["stoppedReason"]
    ecs.double.wait_for(lambda: not ecs.double.alive(), 60, "its process gone")
    ecs.run_cli("executions", "recover")
    assert ecs.execution(handle.exec_id).status == "cancelled"
    assert len(ecs.tasks(handle.exec_id)) == 1
    assert ecs.counted() == {"slow": 1}


def test_an_aws_stack_with_a_cluster_refuses_what_tasks_cannot_use(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kitaru_home: Path
) -> None:
    from kitaru_stack_aws._ecs import EcsOrchestrator

    from kitaru.errors import KitaruConfigError
    from kitaru.stack import load_stack

    config = tmp_path / "config.toml"
    config.write_text(
        f'[stacks.a]\ntype = "aws"\ncluster = "c"\nsubnets = ["s"]\nstate = "sqlite:///{tmp_path}/k.db"\n'
        'artifacts = "s3://b/p"\n'
        '[stacks.b]\ntype = "aws"\ncluster = "c"\nstate = "postgresql://u@h/db"\nartifacts = "s3://b/p"\n'
        '[stacks.c]\ntype = "aws"\ncluster = "c"\nsubnets = ["s"]\nstate = "postgresql://u@h/db"\n'
        'artifacts = "s3://b/p"\n'
        '[stacks.d]\ntype = "aws"\nstate = "postgresql://u@h/db"\nartifacts = "s3://b/p"\n'
    )
    monkeypatch.setenv("KITARU_CONFIG", str(config))
    with pytest.raises(KitaruConfigError, match=r"SQLite.*cannot reach.*postgresql://"):
        load_stack("a").orchestrator()
    with pytest.raises(KitaruConfigError, match=r"`subnets = "):
        load_stack("b").orchestrator()
    orchestrator = load_stack("c").orchestrator()
    assert isinstance(orchestrator, EcsOrchestrator)
    with pytest.raises(KitaruConfigError, match=r"neither `task_definition` nor `image`"):
        orchestrator.task_definition_body()
    # Without a cluster the aws stack runs flows in the calling process, as before.
    assert not isinstance(load_stack("d").orchestrator(), EcsOrchestrator)


def test_a_missing_cluster_is_an_error_naming_the_key_and_ecs_message(ecs: Ecs, k8s_flows: Any) -> None:
    from kitaru.errors import KitaruConfigError

    with pytest.raises(KitaruConfigError, match=r"ClusterNotFoundException.*`cluster` key"):
        _run_on(ecs, k8s_flows, cluster="no-such-cluster")


def _run_on(ecs: Ecs, k8s_flows: Any, **keys: Any) -> None:
    from kitaru._engine.handles import blocking
    from kitaru.stack import load_stack

    stack = load_stack("ecs", **keys)
    orchestrator = stack.orchestrator()
    handle = k8s_flows.asks.run(str(ecs.counts), stack="ecs")  # created on the good cluster
    ecs.status_becomes(handle.exec_id, "waiting")
    ecs.run_cli("executions", "input", handle.exec_id, "--value", "true", "--no-resume")
    blocking(orchestrator.submit, handle.exec_id)
