"""The kubernetes orchestrator: one ``batch/v1`` Job per execution run, each running
``kitaru worker run <exec_id>`` (see :mod:`kitaru.worker` for what the pod does and its exit codes).

Naming decides races. A run's Job is named from the execution id and a run counter, the length
of the execution's journal when it was submitted: every submitter that sees the same journal
derives the same name, so two answers (or a recover and an answer) racing to submit create one
Job, and the loser's ``409 AlreadyExists`` means someone else did it. Each run that needs a new
Job follows a write to the journal (an answer, a failure, a suspension), so the counter moves on.
The rare run that follows no write (a resume that only re-suspended, then a deadline passed) finds
a *finished* Job under its name, and takes the next suffix.

An isolated call (``@checkpoint(runtime="isolated")``) is a Job of its own, running ``kitaru
worker call <exec_id> <call_id>`` with the execution's image, environment, code and secrets, named
for the call and its launch (:func:`call_job_name`): the parent that resumes after a kill derives
the same name, and its create's ``409 AlreadyExists`` means the Job runs already; it waits for that
Job (see :mod:`kitaru._engine.isolated`).

The API client is created per call (kubernetes-asyncio on the caller's loop, closed after), from
the stack's ``kubeconfig``/``context``, ``$KUBECONFIG`` or ``~/.kube/config``, else the pod's
in-cluster service account.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kitaru.errors import (
    KitaruConfigError,
    KitaruError,
    KitaruMissingDependencyError,
    KitaruNotFoundError,
    KitaruStateError,
)

if TYPE_CHECKING:
    from kitaru._engine.flow import Flow
    from kitaru._engine.runtime import Runtime

    from . import KubernetesStack

__all__ = [
    "CALL_LABEL",
    "CONTAINER",
    "EXECUTION_LABEL",
    "FLOW_LABEL",
    "RUN_LABEL",
    "VERSION_LABEL",
    "KubernetesOrchestrator",
    "call_job_name",
    "job_name",
    "label_value",
]

#: The labels linking a Job (and its pods) to its execution and flow: find an execution's Jobs
#: with ``kubectl get jobs -l kitaru.dev/execution=<exec_id>``.
EXECUTION_LABEL = "kitaru.dev/execution"
FLOW_LABEL = "kitaru.dev/flow"
RUN_LABEL = "kitaru.dev/run"
#: The deployed version an execution runs (``flow.deploy()``), on its Jobs: ``kubectl get jobs
#: -l kitaru.dev/flow=review,kitaru.dev/version=3``.
VERSION_LABEL = "kitaru.dev/version"
MANAGED_BY = ("app.kubernetes.io/managed-by", "kitaru")
#: The annotation holding the exact execution id (labels are limited to 63 safe characters).
EXECUTION_ANNOTATION = "kitaru.dev/execution-id"
#: On an isolated call's Job: the call (``kubectl get jobs -l kitaru.dev/call=isolated``), and the
#: exact call id as an annotation.
CALL_LABEL = "kitaru.dev/call"
CALL_ANNOTATION = "kitaru.dev/call-id"
CONTAINER = "worker"

_LABEL_VALUE = re.compile(r"[A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?")
_MAX_SUFFIXES = 8
#: Ids kitaru makes (kitaru._ids.new_id: 26 characters of Crockford's base32, upper case).
_KITARU_ID = re.compile(r"[0-9A-Z]{26}")


def label_value(text: str) -> str:
    """``text`` as a label value: itself when it is one (ULID execution ids are), else a readable
    part of it plus a hash, so distinct texts never share a value."""
    if _LABEL_VALUE.fullmatch(text):
        return text
    digest = hashlib.sha256(text.encode()).hexdigest()[:10]
    readable = re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-._")[:40].strip("-._")
    return f"{readable}-{digest}" if readable else digest


def _slug(exec_id: str) -> str:
    if _KITARU_ID.fullmatch(exec_id):
        return exec_id.lower()  # kitaru's own ids are one case: lowercasing keeps them apart
    # A caller's id (an idempotency key): a readable part plus a hash of the exact id, so ids
    # differing only in case or punctuation get different Jobs.
    readable = re.sub(r"[^a-z0-9]+", "-", exec_id.lower()).strip("-")[:20].strip("-")
    digest = hashlib.sha256(exec_id.encode()).hexdigest()[:8]
    return f"{readable}-{digest}" if readable else digest


def job_name(exec_id: str, run: int, suffix: int = 1) -> str:
    """The Job of run ``run`` of execution ``exec_id``: a DNS-1123 label short enough that its
    pods' names (``<job>-xxxxx``) and its ``job-name`` label stay within 63 characters."""
    name = f"kitaru-{_slug(exec_id)}-{run}"
    return name if suffix == 1 else f"{name}-{suffix}"


