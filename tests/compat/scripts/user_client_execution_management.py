# The 0.18 guide "Manage Executions with KitaruClient and CLI", snippet by snippet: inspect,
# list/latest, runtime logs, resolve a wait (input, then resume), abort a wait (returns the
# execution), retry, replay with overrides, cancel, the Execution convenience methods, and
# browsing/loading artifacts.
# expect: approve_deploy Deploy the draft about agents?
# expect: aborted: failed
# expect: replayed: PUBLISHED: Draft from Edited notes
import kitaru
from kitaru import checkpoint, flow

ATTEMPTS = {"publish": 0}


@checkpoint
def research(topic: str) -> str:
    print(f"researching {topic}")
    kitaru.save("research_context", {"topic": topic}, type="context")
    return f"notes about {topic}"


@checkpoint
def write_draft(notes: str) -> str:
    print("writing the draft")
    return f"Draft from {notes}"


@checkpoint
def publish(draft: str) -> str:
    ATTEMPTS["publish"] += 1
    if ATTEMPTS["publish"] == 1:
        raise RuntimeError("the CMS is down")
    return f"PUBLISHED: {draft}"


@flow
def content_pipeline(topic: str) -> str:
    draft = write_draft(research(topic))
    if not kitaru.wait(name="approve_deploy", question=f"Deploy the draft about {topic}?", schema=bool):
        return "not deployed"
    return publish(draft)


client = kitaru.KitaruClient()

# Inspect a single execution (it waits for approval).
exec_id = content_pipeline.run("agents").exec_id
execution = client.executions.get(exec_id)
print(execution.exec_id)
print(execution.flow_name)
print(execution.status)  # running/waiting/completed/failed/cancelled
if execution.pending_wait:
    print(execution.pending_wait.name, execution.pending_wait.question)
assert execution.status == "waiting" and execution.failure is None

# List and query executions.
recent = client.executions.list(limit=20)
completed_for_flow = client.executions.list(flow="content_pipeline", status="completed", limit=10)
latest = client.executions.latest(flow="content_pipeline")
assert [e.exec_id for e in recent] == [exec_id] and completed_for_flow == []
assert latest.exec_id == exec_id

# Fetch runtime logs.
entries = client.executions.logs(exec_id, checkpoint="write_draft", limit=100)
for entry in entries:
    print(entry.timestamp, entry.level, entry.checkpoint_name, entry.message)
assert [e.message.strip() for e in entries] == ["writing the draft"]

# Inspect the pending waits, then resolve the wait from Python; resume when it did not go on.
waits = client.executions.pending_waits(exec_id)
for w in waits:
    print(w.name, w.question, w.schema)
assert waits[0].schema == {"type": "boolean"}
execution = client.executions.input(exec_id, wait="approve_deploy", value=True)
if execution.status == "waiting":
    execution = client.executions.resume(exec_id)
assert execution.status == "failed" and "CMS is down" in execution.failure.message

# Retry (failed executions only), with the convenience method this time.
retried = client.executions.get(exec_id).retry()
assert retried.status == "completed", retried.status
assert retried.refresh().status == "completed"

# Replay into a new execution from a checkpoint boundary.
replayed = client.executions.replay(
    exec_id,
    from_="write_draft",
    overrides={"checkpoint.research": "Edited notes"},
    topic="New topic",
)
assert replayed.original_exec_id == exec_id
# A replayed execution that reaches a wait asks again (the replay guide).
assert replayed.status == "waiting"
print("replayed:", client.executions.input(replayed.exec_id, wait="approve_deploy", value=True).wait())

# Abort a pending wait instead of continuing it.
other = content_pipeline.run("aborted").exec_id
execution = client.executions.abort_wait(other, wait="approve_deploy")
print("aborted:", execution.status)
assert execution.status == "failed"

# Cancel (a waiting execution here).
third = content_pipeline.run("cancelled").exec_id
cancelled = client.executions.cancel(third)
assert cancelled.status == "cancelled"

# Execution convenience methods.
execution = client.executions.get(exec_id)
fresh = execution.refresh()
checkpoints = execution.list_checkpoints()
artifacts = execution.list_artifacts()
assert fresh.status == "completed"
assert [c.name for c in checkpoints] == ["research", "write_draft", "publish"]
again = execution.replay(from_="write_draft", overrides={"checkpoint.research": "Other notes"})
again = client.executions.input(again.exec_id, wait="approve_deploy", value=True)
assert again.wait() == "PUBLISHED: Draft from Other notes"

# Browse and load artifacts.
artifacts = client.artifacts.list(exec_id)
for artifact in artifacts:
    print(artifact.name, artifact.kind, artifact.save_type)
context_artifact = client.artifacts.get(client.artifacts.list(exec_id, kind="context")[0].artifact_id)
assert context_artifact.load() == {"topic": "agents"}
assert sorted(a.name for a in client.artifacts.list(exec_id, producing_call="research")) == [
    "research",
    "research_context",
]
assert len(client.artifacts.list(exec_id, name="research_context", limit=1)) == 1
