# 0.18 live events: kitaru.progress() and kitaru.events.publish() inside a checkpoint, watched
# with KitaruClient().executions.events().
# expect: events: started-notes, progress 0.25, batch 1, progress 0.75
import kitaru
from kitaru import KitaruClient, checkpoint, flow


@checkpoint
def build_report(topic: str) -> str:
    kitaru.progress("Collecting notes", percent=0.25, topic=topic)
    notes = f"Notes about {topic}"
    kitaru.events.publish(
        "training.batch.completed",
        {"batch": 1, "rows": 100},
        message="First batch finished",
    )
    kitaru.progress("Writing draft", percent=0.75)
    return f"Report: {notes}"


@flow
def report_flow(topic: str) -> str:
    return build_report(topic)


if __name__ == "__main__":
    handle = report_flow.run("durable agents")
    assert handle.wait() == "Report: Notes about durable agents"
    client = KitaruClient()
    seen = list(client.executions.events(handle.exec_id))
    assert [e.kind for e in seen] == [
        "kitaru.checkpoint.started",
        "kitaru.checkpoint.progress",
        "training.batch.completed",
        "kitaru.checkpoint.progress",
        "kitaru.checkpoint.returned",
    ], seen
    assert all(e.checkpoint_name == "build_report" for e in seen)
    assert len({e.correlation_id for e in seen}) == 1
    seen = seen[1:-1]
    assert seen[0].payload["message"] == "Collecting notes"
    assert seen[0].payload["data"] == {"topic": "durable agents", "percent": 0.25}
    assert seen[1].payload["data"] == {"batch": 1, "rows": 100}
    progress = list(
        client.executions.events(
            handle.exec_id, kinds=["kitaru.checkpoint.progress"], checkpoint="build_report"
        )
    )
    assert [e.index for e in seen] == [1, 2, 3]
    print(
        "events: started-notes, progress {}, batch {}, progress {}".format(
            progress[0].payload["data"]["percent"],
            seen[1].payload["data"]["batch"],
            progress[1].payload["data"]["percent"],
        )
    )
