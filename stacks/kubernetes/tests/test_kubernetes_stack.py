"""The kubernetes stack type: registered, takes its keys, builds each execution's Job from them,
and refuses stores its pods cannot share. (Running flows as Jobs is proven end to end in
tests/e2e/test_kubernetes.py, on the apiserver double.)"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from kitaru_stack_kubernetes import KubernetesStack

import kitaru
from kitaru.errors import KitaruConfigError
from kitaru.stack import load_stack
from kitaru.stack_config import stack_type


@kitaru.flow
def hello(name: str) -> str:
    return f"hello {name}"


def test_the_entry_point_names_the_class() -> None:
    assert stack_type("kubernetes") is KubernetesStack


def test_keys_are_taken_and_a_sqlite_state_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "config.toml"
    config.write_text(
        f"""
[stacks.k8s]
type = "kubernetes"
state = "sqlite:///{tmp_path / "k8s.db"}"
artifacts = "s3://bucket/prefix"
namespace = "agents"
image = "ghcr.io/acme/agents:1"
context = "staging"
"""
    )
    monkeypatch.setenv("KITARU_CONFIG", str(config))
    stack = load_stack("k8s")
    assert isinstance(stack, KubernetesStack)
    assert (stack.namespace, stack.image, stack.context, stack.kubeconfig) == (
        "agents",
        "ghcr.io/acme/agents:1",
        "staging",
        None,
    )
    # Pods cannot reach a SQLite file on this machine: the flow is refused, nothing runs here.
    with pytest.raises(KitaruConfigError, match=r"SQLite.*pods cannot reach.*postgresql://"):
        hello.run("k8s", stack="k8s")


def test_the_job_is_built_from_the_stack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "config.toml"
    config.write_text(
        """
