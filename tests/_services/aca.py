"""An Azure Container Apps jobs double for tests: plain HTTP on 127.0.0.1, serving the Azure Resource
Manager calls azure-mgmt-appcontainers' clients make (the wire facts are in
/work/shared/notes/cloud-jobs-wire.md, section 3), a managed-identity token endpoint for
azure-identity, and an "executor" that runs each job execution's container ``command`` + ``args``
as a local process with the template's ``env``.

Served (``{job}`` = ``/subscriptions/S/resourceGroups/RG/providers/Microsoft.App/jobs/J``, every
ARM call with ``?api-version=`` and ``Authorization: Bearer <a token this double issued>``):
``GET|PUT {job}`` (read, create: 201 + ``Azure-AsyncOperation``, polled to ``Succeeded``),
``POST {job}/start`` (the body is the ``JobExecutionTemplate``: its containers replace the job's;
202 + ``Location``, which answers 202 until the replica's process runs, then 200 with the
execution's ``{name, id}``), ``GET {job}/executions[/E]``, ``POST {job}/executions/E/stop`` (202 +
``Location``, 200 once the replica is gone). Errors are ``{"error": {"code", "message"}}``.

The token endpoint is the one App Service and Container Apps give a managed identity
(``IDENTITY_ENDPOINT`` + ``IDENTITY_HEADER``, see :meth:`AcaDouble.identity_env`): azure-identity's
``DefaultAzureCredential`` finds it in the environment, as it would in a container on Azure, so the
credential code path is the real one.

What the executor does, as Container Apps does: a replica whose container exits non-zero (or is
killed) is retried at once, up to the job's ``replicaRetryLimit`` times, whatever the exit code
(no per-exit-code policy); ``replicaTimeout`` kills a replica that runs too long. A stop sends
SIGTERM to the running replica, SIGKILL after ``grace`` seconds, and no retry follows. Statuses:
``Running`` then ``Succeeded``, ``Failed`` or ``Stopped``; ``detailedStatus`` lists each replica's
container exit ``code``. Env entries with ``secretRef`` read the job's ``configuration.secrets``.

Where it simplifies: one replica per execution, no images (the command runs on this machine from
``workdir``), RBAC only as :attr:`AcaDouble.denied_actions` (403 ``AuthorizationFailed`` naming
the action, as Azure words it) and :attr:`AcaDouble.denied_identities` (403
``LinkedAuthorizationFailed`` on ``.../userAssignedIdentities/assign/action``).
"""

from __future__ import annotations

import itertools
import json
import re
import secrets
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlsplit

import pytest

from tests._services._local_jobs import JobsDouble, LocalRun, now

__all__ = ["AcaDouble", "aca"]

T = TypeVar("T")
_ops = itertools.count(1)

_JOB = r"/subscriptions/(?P<s>[^/]+)/resourceGroups/(?P<rg>[^/]+)/providers/Microsoft\.App/jobs/(?P<j>[^/]+)"
_ROUTES: list[tuple[str, re.Pattern[str], str]] = [
    ("GET", re.compile(_JOB), "get_job"),
    ("PUT", re.compile(_JOB), "put_job"),
    ("POST", re.compile(rf"{_JOB}/start"), "start"),
    ("GET", re.compile(rf"{_JOB}/executions"), "list_executions"),
    ("GET", re.compile(rf"{_JOB}/executions/(?P<e>[^/]+)"), "get_execution"),
    ("POST", re.compile(rf"{_JOB}/executions/(?P<e>[^/]+)/stop"), "stop"),
    (
        "GET",
        re.compile(r"/subscriptions/(?P<s>[^/]+)/providers/Microsoft\.App/operations/(?P<o>[^/]+)"),
        "operation",
    ),
]


class ArmError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


