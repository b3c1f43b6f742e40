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
import os
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests._services.ecs import EcsDouble, ecs_double
from tests._services.postgres import find_bindir
from tests._services.s3 import MotoServer, s3_server
from tests.e2e._remote_jobs import (
    Quickstart,
    RemoteStack,
    assert_each_checkpoint_completed_once,
    assert_only_the_killed_step_ran_twice,
    import_test_flows,
    write_config,
)

__all__ = ["ecs_double", "s3_server"]

pytestmark = pytest.mark.e2e

_clusters = itertools.count(1)


@dataclass
class Ecs(RemoteStack):
    """An aws stack running its flows on the ECS double, and what a test needs around it."""

    double: EcsDouble
    cluster: str

    def wait_for(self, probe: Callable[[], Any], timeout: float, what: str) -> Any:
        return self.double.wait_for(probe, timeout, what)

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
    config = write_config(tmp_path, "ecs", keys, monkeypatch)
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
    return import_test_flows(monkeypatch)


def test_the_quickstart_runs_as_ecs_tasks_and_its_wait_holds_no_task(ecs: Ecs) -> None:
    with Quickstart(ecs) as quickstart:
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
        quickstart.still_waiting()

        # The answer, from another directory, starts a new task that completes the flow.
        quickstart.answer(exec_id)
        tasks = ecs.double.wait_for(
            lambda: len(ecs.tasks(exec_id)) == 2 and ecs.tasks(exec_id), 30, "a 2nd task"
        )
        ecs.status_becomes(exec_id, "completed")
        assert ecs.stopped(tasks[1]["taskArn"])["containers"][0]["exitCode"] == 0
        # Both runs used the one task definition registered from the stack's keys.
        assert tasks[0]["taskDefinitionArn"] == tasks[1]["taskDefinitionArn"]

        quickstart.ends()

    journal = ecs.journal(exec_id)
    assert_each_checkpoint_completed_once(journal)
    started = Counter(r.call_id for r in journal if r.kind == "checkpoint_started")
    assert all(n == 1 for n in started.values()), started
    assert len(ecs.tasks(exec_id)) == 2  # one task per run: nothing was retried

    from kitaru._engine.handles import blocking
    from kitaru.stack import load_stack

    described = blocking(load_stack("ecs").orchestrator().describe, exec_id)
    assert described.count("STOPPED (done: stop code EssentialContainerExited, exit code 0") == 2, described

    quickstart.report(journal, "the new ECS task", "the task started", "new task")


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
    assert_only_the_killed_step_ran_twice(counted)
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


def test_an_isolated_call_is_an_ecs_task_of_its_own_and_its_value_reaches_the_flow(
    ecs: Ecs, k8s_flows: Any
) -> None:
    """``@checkpoint(runtime="isolated")`` on an aws stack: the parent's task starts the call as a
    task of its own (the same task definition and environment, `kitaru worker call`, tagged with
    the call), and the value that task's process returned is what the flow gets."""
    (ecs.marks / "release").write_text("1")  # the call does not hold this time
    handle = k8s_flows.isolated.run(str(ecs.counts), str(ecs.marks))
    result = handle.wait(timeout=180)
    tasks = ecs.tasks(handle.exec_id)
    [call] = [t for t in tasks if tag(t, "kitaru:call") == "own_job"]
    [parent] = [t for t in tasks if tag(t, "kitaru:call") is None]
    assert tag(call, "kitaru:launch") == "1" and tag(call, "team") == "agents"
    [override] = call["overrides"]["containerOverrides"]
    assert override["command"][-4:] == ["worker", "call", handle.exec_id, "own_job"]
    assert call["taskDefinitionArn"] == parent["taskDefinitionArn"]
    env = {e["name"]: e["value"] for e in override["environment"]}
    [parent_override] = parent["overrides"]["containerOverrides"]
    assert {e["name"]: e["value"] for e in parent_override["environment"]} == {
        k: v for k, v in env.items() if k != "KITARU_CALL_LAUNCH"
    }
    assert ecs.stopped(call["taskArn"])["containers"][0]["exitCode"] == 0
    assert result["pid"] == ecs.double.processes[call["taskArn"]].pid  # the value came from that task
    assert result["parent_pid"] == ecs.double.processes[parent["taskArn"]].pid
    assert ecs.counted() == {"own_job": 1}
