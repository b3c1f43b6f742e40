# The 0.18 artifacts guide and its basic_flow example: kitaru.save() inside a checkpoint, then
# kitaru.load(prev_exec_id, name) from a later execution's checkpoint, by checkpoint name and by
# saved-artifact name; browsing the artifacts as ArtifactRefs from the client.
# expect: Follow-up: Research notes about kitaru. [topic=kitaru]
# expect: artifacts: research_context (context), research (None)
import kitaru
from kitaru import KitaruClient, checkpoint, flow


@checkpoint
def research(topic: str) -> str:
    notes = f"Research notes about {topic}."
    kitaru.save("research_context", {"topic": topic, "notes": notes}, type="context")
    return notes


@flow
def first_pass(topic: str) -> str:
    return research(topic)


@checkpoint
def follow_up(prev_exec_id: str) -> str:
    # Load checkpoint output by checkpoint name.
    previous_notes = kitaru.load(prev_exec_id, "research")
    # Load explicit named artifact.
    context = kitaru.load(prev_exec_id, "research_context")
    return f"{previous_notes} [topic={context['topic']}]"


@flow
def second_pass(prev_exec_id: str) -> str:
    return follow_up(prev_exec_id)


if __name__ == "__main__":
    first = first_pass.run("kitaru")
    assert first.wait() == "Research notes about kitaru."
    second = second_pass.run(first.exec_id).wait()
    print("Follow-up:", second)

    execution = KitaruClient().executions.get(first.exec_id)
    refs = execution.artifacts
    by_name = {a.name: a for a in refs}
    assert by_name["research_context"].load() == {
        "topic": "kitaru",
        "notes": "Research notes about kitaru.",
    }
    artifact = KitaruClient().artifacts.get(by_name["research"].artifact_id)
    assert artifact.load() == "Research notes about kitaru."
    print(
        "artifacts:",
        ", ".join(f"{a.name} ({a.kind})" for a in sorted(refs, key=lambda a: a.name, reverse=True)),
    )