#: The longest Job name whose pods' names (``<job>-xxxxx``) stay within 63 characters.
_MAX_JOB_NAME = 57


def call_job_name(exec_id: str, call_id: str, launch: int = 1) -> str:
    """The Job of launch ``launch`` of isolated call ``call_id``: the execution's slug, a readable
    part of the call id and a hash of all three (``kitaru-<exec>-<call>-<hash>``), within
    :data:`_MAX_JOB_NAME` characters. The hash ends in a hex digit and never collides with a
    run's Job (``kitaru-<exec>-<run>``)."""
    from kitaru._remote_jobs import call_key, call_slug

    head, digest = f"kitaru-{_slug(exec_id)}", call_key(exec_id, call_id, launch)[:8]
    room = _MAX_JOB_NAME - len(head) - len(digest) - 2
    return f"{head}-{call_slug(call_id, max(room, 1))}-{digest}"


class KubernetesOrchestrator:
    """Runs each execution of a kubernetes stack as Kubernetes Jobs (see the module docstring)."""

    def __init__(self, stack: KubernetesStack) -> None:
        self.stack = stack

    def __repr__(self) -> str:
        return f"<KubernetesOrchestrator {self.stack.name} ns={self.stack.namespace}>"

    # -- the API ------------------------------------------------------------------------------

    @asynccontextmanager
    async def _api(self) -> AsyncIterator[Any]:
        """An API client of the stack's cluster, closed on exit."""
        try:
            from kubernetes_asyncio import client, config
        except ImportError as exc:
            raise KitaruMissingDependencyError(
                "the kubernetes stack needs kubernetes-asyncio: `pip install 'kitaru[kubernetes]'`."
            ) from exc
        stack = self.stack
        path = self._config_file()
        if path is not None:
            try:
                api = await config.new_client_from_config(
                    config_file=path, context=stack.context, persist_config=False
                )
            except Exception as exc:
                raise KitaruConfigError(
                    f"stack {stack.name!r}: cannot use the kubeconfig {path}"
                    f"{f' (context {stack.context!r})' if stack.context else ''}: {exc}. Check the "
                    "stack's `kubeconfig` and `context` keys (`kubectl config get-contexts`)."
                ) from exc
        else:
            configuration = client.Configuration()
            try:
                config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
            except config.ConfigException as exc:
                raise KitaruConfigError(
                    f"stack {stack.name!r}: no kubeconfig (the `kubeconfig` key, $KUBECONFIG, "
                    f"~/.kube/config) and not inside a cluster ({exc}). Set the stack's "
                    "`kubeconfig` key (`kitaru stack show NAME` shows the stack's keys)."
                ) from exc
            api = client.ApiClient(configuration=configuration)
        import aiohttp

        try:
            yield api
        except (aiohttp.ClientError, OSError) as exc:
            raise KitaruConfigError(
                f"stack {stack.name!r}: the Kubernetes API at {api.configuration.host} cannot be "
                f"reached ({type(exc).__name__}: {exc}). Check the cluster and the stack's "
                "`kubeconfig`/`context` keys (`kubectl cluster-info`)."
            ) from exc
        finally:
            await api.close()

    def _config_file(self) -> str | None:
        """The kubeconfig to use: the stack's key, ``$KUBECONFIG``, ``~/.kube/config``, else None
        (then the in-cluster service account)."""
        path = self.stack.kubeconfig or os.environ.get("KUBECONFIG", "").split(os.pathsep)[0] or None
        if path is not None:
            return os.path.expanduser(path)
        default = Path("~/.kube/config").expanduser()
        return str(default) if default.is_file() else None

    def _runtime(self) -> Runtime:
        from kitaru._engine.runtime import get_runtime

        return get_runtime(self.stack.name)

    # -- code ---------------------------------------------------------------------------------

    async def prepare(self, flow: Flow[Any, Any]) -> dict[str, Any]:
        """Ship ``flow``'s code for a new execution (``code = "archive"``); a deployed version
        ships nothing (see :func:`kitaru._remote_jobs.prepare`)."""
        from kitaru import _remote_jobs

        return await _remote_jobs.prepare(self._runtime(), self.stack.code, flow, "its Job")

    # -- the seam -------------------------------------------------------------------------------

    async def submit(self, exec_id: str) -> None:
        """Start a Job that drives the execution on from its journal (None: it runs there).

        KitaruStateError when the execution cannot be driven (completed, cancelled), and
        KitaruLeaseError when a live runner drives it already (its Job is running)."""
        from kitaru import _remote_jobs

        runtime = self._runtime()
        for suffix in range(1, _MAX_SUFFIXES + 1):
            record = await _remote_jobs.check_submittable(
                runtime, exec_id, f"its Job goes on (`kitaru executions logs {exec_id} --pod` shows it)"
            )
            await _remote_jobs.ensure_code(runtime, self.stack.code, exec_id, record.metadata)
            run = len(await runtime.astate.read_journal(exec_id))
            body = self.job_manifest(
                exec_id,
                record.flow,
                run,
                suffix,
                version=_version(record.metadata),
                image=record.metadata.get("image"),
            )
            if await self._create(body):
                return
            # 409: the Job of this run exists. Running, or about to: someone else submitted it.
            existing = await self._read_job(body["metadata"]["name"])
            if existing is None or not _finished(existing):
                return
        raise KitaruStateError(
            f"execution {exec_id}: {_MAX_SUFFIXES} Jobs of its run finished without moving it on. "
            f"See `kitaru executions get {exec_id}` and `kubectl get jobs -l "
            f"{EXECUTION_LABEL}={label_value(exec_id)}`."
        )

    # -- isolated calls ---------------------------------------------------------------------------

    def call_job_name(self, exec_id: str, call_id: str, launch: int = 1) -> str:
        """The Job running launch ``launch`` of isolated call ``call_id`` (see :func:`call_job_name`)."""
        return call_job_name(exec_id, call_id, launch)

    async def submit_call(self, exec_id: str, call_id: str, launch: int = 1) -> None:
        """Start the Job running launch ``launch`` of isolated call ``call_id`` (``kitaru worker
        call``), with the execution's image, environment, code and secrets. A Job of that name
        existing already (409) is that launch's, started by a parent before a restart: nothing
        more is started."""
        from kitaru import _remote_jobs

        runtime = self._runtime()
        record = await _remote_jobs.call_submittable(runtime, exec_id)
        await _remote_jobs.ensure_code(runtime, self.stack.code, exec_id, record.metadata)
        run = len(await runtime.astate.read_journal(exec_id))
        body = self.job_manifest(
            exec_id,
            record.flow,
            run,
            version=_version(record.metadata),
            image=record.metadata.get("image"),
            call=(call_id, launch),
        )
        await self._create(body)  # False: it exists, and that is the one to wait for

    async def call_state(self, exec_id: str, call_id: str, launch: int = 1) -> Any:
        """What the Job of launch ``launch`` of isolated call ``call_id`` is doing (a
        :class:`kitaru._remote_jobs.CallState`; a failed Job's reason is its condition's)."""
        from kitaru._remote_jobs import CallState

        job = await self._read_job(call_job_name(exec_id, call_id, launch))
        if job is None:
            return CallState("missing")
        verdict = _finished(job)
        if verdict == "complete":
            return CallState("succeeded")
        if verdict == "failed":
            return CallState("failed", _failure(job))
        return CallState("running")

    async def _create(self, body: dict[str, Any]) -> bool:
        """Create the Job; False when one of that name exists already."""
        from kubernetes_asyncio import client
        from kubernetes_asyncio.client.exceptions import ApiException

        async with self._api() as api:
            try:
                # A plain dict is sent as it is (the client serialises dicts unchanged).
                await client.BatchV1Api(api).create_namespaced_job(self.stack.namespace, body)  # type: ignore[arg-type]
            except ApiException as exc:
                if exc.status == 409:
                    return False
                raise _api_error(self.stack.name, "create the Job", exc) from exc
        return True

    async def _read_job(self, name: str) -> dict[str, Any] | None:
        from kubernetes_asyncio import client
        from kubernetes_asyncio.client.exceptions import ApiException

        async with self._api() as api:
            try:
                job = await client.BatchV1Api(api).read_namespaced_job(name, self.stack.namespace)
            except ApiException as exc:
                if exc.status == 404:
                    return None
                raise _api_error(self.stack.name, f"read Job {name}", exc) from exc
            return api.sanitize_for_serialization(job)  # type: ignore[no-any-return]

    async def jobs(self, exec_id: str) -> list[dict[str, Any]]:
        """The execution's Jobs (as JSON objects), oldest run first."""
        from kubernetes_asyncio import client
        from kubernetes_asyncio.client.exceptions import ApiException

        async with self._api() as api:
            try:
                found = await client.BatchV1Api(api).list_namespaced_job(
                    self.stack.namespace, label_selector=f"{EXECUTION_LABEL}={label_value(exec_id)}"
                )
            except ApiException as exc:
                raise _api_error(self.stack.name, "list the execution's Jobs", exc) from exc
            jobs: list[dict[str, Any]] = api.sanitize_for_serialization(found).get("items") or []
        jobs = [j for j in jobs if _annotation(j, EXECUTION_ANNOTATION) == exec_id]
        return sorted(jobs, key=lambda j: (int(j["metadata"]["labels"].get(RUN_LABEL, "0")), _name(j)))

    async def cancel(self, exec_id: str) -> None:
        """Make the cancel final in the state store, then delete the execution's Jobs (their pods
        go with them, ``propagationPolicy: Background``)."""
        from kubernetes_asyncio import client
        from kubernetes_asyncio.client.exceptions import ApiException

        from kitaru._engine.runner import Runner

        await Runner(self._runtime()).cancel(exec_id)
        jobs = await self.jobs(exec_id)
        async with self._api() as api:
            batch = client.BatchV1Api(api)
            for job in jobs:
                try:
                    await batch.delete_namespaced_job(
                        job["metadata"]["name"],
                        self.stack.namespace,
                        body=client.V1DeleteOptions(propagation_policy="Background"),
                    )
                except ApiException as exc:
                    if exc.status != 404:
                        raise _api_error(self.stack.name, "delete the execution's Job", exc) from exc

    async def describe(self, exec_id: str) -> str:
        """The execution's Jobs and their pods, one line each."""
        jobs = await self.jobs(exec_id)
        if not jobs:
            return f"no Job of execution {exec_id} in namespace {self.stack.namespace}"
        lines = []
        for job in jobs:
            status = job.get("status") or {}
            state = _finished(job) or ("running" if status.get("active") else "pending")
            lines.append(
                f"Job {job['metadata']['name']}: {state} (active {status.get('active', 0)}, "
                f"succeeded {status.get('succeeded', 0)}, failed {status.get('failed', 0)})"
            )
            for pod in await self._pods(job["metadata"]["name"]):
                lines.append(f"  pod {pod['metadata']['name']}: {(pod.get('status') or {}).get('phase')}")
        return "\n".join(lines)

    async def _pods(self, job: str) -> list[dict[str, Any]]:
        from kubernetes_asyncio import client

        async with self._api() as api:
            found = await client.CoreV1Api(api).list_namespaced_pod(
                self.stack.namespace, label_selector=f"job-name={job}"
            )
            pods: list[dict[str, Any]] = api.sanitize_for_serialization(found).get("items") or []
        return sorted(pods, key=lambda p: (p["metadata"].get("creationTimestamp") or "", _name(p)))

    async def pod_logs(self, exec_id: str, *, follow: bool = False) -> AsyncIterator[str]:
        """The log of the latest pod of the execution's latest Job, line by line; with
        ``follow``, until the pod's container exits."""
        from kubernetes_asyncio import client
        from kubernetes_asyncio.client.exceptions import ApiException

        every = await self.jobs(exec_id)
        # The execution's own runs; an isolated call's Job only when there is nothing else.
        jobs = [j for j in every if CALL_LABEL not in (j["metadata"].get("labels") or {})] or every
        if not jobs:
            raise KitaruNotFoundError(
                f"execution {exec_id} has no Job in namespace {self.stack.namespace} (finished Jobs "
                f"go after ttl_seconds_after_finished = {self.stack.ttl_seconds_after_finished} s)."
            )
        pods = await self._pods(jobs[-1]["metadata"]["name"])
        if not pods:
            raise KitaruNotFoundError(f"Job {jobs[-1]['metadata']['name']} has no pod (yet).")
        pod = pods[-1]["metadata"]["name"]
        async with self._api() as api:
            core = client.CoreV1Api(api)
            try:
                if not follow:
                    text = await core.read_namespaced_pod_log(pod, self.stack.namespace, container=CONTAINER)
                    for line in str(text).splitlines():
                        yield line
                    return
                response: Any = await core.read_namespaced_pod_log(
                    pod, self.stack.namespace, container=CONTAINER, follow=True, _preload_content=False
                )
                try:
                    async for raw in response.content:
                        yield raw.decode(errors="replace").rstrip("\n")
                finally:
                    response.release()
            except ApiException as exc:
                raise _api_error(self.stack.name, f"read the log of pod {pod}", exc) from exc

    # -- the Job --------------------------------------------------------------------------------

    def job_manifest(
        self,
        exec_id: str,
        flow: str,
        run: int,
        suffix: int = 1,
        *,
        version: dict[str, Any] | None = None,
        image: str | None = None,
        call: tuple[str, int] | None = None,
    ) -> dict[str, Any]:
        """The ``batch/v1`` Job of run ``run`` of the execution. An execution of a deployed
        ``version`` (its ``metadata["deployment"]``) runs on the version's image, every run of
        it, whatever the stack's ``image`` is now; its Jobs carry the version as a label.
        ``image``: the flow's own (``@flow(image=...)``, its ``metadata["image"]``), over the
        stack's. ``call``: ``(call_id, launch)`` of an isolated call, for the Job that runs it
        (``kitaru worker call``; named by :func:`call_job_name`, labelled with the call), the
        same in everything else."""
        from kitaru import _remote_jobs
        from kitaru.worker import DEPLOYMENT_METADATA, EXIT_CANNOT_RUN, EXIT_FLOW_FAILED

        stack = self.stack
        image = _remote_jobs.execution_image(
            {DEPLOYMENT_METADATA: version or {}, "image": image}, stack.image
        )
        if not image:
            raise KitaruConfigError(
                f"stack {stack.name!r} has no `image`: the Jobs need the image that runs the worker "
                "(Python with kitaru and the flows' dependencies; see stacks/kubernetes/README.md). "
                f'Set `image = "REGISTRY/IMAGE:TAG"` in its table (`kitaru stack show {stack.name}`).'
            )
        labels = {
            **stack.labels,
            MANAGED_BY[0]: MANAGED_BY[1],
            EXECUTION_LABEL: label_value(exec_id),
            FLOW_LABEL: label_value(flow),
            RUN_LABEL: str(run),
        }
        if version and version.get("version") is not None:
            labels[VERSION_LABEL] = str(version["version"])
        annotations = {**stack.annotations, EXECUTION_ANNOTATION: exec_id, "kitaru.dev/flow-name": flow}
        args = ["worker", "run", exec_id]
        name = job_name(exec_id, run, suffix)
        if call is not None:
            from kitaru._remote_jobs import call_args

            labels[CALL_LABEL] = label_value(call[0])
            annotations[CALL_ANNOTATION] = call[0]
            args = call_args(exec_id, call[0])
            name = call_job_name(exec_id, *call)
        container: dict[str, Any] = {
            "name": CONTAINER,
            "image": image,
            "command": [*stack.worker_command, *args],
            "env": self._env(),
        }
        if stack.env_from_secrets:
            container["envFrom"] = [{"secretRef": {"name": name}} for name in stack.env_from_secrets]
        if stack.resources:
            container["resources"] = stack.resources
        if stack.image_pull_policy:
            container["imagePullPolicy"] = stack.image_pull_policy
        pod: dict[str, Any] = {"restartPolicy": "Never", "containers": [container]}
        if stack.service_account:
            pod["serviceAccountName"] = stack.service_account
        if stack.node_selector:
            pod["nodeSelector"] = stack.node_selector
        if stack.tolerations:
            pod["tolerations"] = stack.tolerations
        if stack.image_pull_secrets:
            pod["imagePullSecrets"] = [{"name": name} for name in stack.image_pull_secrets]
        spec: dict[str, Any] = {
            "backoffLimit": stack.backoff_limit,
            "ttlSecondsAfterFinished": stack.ttl_seconds_after_finished,
            # The worker's exit codes (kitaru.worker): a flow's own failure, or a job that can
            # never run it, fails the Job at once; an eviction is not counted; anything else
            # (infrastructure trouble, a crash, an OOM kill) counts against backoffLimit and the
            # next pod resumes from the journal.
            "podFailurePolicy": {
                "rules": [
                    {
                        "action": "FailJob",
                        "onExitCodes": {
                            "containerName": CONTAINER,
                            "operator": "In",
                            "values": [EXIT_FLOW_FAILED, EXIT_CANNOT_RUN],
                        },
                    },
                    {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
                    {
                        "action": "Count",
                        "onExitCodes": {
                            "containerName": CONTAINER,
                            "operator": "NotIn",
                            "values": [EXIT_FLOW_FAILED, EXIT_CANNOT_RUN],
                        },
                    },
                ]
            },
            "template": {"metadata": {"labels": labels, "annotations": annotations}, "spec": pod},
        }
        if stack.active_deadline_seconds is not None:
            spec["activeDeadlineSeconds"] = stack.active_deadline_seconds
        return {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {
                "name": name,
                "namespace": stack.namespace,
                "labels": labels,
                "annotations": annotations,
            },
            "spec": spec,
        }

    def _env(self) -> list[dict[str, Any]]:
        """The worker's environment: the stack by name and its keys (so the pod needs no config
        file), then the stack's ``env``, then ``secret_env`` from Secrets. A key a Secret provides
        (``secret_env = {KITARU_STACK__STATE = "db:dsn"}``) is not copied in plain text."""
        from kitaru import _remote_jobs

        stack = self.stack
        from_secrets = set(stack.secret_env)
        # Every key but the submitter's kubeconfig: the pod's own stack starts an isolated call's
        # Job as this one does (in the cluster, through the pod's service account).
        keys = _remote_jobs.declared_keys(stack, leave_out=("kubeconfig", "context"))
        plain = _remote_jobs.worker_env(stack, keys, env=stack.env, leave_out=from_secrets)
        env: list[dict[str, Any]] = [
            {"name": k, "value": v} for k, v in plain.items() if k not in from_secrets
        ]
        for name, ref in stack.secret_env.items():
            secret, _, key = ref.partition(":")
            env.append({"name": name, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}})
        return env


