# The 0.18 documented pair: `kitaru executions input <id> --value true`, then
# `kitaru executions resume <id>`; both succeed and the flow completes.
# expect: input exit 0, resume exit 0, result: PUBLISHED: Draft about v1.0.
import shutil
import subprocess
import sys

import kitaru
from kitaru import KitaruClient, checkpoint, flow


@checkpoint
def draft_release_note(topic: str) -> str:
    return f"Draft about {topic}."


@checkpoint
def publish_release_note(draft: str) -> str:
    return f"PUBLISHED: {draft}"


@flow
def wait_for_approval_flow(topic: str) -> str:
    draft = draft_release_note(topic)
    approved = kitaru.wait(name="approve_release", schema=bool, question=f"Approve {topic}?")
    if approved is False:
        return f"REJECTED: {topic}"
    return publish_release_note(draft)


def kitaru_cli(*args):
    exe = shutil.which("kitaru")
    command = [exe] if exe else [sys.executable, "-m", "kitaru.cli"]
    return subprocess.run([*command, *args], capture_output=True, text=True, timeout=120)


if __name__ == "__main__":
    handle = wait_for_approval_flow.run("v1.0")
    exec_id = handle.exec_id
    given = kitaru_cli("executions", "input", exec_id, "--value", "true")
    assert given.returncode == 0, given.stdout + given.stderr
    resumed = kitaru_cli("executions", "resume", exec_id)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    result = KitaruClient().executions.get(exec_id)
    assert result.status == "completed", result.status
    print(
        f"input exit {given.returncode}, resume exit {resumed.returncode}, result:",
        handle.wait(),
    )