[stacks.k8s]
type = "kubernetes"
state = "postgresql://kitaru@db/kitaru"
artifacts = "s3://bucket/prefix"
region = "eu-west-1"
namespace = "agents"
image = "ghcr.io/acme/agents:1"
image_pull_policy = "IfNotPresent"
image_pull_secrets = ["regcred"]
service_account = "kitaru-runner"
resources = { requests = { cpu = "500m" }, limits = { memory = "2Gi" } }
node_selector = { pool = "agents" }
tolerations = [{ key = "dedicated", operator = "Exists", effect = "NoSchedule" }]
labels = { team = "ml" }
annotations = { owner = "ml@acme" }
env = { LOG_LEVEL = "debug" }
secret_env = { KITARU_STACK__STATE = "kitaru-db:dsn", OPENAI_API_KEY = "llm:key" }
env_from_secrets = ["aws-creds"]
backoff_limit = 5
ttl_seconds_after_finished = 600
active_deadline_seconds = 3600
"""
    )
    monkeypatch.setenv("KITARU_CONFIG", str(config))
    stack = load_stack("k8s")
    assert isinstance(stack, KubernetesStack)
    job = stack.orchestrator().job_manifest("01JEXAMPLE0000000000000000", "review_flow", 7)
    meta, spec = job["metadata"], job["spec"]
    assert (meta["name"], meta["namespace"]) == ("kitaru-01jexample0000000000000000-7", "agents")
    assert meta["labels"] == {
        "team": "ml",
        "app.kubernetes.io/managed-by": "kitaru",
        "kitaru.dev/execution": "01JEXAMPLE0000000000000000",
        "kitaru.dev/flow": "review_flow",
        "kitaru.dev/run": "7",
    }
    assert meta["annotations"]["owner"] == "ml@acme"
    assert (spec["backoffLimit"], spec["ttlSecondsAfterFinished"], spec["activeDeadlineSeconds"]) == (
        5,
        600,
        3600,
    )
    assert spec["podFailurePolicy"]["rules"] == [
        {
            "action": "FailJob",
            "onExitCodes": {"containerName": "worker", "operator": "In", "values": [10, 12]},
        },
        {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
        {
            "action": "Count",
            "onExitCodes": {"containerName": "worker", "operator": "NotIn", "values": [10, 12]},
        },
    ]
    pod = spec["template"]["spec"]
    assert spec["template"]["metadata"]["labels"] == meta["labels"]
    assert pod["restartPolicy"] == "Never"
    assert (pod["serviceAccountName"], pod["nodeSelector"], pod["imagePullSecrets"]) == (
        "kitaru-runner",
        {"pool": "agents"},
        [{"name": "regcred"}],
    )
    assert pod["tolerations"] == [{"key": "dedicated", "operator": "Exists", "effect": "NoSchedule"}]
    [container] = pod["containers"]
    assert container["command"] == ["kitaru", "worker", "run", "01JEXAMPLE0000000000000000"]
    assert (container["image"], container["imagePullPolicy"]) == ("ghcr.io/acme/agents:1", "IfNotPresent")
    assert container["resources"] == {"requests": {"cpu": "500m"}, "limits": {"memory": "2Gi"}}
    assert container["envFrom"] == [{"secretRef": {"name": "aws-creds"}}]
    env = {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}
    # The stack travels by name and keys (the pod has no config file); the state DSN comes from
    # its Secret only, never in plain text.
    assert env["KITARU_STACK"] == "k8s"
    assert env["KITARU_STACK__TYPE"] == "kubernetes"
    assert env["KITARU_STACK__ARTIFACTS"] == "s3://bucket/prefix"
    assert env["KITARU_STACK__REGION"] == "eu-west-1"
    assert env["LOG_LEVEL"] == "debug"
    assert env["KITARU_STACK__STATE"] == {"secretKeyRef": {"name": "kitaru-db", "key": "dsn"}}
    assert env["OPENAI_API_KEY"] == {"secretKeyRef": {"name": "llm", "key": "key"}}
    assert "postgresql://" not in str(job)


def test_the_pod_builds_the_stack_from_its_environment_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    """What a Job's pod has: no config file, the stack's name, type and keys in the environment."""
    monkeypatch.setenv("KITARU_STACK", "prod")
    monkeypatch.setenv("KITARU_STACK__TYPE", "kubernetes")
    monkeypatch.setenv("KITARU_STACK__STATE", "postgresql://kitaru@db/kitaru")
    monkeypatch.setenv("KITARU_STACK__ARTIFACTS", "s3://bucket/prefix")
    monkeypatch.setenv("KITARU_STACK__CODE", "image")
    stack = load_stack()
    assert isinstance(stack, KubernetesStack)
    assert (stack.name, stack.state_uri, stack.artifacts_uri, stack.code) == (
        "prod",
        "postgresql://kitaru@db/kitaru",
        "s3://bucket/prefix",
        "image",
    )


def test_job_names_are_dns_labels_and_labels_are_label_values() -> None:
    from kitaru_stack_kubernetes._orchestrator import job_name, label_value

    assert job_name("01JEXAMPLE0000000000000000", 12) == "kitaru-01jexample0000000000000000-12"
    odd = job_name("Order #42 / retry", 3, 2)
    assert re.fullmatch(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?", odd) and len(odd) <= 52, odd
    assert job_name("order-42", 3) != job_name("Order-42", 3)  # ids differing in case stay apart
    assert label_value("review_flow") == "review_flow"
    assert label_value("Order #42 / retry") != label_value("Order #42 / retry!")
    assert re.fullmatch(r"[A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?", label_value("x" * 100 + "/"))


def test_a_wrong_value_type_names_the_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "config.toml"
    config.write_text('[stacks.k8s]\ntype = "kubernetes"\nnamespace = 3\n')
    monkeypatch.setenv("KITARU_CONFIG", str(config))
    with pytest.raises(KitaruConfigError, match=r"config.toml, line 3.*'namespace'"):
        load_stack("k8s")


def test_the_job_keys_are_typed_and_defaulted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "config.toml"
    config.write_text(
        """
