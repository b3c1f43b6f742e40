"""ECS for tests: moto's ECS API in this process (``ThreadedMotoServer``), plus a small "agent"
that does what ECS's container agent would: it runs each task's container command (the override's,
else the task definition's) as a local process with the task's environment, and when the process
exits marks the task ``STOPPED`` with the container's exit code, as ``DescribeTasks`` reports it.

moto serves the control plane but runs no containers, and by default moves every task one step
towards STOPPED per DescribeTasks (a naive poller would see a "success" after four polls): the
agent freezes that progression and owns the task's state instead (notes/cloud-jobs-wire.md §1.3-1.4).
``StopTask`` sends the process SIGTERM (then SIGKILL after ``stop_timeout``), as ECS does.

Test hooks: :meth:`EcsDouble.kill` (SIGKILL the task's process: a crash or OOM kill, exit 137),
:meth:`EcsDouble.interrupt` (a Spot interruption: stop code ``SpotInterruption``), and
:meth:`EcsDouble.fail_next_start` (the next task never starts: ``TaskFailedToStart``).
"""

from __future__ import annotations

import datetime
import os
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests._services import missing
from tests._services.s3 import INSTALL, moto_installed

__all__ = ["ACCOUNT", "REGION", "EcsDouble", "ecs_double"]

ACCOUNT = "123456789012"  # moto's default account: any fake keys map to it
REGION = "us-east-1"


