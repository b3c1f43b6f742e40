"""A Cloud Run Admin API v2 double for tests: plain HTTP on 127.0.0.1, serving the REST calls
google-cloud-run's ``JobsClient``/``ExecutionsClient``/``TasksClient`` make (REST transport; the
wire facts are in /work/shared/notes/cloud-jobs-wire.md), whose "executor" runs each task's
container ``command`` + ``args`` as a local process with the job's ``env`` overlaid by the
execution's overrides.

Served (``{l}`` = ``projects/P/locations/L``): ``POST /v2/{l}/jobs?jobId=J`` (create),
``GET /v2/{l}/jobs/J``, ``POST /v2/{l}/jobs/J:run`` (overrides: ``containerOverrides[0]`` args, env,
clearArgs; ``taskCount`` must be 1; ``timeout``), ``GET /v2/{l}/jobs/J/executions[/E]``,
``POST …/executions/E:cancel``, ``GET …/executions/E/tasks[/T]`` and ``GET /v2/{l}/operations/O``.
Long-running operations carry the Job or Execution as metadata; ``run_job``'s is done when its
execution finishes (``response`` = the Execution); create and cancel are done at once.

What the executor does, as Cloud Run does: a task whose container exits non-zero (or is killed) is
retried, up to the job's ``template.template.maxRetries`` times, at once; the exit code plays no
part in that decision (Cloud Run has no per-exit-code policy). A cancel sends SIGTERM to the running
attempt, SIGKILL after ``grace`` seconds, and no retry follows; ``timeout`` kills an attempt that
runs too long and fails the task. The execution's ``Completed`` condition is
``CONDITION_SUCCEEDED`` or ``CONDITION_FAILED`` (``executionReason`` ``NON_ZERO_EXIT_CODE`` or
``CANCELLED``) once ``completionTime`` is set. Errors are ``{"error": {code, message, status}}``.

Where it simplifies: one task per execution, no images (the command runs on this machine from
``workdir``), no IAM (a job whose ``serviceAccount`` is in :attr:`CloudRunDouble.denied_accounts`
is refused with a 403, as a missing ``iam.serviceAccounts.actAs`` permission is).
"""

from __future__ import annotations

import itertools
import json
import re
import secrets
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlsplit

import pytest

from tests._services._local_jobs import JobsDouble, LocalRun, now

__all__ = ["CloudRunDouble", "cloud_run"]

T = TypeVar("T")
_ops = itertools.count(1)

_LOCATION = r"projects/(?P<p>[^/]+)/locations/(?P<l>[^/]+)"
_ROUTES: list[tuple[str, re.Pattern[str], str]] = [
    ("POST", re.compile(rf"/v2/{_LOCATION}/jobs"), "create_job"),
    ("GET", re.compile(rf"/v2/{_LOCATION}/jobs/(?P<j>[^/:]+)"), "get_job"),
    ("POST", re.compile(rf"/v2/{_LOCATION}/jobs/(?P<j>[^/:]+):run"), "run_job"),
    ("GET", re.compile(rf"/v2/{_LOCATION}/jobs/(?P<j>[^/:]+)/executions"), "list_executions"),
    ("GET", re.compile(rf"/v2/{_LOCATION}/jobs/(?P<j>[^/:]+)/executions/(?P<e>[^/:]+)"), "get_execution"),
    ("POST", re.compile(rf"/v2/{_LOCATION}/jobs/(?P<j>[^/:]+)/executions/(?P<e>[^/:]+):cancel"), "cancel"),
    ("GET", re.compile(rf"/v2/{_LOCATION}/jobs/(?P<j>[^/:]+)/executions/(?P<e>[^/:]+)/tasks"), "list_tasks"),
    (
        "GET",
        re.compile(rf"/v2/{_LOCATION}/jobs/(?P<j>[^/:]+)/executions/(?P<e>[^/:]+)/tasks/(?P<t>[^/:]+)"),
        "get_task",
    ),
    ("GET", re.compile(rf"/v2/{_LOCATION}/operations/(?P<o>[^/:]+)"), "get_operation"),
]


