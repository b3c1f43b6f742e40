"""kitaru.llm(): model calls that are paid for once, with prompts, responses and usage recorded.

Run it:      python examples/llm_calls.py
With no model configured it starts a tiny OpenAI-compatible stand-in server on this machine, so it
runs offline. To use a real model instead, pass one (an alias from `kitaru model register`, or
provider/model with the provider's key in the environment):

    OPENAI_API_KEY=... python examples/llm_calls.py openai/gpt-4o-mini

The flow researches, drafts, then waits for a human. Each kitaru.llm() at flow scope is its own
checkpoint (`llm`, `llm:2`), so answering the wait resumes the flow without calling the model again:

    kitaru executions input <exec_id> --value true
    kitaru artifacts list <exec_id> --type response
"""

from __future__ import annotations

import json
import os
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import kitaru
from kitaru import checkpoint, flow

MODEL = os.environ.get("EXAMPLE_MODEL", "openai/gpt-4o-mini")


@checkpoint
def publish(text: str) -> str:
    return f"published {len(text.split())} words"


@flow
def write_post(topic: str) -> str:
    brief = kitaru.llm(f"Three facts about {topic}, one line each.", model=MODEL, name="research")
    draft = kitaru.llm(
        f"Write a two-sentence post from these facts:\n{brief}",
        model=MODEL,
        system="You are a concise technical writer.",
        name="draft",
    )
    if not kitaru.wait(name="approve", question=f"Publish this?\n\n{draft}", schema=bool):
        return "rejected"
    return publish(draft)


class _StandIn(BaseHTTPRequestHandler):
    """Answers chat completions like a model would, deterministically."""

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        prompt = body["messages"][-1]["content"]
        reply = {
            "model": body["model"],
            "choices": [
                {
                    "message": {"role": "assistant", "content": f"(stand-in) {prompt.splitlines()[0][:60]}"},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": len(prompt.split()), "completion_tokens": 12},
        }
        data = json.dumps(reply).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        pass


def start_stand_in() -> ThreadingHTTPServer:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _StandIn)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    os.environ["OPENAI_BASE_URL"] = f"http://127.0.0.1:{server.server_address[1]}/v1"
    os.environ.setdefault("OPENAI_API_KEY", "stand-in")
    return server


if __name__ == "__main__":
    from _cli import kitaru_cli  # examples/_cli.py: the command as typed from any directory

    if len(sys.argv) > 1:
        MODEL = os.environ["EXAMPLE_MODEL"] = sys.argv[1]
    else:
        start_stand_in()
        print("no model given: using a local stand-in server (offline)")
    handle = write_post.run("durable agents")
    execution = kitaru.KitaruClient().executions.get(handle.exec_id)
    for c in execution.checkpoints:
        usage = {k: c.metadata.get(k) for k in ("model", "tokens_in", "tokens_out", "latency_ms")}
        print(f"{c.call_id}: {usage}")
    if handle.status == "waiting":
        print(f"execution {handle.exec_id} is waiting for approval; approve it with:")
        print(f"  {kitaru_cli()} executions input {handle.exec_id} --value true")
    else:
        print(handle.wait())
