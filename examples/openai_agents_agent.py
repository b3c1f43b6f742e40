"""An OpenAI Agents SDK agent made durable: each model call and function-tool call is a checkpoint,
and a tool declared needs_approval waits for a human without holding a process.

Run it:      python examples/openai_agents_agent.py [per_call|runner_call]
Needs kitaru's openai-agents extra; from your kitaru checkout: `./uvw sync --inexact --extra
openai-agents` (or `pip install '.[openai-agents]'` into your environment). Without it, the example
says so and exits. The model is an offline implementation of the SDK's
Model interface, so no key or network is needed; give the Agent a real model name to use one.

`per_call` (default) checkpoints each model call and tool call; `runner_call` makes the whole
Runner.run one checkpoint. The run suspends on `triage.approve.refund` (`triage_run.approve.refund`
with runner_call) and the process exits; approving it resumes the run, replaying what already ran:

    kitaru executions input <exec_id> --value true
    kitaru executions get <exec_id>
"""

from __future__ import annotations

import sys
from typing import Any

try:
    from agents import Agent, function_tool, set_tracing_disabled
    from agents.items import ModelResponse
    from agents.models.interface import Model
    from agents.testing import assistant_message, function_call
    from agents.usage import Usage
except ImportError:  # pragma: no cover - depends on the environment
    sys.exit(
        "the OpenAI Agents SDK is not installed, so this example cannot run. Install kitaru's "
        "openai-agents extra from your kitaru checkout: ./uvw sync --inexact --extra openai-agents "
        "(or pip install '.[openai-agents]' into your environment), and run again."
    )

from kitaru import flow
from kitaru.adapters.openai_agents import KitaruAgent

set_tracing_disabled(True)  # offline: no trace export


class OfflineModel(Model):
    """Stands in for a real model: look up the order, refund it, then answer."""

    async def get_response(
        self, system_instructions: Any, input: Any, *args: Any, **kwargs: Any
    ) -> ModelResponse:
        turn = sum(1 for i in input if isinstance(i, dict) and i.get("type") == "function_call_output")
        if turn == 0:
            out = [function_call("lookup_order", {"order_id": "A-1001"}, call_id="call_lookup")]
        elif turn == 1:
            out = [function_call("refund", {"order_id": "A-1001", "amount": 42.0}, call_id="call_refund")]
        else:
            out = [assistant_message("Order A-1001 was refunded: 42.00 EUR.")]
        usage = Usage(
            requests=1, input_tokens=20 * (turn + 1), output_tokens=12, total_tokens=20 * (turn + 1) + 12
        )
        return ModelResponse(output=out, usage=usage, response_id=None)

    def stream_response(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError("this stand-in does not stream")


@function_tool
def lookup_order(order_id: str) -> str:
    return f"{order_id}: delivered damaged, total 42.00 EUR"


@function_tool(needs_approval=True)
def refund(order_id: str, amount: float) -> str:
    return f"refunded {amount:.2f} on {order_id}"


triage = Agent(
    name="triage",
    instructions="Resolve the customer's issue.",
    model=OfflineModel(),
    tools=[lookup_order, refund],
)
per_call = KitaruAgent(triage)  # module level, so a resumed run finds it in another process
runner_call = KitaruAgent(triage, name="triage_run", strategy="runner_call")


@flow
def support_ticket(message: str, strategy: str = "per_call") -> str:
    durable = runner_call if strategy == "runner_call" else per_call
    return str(durable.run_sync(message).final_output)


if __name__ == "__main__":
    from _cli import kitaru_cli  # examples/_cli.py: the command as typed from any directory

    strategy = sys.argv[1] if len(sys.argv) > 1 else "per_call"
    handle = support_ticket.run("My order A-1001 arrived broken, please refund it.", strategy)
    if handle.status == "waiting":
        print(f"execution {handle.exec_id} ({strategy}) is waiting for approval of the refund.")
        print(f"approve it with:  {kitaru_cli()} executions input {handle.exec_id} --value true")
    else:
        print(handle.wait())
