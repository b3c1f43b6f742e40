# A 0.18 user's wait with timeout=, as the wait-and-resume guide describes it: "timeout controls how
# long the runner keeps polling -- it is not an expiration on the wait record itself. If the
# timeout elapses without input, the execution moves to waiting status and can still be resolved
# externally at any time." The runner polls for 2 s, the execution pauses, and well after that
# another terminal answers with `kitaru executions input`: the flow completes, nothing expired.
# expect: paused after polling: waiting
# expect: Result: deployed to staging
import shutil
import subprocess
import sys
import time

import kitaru
from kitaru import KitaruClient, checkpoint, flow


@checkpoint
def plan_deploy(env: str) -> str:
    return f"deploy to {env}"


@checkpoint
def apply_deploy(plan: str) -> str:
    return plan.replace("deploy to", "deployed to")


@flow
def deploy_flow(env: str) -> str:
    plan = plan_deploy(env)
    approved = kitaru.wait(
        schema=bool,
        name="approve_deploy",
        question=f"Approve: {plan}?",
        timeout=2,  # the runner waits up to 2 s for inline resolution
    )
    if not approved:
        return "REJECTED"
    return apply_deploy(plan)


def kitaru_cli(*args: str) -> None:
    exe = shutil.which("kitaru") or sys.executable
    cmd = [exe, *args] if exe.endswith("kitaru") else [exe, "-m", "kitaru.cli", *args]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


if __name__ == "__main__":
    started = time.monotonic()
    handle = deploy_flow.run("staging")
    polled = time.monotonic() - started
    print(f"paused after polling: {handle.status}")
    assert handle.status == "waiting", handle.status
    assert polled >= 2, f"the runner gave up after {polled:.2f} s, before its 2 s timeout"

    time.sleep(3)  # the answer comes long after the timeout: the wait must still be open
    client = KitaruClient()
    execution = client.executions.get(handle.exec_id)
    assert execution.pending_wait is not None and execution.pending_wait.name == "approve_deploy"
    kitaru_cli("executions", "input", handle.exec_id, "--value", "true")  # "another terminal"

    execution = client.executions.get(handle.exec_id)
    if execution.status == "waiting":  # the guide: resume only if it did not continue by itself
        client.executions.resume(handle.exec_id)
    result = handle.wait()
    assert client.executions.get(handle.exec_id).status == "completed"
    assert result == "deployed to staging", result
    print(f"Result: {result}")
