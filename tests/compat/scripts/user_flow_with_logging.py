# The 0.18 example flow_with_logging (and the logging concept page): kitaru.log() at flow scope
# attaches metadata to the execution, inside a checkpoint to that checkpoint; repeated dict keys
# merge. Read back with KitaruClient.
# expect: DRAFT ABOUT KITARU. [reviewed]
# expect: execution metadata: stage=completed topic=kitaru output_kind=text
import kitaru
from kitaru import KitaruClient, checkpoint, flow


@checkpoint
def write_draft(topic: str) -> str:
    draft = f"Draft about {topic}."
    kitaru.log(draft_cost={"usd": 0.001})
    kitaru.log(draft_cost={"tokens": 42}, model="demo-model", latency_ms=120)
    return draft


@checkpoint
def polish_draft(draft: str) -> str:
    refined = f"{draft.upper()} [reviewed]"
    kitaru.log(quality_score=0.93)
    return refined


@flow
def writing_agent(topic: str) -> str:
    kitaru.log(topic=topic, stage="started")
    draft = write_draft(topic)
    result = polish_draft(draft)
    kitaru.log(stage="completed", output_kind="text")
    return result


if __name__ == "__main__":
    handle = writing_agent.run("kitaru")
    result = handle.wait()
    print(result)
    execution = KitaruClient().executions.get(handle.exec_id)
    meta = execution.metadata
    assert meta["topic"] == "kitaru" and meta["stage"] == "completed", meta
    calls = {c.name: c for c in execution.checkpoints}
    assert calls["write_draft"].metadata["draft_cost"] == {"usd": 0.001, "tokens": 42}
    assert calls["write_draft"].metadata["model"] == "demo-model"
    assert calls["write_draft"].metadata["latency_ms"] == 120
    assert calls["polish_draft"].metadata["quality_score"] == 0.93
    print(
        f"execution metadata: stage={meta['stage']} topic={meta['topic']} output_kind={meta['output_kind']}"
    )
