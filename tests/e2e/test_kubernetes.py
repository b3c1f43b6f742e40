"""Flows run as Kubernetes Jobs, end to end with real processes: the apiserver double (its kubelet
runs each pod's command as a local process), PostgreSQL for state and moto S3 for artifacts and
code archives, the shared stores real pods would use. The pods run ``kitaru worker run <exec_id>``
from this checkout's environment (the stack's ``worker_command``; the double ignores images).

Checkpoint runs are counted outside kitaru: the test flows (flows/k8s_flows.py) append a line per
run to a file, from whichever pod runs them."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests._services.kube import KubeApi
from tests._services.postgres import find_bindir
from tests._services.s3 import MotoServer, s3_server
from tests.e2e._remote_jobs import (
    Quickstart,
    RemoteStack,
    assert_each_checkpoint_completed_once,
    assert_only_the_killed_step_ran_twice,
    import_test_flows,
    write_config,
)

__all__ = ["s3_server"]

pytestmark = pytest.mark.e2e

EXECUTION_LABEL = "kitaru.dev/execution"


@dataclass
class K8s(RemoteStack):
    """A kubernetes stack on the double, and what a test needs around it."""

    api: KubeApi
    config: Path

    def wait_for(self, probe: Callable[[], Any], timeout: float, what: str) -> Any:
        return self.api.wait_for(probe, timeout, what)

    def jobs(self, exec_id: str) -> list[dict[str, Any]]:
        reply = self.api.request(
            "GET", f"/apis/batch/v1/namespaces/default/jobs?labelSelector={EXECUTION_LABEL}%3D{exec_id}"
        )
        return sorted(reply["items"], key=lambda j: int(j["metadata"]["labels"]["kitaru.dev/run"]))

    def live_pods(self) -> list[str]:
        return [
            p["metadata"]["name"]
            for p in self.api.pods()
            if p["status"]["phase"] not in ("Succeeded", "Failed")
        ]

    def finished(self, job: str) -> str:
        return self.api.wait_for(lambda: self.api.condition(job), 90, f"Job {job} finishing")


@pytest.fixture
def k8s(
    kube_api: KubeApi,
    s3_server: MotoServer,
    request: pytest.FixtureRequest,
    tmp_path: Path,
    subprocess_env: dict[str, str],
    kitaru_cli: list[str],
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[K8s]:
    if find_bindir() is None:
        pytest.skip("PostgreSQL server binaries are needed (apt-get install postgresql)")
    state = request.getfixturevalue("postgres_dsn")
    artifacts = f"s3://{s3_server.create_bucket()}/kitaru"
    pod_home = tmp_path / "pod-home"
    keys: dict[str, Any] = {
        "type": "kubernetes",
        "state": state,
        "artifacts": artifacts,
        **s3_server.options(),
        "image": "kitaru-worker:test",
        "kubeconfig": str(kube_api.kubeconfig),
        # Test-only: the double runs commands on this machine, so the worker is this checkout's.
        "worker_command": [sys.executable, "-m", "kitaru.cli"],
        # KUBECONFIG: what a real pod's service account gives it (in-cluster config), the API of
        # the cluster it runs in; the pod starts an isolated call's Job through it.
        "env": {
            "KITARU_HOME": str(pod_home),
            "PYTHONUNBUFFERED": "1",
            "KUBECONFIG": str(kube_api.kubeconfig),
        },
        "backoff_limit": 3,
        "labels": {"team": "agents"},
    }
    config = write_config(tmp_path, "k8s", keys, monkeypatch)
    marks = tmp_path / "marks"
    marks.mkdir()
    yield K8s(
        api=kube_api,
        state=state,
        config=config,
        env={**subprocess_env, "KITARU_CONFIG": str(config)},
        counts=tmp_path / "counts.txt",
        marks=marks,
        cli=kitaru_cli,
        tmp=tmp_path,
    )


@pytest.fixture
def k8s_flows(monkeypatch: pytest.MonkeyPatch) -> Any:
    """The test flows, imported as a top-level module of flows/ (so their source root, the code
    archive, is that small directory rather than the whole checkout)."""
    return import_test_flows(monkeypatch)


def test_the_quickstart_runs_as_jobs_and_its_wait_holds_no_pod(k8s: K8s, kubectl: Callable[..., Any]) -> None:
    with Quickstart(k8s) as quickstart:
        job = k8s.api.wait_for(
            lambda: k8s.api.request("GET", "/apis/batch/v1/namespaces/default/jobs")["items"], 90, "a Job"
        )[0]
        exec_id = job["metadata"]["annotations"]["kitaru.dev/execution-id"]
        assert job["metadata"]["labels"]["kitaru.dev/flow"] == "review_flow"
        assert job["metadata"]["labels"]["team"] == "agents"
        assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"
        container = job["spec"]["template"]["spec"]["containers"][0]
        assert container["command"][-3:] == ["worker", "run", exec_id]

        # It waits, and no pod is alive: the Job exited 0 when the execution suspended.
        k8s.status_becomes(exec_id, "waiting")
        assert k8s.finished(job["metadata"]["name"]) == "Complete"
        k8s.api.wait_for(lambda: not k8s.live_pods(), 30, "no pod alive")
        quickstart.still_waiting()

        listed = kubectl("get", "jobs", "-l", f"{EXECUTION_LABEL}={exec_id}", "-o", "json")
        assert [j["metadata"]["name"] for j in json.loads(listed.stdout)["items"]] == [
            job["metadata"]["name"]
        ]

        # The answer, from another directory, starts a new Job that completes the flow.
        quickstart.answer(exec_id)
        jobs = k8s.api.wait_for(lambda: len(k8s.jobs(exec_id)) == 2 and k8s.jobs(exec_id), 30, "a second Job")
        k8s.status_becomes(exec_id, "completed")
        assert k8s.finished(jobs[1]["metadata"]["name"]) == "Complete"
        listed = kubectl("get", "jobs", "-l", f"{EXECUTION_LABEL}={exec_id}", "-o", "json")
        assert len(json.loads(listed.stdout)["items"]) == 2

        quickstart.ends()

    journal = k8s.journal(exec_id)
    assert_each_checkpoint_completed_once(journal)
    started = Counter(r.call_id for r in journal if r.kind == "checkpoint_started")
    assert all(n == 1 for n in started.values()), started
    assert len(k8s.api.pods()) == 2  # one pod per Job: nothing was retried

    # The pod's log, through the orchestrator.
    logs = k8s.run_cli("executions", "logs", exec_id, "--pod")
    assert f"execution {exec_id} is completed" in logs.stdout + logs.stderr

    # Answer -> running again in the new pod (a figure for the report, not an assertion).
    quickstart.report(journal, "the new pod", "the Job submitted", "new pod")


def test_a_pod_killed_mid_checkpoint_is_restarted_by_the_job_and_resumes(k8s: K8s, k8s_flows: Any) -> None:
    handle = k8s_flows.eight.run(str(k8s.counts), str(k8s.marks))
    assert handle.status in ("running", "completed")  # `run` returned while the Job runs
    from tests._process import wait_for

    wait_for(k8s.marks / "slow", timeout=90)
    [job] = k8s.jobs(handle.exec_id)
    [pod] = k8s.api.pods(job["metadata"]["name"])
    k8s.api.kill_pod(pod["metadata"]["name"])  # SIGKILL in the middle of checkpoint 5 of 8
    k8s.api.wait_for(
        lambda: k8s.api.pods(job["metadata"]["name"])[0]["status"]["phase"] == "Failed", 30, "the kill"
    )
    (k8s.marks / "go").write_text("1")
    assert handle.wait(timeout=120) == sum(range(1, 9))
    assert k8s.finished(job["metadata"]["name"]) == "Complete"
    pods = k8s.api.pods(job["metadata"]["name"])
    assert [p["status"]["phase"] for p in pods] == ["Failed", "Succeeded"]
    assert pods[0]["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 137
    counted = k8s.counted()
    assert_only_the_killed_step_ran_twice(counted)
    assert len(k8s.jobs(handle.exec_id)) == 1


def test_a_failing_flow_is_marked_failed_and_not_retried_by_the_platform(k8s: K8s, k8s_flows: Any) -> None:
    from kitaru.errors import KitaruExecutionError

    handle = k8s_flows.boom.run(str(k8s.counts))
    with pytest.raises(KitaruExecutionError, match="the flow itself is broken"):
        handle.wait(timeout=120)
    [job] = k8s.jobs(handle.exec_id)
    assert k8s.finished(job["metadata"]["name"]) == "Failed"
    conditions = {c["type"]: c for c in k8s.api.job(job["metadata"]["name"])["status"]["conditions"]}
    assert conditions["Failed"]["reason"] == "PodFailurePolicy"
    [pod] = k8s.api.pods(job["metadata"]["name"])  # one pod: no platform retry
    assert pod["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 10
    assert k8s.counted() == {"before": 1}
    assert k8s.execution(handle.exec_id).status == "failed"
    # The orchestrator says, for people, where it ran.
    from kitaru._engine.handles import blocking
    from kitaru.stack import load_stack

    described = blocking(load_stack("k8s").orchestrator().describe, handle.exec_id)
    assert f"Job {job['metadata']['name']}: failed" in described
    assert f"pod {pod['metadata']['name']}: Failed" in described


def test_cancel_deletes_the_job_and_the_execution_stays_cancelled(k8s: K8s, k8s_flows: Any) -> None:
    from tests._process import wait_for

    handle = k8s_flows.sleepy.run(str(k8s.counts), str(k8s.marks))
    wait_for(k8s.marks / "started", timeout=90)
    assert len(k8s.jobs(handle.exec_id)) == 1
    k8s.run_cli("executions", "cancel", handle.exec_id)
    assert k8s.execution(handle.exec_id).status == "cancelled"
    k8s.api.wait_for(lambda: not k8s.jobs(handle.exec_id), 30, "the Job deleted")
    k8s.api.wait_for(lambda: not k8s.api.pods(), 60, "its pod gone")
    time.sleep(1)  # nothing revives it once its pod is gone
    assert k8s.execution(handle.exec_id).status == "cancelled"
    assert k8s.jobs(handle.exec_id) == []
    assert k8s.counted() == {"slow": 1}


def test_two_answers_racing_start_one_job(k8s: K8s, k8s_flows: Any) -> None:
    handle = k8s_flows.asks.run(str(k8s.counts))
    k8s.status_becomes(handle.exec_id, "waiting")
    [first] = k8s.jobs(handle.exec_id)
    k8s.finished(first["metadata"]["name"])
    # Two people answer at once, from two processes: one answer is recorded, one Job starts.
    argv = [*k8s.cli, "executions", "input", handle.exec_id, "--value", "true"]
    racers = [
        subprocess.Popen(
            argv, env=k8s.env, cwd=k8s.tmp, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    results = [(p.wait(timeout=120), *p.communicate()) for p in racers]
    assert sorted(code for code, _, _ in results)[0] == 0, results
    assert handle.wait(timeout=120) == "answered True"
    assert len(k8s.jobs(handle.exec_id)) == 2
    assert k8s.counted() == {"before": 1, "after": 1}


def test_two_submits_racing_start_one_job(k8s: K8s, k8s_flows: Any) -> None:
    """The answer is recorded without resuming; then two `resume`s race to submit the same run:
    both derive the same Job name, and the second's 409 means the first did it."""
    handle = k8s_flows.asks.run(str(k8s.counts))
    k8s.status_becomes(handle.exec_id, "waiting")
    k8s.finished(k8s.jobs(handle.exec_id)[0]["metadata"]["name"])
    k8s.run_cli("executions", "input", handle.exec_id, "--value", "false", "--no-resume")
    argv = [*k8s.cli, "executions", "resume", handle.exec_id]
    racers = [
        subprocess.Popen(
            argv, env=k8s.env, cwd=k8s.tmp, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    results = [(p.wait(timeout=120), *p.communicate()) for p in racers]
    assert any(code == 0 for code, _, _ in results), results
    assert handle.wait(timeout=120) == "answered False"
    assert len(k8s.jobs(handle.exec_id)) == 2
    assert k8s.counted() == {"before": 1, "after": 1}


def test_a_kubernetes_stack_refuses_stores_pods_cannot_share(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kitaru_home: Path
) -> None:
    from kitaru.errors import KitaruConfigError
    from kitaru.stack import load_stack

    config = tmp_path / "config.toml"
    config.write_text(
        f'[stacks.k8s]\ntype = "kubernetes"\nimage = "x"\nstate = "sqlite:///{tmp_path}/k.db"\n'
        'artifacts = "s3://b/p"\n'
        f'[stacks.k8s2]\ntype = "kubernetes"\nimage = "x"\nstate = "postgresql://u@h/db"\n'
        f'artifacts = "{tmp_path.as_uri()}"\n'
    )
    monkeypatch.setenv("KITARU_CONFIG", str(config))
    with pytest.raises(KitaruConfigError, match=r"SQLite.*cannot reach.*postgresql://"):
        load_stack("k8s").orchestrator()
    with pytest.raises(KitaruConfigError, match=r"local directory.*s3://"):
        load_stack("k8s2").orchestrator()


def test_await_start_submits_a_job_and_the_handle_waits_on_the_store(k8s: K8s, k8s_flows: Any) -> None:
    import asyncio

    (k8s.marks / "go").write_text("1")  # checkpoint 5 does not hold this time

    async def main() -> tuple[str, int]:
        handle = await k8s_flows.eight.start(str(k8s.counts), str(k8s.marks))
        return handle.exec_id, await handle.result(timeout=120)

    exec_id, value = asyncio.run(main())
    assert value == sum(range(1, 9))
    [job] = k8s.jobs(exec_id)
    assert k8s.finished(job["metadata"]["name"]) == "Complete"
    assert k8s.counted() == {f"step {i}": 1 for i in range(1, 9)}


def test_an_evicted_pod_is_replaced_without_counting_against_the_backoff_limit(
    k8s: K8s, k8s_flows: Any
) -> None:
    from tests._process import wait_for

    handle = k8s_flows.eight.run(str(k8s.counts), str(k8s.marks))
    wait_for(k8s.marks / "slow", timeout=90)
    [job] = k8s.jobs(handle.exec_id)
    [pod] = k8s.api.pods(job["metadata"]["name"])
    k8s.api.evict_pod(pod["metadata"]["name"])  # DisruptionTarget, then a graceful delete
    k8s.api.wait_for(
        lambda: any(p["metadata"]["name"] != pod["metadata"]["name"] for p in k8s.api.pods()),
        60,
        "a replacement pod",
    )
    (k8s.marks / "go").write_text("1")
    assert handle.wait(timeout=120) == sum(range(1, 9))
    assert k8s.finished(job["metadata"]["name"]) == "Complete"
    assert k8s.api.job(job["metadata"]["name"])["status"].get("failed", 0) == 0  # Ignored
    counted = k8s.counted()
    assert {i: counted[f"step {i}"] for i in range(1, 5)} == {1: 1, 2: 1, 3: 1, 4: 1}


def test_an_isolated_call_is_a_job_of_its_own_and_a_killed_parent_waits_for_that_job(
    k8s: K8s, k8s_flows: Any
) -> None:
    """``@checkpoint(runtime="isolated")`` on a kubernetes stack: the call runs in a Job of its own,
    named for the call, with the execution's image and environment; the parent's pod, SIGKILLed
    while the call runs, is replaced by the Job controller, and the resumed parent waits for that
    same Job: the call's body runs once, and its value reaches the flow."""
    from kitaru_stack_kubernetes import _orchestrator

    from kitaru._engine.isolated import LAUNCHED
    from tests._process import wait_for

    # A short lease, so the replacement parent takes over soon after the kill.
    k8s.config.write_text(
        k8s.config.read_text().replace(
            '"PYTHONUNBUFFERED" = "1"', '"PYTHONUNBUFFERED" = "1", "KITARU_LEASE_TTL" = "4"'
        )
    )
    handle = k8s_flows.isolated.run(str(k8s.counts), str(k8s.marks))
    wait_for(k8s.marks / "own-job-started", timeout=120)
    name = _orchestrator.call_job_name(handle.exec_id, "own_job", 1)
    assert "own-job" in name
    jobs = {j["metadata"]["name"]: j for j in k8s.jobs(handle.exec_id)}
    assert len(jobs) == 2 and name in jobs, sorted(jobs)  # the execution's run, and the call
    call_job = jobs.pop(name)
    [run_job] = jobs.values()
    assert call_job["metadata"]["labels"]["kitaru.dev/call"] == "own_job"
    assert call_job["metadata"]["annotations"]["kitaru.dev/call-id"] == "own_job"
    call_container = call_job["spec"]["template"]["spec"]["containers"][0]
    run_container = run_job["spec"]["template"]["spec"]["containers"][0]
    assert call_container["command"][-4:] == ["worker", "call", handle.exec_id, "own_job"]
    assert call_container["image"] == run_container["image"]
    assert call_container["env"] == run_container["env"]  # the same stack, code and secrets
    [call_pod] = k8s.api.pods(name)
    [parent] = k8s.api.pods(run_job["metadata"]["name"])
    assert (k8s.marks / "own-job-started").read_text() == call_pod["metadata"]["name"]
    assert call_pod["metadata"]["name"] != parent["metadata"]["name"]

    k8s.api.kill_pod(parent["metadata"]["name"])  # SIGKILL the parent while its call's Job runs
    waiting = f"waiting for its job {name}"

    def resumed_parent_waits() -> str | None:
        for pod in k8s.api.pods(run_job["metadata"]["name"])[1:]:
            log = k8s.api.request("GET", f"/api/v1/namespaces/default/pods/{pod['metadata']['name']}/log")
            if waiting in log:
                return str(pod["metadata"]["name"])
        return None

    second = k8s.api.wait_for(resumed_parent_waits, 120, "the replacement parent waiting for the call's Job")
    (k8s.marks / "release").write_text("1")
    result = handle.wait(timeout=120)
    assert result["pod"] == call_pod["metadata"]["name"]
    assert result["parent_pod"] == second
    assert k8s.counted() == {"own_job": 1}  # the call's body ran once
    assert k8s.finished(name) == "Complete"
    assert [p["status"]["phase"] for p in k8s.api.pods(name)] == ["Succeeded"]
    assert len(k8s.jobs(handle.exec_id)) == 2  # no second Job for the call
    journal = k8s.journal(handle.exec_id)
    assert [r.data["job"] for r in journal if r.kind == LAUNCHED] == [name]
    assert [r.call_id for r in journal if r.kind == "checkpoint_completed"] == ["own_job"]