def _version(metadata: dict[str, Any]) -> dict[str, Any] | None:
    """The deployed version an execution records, if it records one."""
    from kitaru.worker import DEPLOYMENT_METADATA

    found = metadata.get(DEPLOYMENT_METADATA)
    return found if isinstance(found, dict) else None


def _name(obj: dict[str, Any]) -> str:
    return str(obj["metadata"]["name"])


def _annotation(obj: dict[str, Any], key: str) -> str | None:
    value = (obj["metadata"].get("annotations") or {}).get(key)
    return None if value is None else str(value)


def _finished(job: dict[str, Any]) -> str | None:
    """``complete`` or ``failed`` once the Job has its verdict, else None."""
    for condition in (job.get("status") or {}).get("conditions") or []:
        if condition.get("status") != "True":
            continue
        if condition.get("type") in ("Complete", "SuccessCriteriaMet"):
            return "complete"
        if condition.get("type") in ("Failed", "FailureTarget"):
            return "failed"
    return None


def _failure(job: dict[str, Any]) -> str:
    """Why a failed Job failed, in its condition's words (``BackoffLimitExceeded: ...``)."""
    for condition in (job.get("status") or {}).get("conditions") or []:
        if condition.get("status") == "True" and condition.get("type") in ("Failed", "FailureTarget"):
            return ": ".join(str(condition[k]) for k in ("reason", "message") if condition.get(k))
    return "the Job failed"


def _api_error(stack: str, what: str, exc: Any) -> KitaruError:
    from kitaru.errors import KitaruStoreError

    message = f"stack {stack!r}: the Kubernetes API refused to {what}: {exc.status} {exc.reason}"
    if exc.status in (401, 403):
        return KitaruConfigError(
            f"{message}. The credentials lack a permission kitaru needs: apply "
            "stacks/kubernetes/deploy/rbac.yaml in the namespace and use its service account."
        )
    return KitaruStoreError(f"{message}. Check the cluster (`kubectl get jobs`) and submit again.")
