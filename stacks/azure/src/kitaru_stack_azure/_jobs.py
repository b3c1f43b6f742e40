"""The Container Apps jobs orchestrator: each execution run is one execution of a manual-trigger
Container Apps job whose replica runs ``kitaru worker run <exec_id>`` (see :mod:`kitaru.worker`
for what it does and its exit codes).

The job. Either the stack's ``job`` (an existing manual-trigger job: its container's image,
resources, secrets and ``replicaRetryLimit`` are kept unless a key says otherwise), or a job kitaru
creates in the stack's ``environment``, named ``kitaru-<stack>-<hash>`` where the hash covers the
job's template (image, command, identity, registry, retries, timeout, CPU, memory): a changed key
gets a new job instead of an update racing executions that run on the old one. Each run is
``jobs.begin_start`` with a template override: the job's container with ``args = ["worker",
"run", <exec_id>]`` and the stack's keys as env (so the replica needs no config file). Container
Apps replaces the job's containers with the override's, so the override carries the image (the
execution's own when it has one: a deployed version's, or its flow's ``@flow(image=...)``),
command and resources too, and the job's own env entries stay (a variable the job reads from a
secret, ``secretRef``, is never overridden with a plain value: that is how credentials reach the
worker without appearing in each execution's template). An execution's runs are found again by
those args (``jobs_executions.list``).

Retries. Container Apps retries a failed replica up to ``replicaRetryLimit`` times whatever its
exit code (no per-exit-code policy). So the template sets ``KITARU_WORKER_FLOW_FAILED_EXIT=0``: a
flow's own failure (recorded ``failed`` in the state store, the source of truth) ends the replica
successfully and is not run again; infrastructure trouble (exit 11, a crash, a lost node, a kill)
is non-zero and retried, resuming from the journal. Exit 12 (this image or stack can never drive
the execution) stays non-zero, so the job execution shows ``Failed``.

An isolated call (``@checkpoint(runtime="isolated")``) is a job execution of its own, started by
the parent's replica: the same template with ``args = ["worker", "call", <exec_id>, <call_id>]``
and ``KITARU_CALL_LAUNCH`` (which launch of the call it runs) in its env. A resumed parent finds it
again by those (``jobs_executions.list``) instead of starting the job once more; Container Apps
retries its replica as it retries an execution's.

The client is azure-mgmt-appcontainers' async client (``aio``, aiohttp on the caller's loop, no
thread) with azure-identity's async ``DefaultAzureCredential``; both are opened per operation and
closed after it. The API version is pinned (:data:`API_VERSION`) so a newer SDK does not move the
wire format under a deployed stack. Long-running operations (start, stop, create) are polled
through ARM's ``Location`` / ``Azure-AsyncOperation`` headers, every second unless Azure's
``Retry-After`` says otherwise (the SDK's default is 30 s: an answer would wait that long).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from kitaru.errors import (
    KitaruConfigError,
    KitaruMissingDependencyError,
    KitaruStoreError,
)

if TYPE_CHECKING:
    from kitaru._engine.flow import Flow
    from kitaru._engine.runtime import Runtime

    from . import AzureStack

__all__ = ["API_VERSION", "CONTAINER", "ContainerAppsOrchestrator", "job_name"]

#: The container of the jobs kitaru creates.
CONTAINER = "worker"
#: The ARM API version of Microsoft.App every call uses (a stable one).
API_VERSION = "2024-03-01"
#: Seconds between polls of a long-running operation when Azure sends no Retry-After.
_POLL_INTERVAL = 1.0
#: Store keys never copied into an execution's template: anyone who may read the job's executions
#: reads them. Give them to the job as secrets (``secretRef`` env) instead.
_SECRET_KEYS = frozenset({"account_key", "sas_token", "connection_string"})
_LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})
#: Which key a refused Azure action points at, by the action's words.
_ACTION_KEYS = (
    ("microsoft.managedidentity", "identity"),
    ("managedenvironments", "environment"),
    ("microsoft.app/jobs", "job"),
)


def job_name(stack: str, template: dict[str, Any]) -> str:
    """The job kitaru creates for a stack configuration: lowercase letters, digits and hyphens, at
    most 32 characters (Container Apps' limit for job names)."""
    slug = re.sub(r"[^a-z0-9]+", "-", stack.lower()).strip("-")[:14].strip("-") or "stack"
    digest = hashlib.sha256(json.dumps(template, sort_keys=True).encode()).hexdigest()[:10]
    return f"kitaru-{slug}-{digest}"


class ContainerAppsOrchestrator:
    """Runs each execution of an azure stack as Container Apps job executions (module docstring)."""

    def __init__(self, stack: AzureStack) -> None:
        self.stack = stack
        self._job: dict[str, Any] | None = None

    def __repr__(self) -> str:
        return f"<ContainerAppsOrchestrator {self.stack.name} job={self.job_name}>"

    # -- the API ------------------------------------------------------------------------------

    @property
    def resource_group(self) -> str:
        return str(self.stack.resource_group)

    @asynccontextmanager
    async def _client(self) -> AsyncIterator[Any]:
        """A Container Apps management client on the caller's loop, and its credential, closed on exit."""
        try:
            from azure.identity.aio import DefaultAzureCredential
            from azure.mgmt.appcontainers.aio import ContainerAppsAPIClient
        except ImportError as exc:
            raise KitaruMissingDependencyError(
                "the azure stack runs flows as Container Apps jobs with azure-mgmt-appcontainers: "
                "`pip install 'kitaru[azure]'`."
            ) from exc
        options: dict[str, Any] = {"api_version": API_VERSION, "polling_interval": _POLL_INTERVAL}
        if self.stack.arm_endpoint_url:
            options["base_url"] = self.stack.arm_endpoint_url
        credential = DefaultAzureCredential()
        async with (
            credential,
            ContainerAppsAPIClient(credential, str(self.stack.subscription_id), **options) as client,
        ):
            yield client

    def _call_options(self) -> dict[str, Any]:
        """Per-call options: a loopback ``arm_endpoint_url`` over plain http (a test double) may
        receive the bearer token; azure-core refuses any other http URL, which is what we want."""
        url = urlsplit(self.stack.arm_endpoint_url or "https://management.azure.com")
        if url.scheme == "http" and url.hostname in _LOOPBACK:
            return {"enforce_https": False}
        return {}

    async def _call(self, what: str, key: str, operation: Any) -> Any:
        """Await one client operation; map Azure's refusals to kitaru errors naming the key to fix
        (``key``: the one most likely at fault when the resource is not found)."""
        from azure.core.exceptions import (
            ClientAuthenticationError,
            HttpResponseError,
            ResourceNotFoundError,
            ServiceRequestError,
            ServiceResponseError,
        )

        stack = self.stack
        said = f"stack {stack.name!r}: Azure refused to {what}"
        try:
            return await operation
        except ClientAuthenticationError as exc:
            raise KitaruConfigError(
                f"stack {stack.name!r}: no Azure credentials to {what} with ({_message(exc)}). Run "
                "`az login`, or give the process a managed identity or AZURE_CLIENT_ID / "
                "AZURE_TENANT_ID / AZURE_CLIENT_SECRET (DefaultAzureCredential reads them)."
            ) from exc
        except ResourceNotFoundError as exc:
            raise KitaruConfigError(
                f"{said}: {_message(exc)}. Check the stack's `{key}`, `resource_group` and "
                f"`subscription_id` keys (`az containerapp job list -g {self.resource_group}`)."
            ) from exc
        except HttpResponseError as exc:
            message = _message(exc)
            if exc.status_code == 403:
                lowered = message.lower()
                culprit = next((k for words, k in _ACTION_KEYS if words in lowered), key)
                raise KitaruConfigError(
                    f"{said}: {message}. The credentials lack a role on the stack's `{culprit}`: "
                    "they need Contributor (or Container Apps Jobs Operator to start and stop an "
                    "existing `job`) on it, and Managed Identity Operator on its `identity` "
                    f"(`az role assignment list --assignee PRINCIPAL -g {self.resource_group}`)."
                ) from exc
            if exc.status_code is not None and 400 <= exc.status_code < 500 and exc.status_code != 429:
                raise KitaruConfigError(
                    f"{said}: {message}. Check the stack's `image`, `cpu`, `memory`, `identity`, "
                    f"`registry` and `environment` keys (`kitaru stack show {stack.name}`; "
                    "stacks.example.toml documents them)."
                ) from exc
            raise KitaruStoreError(
                f"{said}: {message}. A passing trouble of Azure: submit again (`kitaru executions "
                "resume ID`)."
            ) from exc
        except (ServiceRequestError, ServiceResponseError, OSError) as exc:
            raise KitaruStoreError(
                f"stack {stack.name!r}: Azure Resource Manager cannot be reached to {what} "
                f"({type(exc).__name__}: {exc}). Check the network (and the stack's `arm_endpoint_url`)."
            ) from exc

    def _runtime(self) -> Runtime:
        from kitaru._engine.runtime import get_runtime

        return get_runtime(self.stack.name)

    # -- the job ------------------------------------------------------------------------------

    def _template(self) -> dict[str, Any]:
        """What a job kitaru creates holds, from the stack's keys (also what its name hashes)."""
        stack = self.stack
        return {
            "environment": stack.environment,
            "image": stack.image,
            "command": list(stack.worker_command),
            "identity": stack.identity,
            "registry": stack.registry,
            "max_retries": stack.max_retries,
            "replica_timeout": stack.replica_timeout,
            "cpu": stack.cpu,
            "memory": stack.memory,
        }

    @property
    def job_name(self) -> str:
        return self.stack.job or job_name(self.stack.name, self._template())

    def _resources(self) -> dict[str, Any]:
        stack = self.stack
        out: dict[str, Any] = {}
        if stack.cpu is not None:
            out["cpu"] = stack.cpu
        if stack.memory:
            out["memory"] = stack.memory
        return out

    def job_body(self) -> dict[str, Any]:
        """The job kitaru creates in the stack's ``environment``: manual trigger, one replica per
        execution, the worker's container."""
        from kitaru.worker import FLOW_FAILED_EXIT_ENV

        stack = self.stack
        container: dict[str, Any] = {
            "name": CONTAINER,
            "image": stack.image,
            "command": list(stack.worker_command),
            # Container Apps retries every non-zero exit: a flow's failure exits 0 (module docstring).
            "env": [{"name": FLOW_FAILED_EXIT_ENV, "value": "0"}],
        }
        if self._resources():
            container["resources"] = self._resources()
        configuration: dict[str, Any] = {
            "triggerType": "Manual",
            "replicaTimeout": stack.replica_timeout,
            "replicaRetryLimit": stack.max_retries,
            "manualTriggerConfig": {"parallelism": 1, "replicaCompletionCount": 1},
        }
        if stack.registry:
            registry: dict[str, Any] = {"server": stack.registry}
            if stack.identity:
                registry["identity"] = stack.identity
            configuration["registries"] = [registry]
        body: dict[str, Any] = {
            "location": stack.location,
            "tags": {"managed-by": "kitaru", "kitaru-stack": stack.name[:256]},
            "properties": {
                "environmentId": stack.environment,
                "configuration": configuration,
                "template": {"containers": [container]},
            },
        }
        if stack.identity:
            body["identity"] = {"type": "UserAssigned", "userAssignedIdentities": {stack.identity: {}}}
        return body

    async def job(self) -> dict[str, Any]:
        """The job's resource (its JSON), created first in the stack's ``environment`` when kitaru
        owns it and it does not exist yet."""
        if self._job is not None:
            return self._job
        from azure.core.exceptions import ResourceNotFoundError

        name = self.job_name
        options = self._call_options()

        async def read(client: Any) -> Any:
            try:
                return await client.jobs.get(self.resource_group, name, **options)
            except ResourceNotFoundError:
                return None

        async with self._client() as client:
            found = await self._call(f"read the job {name}", "job", read(client))
            if found is None and self.stack.job:
                raise KitaruConfigError(
                    f"stack {self.stack.name!r}: no Container Apps job {name!r} in resource group "
                    f"{self.resource_group!r}. Check the stack's `job` and `resource_group` keys "
                    f"(`az containerapp job list -g {self.resource_group}`), or set `environment` "
                    "instead of `job` to let kitaru create one."
                )
            if found is None:
                what = f"create the job {name} in the environment"
                poller = await self._call(
                    what,
                    "environment",
                    client.jobs.begin_create_or_update(self.resource_group, name, self.job_body(), **options),
                )
                found = await self._call(what, "environment", poller.result())
        job: dict[str, Any] = found.as_dict()
        containers = ((job.get("properties") or {}).get("template") or {}).get("containers") or []
        if not containers:
            raise KitaruConfigError(
                f"stack {self.stack.name!r}: the Container Apps job {name} has no container to run the "
                "worker in. Point `job` at a job with one container, or use `environment` instead."
            )
        trigger = ((job.get("properties") or {}).get("configuration") or {}).get("triggerType")
        if trigger and trigger != "Manual":
            raise KitaruConfigError(
                f"stack {self.stack.name!r}: the Container Apps job {name} has trigger type {trigger}; "
                "kitaru starts each execution itself and needs a job with manual trigger "
                "(`az containerapp job create --trigger-type Manual ...`): set `job` to one."
            )
        self._job = job
        return job

    # -- code ---------------------------------------------------------------------------------

    async def prepare(self, flow: Flow[Any, Any]) -> dict[str, Any]:
        """Ship ``flow``'s code for a new execution (``code = "archive"``); see
        :func:`kitaru._remote_jobs.prepare`."""
        from kitaru import _remote_jobs

        return await _remote_jobs.prepare(self._runtime(), self.stack.code, flow, "its Container Apps job")

    # -- the seam -----------------------------------------------------------------------------

    async def submit(self, exec_id: str) -> None:
        """Start the job once more, for this execution (None: it runs there).

        KitaruStateError when the execution cannot be driven (completed, cancelled), and
        KitaruLeaseError when a live runner drives it already (its replica is running)."""
        from kitaru import _remote_jobs

        runtime = self._runtime()
        record = await _remote_jobs.check_submittable(
            runtime,
            exec_id,
            f"its Container Apps job execution goes on (`kitaru executions describe {exec_id}` names it)",
        )
        await _remote_jobs.ensure_code(runtime, self.stack.code, exec_id, record.metadata)
        run = len(await runtime.astate.read_journal(exec_id))
        await self._start(self.start_template(await self.job(), exec_id, run, record.metadata))

    async def _start(self, template: dict[str, Any]) -> None:
        """Start the job once, with this execution template."""
        name = self.job_name
        async with self._client() as client:
            poller = await self._call(
                f"start the job {name}",
                "job",
                client.jobs.begin_start(self.resource_group, name, template, **self._call_options()),
            )
            # The operation ends once the execution exists (its name is the result); the state
            # store tells how the run goes.
            await self._call(f"start the job {name}", "job", poller.result())

    # -- isolated calls ---------------------------------------------------------------------------

    def call_job_name(self, exec_id: str, call_id: str, launch: int = 1) -> str:
        """How people find launch ``launch`` of isolated call ``call_id``: by its args and env."""
        from kitaru import _remote_jobs

        args = " ".join(_remote_jobs.call_args(exec_id, call_id))
        return (
            f"Container Apps job execution of {self.job_name} with args `{args}` and "
            f"{_remote_jobs.CALL_LAUNCH_ENV}={launch}"
        )

    async def submit_call(self, exec_id: str, call_id: str, launch: int = 1) -> None:
        """Start the job once for launch ``launch`` of isolated call ``call_id`` (``kitaru worker
        call``), with the execution's image and env; nothing when that launch has a job
        execution already (a parent resumed after a restart)."""
        from kitaru import _remote_jobs

        runtime = self._runtime()
        record = await _remote_jobs.call_submittable(runtime, exec_id)
        if await self._call_executions(exec_id, call_id, launch):
            return
        await _remote_jobs.ensure_code(runtime, self.stack.code, exec_id, record.metadata)
        run = len(await runtime.astate.read_journal(exec_id))
        template = self.start_template(
            await self.job(), exec_id, run, record.metadata, call=(call_id, launch)
        )
        await self._start(template)

    async def call_state(self, exec_id: str, call_id: str, launch: int = 1) -> Any:
        """What the job execution of launch ``launch`` of isolated call ``call_id`` is doing (a
        :class:`kitaru._remote_jobs.CallState`; a failed one's reason names its exit codes)."""
        from kitaru._remote_jobs import CallState

        found = await self._call_executions(exec_id, call_id, launch)
        if not found:
            return CallState("missing")
        status = _props(found[-1]).get("status")
        if status in _LIVE:
            return CallState("running")
        if status == "Succeeded":
            return CallState("succeeded")
        codes = _exit_codes(found[-1])
        said = f" (exit codes {', '.join(map(str, codes))})" if codes else ""
        return CallState("failed", f"Container Apps job execution {found[-1].get('name')}: {status}{said}")

    async def _call_executions(self, exec_id: str, call_id: str, launch: int) -> list[dict[str, Any]]:
        """The job executions of launch ``launch`` of the call, oldest first."""
        from kitaru import _remote_jobs

        args = _remote_jobs.call_args(exec_id, call_id)

        def mine(execution: dict[str, Any]) -> bool:
            if _args(execution) != args:
                return False
            containers = (_props(execution).get("template") or {}).get("containers") or [{}]
            env = {e.get("name"): e.get("value") for e in containers[0].get("env") or []}
            return env.get(_remote_jobs.CALL_LAUNCH_ENV) == str(launch)

        return [e for e in await self.executions(exec_id) if mine(e)]

    def start_template(
        self,
        job: dict[str, Any],
        exec_id: str,
        run: int,
        metadata: Mapping[str, Any] = {},
        *,
        call: tuple[str, int] | None = None,
    ) -> dict[str, Any]:
        """The ``JobExecutionTemplate`` of one run: the job's container with the worker's args and
        environment, on the image of the execution whose ``metadata`` is given (its deployed
        version's, else its flow's, see :func:`kitaru._remote_jobs.execution_image`), else the
        stack's, else the job's. ``call``: ``(call_id, launch)`` of an isolated call, for the
        execution that runs it (``kitaru worker call``; the same in everything else)."""
        from kitaru import _remote_jobs
        from kitaru.worker import FLOW_FAILED_EXIT_ENV

        stack = self.stack
        base: dict[str, Any] = job["properties"]["template"]["containers"][0]
        kept = [e for e in base.get("env") or [] if e.get("secretRef")]
        from_secrets = {e["name"] for e in kept}
        plain = _remote_jobs.worker_env(
            stack,
            # Every key (lists and tables too): the replica's own stack runs an isolated call on
            # this job as this one would.
            {**stack.container_apps_keys(), **_remote_jobs.declared_keys(stack)},
            env=stack.env,
            leave_out=_SECRET_KEYS | from_secrets,
        )
        # Container Apps retries every non-zero exit: a flow's failure exits 0 (module docstring).
        plain[FLOW_FAILED_EXIT_ENV] = "0"
        plain["KITARU_RUN"] = str(run)  # which run of the execution this replica is, for people
        args = ["worker", "run", exec_id]
        if call is not None:
            args = _remote_jobs.call_args(exec_id, call[0])
            plain[_remote_jobs.CALL_LAUNCH_ENV] = str(call[1])
        jobs_plain = {e["name"]: e.get("value", "") for e in base.get("env") or [] if not e.get("secretRef")}
        env = [*kept, *({"name": k, "value": v} for k, v in {**jobs_plain, **plain}.items())]
        container: dict[str, Any] = {
            "name": base.get("name") or CONTAINER,
            "image": _remote_jobs.execution_image(metadata, stack.image) or base.get("image"),
            "command": list(stack.worker_command),
            "args": args,
            "env": env,
        }
        resources = {**(base.get("resources") or {}), **self._resources()}
        resources = {k: v for k, v in resources.items() if k in ("cpu", "memory")}
        if resources:
            container["resources"] = resources
        return {"containers": [container]}

    async def executions(self, exec_id: str) -> list[dict[str, Any]]:
        """The job executions of this kitaru execution (their JSON), oldest first."""
        from azure.core.exceptions import ResourceNotFoundError

        name = self.job_name

        async def listed() -> list[dict[str, Any]]:
            async with self._client() as client:
                found: list[dict[str, Any]] = []
                try:
                    async for item in client.jobs_executions.list(
                        self.resource_group, name, **self._call_options()
                    ):
                        found.append(item.as_dict())
                except ResourceNotFoundError:
                    return []
                return found

        everything = await self._call(f"list the executions of the job {name}", "job", listed())
        mine = [e for e in everything if exec_id in _args(e)]
        return sorted(mine, key=lambda e: (str(_props(e).get("startTime") or ""), str(e.get("name"))))

    async def cancel(self, exec_id: str) -> None:
        """Make the cancel final in the state store, then stop the execution's running job
        executions (their replicas get SIGTERM; no retry follows)."""
        from azure.core.exceptions import HttpResponseError

        from kitaru._engine.runner import Runner

        async def stop(client: Any, execution: str) -> None:
            try:
                poller = await client.jobs.begin_stop_execution(
                    self.resource_group, name, execution, **self._call_options()
                )
                await poller.result()
            except HttpResponseError as exc:
                if exc.status_code not in (404, 409):
                    raise  # else: gone, or it finished meanwhile

        await Runner(self._runtime()).cancel(exec_id)
        name = self.job_name
        for execution in await self.executions(exec_id):
            if _props(execution).get("status") not in _LIVE:
                continue
            async with self._client() as client:
                await self._call(
                    f"stop the job execution {execution['name']}", "job", stop(client, str(execution["name"]))
                )

    async def describe(self, exec_id: str) -> str:
        """The execution's job executions, one line each."""
        found = await self.executions(exec_id)
        if not found:
            return f"no Container Apps job execution of execution {exec_id} in job {self.job_name}"
        lines = []
        for execution in found:
            props = _props(execution)
            codes = _exit_codes(execution)
            line = f"Container Apps job execution {execution.get('name')}: {props.get('status')}"
            if codes:
                line += f" (exit codes {', '.join(map(str, codes))})"
            lines.append(f"{line} [job {self.job_name}, resource group {self.resource_group}]")
        return "\n".join(lines)


#: Job execution states in which a replica may still run.
_LIVE = frozenset({"Running", "Processing", "Unknown", None})


def _props(execution: dict[str, Any]) -> dict[str, Any]:
    props: dict[str, Any] = execution.get("properties") or {}
    return props


def _args(execution: dict[str, Any]) -> list[str]:
    containers = (_props(execution).get("template") or {}).get("containers") or []
    return list(containers[0].get("args") or []) if containers else []


def _exit_codes(execution: dict[str, Any]) -> list[int]:
    """The exit codes Azure reports for the execution's replicas' containers."""
    out = []
    for replica in (_props(execution).get("detailedStatus") or {}).get("replicas") or []:
        for container in replica.get("containers") or []:
            if container.get("code") is not None:
                out.append(int(container["code"]))
    return out


def _message(exc: Any) -> str:
    """Azure's own words: ``(Code) message``."""
    error = getattr(exc, "error", None)
    if error is not None and getattr(error, "code", None):
        return f"({error.code}) {error.message}"
    return str(getattr(exc, "message", None) or exc).splitlines()[0]
