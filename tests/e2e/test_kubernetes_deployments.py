"""Deployments on the kubernetes stack, end to end with real processes: the apiserver double (its
kubelet runs each pod's command as a local process, in a fresh empty directory), PostgreSQL for
state and moto S3 for artifacts and code archives.

The story of the local deploy e2e (tests/deploy/test_deploy_e2e.py), on Jobs: deploy v1 from a
project directory, invoke it with the CLI from another directory (it returns while the Job runs),
the execution waits; deploy v2 with a changed step and another image; the answer to the first
execution starts a Job on v1's image that finishes on v1's code; promote v2 and a new invoke runs
v2 on its image; roll back and invoke runs v1 again. Checkpoint runs are counted outside kitaru:
the agent appends a line per run to a file, from whichever pod runs it."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.test_kubernetes import K8s, k8s, s3_server

__all__ = ["k8s", "s3_server"]

pytestmark = pytest.mark.e2e

VERSION_LABEL = "kitaru.dev/version"

AGENT = '''
"""A deployable agent: each checkpoint run is counted outside kitaru, in COUNTS."""
import time
from pathlib import Path

import kitaru

COUNTS = {counts!r}
MARKS = Path({marks!r})


def count(line: str) -> None:
    with open(COUNTS, "a") as fh:
        fh.write(line + "\\n")


@kitaru.checkpoint
def draft(topic: str) -> str:
    count("{version} draft " + topic)
    # Held until the test says go, so it can see `invoke` return while the Job runs.
    deadline = time.monotonic() + 120
    while not (MARKS / "go").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    return "{version}(" + topic + ")"


@kitaru.checkpoint
def finish(text: str, approved: bool) -> str:
    count("{version} finish " + text)
    return text + (" approved by {version}" if approved else " rejected by {version}")


@kitaru.flow
def review(topic: str) -> str:
    text = draft(topic)
    approved = kitaru.wait(name="approve", question="Approve?", schema=bool)
    return finish(text, approved)

'''


def _agent(k8s: K8s, version: str) -> str:
    return AGENT.format(counts=str(k8s.counts), marks=str(k8s.marks), version=version)


def _py(k8s: K8s, code: str, cwd: Path) -> str:
    done = subprocess.run(
        [sys.executable, "-c", code], env=k8s.env, cwd=cwd, capture_output=True, text=True, timeout=180
    )
    assert done.returncode == 0, (code, done.stdout, done.stderr)
    return done.stdout.strip()


def _images(k8s: K8s, exec_id: str) -> list[str]:
    return [j["spec"]["template"]["spec"]["containers"][0]["image"] for j in k8s.jobs(exec_id)]


def test_deploy_invoke_promote_rollback_run_each_version_on_its_image_and_archive(k8s: K8s) -> None:
    project = k8s.tmp / "project"
    elsewhere = k8s.tmp / "elsewhere"  # the CLI runs here: no agent code on its path
    project.mkdir()
    elsewhere.mkdir()
    agent = project / "k8s_shop.py"
    agent.write_text(_agent(k8s, "v1"))

    def cli(*args: str) -> Any:
        return json.loads(k8s.run_cli(*args, "-o", "json", cwd=elsewhere).stdout)

    def invoke(ref: str, topic: str) -> Any:
        return cli("deployments", "invoke", ref, "--args", json.dumps({"topic": topic}))

    def answer(exec_id: str) -> str:
        k8s.status_becomes(exec_id, "waiting")
        jobs = len(k8s.jobs(exec_id))
        cli("executions", "input", exec_id, "--value", "true")
        # The answer submits a Job of its own and returns; the flow finishes in that Job.
        done = k8s.status_becomes(exec_id, "completed", "failed")
        assert done.status == "completed", done.error
        assert len(k8s.jobs(exec_id)) == jobs + 1
        shown = cli("artifacts", "get", done.result_artifact)
        return str(shown.get("value", shown))

    # v1, with the stack's image (none given).
    deployed = _py(
        k8s,
        "import k8s_shop; d = k8s_shop.review.deploy(message='first'); print(d.version, d.image)",
        project,
    )
    assert deployed == "1 kitaru-worker:test"

    # `invoke` creates the execution with its version and returns while its Job runs (the first
    # checkpoint holds until `go`).
    pinned = invoke("review", "t")
    assert pinned["status"] == "running", pinned
    assert pinned["metadata"]["deployment"]["version"] == 1
    assert pinned["metadata"]["deployment"]["image"] == "kitaru-worker:test"
    [job] = k8s.jobs(pinned["id"])
    assert job["metadata"]["labels"][VERSION_LABEL] == "1"
    assert _images(k8s, pinned["id"]) == ["kitaru-worker:test"]
    (k8s.marks / "go").write_text("1")
    k8s.status_becomes(pinned["id"], "waiting")
    assert k8s.finished(job["metadata"]["name"]) == "Complete"

    # v2: a changed step, its own image, tagged `canary` (default stays on v1).
    agent.write_text(_agent(k8s, "v2"))
    deployed = _py(
        k8s,
        "import k8s_shop\n"
        "d = k8s_shop.review.deploy(tag='canary', image='kitaru-worker:v2', message='second')\n"
        "print(d.version, d.image)",
        project,
    )
    assert deployed == "2 kitaru-worker:v2"

    # The answer to v1's execution runs a Job on v1's image, which loads v1's archive: the
    # project now holds v2, and the pod's directory holds nothing.
    assert answer(pinned["id"]) == "v1(t) approved by v1"
    assert _images(k8s, pinned["id"]) == ["kitaru-worker:test", "kitaru-worker:test"]

    # Promote the canary: a new invoke runs v2, on v2's image.
    moved = cli("deployments", "promote", "review", "canary")
    assert (moved["tag"], moved["version"]) == ("default", 2)
    second = invoke("review@default", "u")
    assert second["metadata"]["deployment"]["version"] == 2
    assert answer(second["id"]) == "v2(u) approved by v2"
    assert _images(k8s, second["id"]) == ["kitaru-worker:v2", "kitaru-worker:v2"]
    assert {j["metadata"]["labels"][VERSION_LABEL] for j in k8s.jobs(second["id"])} == {"2"}

    # Roll back: invoke runs v1 again, on v1's image.
    moved = cli("deployments", "rollback", "review")
    assert (moved["tag"], moved["version"], moved["previous"]) == ("default", 1, 2)
    third = invoke("review", "w")
    assert third["metadata"]["deployment"]["version"] == 1
    # Invoking is idempotent by id: the same execution, and no second Job while its Job runs or
    # it waits.
    k8s.status_becomes(third["id"], "waiting")
    again = cli("deployments", "invoke", "review", "--args", '{"topic": "w"}', "--id", third["id"])
    assert again["id"] == third["id"] and again["metadata"]["deployment"]["version"] == 1
    assert len(k8s.jobs(third["id"])) == 1
    assert answer(third["id"]) == "v1(w) approved by v1"
    assert _images(k8s, third["id"]) == ["kitaru-worker:test", "kitaru-worker:test"]

    # Every checkpoint ran once, in the version it was invoked on.
    assert k8s.counted() == Counter(
        {
            "v1 draft t": 1,
            "v1 finish v1(t)": 1,
            "v2 draft u": 1,
            "v2 finish v2(u)": 1,
            "v1 draft w": 1,
            "v1 finish v1(w)": 1,
        }
    )
    by_version = cli("executions", "list", "--flow", "review", "--version", "1")
    assert {e["id"] for e in by_version} == {pinned["id"], third["id"]}


def test_a_version_whose_archive_was_altered_fails_its_job_at_once_without_running_it(k8s: K8s) -> None:
    """The worker checks a version's archive against the hash the state store recorded, in a pod
    with an empty code cache: altered bytes fail the Job at once (exit 12, no platform retry),
    and no step of the version runs from them."""
    import tomllib

    from kitaru.worker import EXIT_CANNOT_RUN

    project = k8s.tmp / "project"
    project.mkdir()
    (project / "k8s_shop.py").write_text(_agent(k8s, "v1"))
    (k8s.marks / "go").write_text("1")
    _py(k8s, "import k8s_shop; k8s_shop.review.deploy()", project)
    invoked = json.loads(
        k8s.run_cli("deployments", "invoke", "review", "--args", '{"topic": "t"}', "-o", "json").stdout
    )
    k8s.status_becomes(invoked["id"], "waiting")

    # Someone with write access to the bucket replaces the version's archive.
    import boto3

    keys = tomllib.loads(k8s.config.read_text())["stacks"]["k8s"]
    bucket, _, prefix = keys["artifacts"].removeprefix("s3://").partition("/")
    s3 = boto3.client(
        "s3",
        endpoint_url=keys["endpoint_url"],
        aws_access_key_id=keys["aws_access_key_id"],
        aws_secret_access_key=keys["aws_secret_access_key"],
        region_name=keys["region"],
    )
    key = f"{prefix}/{invoked['metadata']['deployment']['archive_key']}"
    s3.head_object(Bucket=bucket, Key=key)  # the archive is where the version says
    s3.put_object(Bucket=bucket, Key=key, Body=b"not the archive")
    # The next pod lands on a node that never unpacked it (the double's pods share one home).
    shutil.rmtree(k8s.tmp / "pod-home" / "code")

    k8s.run_cli("executions", "input", invoked["id"], "--value", "true")
    jobs = k8s.api.wait_for(
        lambda: len(k8s.jobs(invoked["id"])) == 2 and k8s.jobs(invoked["id"]), 30, "a Job"
    )
    name = jobs[1]["metadata"]["name"]
    assert k8s.finished(name) == "Failed"
    conditions = {c["type"]: c for c in k8s.api.job(name)["status"]["conditions"]}
    assert conditions["Failed"]["reason"] == "PodFailurePolicy"
    [pod] = k8s.api.pods(name)  # one pod: retrying cannot fix altered bytes
    assert pod["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] == EXIT_CANNOT_RUN
    logs = k8s.run_cli("executions", "logs", invoked["id"], "--pod")
    assert "SHA-256" in logs.stdout + logs.stderr
    assert k8s.counted() == {"v1 draft t": 1}
    assert k8s.execution(invoked["id"]).status != "completed"
