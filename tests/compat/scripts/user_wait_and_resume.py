# The 0.18 example execution_management/wait_and_resume, run non-interactively as its docstring
# says: the flow prints the commands, and from "another terminal" (a second process here) the user
# runs `kitaru executions input <id> --value true` (and `kitaru executions resume <id>` when the
# execution did not continue by itself), then the same with the structured release details; the
# script's own .wait() returns the result. Its waits pass timeout= (3600, 60): the runner holds
# for an answer that long, so the answers are taken while it holds.
# expect: To approve remotely, run in another terminal:
# expect: Result: PUBLISHED v2: Draft about v1.0.
import json
import shutil
import subprocess
import sys
import threading
import time

from pydantic import BaseModel

import kitaru
from kitaru import KitaruClient, checkpoint, flow
from kitaru.runtime import _get_current_execution_id


class ReleaseDetails(BaseModel):
    notes: str
    major_version: int


@checkpoint
def draft_release_note(topic: str) -> str:
    return f"Draft about {topic}."


@checkpoint
def publish_release_note(draft: str, details: ReleaseDetails) -> str:
    return f"PUBLISHED v{details.major_version}: {draft}\nNotes: {details.notes}"


@flow
def wait_for_approval_flow(topic: str) -> str:
    draft = draft_release_note(topic)
    exec_id = _get_current_execution_id()
    print("\nTo approve remotely, run in another terminal:")
    print(f"  kitaru executions input {exec_id} --value true")
    print(f"  kitaru executions resume {exec_id}")
    approved = kitaru.wait(
        name="approve_release",
        schema=bool,
        question=f"Approve publishing release notes for {topic}?",
        timeout=3600,
        metadata={"topic": topic},
    )
    if approved is False:
        return f"REJECTED: {topic}"
    details = kitaru.wait(
        name="release_details",
        schema=ReleaseDetails,
        question="Provide the release notes and major version number:",
        timeout=60,
        metadata={"topic": topic},
    )
    return publish_release_note(draft, details)


def kitaru_cli(*args: str) -> None:
    exe = shutil.which("kitaru") or sys.executable
    cmd = [exe, *args] if exe.endswith("kitaru") else [exe, "-m", "kitaru.cli", *args]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


def other_terminal() -> None:
    client = KitaruClient()
    for wait_name, value in (
        ("approve_release", "true"),
        ("release_details", json.dumps({"notes": "Bug fixes", "major_version": 2})),
    ):
        # The runner keeps polling for an answer for the wait's timeout (3600 s, then 60 s), so
        # the wait is found on the execution while it runs, as 0.18's own test of this example did.
        deadline = time.monotonic() + 120
        while True:
            assert time.monotonic() < deadline, f"no execution waited on {wait_name}"
            listed = client.executions.list(flow="wait_for_approval_flow")
            found = [client.executions.get(e.exec_id) for e in listed]
            pending = found[0].pending_wait if found else None
            if pending is not None and pending.name == wait_name:
                break
            time.sleep(0.2)
        exec_id = found[0].exec_id
        assert pending.schema["type"] == ("boolean" if wait_name == "approve_release" else "object")
        assert pending.metadata == {"topic": "v1.0"}
        kitaru_cli("executions", "input", exec_id, "--value", value)
        # The guide: resume only when the execution did not continue automatically.
        if client.executions.get(exec_id).status == "waiting":
            kitaru_cli("executions", "resume", exec_id)


if __name__ == "__main__":
    helper = threading.Thread(target=other_terminal, daemon=True)
    helper.start()
    result = wait_for_approval_flow.run("v1.0").wait(timeout=150)
    helper.join(timeout=30)
    assert result == "PUBLISHED v2: Draft about v1.0.\nNotes: Bug fixes", result
    print(f"\nResult: {result}")
