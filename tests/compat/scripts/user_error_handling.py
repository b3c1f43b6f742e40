# The 0.18 error-handling guide: run(...).get() with the typed exceptions (KitaruUserCodeError
# with exec_id/status/failure_origin), KitaruWaitValidationError from input() with the execution
# still waiting, failure journaling (execution.failure, checkpoint attempts), and the replay
# failure check with kitaru.FailureOrigin.
# expect: user code failed: failed user_code
# expect: attempt fetch#1 failed ValueError source offline
# expect: validation refused 'yes'; still waiting
import kitaru
from kitaru import checkpoint, flow


@checkpoint(retries=1, retry_delay=0)
def fetch(source: str) -> str:
    raise ValueError("source offline")


@flow
def my_flow(source: str) -> str:
    return fetch(source)


@flow
def deploy_flow() -> str:
    if kitaru.wait(name="approve_deploy", question="Deploy?", schema=bool):
        return "deployed"
    return "skipped"


try:
    result = my_flow.run("s3://data").get()
except kitaru.KitaruUserCodeError as exc:
    # user checkpoint/flow code raised
    print("user code failed:", exc.status, exc.failure_origin)
    exec_id = exc.exec_id
except kitaru.KitaruDivergenceError:
    raise AssertionError("no divergence here") from None
except kitaru.KitaruExecutionError:
    raise AssertionError("a user-code failure is a KitaruUserCodeError") from None

client = kitaru.KitaruClient()
execution = client.executions.get(exec_id)
if execution.failure:
    print(execution.failure.origin, execution.failure.message)
assert execution.failure.origin == kitaru.FailureOrigin.USER_CODE
for checkpoint_call in execution.checkpoints:
    for attempt in checkpoint_call.attempts:
        print(attempt.attempt_id, attempt.status)
        if attempt.failure:
            print(
                "attempt",
                attempt.attempt_id,
                attempt.status,
                attempt.failure.exception_type,
                attempt.failure.message.split(": ")[-1],
            )
assert len(list(execution.checkpoints[0].attempts)) == 2

waiting = deploy_flow.run().exec_id
try:
    client.executions.input(waiting, wait="approve_deploy", value="yes")
except kitaru.KitaruWaitValidationError as exc:
    print(exc)
    assert client.executions.get(waiting).status == "waiting"
    print("validation refused 'yes'; still waiting")
assert client.executions.input(waiting, wait="approve_deploy", value=True).wait() == "deployed"

replayed = client.executions.replay(exec_id, from_="fetch")
latest = replayed.refresh()
if latest.failure and latest.failure.origin == kitaru.FailureOrigin.DIVERGENCE:
    print("Replay divergence:", latest.failure.message)
assert latest.failure is not None and latest.failure.origin == kitaru.FailureOrigin.USER_CODE