class ApiError(Exception):
    def __init__(self, code: int, status: str, message: str) -> None:
        super().__init__(message)
        self.code, self.status, self.message = code, status, message


def _seconds(duration: str | None, default: float) -> float:
    if not duration:
        return default
    return float(duration.rstrip("s"))


class _Execution(LocalRun):
    def __init__(
        self, double: CloudRunDouble, name: str, job: dict[str, Any], overrides: dict[str, Any]
    ) -> None:
        self.job = job
        task_template = json.loads(json.dumps(job["template"]["template"]))
        container = task_template["containers"][0]
        override = (overrides.get("containerOverrides") or [{}])[0]
        if override.get("args") or override.get("clearArgs"):
            container["args"] = list(override.get("args") or [])
        env = {e["name"]: e for e in container.get("env") or []}
        for item in override.get("env") or []:
            env[item["name"]] = item
        container["env"] = list(env.values())
        if overrides.get("timeout"):
            task_template["timeout"] = overrides["timeout"]
        self.template = task_template
        self.created = now()
        self.operation = f"{name.split('/jobs/')[0]}/operations/op-{next(_ops)}"
        super().__init__(
            double,
            name,
            [*(container.get("command") or []), *(container.get("args") or [])],
            {**double.base_env, **{e["name"]: str(e.get("value", "")) for e in container["env"]}},
            retries=int(task_template.get("maxRetries", 3)),
            timeout=_seconds(task_template.get("timeout"), 600),
            log=double.workdir / f"{name.rsplit('/', 1)[1]}.log",
            label="attempt",
        )

    @property
    def started(self) -> str | None:
        return self.began

    @property
    def completed(self) -> str | None:
        return self.ended

    @property
    def outcome(self) -> str | None:
        """succeeded | failed | cancelled, once it ended."""
        if self.ended is None:
            return None
        if self.succeeded:
            return "succeeded"
        return "cancelled" if self.stopping else "failed"

    @property
    def cancelling(self) -> bool:
        return self.stopping

    def cancel(self) -> None:
        self.stop()

    # -- the resources ----------------------------------------------------------------------------

    def resource(self) -> dict[str, Any]:
        with self.lock:
            running = 1 if self.attempts and self.completed is None else 0
            conditions = [
                {
                    "type": "ResourcesAvailable",
                    "state": "CONDITION_SUCCEEDED",
                    "lastTransitionTime": self.created,
                },
                {"type": "Started", "state": "CONDITION_SUCCEEDED" if self.started else "CONDITION_PENDING"},
            ]
            completed: dict[str, Any] = {"type": "Completed", "state": "CONDITION_PENDING"}
            if self.completed:
                completed["lastTransitionTime"] = self.completed
                if self.outcome == "succeeded":
                    completed["state"] = "CONDITION_SUCCEEDED"
                elif self.outcome == "cancelled":
                    completed.update(
                        state="CONDITION_FAILED",
                        executionReason="CANCELLED",
                        message="The execution was cancelled.",
                    )
                else:
                    completed.update(
                        state="CONDITION_FAILED",
                        executionReason="NON_ZERO_EXIT_CODE",
                        message=f"Task failed with exit code {self.exit_codes[-1]} after "
                        f"{len(self.exit_codes)} attempt(s).",
                    )
            elif self.cancelling:
                completed.update(state="CONDITION_RECONCILING", executionReason="CANCELLING")
            conditions.append(completed)
            body: dict[str, Any] = {
                "name": self.name,
                "uid": self.name.rsplit("/", 1)[1],
                "job": self.job["name"].rsplit("/", 1)[1],
                "createTime": self.created,
                "taskCount": 1,
                "parallelism": 1,
                "template": self.template,
                "conditions": conditions,
                "runningCount": running,
                "succeededCount": 1 if self.outcome == "succeeded" else 0,
                "failedCount": 1 if self.outcome == "failed" else 0,
                "cancelledCount": 1 if self.outcome == "cancelled" else 0,
                "retriedCount": max(0, len(self.exit_codes) - (1 if self.completed else 0)),
                "reconciling": self.completed is None,
                "etag": f'"{len(self.exit_codes)}"',
            }
            if self.started:
                body["startTime"] = self.started
            if self.completed:
                body["completionTime"] = self.completed
            return body

    def task(self) -> dict[str, Any]:
        with self.lock:
            body: dict[str, Any] = {
                "name": f"{self.name}/tasks/{self.name.rsplit('/', 1)[1]}-task0",
                "job": self.job["name"].rsplit("/", 1)[1],
                "execution": self.name.rsplit("/", 1)[1],
                "index": 0,
                "retried": max(0, len(self.attempts) - 1),
                "maxRetries": int(self.template.get("maxRetries", 3)),
                "containers": self.template["containers"],
            }
            if self.exit_codes:
                body["lastAttemptResult"] = {"exitCode": self.exit_codes[-1]}
            return body

    def operation_resource(self) -> dict[str, Any]:
        resource = self.resource()
        op: dict[str, Any] = {
            "name": self.operation,
            "done": "completionTime" in resource,
            "metadata": {"@type": "type.googleapis.com/google.cloud.run.v2.Execution", **resource},
        }
        if op["done"]:
            op["response"] = op["metadata"]
        return op


