"""The apiserver double's state and controllers: objects with resource versions and a watch
history, the Job controller, the garbage collector, the TTL controller and a "kubelet" that runs
each container's command as a local process.

Everything here is guarded by one lock (a Condition, so watchers sleep on it). Processes are
started and reaped by per-container threads; the Job controller is one thread that reconciles
every Job whenever anything changed (and at least every 50 ms, for deadlines and back-off).

The semantics follow /work/shared/notes/kubernetes-wire.md §5 to §7 (upstream's job controller,
strategy and GC); where the double simplifies, the docstring of the method says how.
"""

from __future__ import annotations

import base64
import calendar
import copy
import os
import random
import signal
import subprocess
import threading
import time
import traceback
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["ApiError", "Cluster", "now_rfc3339"]

Obj = dict[str, Any]

#: The finalizer a Job's pods carry until the Job controller has counted them.
TRACKING = "batch.kubernetes.io/job-tracking"
_NAME_CHARS = "bcdfghjklmnpqrstvwxz2456789"
_KINDS = {"jobs": ("batch/v1", "Job", "batch"), "pods": ("v1", "Pod", ""), "secrets": ("v1", "Secret", "")}


def now_rfc3339(at: float | None = None) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() if at is None else at))


class ApiError(Exception):
    """An error the API answers with a ``Status`` object (``code``, ``reason``, ``message``)."""

    def __init__(self, code: int, reason: str, message: str, details: Obj | None = None) -> None:
        super().__init__(message)
        self.code, self.reason, self.message, self.details = code, reason, message, details

    def status(self) -> Obj:
        body: Obj = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }
        if self.details is not None:
            body["details"] = self.details
        return body


def qualified(resource: str) -> str:
    group = _KINDS[resource][2]
    return f"{resource}.{group}" if group else resource


def not_found(resource: str, name: str) -> ApiError:
    group = _KINDS[resource][2]
    details: Obj = {"name": name, "kind": resource}
    if group:
        details["group"] = group
    return ApiError(404, "NotFound", f'{qualified(resource)} "{name}" not found', details)


def invalid(resource: str, name: str, causes: list[tuple[str, str, str]]) -> ApiError:
    """422 Invalid; ``causes`` are (reason, field, message). Details name the *kind* here."""
    _, kind, group = _KINDS[resource]
    text = ", ".join(f"{f}: {m}" for _, f, m in causes)
    details: Obj = {
        "name": name,
        "kind": kind,
        "causes": [{"reason": r, "message": m, "field": f} for r, f, m in causes],
    }
    if group:
        details["group"] = group
    return ApiError(
        422, "Invalid", f'{kind}{"." + group if group else ""} "{name}" is invalid: {text}', details
    )


# -- selectors -------------------------------------------------------------------------------------


def _split_selector(text: str) -> list[str]:
    """Split on commas outside parentheses (``a in (x,y),b=c``)."""
    parts, depth, current = [], 0, ""
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += ch
    parts.append(current)
    return [p.strip() for p in parts if p.strip()]


def _parse_label_term(term: str) -> tuple[str, str, set[str]]:
    """One requirement as (operator, key, values): ``in``, ``notin``, ``exists``, ``!exists``."""
    for word, op in ((" notin ", "notin"), (" in ", "in")):
        if word in term:
            key, _, values = term.partition(word)
            return op, key.strip(), {v.strip() for v in values.strip().strip("()").split(",")}
    if "!=" in term:
        key, _, value = term.partition("!=")
        return "notin", key.strip(), {value.strip()}
    if "=" in term:
        key, _, value = term.replace("==", "=").partition("=")
        return "in", key.strip(), {value.strip()}
    if term.startswith("!"):
        return "!exists", term[1:].strip(), set()
    return "exists", term, set()


def label_matcher(selector: str | None) -> Callable[[dict[str, str]], bool]:
    """A predicate for a label selector: ``k=v``, ``k==v``, ``k!=v``, ``k``, ``!k``, ``k in (a,b)``,
    ``k notin (a,b)``; comma means AND."""
    terms = [_parse_label_term(t) for t in _split_selector(selector or "")]

    def matches(labels: dict[str, str]) -> bool:
        for op, key, values in terms:
            ok = {
                "in": labels.get(key) in values,
                "notin": labels.get(key) not in values,
                "exists": key in labels,
                "!exists": key not in labels,
            }[op]
            if not ok:
                return False
        return True

    return matches


def field_matcher(selector: str | None) -> Callable[[Obj], bool]:
    """``metadata.name``, ``metadata.namespace``, ``status.phase``... with ``=``, ``==``, ``!=``."""
    terms = []
    for term in _split_selector(selector or ""):
        negated = "!=" in term
        path, _, value = term.replace("==", "=").partition("!=" if negated else "=")
        terms.append((path.strip().split("."), value.strip(), negated))

    def matches(obj: Obj) -> bool:
        for path, value, negated in terms:
            found: Any = obj
            for part in path:
                found = found.get(part) if isinstance(found, dict) else None
            if (found == value) == negated:
                return False
        return True

    return matches


# -- processes ---------------------------------------------------------------------------------------


