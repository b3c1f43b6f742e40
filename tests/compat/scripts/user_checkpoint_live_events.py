# The 0.18 "Checkpoint Live Events" guide and its watch_checkpoint_events example: progress and
# custom events inside checkpoints, framed by the automatic kitaru.checkpoint.started / returned /
# failed events (one correlation id and index sequence per checkpoint execution), watched with
# KitaruClient().executions.events(...) using the kinds constants; a failed event carries the
# exception type with a generic message.
# expect: build_report       started
# expect: build_report        25.0%  Collecting notes
# expect: build_report       completed
# expect: train_model        failed: The checkpoint function raised an exception.
from datetime import datetime
from typing import Any

import kitaru
from kitaru import ExecutionEvent, KitaruClient, checkpoint, flow
from kitaru.events import (
    CHECKPOINT_COMPLETED_KIND,
    CHECKPOINT_FAILED_KIND,
    CHECKPOINT_PROGRESS_KIND,
    CHECKPOINT_STARTED_KIND,
)

ATTEMPTS = {"train_model": 0}


@checkpoint
def build_report(topic: str) -> str:
    kitaru.progress("Collecting notes", percent=0.25, topic=topic)
    notes = f"Notes about {topic}"
    kitaru.progress("Writing draft", percent=0.75)
    return f"Report: {notes}"


@checkpoint(retries=1, retry_delay=0)
def train_model(rows: int) -> str:
    ATTEMPTS["train_model"] += 1
    if ATTEMPTS["train_model"] == 1:
        raise RuntimeError("api_key=sk-not-for-the-feed")
    kitaru.events.publish(
        "training.batch.completed", {"batch": 1, "rows": rows}, message="First batch finished"
    )
    return "model-ready"


@flow
def report_flow(topic: str) -> str:
    return build_report(topic) + " / " + train_model(100)


def format_event(event: ExecutionEvent) -> str:
    payload = event.payload
    checkpoint_name = event.checkpoint_name or "checkpoint"
    stamp = event.timestamp.strftime("%H:%M:%S") if isinstance(event.timestamp, datetime) else "--"
    if event.kind == CHECKPOINT_STARTED_KIND:
        return f"{stamp}  {checkpoint_name:<18} started"
    if event.kind == CHECKPOINT_COMPLETED_KIND:
        return f"{stamp}  {checkpoint_name:<18} completed"
    if event.kind == CHECKPOINT_FAILED_KIND:
        return f"{stamp}  {checkpoint_name:<18} failed: {payload.get('message') or 'failed'}"
    data: dict[str, Any] = payload.get("data") if isinstance(payload.get("data"), dict) else {}
    percent = f" {data['percent'] * 100:>5.1f}%" if isinstance(data.get("percent"), float) else ""
    return f"{stamp}  {checkpoint_name:<18}{percent}  {payload.get('message') or event.kind}"


if __name__ == "__main__":
    handle = report_flow.run("durable agents")
    assert handle.wait() == "Report: Notes about durable agents / model-ready"
    client = KitaruClient()
    kinds = [
        CHECKPOINT_STARTED_KIND,
        CHECKPOINT_PROGRESS_KIND,
        CHECKPOINT_COMPLETED_KIND,
        CHECKPOINT_FAILED_KIND,
        "training.batch.completed",
    ]
    events = list(client.executions.events(handle.exec_id, kinds=kinds))
    for event in events:
        print(format_event(event))

    report = [e for e in events if e.checkpoint_name == "build_report"]
    assert [e.kind for e in report] == [
        "kitaru.checkpoint.started",
        "kitaru.checkpoint.progress",
        "kitaru.checkpoint.progress",
        "kitaru.checkpoint.returned",
    ]
    assert [e.index for e in report] == [0, 1, 2, 3] and len({e.correlation_id for e in report}) == 1
    assert all(e.payload["kitaru"]["checkpoint_name"] == "build_report" for e in report)
    failed = next(e for e in events if e.kind == "kitaru.checkpoint.failed")
    assert failed.payload["error_type"] == "RuntimeError" and "sk-not" not in str(failed.payload)

    only = list(
        client.executions.events(
            handle.exec_id,
            kinds=["kitaru.checkpoint.started", "kitaru.checkpoint.returned"],
            checkpoint="train_model",
        )
    )
    assert [e.kind.rsplit(".", 1)[1] for e in only] == ["started", "started", "returned"]
    progress = list(
        client.executions.events(
            handle.exec_id, kinds=["kitaru.checkpoint.progress"], checkpoint="build_report"
        )
    )
    for event in progress:
        print(event.kind, event.checkpoint_name, event.payload.get("message"))
    later = list(client.executions.events(handle.exec_id, since=progress[0].cursor, reconnect=True))
    assert later[0].payload.get("message") == "Writing draft"
