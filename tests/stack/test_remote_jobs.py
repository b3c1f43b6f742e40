"""The rules every remote-job orchestrator shares (kitaru/_remote_jobs.py): what a worker's exit
code means for its job, the worker's environment built from the stack, and the stores a job
cannot reach."""

from __future__ import annotations

import pytest

from kitaru import _remote_jobs
from kitaru.errors import KitaruConfigError
from kitaru.stack import BaseStack


def test_exit_codes_carry_the_retry_decision() -> None:
    assert _remote_jobs.exit_verdict(0) == "done"
    assert _remote_jobs.exit_verdict(10) == "flow_failed"
    assert _remote_jobs.exit_verdict(12) == "cannot_run"
    for code in (11, 137, 1, None):
        assert _remote_jobs.exit_verdict(code) == "infrastructure"


def test_the_worker_env_names_the_stack_writes_tables_as_json_and_leaves_secrets_out() -> None:
    stack = BaseStack(
        "prod", state="postgresql://u@h/db", artifacts="s3://b/p", region="eu", account_key="k", flag=True
    )
    env = _remote_jobs.worker_env(
        stack,
        {"image": "i", "retries": 3, "tags": {"a": "b"}, "unset": None},
        env={"LOG": "info", "SECRET_FROM_VAULT": "x"},
        leave_out={"account_key", "SECRET_FROM_VAULT"},
    )
    assert env == {
        "KITARU_STACK": "prod",
        "KITARU_STACK__TYPE": "base",
        "KITARU_STACK__STATE": "postgresql://u@h/db",
        "KITARU_STACK__ARTIFACTS": "s3://b/p",
        "KITARU_STACK__IMAGE": "i",
        "KITARU_STACK__RETRIES": "3",
        "KITARU_STACK__TAGS": '{"a":"b"}',
        "KITARU_STACK__REGION": "eu",
        "KITARU_STACK__FLAG": "true",
        "LOG": "info",
    }


def test_stores_only_this_machine_reaches_are_refused() -> None:
    lite = BaseStack("lite", state="sqlite:///tmp/k.db", artifacts="s3://b/p")
    with pytest.raises(KitaruConfigError, match=r"SQLite.*the replicas cannot reach.*postgresql://"):
        _remote_jobs.refuse_local_stores(lite, "jobs", "the replicas")
    files = BaseStack("files", state="postgresql://u@h/db", artifacts="file:///tmp/a")
    with pytest.raises(KitaruConfigError, match=r"local directory.*s3://"):
        _remote_jobs.refuse_local_stores(files, "jobs")
    _remote_jobs.refuse_local_stores(
        BaseStack("ok", state="postgresql://u@h/db", artifacts="s3://b/p"), "jobs"
    )


def test_an_execution_runs_on_its_versions_image_else_its_flows_else_the_stacks() -> None:
    deployed = {"deployment": {"flow": "f", "version": 3, "image": "acme/agents:v3"}, "image": "acme/f:1"}
    assert _remote_jobs.execution_image(deployed, "acme/stack:now") == "acme/agents:v3"
    # A version deployed without an image: the flow's own, then the stack's.
    unimaged = {"deployment": {"flow": "f", "version": 3, "image": None}}
    assert _remote_jobs.execution_image({**unimaged, "image": "acme/f:1"}, "acme/stack:now") == "acme/f:1"
    assert _remote_jobs.execution_image(unimaged, "acme/stack:now") == "acme/stack:now"
    assert _remote_jobs.execution_image({"image": "acme/f:1"}, None) == "acme/f:1"
    assert _remote_jobs.execution_image({}, "acme/stack:now") == "acme/stack:now"
    assert _remote_jobs.execution_image({}, None) is None


def test_a_jobs_worker_builds_the_submitters_stack_lists_and_tables_included(
    monkeypatch: pytest.MonkeyPatch, kitaru_home: object
) -> None:
    """The worker's stack, built from the job's environment alone, is the submitter's: so a
    worker that starts jobs itself (an isolated call's) starts them on the same image, command,
    network and environment."""
    from kitaru_stack_aws import AwsStack

    from kitaru.stack import load_stack

    submitter = AwsStack(
        "prod",
        state="postgresql://u@h/db",
        artifacts="s3://b/p",
        cluster="agents",
        image="acme/worker:1",
        subnets=["subnet-1", "subnet-2"],
        security_groups=["sg-1"],
        env={"LOG": "info"},
        tags={"team": "agents"},
        worker_command=["python", "-m", "kitaru.cli"],
        assign_public_ip=True,
    )
    env = _remote_jobs.worker_env(submitter, _remote_jobs.declared_keys(submitter), env=submitter.env)
    monkeypatch.delenv("KITARU_CONFIG", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    worker = load_stack()
    assert isinstance(worker, AwsStack)
    for key in ("cluster", "image", "subnets", "security_groups", "env", "tags", "worker_command"):
        assert getattr(worker, key) == getattr(submitter, key), key
    assert worker.assign_public_ip is True
