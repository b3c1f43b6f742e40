# The 0.18 replay guide: SDK replay (print the new and original ids), flow-object replay with
# handle.wait(), the CLI form with --args/--overrides, and the failure metadata check.
# expect: flow-object replay: PUBLISHED: Draft from Edited notes (New topic)
# expect: cli replay: PUBLISHED: Draft from CLI notes (CLI topic)
import json
import shutil
import subprocess
import sys

import kitaru
from kitaru import checkpoint, flow

RUNS = {"research": 0}


@checkpoint
def research(topic: str) -> str:
    RUNS["research"] += 1
    return f"notes on {topic}"


@checkpoint
def write_draft(notes: str, topic: str) -> str:
    return f"Draft from {notes} ({topic})"


@checkpoint
def publish(draft: str) -> str:
    return f"PUBLISHED: {draft}"


@flow
def content_pipeline(topic: str) -> str:
    return publish(write_draft(research(topic), topic))


def kitaru_cli(*args: str) -> str:
    exe = shutil.which("kitaru")
    cmd = [exe, *args] if exe else [sys.executable, "-m", "kitaru.cli", *args]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


if __name__ == "__main__":
    source = content_pipeline.run("agents")
    source.wait()
    client = kitaru.KitaruClient()

    replayed = client.executions.replay(
        source.exec_id,
        from_="write_draft",
        topic="New topic",
        overrides={"checkpoint.research": "Edited notes"},
    )
    print(replayed.exec_id)
    print(replayed.original_exec_id)  # points to source execution
    assert replayed.original_exec_id == source.exec_id

    handle = content_pipeline.replay(
        exec_id=source.exec_id,
        from_="write_draft",
        topic="New topic",
        overrides={"checkpoint.research": "Edited notes"},
    )
    result = handle.wait()
    print("flow-object replay:", result)
    assert RUNS["research"] == 1  # reused, never run again

    kitaru_cli(
        "executions",
        "replay",
        source.exec_id,
        "--from",
        "write_draft",
        "--args",
        json.dumps({"topic": "CLI topic"}),
        "--overrides",
        json.dumps({"checkpoint.research": "CLI notes"}),
    )
    latest = client.executions.latest(flow="content_pipeline")
    if latest.failure:
        print(latest.failure.origin, latest.failure.message)
    assert latest.original_exec_id == source.exec_id and latest.status == "completed"
    print("cli replay:", client.artifacts.list(latest.exec_id, name="publish")[0].load())
