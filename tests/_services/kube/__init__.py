"""A Kubernetes apiserver double for tests: plain HTTP on 127.0.0.1, speaking the real wire
protocol (discovery, the minimal OpenAPI v3 kubectl validates with, ``batch/v1`` Jobs, ``core/v1``
Pods with logs and eviction, Secrets, watches with bookmarks, Status errors), whose "kubelet" runs
each container's ``command``/``args`` as a local process with the container's ``env``, and whose
Job controller applies restart, ``backoffLimit``, ``podFailurePolicy``, ``activeDeadlineSeconds``
and ``ttlSecondsAfterFinished`` with the conditions and counts of Kubernetes 1.31.
The wire facts it follows are in /work/shared/notes/kubernetes-wire.md.

Start it on its own with ``python -m tests._services.kube --port N`` (prints its URL). In tests, the
``kube_api`` fixture starts it in a child process on a free port and yields a :class:`KubeApi`: its
URL, a kubeconfig pointing at it, and what a node could do to a pod (SIGKILL it, evict it).

Where it simplifies: one node; no scheduling, images, resource limits or probes (a container is
ready once its process runs); pods are created only by Jobs; PATCH/PUT are not served; the
replacement back-off starts at ``--pod-backoff`` seconds (Kubernetes: 10 s).
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from tests._services import missing

__all__ = ["KUBECTL", "KUBECTL_INSTALL", "KubeApi", "kube_api", "kubectl"]

ROOT = Path(__file__).resolve().parents[3]
KUBECTL = Path("/usr/bin/kubectl")
KUBECTL_INSTALL = "apt-get install -y kubectl"
T = TypeVar("T")


class KubeApi:
    """A running double in a child process (``python -m tests._services.kube``)."""

    def __init__(self, workdir: Path, *, pod_backoff: float = 0.2) -> None:
        self.workdir = workdir
        argv = [sys.executable, "-m", "tests._services.kube", "--port", "0"]
        argv += ["--workdir", str(workdir / "cluster"), "--pod-backoff", str(pod_backoff)]
        with open(workdir / "apiserver.log", "wb") as log:
            self.proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=log, text=True)
        ready, _, _ = select.select([self.proc.stdout], [], [], 60)
        line = self.proc.stdout.readline().strip() if ready and self.proc.stdout else ""
        if not line.startswith("http://"):
            self.stop()
            raise RuntimeError(f"the apiserver double did not start: {self.log()}")
        self.url = line
        self.kubeconfig = workdir / "kubeconfig"
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "double", "cluster": {"server": self.url}}],
            "contexts": [
                {"name": "double", "context": {"cluster": "double", "user": "double", "namespace": "default"}}
            ],
            "current-context": "double",
            "users": [{"name": "double", "user": {"token": "dummy"}}],
        }
        self.kubeconfig.write_text(json.dumps(config, indent=2))  # JSON is YAML

    def log(self) -> str:
        path = self.workdir / "apiserver.log"
        return path.read_text(errors="replace")[-5000:] if path.exists() else ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(30)
        if self.proc.stdout:
            self.proc.stdout.close()

    # -- requests -----------------------------------------------------------------------------------

    def request(self, method: str, path: str, body: Any = None) -> Any:
        """One API call; the decoded JSON reply (an HTTPError carries the Status)."""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method)
        req.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(req, timeout=30) as reply:
            raw = reply.read()
            return (
                json.loads(raw) if reply.headers.get("Content-Type") == "application/json" else raw.decode()
            )

    def job(self, name: str, namespace: str = "default") -> dict[str, Any]:
        return self.request("GET", f"/apis/batch/v1/namespaces/{namespace}/jobs/{name}")  # type: ignore[no-any-return]

    def pods(self, job: str | None = None, namespace: str = "default") -> list[dict[str, Any]]:
        """The pods (of one Job, by its ``job-name`` label), oldest first."""
        query = f"?labelSelector=job-name%3D{job}" if job else ""
        items = self.request("GET", f"/api/v1/namespaces/{namespace}/pods{query}")["items"]
        return sorted(
            items, key=lambda p: (p["metadata"]["creationTimestamp"], int(p["metadata"]["resourceVersion"]))
        )

    def kill_pod(self, name: str, namespace: str = "default", *, oom: bool = False) -> None:
        """SIGKILL the pod's processes, as a crash (exit 137) or the OOM killer (``oom``) would."""
        self.request("POST", f"/_double/namespaces/{namespace}/pods/{name}/kill?oom={str(oom).lower()}")

    def evict_pod(self, name: str, namespace: str = "default") -> None:
        """Evict the pod through the Eviction API: ``DisruptionTarget``, then a graceful delete."""
        body = {
            "apiVersion": "policy/v1",
            "kind": "Eviction",
            "metadata": {"name": name, "namespace": namespace},
        }
        self.request("POST", f"/api/v1/namespaces/{namespace}/pods/{name}/eviction", body)

    def wait_for(self, probe: Callable[[], T | None], timeout: float = 60, what: str = "the condition") -> T:
        """Poll ``probe`` until it returns something truthy (its value), or fail after ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                value = probe()
            except urllib.error.HTTPError as exc:
                if exc.code != 404:
                    raise
                exc.close()
                value = None
            if value:
                return value
            if self.proc.poll() is not None:
                raise AssertionError(f"the apiserver double exited: {self.log()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{what} did not happen within {timeout} s")
            time.sleep(0.05)

    def condition(self, job: str, namespace: str = "default") -> str | None:
        """The Job's terminal condition type (``Complete``/``Failed``) once it has one."""
        conditions = self.job(job, namespace).get("status", {}).get("conditions") or []
        return next(
            (c["type"] for c in conditions if c["type"] in ("Complete", "Failed") and c["status"] == "True"),
            None,
        )


@pytest.fixture
def kube_api(tmp_path: Path) -> Iterator[KubeApi]:
    """A fresh apiserver double on a free port (``.url``, ``.kubeconfig``), stopped after the test."""
    workdir = Path(tempfile.mkdtemp(prefix="kube-", dir=tmp_path))
    api = KubeApi(workdir)
    try:
        yield api
    finally:
        api.stop()


@pytest.fixture
def kubectl(kube_api: KubeApi, tmp_path: Path) -> Callable[..., subprocess.CompletedProcess[str]]:
    """Run Debian's kubectl against the double, with a fresh HOME (its discovery cache lives there)."""
    if not KUBECTL.exists():
        missing("kubectl", KUBECTL_INSTALL)
    home = tmp_path / "kubectl-home"
    home.mkdir()
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "KUBECONFIG": str(kube_api.kubeconfig),
    }

    def run(
        *args: str, timeout: float = 120, check: bool = True, cwd: Path | None = None
    ) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [str(KUBECTL), *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=cwd or tmp_path,
        )
        if check and done.returncode != 0:
            raise AssertionError(
                f"kubectl {' '.join(args)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
            )
        return done

    return run
