"""Flows run as Cloud Run jobs, end to end with real processes: google-cloud-run's REST client
against the Cloud Run double (tests/_services/cloudrun.py; its executor runs each task's command as
a local process and retries non-zero exits up to the job's maxRetries), PostgreSQL for state and
fake-gcs-server for artifacts and code archives (a gcp stack keeps its artifacts in GCS). The tasks
run ``kitaru worker run <exec_id>`` from this checkout's environment (the stack's
``worker_command``; the double ignores images).

Checkpoint runs are counted outside kitaru: the test flows (flows/k8s_flows.py) append a line per
run to a file, from whichever task runs them."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests._services._local_jobs import JobsDouble
from tests._services.cloudrun import CloudRunDouble, cloud_run
from tests._services.gcs import FakeGcsServer, gcs_server
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

__all__ = ["cloud_run", "gcs_server"]

pytestmark = pytest.mark.e2e


@dataclass
class Gcp(RetryingPlatform):
    """A gcp stack running flows on the Cloud Run double, and what a test needs around it."""

    run: CloudRunDouble
    stack_name = "gcp"
    succeeded = "succeeded"
    stopped = "cancelled"

    @property
    def platform(self) -> JobsDouble[Any]:
        return self.run

    def finished(self, run: Any) -> str:
        self.run.wait_for(lambda: run.completed, 90, f"{run.name} finishing")
        assert run.outcome is not None
        return str(run.outcome)

    def described(self, run: Any) -> str:
        return f"Cloud Run execution {run.name.rsplit('/', 1)[1]}: succeeded (retried 0"


def _keys(state: str, artifacts: str, gcs: FakeGcsServer, run: CloudRunDouble, tmp: Path) -> dict[str, Any]:
    return {
        "type": "gcp",
        "state": state,
        "artifacts": artifacts,
        **gcs.options(),  # endpoint_url and project (kitaru-test): the Cloud Run project too
        "anonymous": True,  # no Google credentials here: anonymous against both emulators
        "region": "europe-west1",
        "image": "europe-west1-docker.pkg.dev/kitaru-test/agents/worker:test",
        "run_endpoint_url": run.endpoint,
        "max_retries": 3,
        # Test-only: the double runs commands on this machine, so the worker is this checkout's.
        "worker_command": [sys.executable, "-m", "kitaru.cli"],
        "env": {"KITARU_HOME": str(tmp / "task-home"), "PYTHONUNBUFFERED": "1"},
    }


@pytest.fixture
def gcp(
    cloud_run: CloudRunDouble,
    gcs_server: FakeGcsServer,
    request: pytest.FixtureRequest,
    tmp_path: Path,
    subprocess_env: dict[str, str],
    kitaru_cli: list[str],
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Gcp]:
    if find_bindir() is None:
        pytest.skip("PostgreSQL server binaries are needed (apt-get install postgresql)")
    state = request.getfixturevalue("postgres_dsn")
    artifacts = f"gs://{gcs_server.create_bucket()}/kitaru"
    # A task's environment is its image's plus the job's: nothing of this test process leaks in.
    cloud_run.base_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path)}
    keys = _keys(state, artifacts, gcs_server, cloud_run, tmp_path)
    config = write_config(tmp_path, "gcp", keys, monkeypatch)
    marks = tmp_path / "marks"
    marks.mkdir()
    yield Gcp(
        run=cloud_run,
        state=state,
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


def test_the_quickstart_runs_as_cloud_run_jobs_and_its_wait_holds_no_task(gcp: Gcp) -> None:
    with Quickstart(gcp) as quickstart:
        first = gcp.run.wait_for(lambda: list(gcp.run.executions.values()), 90, "a Cloud Run execution")[0]
        container = first.template["containers"][0]
        exec_id = container["args"][-1]
        assert container["args"] == ["worker", "run", exec_id]
        env = {e["name"]: e["value"] for e in container["env"]}
        assert env["KITARU_STACK"] == "gcp" and env["KITARU_STACK__REGION"] == "europe-west1"
        assert env["KITARU_WORKER_FLOW_FAILED_EXIT"] == "0"  # the job's own env, kept under overrides
        [job] = gcp.run.jobs.values()
        assert job["name"].startswith("projects/kitaru-test/locations/europe-west1/jobs/kitaru-gcp-")
        assert job["template"]["template"]["maxRetries"] == 3

        # It waits, and no task is alive: the task exited 0 when the execution suspended.
        gcp.status_becomes(exec_id, "waiting")
        assert gcp.finished(first) == "succeeded"
        gcp.run.wait_for(lambda: not gcp.run.alive(), 30, "no task alive")
        quickstart.still_waiting()

        # The answer, from another directory, starts a new execution of the job that completes it.
        quickstart.answer(exec_id)
        runs = gcp.run.wait_for(
            lambda: len(gcp.run.executions_of(exec_id)) == 2 and gcp.run.executions_of(exec_id),
            30,
            "a second execution",
        )
        gcp.status_becomes(exec_id, "completed")
        assert gcp.finished(runs[1]) == "succeeded"
        quickstart.ends()

    journal = gcp.journal(exec_id)
    assert_each_checkpoint_completed_once(journal)
    assert [len(e.attempts) for e in gcp.run.executions_of(exec_id)] == [1, 1]  # nothing retried

    described = gcp.run_cli("executions", "get", exec_id).stdout
    assert exec_id in described

    quickstart.report(journal, "the new Cloud Run task", "the job run", "new task")


def test_a_task_killed_mid_checkpoint_is_retried_and_resumes(gcp: Gcp, k8s_flows: Any) -> None:
    a_killed_attempt_is_retried_by_the_platform_and_resumes(gcp, k8s_flows)


def test_a_failing_flow_is_marked_failed_and_not_retried_by_cloud_run(gcp: Gcp, k8s_flows: Any) -> None:
    a_failing_flow_is_failed_and_not_retried_by_the_platform(gcp, k8s_flows)


def test_cancel_stops_the_task_and_the_execution_stays_cancelled(gcp: Gcp, k8s_flows: Any) -> None:
    cancel_stops_the_attempt_and_the_execution_stays_cancelled(gcp, k8s_flows)


def test_a_gcp_stack_without_cloud_run_keys_runs_flows_here(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kitaru.local_stack import LocalOrchestrator
    from kitaru.stack import load_stack

    config = tmp_path / "config.toml"
    config.write_text('[stacks.g]\ntype = "gcp"\nartifacts = "gs://b/p"\nproject = "p"\n')
    monkeypatch.setenv("KITARU_CONFIG", str(config))
    assert isinstance(load_stack("g").orchestrator(), LocalOrchestrator)


def test_missing_keys_stores_and_permissions_are_clear_errors(
    cloud_run: CloudRunDouble, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kitaru._engine.handles import blocking
    from kitaru.errors import KitaruConfigError
    from kitaru.stack import load_stack

    base = 'type = "gcp"\nartifacts = "gs://b/p"\nproject = "p"\nanonymous = true\n'
    pg = 'state = "postgresql://u@h/db"\n'
    config = tmp_path / "config.toml"
    config.write_text(
        f'[stacks.lite]\n{base}region = "r"\nimage = "i"\nstate = "sqlite:///{tmp_path}/k.db"\n'
        f'[stacks.noimage]\n{base}{pg}region = "r"\n'
        f'[stacks.noregion]\n{base}{pg}image = "i"\n'
        f'[stacks.denied]\n{base}{pg}region = "r"\nimage = "i"\n'
        'service_account = "runner@p.iam.gserviceaccount.com"\n'
        f'run_endpoint_url = "{cloud_run.endpoint}"\n'
    )
    monkeypatch.setenv("KITARU_CONFIG", str(config))
    with pytest.raises(KitaruConfigError, match=r"SQLite.*cannot reach.*postgresql://"):
        load_stack("lite").orchestrator()
    with pytest.raises(KitaruConfigError, match=r"no `image`.*image = "):
        load_stack("noimage").orchestrator()
    with pytest.raises(KitaruConfigError, match=r"no `region`.*region = "):
        load_stack("noregion").orchestrator()
    # The job's identity is one the credentials may not act as: IAM's message and the key.
    cloud_run.denied_accounts.add("runner@p.iam.gserviceaccount.com")
    orchestrator: Any = load_stack("denied").orchestrator()
    with pytest.raises(KitaruConfigError, match=r"iam\.serviceaccounts\.actAs.*`service_account`"):
        blocking(orchestrator._ensure_job)


def test_an_isolated_call_is_a_cloud_run_execution_of_its_own_and_its_value_reaches_the_flow(
    gcp: Gcp, k8s_flows: Any
) -> None:
    """``@checkpoint(runtime="isolated")`` on a gcp stack: the parent's task runs the execution's
    job once more for the call (`kitaru worker call`, the same image and env), and the value that
    execution's process returned is what the flow gets."""
    (gcp.marks / "release").write_text("1")  # the call does not hold this time
    handle = k8s_flows.isolated.run(str(gcp.counts), str(gcp.marks))
    result = handle.wait(timeout=180)
    runs = gcp.run.executions_of(handle.exec_id)
    [call] = [r for r in runs if r.argv[-4:] == ["worker", "call", handle.exec_id, "own_job"]]
    [parent] = [r for r in runs if r.argv[-3:] == ["worker", "run", handle.exec_id]]
    assert call.job is parent.job  # the execution's own job, run once more
    assert call.env["KITARU_CALL_LAUNCH"] == "1"
    per_run = ("KITARU_CALL_LAUNCH", "KITARU_RUN")  # which launch, and the journal's length
    assert {k: v for k, v in call.env.items() if k not in per_run} == {
        k: v for k, v in parent.env.items() if k not in per_run
    }
    assert gcp.finished(call) == "succeeded"
    assert result["pid"] == call.attempts[-1].pid  # the value came from that execution's task
    assert result["parent_pid"] == parent.attempts[-1].pid
    assert gcp.counted() == {"own_job": 1}
