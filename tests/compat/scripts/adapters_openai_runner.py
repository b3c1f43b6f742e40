# OpenAI Agents SDK agents run the 0.18 way: KitaruRunner with OpenAIRunRequest, one checkpoint per
# run ("runner_call") or per model/tool call ("calls", the default), the model from a RunConfig
# factory (an offline Model implementation, so no API key is needed).
# expect: runner_call: Agents survive crashes.
# expect: calls: Order 42 is delayed by weather.
from typing import Any

from agents import Agent, RunConfig, function_tool, set_tracing_disabled
from agents.items import ModelResponse
from agents.models.interface import Model
from agents.testing import assistant_message, function_call
from agents.usage import Usage

from kitaru import flow
from kitaru.adapters.openai_agents import KitaruRunner, OpenAIRunRequest, OpenAIRunResult

set_tracing_disabled(True)
model_calls = []


class OfflineModel(Model):
    async def get_response(
        self, system_instructions: Any, input: Any, *args: Any, **kwargs: Any
    ) -> ModelResponse:
        model_calls.append(1)
        results = [i for i in input if isinstance(i, dict) and i.get("type") == "function_call_output"]
        if results:
            out = [assistant_message(results[-1]["output"])]
        elif "Look up the order" in (system_instructions or ""):
            out = [function_call("lookup_order", {"order_id": "42"}, call_id="call_1")]
        else:
            out = [assistant_message("Agents survive crashes.")]
        return ModelResponse(
            output=out, usage=Usage(requests=1, input_tokens=5, output_tokens=5), response_id=None
        )

    def stream_response(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError


@function_tool
def lookup_order(order_id: str) -> str:
    return f"Order {order_id} is delayed by weather."


researcher = Agent(name="researcher", instructions="Answer carefully.", model="gpt-5-nano")
runner = KitaruRunner(
    researcher,
    checkpoint_strategy="runner_call",
    run_config_factory=lambda: RunConfig(model=OfflineModel()),
)

support_agent = Agent(
    name="support_agent",
    instructions="Look up the order before answering.",
    model="gpt-5-nano",
    tools=[lookup_order],
)
support = KitaruRunner(support_agent, run_config_factory=lambda: RunConfig(model=OfflineModel()))


@flow
def research(prompt: str) -> str:
    result = runner.run_sync(OpenAIRunRequest.start(prompt))
    assert isinstance(result, OpenAIRunResult) and result.status == "completed"
    return str(result.final_output)


@flow
def answer(question: str) -> str:
    result = support.run_sync(OpenAIRunRequest.start([{"role": "user", "content": question}]))
    return str(result.final_output)


if __name__ == "__main__":
    print("runner_call:", research.run("What should I know about agent durability?").wait())
    assert len(model_calls) == 1
    print("calls:", answer.run("Where is order 42?").wait())
    assert len(model_calls) == 3, model_calls
