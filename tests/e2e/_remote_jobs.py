"""Shared steps of the remote-job e2e scenarios (test_kubernetes.py, test_ecs.py,
test_cloudrun.py, test_aca.py): each file keeps its own fixtures and the checks of its cloud, and
runs these steps on its stack, so the four scenarios stay the same scenario."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from kitaru.store import sync_view
from kitaru.store.open import open_state_store
from tests._services._local_jobs import JobsDouble

ROOT = Path(__file__).resolve().parents[2]
FLOWS = Path(__file__).parent / "flows"


def toml(value: Any) -> str:
    """A TOML value for a stack key (keys of inline tables quoted: ECS tags hold colons)."""
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{json.dumps(k)} = {toml(v)}" for k, v in value.items()) + " }"
    if isinstance(value, list):
        return "[" + ", ".join(toml(v) for v in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return json.dumps(str(value))  # a JSON string is a TOML basic string


def write_config(tmp: Path, stack: str, keys: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> Path:
    """config.toml with ``stack`` active and made of ``keys``, named by KITARU_CONFIG here."""
    config = tmp / "config.toml"
    body = "\n".join(f"{k} = {toml(v)}" for k, v in keys.items())
    config.write_text(f'active_stack = "{stack}"\n\n[stacks.{stack}]\n{body}\n')
    monkeypatch.setenv("KITARU_CONFIG", str(config))
    return config


def import_test_flows(monkeypatch: pytest.MonkeyPatch) -> Any:
    """The test flows, imported as a top-level module of flows/ (so their source root, the code
    archive, is that small directory rather than the whole checkout)."""
    monkeypatch.syspath_prepend(str(FLOWS))
    import k8s_flows

    return k8s_flows


@dataclass
class RemoteStack:
    """A stack whose flows run as remote jobs on a double, and what a test needs around it."""

    state: str
    env: dict[str, str]
    counts: Path
    marks: Path
    cli: list[str]
    tmp: Path

    def wait_for(self, probe: Callable[[], Any], timeout: float, what: str) -> Any:
        raise NotImplementedError  # each stack waits through its double

    def run_cli(
        self, *args: str, cwd: Path | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [*self.cli, *args], env=self.env, cwd=cwd or self.tmp, capture_output=True, text=True, timeout=120
        )
        if check:
            assert done.returncode == 0, (
                f"kitaru {' '.join(args)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
            )
        return done

    def counted(self) -> Counter[str]:
        return Counter(self.counts.read_text().splitlines()) if self.counts.exists() else Counter()

    def execution(self, exec_id: str) -> Any:
        store = sync_view(open_state_store(self.state))
        try:
            return store.get_execution(exec_id)
        finally:
            store.close()

    def journal(self, exec_id: str) -> list[Any]:
        store = sync_view(open_state_store(self.state))
        try:
            return list(store.read_journal(exec_id))
        finally:
            store.close()

    def status_becomes(self, exec_id: str, *statuses: str, timeout: float = 90) -> Any:
        return self.wait_for(
            lambda: (r := self.execution(exec_id)) is not None and r.status in statuses and r,
            timeout,
            f"execution {exec_id} becoming {'/'.join(statuses)}",
        )


class Quickstart:
    """examples/quickstart.py, as it is, run on the stack: `run` submits its job and returns; the
    script then blocks in `handle.wait()` until the flow finishes, which needs an answer. Used as a
    context manager, it is killed if the scenario fails before it ends."""

    def __init__(self, stack: RemoteStack) -> None:
        self.stack = stack
        self.elsewhere = stack.tmp / "elsewhere"
        self.elsewhere.mkdir()
        self.process = subprocess.Popen(
            [sys.executable, str(ROOT / "examples" / "quickstart.py"), "durable agents"],
            env=stack.env,
            cwd=stack.tmp,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.before_input = 0.0
        self.input_returned = 0.0

    def __enter__(self) -> Quickstart:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.communicate()

    def still_waiting(self) -> None:
        assert self.process.poll() in (None, 0)  # blocked in wait(), or printed the waiting line

    def answer(self, exec_id: str) -> None:
        """The answer, from another directory (timed for the report)."""
        self.before_input = time.time()
        self.stack.run_cli("executions", "input", exec_id, "--value", "true", cwd=self.elsewhere)
        self.input_returned = time.time()

    def ends(self) -> None:
        out, err = self.process.communicate(timeout=90)
        assert self.process.returncode == 0, err
        assert "published" in out or "is waiting for approval" in out

    def report(self, journal: list[Any], runs_again_in: str, submitted: str, new: str) -> None:
        """Answer -> running again in the new job (a figure for the report, not an assertion)."""
        answered = next(r.ts for r in journal if r.kind == "wait_answered")
        resumed = min(r.ts for r in journal if r.ts > answered and r.kind != "wait_answered")
        before_input, input_returned = self.before_input, self.input_returned
        print(
            f"\nanswer -> the flow running again in {runs_again_in}: {resumed - answered:.2f} s "
            f"(the input command: {input_returned - before_input:.2f} s, of which the answer was "
            f"recorded after {answered - before_input:.2f} s and {submitted} by "
            f"{input_returned - answered:.2f} s after it; then {resumed - input_returned:.2f} s to the "
            f"{new}'s first journal write, including its process start)"
        )


def assert_each_checkpoint_completed_once(journal: list[Any]) -> None:
    completed = Counter(r.call_id for r in journal if r.kind == "checkpoint_completed")
    assert completed == {"research": 1, "draft": 1, "publish": 1}


def assert_only_the_killed_step_ran_twice(counted: Counter[str]) -> None:
    """The flow `eight`, killed in checkpoint 5: that one ran again, none before it did."""
    assert {i: counted[f"step {i}"] for i in range(1, 9)} == {1: 1, 2: 1, 3: 1, 4: 1, 5: 2, 6: 1, 7: 1, 8: 1}


class RetryingPlatform(RemoteStack):
    """A stack whose platform retries a failed attempt by itself (Cloud Run, Container Apps): one
    platform execution per kitaru submission, each with its attempts and their exit codes, on a
    double from tests/_services/_local_jobs.py."""

    stack_name: str
    succeeded: str  # how the platform spells an execution that succeeded
    stopped: str  # and one that was stopped (cancelled)

    @property
    def platform(self) -> JobsDouble[Any]:
        raise NotImplementedError

    def wait_for(self, probe: Callable[[], Any], timeout: float, what: str) -> Any:
        return self.platform.wait_for(probe, timeout, what)

    def finished(self, run: Any) -> str:
        """Wait for a platform execution to end; its outcome, as the platform spells it."""
        raise NotImplementedError

    def described(self, run: Any) -> str:
        raise NotImplementedError  # what `describe` says of a run that succeeded without retries


def a_killed_attempt_is_retried_by_the_platform_and_resumes(stack: RetryingPlatform, flows: Any) -> None:
    from tests._process import wait_for

    handle = flows.eight.run(str(stack.counts), str(stack.marks))
    wait_for(stack.marks / "slow", timeout=90)
    [run] = stack.platform.executions_of(handle.exec_id)
    stack.platform.kill_attempt(run)  # SIGKILL in the middle of checkpoint 5 of 8
    stack.wait_for(lambda: len(run.exit_codes) == 1, 30, "the kill")
    (stack.marks / "go").write_text("1")
    assert handle.wait(timeout=120) == sum(range(1, 9))
    assert stack.finished(run) == stack.succeeded
    assert run.exit_codes == [137, 0]  # the platform retried the attempt once
    assert_only_the_killed_step_ran_twice(stack.counted())
    assert len(stack.platform.executions_of(handle.exec_id)) == 1


def a_failing_flow_is_failed_and_not_retried_by_the_platform(stack: RetryingPlatform, flows: Any) -> None:
    from kitaru._engine.handles import blocking
    from kitaru.errors import KitaruExecutionError
    from kitaru.stack import load_stack

    handle = flows.boom.run(str(stack.counts))
    with pytest.raises(KitaruExecutionError, match="the flow itself is broken"):
        handle.wait(timeout=120)
    [run] = stack.platform.executions_of(handle.exec_id)
    stack.finished(run)
    # The platform would retry any non-zero exit: the worker exits 0 for a recorded flow failure.
    assert run.exit_codes == [0]
    assert stack.counted() == {"before": 1}
    assert stack.execution(handle.exec_id).status == "failed"
    assert f"execution {handle.exec_id} failed" in stack.platform.log(run)  # the worker said so
    described = blocking(load_stack(stack.stack_name).orchestrator().describe, handle.exec_id)
    assert stack.described(run) in described


def cancel_stops_the_attempt_and_the_execution_stays_cancelled(stack: RetryingPlatform, flows: Any) -> None:
    from tests._process import wait_for

    handle = flows.sleepy.run(str(stack.counts), str(stack.marks))
    wait_for(stack.marks / "started", timeout=90)
    [run] = stack.platform.executions_of(handle.exec_id)
    stack.run_cli("executions", "cancel", handle.exec_id)
    assert stack.execution(handle.exec_id).status == "cancelled"
    assert stack.finished(run) == stack.stopped
    assert len(run.attempts) == 1  # a stopped attempt is not retried
    stack.wait_for(lambda: not stack.platform.alive(), 30, "its attempt gone")
    time.sleep(1)  # nothing revives it once its attempt is gone
    assert stack.execution(handle.exec_id).status == "cancelled"
    assert len(stack.platform.executions_of(handle.exec_id)) == 1
    assert stack.counted() == {"slow": 1}
