"""An OpenAI Agents SDK agent with two tools, run durably, for the process-level tests.

Its model is an offline implementation of the SDK's Model interface that appends the number of each
call it serves to $COUNT_FILE (counted outside kitaru); tools append their names. With $SLOW_TOOL
set to a tool's name, that tool announces itself in $MARK_FILE and sleeps, so the test can SIGKILL
the process after the second model call. `explicit` runs in this file's @flow, `implicit` lets the
adapter open a flow, `approval` needs a human's yes before `publish`, `runner` runs the flow written
for Kitaru 0.18's KitaruRunner (checkpoint_strategy="calls", its model from run_config_factory).
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

from agents import Agent, RunConfig, function_tool, set_tracing_disabled
from agents.items import ModelResponse
from agents.models.interface import Model
from agents.testing import assistant_message, function_call
from agents.usage import Usage

from kitaru import flow
from kitaru.adapters.openai_agents import KitaruAgent, KitaruRunner, OpenAIRunRequest

set_tracing_disabled(True)


def note(line: str) -> None:
    with open(os.environ["COUNT_FILE"], "a") as fh:
        fh.write(line + "\n")


class CountingModel(Model):
    """Calls `lookup`, then `publish`, then answers; the n-th call is known from the input."""

    async def get_response(
        self, system_instructions: Any, input: Any, *args: Any, **kwargs: Any
    ) -> ModelResponse:
        outputs = [i for i in input if isinstance(i, dict) and i.get("type") == "function_call_output"]
        n = len(outputs) + 1
        note(f"model {n}")
        if n == 1:
            out = [function_call("lookup", {"topic": "durability"}, call_id="call_1")]
        elif n == 2:
            out = [function_call("publish", {"text": "notes"}, call_id="call_2")]
        else:
            out = [assistant_message("done after 3 calls")]
        return ModelResponse(
            output=out,
            usage=Usage(requests=1, input_tokens=9, output_tokens=4, total_tokens=13),
            response_id=None,
        )

    def stream_response(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError


def maybe_hang(tool: str) -> None:
    if os.environ.get("SLOW_TOOL") == tool:
        with open(os.environ["MARK_FILE"], "w") as fh:
            fh.write(tool)
        time.sleep(60)


@function_tool
def lookup(topic: str) -> str:
    note("tool lookup")
    maybe_hang("lookup")
    return f"facts about {topic}"


@function_tool
def publish(text: str) -> str:
    note("tool publish")
    maybe_hang("publish")
    return f"published {text}"


agent = Agent(name="writer", model=CountingModel(), tools=[lookup, publish])
durable = KitaruAgent(agent)
careful = KitaruAgent(agent, name="careful", approve={"publish"})


@flow
def write(topic: str) -> str:
    return str(durable.run_sync(f"write about {topic}").final_output)


# The agent names a model only the run config replaces (no network is ever used).
runner = KitaruRunner(
    Agent(name="writer", model="gpt-unused", tools=[lookup, publish]),
    checkpoint_strategy="calls",
    run_config_factory=lambda: RunConfig(model=CountingModel()),
)


@flow
def write_with_runner(topic: str) -> str:
    result = runner.run_sync(OpenAIRunRequest.start(f"write about {topic}"))
    return str(result.final_output)


if __name__ == "__main__":
    mode = sys.argv[1]
    if mode == "explicit":
        handle = write.run("agents")
    elif mode == "runner":
        handle = write_with_runner.run("agents")
    elif mode == "implicit":
        handle = durable.run_flow("write about agents")
    else:
        handle = careful.run_flow("write about agents")
    print(handle.exec_id, handle.status, flush=True)
