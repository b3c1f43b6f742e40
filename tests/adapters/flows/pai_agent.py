"""A PydanticAI agent with two tools, run durably, for the process-level tests.

Its model is a FunctionModel that appends the number of each request it serves to $COUNT_FILE
(counted outside kitaru); tools append their names. With $SLOW_TOOL set to a tool's name, that tool
announces itself in $MARK_FILE and sleeps, so the test can SIGKILL the process after the second
model request. `explicit` runs the agent in this file's @flow; `implicit` lets the adapter open a
flow; `approval` asks a human before `publish` (the process exits while the run waits).
"""

from __future__ import annotations

import os
import sys
import time

from pydantic_ai import Agent
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart, ToolCallPart
from pydantic_ai.models.function import AgentInfo, FunctionModel

from kitaru import flow
from kitaru.adapters.pydantic_ai import KitaruAgent


def note(line: str) -> None:
    with open(os.environ["COUNT_FILE"], "a") as fh:
        fh.write(line + "\n")


def model_fn(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    n = sum(isinstance(m, ModelResponse) for m in messages) + 1
    note(f"model {n}")
    if n == 1:
        return ModelResponse(parts=[ToolCallPart("lookup", {"topic": "durability"})])
    if n == 2:
        return ModelResponse(parts=[ToolCallPart("publish", {"text": "notes"})])
    return ModelResponse(parts=[TextPart("done after 3 requests")])


def maybe_hang(tool: str) -> None:
    if os.environ.get("SLOW_TOOL") == tool:
        with open(os.environ["MARK_FILE"], "w") as fh:
            fh.write(tool)
        time.sleep(60)


agent = Agent(FunctionModel(model_fn), name="writer")


@agent.tool_plain
def lookup(topic: str) -> str:
    note("tool lookup")
    maybe_hang("lookup")
    return f"facts about {topic}"


@agent.tool_plain
def publish(text: str) -> str:
    note("tool publish")
    maybe_hang("publish")
    return f"published {text}"


durable = KitaruAgent(agent)
careful = KitaruAgent(agent, name="careful", approve={"publish"})


@flow
def write(topic: str) -> str:
    return str(durable.run_sync(f"write about {topic}").output)


if __name__ == "__main__":
    mode = sys.argv[1]
    if mode == "explicit":
        handle = write.run("agents")
    elif mode == "implicit":
        handle = durable.run_flow("write about agents")
    else:
        handle = careful.run_flow("write about agents")
    print(handle.exec_id, handle.status, flush=True)
