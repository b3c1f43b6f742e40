"""A CrewAI crew inside a kitaru @checkpoint: the kickoff's result is stored, and reused on resume.

CrewAI needs no adapter: a crew is ordinary Python, so the checkpoint around `crew.kickoff()` is the
durable unit. The crew runs once; if the flow waits for a human (as here), crashes later, or is
replayed from a later step, the stored kickoff result is returned and the crew is not paid for again.

Run it:      python examples/crewai_crew.py
It needs the `crewai` package (`pip install crewai`; it is not one of kitaru's dependencies, because
it pins its own versions of shared libraries). Without it, the example says so and exits. The crew's
LLM is an offline stand-in (a CrewAI custom LLM class), so no key or network is needed; pass
`llm="openai/gpt-4o-mini"` to the agents instead to use a real model.

After it prints the execution id, approve the post from any shell; the crew is not run again:

    kitaru executions input <exec_id> --value true
"""

from __future__ import annotations

import os
import sys
from typing import Any

import kitaru
from kitaru import checkpoint, flow

# Offline: no telemetry export from CrewAI or OpenTelemetry.
os.environ.setdefault("CREWAI_DISABLE_TELEMETRY", "true")
os.environ.setdefault("OTEL_SDK_DISABLED", "true")

try:
    from crewai import Agent, Crew, Process, Task
    from crewai.llms.base_llm import BaseLLM
except ImportError:  # pragma: no cover - depends on the environment
    Agent = Crew = Process = Task = BaseLLM = None  # type: ignore[assignment,misc]

KICKOFFS = os.environ.get("CREW_COUNT_FILE")  # lets the tests count real kickoffs


if BaseLLM is not None:

    class StandInLLM(BaseLLM):
        """A deterministic CrewAI LLM: answers every task in CrewAI's final-answer format."""

        def call(self, messages: Any, *args: Any, **kwargs: Any) -> str:
            text = messages if isinstance(messages, str) else str(messages[-1].get("content", ""))
            task = text.split("Current Task:")[-1].strip().splitlines()[0][:80]
            return f"Thought: I now know the final answer\nFinal Answer: (stand-in) done: {task}"


def build_crew() -> Any:
    llm = StandInLLM(model="stand-in")
    researcher = Agent(
        role="Researcher",
        goal="Produce a brief on {topic}",
        backstory="Senior research analyst.",
        llm=llm,
        verbose=False,
    )
    writer = Agent(
        role="Writer",
        goal="Write a draft from the brief",
        backstory="Editor with a sharp ear.",
        llm=llm,
        verbose=False,
    )
    research = Task(
        description="Research: {topic}. Return a brief.",
        expected_output="A short research brief.",
        agent=researcher,
    )
    draft = Task(
        description="Write a short draft about {topic} from the brief.",
        expected_output="A short blog draft.",
        agent=writer,
    )
    return Crew(
        agents=[researcher, writer], tasks=[research, draft], process=Process.sequential, verbose=False
    )


@checkpoint
def run_crew(topic: str) -> str:
    """The whole crew is one durable step: its result is an artifact of the execution."""
    if KICKOFFS:
        with open(KICKOFFS, "a") as fh:
            fh.write("kickoff\n")
    result = build_crew().kickoff(inputs={"topic": topic})
    return str(result.raw)


@checkpoint
def publish(text: str) -> str:
    return f"published: {text[:60]}"


@flow
def crew_flow(topic: str) -> str:
    draft = run_crew(topic)
    if not kitaru.wait(name="approve_draft", question=f"Publish?\n\n{draft}", schema=bool):
        return "rejected"
    return publish(draft)


if __name__ == "__main__":
    from _cli import kitaru_cli  # examples/_cli.py: the command as typed from any directory

    if Crew is None:
        print(
            "crewai is not installed, so this example has nothing to run. Install it with "
            "`pip install crewai` (in an environment of its own if its pins clash) and run again."
        )
        sys.exit(0)
    handle = crew_flow.run(sys.argv[1] if len(sys.argv) > 1 else "durable agents")
    if handle.status == "waiting":
        print(f"execution {handle.exec_id} is waiting for approval; the crew's result is stored.")
        print(f"approve it with:  {kitaru_cli()} executions input {handle.exec_id} --value true")
    else:
        print(handle.wait())
