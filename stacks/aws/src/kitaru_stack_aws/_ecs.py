"""The ECS orchestrator: one ECS task per execution run (``RunTask``, Fargate or EC2), each running
``kitaru worker run <exec_id>`` (see :mod:`kitaru.worker` for what the task does and its exit codes).

The task definition is the stack's ``task_definition``, or one kitaru registers from the stack's
``image``, ``cpu``, ``memory`` and roles under a family named by a hash of its content (the same
stack reuses it; a changed key registers another). An execution with its own image (a deployed
version's, or its flow's ``@flow(image=...)``) runs on a definition registered from the same keys
with that image, a family of its own: ECS cannot override a container's image per task, so the
image lives in the definition. A stack's own ``task_definition`` fixes the image, so such an
execution is refused rather than run on another image. Each execution gets its command and
environment as container overrides.

Retries. ECS has no job-level retry: a task that dies is gone. Whoever next *observes* the
execution decides, in :meth:`EcsOrchestrator.submit`: the server's recovery loop, `kitaru
executions recover` (cron), or `kitaru executions resume` all call it for a ``running`` execution
whose runner is gone. ``submit`` reads the execution's last task (recorded in its metadata under
``ecs``) with ``DescribeTasks``:

- still alive and nobody holds the lease: it is on its way (provisioning); nothing to do;
- stopped by infrastructure (stop code ``TaskFailedToStart``, ``SpotInterruption``,
  ``TerminationNotice``, ``InfrastructureHealth``..., or an exit code other than 0, 10, 12 such as
  137 for a kill or an OOM, or 11 for "retry me"): a new ``RunTask`` resumes from the journal, the
  ``attempt`` counter moves on, and past the stack's ``max_retries`` the execution is marked
  ``failed`` with the task's stop reason (``kitaru executions retry`` starts counting again);
- exited 12 (this image or stack can never run it): the execution is marked ``failed`` naming the
  task's reason; 10 (the flow failed) was recorded by the worker itself; 0 ended cleanly.

A task that stopped while its runner's lease has not expired yet proves the runner dead: the new
task's worker waits the lease out. Races: submitters that see the same journal send the same
``clientToken``, which ECS uses to start one task for both.

An isolated call (``@checkpoint(runtime="isolated")``) is a task of its own, started by the
parent's task: ``kitaru worker call <exec_id> <call_id>`` on the execution's task definition, with
its environment and network, tagged with the call and its launch (``kitaru:call``,
``kitaru:launch``) and started by the execution's ``startedBy`` (so `cancel` stops it too). A
resumed parent finds that task by those tags (``ListTasks`` + ``DescribeTasks``) instead of
starting another. ECS retries nothing, so the parent's orchestrator does: a call task stopped by
infrastructure is run again, up to ``max_retries`` times, as an execution's task is.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from kitaru.errors import (
    KitaruConfigError,
    KitaruError,
    KitaruLeaseError,
    KitaruMissingDependencyError,
    KitaruNotFoundError,
    KitaruStateError,
    KitaruStoreError,
)

if TYPE_CHECKING:
    from kitaru._engine.flow import Flow
    from kitaru._engine.runtime import Runtime

    from . import AwsStack

__all__ = [
    "CALL_TAG",
    "CONTAINER",
    "EXECUTION_TAG",
    "INFRASTRUCTURE_STOP_CODES",
    "EcsOrchestrator",
    "started_by",
]

#: The container of the task definitions kitaru registers (and the default to override).
CONTAINER = "worker"
#: Tags on each task: the exact execution id, the attempt and the journal length it started at.
EXECUTION_TAG = "kitaru:execution"
ATTEMPT_TAG = "kitaru:attempt"
RUN_TAG = "kitaru:run"
#: Tags on an isolated call's task: the exact call id, and which launch of it the task runs.
CALL_TAG = "kitaru:call"
LAUNCH_TAG = "kitaru:launch"
#: The execution metadata key holding its tasks: ``{"cluster", "task", "attempt", "tasks"}``.
METADATA = "ecs"
#: Stop codes that say the platform, not the flow, ended the task.
INFRASTRUCTURE_STOP_CODES = frozenset(
    {
        "TaskFailedToStart",
        "SpotInterruption",
        "TerminationNotice",
        "InfrastructureHealth",
        "ServiceSchedulerInitiated",
    }
)
_KEPT_TASKS = 20
_KITARU_ID = re.compile(r"[0-9A-Z]{26}")
#: Keys never copied into a task's environment: overrides are readable by anyone who may
#: DescribeTasks. The task's role supplies AWS credentials.
_SECRET_KEYS = frozenset({"aws_access_key_id", "aws_secret_access_key", "aws_session_token", "profile"})


def started_by(exec_id: str) -> str:
    """The ``startedBy`` of an execution's tasks (at most 36 characters), for ``ListTasks``."""
    if _KITARU_ID.fullmatch(exec_id):
        return f"kitaru-{exec_id.lower()}"
    return "kitaru-" + hashlib.sha256(exec_id.encode()).hexdigest()[:29]


