"""The Kubernetes apiserver double, checked by real clients: Debian's kubectl and
kubernetes-asyncio talk to it over the wire, and its Job controller and kubelet run real
processes with the Job semantics the kubernetes orchestrator will rely on (retries, backoff limit,
pod failure policy, deadlines, TTL, deletion)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import urllib.error
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests._services.kube import KubeApi

pytestmark = pytest.mark.e2e

Kubectl = Callable[..., subprocess.CompletedProcess[str]]


def job_manifest(
    name: str, script: str, *, labels: dict[str, str] | None = None, **spec: Any
) -> dict[str, Any]:
    """A one-container Job that runs ``script`` with this Python (restartPolicy Never)."""
    container: dict[str, Any] = {
        "name": "main",
        "image": "kitaru-test:1",
        "command": [sys.executable, "-c", script],
    }
    container.update(spec.pop("container", {}))
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "labels": labels or {}},
        "spec": {
            "backoffLimit": spec.pop("backoffLimit", 0),
            "template": {
                "spec": {"restartPolicy": spec.pop("restartPolicy", "Never"), "containers": [container]}
            },
            **spec,
        },
    }


def create(api: KubeApi, manifest: dict[str, Any], namespace: str = "default") -> dict[str, Any]:
    return api.request("POST", f"/apis/batch/v1/namespaces/{namespace}/jobs", manifest)  # type: ignore[no-any-return]


def status_of(exc: urllib.error.HTTPError) -> dict[str, Any]:
    body = json.loads(exc.read())
    exc.close()
    return body  # type: ignore[no-any-return]


# -- kubectl ------------------------------------------------------------------------------------------


class TestKubectl:
    def test_create_list_wait_logs_and_delete_a_job(
        self, kube_api: KubeApi, kubectl: Kubectl, tmp_path: Path
    ) -> None:
        script = "import os; print('hello from', os.environ['WHO'])"
        (tmp_path / "job.yaml").write_text(
            textwrap.dedent(
                f"""\
                apiVersion: batch/v1
                kind: Job
                metadata:
                  name: hello
                  labels: {{kitaru.dev/execution: ex-1}}
                spec:
                  backoffLimit: 0
                  template:
                    spec:
                      restartPolicy: Never
                      containers:
                      - name: main
                        image: kitaru-test:1
                        command: ["{sys.executable}", "-c", "{script}"]
                        env:
                        - {{name: WHO, value: the-pod}}
                """
            )
        )
        assert "job.batch/hello created" in kubectl("create", "-f", "job.yaml").stdout
        listed = json.loads(kubectl("get", "jobs", "-l", "kitaru.dev/execution=ex-1", "-o", "json").stdout)
        assert [j["metadata"]["name"] for j in listed["items"]] == ["hello"]
        assert (
            json.loads(kubectl("get", "jobs", "-l", "kitaru.dev/execution=other", "-o", "json").stdout)[
                "items"
            ]
            == []
        )
        assert (
            "condition met"
            in kubectl("wait", "--for=condition=complete", "job/hello", "--timeout=60s").stdout
        )
        assert kubectl("logs", "job/hello").stdout == "hello from the-pod\n"
        table = kubectl("get", "jobs").stdout.splitlines()
        assert table[0].split()[:3] == ["NAME", "STATUS", "COMPLETIONS"] and table[1].split()[:3] == [
            "hello",
            "Complete",
            "1/1",
        ]
        pods = kubectl("get", "pods").stdout
        assert "hello-" in pods and "Completed" in pods
        assert 'job.batch "hello" deleted' in kubectl("delete", "job", "hello").stdout
        gone = kubectl("get", "job", "hello", check=False)
        assert gone.returncode != 0 and 'jobs.batch "hello" not found' in gone.stderr
        kube_api.wait_for(lambda: not kube_api.pods("hello"), what="the job's pods to be collected")

    def test_errors_come_back_as_kubectl_prints_them(
        self, kube_api: KubeApi, kubectl: Kubectl, tmp_path: Path
    ) -> None:
        manifest = job_manifest("twice", "pass")
        (tmp_path / "job.json").write_text(json.dumps(manifest))
        kubectl("create", "-f", "job.json")
        again = kubectl("create", "-f", "job.json", check=False)
        assert again.returncode != 0 and "(AlreadyExists)" in again.stderr
        bad = job_manifest("always", "pass", restartPolicy="Always")
        (tmp_path / "bad.json").write_text(json.dumps(bad))
        invalid = kubectl("create", "-f", "bad.json", check=False)
        assert (
            invalid.returncode != 0
            and "spec.template.spec.restartPolicy: Unsupported value" in invalid.stderr
        )
        missing = kubectl("logs", "nope", check=False)
        assert missing.returncode != 0 and 'pods "nope" not found' in missing.stderr


# -- kubernetes-asyncio -----------------------------------------------------------------------------


def test_kubernetes_asyncio_creates_watches_reads_logs_and_deletes(kube_api: KubeApi) -> None:
    import asyncio

    from kubernetes_asyncio import client, config, watch
    from kubernetes_asyncio.client.exceptions import ApiException

    script = "import time\nfor i in range(3):\n    print('line', i, flush=True); time.sleep(0.3)"

    async def scenario() -> None:
        await config.load_kube_config(config_file=str(kube_api.kubeconfig))
        async with client.ApiClient() as api:
            batch, core = client.BatchV1Api(api), client.CoreV1Api(api)
            created = await batch.create_namespaced_job(
                "default", job_manifest("ka", script, labels={"app": "ka"})
            )
            assert created.spec.selector.match_labels == {
                "batch.kubernetes.io/controller-uid": created.metadata.uid
            }
            with pytest.raises(ApiException) as conflict:
                await batch.create_namespaced_job("default", job_manifest("ka", script))
            assert (
                conflict.value.status == 409 and json.loads(conflict.value.body)["reason"] == "AlreadyExists"
            )

            listed = await batch.list_namespaced_job("default", label_selector="app=ka")
            assert [j.metadata.name for j in listed.items] == ["ka"]
            pods = await kube_api_wait(
                lambda: core.list_namespaced_pod("default", label_selector="job-name=ka")
            )
            pod = pods.items[0].metadata.name

            # Follow the log while the process writes it: lines arrive, then the stream ends.
            lines = []
            async with watch.Watch() as w:
                async for line in w.stream(core.read_namespaced_pod_log, pod, "default"):
                    lines.append(line.rstrip("\n"))
            assert lines == ["line 0", "line 1", "line 2"]

            # Watch from the list's resource version until the Job completes; bookmarks are plain dicts.
            seen = []
            async with watch.Watch() as w:
                async for event in w.stream(
                    batch.list_namespaced_job,
                    "default",
                    label_selector="app=ka",
                    resource_version=listed.metadata.resource_version,
                    allow_watch_bookmarks=True,
                    timeout_seconds=60,
                ):
                    if event["type"] == "BOOKMARK":
                        continue
                    conditions = event["object"].status.conditions or []
                    seen.append(event["type"])
                    if any(c.type == "Complete" and c.status == "True" for c in conditions):
                        break
            assert seen and seen[-1] == "MODIFIED"
            read = await batch.read_namespaced_job_status("ka", "default")
            assert (read.status.succeeded, read.status.active, read.status.completion_time is not None) == (
                1,
                None,
                True,
            )
            assert await core.read_namespaced_pod_log(pod, "default") == "line 0\nline 1\nline 2\n"

            deleted = await batch.delete_namespaced_job(
                "ka",
                "default",
                body=client.V1DeleteOptions(propagation_policy="Background", grace_period_seconds=0),
            )
            assert deleted.status == "Success" and deleted.details.name == "ka"
            with pytest.raises(ApiException) as gone:
                await batch.read_namespaced_job("ka", "default")
            assert gone.value.status == 404
            assert json.loads(gone.value.body) == {
                "kind": "Status",
                "apiVersion": "v1",
                "metadata": {},
                "status": "Failure",
                "message": 'jobs.batch "ka" not found',
                "reason": "NotFound",
                "details": {"name": "ka", "group": "batch", "kind": "jobs"},
                "code": 404,
            }
            # An expired resource version is an ERROR event the client raises as 410.
            with pytest.raises(ApiException) as expired:
                async with watch.Watch() as w:
                    async for _ in w.stream(
                        batch.list_namespaced_job, "default", resource_version="1", timeout_seconds=5
                    ):
                        pass
            assert expired.value.status == 410

    async def kube_api_wait(call: Any) -> Any:
        for _ in range(600):
            result = await call()
            if result.items:
                return result
            await asyncio.sleep(0.05)
        raise AssertionError("no pod appeared")

    asyncio.run(scenario())


# -- Job semantics ----------------------------------------------------------------------------------

#: The policy the kubernetes orchestrator will submit: a flow's own failure (exit 3) fails the Job
#: at once; an eviction is not counted; anything else (a crash, SIGKILL, OOM) counts to the limit.
WORKER_POLICY = {
    "rules": [
        {"action": "FailJob", "onExitCodes": {"operator": "In", "values": [3]}},
        {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
    ]
}
#: A worker stand-in: counts its starts in a file, then waits for a "go" file and exits with the
#: code written in it (so a test can kill it mid-run, then let the replacement finish).
WORKER = """
import os, pathlib, sys, time
d = pathlib.Path(os.environ["WORKDIR"])
starts = d / "starts"
starts.write_text(str(int(starts.read_text() if starts.exists() else "0") + 1))
print("start", starts.read_text(), flush=True)
go = d / ("go-" + starts.read_text())
while not go.exists():
    time.sleep(0.02)
