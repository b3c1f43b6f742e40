"""Flows run as Azure Container Apps jobs, end to end with real processes: azure-mgmt-appcontainers'
async client and azure-identity's DefaultAzureCredential (through the managed-identity token
endpoint) against the Container Apps double (tests/_services/aca.py; its executor runs each
replica's command as a local process and retries non-zero exits up to the job's
replicaRetryLimit), PostgreSQL for state and Azurite for artifacts and code archives (an azure
stack keeps its artifacts in Blob Storage). The replicas run ``kitaru worker run <exec_id>`` from
this checkout's environment (the stack's ``worker_command``; the double ignores images).

The stack starts an existing job, as an administrator created it, which hands the worker the
Blob connection string as a secret: kitaru never copies it into an execution's template.

Checkpoint runs are counted outside kitaru: the test flows (flows/k8s_flows.py) append a line per
run to a file, from whichever replica runs them."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests._services._local_jobs import JobsDouble
from tests._services.aca import AcaDouble, aca
from tests._services.azure import Azurite, azurite
from tests._services.postgres import find_bindir
from tests.e2e._remote_jobs import (
    Quickstart,
    RetryingPlatform,
    a_failing_flow_is_failed_and_not_retried_by_the_platform,
    a_killed_attempt_is_retried_by_the_platform_and_resumes,
    assert_each_checkpoint_completed_once,
    cancel_stops_the_attempt_and_the_execution_stays_cancelled,
    import_test_flows,
    write_config,
)

__all__ = ["aca", "azurite"]

pytestmark = pytest.mark.e2e

SUB = "00000000-0000-0000-0000-0000000000aa"
GROUP = "agents"
JOB = "kitaru-worker"
ENVIRONMENT = f"/subscriptions/{SUB}/resourceGroups/{GROUP}/providers/Microsoft.App/managedEnvironments/env"


@dataclass
class Azure(RetryingPlatform):
    """An azure stack running flows on the Container Apps double, and what a test needs around it."""

    aca: AcaDouble
    stack_name = "azure"
    succeeded = "Succeeded"
    stopped = "Stopped"

    @property
    def platform(self) -> JobsDouble[Any]:
        return self.aca

    def finished(self, run: Any) -> str:
        self.aca.wait_for(lambda: run.completed, 90, f"{run.name} finishing")
        return str(run.status)

    def described(self, run: Any) -> str:
        return f"Container Apps job execution {run.name}: Succeeded (exit codes 0)"


@pytest.fixture
def azure(
    aca: AcaDouble,
    azurite: Azurite,
    request: pytest.FixtureRequest,
    tmp_path: Path,
    subprocess_env: dict[str, str],
    kitaru_cli: list[str],
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Azure]:
    if find_bindir() is None:
        pytest.skip("PostgreSQL server binaries are needed (apt-get install postgresql)")
    state = request.getfixturevalue("postgres_dsn")
    artifacts = f"az://{azurite.create_container()}/kitaru"
    # A replica's environment is its image's plus the template's: nothing of this process leaks in.
    aca.base_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path)}
    # The job, as `az containerapp job create --trigger-type Manual` made it: its secret holds the
    # Blob connection string, read by the worker's KITARU_STACK__CONNECTION_STRING.
    aca.add_job(
        SUB,
        GROUP,
        JOB,
        {
            "location": "westeurope",
            "properties": {
                "environmentId": ENVIRONMENT,
                "configuration": {
                    "triggerType": "Manual",
                    "replicaTimeout": 600,
                    "replicaRetryLimit": 3,
                    "secrets": [{"name": "blob", "value": azurite.connection_string}],
                },
                "template": {
                    "containers": [
                        {
                            "name": "main",
                            "image": "kitaru.azurecr.io/agents:test",
                            "env": [{"name": "KITARU_STACK__CONNECTION_STRING", "secretRef": "blob"}],
                            "resources": {"cpu": 0.5, "memory": "1Gi"},
                        }
                    ]
                },
            },
        },
    )
    keys = {
        "type": "azure",
        "state": state,
        "artifacts": artifacts,
        **azurite.options(),  # connection_string: for this machine's processes
        "subscription_id": SUB,
        "resource_group": GROUP,
        "job": JOB,
        "arm_endpoint_url": aca.endpoint,
        # Test-only: the double runs commands on this machine, so the worker is this checkout's.
        "worker_command": [sys.executable, "-m", "kitaru.cli"],
        "env": {"KITARU_HOME": str(tmp_path / "replica-home"), "PYTHONUNBUFFERED": "1"},
    }
    config = write_config(tmp_path, "azure", keys, monkeypatch)
    # The submitting processes' managed identity (DefaultAzureCredential finds it as on Azure).
    for name, value in aca.identity_env().items():
        monkeypatch.setenv(name, value)
    marks = tmp_path / "marks"
    marks.mkdir()
    yield Azure(
        aca=aca,
        state=state,
        env={**subprocess_env, **aca.identity_env(), "KITARU_CONFIG": str(config)},
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


def test_the_quickstart_runs_as_container_apps_jobs_and_its_wait_holds_no_replica(azure: Azure) -> None:
    with Quickstart(azure) as quickstart:
        first = azure.aca.wait_for(lambda: list(azure.aca.executions.values()), 90, "a job execution")[0]
        container = first.template["containers"][0]
        exec_id = container["args"][-1]
        assert container["args"] == ["worker", "run", exec_id]
        assert container["name"] == "main" and container["resources"] == {"cpu": 0.5, "memory": "1Gi"}
        env = {e["name"]: e for e in container["env"]}
        assert env["KITARU_STACK"]["value"] == "azure" and env["KITARU_STACK__JOB"]["value"] == JOB
        assert env["KITARU_WORKER_FLOW_FAILED_EXIT"]["value"] == "0"
        # The connection string reaches the replica from the job's secret, never in plain text.
        assert env["KITARU_STACK__CONNECTION_STRING"] == {
            "name": "KITARU_STACK__CONNECTION_STRING",
            "secretRef": "blob",
        }
        assert "AccountKey" not in json.dumps(first.template)

        # It waits, and no replica is alive: the replica exited 0 when the execution suspended.
        azure.status_becomes(exec_id, "waiting")
        assert azure.finished(first) == "Succeeded"
        azure.aca.wait_for(lambda: not azure.aca.alive(), 30, "no replica alive")
        quickstart.still_waiting()

        # The answer, from another directory, starts a new job execution that completes it.
        quickstart.answer(exec_id)
        runs = azure.aca.wait_for(
            lambda: len(azure.aca.executions_of(exec_id)) == 2 and azure.aca.executions_of(exec_id),
            30,
            "a second job execution",
        )
        azure.status_becomes(exec_id, "completed")
        assert azure.finished(runs[1]) == "Succeeded"
        quickstart.ends()

    journal = azure.journal(exec_id)
    assert_each_checkpoint_completed_once(journal)
    assert [len(e.attempts) for e in azure.aca.executions_of(exec_id)] == [1, 1]  # nothing retried

    described = azure.run_cli("executions", "get", exec_id).stdout
    assert exec_id in described

    quickstart.report(journal, "the new Container Apps replica", "the job started", "new replica")


def test_a_replica_killed_mid_checkpoint_is_retried_and_resumes(azure: Azure, k8s_flows: Any) -> None:
    a_killed_attempt_is_retried_by_the_platform_and_resumes(azure, k8s_flows)


def test_a_failing_flow_is_marked_failed_and_not_retried_by_container_apps(
    azure: Azure, k8s_flows: Any
) -> None:
    a_failing_flow_is_failed_and_not_retried_by_the_platform(azure, k8s_flows)


def test_cancel_stops_the_replica_and_the_execution_stays_cancelled(azure: Azure, k8s_flows: Any) -> None:
    cancel_stops_the_attempt_and_the_execution_stays_cancelled(azure, k8s_flows)


def test_an_azure_stack_without_job_keys_runs_flows_here(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kitaru.local_stack import LocalOrchestrator
    from kitaru.stack import load_stack

    config = tmp_path / "config.toml"
    config.write_text('[stacks.a]\ntype = "azure"\nartifacts = "az://c/p"\nsubscription_id = "s"\n')
    monkeypatch.setenv("KITARU_CONFIG", str(config))
    assert isinstance(load_stack("a").orchestrator(), LocalOrchestrator)


def test_missing_keys_stores_roles_and_permissions_are_clear_errors(
    aca: AcaDouble, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kitaru._engine.handles import blocking
    from kitaru.errors import KitaruConfigError
    from kitaru.stack import load_stack

    for name, value in aca.identity_env().items():
        monkeypatch.setenv(name, value)
    base = 'type = "azure"\nartifacts = "az://c/p"\nstate = "postgresql://u@h/db"\n'
    where = f'subscription_id = "{SUB}"\nresource_group = "{GROUP}"\narm_endpoint_url = "{aca.endpoint}"\n'
    identity = (
        f"/subscriptions/{SUB}/resourceGroups/{GROUP}/providers/Microsoft.ManagedIdentity/"
        "userAssignedIdentities/runner"
    )
    config = tmp_path / "config.toml"
    config.write_text(
        f'[stacks.lite]\ntype = "azure"\nartifacts = "az://c/p"\n{where}job = "j"\n'
        f'state = "sqlite:///{tmp_path}/k.db"\n'
        f'[stacks.nosub]\n{base}job = "j"\n'
        f'[stacks.nojob]\n{base}{where}image = "i"\n'
        f'[stacks.noimage]\n{base}{where}environment = "{ENVIRONMENT}"\nlocation = "westeurope"\n'
        f'[stacks.missing]\n{base}{where}job = "nope"\n'
        f'[stacks.denied]\n{base}{where}environment = "{ENVIRONMENT}"\nlocation = "westeurope"\n'
        f'image = "i"\nidentity = "{identity}"\n'
        f'[stacks.nostart]\n{base}{where}job = "{JOB}"\n'
    )
    monkeypatch.setenv("KITARU_CONFIG", str(config))
    with pytest.raises(KitaruConfigError, match=r"SQLite.*cannot reach.*postgresql://"):
        load_stack("lite").orchestrator()
    with pytest.raises(KitaruConfigError, match=r"no `subscription_id`.*subscription_id = "):
        load_stack("nosub").orchestrator()
    with pytest.raises(KitaruConfigError, match=r"neither a Container Apps `job`.*`environment`"):
        load_stack("nojob").orchestrator()
    with pytest.raises(KitaruConfigError, match=r"no\s+`image`.*image = "):
        load_stack("noimage").orchestrator()
    orchestrator: Any = load_stack("missing").orchestrator()
    with pytest.raises(KitaruConfigError, match=r"no Container Apps job 'nope'.*`job`"):
        blocking(orchestrator.job)
    # The job's identity is one the credentials may not assign: Azure's message and the key.
    aca.denied_identities.add(identity)
    orchestrator = load_stack("denied").orchestrator()
    with pytest.raises(
        KitaruConfigError,
        match=r"LinkedAuthorizationFailed.*userAssignedIdentities/assign/action.*`identity`",
    ):
        blocking(orchestrator.job)
    # A role without the start action: Azure's message, the key and the role to grant.
    aca.add_job(
        SUB,
        GROUP,
        JOB,
        {
            "properties": {
                "configuration": {"triggerType": "Manual"},
                "template": {"containers": [{"name": "main", "image": "i"}]},
            }
        },
    )
    aca.denied_actions.add("Microsoft.App/jobs/start/action")
    orchestrator = load_stack("nostart").orchestrator()
    job = blocking(orchestrator.job)
    template = orchestrator.start_template(job, "E1", 0)

    async def start() -> None:
        async with orchestrator._client() as client:
            await orchestrator._call(
                "start the job",
                "job",
                client.jobs.begin_start(GROUP, JOB, template, **orchestrator._call_options()),
            )

    with pytest.raises(
        KitaruConfigError,
        match=r"AuthorizationFailed.*Microsoft\.App/jobs/start/action.*`job`.*Container Apps Jobs Operator",
    ):
        blocking(start)


def test_an_isolated_call_is_a_job_execution_of_its_own_and_its_value_reaches_the_flow(
    azure: Azure, k8s_flows: Any
) -> None:
    """``@checkpoint(runtime="isolated")`` on an azure stack: the parent's replica starts the job
    once more for the call (`kitaru worker call`, the same container, secrets and env), and the
    value that execution's replica returned is what the flow gets."""
    # What the job's managed identity gives a real replica: the parent starts the call's execution.
    azure.aca.base_env.update(azure.aca.identity_env())
    (azure.marks / "release").write_text("1")  # the call does not hold this time
    handle = k8s_flows.isolated.run(str(azure.counts), str(azure.marks))
    result = handle.wait(timeout=180)
    runs = azure.aca.executions_of(handle.exec_id)
    [call] = [r for r in runs if r.argv[-4:] == ["worker", "call", handle.exec_id, "own_job"]]
    [parent] = [r for r in runs if r.argv[-3:] == ["worker", "run", handle.exec_id]]
    container = call.template["containers"][0]
    env = {e["name"]: e for e in container["env"]}
    assert env["KITARU_CALL_LAUNCH"]["value"] == "1"
    # The connection string reaches the call's replica from the job's secret, as the parent's.
    assert env["KITARU_STACK__CONNECTION_STRING"] == {
        "name": "KITARU_STACK__CONNECTION_STRING",
        "secretRef": "blob",
    }
    assert container["image"] == parent.template["containers"][0]["image"]
    assert azure.finished(call) == "Succeeded"
    assert result["pid"] == call.attempts[-1].pid  # the value came from that execution's replica
    assert result["parent_pid"] == parent.attempts[-1].pid
    assert azure.counted() == {"own_job": 1}