class EcsDouble:
    """moto's ECS (and EC2, for the awsvpc subnets) on a free port of 127.0.0.1, with the agent.

    ``base_env`` is every task process's environment before the task's own (PATH, credentials a
    task role would give...)."""

    def __init__(self, workdir: Path, base_env: dict[str, str], stop_timeout: float = 10.0) -> None:
        self.workdir = workdir
        self.base_env = dict(base_env)
        self.stop_timeout = stop_timeout
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.logs: dict[str, Path] = {}
        self.started: list[str] = []  # task ARNs in RunTask order
        self._fail_next: tuple[int, str] = (0, "")
        self._lock = threading.Lock()
        self._server: Any = None
        self._patched: dict[str, Any] = {}

    # -- life ---------------------------------------------------------------------------------

    def start(self) -> EcsDouble:
        from moto.ecs import models
        from moto.moto_api import state_manager
        from moto.server import ThreadedMotoServer

        # The agent owns task state: freeze moto's own progression towards STOPPED.
        state_manager.set_transition("ecs::task", {"progression": "manual", "times": 10**9})
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self._server.start()
        host, port = self._server.get_host_and_port()
        self.endpoint_url = f"http://{host}:{port}"
        backend_cls = models.EC2ContainerServiceBackend
        original_run, original_stop = backend_cls.run_task, backend_cls.stop_task
        self._patched = {"run_task": original_run, "stop_task": original_stop}
        double = self

        def run_task(backend: Any, *args: Any, **kwargs: Any) -> list[Any]:
            tasks: list[Any] = original_run(backend, *args, **kwargs)
            for task in tasks:
                double._launch(backend, task)
            return tasks

        def stop_task(backend: Any, cluster_str: str, task_str: str, reason: str) -> Any:
            task = original_stop(backend, cluster_str, task_str, reason)
            task.stop_code = "UserInitiated"
            double._terminate(task.task_arn)
            return task

        backend_cls.run_task = run_task  # type: ignore[method-assign]
        backend_cls.stop_task = stop_task  # type: ignore[method-assign]
        return self

    def stop(self) -> None:
        from moto.ecs import models
        from moto.moto_api import state_manager

        for proc in list(self.processes.values()):
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        for name, original in self._patched.items():
            setattr(models.EC2ContainerServiceBackend, name, original)
        if self._server is not None:
            self._server.stop()
            self._server = None
        state_manager.unset_transition("ecs::task")

    # -- what a test sets up --------------------------------------------------------------------

    def client(self, service: str) -> Any:
        import boto3

        return boto3.client(
            service,
            region_name=REGION,
            endpoint_url=self.endpoint_url,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )

    def default_subnets(self) -> list[str]:
        """The default VPC's subnets (their VPC has DNS hostnames on, which moto's awsvpc needs)."""
        reply = self.client("ec2").describe_subnets(Filters=[{"Name": "default-for-az", "Values": ["true"]}])
        return [s["SubnetId"] for s in reply["Subnets"]]

    def backend(self) -> Any:
        from moto.backends import get_backend

        return get_backend("ecs")[ACCOUNT][REGION]

    def task(self, arn: str) -> Any:
        for tasks in self.backend().tasks.values():
            if arn in tasks:
                return tasks[arn]
        raise KeyError(arn)

    def describe(self, cluster: str, arns: list[str]) -> list[dict[str, Any]]:
        if not arns:
            return []
        reply = self.client("ecs").describe_tasks(cluster=cluster, tasks=arns, include=["TAGS"])
        return list(reply["tasks"])

    def wait_for(self, predicate: Callable[[], Any], timeout: float, what: str) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"{what} did not happen within {timeout} s")
            time.sleep(0.05)

    def alive(self) -> list[str]:
        """ARNs of tasks whose process runs."""
        return [arn for arn, proc in self.processes.items() if proc.poll() is None]

    # -- hooks ----------------------------------------------------------------------------------

    def kill(self, arn: str) -> None:
        """SIGKILL the task's process (a crash, an OOM kill): the task stops with exit 137."""
        self.processes[arn].kill()

    def interrupt(self, arn: str) -> None:
        """A Spot interruption: ECS stops the task (SIGTERM, then SIGKILL)."""
        task = self.task(arn)
        task.stop_code = "SpotInterruption"
        task.stopped_reason = "Your Spot Task was interrupted."
        self.processes[arn].kill()

    def fail_next_start(
        self, count: int = 1, reason: str = "CannotPullContainerError: pull access denied"
    ) -> None:
        """The next ``count`` tasks never start: STOPPED at once, stop code TaskFailedToStart, no
        exit code."""
        self._fail_next = (count, reason)

    # -- the agent ------------------------------------------------------------------------------

    def _launch(self, backend: Any, task: Any) -> None:
        arn = task.task_arn
        self.started.append(arn)
        definition = backend.describe_task_definition(task.task_definition_arn)
        container_def = definition.container_definitions[0]
        name = container_def["name"]
        command = list(container_def.get("command") or [])
        env = {**self.base_env, **{e["name"]: e["value"] for e in container_def.get("environment") or []}}
        for override in (task.overrides or {}).get("containerOverrides") or []:
            if override.get("name") == name:
                command = list(override.get("command") or command)
                env.update({e["name"]: e["value"] for e in override.get("environment") or []})
        task.containers[0].exitCode = None  # moto says 0 while running: nothing exited yet
        task.containers[0].last_status = "RUNNING"
        task.started_at = datetime.datetime.now(datetime.UTC)
        left, reason = self._fail_next
        if left > 0:
            self._fail_next = (left - 1, reason)
            self._stopped(task, None, "TaskFailedToStart", reason)
            return
        taskdir = self.workdir / task.id
        taskdir.mkdir(parents=True)
        log = taskdir / "log.txt"
        self.logs[arn] = log
        with open(log, "wb") as out:
            proc = subprocess.Popen(command, env=env, cwd=taskdir, stdout=out, stderr=subprocess.STDOUT)
        self.processes[arn] = proc
        threading.Thread(
            target=self._watch, args=(task, proc), daemon=True, name=f"ecs-agent-{task.id}"
        ).start()

    def _watch(self, task: Any, proc: subprocess.Popen[bytes]) -> None:
        code = proc.wait()
        exit_code = 128 - code if code < 0 else code  # -9 (SIGKILL) as a container reports it: 137
        self._stopped(task, exit_code, None, "Essential container in task exited")

    def _stopped(self, task: Any, exit_code: int | None, stop_code: str | None, reason: str) -> None:
        with self._lock:
            # A stop code set before the process ended (StopTask, Spot) says why it ended.
            task.stop_code = getattr(task, "stop_code", None) or stop_code or "EssentialContainerExited"
            task.stopped_reason = task.stopped_reason or reason
            task.stopped_at = datetime.datetime.now(datetime.UTC)
            container = task.containers[0]
            container.exitCode = exit_code
            container.reason = reason if exit_code is None else None
            container.last_status = "STOPPED"
            task.desired_status = "STOPPED"
            task.last_status = "STOPPED"

    def _terminate(self, arn: str) -> None:
        proc = self.processes.get(arn)
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)

        def escalate() -> None:
            try:
                proc.wait(self.stop_timeout)
            except subprocess.TimeoutExpired:
                proc.kill()

        threading.Thread(target=escalate, daemon=True).start()


@pytest.fixture
def ecs_double(tmp_path: Path) -> Iterator[EcsDouble]:
    """A fresh ECS double (moto in this process, with the agent), stopped after the test."""
    if not moto_installed():
        missing("moto[server] (the ECS API double)", INSTALL)
    workdir = Path(tempfile.mkdtemp(prefix="ecs-", dir=tmp_path))
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        # What a task role would give the task's SDKs.
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": REGION,
    }
    double = EcsDouble(workdir, env).start()
    try:
        yield double
    finally:
        double.stop()