class CloudRunDouble(JobsDouble[_Execution]):
    """The double, serving in a thread of this process (``.endpoint`` is its URL)."""

    label = "cloud run double"

    def __init__(self, workdir: Path, *, base_env: dict[str, str] | None = None, grace: float = 10) -> None:
        self.jobs: dict[str, dict[str, Any]] = {}
        self.operations: dict[str, dict[str, Any]] = {}
        #: Service accounts the caller may not act as (a 403 on create, as IAM would say).
        self.denied_accounts: set[str] = set()
        super().__init__(workdir, base_env=base_env, grace=grace)

    # -- the API ----------------------------------------------------------------------------------

    def _handle(self, handler: BaseHTTPRequestHandler, method: str) -> None:
        url = urlsplit(handler.path)
        length = int(handler.headers.get("Content-Length") or 0)
        raw = handler.rfile.read(length) if length else b""
        self.requests.append((method, url.path))
        try:
            body = json.loads(raw) if raw else {}
            for verb, pattern, action in _ROUTES:
                match = pattern.fullmatch(url.path)
                if verb == method and match:
                    reply = getattr(self, f"_{action}")(match.groupdict(), parse_qs(url.query), body)
                    break
            else:
                raise ApiError(404, "NOT_FOUND", f"the double serves no {method} {url.path}")
            status, payload = 200, reply
        except ApiError as exc:
            status = exc.code
            payload = {"error": {"code": exc.code, "message": exc.message, "status": exc.status}}
        data = json.dumps(payload).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)

    def _job(self, g: dict[str, str]) -> dict[str, Any]:
        name = f"projects/{g['p']}/locations/{g['l']}/jobs/{g['j']}"
        with self.lock:
            job = self.jobs.get(name)
        if job is None:
            raise ApiError(
                404,
                "NOT_FOUND",
                f"Resource '{g['j']}' of kind 'JOB' in region '{g['l']}' in "
                f"project '{g['p']}' does not exist.",
            )
        return job

    def _execution(self, g: dict[str, str]) -> _Execution:
        name = f"projects/{g['p']}/locations/{g['l']}/jobs/{g['j']}/executions/{g['e']}"
        with self.lock:
            execution = self.executions.get(name)
        if execution is None:
            raise ApiError(404, "NOT_FOUND", f"Execution {g['e']} does not exist.")
        return execution

    def _create_job(self, g: dict[str, str], query: dict[str, list[str]], body: dict[str, Any]) -> Any:
        job_id = (query.get("jobId") or [""])[0]
        if not re.fullmatch(r"[a-z]([a-z0-9-]{0,61}[a-z0-9])?", job_id):
            raise ApiError(400, "INVALID_ARGUMENT", f"Invalid job id {job_id!r}.")
        template = (body.get("template") or {}).get("template") or {}
        containers = template.get("containers") or []
        if len(containers) != 1 or not containers[0].get("image"):
            raise ApiError(400, "INVALID_ARGUMENT", "spec.template.spec.containers[0].image: Required")
        account = template.get("serviceAccount")
        if account in self.denied_accounts:
            raise ApiError(
                403,
                "PERMISSION_DENIED",
                f"Permission 'iam.serviceaccounts.actAs' denied on service account {account} (or it may "
                "not exist).",
            )
        name = f"projects/{g['p']}/locations/{g['l']}/jobs/{job_id}"
        with self.lock:
            if name in self.jobs:
                raise ApiError(409, "ALREADY_EXISTS", f"Resource '{job_id}' already exists.")
            job = {**body, "name": name, "uid": secrets.token_hex(8), "createTime": now(), "generation": "1"}
            self.jobs[name] = job
        op = {
            "name": f"projects/{g['p']}/locations/{g['l']}/operations/op-{next(_ops)}",
            "done": True,
            "metadata": {"@type": "type.googleapis.com/google.cloud.run.v2.Job", **job},
            "response": {"@type": "type.googleapis.com/google.cloud.run.v2.Job", **job},
        }
        self.operations[op["name"]] = op
        return op

    def _get_job(self, g: dict[str, str], query: Any, body: Any) -> Any:
        return self._job(g)

    def _run_job(self, g: dict[str, str], query: Any, body: dict[str, Any]) -> Any:
        job = self._job(g)
        overrides = body.get("overrides") or {}
        if int(overrides.get("taskCount") or 1) != 1:
            raise ApiError(400, "INVALID_ARGUMENT", "the double runs one task per execution")
        name = f"{job['name']}/executions/{g['j']}-{secrets.token_hex(3)[:5]}"
        execution = _Execution(self, name, job, overrides)
        with self.lock:
            self.executions[name] = execution
        execution.start()
        return execution.operation_resource()

    def _list_executions(self, g: dict[str, str], query: Any, body: Any) -> Any:
        job = self._job(g)
        with self.lock:
            found = [e for e in self.executions.values() if e.job is job]
        # Newest first, as Cloud Run lists them.
        return {"executions": [e.resource() for e in reversed(found)]}

    def _get_execution(self, g: dict[str, str], query: Any, body: Any) -> Any:
        return self._execution(g).resource()

    def _cancel(self, g: dict[str, str], query: Any, body: Any) -> Any:
        execution = self._execution(g)
        if execution.completed:
            raise ApiError(400, "FAILED_PRECONDITION", f"Execution {g['e']} has already completed.")
        execution.cancel()
        resource = execution.resource()
        return {
            "name": f"projects/{g['p']}/locations/{g['l']}/operations/op-{next(_ops)}",
            "done": True,
            "metadata": {"@type": "type.googleapis.com/google.cloud.run.v2.Execution", **resource},
            "response": {"@type": "type.googleapis.com/google.cloud.run.v2.Execution", **resource},
        }

    def _list_tasks(self, g: dict[str, str], query: Any, body: Any) -> Any:
        return {"tasks": [self._execution(g).task()]}

    def _get_task(self, g: dict[str, str], query: Any, body: Any) -> Any:
        task = self._execution(g).task()
        if not task["name"].endswith(f"/tasks/{g['t']}"):
            raise ApiError(404, "NOT_FOUND", f"Task {g['t']} does not exist.")
        return task

    def _get_operation(self, g: dict[str, str], query: Any, body: Any) -> Any:
        name = f"projects/{g['p']}/locations/{g['l']}/operations/{g['o']}"
        with self.lock:
            found = [e for e in self.executions.values() if e.operation == name]
        if found:
            return found[0].operation_resource()
        if name in self.operations:
            return self.operations[name]
        raise ApiError(404, "NOT_FOUND", f"Operation {g['o']} does not exist.")


@pytest.fixture
def cloud_run(tmp_path: Path) -> Iterator[CloudRunDouble]:
    """A fresh Cloud Run double (``.endpoint``); its executions' processes are stopped after the test."""
    workdir = tmp_path / "cloud-run"
    workdir.mkdir()
    double = CloudRunDouble(workdir, grace=5)
    try:
        yield double
    finally:
        double.stop()
