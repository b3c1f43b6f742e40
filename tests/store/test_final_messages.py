"""A final execution refuses what would make it run again, and the refusal says which execution,
why, and the command that helps (every state store words it the same)."""

from __future__ import annotations

import pytest

import kitaru
from kitaru import KitaruClient, checkpoint, flow
from kitaru._engine.runtime import Runtime
from kitaru.errors import KitaruStateError


@checkpoint
def draft(topic: str) -> str:
    return f"draft({topic})"


@flow
def review(topic: str) -> str:
    text = draft(topic)
    approved = kitaru.wait(name="approve", question="Approve?", schema=bool)
    return text if approved else ""


def test_a_cancelled_execution_says_it_cannot_run_again(runtime: Runtime) -> None:
    client = KitaruClient()
    exec_id = review.run("t").exec_id
    client.executions.cancel(exec_id)
    with pytest.raises(KitaruStateError) as resumed:
        client.executions.resume(exec_id)
    assert str(resumed.value).startswith(f"execution {exec_id} is cancelled, so it cannot run again")
    assert f"`kitaru executions replay {exec_id} --from CHECKPOINT`" in str(resumed.value)
    with pytest.raises(KitaruStateError) as answered:
        client.executions.input(exec_id, True)
    assert str(answered.value).startswith(f"execution {exec_id} is cancelled, so it cannot take an answer")


def test_a_completed_execution_says_its_result_is_final(runtime: Runtime) -> None:
    client = KitaruClient()
    handle = review.run("t")
    client.executions.input(handle.exec_id, True).wait(timeout=60)
    with pytest.raises(KitaruStateError) as resumed:
        client.executions.resume(handle.exec_id)
    message = str(resumed.value)
    assert message.startswith(f"execution {handle.exec_id} is completed, so it cannot run again")
    assert f"`kitaru executions get {handle.exec_id}`" in message
    with pytest.raises(KitaruStateError) as cancelled:
        client.executions.cancel(handle.exec_id)
    assert str(cancelled.value) == (
        f"execution {handle.exec_id} is already completed; only running or waiting executions can be "
        "cancelled."
    )
