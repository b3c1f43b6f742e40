# The 0.18 guide "View Execution Runtime Logs": the SDK (logs(exec_id, checkpoint=, limit=) inside
# a KitaruLogRetrievalError guard), handle.wait(log_sink=...) and wait(stream_logs=False), and the
# CLI options -v, -vv, --grouped, --source runner, --checkpoint, --output json.
# expect: sink: None flow starts
# expect: sink: research researching renewable energy
# expect: == research ==
import json
import shutil
import subprocess
import sys

import kitaru
from kitaru import KitaruClient, checkpoint, flow


@checkpoint
def research(topic: str) -> str:
    print(f"researching {topic}")
    return f"notes on {topic}"


@flow
def my_flow(topic: str) -> str:
    print("flow starts")
    return research(topic)


def kitaru_cli(*args: str) -> str:
    exe = shutil.which("kitaru")
    cmd = [exe, *args] if exe else [sys.executable, "-m", "kitaru.cli", *args]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def collect(entry):
    print("sink:", entry.checkpoint_name, entry.message.strip())


if __name__ == "__main__":
    handle = my_flow.run(topic="renewable energy")
    result = handle.wait(log_sink=collect)
    assert result == handle.wait(stream_logs=False) == "notes on renewable energy"
    exec_id = handle.exec_id

    try:
        entries = kitaru.KitaruClient().executions.logs(exec_id)
    except kitaru.KitaruLogRetrievalError as exc:
        raise AssertionError(f"Log retrieval not available: {exc}") from exc
    assert len(entries) == 2

    client = KitaruClient()
    entries = client.executions.logs(exec_id, checkpoint="research", limit=100)
    for entry in entries:
        print(entry.timestamp, entry.level, entry.checkpoint_name, entry.message)
    assert [e.message.strip() for e in entries] == ["researching renewable energy"]

    assert "researching renewable energy" in kitaru_cli("executions", "logs", exec_id)
    assert "INFO" in kitaru_cli("executions", "logs", exec_id, "-v")
    assert "[research]" in kitaru_cli("executions", "logs", exec_id, "-vv")
    print(kitaru_cli("executions", "logs", exec_id, "--grouped"))
    runner = kitaru_cli("executions", "logs", exec_id, "--source", "runner")
    assert "flow starts" in runner and "researching" not in runner
    assert "flow starts" not in kitaru_cli("executions", "logs", exec_id, "--checkpoint", "research")
    lines = kitaru_cli("executions", "logs", exec_id, "--output", "json").splitlines()
    assert [json.loads(line)["text"].strip() for line in lines] == [
        "flow starts",
        "researching renewable energy",
    ]
