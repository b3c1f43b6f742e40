# Resolve waits from KitaruClient as the 0.18 wait guides show: the pending wait on the
# execution, pending_waits(exec_id), input(exec_id, wait=, value=) and its validation error.
# expect: approve_release Approve publishing release notes for v1.0?
# expect: Result: Draft about v1.0.
import kitaru
from kitaru import checkpoint, flow
from kitaru.client import ExecutionStatus


@checkpoint
def draft_release_note(topic: str) -> str:
    return f"Draft about {topic}."


@flow
def wait_for_approval_flow(topic: str) -> str:
    draft = draft_release_note(topic)
    approved = kitaru.wait(
        name="approve_release",
        schema=bool,
        question=f"Approve publishing release notes for {topic}?",
        metadata={"topic": topic},
    )
    if approved is False:
        return f"REJECTED: {topic}"
    return draft


def main() -> None:
    handle = wait_for_approval_flow.run("v1.0")
    client = kitaru.KitaruClient()
    exec_id = handle.exec_id

    execution = client.executions.get(exec_id)
    assert execution.status == ExecutionStatus.WAITING and not execution.status.is_finished
    assert execution.pending_wait.name == "approve_release"
    assert execution.pending_wait.metadata == {"topic": "v1.0"}
    assert execution.pending_wait.entered_waiting_at is not None

    waits = client.executions.pending_waits(exec_id)
    for w in waits:
        print(w.name, w.question)
    assert [w.wait_id for w in waits] == ["approve_release"]

    try:
        client.executions.input(exec_id, wait="approve_release", value="yes")
    except kitaru.KitaruWaitValidationError as exc:
        print("refused:", exc)
    else:
        raise AssertionError("a string was accepted for a bool wait")
    assert client.executions.get(exec_id).status == "waiting"

    execution = client.executions.input(exec_id, wait="approve_release", value=True)
    print("after input:", execution.exec_id, execution.status.value)
    assert execution.exec_id == exec_id
    assert client.executions.pending_waits(exec_id) == []
    print(f"Result: {handle.wait()}")
    assert client.executions.get(exec_id).status == ExecutionStatus.COMPLETED


if __name__ == "__main__":
    main()
