"""`KitaruClient().executions.recover()` on each store: it drives on executions nobody moves on, and
leaves alone the ones a live runner drives."""

from __future__ import annotations

import time
from collections import Counter

import kitaru
from kitaru import KitaruClient, checkpoint, flow
from kitaru._engine.handles import blocking
from kitaru._engine.runner import Runner
from kitaru._engine.runtime import Runtime

RAN: Counter[int] = Counter()


@checkpoint
def step(x: int) -> int:
    RAN[x] += 1
    return x


@flow
def two_steps(x: int) -> int:
    return step(x) + step(x + 1)


@flow
def short_wait() -> str:
    step(0)
    try:
        return "yes" if kitaru.wait(name="w", schema=bool, expires_in=3.0) else "no"
    except kitaru.KitaruWaitTimeoutError:
        return "timed out"


def test_recover_drives_an_execution_left_without_a_runner(runtime: Runtime) -> None:
    RAN.clear()
    # A runner that stopped before the body ran: the execution is running, its lease released.
    record, _, _ = blocking(Runner(runtime).create, two_steps, (10,), {}, None)
    runtime.state.commit(record.id, [], owner=runtime.owner, release_lease=True)
    client = KitaruClient()
    assert client.executions.runner_gone(record.id)

    [report] = client.executions.recover()

    assert (report.exec_id, report.reason, report.outcome) == (record.id, "runner_gone", "completed")
    assert client.executions.get(record.id).status == "completed"
    assert RAN == {10: 1, 11: 1}
    assert client.executions.recover() == []


def test_recover_leaves_a_live_runner_alone(runtime: Runtime) -> None:
    record, _, _ = blocking(Runner(runtime).create, two_steps, (1,), {}, None)  # leased to this live process
    client = KitaruClient()
    assert not client.executions.runner_gone(record.id)
    assert client.executions.recover() == []
    assert client.executions.get(record.id).status == "running"


def test_recover_times_out_a_wait_past_its_deadline(runtime: Runtime) -> None:
    handle = short_wait.run()
    assert handle.status == "waiting"
    client = KitaruClient()
    deadline = time.monotonic() + 30
    while not (found := client.executions.recover()):
        assert time.monotonic() < deadline, "the wait's deadline never came due"
        time.sleep(0.05)
    [report] = found
    assert (report.exec_id, report.reason, report.outcome) == (handle.exec_id, "wait_deadline", "completed")
    assert handle.wait(timeout=10) == "timed out"
    assert [w.status for w in client.executions.get(handle.exec_id).waits] == ["timed_out"]