class EcsOrchestrator:
    """Runs each execution of an aws stack with a ``cluster`` as ECS tasks (see the module docstring)."""

    def __init__(self, stack: AwsStack) -> None:
        self.stack = stack
        #: The definitions registered (or found) this process, by image.
        self._task_definitions: dict[str | None, str] = {}

    def __repr__(self) -> str:
        return f"<EcsOrchestrator {self.stack.name} cluster={self.stack.cluster}>"

    # -- the API ------------------------------------------------------------------------------

    @asynccontextmanager
    async def _ecs(self) -> AsyncIterator[Any]:
        """An ECS client on the caller's loop, closed on exit."""
        try:
            from aiobotocore.config import AioConfig
            from aiobotocore.session import get_session
        except ImportError as exc:
            raise KitaruMissingDependencyError(
                "the aws stack needs aiobotocore: `pip install 'kitaru[aws]'`."
            ) from exc
        options = self.stack.options
        session = get_session()
        if options.get("profile"):
            session.set_config_variable("profile", options["profile"])
        credentials = {
            k: options[k]
            for k in ("aws_access_key_id", "aws_secret_access_key", "aws_session_token")
            if options.get(k)
        }
        config = AioConfig(
            retries={"max_attempts": 3, "mode": "standard"}, connect_timeout=5, read_timeout=60
        )
        async with session.create_client(
            "ecs",
            region_name=options.get("region") or "us-east-1",
            endpoint_url=self.stack.ecs_endpoint_url,
            config=config,
            **credentials,
        ) as client:
            try:
                yield client
            except OSError as exc:
                raise KitaruStoreError(
                    f"stack {self.stack.name!r}: ECS cannot be reached ({type(exc).__name__}: {exc}). "
                    "Check the network and the stack's `region` / `ecs_endpoint_url` keys."
                ) from exc

    async def _call(self, ecs: Any, operation: str, **params: Any) -> dict[str, Any]:
        """One ECS call; the cloud's refusals become kitaru errors naming the key to fix."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            reply: dict[str, Any] = await getattr(ecs, _snake(operation))(**params)
        except ClientError as exc:
            raise _ecs_error(self.stack, operation, exc) from exc
        except BotoCoreError as exc:
            raise KitaruConfigError(
                f"stack {self.stack.name!r}: ECS {operation} failed before reaching AWS: {exc}. Check "
                "the stack's credentials (`profile`, the environment, the instance role) and `region`."
            ) from exc
        return reply

    def _runtime(self) -> Runtime:
        from kitaru._engine.runtime import get_runtime

        return get_runtime(self.stack.name)

    # -- code ---------------------------------------------------------------------------------

    async def prepare(self, flow: Flow[Any, Any]) -> dict[str, Any]:
        """Ship ``flow``'s code for a new execution (``code = "archive"``); a deployed version
        ships nothing (see :func:`kitaru._remote_jobs.prepare`)."""
        from kitaru import _remote_jobs
        from kitaru.worker import DEPLOYMENT_METADATA

        # Refused before the execution exists: its tasks could never run on its image.
        self.execution_image(
            {DEPLOYMENT_METADATA: getattr(flow, "deployment", None), "image": getattr(flow, "image", None)}
        )
        return await _remote_jobs.prepare(self._runtime(), self.stack.code, flow, "its ECS task")

    # -- the seam -------------------------------------------------------------------------------

    async def submit(self, exec_id: str) -> None:
        """Start a task that drives the execution on from its journal, or decide that none is
        needed (see the module docstring). KitaruStateError when the execution cannot be driven
        (or ran out of retries), KitaruLeaseError when a live runner drives it already."""
        from kitaru import _remote_jobs
        from kitaru._engine.runner import DRIVABLE
        from kitaru.store import _rules

        runtime = self._runtime()
        record = await runtime.astate.get_execution(exec_id)
        if record is None:
            raise KitaruNotFoundError(f"no execution {exec_id!r}. List them with `kitaru executions list`.")
        if record.status in _rules.FINAL_STATUSES:
            raise _rules.final_error(record.id, record.status, "run again")
        if record.status not in DRIVABLE:
            raise KitaruStateError(f"execution {exec_id} is {record.status}: it cannot be submitted.")
        state: dict[str, Any] = dict(record.metadata.get(METADATA) or {})
        last = await self._task(state["cluster"], state["task"]) if state.get("task") else None
        stopped = last is not None and last.get("lastStatus") == "STOPPED"
        leased = record.status == "running" and not _rules.lease_free(
            record.lease_owner, record.lease_expires_at, time.time()
        )
        if leased and not stopped:
            raise KitaruLeaseError(
                f"execution {exec_id} is being driven by {record.lease_owner}; its ECS task goes on "
                f"(`aws ecs list-tasks --started-by {started_by(exec_id)}` lists it)."
            )
        attempt = 0
        if record.status == "running" and last is not None:
            if not stopped:
                return  # its task is on its way (provisioning), and will take the lease
            verdict, why = classify(last)
            if verdict == "cannot_run":
                await self._fail(runtime, exec_id, f"its ECS task {_task_id(last)} cannot run it: {why}")
            if verdict == "infrastructure":
                attempt = int(state.get("attempt", 0)) + 1
                if attempt > self.stack.max_retries:
                    await self._fail(
                        runtime,
                        exec_id,
                        f"{attempt} ECS tasks in a row ended by infrastructure failures (max_retries = "
                        f"{self.stack.max_retries}); the last, {_task_id(last)}: {why}",
                    )
        await _remote_jobs.ensure_code(runtime, self.stack.code, exec_id, record.metadata)
        run = len(await runtime.astate.read_journal(exec_id))
        task = await self._run_task(exec_id, record.flow, run, attempt, record.metadata)
        tasks = [*list(state.get("tasks") or []), task["taskArn"]][-_KEPT_TASKS:]
        await runtime.astate.commit(
            exec_id,
            [],
            metadata={
                METADATA: {
                    "cluster": self.stack.cluster,
                    "task": task["taskArn"],
                    "attempt": attempt,
                    "tasks": tasks,
                }
            },
        )

    async def _fail(self, runtime: Runtime, exec_id: str, why: str) -> None:
        """Mark a running execution nobody drives ``failed`` (retrying it here cannot help), and
        say so. Taking the lease first keeps a runner that came alive meanwhile in charge."""
        try:
            await runtime.astate.acquire_lease(
                exec_id, runtime.owner, runtime.lease_ttl, allowed_statuses={"running"}
            )
        except (KitaruLeaseError, KitaruStateError):
            raise KitaruLeaseError(f"execution {exec_id} moved on meanwhile.") from None
        # The stored error says what happened; readers of it (handle.wait, `executions get`) add
        # the `retry` hint themselves.
        await runtime.astate.commit(
            exec_id, [], owner=runtime.owner, status="failed", error=why, release_lease=True
        )
        raise KitaruStateError(
            f"execution {exec_id} is failed: {why}. Fix the cause, then `kitaru executions retry {exec_id}`."
        )

    # -- isolated calls ---------------------------------------------------------------------------

    def call_job_name(self, exec_id: str, call_id: str, launch: int = 1) -> str:
        """How people find launch ``launch`` of isolated call ``call_id``: by its tags."""
        where = f"startedBy {started_by(exec_id)}"
        return f"ECS task tagged {CALL_TAG}={call_id}, {LAUNCH_TAG}={launch} ({where})"

    async def submit_call(self, exec_id: str, call_id: str, launch: int = 1) -> None:
        """Start the task running launch ``launch`` of isolated call ``call_id`` (``kitaru worker
        call``) on the execution's task definition, environment and network; nothing when that
        launch has a task already (a parent resumed after a restart)."""

        if await self._call_tasks(exec_id, call_id, launch):
            return
        await self._start_call(exec_id, call_id, launch, 0)

    async def _start_call(self, exec_id: str, call_id: str, launch: int, attempt: int) -> None:
        from kitaru import _remote_jobs

        runtime = self._runtime()
        record = await _remote_jobs.call_submittable(runtime, exec_id)
        await _remote_jobs.ensure_code(runtime, self.stack.code, exec_id, record.metadata)
        run = len(await runtime.astate.read_journal(exec_id))
        await self._run_task(exec_id, record.flow, run, attempt, record.metadata, call=(call_id, launch))

    async def call_state(self, exec_id: str, call_id: str, launch: int = 1) -> Any:
        """What the task of launch ``launch`` of isolated call ``call_id`` is doing (a
        :class:`kitaru._remote_jobs.CallState`). A task stopped by infrastructure (a kill, an
        OOM, a Spot interruption) is run again here, up to the stack's ``max_retries``: ECS
        retries nothing itself."""
        from kitaru._remote_jobs import CallState

        tasks = await self._call_tasks(exec_id, call_id, launch)
        if not tasks:
            return CallState("missing")
        last = tasks[-1]
        if last.get("lastStatus") != "STOPPED":
            return CallState("running")
        verdict, why = classify(last)
        if verdict == "done":
            return CallState("succeeded")
        attempt = int(_tag(last, ATTEMPT_TAG) or 0)
        if verdict == "infrastructure" and attempt < self.stack.max_retries:
            await self._start_call(exec_id, call_id, launch, attempt + 1)
            return CallState("running")
        return CallState("failed", f"task {_task_id(last)}: {why}")

    async def _call_tasks(self, exec_id: str, call_id: str, launch: int) -> list[dict[str, Any]]:
        """The tasks of launch ``launch`` of the call, by attempt."""
        cluster = self.stack.cluster
        async with self._ecs() as ecs:
            arns: list[str] = []
            for desired in ("RUNNING", "STOPPED"):
                listed = await self._call(
                    ecs, "ListTasks", cluster=cluster, startedBy=started_by(exec_id), desiredStatus=desired
                )
                arns.extend(a for a in listed.get("taskArns") or [] if a not in arns)
            found: list[dict[str, Any]] = []
            for i in range(0, len(arns), 100):
                reply = await self._call(
                    ecs, "DescribeTasks", cluster=cluster, tasks=arns[i : i + 100], include=["TAGS"]
                )
                found.extend(reply.get("tasks") or [])
        mine = [
            t
            for t in found
            if _tag(t, EXECUTION_TAG) == exec_id
            and _tag(t, CALL_TAG) == call_id
            and _tag(t, LAUNCH_TAG) == str(launch)
        ]
        return sorted(mine, key=lambda t: int(_tag(t, ATTEMPT_TAG) or 0))

    async def _run_task(
        self,
        exec_id: str,
        flow: str,
        run: int,
        attempt: int,
        metadata: Mapping[str, Any],
        call: tuple[str, int] | None = None,
    ) -> dict[str, Any]:
        """Start a task of the execution (``call``: ``(call_id, launch)`` of an isolated call,
        for the task that runs it: the same in everything but its command and tags)."""
        from kitaru import _remote_jobs

        stack = self.stack
        args = ["worker", "run", exec_id]
        environment = self.environment()
        token = f"{exec_id}\0{run}\0{attempt}"
        tags = [{"key": RUN_TAG, "value": str(run)}, {"key": ATTEMPT_TAG, "value": str(attempt)}]
        if call is not None:
            args = _remote_jobs.call_args(exec_id, call[0])
            environment[_remote_jobs.CALL_LAUNCH_ENV] = str(call[1])
            token = f"{_remote_jobs.call_key(exec_id, *call)}\0{attempt}"
            tags += [{"key": CALL_TAG, "value": call[0][:256]}, {"key": LAUNCH_TAG, "value": str(call[1])}]
        async with self._ecs() as ecs:
            definition = await self.task_definition(ecs, metadata)
            params: dict[str, Any] = {
                "cluster": stack.cluster,
                "taskDefinition": definition,
                "count": 1,
                "startedBy": started_by(exec_id),
                # Submitters that saw the same journal send the same token: ECS starts one task.
                "clientToken": hashlib.sha256(token.encode()).hexdigest()[:64],
                "overrides": {
                    "containerOverrides": [
                        {
                            "name": stack.container_name,
                            "command": [*stack.worker_command, *args],
                            "environment": [{"name": k, "value": v} for k, v in environment.items()],
                        }
                    ]
                },
                "tags": [
                    *({"key": k, "value": v} for k, v in stack.tags.items()),
                    {"key": EXECUTION_TAG, "value": exec_id},
                    {"key": "kitaru:flow", "value": flow[:256]},
                    *tags,
                ],
            }
            if stack.capacity_provider:
                params["capacityProviderStrategy"] = [
                    {"capacityProvider": stack.capacity_provider, "weight": 1}
                ]
            else:
                params["launchType"] = stack.launch_type
            if stack.subnets:
                params["networkConfiguration"] = {
                    "awsvpcConfiguration": {
                        "subnets": stack.subnets,
                        "securityGroups": stack.security_groups,
                        "assignPublicIp": "ENABLED" if stack.assign_public_ip else "DISABLED",
                    }
                }
            if stack.platform_version:
                params["platformVersion"] = stack.platform_version
            reply = await self._call(ecs, "RunTask", **params)
        tasks = reply.get("tasks") or []
        if not tasks:
            failures = "; ".join(
                " ".join(str(f[k]) for k in ("reason", "detail") if f.get(k))
                for f in reply.get("failures") or []
            )
            # No capacity now (RESOURCE:CPU, AGENT...) is the platform's trouble: the execution
            # stays running with a free lease, and the next recovery pass submits it again.
            raise KitaruStoreError(
                f"stack {stack.name!r}: ECS started no task for execution {exec_id} in cluster "
                f"{stack.cluster!r}: {failures or 'no reason given'}. `kitaru executions recover` "
                "tries again."
            )
        task: dict[str, Any] = tasks[0]
        return task

    def execution_image(self, metadata: Mapping[str, Any]) -> str | None:
        """The image an execution's tasks run on (see :func:`kitaru._remote_jobs.execution_image`).
        KitaruConfigError when it is the execution's own but the stack's ``task_definition``
        fixes another: a RunTask override cannot change a container's image."""
        from kitaru import _remote_jobs

        stack = self.stack
        image = _remote_jobs.execution_image(metadata, stack.image)
        if stack.task_definition and image and image != stack.image:
            raise KitaruConfigError(
                f"this execution runs on its own image {image!r} (its flow's `@flow(image=...)` or "
                f"its deployed version's), but stack {stack.name!r} runs the task definition "
                f"{stack.task_definition!r}, which fixes the image (ECS cannot override it per task). "
                "Remove `task_definition` and set `image`, `cpu`, `memory` and the roles so kitaru "
                "registers a definition per image, or drop the flow's own image "
                f"(`kitaru stack show {stack.name}` shows the stack's keys)."
            )
        return image

    async def task_definition(self, ecs: Any, metadata: Mapping[str, Any] = {}) -> str:
        """The task definition to run an execution on (``metadata``: its own): the stack's
        ``task_definition``, else the one registered from its keys and the execution's image
        (found by its family, registered on first use)."""
        stack = self.stack
        image = self.execution_image(metadata)
        if stack.task_definition:
            return stack.task_definition
        if image in self._task_definitions:
            return self._task_definitions[image]
        body = self.task_definition_body(metadata)
        from botocore.exceptions import ClientError

        try:
            found = await ecs.describe_task_definition(taskDefinition=body["family"])
            arn = str(found["taskDefinition"]["taskDefinitionArn"])
        except ClientError:
            registered = await self._call(ecs, "RegisterTaskDefinition", **body)
            arn = str(registered["taskDefinition"]["taskDefinitionArn"])
        self._task_definitions[image] = arn
        return arn

    def task_definition_body(self, metadata: Mapping[str, Any] = {}) -> dict[str, Any]:
        """The ``RegisterTaskDefinition`` request built from the stack's keys, on the image of the
        execution whose ``metadata`` is given (its own, else the stack's); its family names a hash
        of the rest, so a changed key or another image registers a new family instead of
        mutating one."""
        from kitaru import _remote_jobs

        stack = self.stack
        image = _remote_jobs.execution_image(metadata, stack.image)
        if not image:
            raise KitaruConfigError(
                f"stack {stack.name!r} has neither `task_definition` nor `image`: its ECS tasks need "
                "the image that runs the worker (Python with kitaru[aws] and the flows' "
                f'dependencies). Set `image = "ACCOUNT.dkr.ecr.REGION.amazonaws.com/IMAGE:TAG"` '
                f'(or `task_definition = "FAMILY:REVISION"`) in its table (`kitaru stack show {stack.name}`).'
            )
        container: dict[str, Any] = {
            "name": CONTAINER,
            "image": image,
            "essential": True,
            "command": [*stack.worker_command, "worker", "run"],
            # A container-level limit too: the task's own (EC2 needs one; Fargate accepts it).
            "memory": int(stack.memory),
        }
        if stack.secret_env:
            container["secrets"] = [{"name": k, "valueFrom": v} for k, v in sorted(stack.secret_env.items())]
        if stack.log_group:
            container["logConfiguration"] = {
                "logDriver": "awslogs",
                "options": {
                    "awslogs-group": stack.log_group,
                    "awslogs-region": stack.options.get("region") or "us-east-1",
                    "awslogs-stream-prefix": "kitaru",
                },
            }
        body: dict[str, Any] = {
            "containerDefinitions": [container],
            "cpu": str(stack.cpu),
            "memory": str(stack.memory),
            "requiresCompatibilities": [stack.launch_type],
        }
        if stack.launch_type == "FARGATE" or stack.subnets:
            body["networkMode"] = "awsvpc"
        if stack.execution_role_arn:
            body["executionRoleArn"] = stack.execution_role_arn
        if stack.task_role_arn:
            body["taskRoleArn"] = stack.task_role_arn
        digest = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:12]
        slug = re.sub(r"[^A-Za-z0-9_-]+", "-", stack.name).strip("-")[:200] or "stack"
        return {"family": f"kitaru-{slug}-{digest}", **body}

    def environment(self) -> dict[str, str]:
        """The worker's environment override: the stack by name and its keys (so the task needs no
        config file), then the stack's ``env``. Credentials are left out (the task's role supplies
        them), and so is a key ``secret_env`` provides (``KITARU_STACK__STATE`` from a secret)."""
        from kitaru import _remote_jobs

        stack = self.stack
        return _remote_jobs.worker_env(
            stack,
            _remote_jobs.declared_keys(stack),  # the task's stack starts an isolated call's task as this one
            env=stack.env,
            leave_out=_SECRET_KEYS | set(stack.secret_env),
        )

    async def _task(self, cluster: str, arn: str) -> dict[str, Any] | None:
        found = await self._tasks(cluster, [arn])
        return found[0] if found else None

    async def _tasks(self, cluster: str, arns: list[str]) -> list[dict[str, Any]]:
        if not arns:
            return []
        out: list[dict[str, Any]] = []
        async with self._ecs() as ecs:
            for i in range(0, len(arns), 100):  # DescribeTasks takes up to 100
                reply = await self._call(ecs, "DescribeTasks", cluster=cluster, tasks=arns[i : i + 100])
                out.extend(reply.get("tasks") or [])
        return out

    async def tasks(self, exec_id: str) -> list[dict[str, Any]]:
        """The execution's tasks ECS still knows (``DescribeTasks``), oldest first: those recorded
        in its metadata, and any started for it not recorded yet (``ListTasks`` by startedBy)."""
        record = await self._runtime().astate.get_execution(exec_id)
        state: dict[str, Any] = dict((record.metadata if record else {}).get(METADATA) or {})
        cluster = str(state.get("cluster") or self.stack.cluster)
        arns = list(state.get("tasks") or [])
        async with self._ecs() as ecs:
            for desired in ("RUNNING", "STOPPED"):
                listed = await self._call(
                    ecs, "ListTasks", cluster=cluster, startedBy=started_by(exec_id), desiredStatus=desired
                )
                arns.extend(a for a in listed.get("taskArns") or [] if a not in arns)
        found = await self._tasks(cluster, arns)
        # Tasks of another execution whose id hashes to the same startedBy are not this one's.
        return sorted(
            (t for t in found if _tag(t, EXECUTION_TAG) in (None, exec_id)),
            key=lambda t: (
                int(_tag(t, RUN_TAG) or 0),
                int(_tag(t, ATTEMPT_TAG) or 0),
                arns.index(t["taskArn"]),
            ),
        )

    async def cancel(self, exec_id: str) -> None:
        """Make the cancel final in the state store, then stop the execution's live tasks."""
        from kitaru._engine.runner import Runner

        await Runner(self._runtime()).cancel(exec_id)
        live = [t for t in await self.tasks(exec_id) if t.get("lastStatus") != "STOPPED"]
        async with self._ecs() as ecs:
            for task in live:
                await self._call(
                    ecs,
                    "StopTask",
                    cluster=task.get("clusterArn") or self.stack.cluster,
                    task=task["taskArn"],
                    reason=f"kitaru: execution {exec_id} cancelled",
                )

    async def describe(self, exec_id: str) -> str:
        """The execution's ECS tasks, one line each."""
        tasks = await self.tasks(exec_id)
        if not tasks:
            return f"no ECS task of execution {exec_id} in cluster {self.stack.cluster}"
        lines = []
        for task in tasks:
            line = f"task {_task_id(task)}: {task.get('lastStatus')}"
            if task.get("lastStatus") == "STOPPED":
                verdict, why = classify(task)
                line += f" ({verdict}: {why})"
            lines.append(f"{line} [attempt {_tag(task, ATTEMPT_TAG) or 0}]")
        return "\n".join(lines)


