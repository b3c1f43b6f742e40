# Failure journaling from KitaruClient as the 0.18 error-handling guide shows: execution.failure
# (origin, message), each checkpoint's failure and its attempts, then retry of the execution.
# expect: user_code ValueError: the source is not ready
# expect: retried: completed
from pathlib import Path

import kitaru
from kitaru import checkpoint, flow
from kitaru.client import ExecutionStatus

READY = Path("source-ready")


@checkpoint(retries=1)
def fetch(source: str) -> str:
    if not READY.exists():
        raise ValueError("the source is not ready")
    return f"data from {source}"


@flow
def ingest(source: str) -> str:
    return fetch(source)


def main() -> None:
    try:
        ingest.run("s3://bucket").wait()
    except kitaru.KitaruExecutionError as exc:
        print("failed:", exc.exec_id)
    else:
        raise AssertionError("the flow did not fail")

    client = kitaru.KitaruClient()
    execution = client.executions.latest(flow="ingest", status="failed")
    assert execution.status == ExecutionStatus.FAILED and execution.status.is_finished
    assert not execution.status.is_successful
    if execution.failure:
        print(execution.failure.origin, execution.failure.message)
    assert execution.failure.origin == kitaru.FailureOrigin.USER_CODE
    assert execution.failure.exception_type == "ValueError"
    assert "the source is not ready" in execution.failure.traceback

    for cp in execution.checkpoints:
        assert cp.name == "fetch" and cp.failure.exception_type == "ValueError"
        for attempt in cp.attempts:
            print(attempt.attempt_id, attempt.status)
            if attempt.failure:
                print("  ", attempt.failure.exception_type, attempt.failure.message)
        assert [a.status for a in cp.attempts] == [ExecutionStatus.FAILED, ExecutionStatus.FAILED]

    READY.write_text("yes")
    retried = client.executions.retry(execution.exec_id)
    print("retried:", retried.status.value)
    fresh = retried.refresh()
    assert fresh.failure is None and fresh.status == ExecutionStatus.COMPLETED
    [call] = fresh.checkpoints
    assert call.artifacts[0].load() == "data from s3://bucket"
    assert [a.status for a in call.attempts][-1] == ExecutionStatus.COMPLETED


if __name__ == "__main__":
    main()