[stacks.k8s]
type = "kubernetes"
code = "image"
service_account = "kitaru-runner"
resources = { requests = { cpu = "500m" }, limits = { memory = "2Gi" } }
node_selector = { pool = "agents" }
tolerations = [{ key = "dedicated", operator = "Exists", effect = "NoSchedule" }]
secret_env = { KITARU_STACK__STATE = "kitaru-db:dsn" }
backoff_limit = 5
"""
    )
    monkeypatch.setenv("KITARU_CONFIG", str(config))
    monkeypatch.setenv("KITARU_STACK", "k8s")
    monkeypatch.setenv("KITARU_STACK__TTL_SECONDS_AFTER_FINISHED", "60")  # from the environment: a string
    stack = load_stack("k8s")
    assert isinstance(stack, KubernetesStack)
    assert (stack.code, stack.service_account, stack.backoff_limit, stack.ttl_seconds_after_finished) == (
        "image",
        "kitaru-runner",
        5,
        60,
    )
    assert stack.resources == {"requests": {"cpu": "500m"}, "limits": {"memory": "2Gi"}}
    assert stack.tolerations == [{"key": "dedicated", "operator": "Exists", "effect": "NoSchedule"}]
    assert (stack.env, stack.active_deadline_seconds, stack.image_pull_secrets) == ({}, None, [])
    config.write_text('[stacks.k8s]\ntype = "kubernetes"\ncode = "git"\n')
    with pytest.raises(KitaruConfigError, match=r"'code'"):
        load_stack("k8s")


def test_a_deployed_versions_job_runs_its_image_and_is_labelled_with_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "config.toml"
    config.write_text(
        '[stacks.k8s]\ntype = "kubernetes"\nstate = "postgresql://kitaru@db/kitaru"\n'
        'artifacts = "s3://bucket/prefix"\nimage = "ghcr.io/acme/agents:now"\n'
    )
    monkeypatch.setenv("KITARU_CONFIG", str(config))
    orchestrator = load_stack("k8s").orchestrator()
    version = {"flow": "review", "version": 3, "image": "ghcr.io/acme/agents:v3"}
    job = orchestrator.job_manifest("01JEXAMPLE0000000000000000", "review", 2, version=version)
    [container] = job["spec"]["template"]["spec"]["containers"]
    assert container["image"] == "ghcr.io/acme/agents:v3"
    assert job["metadata"]["labels"]["kitaru.dev/version"] == "3"
    assert job["spec"]["template"]["metadata"]["labels"]["kitaru.dev/version"] == "3"
    # A version deployed without an image runs on the stack's.
    job = orchestrator.job_manifest(
        "01JEXAMPLE0000000000000000", "review", 2, version={**version, "image": None}
    )
    assert job["spec"]["template"]["spec"]["containers"][0]["image"] == "ghcr.io/acme/agents:now"
    plain = orchestrator.job_manifest("01JEXAMPLE0000000000000000", "review", 2)
    assert "kitaru.dev/version" not in plain["metadata"]["labels"]
    # `@flow(image=...)` (recorded as the execution's metadata["image"]) beats the stack's.
    flows_own = orchestrator.job_manifest(
        "01JEXAMPLE0000000000000000", "review", 2, image="ghcr.io/acme/flow:1"
    )
    assert flows_own["spec"]["template"]["spec"]["containers"][0]["image"] == "ghcr.io/acme/flow:1"


def test_the_secrets_key_reaches_a_job_only_as_a_secret_reference(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """kitaru.secret() in a Job: the worker decrypts from the state store with the key the Job
    has, which the stack maps from a Kubernetes Secret; the submitting process's own key is never
    copied into the manifest."""
    config = tmp_path / "config.toml"
    config.write_text(
        """
