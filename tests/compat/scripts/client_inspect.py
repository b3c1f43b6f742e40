# Inspect an execution with KitaruClient as the 0.18 execution-management guide shows:
# the execution's fields, latest(), list() filters, artifacts with kind/save_type, loading.
# expect: Status: completed
# expect: Loaded context topic: kitaru
import kitaru
from kitaru import checkpoint, flow
from kitaru.client import ExecutionStatus


@checkpoint
def write_summary(topic: str) -> str:
    summary = f"Summary for {topic}."
    kitaru.save(
        "summary_context",
        {"topic": topic, "summary": summary},
        type="context",
    )
    return summary


@flow
def summarize_topic(topic: str) -> str:
    return write_summary(topic)


def main() -> None:
    handle = summarize_topic.run("kitaru")
    result = handle.wait()

    client = kitaru.KitaruClient()
    execution = client.executions.get(handle.exec_id)
    print(execution.exec_id)
    print(execution.flow_name)
    print(execution.status)  # running/waiting/completed/failed/cancelled
    if execution.pending_wait:
        print(execution.pending_wait.name, execution.pending_wait.question)
    if execution.failure:
        print(execution.failure.origin, execution.failure.message)
    assert execution.flow_name == "summarize_topic"
    assert execution.status == ExecutionStatus.COMPLETED == "completed"
    assert execution.status.is_finished and execution.pending_wait is None and execution.failure is None
    assert execution.started_at <= execution.ended_at
    assert execution.original_exec_id is None

    latest = client.executions.latest(flow="summarize_topic")
    if latest.exec_id != execution.exec_id:
        raise RuntimeError("Expected latest execution to match the just-started run.")
    recent = client.executions.list(limit=20)
    completed_for_flow = client.executions.list(flow="summarize_topic", status="completed", limit=10)
    assert [e.exec_id for e in recent] == [e.exec_id for e in completed_for_flow] == [execution.exec_id]
    assert client.executions.list(status=ExecutionStatus.FAILED) == []
    try:
        client.executions.latest(flow="no_such_flow")
    except LookupError as exc:
        print("no execution:", exc)
    else:
        raise AssertionError("latest() of an unknown flow returned something")

    artifacts = client.artifacts.list(handle.exec_id)
    for artifact in artifacts:
        print(artifact.name, artifact.kind, artifact.save_type)
    context_artifact = next(a for a in artifacts if a.name == "summary_context")
    assert (context_artifact.kind, context_artifact.save_type) == ("context", "manual")
    loaded_context = client.artifacts.get(context_artifact.artifact_id).load()
    assert loaded_context == context_artifact.load() == {"topic": "kitaru", "summary": result}
    assert [a.name for a in client.artifacts.list(handle.exec_id, kind="context")] == ["summary_context"]
    produced = client.artifacts.list(handle.exec_id, producing_call="write_summary")
    assert {a.producing_call for a in produced} == {"write_summary"} and len(produced) == 2
    assert len(client.artifacts.list(handle.exec_id, name="summary_context", limit=1)) == 1

    checkpoints = execution.list_checkpoints()
    assert [cp.name for cp in checkpoints] == ["write_summary"]
    summary_call = checkpoints[0]
    assert summary_call.status == ExecutionStatus.COMPLETED and summary_call.failure is None
    for attempt in summary_call.attempts:
        print(attempt.attempt_id, attempt.status)
        assert attempt.status == ExecutionStatus.COMPLETED and attempt.failure is None
    output = next(a for a in summary_call.artifacts if a.save_type == "step_output")
    assert output.load() == result
    assert {a.artifact_id for a in execution.list_artifacts()} == {a.artifact_id for a in produced}

    fresh = execution.refresh()
    assert fresh.exec_id == execution.exec_id and fresh.status.value == "completed"

    print(f"Execution ID: {execution.exec_id}")
    print(f"Status: {execution.status.value}")
    print(f"Result: {result}")
    print(f"Artifacts: {[a.name for a in artifacts]}")
    print(f"Loaded context topic: {loaded_context['topic']}")


if __name__ == "__main__":
    main()