class _Reply:
    """A non-default reply: a status, headers and a body."""

    def __init__(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        self.status, self.body, self.headers = status, body, headers or {}


class _Execution(LocalRun):
    def __init__(self, double: AcaDouble, job: dict[str, Any], name: str, template: dict[str, Any]) -> None:
        self.job = job
        self.id = f"{job['id']}/executions/{name}"
        self.template = template
        self.started = now()
        container = template["containers"][0]
        configuration = job["properties"].get("configuration") or {}
        secrets_ = {s["name"]: s.get("value", "") for s in configuration.get("secrets") or []}
        env = dict(double.base_env)
        for item in container.get("env") or []:
            env[item["name"]] = (
                secrets_[item["secretRef"]] if item.get("secretRef") else str(item.get("value", ""))
            )
        super().__init__(
            double,
            name,
            [*(container.get("command") or []), *(container.get("args") or [])],
            env,
            retries=int(configuration.get("replicaRetryLimit", 0)),
            timeout=float(configuration.get("replicaTimeout", 1800)),
            log=double.workdir / f"{name}.log",
            label="replica attempt",
        )

    @property
    def completed(self) -> bool:
        return self.ended is not None

    @property
    def status(self) -> str:
        if self.ended is None:
            return "Running"
        if self.stopping:
            return "Stopped"
        return "Succeeded" if self.succeeded else "Failed"

    def resource(self) -> dict[str, Any]:
        with self.lock:
            name = self.template["containers"][0].get("name", "main")
            replicas = [
                {
                    "name": f"{self.name}-{i}",
                    "containers": [
                        {
                            "name": name,
                            "code": self.exit_codes[i] if i < len(self.exit_codes) else None,
                            "status": "Terminated" if i < len(self.exit_codes) else "Running",
                        }
                    ],
                }
                for i in range(len(self.attempts))
            ]
            props: dict[str, Any] = {
                "status": self.status,
                "startTime": self.started,
                "template": self.template,
                "detailedStatus": {"replicas": replicas},
            }
            if self.ended:
                props["endTime"] = self.ended
            return {
                "name": self.name,
                "id": self.id,
                "type": "Microsoft.App/jobs/executions",
                "properties": props,
            }


class AcaDouble(JobsDouble[_Execution]):
    """The double, serving in a thread of this process (``.endpoint`` is its URL)."""

    methods = ("GET", "POST", "PUT")
    label = "aca double"

    def __init__(self, workdir: Path, *, base_env: dict[str, str] | None = None, grace: float = 10) -> None:
        self.jobs: dict[str, dict[str, Any]] = {}
        self.operations: dict[str, Callable[[], _Reply]] = {}
        self.identity_header = secrets.token_hex(8)
        self.tokens: set[str] = set()
        #: ARM actions the caller may not perform, e.g. ``Microsoft.App/jobs/start/action``.
        self.denied_actions: set[str] = set()
        #: User-assigned identities the caller may not assign to a job.
        self.denied_identities: set[str] = set()
        super().__init__(workdir, base_env=base_env, grace=grace)

    # -- what a test uses -------------------------------------------------------------------------

    def identity_env(self) -> dict[str, str]:
        """The environment a managed identity's token endpoint is announced with (App Service and
        Container Apps set these two in their containers)."""
        return {"IDENTITY_ENDPOINT": f"{self.endpoint}/msi/token", "IDENTITY_HEADER": self.identity_header}

    def add_job(self, subscription: str, group: str, name: str, body: dict[str, Any]) -> dict[str, Any]:
        """Create a job as an administrator would (``az containerapp job create``)."""
        path = f"/subscriptions/{subscription}/resourceGroups/{group}/providers/Microsoft.App/jobs/{name}"
        job = {**body, "id": path, "name": name, "type": "Microsoft.App/jobs"}
        job.setdefault("properties", {})["provisioningState"] = "Succeeded"
        with self.lock:
            self.jobs[path.lower()] = job
        return job

    # -- the wire ---------------------------------------------------------------------------------

    def _handle(self, handler: BaseHTTPRequestHandler, method: str) -> None:
        url = urlsplit(handler.path)
        query = parse_qs(url.query)
        length = int(handler.headers.get("Content-Length") or 0)
        raw = handler.rfile.read(length) if length else b""
        self.requests.append((method, url.path))
        reply: _Reply
        try:
            if url.path == "/msi/token":
                reply = self._token(handler, query)
            else:
                auth = handler.headers.get("Authorization") or ""
                if not auth.startswith("Bearer ") or auth[len("Bearer ") :] not in self.tokens:
                    raise ArmError(
                        401,
                        "AuthenticationFailed",
                        "Authentication failed. The 'Authorization' header is missing or invalid.",
                    )
                if not query.get("api-version"):
                    raise ArmError(
                        400,
                        "MissingApiVersionParameter",
                        "The api-version query parameter (?api-version=) is required for all requests.",
                    )
                body = json.loads(raw) if raw else None
                for verb, pattern, action in _ROUTES:
                    match = pattern.fullmatch(url.path)
                    if verb == method and match:
                        result = getattr(self, f"_{action}")(match.groupdict(), body, query)
                        break
                else:
                    raise ArmError(404, "NotFound", f"the double serves no {method} {url.path}")
                reply = result if isinstance(result, _Reply) else _Reply(200, result)
        except ArmError as exc:
            reply = _Reply(exc.status, {"error": {"code": exc.code, "message": exc.message}})
        data = b"" if reply.body is None else json.dumps(reply.body).encode()
        handler.send_response(reply.status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        for key, value in reply.headers.items():
            handler.send_header(key, value)
        handler.end_headers()
        handler.wfile.write(data)

    def _token(self, handler: BaseHTTPRequestHandler, query: dict[str, list[str]]) -> _Reply:
        if handler.headers.get("X-IDENTITY-HEADER") != self.identity_header:
            raise ArmError(401, "Unauthorized", "the identity header is missing or wrong")
        token = secrets.token_urlsafe(24)
        with self.lock:
            self.tokens.add(token)
        return _Reply(
            200,
            {
                "access_token": token,
                "expires_on": str(int(time.time()) + 3600),
                "resource": (query.get("resource") or [""])[0],
                "token_type": "Bearer",
            },
        )

    def _check(self, g: dict[str, str], action: str) -> None:
        if action in self.denied_actions:
            raise ArmError(
                403,
                "AuthorizationFailed",
                f"The client 'kitaru-test' with object id '00000000-0000-0000-0000-000000000001' does "
                f"not have authorization to perform action '{action}' over scope '/subscriptions/"
                f"{g['s']}/resourceGroups/{g['rg']}/providers/Microsoft.App/jobs/{g['j']}' or the "
                "scope is invalid. If access was recently granted, please refresh your credentials.",
            )

    def _job(self, g: dict[str, str]) -> dict[str, Any]:
        path = f"/subscriptions/{g['s']}/resourceGroups/{g['rg']}/providers/Microsoft.App/jobs/{g['j']}"
        with self.lock:
            job = self.jobs.get(path.lower())
        if job is None:
            raise ArmError(
                404,
                "ResourceNotFound",
                f"The Resource 'Microsoft.App/jobs/{g['j']}' under resource group '{g['rg']}' was not found.",
            )
        return job

    def _operation(self, g: dict[str, str], body: Any, query: Any) -> Any:
        with self.lock:
            poll = self.operations.get(g["o"])
        if poll is None:
            raise ArmError(404, "NotFound", f"no operation {g['o']}")
        return poll()

    def _new_operation(self, subscription: str, poll: Callable[[], _Reply]) -> str:
        op = f"op-{next(_ops)}"
        with self.lock:
            self.operations[op] = poll
        path = f"/subscriptions/{subscription}/providers/Microsoft.App/operations/{op}"
        return f"{self.endpoint}{path}?api-version=2024-03-01"

    def _get_job(self, g: dict[str, str], body: Any, query: Any) -> Any:
        return self._job(g)

    def _put_job(self, g: dict[str, str], body: Any, query: Any) -> Any:
        self._check(g, "Microsoft.App/jobs/write")
        body = body or {}
        props = body.get("properties") or {}
        containers = (props.get("template") or {}).get("containers") or []
        if len(containers) != 1 or not containers[0].get("image"):
            raise ArmError(
                400, "ContainerAppInvalidSchema", "properties.template.containers[0].image is required."
            )
        if not props.get("environmentId"):
            raise ArmError(400, "InvalidRequestContent", "properties.environmentId is required.")
        for identity in (body.get("identity") or {}).get("userAssignedIdentities") or {}:
            if identity in self.denied_identities:
                raise ArmError(
                    403,
                    "LinkedAuthorizationFailed",
                    "The client 'kitaru-test' has permission to perform action 'Microsoft.App/jobs/write' "
                    f"on scope '/subscriptions/{g['s']}/resourceGroups/{g['rg']}/providers/Microsoft.App/"
                    f"jobs/{g['j']}'; however, it does not have permission to perform action(s) "
                    f"'Microsoft.ManagedIdentity/userAssignedIdentities/assign/action' on the linked "
                    f"scope(s) '{identity}' (respectively) or the linked scope(s) are invalid.",
                )
        job = self.add_job(g["s"], g["rg"], g["j"], body)
        job["properties"]["provisioningState"] = "InProgress"

        def poll() -> _Reply:
            job["properties"]["provisioningState"] = "Succeeded"
            return _Reply(200, {"status": "Succeeded"})

        url = self._new_operation(g["s"], poll)
        return _Reply(201, job, {"Azure-AsyncOperation": url})

    def _start(self, g: dict[str, str], body: Any, query: Any) -> Any:
        job = self._job(g)
        self._check(g, "Microsoft.App/jobs/start/action")
        template = (
            json.loads(json.dumps(body)) if body else json.loads(json.dumps(job["properties"]["template"]))
        )
        containers = template.get("containers") or []
        if len(containers) != 1 or not containers[0].get("image"):
            raise ArmError(400, "ContainerAppInvalidSchema", "template.containers[0].image is required.")
        name = f"{g['j']}-{secrets.token_hex(4)[:7]}"
        execution = _Execution(self, job, name, template)
        with self.lock:
            self.executions[name] = execution
        execution.start()
        short = {"name": name, "id": execution.id}

        def poll() -> _Reply:
            # Done once the replica's process runs (or the execution ended).
            return _Reply(200, short) if execution.attempts or execution.ended else _Reply(202, None)

        url = self._new_operation(g["s"], poll)
        return _Reply(202, short, {"Location": url})

    def _executions(self, g: dict[str, str]) -> list[_Execution]:
        job = self._job(g)
        with self.lock:
            return [e for e in self.executions.values() if e.job is job]

    def _list_executions(self, g: dict[str, str], body: Any, query: Any) -> Any:
        self._check(g, "Microsoft.App/jobs/executions/read")
        return {"value": [e.resource() for e in self._executions(g)], "nextLink": None}

    def _execution(self, g: dict[str, str]) -> _Execution:
        for execution in self._executions(g):
            if execution.name == g["e"]:
                return execution
        raise ArmError(404, "ResourceNotFound", f"The job execution '{g['e']}' was not found.")

    def _get_execution(self, g: dict[str, str], body: Any, query: Any) -> Any:
        return self._execution(g).resource()

    def _stop(self, g: dict[str, str], body: Any, query: Any) -> Any:
        execution = self._execution(g)
        self._check(g, "Microsoft.App/jobs/stop/action")
        execution.stop()

        def poll() -> _Reply:
            return _Reply(200, None) if execution.ended else _Reply(202, None)

        url = self._new_operation(g["s"], poll)
        return _Reply(202, None, {"Location": url})


@pytest.fixture
def aca(tmp_path: Path) -> Iterator[AcaDouble]:
    """A fresh Container Apps double (``.endpoint``); its executions' processes are stopped after the test."""
    workdir = tmp_path / "aca"
    workdir.mkdir()
    double = AcaDouble(workdir, grace=5)
    try:
        yield double
    finally:
        double.stop()
