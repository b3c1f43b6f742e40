"""A PydanticAI agent made durable: each model request and tool call is a checkpoint, and a tool
that changes the world waits for a human's yes without holding a process.

Run it:      python examples/pydantic_ai_agent.py
Needs kitaru's pydantic-ai extra; from your kitaru checkout: `./uvw sync --inexact --extra
pydantic-ai` (or `pip install '.[pydantic-ai]'` into your environment). Without it, the example says
so and exits. The model is PydanticAI's offline FunctionModel, so no
key or network is needed; use `Agent("openai:gpt-4o-mini", ...)` for a real one.

The agent looks up an order, then wants to refund it; `refund` is declared requires_approval=True,
so the run suspends on the wait `support.approve.refund` and the process exits. Approve it from any
shell and the run resumes: the model requests and the lookup already made are replayed, not repeated:

    kitaru executions input <exec_id> --value true
    kitaru executions get <exec_id>
"""

from __future__ import annotations

import sys

try:
    from pydantic_ai import Agent
    from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart, ToolCallPart
    from pydantic_ai.models.function import AgentInfo, FunctionModel
except ImportError:  # pragma: no cover - depends on the environment
    sys.exit(
        "pydantic-ai is not installed, so this example cannot run. Install kitaru's pydantic-ai "
        "extra from your kitaru checkout: ./uvw sync --inexact --extra pydantic-ai "
        "(or pip install '.[pydantic-ai]' into your environment), and run again."
    )

from kitaru import flow
from kitaru.adapters.pydantic_ai import KitaruAgent


def support_model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    """Stands in for a real model: look up, refund, then answer."""
    turn = sum(isinstance(m, ModelResponse) for m in messages)
    if turn == 0:
        return ModelResponse(parts=[ToolCallPart("lookup_order", {"order_id": "A-1001"})])
    if turn == 1:
        return ModelResponse(parts=[ToolCallPart("refund", {"order_id": "A-1001", "amount": 42.0})])
    return ModelResponse(parts=[TextPart("Order A-1001 was refunded: 42.00 EUR.")])


agent = Agent(FunctionModel(support_model), name="support", instructions="Resolve the customer's issue.")


@agent.tool_plain
def lookup_order(order_id: str) -> dict[str, object]:
    return {"order_id": order_id, "status": "delivered damaged", "total": 42.0}


@agent.tool_plain(requires_approval=True)
def refund(order_id: str, amount: float) -> str:
    return f"refunded {amount:.2f} on {order_id}"


durable = KitaruAgent(agent)  # module level, so the resumed run finds it in another process


@flow
def support_ticket(message: str) -> str:
    return str(durable.run_sync(message).output)


if __name__ == "__main__":
    from _cli import kitaru_cli  # examples/_cli.py: the command as typed from any directory

    handle = support_ticket.run("My order A-1001 arrived broken, please refund it.")
    if handle.status == "waiting":
        print(f"execution {handle.exec_id} is waiting for approval of the refund.")
        print(f"approve it with:  {kitaru_cli()} executions input {handle.exec_id} --value true")
    else:
        print(handle.wait())
