"""The Cloud Run jobs orchestrator: each execution run is one execution of a Cloud Run job whose
task runs ``kitaru worker run <exec_id>`` (see :mod:`kitaru.worker` for what it does).

The job. kitaru creates one Cloud Run job per stack configuration, named
``kitaru-<stack>-<hash>`` where the hash covers everything the job's template holds (image,
command, service account, retries, timeout, CPU, memory): a changed key gets a new job rather than
an update racing executions that are running on the old one. An execution with its own image (a
deployed version's, or its flow's ``@flow(image=...)``) runs on the job of that configuration with
its image, created on first use: a run's container overrides cannot change the image. Each run is
``run_job`` with
container overrides: ``args = ["worker", "run", <exec_id>]`` and the stack's keys as env (so the
task needs no config file). An execution's runs are found again by those args.

Retries. Cloud Run retries a failed task up to ``maxRetries`` times, whatever its exit code: it
has no per-exit-code policy like a Kubernetes pod failure policy. So the job's template sets
``KITARU_WORKER_FLOW_FAILED_EXIT=0``: a flow's own failure (recorded ``failed`` in the state store,
the source of truth) ends the task successfully and is not run again; infrastructure trouble (exit
11, a crash, a lost instance, a kill) is non-zero and retried, resuming from the journal. Exit 12
(the task can never drive the execution: a broken image or stack) stays non-zero, so the Cloud Run
execution shows failed; its retries fail fast the same way.

An isolated call (``@checkpoint(runtime="isolated")``) is an execution of its own of the same job,
started by the parent's task: ``args = ["worker", "call", <exec_id>, <call_id>]``, the same env
plus ``KITARU_CALL_LAUNCH`` (which launch of the call it runs). A resumed parent finds it again by
those (``list_executions``) instead of running the job once more; Cloud Run retries its task as
it retries an execution's.

The client is google-cloud-run's synchronous REST client (its async clients speak gRPC only),
created per call and run on a worker thread. Credentials: the stack's ``credentials_file``, else
Application Default Credentials; ``anonymous = true`` sends none (an emulator).
"""

from __future__ import annotations