[stacks.k8s]
type = "kubernetes"
state = "postgresql://kitaru@db/kitaru"
artifacts = "s3://bucket/prefix"
image = "ghcr.io/acme/agents:1"
secret_env = { KITARU_SECRETS_KEY = "kitaru-secrets:key" }
"""
    )
    monkeypatch.setenv("KITARU_CONFIG", str(config))
    local_key = "c2VjcmV0LWtleS1vZi10aGUtc3VibWl0dGVyLTMyYnl0ZXM="
    monkeypatch.setenv("KITARU_SECRETS_KEY", local_key)
    job = load_stack("k8s").orchestrator().job_manifest("01JEXAMPLE0000000000000000", "f", 1)
    [container] = job["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e for e in container["env"]}
    assert env["KITARU_SECRETS_KEY"] == {
        "name": "KITARU_SECRETS_KEY",
        "valueFrom": {"secretKeyRef": {"name": "kitaru-secrets", "key": "key"}},
    }
    assert local_key not in str(job)


def test_an_isolated_calls_job_is_named_for_the_call_and_its_launch() -> None:
    """A resumed parent derives the same name (so its create's 409 finds the running Job); a
    second launch, another call or another execution gets another; none is a run's Job name."""
    from kitaru_stack_kubernetes._orchestrator import call_job_name, job_name

    ulid = "01JEXAMPLE0000000000000000"
    name = call_job_name(ulid, "fetch_page", 1)
    assert name == call_job_name(ulid, "fetch_page", 1)
    assert name.startswith("kitaru-01jexample0000000000000000-fetch-page")
    others = {
        call_job_name(ulid, "fetch_page", 2),
        call_job_name(ulid, "fetch_page:2", 1),
        call_job_name("01JEXAMPLE0000000000000001", "fetch_page", 1),
    }
    assert name not in others and len(others) == 3
    for exec_id, call_id in ((ulid, "x" * 80), ("Order #42 / retry", "Tool.Call:12"), (ulid, "3")):
        for launch in (1, 2, 99):
            made = call_job_name(exec_id, call_id, launch)
            assert re.fullmatch(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?", made) and len(made) <= 57, made
            assert made not in {job_name(exec_id, run, suffix) for run in range(100) for suffix in (1, 2)}


def test_an_isolated_calls_job_is_the_executions_job_with_the_call_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "config.toml"
    config.write_text(
        '[stacks.k8s]\ntype = "kubernetes"\nstate = "postgresql://kitaru@db/kitaru"\n'
        'artifacts = "s3://bucket/prefix"\nimage = "ghcr.io/acme/agents:1"\n'
        'resources = { limits = { memory = "2Gi" } }\nsecret_env = { OPENAI_API_KEY = "llm:key" }\n'
    )
    monkeypatch.setenv("KITARU_CONFIG", str(config))
    orchestrator = load_stack("k8s").orchestrator()
    run = orchestrator.job_manifest("01JEXAMPLE0000000000000000", "review", 4)
    call = orchestrator.job_manifest("01JEXAMPLE0000000000000000", "review", 4, call=("fetch", 2))
    assert call["metadata"]["name"] == orchestrator.call_job_name("01JEXAMPLE0000000000000000", "fetch", 2)
    assert call["metadata"]["labels"]["kitaru.dev/call"] == "fetch"
    assert call["metadata"]["annotations"]["kitaru.dev/call-id"] == "fetch"
    run_pod, call_pod = run["spec"]["template"]["spec"], call["spec"]["template"]["spec"]
    assert call_pod["containers"][0]["command"][-4:] == [
        "worker",
        "call",
        "01JEXAMPLE0000000000000000",
        "fetch",
    ]
    for key in ("image", "env", "resources"):
        assert call_pod["containers"][0][key] == run_pod["containers"][0][key], key
    assert call["spec"]["podFailurePolicy"] == run["spec"]["podFailurePolicy"]
    # The pod gets every key but the submitter's kubeconfig, tables as JSON: its own stack starts
    # the call's Job as this one would.
    env = {e["name"]: e.get("value") for e in run_pod["containers"][0]["env"]}
    assert env["KITARU_STACK__IMAGE"] == "ghcr.io/acme/agents:1"
    assert env["KITARU_STACK__RESOURCES"] == '{"limits":{"memory":"2Gi"}}'
    assert "KITARU_STACK__KUBECONFIG" not in env