def classify(task: dict[str, Any]) -> tuple[str, str]:
    """What a stopped task's end means: ``done`` (exit 0), ``flow_failed`` (10), ``cannot_run`` (12)
    or ``infrastructure`` (anything else: a stop code of the platform, a kill, an OOM, exit 11),
    and why, in the task's own words."""
    from kitaru._remote_jobs import exit_verdict

    container = next(
        (c for c in task.get("containers") or [] if c.get("name") == CONTAINER),
        (task.get("containers") or [{}])[0],
    )
    code = container.get("exitCode")
    stop_code = task.get("stopCode")
    reason = task.get("stoppedReason") or container.get("reason") or ""
    why = ", ".join(
        part
        for part in (
            f"stop code {stop_code}" if stop_code else "",
            f"exit code {code}" if code is not None else "",
            str(reason),
            str(container.get("reason") or "") if container.get("reason") != reason else "",
        )
        if part
    )
    if stop_code in INFRASTRUCTURE_STOP_CODES:
        return "infrastructure", why
    verdict = exit_verdict(code)
    return verdict, why or ("stopped without an exit code" if code is None else "")


def _task_id(task: dict[str, Any]) -> str:
    return str(task.get("taskArn", "")).rsplit("/", 1)[-1]


def _tag(task: dict[str, Any], key: str) -> str | None:
    for tag in task.get("tags") or []:
        if tag.get("key") == key:
            return str(tag.get("value"))
    return None