import datetime
import hashlib
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from kitaru.errors import (
    KitaruConfigError,
    KitaruError,
    KitaruMissingDependencyError,
    KitaruStoreError,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    from kitaru._engine.flow import Flow
    from kitaru._engine.runtime import Runtime

    from . import GcpStack

__all__ = ["CONTAINER", "CloudRunOrchestrator", "job_id"]

T = TypeVar("T")

CONTAINER = "worker"
_SCOPES = ["https://www.googleapis.com/auth/cloud-platform"]
#: Seconds to wait for the job's creation (a long-running operation).
_CREATE_TIMEOUT = 300


def job_id(stack: str, template: dict[str, Any]) -> str:
    """The Cloud Run job of a stack configuration: lowercase letters, digits and hyphens, short
    enough (49) that its executions' names (``<job>-xxxxx``) stay within 63 characters."""
    slug = re.sub(r"[^a-z0-9]+", "-", stack.lower()).strip("-")[:24].strip("-") or "stack"
    digest = hashlib.sha256(repr(sorted(template.items())).encode()).hexdigest()[:10]
    return f"kitaru-{slug}-{digest}"


class CloudRunOrchestrator:
    """Runs each execution of a gcp stack as Cloud Run job executions (see the module docstring)."""

    def __init__(self, stack: GcpStack) -> None:
        self.stack = stack
        #: The jobs known to exist (created or found) this process, by name.
        self._jobs_ready: set[str] = set()

    def __repr__(self) -> str:
        return f"<CloudRunOrchestrator {self.stack.name} {self.location}>"

    # -- the API ------------------------------------------------------------------------------------

    @property
    def project(self) -> str:
        project = self.stack.options.get("project")
        if project:
            return str(project)
        return self._credentials()[1]

    @property
    def location(self) -> str:
        return f"projects/{self.project}/locations/{self.stack.region}"

    def _credentials(self) -> tuple[Any, str]:
        """The credentials and the project they name (Application Default Credentials unless the
        stack says otherwise)."""
        stack = self.stack
        project = str(stack.options.get("project") or "")
        if stack.options.get("anonymous"):
            from google.auth.credentials import AnonymousCredentials

            return AnonymousCredentials(), project  # type: ignore[no-untyped-call]
        path = stack.options.get("credentials_file")
        if path:
            from google.oauth2 import service_account

            try:
                creds = service_account.Credentials.from_service_account_file(str(path), scopes=_SCOPES)  # type: ignore[no-untyped-call]
            except (OSError, ValueError) as exc:
                raise KitaruConfigError(
                    f"stack {stack.name!r}: cannot read the service account key `credentials_file` = "
                    f"{path!r}: {exc}. Point the key at a JSON key file, or remove it to use Application "
                    "Default Credentials."
                ) from exc
            return creds, project or str(getattr(creds, "project_id", "") or "")
        import google.auth
        from google.auth.exceptions import DefaultCredentialsError

        try:
            creds, found = google.auth.default(scopes=_SCOPES)
        except DefaultCredentialsError as exc:
            raise KitaruConfigError(
                f"stack {stack.name!r}: no Google credentials to run Cloud Run jobs with ({exc}). Run "
                "`gcloud auth application-default login`, or set the stack's `credentials_file` key."
            ) from exc
        project = project or str(found or "")
        if not project:
            raise KitaruConfigError(
                f"stack {stack.name!r}: no project to run Cloud Run jobs in: the credentials name none. "
                f'Set `project = "PROJECT_ID"` in its table (`kitaru stack show {stack.name}`).'
            )
        return creds, project

    def _clients(self) -> Any:
        """google-cloud-run's ``run_v2`` module, and the keyword arguments of its clients."""
        run_v2 = _run_v2()
        creds, _ = self._credentials()
        options: dict[str, Any] = {}
        if self.stack.run_endpoint_url:
            options["api_endpoint"] = self.stack.run_endpoint_url
        return run_v2, {"transport": "rest", "credentials": creds, "client_options": options}

    async def _call(self, what: str, fn: Callable[[], T]) -> T:
        """Run a blocking client call on a worker thread; map the cloud's errors to kitaru's."""
        import anyio.to_thread
        from google.api_core import exceptions as gexc

        try:
            return await anyio.to_thread.run_sync(fn)
        except gexc.GoogleAPICallError as exc:
            raise _api_error(self.stack, what, exc) from exc
        except gexc.RetryError as exc:
            raise KitaruStoreError(
                f"stack {self.stack.name!r}: Cloud Run did not answer to {what} in time ({exc}). "
                "Check the service's status and submit again (`kitaru executions resume ID`)."
            ) from exc
        except OSError as exc:
            raise KitaruConfigError(
                f"stack {self.stack.name!r}: the Cloud Run API cannot be reached to {what} "
                f"({type(exc).__name__}: {exc}). Check the network and the stack's `region` key."
            ) from exc
        except Exception as exc:
            # requests' ConnectionError is not an OSError subclass everywhere (urllib3 wraps it).
            if type(exc).__module__.startswith(("requests", "urllib3", "google.auth")):
                raise KitaruConfigError(
                    f"stack {self.stack.name!r}: the Cloud Run API cannot be reached to {what} "
                    f"({type(exc).__name__}: {exc}). Check the network, credentials and the stack's "
                    "`region` key."
                ) from exc
            raise

    def _runtime(self) -> Runtime:
        from kitaru._engine.runtime import get_runtime

        return get_runtime(self.stack.name)

    # -- the job ------------------------------------------------------------------------------------

    def _image(self, metadata: Mapping[str, Any]) -> str | None:
        """The image an execution runs on (see :func:`kitaru._remote_jobs.execution_image`)."""
        from kitaru import _remote_jobs

        return _remote_jobs.execution_image(metadata, self.stack.image)

    def _template(self, metadata: Mapping[str, Any] = {}) -> dict[str, Any]:
        """What the job's template holds, from the stack's keys and the image of the execution
        whose ``metadata`` is given (also what its name hashes)."""
        stack = self.stack
        return {
            "image": self._image(metadata),
            "command": tuple(stack.worker_command),
            "service_account": stack.service_account,
            "max_retries": stack.max_retries,
            "task_timeout": stack.task_timeout,
            "cpu": stack.cpu,
            "memory": stack.memory,
        }

    @property
    def job_name(self) -> str:
        """The job of the stack's own configuration (its ``image``)."""
        return self.job_name_of({})

    def job_name_of(self, metadata: Mapping[str, Any]) -> str:
        """The job the execution whose ``metadata`` is given runs on (its image's)."""
        return f"{self.location}/jobs/{job_id(self.stack.name, self._template(metadata))}"

    def job_body(self, metadata: Mapping[str, Any] = {}) -> Any:
        """The Cloud Run job the runs of the stack's executions on one image execute (one task,
        the worker's container): the image of the execution whose ``metadata`` is given."""
        from kitaru.worker import FLOW_FAILED_EXIT_ENV

        run_v2 = _run_v2()
        stack = self.stack
        limits = {k: v for k, v in (("cpu", stack.cpu), ("memory", stack.memory)) if v}
        container = run_v2.Container(
            name=CONTAINER,
            image=self._image(metadata),
            command=list(stack.worker_command),
            # Cloud Run retries every non-zero exit: a flow's failure exits 0 (module docstring).
            env=[run_v2.EnvVar(name=FLOW_FAILED_EXIT_ENV, value="0")],
            resources=run_v2.ResourceRequirements(limits=limits) if limits else None,
        )
        task = run_v2.TaskTemplate(
            containers=[container],
            max_retries=stack.max_retries,
            timeout=datetime.timedelta(seconds=stack.task_timeout),
            service_account=stack.service_account or "",
        )
        return run_v2.Job(
            labels={"managed-by": "kitaru"},
            template=run_v2.ExecutionTemplate(task_count=1, parallelism=1, template=task),
        )

    async def _ensure_job(self, metadata: Mapping[str, Any] = {}) -> None:
        """Create the job of the execution whose ``metadata`` is given (its image's; the stack's
        by default) unless it exists (a 409 means another submitter just did)."""
        name = self.job_name_of(metadata)
        if name in self._jobs_ready:
            return
        from google.api_core import exceptions as gexc

        run_v2, kw = self._clients()

        def ensure() -> None:
            jobs = run_v2.JobsClient(**kw)
            try:
                jobs.get_job(name=name)
                return
            except gexc.NotFound:
                pass
            try:
                jobs.create_job(
                    parent=self.location, job=self.job_body(metadata), job_id=name.rsplit("/", 1)[1]
                ).result(timeout=_CREATE_TIMEOUT)
            except gexc.AlreadyExists:
                pass

        await self._call(f"create the job {name}", ensure)
        self._jobs_ready.add(name)

    # -- code ---------------------------------------------------------------------------------------

    async def prepare(self, flow: Flow[Any, Any]) -> dict[str, Any]:
        """Ship ``flow``'s code for a new execution (``code = "archive"``); a deployed version
        ships nothing (see :func:`kitaru._remote_jobs.prepare`)."""
        from kitaru import _remote_jobs

        return await _remote_jobs.prepare(self._runtime(), self.stack.code, flow, "its Cloud Run job")

    # -- the seam -----------------------------------------------------------------------------------

    async def submit(self, exec_id: str) -> None:
        """Run the stack's job once more, for this execution (None: it runs there).

        KitaruStateError when the execution cannot be driven (completed, cancelled), and
        KitaruLeaseError when a live runner drives it already (its task is running)."""
        from kitaru import _remote_jobs

        runtime = self._runtime()
        record = await _remote_jobs.check_submittable(
            runtime, exec_id, f"its Cloud Run task goes on (`kitaru executions describe {exec_id}` names it)"
        )
        await _remote_jobs.ensure_code(runtime, self.stack.code, exec_id, record.metadata)
        run = len(await runtime.astate.read_journal(exec_id))
        await self._run(record.metadata, ["worker", "run", exec_id], self._env(run))

    async def _run(self, metadata: Mapping[str, Any], args: list[str], env: dict[str, str]) -> None:
        """Run the job of the execution whose ``metadata`` is given, once, with these args and env."""
        await self._ensure_job(metadata)
        name = self.job_name_of(metadata)
        run_v2, kw = self._clients()
        overrides = run_v2.RunJobRequest.Overrides(
            container_overrides=[
                run_v2.RunJobRequest.Overrides.ContainerOverride(
                    name=CONTAINER,
                    args=args,
                    env=[run_v2.EnvVar(name=k, value=v) for k, v in env.items()],
                )
            ],
            task_count=1,
        )
        request = run_v2.RunJobRequest(name=name, overrides=overrides)
        # The operation ends when the execution does: its metadata names the execution, which is
        # all the submitter needs (the state store tells how the run went).
        await self._call(
            f"run the job {name}", lambda: run_v2.JobsClient(**kw).run_job(request=request).metadata
        )

    # -- isolated calls -----------------------------------------------------------------------------

    def call_job_name(self, exec_id: str, call_id: str, launch: int = 1) -> str:
        """How people find launch ``launch`` of isolated call ``call_id``: by its args and env."""
        from kitaru import _remote_jobs

        args = " ".join(_remote_jobs.call_args(exec_id, call_id))
        return f"Cloud Run execution with args `{args}` and {_remote_jobs.CALL_LAUNCH_ENV}={launch}"

    async def submit_call(self, exec_id: str, call_id: str, launch: int = 1) -> None:
        """Run the execution's job once for launch ``launch`` of isolated call ``call_id``
        (``kitaru worker call``), with the execution's image and env; nothing when that launch
        has a Cloud Run execution already (a parent resumed after a restart)."""
        from kitaru import _remote_jobs

        runtime = self._runtime()
        record = await _remote_jobs.call_submittable(runtime, exec_id)
        if await self._call_executions(record.metadata, exec_id, call_id, launch):
            return
        await _remote_jobs.ensure_code(runtime, self.stack.code, exec_id, record.metadata)
        env = self._env(len(await runtime.astate.read_journal(exec_id)))
        env[_remote_jobs.CALL_LAUNCH_ENV] = str(launch)
        await self._run(record.metadata, _remote_jobs.call_args(exec_id, call_id), env)

    async def call_state(self, exec_id: str, call_id: str, launch: int = 1) -> Any:
        """What the Cloud Run execution of launch ``launch`` of isolated call ``call_id`` is doing
        (a :class:`kitaru._remote_jobs.CallState`; a failed one's reason is its condition's)."""
        from kitaru._remote_jobs import CallState

        record = await self._runtime().astate.get_execution(exec_id)
        found = await self._call_executions(record.metadata if record else {}, exec_id, call_id, launch)
        if not found:
            return CallState("missing")
        state = _state(found[-1])
        if state == "succeeded":
            return CallState("succeeded")
        if state in ("failed", "cancelled"):
            reason = next(
                (c.message for c in found[-1].conditions if c.type_ == "Completed" and c.message), state
            )
            return CallState("failed", f"Cloud Run execution {found[-1].name.rsplit('/', 1)[1]}: {reason}")
        return CallState("running")

    async def _call_executions(
        self, metadata: Mapping[str, Any], exec_id: str, call_id: str, launch: int
    ) -> list[Any]:
        """The Cloud Run executions of launch ``launch`` of the call, oldest first."""
        from google.api_core import exceptions as gexc

        from kitaru import _remote_jobs

        run_v2, kw = self._clients()
        parent = self.job_name_of(metadata)
        args = _remote_jobs.call_args(exec_id, call_id)

        def mine(e: Any) -> bool:
            if not e.template.containers or list(e.template.containers[0].args) != args:
                return False
            env = {v.name: v.value for v in e.template.containers[0].env}
            return env.get(_remote_jobs.CALL_LAUNCH_ENV) == str(launch)

        def listed() -> list[Any]:
            try:
                found = list(run_v2.ExecutionsClient(**kw).list_executions(parent=parent))
            except gexc.NotFound:
                return []
            return sorted((e for e in found if mine(e)), key=lambda e: (e.create_time, e.name))

        return await self._call(f"list the executions of {parent}", listed)

    def _env(self, run: int) -> dict[str, str]:
        """The worker's environment: the stack by name and its keys, then the stack's ``env``."""
        from kitaru import _remote_jobs

        # Every key (lists and tables too): the task's own stack runs an isolated call on this job.
        keys = {**self.stack.cloud_run_keys(), **_remote_jobs.declared_keys(self.stack)}
        env = _remote_jobs.worker_env(self.stack, keys, env=self.stack.env)
        env["KITARU_RUN"] = str(run)  # which run of the execution this task is, for people reading it
        return env

    async def executions(self, exec_id: str) -> list[Any]:
        """The Cloud Run executions of this kitaru execution (``run_v2.Execution``), oldest first."""
        from google.api_core import exceptions as gexc

        run_v2, kw = self._clients()
        parent = await self._job_of(exec_id)

        def listed() -> list[Any]:
            try:
                found = list(run_v2.ExecutionsClient(**kw).list_executions(parent=parent))
            except gexc.NotFound:
                return []
            mine = [e for e in found if e.template.containers and exec_id in e.template.containers[0].args]
            return sorted(mine, key=lambda e: (e.create_time, e.name))

        return await self._call(f"list the executions of {parent}", listed)

    async def _job_of(self, exec_id: str) -> str:
        """The job an execution's runs went to (its image's; the stack's if it is unknown)."""
        record = await self._runtime().astate.get_execution(exec_id)
        return self.job_name_of(record.metadata if record is not None else {})

    async def cancel(self, exec_id: str) -> None:
        """Make the cancel final in the state store, then cancel the execution's running Cloud Run
        executions (the task gets SIGTERM; no retry follows)."""
        from google.api_core import exceptions as gexc

        from kitaru._engine.runner import Runner

        await Runner(self._runtime()).cancel(exec_id)
        run_v2, kw = self._clients()
        for execution in await self.executions(exec_id):
            if execution.completion_time:
                continue

            def stop(name: str = execution.name) -> None:
                try:
                    run_v2.ExecutionsClient(**kw).cancel_execution(name=name)
                except (gexc.NotFound, gexc.FailedPrecondition):
                    pass  # gone, or it finished meanwhile

            await self._call(f"cancel the execution {execution.name}", stop)

    async def describe(self, exec_id: str) -> str:
        """The execution's Cloud Run executions, one line each."""
        found = await self.executions(exec_id)
        job = (await self._job_of(exec_id)).rsplit("/", 1)[1]
        if not found:
            return f"no Cloud Run execution of execution {exec_id} in job {job}"
        return "\n".join(
            f"Cloud Run execution {e.name.rsplit('/', 1)[1]}: {_state(e)} (retried {e.retried_count}, "
            f"job {job}, region {self.stack.region})"
            for e in found
        )


def _run_v2() -> Any:
    try:
        from google.cloud import run_v2
    except ImportError as exc:
        raise KitaruMissingDependencyError(
            "the gcp stack runs flows as Cloud Run jobs with google-cloud-run: `pip install 'kitaru[gcp]'`."
        ) from exc
    return run_v2


def _state(execution: Any) -> str:
    """``succeeded``, ``failed``, ``cancelled`` once finished, else ``running``/``pending``."""
    if execution.completion_time:
        if execution.cancelled_count:
            return "cancelled"
        return "succeeded" if execution.succeeded_count else "failed"
    if execution.cancelled_count:
        return "cancelling"
    return "running" if execution.running_count else "pending"


def _api_error(stack: GcpStack, what: str, exc: Any) -> KitaruError:
    """The cloud's refusal, with the key that fixes it."""
    from google.api_core import exceptions as gexc

    message = f"stack {stack.name!r}: Cloud Run refused to {what}: {exc.code} {exc.message}"
    if isinstance(exc, gexc.PermissionDenied | gexc.Unauthorized | gexc.Forbidden):
        project = stack.options.get("project") or "PROJECT"
        return KitaruConfigError(
            f"{message}. The credentials lack a permission: they need roles/run.developer on project "
            f"{project} and roles/iam.serviceAccountUser "
            "on the job's identity, the stack's `service_account` key (`gcloud projects "
            "get-iam-policy PROJECT`)."
        )
    if isinstance(exc, gexc.InvalidArgument):
        return KitaruConfigError(
            f"{message}. Check the stack's `image`, `cpu`, `memory`, `task_timeout` and "
            "`service_account` keys (`kitaru stack show NAME`)."
        )
    if isinstance(exc, gexc.NotFound):
        return KitaruConfigError(
            f"{message}. Check the stack's `project` and `region` keys (`gcloud run jobs list "
            "--region REGION`)."
        )
    return KitaruStoreError(f"{message}. Check the service (`gcloud run jobs list`) and submit again.")
