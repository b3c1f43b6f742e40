"""A research → draft → approval → publish agent, made durable with kitaru.

Run it:      python examples/quickstart.py "durable agents"
It pauses at the approval step and the process exits (no compute held while a human thinks).
Answer it from any shell, and it resumes there, replaying the steps it already did:

    kitaru executions input <exec_id> --value true

The "model" here is a deterministic stand-in so the example runs offline; swap `fake_llm` for a
real client call and nothing else changes.
"""

from __future__ import annotations

import hashlib
import sys

import kitaru
from kitaru import checkpoint, flow


def fake_llm(prompt: str) -> str:
    """Stands in for a paid model call: same prompt, same answer."""
    digest = hashlib.sha256(prompt.encode()).hexdigest()[:8]
    return f"[model {digest}] {prompt.splitlines()[0][:60]}"


@checkpoint
def research(topic: str) -> list[str]:
    return [fake_llm(f"Find one fact about {topic}, angle {i}") for i in range(3)]


@checkpoint(retries=2, retry_delay=0.1)
def draft(topic: str, notes: list[str]) -> str:
    body = "\n".join(f"- {n}" for n in notes)
    return f"# {topic.title()}\n\n{fake_llm('Write an intro about ' + topic)}\n\n{body}\n"


@checkpoint
def publish(text: str) -> str:
    kitaru.log(words=len(text.split()))
    return f"published {len(text)} characters"


@flow
def review_flow(topic: str) -> str:
    notes = research(topic)
    text = draft(topic, notes)
    kitaru.save("draft_preview", text[:80], type="preview")
    approved = kitaru.wait(name="approve_draft", question=f"Publish this draft?\n\n{text}", schema=bool)
    if not approved:
        return "rejected"
    return publish(text)


if __name__ == "__main__":
    from _cli import kitaru_cli  # examples/_cli.py: the command as typed from any directory

    topic = sys.argv[1] if len(sys.argv) > 1 else "durable agents"
    handle = review_flow.run(topic)
    if handle.status == "waiting":
        print(f"execution {handle.exec_id} is waiting for approval.")
        print(f"approve it with:  {kitaru_cli()} executions input {handle.exec_id} --value true")
    else:
        print(handle.wait())