def _snake(operation: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", operation).lower()


#: Which stack key most likely fixes a refusal, by the words in AWS's message.
_KEY_HINTS = (
    ("executionrole", "execution_role_arn"),
    ("execution role", "execution_role_arn"),
    ("taskrole", "task_role_arn"),
    ("task role", "task_role_arn"),
    ("passrole", "execution_role_arn / task_role_arn (and iam:PassRole on them)"),
    ("subnet", "subnets"),
    ("security group", "security_groups"),
    ("securitygroup", "security_groups"),
    ("task definition", "task_definition"),
    ("taskdefinition", "task_definition"),
    ("image", "image"),
    ("capacity provider", "capacity_provider"),
    ("launch type", "launch_type"),
    ("cpu", "cpu"),
    ("memory", "memory"),
)


def _ecs_error(stack: AwsStack, operation: str, exc: Any) -> KitaruError:
    error = exc.response.get("Error") or {}
    code = str(error.get("Code") or "")
    message = str(error.get("Message") or exc)
    said = f"stack {stack.name!r}: ECS refused {operation} ({code}: {message})"
    if code in ("ClusterNotFoundException",):
        return KitaruConfigError(
            f"{said}. Check the stack's `cluster` key (`aws ecs list-clusters`) and `region`."
        )
    if code in (
        "AccessDeniedException",
        "AccessDenied",
        "UnauthorizedOperation",
        "UnrecognizedClientException",
    ):
        return KitaruConfigError(
            f"{said}. The credentials lack a permission kitaru needs: ecs:RunTask, ecs:DescribeTasks, "
            "ecs:ListTasks, ecs:StopTask, ecs:DescribeTaskDefinition, ecs:RegisterTaskDefinition, "
            "ecs:TagResource and iam:PassRole on the stack's `execution_role_arn` and `task_role_arn`."
        )
    if code in ("ThrottlingException", "ServerException", "ServiceUnavailableException"):
        return KitaruStoreError(f"{said}. A passing trouble of ECS: `kitaru executions recover` tries again.")
    lowered = message.lower()
    key = next((k for words, k in _KEY_HINTS if words in lowered), None)
    hint = f"Check the stack's `{key}` key" if key else "Check the stack's keys"
    return KitaruConfigError(
        f"{said}. {hint} (`kitaru stack show {stack.name}`; stacks.example.toml documents them)."
    )
