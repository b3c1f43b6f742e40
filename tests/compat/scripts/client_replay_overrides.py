# Replay as the 0.18 docs show it: `checkpoint.<name>` overrides, flow inputs as keyword
# arguments, the returned execution's fields, `ExecutionStatus` from kitaru.client.
# expect: Replay output:  PUBLISHED: Draft from edited notes for kitaru
# expect: New topic output: PUBLISHED: Draft from notes about durable agents
import time

import kitaru
from kitaru import checkpoint, flow
from kitaru.client import ExecutionStatus


@checkpoint
def research(topic: str) -> str:
    """Generate research notes for a topic."""
    return f"notes about {topic}"


@checkpoint
def write_draft(research_notes: str) -> str:
    """Create a draft from research notes."""
    return f"Draft from {research_notes}"


@checkpoint
def publish(draft: str) -> str:
    """Produce the final published string."""
    return f"PUBLISHED: {draft}"


@flow
def content_pipeline(topic: str) -> str:
    notes = research(topic)
    draft = write_draft(notes)
    return publish(draft)


def wait_until_finished(client: kitaru.KitaruClient, exec_id: str):
    deadline = time.time() + 120
    while time.time() <= deadline:
        execution = client.executions.get(exec_id)
        if execution.status in {
            ExecutionStatus.COMPLETED,
            ExecutionStatus.FAILED,
            ExecutionStatus.CANCELLED,
        }:
            return execution
        time.sleep(1)
    raise TimeoutError("Replay execution did not finish within 120s.")


def main() -> None:
    source_handle = content_pipeline.run("kitaru")
    original_result = source_handle.wait()
    print(f"Original result: {original_result}")
    assert original_result == "PUBLISHED: Draft from notes about kitaru"

    # Replay from write_draft, swapping the research checkpoint's output.
    client = kitaru.KitaruClient()
    replayed = client.executions.replay(
        source_handle.exec_id,
        from_="write_draft",
        overrides={"checkpoint.research": "edited notes for kitaru"},
    )
    print(f"Replay execution started: {replayed.exec_id}")
    print(replayed.original_exec_id)  # points to source execution
    assert replayed.original_exec_id == source_handle.exec_id

    execution = wait_until_finished(client, replayed.exec_id)
    if execution.status != ExecutionStatus.COMPLETED:
        raise RuntimeError(f"Replay finished with status '{execution.status.value}'.")
    publish_cp = next(cp for cp in execution.checkpoints if cp.name == "publish")
    replay_output = str(publish_cp.artifacts[0].load())
    print(f"Replay output:  {replay_output}")
    assert replay_output == "PUBLISHED: Draft from edited notes for kitaru"

    # A new flow input, given as a keyword argument, from the first checkpoint on.
    again = client.executions.replay(source_handle.exec_id, from_="research", topic="durable agents")
    latest = wait_until_finished(client, again.exec_id)
    assert latest.status.is_finished and latest.failure is None
    final = next(cp for cp in latest.list_checkpoints() if cp.name == "publish")
    print("New topic output:", final.artifacts[0].load())

    # The flow object's replay, and Execution.replay, take the same spelling.
    handle = content_pipeline.replay(
        exec_id=source_handle.exec_id,
        from_="write_draft",
        topic="ignored above the boundary",
        overrides={"checkpoint.research": "flow-object notes"},
    )
    assert handle.wait() == "PUBLISHED: Draft from flow-object notes"
    source = client.executions.get(source_handle.exec_id)
    third = source.replay(from_="publish", overrides={"checkpoint.write_draft": "A hand-written draft"})
    assert third.refresh().status == ExecutionStatus.COMPLETED
    assert client.executions.get(third.exec_id).checkpoints[-1].artifacts[0].load() == (
        "PUBLISHED: A hand-written draft"
    )

    # Override keys that are not `checkpoint.` selectors are refused, not ignored.
    try:
        client.executions.replay(
            source_handle.exec_id, from_="write_draft", overrides={"research_notes": "x"}
        )
    except kitaru.KitaruError as exc:
        print("refused:", exc)
    else:
        raise AssertionError("an unknown override key was accepted")


if __name__ == "__main__":
    main()