@dataclass
class Container:
    """One container of a pod: its process, its log files (one per attempt), its outcome."""

    name: str
    log_dir: Path
    attempt: int = 0
    proc: subprocess.Popen[bytes] | None = None
    exited: bool = False
    oom: bool = False
    logs: list[Path] = field(default_factory=list)

    def signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, sig)  # the container is its whole process group
            except ProcessLookupError:
                pass


@dataclass
class PodRuntime:
    uid: str
    containers: list[Container]
    stopping: bool = False
    kill_timer: threading.Timer | None = None


class Cluster:
    """The objects, their history, and the controllers that act on them."""

    HISTORY = 50_000

    def __init__(self, workdir: Path, *, pod_backoff: float = 0.2, bookmark_interval: float = 1.0) -> None:
        self.workdir = workdir
        self.pod_backoff = pod_backoff
        self.bookmark_interval = bookmark_interval
        self.lock = threading.RLock()
        self.changed = threading.Condition(self.lock)
        self.rv = 1000
        self.compacted = self.rv  # watches from an RV before this get 410 Expired
        self.objects: dict[tuple[str, str, str], Obj] = {}
        self.history: deque[tuple[int, str, str, Obj]] = deque()
        self.runtimes: dict[str, PodRuntime] = {}
        self._next_pod_at: dict[str, float] = {}  # job uid -> monotonic time a replacement may start
        self._started: dict[str, float] = {}  # job uid -> when it started
        self._closed = False
        self._wake = threading.Event()
        self._controller = threading.Thread(target=self._control_loop, name="job-controller", daemon=True)
        self._controller.start()

    # -- storage ------------------------------------------------------------------------------------

    def _write(self, resource: str, event: str, obj: Obj) -> Obj:
        """Store ``obj`` (or drop it on DELETED) with a new resource version; record the event."""
        self.rv += 1
        meta = obj["metadata"]
        meta["resourceVersion"] = str(self.rv)
        key = (resource, meta.get("namespace", ""), meta["name"])
        if event == "DELETED":
            self.objects.pop(key, None)
        else:
            self.objects[key] = obj
        self.history.append((self.rv, resource, event, copy.deepcopy(obj)))
        while len(self.history) > self.HISTORY:
            self.compacted = self.history.popleft()[0]
        self.changed.notify_all()
        self._wake.set()
        return obj

    def get(self, resource: str, namespace: str, name: str) -> Obj:
        with self.lock:
            obj = self.objects.get((resource, namespace, name))
            if obj is None:
                raise not_found(resource, name)
            return copy.deepcopy(obj)

    def list(
        self, resource: str, namespace: str | None, labels: str | None = None, fields: str | None = None
    ) -> tuple[list[Obj], int]:
        match_labels, match_fields = label_matcher(labels), field_matcher(fields)
        with self.lock:
            found = [
                copy.deepcopy(obj)
                for (res, ns, _), obj in sorted(self.objects.items())
                if res == resource
                and (namespace is None or ns == namespace)
                and match_labels(obj["metadata"].get("labels") or {})
                and match_fields(obj)
            ]
            return found, self.rv

    def watch(
        self,
        resource: str,
        namespace: str | None,
        labels: str | None,
        fields: str | None,
        since: str | None,
        stop: Callable[[], bool],
        timeout: float | None,
    ) -> Iterator[tuple[str, Obj] | None]:
        """Events as (type, object); None when idle for ``bookmark_interval`` (the caller may send a
        bookmark). Raises ApiError(410) for a resource version older than the history kept."""
        match_labels, match_fields = label_matcher(labels), field_matcher(fields)

        def wanted(res: str, obj: Obj) -> bool:
            meta = obj["metadata"]
            return (
                res == resource
                and (namespace is None or meta.get("namespace") == namespace)
                and match_labels(meta.get("labels") or {})
                and match_fields(obj)
            )

        deadline = None if timeout is None else time.monotonic() + timeout
        with self.lock:
            if since in (None, "", "0"):
                cursor = self.rv
                initial = [("ADDED", o) for o in self.list(resource, namespace, labels, fields)[0]]
            else:
                cursor = int(since)  # type: ignore[arg-type]
                if cursor < self.compacted:
                    raise ApiError(410, "Expired", f"too old resource version: {cursor} ({self.compacted})")
                initial = []
        yield from initial
        while not stop() and not self._closed:
            with self.lock:
                pending = [(t, o) for rv, res, t, o in self.history if rv > cursor and wanted(res, o)]
                cursor = self.rv
                if not pending:
                    wait = self.bookmark_interval
                    if deadline is not None:
                        wait = min(wait, deadline - time.monotonic())
                    if wait > 0:
                        self.changed.wait(wait)
                    pending = [(t, o) for rv, res, t, o in self.history if rv > cursor and wanted(res, o)]
                    cursor = self.rv
            for event in pending:
                yield (event[0], copy.deepcopy(event[1]))
            if deadline is not None and time.monotonic() >= deadline:
                return
            if not pending:
                yield None

    def current_rv(self) -> int:
        with self.lock:
            return self.rv

    # -- secrets ------------------------------------------------------------------------------------

    def create_secret(self, namespace: str, body: Obj, dry_run: bool) -> Obj:
        obj = copy.deepcopy(body)
        obj.update(apiVersion="v1", kind="Secret")
        meta = self._new_meta("secrets", namespace, obj)
        data = dict(obj.get("data") or {})
        for key, value in (obj.pop("stringData", None) or {}).items():
            data[key] = base64.b64encode(str(value).encode()).decode()
        obj["data"] = data
        obj.setdefault("type", "Opaque")
        with self.lock:
            if ("secrets", namespace, meta["name"]) in self.objects:
                raise _exists("secrets", meta["name"])
            return copy.deepcopy(obj) if dry_run else copy.deepcopy(self._write("secrets", "ADDED", obj))

    def delete_secret(self, namespace: str, name: str) -> Obj:
        with self.lock:
            obj = self.objects.get(("secrets", namespace, name))
            if obj is None:
                raise not_found("secrets", name)
            self._write("secrets", "DELETED", copy.deepcopy(obj))
            return _success("secrets", name, obj["metadata"]["uid"])

    # -- jobs ---------------------------------------------------------------------------------------

    def _new_meta(self, resource: str, namespace: str, obj: Obj) -> Obj:
        meta = obj.setdefault("metadata", {})
        if not meta.get("name"):
            if not meta.get("generateName"):
                raise invalid(
                    resource,
                    "",
                    [
                        (
                            "FieldValueRequired",
                            "metadata.name",
                            "Required value: name or generateName is required",
                        )
                    ],
                )
            meta["name"] = meta["generateName"] + "".join(random.choices(_NAME_CHARS, k=5))
        meta["namespace"] = namespace
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = now_rfc3339()
        meta.pop("resourceVersion", None)
        meta.pop("deletionTimestamp", None)
        return meta

    def create_job(self, namespace: str, body: Obj, dry_run: bool) -> Obj:
        """Create a Job with the defaults batch/v1 adds (notes §7), after validating the parts the
        runtime relies on (restartPolicy, pod failure policy, containers)."""
        job = copy.deepcopy(body)
        job.update(apiVersion="batch/v1", kind="Job")
        meta = self._new_meta("jobs", namespace, job)
        name, uid = meta["name"], meta["uid"]
        spec = job.setdefault("spec", {})
        template = spec.get("template") or {}
        pod_spec = template.get("spec") or {}
        causes: list[tuple[str, str, str]] = []
        containers = pod_spec.get("containers") or []
        if not containers:
            causes.append(("FieldValueRequired", "spec.template.spec.containers", "Required value"))
        for i, c in enumerate(containers):
            if not c.get("name"):
                causes.append(
                    ("FieldValueRequired", f"spec.template.spec.containers[{i}].name", "Required value")
                )
            if not c.get("image"):
                causes.append(
                    ("FieldValueRequired", f"spec.template.spec.containers[{i}].image", "Required value")
                )
        restart = pod_spec.get("restartPolicy", "Always")
        if restart not in ("Never", "OnFailure"):
            causes.append(
                (
                    "FieldValueNotSupported",
                    "spec.template.spec.restartPolicy",
                    f'Unsupported value: "{restart}": supported values: "OnFailure", "Never"',
                )
            )
        policy = spec.get("podFailurePolicy")
        if policy is not None:
            if restart != "Never":
                causes.append(
                    (
                        "FieldValueInvalid",
                        "spec.podFailurePolicy",
                        "Invalid value: only allowed when spec.template.spec.restartPolicy is Never",
                    )
                )
            for i, rule in enumerate(policy.get("rules") or []):
                codes = rule.get("onExitCodes")
                if codes is not None and codes.get("operator") == "In" and 0 in (codes.get("values") or []):
                    causes.append(
                        (
                            "FieldValueInvalid",
                            f"spec.podFailurePolicy.rules[{i}].onExitCodes.values[0]",
                            "Invalid value: 0: must not be 0 for the In operator",
                        )
                    )
        if causes:
            raise invalid("jobs", name, causes)
        for key, default in (("backoffLimit", 6), ("completions", 1), ("parallelism", 1)):
            spec.setdefault(key, default)
        spec.setdefault("completionMode", "NonIndexed")
        spec.setdefault("suspend", False)
        spec.setdefault("podReplacementPolicy", "Failed" if policy is not None else "TerminatingOrFailed")
        generated = {
            "batch.kubernetes.io/controller-uid": uid,
            "batch.kubernetes.io/job-name": name,
            "controller-uid": uid,
            "job-name": name,
        }
        if not spec.get("manualSelector"):
            spec["selector"] = {"matchLabels": {"batch.kubernetes.io/controller-uid": uid}}
            tmeta = template.setdefault("metadata", {})
            tmeta["labels"] = {**(tmeta.get("labels") or {}), **generated}
        if not meta.get("labels"):
            meta["labels"] = dict(template.get("metadata", {}).get("labels") or generated)
        meta["generation"] = 1
        pod_spec.setdefault("terminationGracePeriodSeconds", 30)
        pod_spec.setdefault("dnsPolicy", "ClusterFirst")
        pod_spec.setdefault("schedulerName", "default-scheduler")
        job["status"] = {}
        with self.lock:
            if ("jobs", namespace, name) in self.objects:
                raise _exists("jobs", name)
            if dry_run:
                return copy.deepcopy(job)
            return copy.deepcopy(self._write("jobs", "ADDED", job))

    def delete_job(
        self, namespace: str, name: str, policy: str | None, grace: int | None = None
    ) -> tuple[Obj, str | None]:
        """Delete a Job: ``Background`` removes it now and its pods after; ``Foreground`` marks it and
        removes it once its pods are gone; no policy (batch/v1's default, Orphan) keeps the pods.
        Returns (body, warning header)."""
        with self.lock:
            job = self.objects.get(("jobs", namespace, name))
            if job is None:
                raise not_found("jobs", name)
            uid = job["metadata"]["uid"]
            if policy == "Foreground":
                job = copy.deepcopy(job)
                meta = job["metadata"]
                if not meta.get("deletionTimestamp"):
                    meta["deletionTimestamp"] = now_rfc3339()
                    meta["deletionGracePeriodSeconds"] = 0
                    meta["finalizers"] = [*(meta.get("finalizers") or []), "foregroundDeletion"]
                    self._write("jobs", "MODIFIED", job)
                self._collect(uid, grace)
                return copy.deepcopy(job), None
            self._write("jobs", "DELETED", copy.deepcopy(job))
            warning = None
            if policy in (None, "Orphan"):
                if policy is None:
                    warning = (
                        '299 - "child pods are preserved by default when jobs are deleted; set '
                        "propagationPolicy=Background to remove them or set propagationPolicy=Orphan "
                        'to suppress this warning"'
                    )
                for pod in self._pods_of(uid):
                    pod = copy.deepcopy(pod)
                    meta = pod["metadata"]
                    meta["ownerReferences"] = []
                    meta["finalizers"] = [f for f in meta.get("finalizers") or [] if f != TRACKING]
                    self._write("pods", "MODIFIED", pod)
            else:
                self._collect(uid, grace)
            return _success("jobs", name, uid), warning

    def _collect(self, job_uid: str, grace: int | None) -> None:
        """The garbage collector: delete every pod the Job owns (their tracking finalizer goes:
        nothing will count them any more)."""
        for pod in self._pods_of(job_uid):
            pod = copy.deepcopy(pod)
            pod["metadata"]["finalizers"] = [
                f for f in pod["metadata"].get("finalizers") or [] if f != TRACKING
            ]
            self._write("pods", "MODIFIED", pod)
            self._delete_pod(pod["metadata"]["namespace"], pod["metadata"]["name"], grace)

    def _pods_of(self, job_uid: str) -> list[Obj]:
        return [
            obj
            for (res, _, _), obj in sorted(self.objects.items())
            if res == "pods"
            and any(ref.get("uid") == job_uid for ref in obj["metadata"].get("ownerReferences") or [])
        ]

    # -- pods ---------------------------------------------------------------------------------------

    def delete_pod(self, namespace: str, name: str, grace: int | None = None) -> Obj:
        """Graceful delete: the pod gets ``deletionTimestamp``, its processes SIGTERM (SIGKILL after
        the grace period), and it goes once they exited and no finalizer holds it. Returns the Pod."""
        with self.lock:
            return copy.deepcopy(self._delete_pod(namespace, name, grace))

    def _delete_pod(self, namespace: str, name: str, grace: int | None) -> Obj:
        pod = self.objects.get(("pods", namespace, name))
        if pod is None:
            raise not_found("pods", name)
        pod = copy.deepcopy(pod)
        meta = pod["metadata"]
        if grace is None:
            grace = int(pod["spec"].get("terminationGracePeriodSeconds", 30))
        if not meta.get("deletionTimestamp"):
            meta["deletionTimestamp"] = now_rfc3339(time.time() + grace)
            meta["deletionGracePeriodSeconds"] = grace
            self._write("pods", "MODIFIED", pod)
        self._stop_pod(meta["uid"], grace)
        self._maybe_remove(pod)
        return pod

    def evict_pod(self, namespace: str, name: str) -> None:
        """The Eviction API: a ``DisruptionTarget`` condition, then a graceful delete."""
        with self.lock:
            pod = self.objects.get(("pods", namespace, name))
            if pod is None:
                raise not_found("pods", name)
            pod = copy.deepcopy(pod)
            conditions = pod["status"].setdefault("conditions", [])
            conditions.append(
                {
                    "type": "DisruptionTarget",
                    "status": "True",
                    "reason": "EvictionByEvictionAPI",
                    "message": "Eviction API: evicting",
                    "lastProbeTime": None,
                    "lastTransitionTime": now_rfc3339(),
                }
            )
            self._write("pods", "MODIFIED", pod)
            self._delete_pod(namespace, name, None)

    def kill_pod(self, namespace: str, name: str, *, oom: bool = False) -> None:
        """SIGKILL every container's process (a crash, or with ``oom`` the OOM killer)."""
        with self.lock:
            pod = self.objects.get(("pods", namespace, name))
            if pod is None:
                raise not_found("pods", name)
            runtime = self.runtimes.get(pod["metadata"]["uid"])
            for c in runtime.containers if runtime else []:
                c.oom = oom
                c.signal(signal.SIGKILL)

    def _stop_pod(self, uid: str, grace: int) -> None:
        runtime = self.runtimes.get(uid)
        if runtime is None or runtime.stopping:
            return
        runtime.stopping = True
        for c in runtime.containers:
            c.signal(signal.SIGKILL if grace == 0 else signal.SIGTERM)
        if grace > 0:
            runtime.kill_timer = threading.Timer(
                grace, lambda: [c.signal(signal.SIGKILL) for c in runtime.containers]
            )
            runtime.kill_timer.daemon = True
            runtime.kill_timer.start()

    def _maybe_remove(self, pod: Obj) -> None:
        """A deleted pod disappears once its containers stopped and no finalizer holds it."""
        meta = pod["metadata"]
        runtime = self.runtimes.get(meta["uid"])
        running = runtime is not None and not all(c.exited for c in runtime.containers)
        if meta.get("deletionTimestamp") and not meta.get("finalizers") and not running:
            if runtime is not None and runtime.kill_timer is not None:
                runtime.kill_timer.cancel()
            self.runtimes.pop(meta["uid"], None)
            self._write("pods", "DELETED", copy.deepcopy(pod))

    def _create_pod(self, job: Obj) -> None:
        jmeta, template = job["metadata"], job["spec"]["template"]
        ns = jmeta["namespace"]
        pod: Obj = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "generateName": jmeta["name"] + "-",
                "labels": dict(template.get("metadata", {}).get("labels") or {}),
                "annotations": {
                    **(template.get("metadata", {}).get("annotations") or {}),
                    # Creation order (timestamps have whole seconds): tests sort pods by it.
                    "kitaru-double/sequence": str(self.rv + 1),
                },
                "ownerReferences": [
                    {
                        "apiVersion": "batch/v1",
                        "kind": "Job",
                        "name": jmeta["name"],
                        "uid": jmeta["uid"],
                        "controller": True,
                        "blockOwnerDeletion": True,
                    }
                ],
                "finalizers": [TRACKING],
            },
            "spec": {
                **copy.deepcopy(template.get("spec") or {}),
                "nodeName": "kitaru-double",
            },
        }
        pod["spec"].setdefault("serviceAccountName", "default")
        meta = self._new_meta("pods", ns, pod)
        while ("pods", ns, meta["name"]) in self.objects:
            meta["name"] = meta["generateName"] + "".join(random.choices(_NAME_CHARS, k=5))
        now = now_rfc3339()
        containers = pod["spec"]["containers"]
        pod["status"] = {
            "phase": "Pending",
            "conditions": [
                {"type": "PodScheduled", "status": "True", "lastProbeTime": None, "lastTransitionTime": now}
            ],
            "hostIP": "127.0.0.1",
            "podIP": "127.0.0.1",
            "qosClass": "BestEffort",
            "startTime": now,
            "containerStatuses": [
                {
                    "name": c["name"],
                    "image": c["image"],
                    "imageID": "",
                    "ready": False,
                    "restartCount": 0,
                    "started": False,
                    "state": {"waiting": {"reason": "ContainerCreating"}},
                    "lastState": {},
                }
                for c in containers
            ],
        }
        self._write("pods", "ADDED", pod)
        log_dir = self.workdir / "pods" / meta["uid"]
        log_dir.mkdir(parents=True)
        runtime = PodRuntime(meta["uid"], [Container(c["name"], log_dir) for c in containers])
        self.runtimes[meta["uid"]] = runtime
        for index, (spec, container) in enumerate(zip(containers, runtime.containers, strict=True)):
            threading.Thread(
                target=self._run_container,
                args=(ns, meta["name"], meta["uid"], index, spec, container),
                name=f"kubelet-{meta['name']}-{spec['name']}",
                daemon=True,
            ).start()

    # -- the kubelet --------------------------------------------------------------------------------

    def _resolve_env(self, ns: str, spec: Obj) -> dict[str, str]:
        """The container's environment: this machine's (the "image"), then ``envFrom`` secrets, then
        ``env`` (values, ``$(VAR)`` references, ``secretKeyRef``). A missing secret raises KeyError
        with kubelet's message."""
        env = dict(os.environ)
        for source in spec.get("envFrom") or []:
            ref = source.get("secretRef")
            if ref is None:
                continue
            secret = self.objects.get(("secrets", ns, ref["name"]))
            if secret is None:
                if ref.get("optional"):
                    continue
                raise KeyError(f'secret "{ref["name"]}" not found')
            for key, value in (secret.get("data") or {}).items():
                env[source.get("prefix", "") + key] = base64.b64decode(value).decode()
        for item in spec.get("env") or []:
            if "valueFrom" in item:
                ref = item["valueFrom"].get("secretKeyRef")
                if ref is None:
                    continue
                secret = self.objects.get(("secrets", ns, ref["name"]))
                value = None if secret is None else (secret.get("data") or {}).get(ref["key"])
                if value is None:
                    if ref.get("optional"):
                        continue
                    if secret is None:
                        raise KeyError(f'secret "{ref["name"]}" not found')
                    raise KeyError(f"couldn't find key {ref['key']} in Secret {ns}/{ref['name']}")
                env[item["name"]] = base64.b64decode(value).decode()
            else:
                value = str(item.get("value", ""))
                for name, known in env.items():
                    value = value.replace(f"$({name})", known)
                env[item["name"]] = value
        return env

    def _update_container(
        self, ns: str, name: str, uid: str, index: int, change: Callable[[Obj], None]
    ) -> Obj | None:
        """Apply ``change`` to a container status and recompute the pod's phase and conditions."""
        pod = self.objects.get(("pods", ns, name))
        if pod is None or pod["metadata"]["uid"] != uid:
            return None
        pod = copy.deepcopy(pod)
        statuses = pod["status"]["containerStatuses"]
        change(statuses[index])
        states = [s["state"] for s in statuses]
        # A container that will restart is "waiting", not "terminated": all terminated is final.
        if all("terminated" in s for s in states):
            ok = all(s["terminated"]["exitCode"] == 0 for s in states)
            pod["status"]["phase"] = "Succeeded" if ok else "Failed"
        elif any("running" in s or "terminated" in s for s in states):
            pod["status"]["phase"] = "Running"
        ready = all("running" in s for s in states)
        for s in statuses:
            s["ready"] = "running" in s["state"]
            s["started"] = "running" in s["state"]
        now = now_rfc3339()
        conditions = [
            c for c in pod["status"]["conditions"] if c["type"] in ("PodScheduled", "DisruptionTarget")
        ]
        for kind, value in (
            ("PodReadyToStartContainers", True),
            ("Initialized", True),
            ("Ready", ready),
            ("ContainersReady", ready),
        ):
            old = next((c for c in pod["status"]["conditions"] if c["type"] == kind), None)
            status = "True" if value else "False"
            if old is not None and old["status"] == status:
                conditions.append(old)
            else:
                conditions.append(
                    {"type": kind, "status": status, "lastProbeTime": None, "lastTransitionTime": now}
                )
        pod["status"]["conditions"] = conditions
        self._write("pods", "MODIFIED", pod)
        self._maybe_remove(pod)
        return pod

    def _never_started(self, ns: str, name: str, uid: str, index: int, container: Container) -> None:
        """The pod went (deleted, or the double stopped) before this container ran."""
        container.exited = True
        pod = self.objects.get(("pods", ns, name))
        if pod is None:
            return
        if "terminated" in pod["status"]["containerStatuses"][index]["state"]:
            self._maybe_remove(pod)
        else:
            self._update_container(
                ns,
                name,
                uid,
                index,
                lambda s: s.update(state=_terminated(137, "ContainerStatusUnknown", None)),
            )

    def _run_container(
        self, ns: str, name: str, uid: str, index: int, spec: Obj, container: Container
    ) -> None:
        restarts = 0
        while True:
            # Wait for the configuration: a missing secret holds the container, as the kubelet does.
            while True:
                with self.lock:
                    runtime = self.runtimes.get(uid)
                    if runtime is None or runtime.stopping or self._closed:
                        self._never_started(ns, name, uid, index, container)
                        return
                    try:
                        env = self._resolve_env(ns, spec)
                        break
                    except KeyError as exc:
                        waiting = {"reason": "CreateContainerConfigError", "message": str(exc.args[0])}
                        pod = self.objects.get(("pods", ns, name))
                        if (
                            pod is not None
                            and pod["status"]["containerStatuses"][index]["state"].get("waiting") != waiting
                        ):
                            self._update_container(
                                ns, name, uid, index, lambda s, w=waiting: s.update(state={"waiting": w})
                            )
                time.sleep(0.1)
            argv = [*(spec.get("command") or []), *(spec.get("args") or [])]
            env["HOSTNAME"] = name
            env.setdefault("KUBERNETES_SERVICE_HOST", "127.0.0.1")
            cwd = spec.get("workingDir") or str(container.log_dir / f"{spec['name']}-root")
            Path(cwd).mkdir(parents=True, exist_ok=True)
            log = container.log_dir / f"{spec['name']}-{container.attempt}.log"
            started = now_rfc3339()
            with self.lock:
                runtime = self.runtimes.get(uid)
                if runtime is None or runtime.stopping or self._closed:
                    self._never_started(ns, name, uid, index, container)
                    return
                container.logs.append(log)
                try:
                    if not argv:
                        raise FileNotFoundError(
                            "the container has no command (the double knows no image entrypoints)"
                        )
                    with open(log, "wb") as out:
                        container.proc = subprocess.Popen(
                            argv,
                            env=env,
                            cwd=cwd,
                            stdout=out,
                            stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL,
                            start_new_session=True,  # the container is a process group: kill it whole
                        )
                except OSError as exc:
                    log.write_text(f"{exc}\n")
                    container.exited = True
                    failed = _terminated(128, "StartError", started, str(exc))
                    self._update_container(ns, name, uid, index, lambda s, f=failed: s.update(state=f))
                    return
                pid = container.proc.pid
                self._update_container(
                    ns,
                    name,
                    uid,
                    index,
                    lambda s, at=started, pid=pid: s.update(
                        state={"running": {"startedAt": at}},
                        containerID=f"process://{pid}",
                        imageID=f"kitaru-double://{s['image']}",
                    ),
                )
            code = container.proc.wait()
            exit_code = 128 - code if code < 0 else code  # a signal N reads as 128+N, as runtimes report it
            with self.lock:
                reason = "OOMKilled" if container.oom else ("Completed" if exit_code == 0 else "Error")
                container.oom = False
                runtime = self.runtimes.get(uid)
                pod = self.objects.get(("pods", ns, name))
                terminated = _terminated(exit_code, reason, started, container_id=f"process://{pid}")
                restart = (
                    exit_code != 0
                    and pod is not None
                    and pod["spec"].get("restartPolicy") == "OnFailure"
                    and runtime is not None
                    and not runtime.stopping
                    and not self._closed
                )
                if not restart:
                    container.exited = True
                    self._update_container(ns, name, uid, index, lambda s, t=terminated: s.update(state=t))
                    return
                restarts += 1
                container.attempt += 1

                def restarted(s: Obj, n: int = restarts, terminated: Obj = terminated) -> None:
                    waiting = {
                        "reason": "CrashLoopBackOff",
                        "message": "back-off restarting failed container",
                    }
                    s.update(lastState=terminated, restartCount=n, state={"waiting": waiting})

                self._update_container(ns, name, uid, index, restarted)
            time.sleep(min(self.pod_backoff * 2 ** (restarts - 1), 5.0))

    # -- the Job controller -------------------------------------------------------------------------

    def _control_loop(self) -> None:
        while not self._closed:
            self._wake.wait(0.05)
            self._wake.clear()
            with self.lock:
                for key in [k for k in self.objects if k[0] == "jobs"]:
                    job = self.objects.get(key)
                    if job is None:
                        continue
                    try:
                        self._reconcile(job)
                    except Exception:  # a bug here must show, not stop every Job for good
                        traceback.print_exc()

    def _policy_action(self, job: Obj, pod: Obj) -> tuple[str, str | None]:
        """The pod failure policy's verdict on a failed pod: (action, FailJob message)."""
        policy = job["spec"].get("podFailurePolicy")
        ns, name = pod["metadata"]["namespace"], pod["metadata"]["name"]
        for i, rule in enumerate((policy or {}).get("rules") or []):
            action = rule.get("action")
            if action not in ("FailJob", "Ignore", "Count"):
                continue  # FailIndex is for Indexed Jobs; unknown actions skip the rule
            codes = rule.get("onExitCodes")
            if codes is not None:
                for status in pod["status"].get("containerStatuses") or []:
                    if codes.get("containerName") and codes["containerName"] != status["name"]:
                        continue
                    code = status["state"].get("terminated", {}).get("exitCode", 0)
                    if code == 0:
                        continue
                    inside = code in (codes.get("values") or [])
                    if inside == (codes.get("operator") == "In"):
                        return action, (
                            f"Container {status['name']} for pod {ns}/{name} failed with exit code {code} "
                            f"matching {action} rule at index {i}"
                        )
            for pattern in rule.get("onPodConditions") or []:
                wanted = (pattern.get("type"), pattern.get("status", "True"))
                for cond in pod["status"].get("conditions") or []:
                    if (cond["type"], cond["status"]) == wanted:
                        said = f"Pod {ns}/{name} has condition {cond['type']} matching {action} rule"
                        return action, f"{said} at index {i}"
        return "Count", None

    def _reconcile(self, job: Obj) -> None:
        job = copy.deepcopy(job)
        meta, spec = job["metadata"], job["spec"]
        uid = meta["uid"]
        pods = self._pods_of(uid)
        if meta.get("deletionTimestamp"):
            if not pods:
                self._write("jobs", "DELETED", job)
            return
        status = job.setdefault("status", {})
        before = copy.deepcopy(status)
        conditions: list[Obj] = status.setdefault("conditions", [])
        has = {c["type"] for c in conditions if c["status"] == "True"}
        now_s = now_rfc3339()

        def add_condition(kind: str, reason: str, message: str) -> None:
            if kind not in has:
                has.add(kind)
                conditions.append(
                    {
                        "type": kind,
                        "status": "True",
                        "reason": reason,
                        "message": message,
                        "lastProbeTime": now_s,
                        "lastTransitionTime": now_s,
                    }
                )

        if "Complete" in has or "Failed" in has:
            self._release(pods)
            self._expire(job)
            return
        if spec.get("suspend"):
            return
        if "startTime" not in status:
            status["startTime"] = now_s
            self._started[uid] = time.time()  # the deadline counts from here, not the whole second
        status["succeeded"] = status.get("succeeded", 0)
        status["failed"] = status.get("failed", 0)
        # Count the pods that finished and still carry the tracking finalizer, then release them.
        for pod in pods:
            pmeta = pod["metadata"]
            phase = pod["status"]["phase"]
            if TRACKING not in (pmeta.get("finalizers") or []) or phase not in ("Succeeded", "Failed"):
                continue
            if phase == "Succeeded":
                status["succeeded"] += 1
            else:
                action, message = self._policy_action(job, pod)
                if action != "Ignore":
                    status["failed"] += 1
                    backoff = self.pod_backoff * 2 ** (status["failed"] - 1)
                    self._next_pod_at[uid] = time.monotonic() + min(backoff, 36 * self.pod_backoff * 10)
                if action == "FailJob" and "FailureTarget" not in has:
                    add_condition("FailureTarget", "PodFailurePolicy", message or "")
            released = copy.deepcopy(pod)
            released["metadata"]["finalizers"] = [f for f in pmeta["finalizers"] if f != TRACKING]
            self._write("pods", "MODIFIED", released)
            self._maybe_remove(released)
        pods = self._pods_of(uid)
        active = [
            p
            for p in pods
            if p["status"]["phase"] in ("Pending", "Running") and not p["metadata"].get("deletionTimestamp")
        ]
        terminating = [
            p
            for p in pods
            if p["metadata"].get("deletionTimestamp") and p["status"]["phase"] in ("Pending", "Running")
        ]
        start = self._started.setdefault(uid, _seconds(status["startTime"]))
        deadline = spec.get("activeDeadlineSeconds")
        if "FailureTarget" not in has and "SuccessCriteriaMet" not in has:
            if spec["template"]["spec"].get("restartPolicy") == "OnFailure":
                restarts = sum(
                    s.get("restartCount", 0) for p in active for s in p["status"]["containerStatuses"]
                )
                if restarts > 0 and restarts >= spec["backoffLimit"]:
                    add_condition(
                        "FailureTarget", "BackoffLimitExceeded", "Job has reached the specified backoff limit"
                    )
            if status["failed"] > spec["backoffLimit"]:
                add_condition(
                    "FailureTarget", "BackoffLimitExceeded", "Job has reached the specified backoff limit"
                )
            elif deadline is not None and time.time() - start >= deadline:
                add_condition(
                    "FailureTarget", "DeadlineExceeded", "Job was active longer than specified deadline"
                )
            elif status["succeeded"] >= spec["completions"]:
                add_condition(
                    "SuccessCriteriaMet", "CompletionsReached", "Reached expected number of succeeded pods"
                )
        if "FailureTarget" in has or "SuccessCriteriaMet" in has:
            for pod in active:
                self._delete_pod(pod["metadata"]["namespace"], pod["metadata"]["name"], None)
            pods = self._pods_of(uid)
            if not any(p["status"]["phase"] in ("Pending", "Running") for p in pods):
                target = next(c for c in conditions if c["type"] in ("FailureTarget", "SuccessCriteriaMet"))
                if target["type"] == "FailureTarget":
                    add_condition("Failed", target["reason"], target["message"])
                else:
                    add_condition(
                        "Complete", "CompletionsReached", "Reached expected number of succeeded pods"
                    )
                    status["completionTime"] = now_s
                status.pop("active", None)
                status["uncountedTerminatedPods"] = {}
                self._next_pod_at.pop(uid, None)
            active, terminating = [], [p for p in pods if p["status"]["phase"] in ("Pending", "Running")]
        else:
            blocked = terminating and spec.get("podReplacementPolicy") == "Failed"
            if not active and not blocked and time.monotonic() >= self._next_pod_at.get(uid, 0.0):
                self._create_pod(job)
                active = [None]  # type: ignore[list-item]
        if active:
            status["active"] = len(active)
        else:
            status.pop("active", None)
        status["ready"] = sum(
            1
            for p in active
            if p is not None and all(s.get("ready") for s in p["status"]["containerStatuses"])
        )
        status["terminating"] = len(terminating)
        if not conditions:
            status.pop("conditions")
        for count in ("succeeded", "failed"):  # int32 with omitempty upstream: 0 is not sent
            if not status.get(count):
                status.pop(count, None)
        current = self.objects.get(("jobs", meta["namespace"], meta["name"]))
        if status != before and current is not None and current["metadata"]["uid"] == uid:
            self._write("jobs", "MODIFIED", job)

    def _release(self, pods: list[Obj]) -> None:
        """A finished Job counts nothing more: its finished pods lose the tracking finalizer."""
        for pod in pods:
            finalizers = pod["metadata"].get("finalizers") or []
            if TRACKING in finalizers and pod["status"]["phase"] in ("Succeeded", "Failed"):
                released = copy.deepcopy(pod)
                released["metadata"]["finalizers"] = [f for f in finalizers if f != TRACKING]
                self._write("pods", "MODIFIED", released)
                self._maybe_remove(released)

    def _expire(self, job: Obj) -> None:
        """The TTL controller: a finished Job goes ``ttlSecondsAfterFinished`` after it finished,
        deleted in the foreground (as upstream's controller does)."""
        ttl = job["spec"].get("ttlSecondsAfterFinished")
        if ttl is None:
            return
        finished = next(c for c in job["status"]["conditions"] if c["type"] in ("Complete", "Failed"))
        when = _seconds(finished["lastTransitionTime"])
        if time.time() >= when + ttl:
            self.delete_job(job["metadata"]["namespace"], job["metadata"]["name"], "Foreground")

    # -- shutdown -----------------------------------------------------------------------------------

    def close(self) -> None:
        """Stop the controllers and kill every pod's processes."""
        with self.lock:
            self._closed = True
            self.changed.notify_all()
            for runtime in self.runtimes.values():
                runtime.stopping = True
                for c in runtime.containers:
                    c.signal(signal.SIGKILL)
        self._wake.set()


def _terminated(
    code: int, reason: str, started: str | None, message: str | None = None, container_id: str | None = None
) -> Obj:
    state: Obj = {"exitCode": code, "reason": reason, "startedAt": started, "finishedAt": now_rfc3339()}
    if message:
        state["message"] = message
    if container_id:
        state["containerID"] = container_id
    return {"terminated": state}


def _seconds(stamp: str) -> float:
    return float(calendar.timegm(time.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ")))


def _exists(resource: str, name: str) -> ApiError:
    group = _KINDS[resource][2]
    details: Obj = {"name": name, "kind": resource}
    if group:
        details["group"] = group
    return ApiError(409, "AlreadyExists", f'{qualified(resource)} "{name}" already exists', details)


def _success(resource: str, name: str, uid: str) -> Obj:
    group = _KINDS[resource][2]
    details: Obj = {"name": name, "kind": resource, "uid": uid}
    if group:
        details["group"] = group
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "details": details}
