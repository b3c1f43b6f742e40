"""The apiserver double's HTTP side: plain HTTP/1.1 on 127.0.0.1, the paths, query parameters,
bodies and Status errors the real clients use (/work/shared/notes/kubernetes-wire.md §1 to §6).

Streams (watches, ``follow`` logs) are chunked; one JSON event per line. Authentication is not
checked (kubectl sends none over http://, kubernetes-asyncio sends a bearer token).

Besides the Kubernetes API, ``/_double/...`` paths let tests act as the node would:
``POST /_double/namespaces/NS/pods/NAME/kill`` (SIGKILL, ``?oom=true`` reports OOMKilled).
"""

from __future__ import annotations

import itertools
import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from tests._services.kube._cluster import ApiError, Cluster, _seconds, not_found

__all__ = ["ApiServer"]

Obj = dict[str, Any]

VERSION = {
    "major": "1",
    "minor": "31",
    "gitVersion": "v1.31.0",
    "gitCommit": "0000000000000000000000000000000000000000",
    "gitTreeState": "clean",
    "buildDate": "2024-08-13T00:00:00Z",
    "goVersion": "go1.22.5",
    "compiler": "gc",
    "platform": "linux/amd64",
}
_VERBS = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]
CORE_RESOURCES = {
    "kind": "APIResourceList",
    "groupVersion": "v1",
    "resources": [
        {
            "name": "pods",
            "singularName": "pod",
            "namespaced": True,
            "kind": "Pod",
            "verbs": _VERBS,
            "shortNames": ["po"],
            "categories": ["all"],
        },
        {
            "name": "pods/eviction",
            "singularName": "",
            "namespaced": True,
            "group": "policy",
            "version": "v1",
            "kind": "Eviction",
            "verbs": ["create"],
        },
        {"name": "pods/log", "singularName": "", "namespaced": True, "kind": "Pod", "verbs": ["get"]},
        {
            "name": "pods/status",
            "singularName": "",
            "namespaced": True,
            "kind": "Pod",
            "verbs": ["get", "patch", "update"],
        },
        {"name": "secrets", "singularName": "secret", "namespaced": True, "kind": "Secret", "verbs": _VERBS},
    ],
}
BATCH_RESOURCES = {
    "kind": "APIResourceList",
    "apiVersion": "v1",
    "groupVersion": "batch/v1",
    "resources": [
        {
            "name": "jobs",
            "singularName": "job",
            "namespaced": True,
            "kind": "Job",
            "verbs": _VERBS,
            "categories": ["all"],
        },
        {
            "name": "jobs/status",
            "singularName": "",
            "namespaced": True,
            "kind": "Job",
            "verbs": ["get", "patch", "update"],
        },
    ],
}
_BATCH = {"groupVersion": "batch/v1", "version": "v1"}
GROUPS = {
    "kind": "APIGroupList",
    "apiVersion": "v1",
    "groups": [{"name": "batch", "versions": [_BATCH], "preferredVersion": _BATCH}],
}
VERSIONS = {
    "kind": "APIVersions",
    "versions": ["v1"],
    "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1:6443"}],
}


def _openapi_doc(group: str, version: str, kind: str, path: str) -> Obj:
    """The minimal group-version document that lets ``kubectl create -f`` validate on the server."""
    return {
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": "v1.31.0"},
        "paths": {
            path: {
                "patch": {
                    "x-kubernetes-group-version-kind": {"group": group, "version": version, "kind": kind},
                    "parameters": [
                        {
                            "name": "fieldValidation",
                            "in": "query",
                            "schema": {"type": "string", "uniqueItems": True},
                        }
                    ],
                    "responses": {"200": {"description": "OK"}},
                }
            }
        },
        "components": {"schemas": {}},
    }


OPENAPI = {
    "paths": {
        "apis/batch/v1": {"serverRelativeURL": "/openapi/v3/apis/batch/v1?hash=kitaru-double-1"},
        "api/v1": {"serverRelativeURL": "/openapi/v3/api/v1?hash=kitaru-double-1"},
    }
}
OPENAPI_DOCS = {
    "/openapi/v3/apis/batch/v1": _openapi_doc(
        "batch", "v1", "Job", "/apis/batch/v1/namespaces/{namespace}/jobs/{name}"
    ),
    "/openapi/v3/api/v1": _openapi_doc("", "v1", "Pod", "/api/v1/namespaces/{namespace}/pods/{name}"),
}

_ROUTE = re.compile(
    r"^/(?:apis/(?P<group>batch)/v1|api/v1)"
    r"(?:/namespaces/(?P<ns>[^/]+))?"
    r"/(?P<resource>jobs|pods|secrets)"
    r"(?:/(?P<name>[^/]+))?"
    r"(?:/(?P<sub>status|log|eviction))?$"
)
_CONTROL = re.compile(r"^/_double/namespaces/(?P<ns>[^/]+)/pods/(?P<name>[^/]+)/kill$")