sys.exit(int(go.read_text() or "0"))
"""


def worker_job(name: str, workdir: Path, **spec: Any) -> dict[str, Any]:
    env = [{"name": "WORKDIR", "value": str(workdir)}]
    return job_manifest(name, WORKER, container={"env": env}, **spec)


def running_pod(api: KubeApi, job: str, count: int, workdir: Path | None = None) -> dict[str, Any]:
    """Wait for the Job's ``count``-th pod to run (a worker counts its starts in ``workdir``);
    return it (one pod runs at a time)."""

    def probe() -> dict[str, Any] | None:
        if workdir is not None and _read(workdir / "starts") != str(count):
            return None
        running = [p for p in api.pods(job) if p["status"]["phase"] == "Running"]
        return running[-1] if running else None

    return api.wait_for(probe, what=f"pod {count} of {job} to run")


def conditions(job: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["reason"], c["message"]) for c in job["status"].get("conditions") or []}


class TestJobSemantics:
    def test_a_sigkilled_pod_is_replaced_and_the_replacement_completes_the_job(
        self, kube_api: KubeApi, tmp_path: Path
    ) -> None:
        create(kube_api, worker_job("crash", tmp_path, backoffLimit=2, podFailurePolicy=WORKER_POLICY))
        first = running_pod(kube_api, "crash", 1, tmp_path)
        pid = int(first["status"]["containerStatuses"][0]["containerID"].removeprefix("process://"))
        kube_api.kill_pod(first["metadata"]["name"])
        second = running_pod(kube_api, "crash", 2, tmp_path)
        (tmp_path / "go-2").write_text("0")
        assert kube_api.wait_for(lambda: kube_api.condition("crash"), what="the job to finish") == "Complete"
        assert not _alive(pid)
        pods = {p["metadata"]["name"]: p for p in kube_api.pods("crash")}
        killed = pods[first["metadata"]["name"]]["status"]
        assert killed["phase"] == "Failed"
        assert killed["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 137
        assert pods[second["metadata"]["name"]]["status"]["phase"] == "Succeeded"
        status = kube_api.job("crash")["status"]
        assert (status["succeeded"], status["failed"], "active" in status) == (1, 1, False)
        assert list(conditions(kube_api.job("crash"))) == ["SuccessCriteriaMet", "Complete"]
        assert (tmp_path / "starts").read_text() == "2"

    def test_the_flows_own_failure_fails_the_job_without_a_retry(
        self, kube_api: KubeApi, tmp_path: Path
    ) -> None:
        create(kube_api, worker_job("fails", tmp_path, backoffLimit=5, podFailurePolicy=WORKER_POLICY))
        pod = running_pod(kube_api, "fails", 1, tmp_path)
        (tmp_path / "go-1").write_text("3")
        assert kube_api.wait_for(lambda: kube_api.condition("fails"), what="the job to finish") == "Failed"
        found = conditions(kube_api.job("fails"))
        message = (
            f"Container main for pod default/{pod['metadata']['name']} failed with exit code 3 "
            "matching FailJob rule at index 0"
        )
        assert found == {
            "FailureTarget": ("PodFailurePolicy", message),
            "Failed": ("PodFailurePolicy", message),
        }
        assert len(kube_api.pods("fails")) == 1 and (tmp_path / "starts").read_text() == "1"

    def test_an_evicted_pod_is_not_counted_and_is_replaced(self, kube_api: KubeApi, tmp_path: Path) -> None:
        create(kube_api, worker_job("evicted", tmp_path, backoffLimit=0, podFailurePolicy=WORKER_POLICY))
        first = running_pod(kube_api, "evicted", 1, tmp_path)
        kube_api.evict_pod(first["metadata"]["name"])
        running_pod(kube_api, "evicted", 2, tmp_path)
        (tmp_path / "go-2").write_text("0")
        assert (
            kube_api.wait_for(lambda: kube_api.condition("evicted"), what="the job to finish") == "Complete"
        )
        assert kube_api.job("evicted")["status"].get("failed", 0) == 0  # backoffLimit 0, yet not failed
        # The evicted pod was deleted once its process stopped (its DisruptionTarget made it so).
        assert [p["metadata"]["name"] for p in kube_api.pods("evicted")] != [first["metadata"]["name"]]
        assert first["metadata"]["name"] not in {p["metadata"]["name"] for p in kube_api.pods("evicted")}

    def test_the_backoff_limit_allows_limit_plus_one_pods(self, kube_api: KubeApi) -> None:
        create(kube_api, job_manifest("flaky", "print('boom'); raise SystemExit(1)", backoffLimit=2))
        assert kube_api.wait_for(lambda: kube_api.condition("flaky"), what="the job to finish") == "Failed"
        job = kube_api.job("flaky")
        assert conditions(job)["Failed"] == (
            "BackoffLimitExceeded",
            "Job has reached the specified backoff limit",
        )
        assert job["status"]["failed"] == 3 and len(kube_api.pods("flaky")) == 3
        pod = kube_api.pods("flaky")[0]["metadata"]["name"]
        assert kube_api.request("GET", f"/api/v1/namespaces/default/pods/{pod}/log") == "boom\n"

    def test_on_failure_restarts_the_container_in_the_same_pod(
        self, kube_api: KubeApi, tmp_path: Path
    ) -> None:
        create(kube_api, worker_job("restarts", tmp_path, backoffLimit=3, restartPolicy="OnFailure"))
        pod = running_pod(kube_api, "restarts", 1, tmp_path)["metadata"]["name"]
        (tmp_path / "go-1").write_text("1")
        kube_api.wait_for(lambda: _read(tmp_path / "starts") == "2", what="a restart")
        (tmp_path / "go-2").write_text("0")
        assert (
            kube_api.wait_for(lambda: kube_api.condition("restarts"), what="the job to finish") == "Complete"
        )
        [only] = kube_api.pods("restarts")
        assert only["metadata"]["name"] == pod
        status = only["status"]["containerStatuses"][0]
        assert status["restartCount"] == 1 and status["lastState"]["terminated"]["exitCode"] == 1

    def test_active_deadline_kills_the_pod_and_fails_the_job(self, kube_api: KubeApi, tmp_path: Path) -> None:
        create(kube_api, worker_job("slow", tmp_path, activeDeadlineSeconds=1))
        assert kube_api.wait_for(lambda: kube_api.condition("slow"), what="the deadline") == "Failed"
        assert conditions(kube_api.job("slow"))["Failed"][0] == "DeadlineExceeded"
        for pod in kube_api.pods("slow"):  # the worker never got its "go": whatever ran was killed
            state = pod["status"]["containerStatuses"][0]
            assert "terminated" in state["state"]
            if "containerID" in state:
                assert not _alive(int(state["containerID"].removeprefix("process://")))

    def test_ttl_after_finished_deletes_the_job_and_its_pods(self, kube_api: KubeApi) -> None:
        create(kube_api, job_manifest("short", "pass", ttlSecondsAfterFinished=0))
        kube_api.wait_for(lambda: _gone(kube_api, "short"), what="the TTL controller")
        assert kube_api.pods("short") == []

    def test_deleting_a_job_kills_its_processes(self, kube_api: KubeApi, tmp_path: Path) -> None:
        for name, policy in (("bg", "Background"), ("fg", "Foreground")):
            (tmp_path / name).mkdir()
            create(kube_api, worker_job(name, tmp_path / name, backoffLimit=0))
            pod = running_pod(kube_api, name, 1, tmp_path / name)
            pid = int(pod["status"]["containerStatuses"][0]["containerID"].removeprefix("process://"))
            reply = kube_api.request(
                "DELETE", f"/apis/batch/v1/namespaces/default/jobs/{name}?propagationPolicy={policy}"
            )
            if policy == "Foreground":  # the Job stays, marked, until its pods are gone
                assert reply["kind"] == "Job" and "foregroundDeletion" in reply["metadata"]["finalizers"]
            else:
                assert reply["status"] == "Success"
            kube_api.wait_for(
                lambda name=name: _gone(kube_api, name) and not kube_api.pods(name), what="the GC"
            )
            assert not _alive(pid)

    def test_env_comes_from_values_and_secrets_and_a_missing_secret_holds_the_pod(
        self, kube_api: KubeApi
    ) -> None:
        env = [
            {"name": "PLAIN", "value": "v"},
            {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "token"}}},
        ]
        script = "import os; print(os.environ['PLAIN'], os.environ['TOKEN'], os.environ['HOSTNAME'])"
        create(kube_api, job_manifest("env", script, container={"env": env}))
        waiting = kube_api.wait_for(
            lambda: (
                kube_api.pods("env")
                and kube_api.pods("env")[0]["status"]["containerStatuses"][0]["state"]
                .get("waiting", {})
                .get("reason")
                == "CreateContainerConfigError"
            ),
            what="the pod to wait for its secret",
        )
        assert waiting
        secret = {"metadata": {"name": "creds"}, "stringData": {"token": "s3cr3t"}}
        kube_api.request("POST", "/api/v1/namespaces/default/secrets", secret)
        assert kube_api.wait_for(lambda: kube_api.condition("env"), what="the job to finish") == "Complete"
        pod = kube_api.pods("env")[0]["metadata"]["name"]
        assert kube_api.request("GET", f"/api/v1/namespaces/default/pods/{pod}/log") == f"v s3cr3t {pod}\n"

    def test_errors_are_status_objects(self, kube_api: KubeApi) -> None:
        bad = job_manifest("bad", "pass", restartPolicy="Always")
        with pytest.raises(urllib.error.HTTPError) as invalid:
            create(kube_api, bad)
        body = status_of(invalid.value)
        assert (invalid.value.code, body["reason"], body["details"]["kind"]) == (422, "Invalid", "Job")
        assert body["details"]["causes"][0]["field"] == "spec.template.spec.restartPolicy"
        with pytest.raises(urllib.error.HTTPError) as missing:
            kube_api.request("DELETE", "/api/v1/namespaces/default/pods/nope")
        assert status_of(missing.value)["message"] == 'pods "nope" not found'


def _read(path: Path) -> str:
    return path.read_text() if path.exists() else ""


def _alive(pid: int) -> bool:
    import os

    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _gone(api: KubeApi, job: str) -> bool:
    try:
        api.job(job)
    except urllib.error.HTTPError as exc:
        exc.close()
        return exc.code == 404
    return False
