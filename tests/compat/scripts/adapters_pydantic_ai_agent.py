# A PydanticAI agent made durable the 0.18 way: KitaruAgent with per-call checkpoint configs, a
# capture policy, a one-checkpoint-per-run agent, and a conversation threaded through runs.
# expect: granular: answer after 3 requests
# expect: turn: answer after 3 requests
# expect: history: You are Alice (4 earlier messages)
from pydantic_ai import Agent
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart, ToolCallPart
from pydantic_ai.models.function import AgentInfo, FunctionModel

import kitaru
from kitaru.adapters.pydantic_ai import CapturePolicy, KitaruAgent

calls = {"model": 0, "lookup_price": 0, "fetch_secret": 0}


def scripted(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    calls["model"] += 1
    n = sum(isinstance(m, ModelResponse) for m in messages) + 1
    if n == 1:
        return ModelResponse(parts=[ToolCallPart("lookup_price", {"item": "gpu"})])
    if n == 2:
        return ModelResponse(parts=[ToolCallPart("fetch_secret", {"key": "api"})])
    return ModelResponse(parts=[TextPart(f"answer after {n} requests")])


def make_agent(name: str) -> Agent:
    agent = Agent(FunctionModel(scripted), name=name)

    @agent.tool_plain
    def lookup_price(item: str) -> str:
        calls["lookup_price"] += 1
        if calls["lookup_price"] == 1:
            raise ConnectionError("flaky pricing API")  # retried by the tool's checkpoint config
        return f"{item}: $2"

    @agent.tool_plain
    def fetch_secret(key: str) -> str:
        calls["fetch_secret"] += 1
        return "s3cr3t"

    return agent


durable_agent = KitaruAgent(
    make_agent("researcher"),
    granular_checkpoints=True,
    model_checkpoint_config={"retries": 3, "cache": False},
    tool_checkpoint_config={"retries": 0},
    tool_checkpoint_config_by_name={
        "lookup_price": {"retries": 5},
        "fetch_secret": False,
    },
    capture=CapturePolicy(
        save_prompts=False,
        tool_capture="metadata",
        tool_capture_overrides={"fetch_secret": None},
    ),
)
turn_agent = KitaruAgent(make_agent("summarizer"), granular_checkpoints=False)


@kitaru.flow
def research(topic: str) -> str:
    return durable_agent.run_sync(f"Price of {topic}").output


@kitaru.flow
def summarize(topic: str) -> str:
    return turn_agent.run_sync(f"Summarize {topic}").output


def chat(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    earlier = len(messages) - 1
    if earlier:
        return ModelResponse(parts=[TextPart(f"You are Alice ({earlier} earlier messages)")])
    return ModelResponse(parts=[TextPart("Nice to meet you")])


if __name__ == "__main__":
    print("granular:", research.run("gpus").wait())
    assert calls == {"model": 3, "lookup_price": 2, "fetch_secret": 1}, calls

    print("turn:", summarize.run("gpus").wait())
    assert calls["model"] == 6, calls

    conversation = KitaruAgent(Agent(FunctionModel(chat), name="chat"), persist_message_history=True)
    conversation.run_sync("Hi, I am Alice.")
    conversation.run_sync("How are you?")
    print("history:", conversation.run_sync("What's my name?").output)
