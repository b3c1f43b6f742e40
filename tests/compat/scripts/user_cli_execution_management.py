# The CLI block of the 0.18 execution-management guide, command by command (the ids are the
# placeholders the guide marks), plus `kitaru status --output json` and `kitaru stack list -o json`.
# expect: get --output json: waiting approve_deploy
# expect: list --status waiting --flow content_pipeline --limit 20: 1 execution
# expect: input --abort exit 9; retry: completed; cancel: cancelled
import json
import shutil
import subprocess
import sys
from pathlib import Path

import kitaru
from kitaru import checkpoint, flow

READY = Path("cms-ready")


@checkpoint
def research(topic: str) -> str:
    return f"notes on {topic}"


@checkpoint
def write_draft(notes: str) -> str:
    print(f"drafting from {notes}")
    return f"Draft from {notes}"


@checkpoint
def publish(draft: str) -> str:
    if not READY.exists():
        raise RuntimeError("the CMS is down")
    return f"PUBLISHED: {draft}"


@flow
def content_pipeline(topic: str) -> str:
    draft = write_draft(research(topic))
    if kitaru.wait(name="approve_deploy", question=f"Deploy {topic}?", schema=bool):
        return publish(draft)
    return "skipped"


def kitaru_cli(*args: str, code: int = 0) -> str:
    exe = shutil.which("kitaru")
    cmd = [exe, *args] if exe else [sys.executable, "-m", "kitaru.cli", *args]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == code, (args, done.returncode, done.stdout + done.stderr)
    return done.stdout


if __name__ == "__main__":
    kr = content_pipeline.run("v1").exec_id

    got = json.loads(kitaru_cli("executions", "get", kr, "--output", "json"))
    print("get --output json:", got["status"], got["waits"][0]["name"])
    kitaru_cli("executions", "get", kr)
    kitaru_cli("executions", "list")
    listed = json.loads(
        kitaru_cli(
            "executions",
            "list",
            "--status",
            "waiting",
            "--flow",
            "content_pipeline",
            "--limit",
            "20",
            "--output",
            "json",
        )
    )
    print(f"list --status waiting --flow content_pipeline --limit 20: {len(listed)} execution")
    assert "drafting from notes on v1" in kitaru_cli("executions", "logs", kr, "--checkpoint", "write_draft")
    kitaru_cli("executions", "logs", kr, "--output", "json")

    assert json.loads(kitaru_cli("status", "--output", "json"))["stack"] == "local"
    assert "local" in kitaru_cli("stack", "list", "--output", "json")

    # Answer, then resume (a no-op here: input already resumed it); it fails in publish.
    kitaru_cli("executions", "input", kr, "--value", "true", code=1)
    READY.write_text("yes")
    kitaru_cli("executions", "retry", kr)
    retried = kitaru.KitaruClient().executions.get(kr).status

    kitaru_cli(
        "executions",
        "replay",
        kr,
        "--from",
        "write_draft",
        "--args",
        '{"topic":"New topic"}',
        "--overrides",
        '{"checkpoint.research":"Edited notes"}',
    )
    replay = kitaru.KitaruClient().executions.latest(flow="content_pipeline")
    assert replay.original_exec_id == kr and replay.status == "waiting"
    kitaru_cli("executions", "input", replay.exec_id, "--value", "true")
    kitaru_cli("executions", "resume", replay.exec_id)
    assert kitaru.KitaruClient().executions.get(replay.exec_id).checkpoints[-1].artifacts[0].load() == (
        "PUBLISHED: Draft from Edited notes"
    )

    aborted = content_pipeline.run("v2").exec_id
    kitaru_cli("executions", "input", aborted, "--abort", code=9)

    cancelled = content_pipeline.run("v3").exec_id
    kitaru_cli("executions", "cancel", cancelled)
    status = kitaru.KitaruClient().executions.get(cancelled).status
    print(f"input --abort exit 9; retry: {retried}; cancel: {status}")
