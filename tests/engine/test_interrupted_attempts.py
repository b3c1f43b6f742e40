"""Interrupted attempts on each store: the heartbeat notes attempts in flight, and the runner that
takes an execution over journals the ones that never ended (tests/e2e/test_interrupted.py does it
with a real SIGKILL; here a KeyboardInterrupt stops the runner mid-attempt)."""

from __future__ import annotations

import time
from collections import Counter

import pytest

import kitaru
from kitaru import KitaruClient, checkpoint, flow
from kitaru._engine.runtime import Runtime, get_runtime

RAN: Counter[str] = Counter()
STOP = {"on": False}


@pytest.fixture(autouse=True)
def _reset() -> None:
    RAN.clear()
    STOP["on"] = False


def noted_in_flight(call_id: str, timeout: float = 60) -> None:
    """Block until the heartbeat has written ``call_id`` as in flight for this execution."""
    state = get_runtime().state
    exec_id = kitaru.current_execution_id()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        record = state.get_execution(exec_id)
        if record is not None and call_id in (record.metadata.get("inflight") or {}):
            return
        time.sleep(0.01)
    raise AssertionError(f"the heartbeat did not note {call_id} in flight within {timeout} s")


@checkpoint
def prepare() -> int:
    RAN["prepare"] += 1
    return 1


@checkpoint
def slow(n: int) -> int:
    RAN["slow"] += 1
    if STOP["on"]:
        noted_in_flight("slow")
        raise KeyboardInterrupt  # the runner stops mid-attempt, as if killed
    return n + 1


@flow
def interrupted_flow() -> int:
    return slow(prepare())


@checkpoint
def noted_then_done() -> int:
    RAN["noted"] += 1
    noted_in_flight("noted_then_done")
    return 5


@flow
def noted_then_wait() -> int:
    value = noted_then_done()
    kitaru.wait(name="go", schema=bool)
    return value


class TestInterruptedAttempts:
    def test_resume_journals_the_attempt_cut_short(self, runtime: Runtime) -> None:
        STOP["on"] = True
        with pytest.raises(KeyboardInterrupt):
            interrupted_flow.run()
        [record] = runtime.state.list_executions()
        assert record.status == "running"
        STOP["on"] = False

        handle = KitaruClient().executions.resume(record.id)
        assert handle.wait(timeout=60) == 2
        assert RAN == {"prepare": 1, "slow": 2}
        calls = {c.call_id: c for c in KitaruClient().executions.get(record.id).checkpoints}
        assert (calls["slow"].status, calls["slow"].attempts, calls["slow"].interrupted) == (
            "completed",
            2,
            1,
        )
        assert (calls["prepare"].attempts, calls["prepare"].interrupted) == (1, 0)
        kinds = [r.kind for r in runtime.state.read_journal(record.id) if r.call_id == "slow"]
        assert kinds == ["checkpoint_interrupted", "checkpoint_completed"]

    def test_attempts_that_ended_are_not_called_interrupted(self, runtime: Runtime) -> None:
        handle = noted_then_wait.run()
        assert handle.status == "waiting"
        # The heartbeat's last note may still list the finished attempt: resuming must see it ended.
        assert KitaruClient().executions.input(handle.exec_id, True).wait(timeout=60) == 5
        journal = runtime.state.read_journal(handle.exec_id)
        assert not [r for r in journal if r.kind == "checkpoint_interrupted"]
        [call] = KitaruClient().executions.get(handle.exec_id).checkpoints
        assert (call.attempts, call.interrupted) == (1, 0)
        assert "inflight" not in KitaruClient().executions.get(handle.exec_id).metadata