def parse_bool(value: str | None) -> bool:
    """Go's ParseBool, as the apiserver reads ``watch``/``follow`` (kubernetes-asyncio sends ``True``)."""
    return (value or "").strip() in ("1", "t", "T", "TRUE", "true", "True")


def _age(stamp: str | None) -> str:
    if not stamp:
        return "<unknown>"
    seconds = max(0, int(time.time() - _seconds(stamp)))
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60}s" if seconds < 600 else f"{seconds // 60}m"
    return f"{seconds // 3600}h{(seconds % 3600) // 60}m"


def _job_row(job: Obj) -> list[Any]:
    status = job.get("status") or {}
    types = {c["type"] for c in status.get("conditions") or [] if c["status"] == "True"}
    state = (
        "Complete"
        if "Complete" in types
        else "Failed"
        if "Failed" in types
        else "FailureTarget"
        if "FailureTarget" in types
        else "SuccessCriteriaMet"
        if "SuccessCriteriaMet" in types
        else "Terminating"
        if job["metadata"].get("deletionTimestamp")
        else "Running"
    )
    start, end = status.get("startTime"), status.get("completionTime")
    duration = "" if not start else _age(start) if not end else f"{int(_seconds(end) - _seconds(start))}s"
    completions = f"{status.get('succeeded', 0)}/{job['spec'].get('completions', 1)}"
    return [
        job["metadata"]["name"],
        state,
        completions,
        duration,
        _age(job["metadata"].get("creationTimestamp")),
    ]


def _pod_row(pod: Obj) -> list[Any]:
    statuses = pod["status"].get("containerStatuses") or []
    ready = f"{sum(1 for s in statuses if s.get('ready'))}/{len(statuses)}"
    phase = pod["status"].get("phase", "Pending")
    for s in statuses:
        reason = (s["state"].get("waiting") or s["state"].get("terminated") or {}).get("reason")
        if (reason and reason != "Completed") or (reason == "Completed" and phase == "Succeeded"):
            phase = reason
    if pod["metadata"].get("deletionTimestamp") and pod["status"].get("phase") in ("Pending", "Running"):
        phase = "Terminating"
    restarts = sum(int(s.get("restartCount", 0)) for s in statuses)
    return [pod["metadata"]["name"], ready, phase, restarts, _age(pod["metadata"].get("creationTimestamp"))]


_COLUMNS = {
    "jobs": (["Name", "Status", "Completions", "Duration", "Age"], _job_row),
    "pods": (["Name", "Ready", "Status", "Restarts", "Age"], _pod_row),
    "secrets": (
        ["Name", "Type", "Data", "Age"],
        lambda s: [
            s["metadata"]["name"],
            s.get("type"),
            len(s.get("data") or {}),
            _age(s["metadata"].get("creationTimestamp")),
        ],
    ),
}


def _table(resource: str, objects: list[Obj], rv: int | None, with_columns: bool = True) -> Obj:
    names, row = _COLUMNS[resource]
    table: Obj = {"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": {}}
    if rv is not None:
        table["metadata"]["resourceVersion"] = str(rv)
    if with_columns:
        table["columnDefinitions"] = [
            {
                "name": n,
                "type": "integer" if n == "Restarts" else "string",
                "format": "name" if n == "Name" else "",
                "description": "",
                "priority": 0,
            }
            for n in names
        ]
    table["rows"] = [
        {
            "cells": row(o),
            "object": {
                "kind": "PartialObjectMetadata",
                "apiVersion": "meta.k8s.io/v1",
                "metadata": o["metadata"],
            },
        }
        for o in objects
    ]
    return table


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: ApiServer

    def log_message(self, format: str, *args: Any) -> None:
        if self.server.verbose:
            super().log_message(format, *args)

    # -- plumbing -----------------------------------------------------------------------------------

    def _body(self) -> Obj:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        if not raw.strip():
            return {}
        try:
            body = json.loads(raw)
        except ValueError as exc:
            raise ApiError(
                400, "BadRequest", f"the body of the request was in an unknown format: {exc}"
            ) from None
        if not isinstance(body, dict):
            raise ApiError(400, "BadRequest", "the body of the request must be an object")
        return body

    def _send(self, code: int, body: Any, headers: dict[str, str] | None = None, text: bool = False) -> None:
        data = body.encode() if text else json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "text/plain" if text else "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Audit-Id", "kitaru-double")
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _start_stream(self, content_type: str) -> None:
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Cache-Control", "no-cache, private")
        self.end_headers()

    def _chunk(self, data: bytes) -> None:
        if data:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            self.wfile.flush()

    def _end_stream(self) -> None:
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def _handle(self) -> None:
        url = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        try:
            self._route(url.path.rstrip("/") or "/", query)
        except ApiError as exc:
            self._send(exc.code, exc.status())
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    do_GET = do_POST = do_DELETE = do_PUT = do_PATCH = _handle

    # -- routes -------------------------------------------------------------------------------------

    def _route(self, path: str, query: dict[str, str]) -> None:
        method = self.command
        static = {
            "/version": VERSION,
            "/api": VERSIONS,
            "/apis": GROUPS,
            "/api/v1": CORE_RESOURCES,
            "/apis/batch/v1": BATCH_RESOURCES,
            "/openapi/v3": OPENAPI,
            **OPENAPI_DOCS,
        }
        if method == "GET" and path in static:
            self._send(200, static[path])
            return
        control = _CONTROL.match(path)
        if control and method == "POST":
            self.server.cluster.kill_pod(control["ns"], control["name"], oom=parse_bool(query.get("oom")))
            self._send(200, {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success"})
            return
        match = _ROUTE.match(path)
        if match is None or (match["group"] == "batch") != (match["resource"] == "jobs"):
            raise ApiError(404, "NotFound", "the server could not find the requested resource", {})
        resource, ns, name, sub = match["resource"], match["ns"], match["name"], match["sub"]
        cluster = self.server.cluster
        dry_run = query.get("dryRun") == "All"
        if name is None:
            if method == "GET" and parse_bool(query.get("watch")):
                self._watch(resource, ns, query)
            elif method == "GET":
                items, rv = cluster.list(resource, ns, query.get("labelSelector"), query.get("fieldSelector"))
                self._reply_list(resource, items, rv)
            elif method == "POST" and ns is not None and resource in ("jobs", "secrets"):
                body = self._body()
                created = (cluster.create_job if resource == "jobs" else cluster.create_secret)(
                    ns, body, dry_run
                )
                self._send(201, created)
            else:
                raise self._not_allowed()
            return
        assert ns is not None
        if sub == "log" and method == "GET" and resource == "pods":
            self._log(ns, name, query)
        elif sub == "eviction" and method == "POST" and resource == "pods":
            self._body()
            cluster.evict_pod(ns, name)
            self._send(
                201, {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}
            )
        elif sub in (None, "status") and method == "GET":
            self._reply_object(resource, cluster.get(resource, ns, name))
        elif sub is None and method == "DELETE":
            body = self._body()
            policy = query.get("propagationPolicy") or body.get("propagationPolicy")
            grace_text = query.get("gracePeriodSeconds", body.get("gracePeriodSeconds"))
            grace = None if grace_text in (None, "") else int(grace_text)
            if parse_bool(query.get("orphanDependents")) or body.get("orphanDependents") is True:
                policy = "Orphan"
            expected = (body.get("preconditions") or {}).get("uid")
            if expected is not None and cluster.get(resource, ns, name)["metadata"]["uid"] != expected:
                raise ApiError(409, "Conflict", f"Precondition failed: UID in precondition: {expected}")
            if dry_run:
                self._send(200, cluster.get(resource, ns, name))
            elif resource == "jobs":
                reply, warning = cluster.delete_job(ns, name, policy, grace)
                self._send(200, reply, {"Warning": warning} if warning else None)
            elif resource == "pods":
                self._send(200, cluster.delete_pod(ns, name, grace))
            else:
                self._send(200, cluster.delete_secret(ns, name))
        else:
            raise self._not_allowed()

    def _not_allowed(self) -> ApiError:
        return ApiError(
            405, "MethodNotAllowed", "the server does not allow this method on the requested resource", {}
        )

    def _wants_table(self) -> bool:
        return "as=Table" in (self.headers.get("Accept") or "")

    def _reply_list(self, resource: str, items: list[Obj], rv: int) -> None:
        if self._wants_table():
            self._send(200, _table(resource, items, rv))
            return
        api_version, kind = (
            ("batch/v1", "JobList") if resource == "jobs" else ("v1", resource[:-1].capitalize() + "List")
        )
        self._send(
            200,
            {
                "kind": kind,
                "apiVersion": api_version,
                "metadata": {"resourceVersion": str(rv)},
                "items": items,
            },
        )

    def _reply_object(self, resource: str, obj: Obj) -> None:
        self._send(200, _table(resource, [obj], None) if self._wants_table() else obj)

    def _watch(self, resource: str, ns: str | None, query: dict[str, str]) -> None:
        """A watch: chunked JSON lines; bookmarks when asked; closes at ``timeoutSeconds``."""
        cluster = self.server.cluster
        timeout = float(query["timeoutSeconds"]) if query.get("timeoutSeconds") else None
        bookmarks = parse_bool(query.get("allowWatchBookmarks"))
        table = self._wants_table()
        kind, api_version = ("Job", "batch/v1") if resource == "jobs" else (resource[:-1].capitalize(), "v1")
        events = cluster.watch(
            resource,
            ns,
            query.get("labelSelector"),
            query.get("fieldSelector"),
            query.get("resourceVersion"),
            stop=lambda: self.server.stopping,
            timeout=timeout,
        )
        # Pull the first event before answering: an expired resource version is an ERROR event.
        try:
            first: list[Any] = [next(events)]
        except StopIteration:
            first = []
        except ApiError as exc:
            self._start_stream("application/json")
            self._chunk(json.dumps({"type": "ERROR", "object": exc.status()}).encode() + b"\n")
            self._end_stream()
            return
        self._start_stream("application/json")
        columns = True

        def bookmark() -> None:
            mark = {
                "kind": kind,
                "apiVersion": api_version,
                "metadata": {"resourceVersion": str(cluster.current_rv())},
            }
            self._chunk(json.dumps({"type": "BOOKMARK", "object": mark}).encode() + b"\n")

        for event in itertools.chain(first, events):
            if event is None:  # idle: a bookmark tells the client how far it is
                if bookmarks:
                    bookmark()
                continue
            kind_of, obj = event
            if table:
                obj = _table(resource, [obj], int(obj["metadata"]["resourceVersion"]), with_columns=columns)
                columns = False
            self._chunk(json.dumps({"type": kind_of, "object": obj}).encode() + b"\n")
        if bookmarks:
            bookmark()
        self._end_stream()

    def _log(self, ns: str, name: str, query: dict[str, str]) -> None:
        """A container's log: all of it, or (``follow``) streamed until the container exits."""
        cluster = self.server.cluster
        pod = cluster.get("pods", ns, name)
        names = [c["name"] for c in pod["spec"]["containers"]]
        container = query.get("container")
        if not container:
            if len(names) != 1:
                raise ApiError(
                    400,
                    "BadRequest",
                    f"a container name must be specified for pod {name}, choose one of: [{' '.join(names)}]",
                )
            container = names[0]
        if container not in names:
            raise ApiError(400, "BadRequest", f"container {container} is not valid for pod {name}")
        with cluster.lock:
            runtime = cluster.runtimes.get(pod["metadata"]["uid"])
            state = next(s for s in pod["status"]["containerStatuses"] if s["name"] == container)
            logs = (
                []
                if runtime is None
                else list(next(c for c in runtime.containers if c.name == container).logs)
            )
        previous = parse_bool(query.get("previous"))
        if previous:
            if len(logs) < 2:
                raise ApiError(
                    400,
                    "BadRequest",
                    f'previous terminated container "{container}" in pod "{name}" not found',
                )
            self._send(200, _tail(logs[-2].read_text(errors="replace"), query.get("tailLines")), text=True)
            return
        if not logs:
            if "terminated" in state["state"] and runtime is None:
                raise not_found("pods", name)
            reason = (state["state"].get("waiting") or {}).get("reason", "ContainerCreating")
            raise ApiError(
                400, "BadRequest", f'container "{container}" in pod "{name}" is waiting to start: {reason}'
            )
        log = logs[-1]
        if not parse_bool(query.get("follow")):
            self._send(200, _tail(log.read_text(errors="replace"), query.get("tailLines")), text=True)
            return
        self._start_stream("text/plain")
        with open(log, "rb") as stream:
            head = _tail(stream.read().decode(errors="replace"), query.get("tailLines")).encode()
            self._chunk(head)
            while not self.server.stopping:
                data = stream.read(65536)
                if data:
                    self._chunk(data)
                    continue
                with cluster.lock:
                    done = (
                        runtime is None or next(c for c in runtime.containers if c.name == container).exited
                    )
                    done = done or cluster.runtimes.get(pod["metadata"]["uid"]) is None
                if done:
                    self._chunk(stream.read())
                    break
                time.sleep(0.02)
        self._end_stream()


def _tail(text: str, lines: str | None) -> str:
    if not lines:
        return text
    kept = text.splitlines(keepends=True)[-int(lines) :] if int(lines) > 0 else []
    return "".join(kept)


class ApiServer(ThreadingHTTPServer):
    """The double: an HTTP server over a :class:`Cluster`."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, port: int, workdir: Path, *, pod_backoff: float = 0.2, verbose: bool = False) -> None:
        super().__init__(("127.0.0.1", port), _Handler)
        self.cluster = Cluster(workdir, pod_backoff=pod_backoff)
        self.verbose = verbose
        self.stopping = False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self.serve_forever, name="kube-apiserver-double", daemon=True)
        thread.start()
        return thread

    def stop(self) -> None:
        self.stopping = True
        self.cluster.close()
        self.shutdown()
        self.server_close()
