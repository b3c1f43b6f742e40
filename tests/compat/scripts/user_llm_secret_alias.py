# The 0.18 example llm/flow_with_llm with its documented setup:
#   kitaru secrets set openai-creds --OPENAI_API_KEY=sk-...
#   kitaru model register fast --model openai/gpt-5-nano --secret openai-creds
# then kitaru.llm(..., model="fast", name=...) at flow scope and inside a checkpoint. The provider
# is a small local OpenAI-compatible server (OPENAI_BASE_URL), so no account is needed; the one
# setup step kitaru adds is the key that encrypts secrets (KITARU_SECRETS_KEY).
# expect: Result: draft from: outline from: Create a 3-bullet outline about kitaru.
# expect: keys sent: ['sk-from-secret', 'sk-from-secret']
import json
import os
import shutil
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import kitaru
from kitaru import KitaruClient, checkpoint, flow

SEEN = []


class Provider(BaseHTTPRequestHandler):
    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        SEEN.append((self.headers.get("authorization"), body))
        prompt = body["messages"][-1]["content"]
        text = ("outline from: " if prompt.startswith("Create") else "draft from: ") + prompt.split("\n")[-1]
        reply = json.dumps(
            {
                "model": body["model"],
                "choices": [{"message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 5, "completion_tokens": 4},
            }
        ).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, *args):
        pass


@checkpoint
def write_draft(topic: str, outline: str) -> str:
    return kitaru.llm(
        f"Write a short paragraph about {topic} using this outline:\n{outline}",
        model="fast",
        name="draft_call",
    )


@flow
def llm_writer(topic: str) -> str:
    outline = kitaru.llm(f"Create a 3-bullet outline about {topic}.", model="fast", name="outline_call")
    return write_draft(topic, outline)


def kitaru_cli(*args: str) -> str:
    exe = shutil.which("kitaru")
    cmd = [exe, *args] if exe else [sys.executable, "-m", "kitaru.cli", *args]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


if __name__ == "__main__":
    server = ThreadingHTTPServer(("127.0.0.1", 0), Provider)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    os.environ["OPENAI_BASE_URL"] = f"http://127.0.0.1:{server.server_address[1]}/v1"
    os.environ.pop("OPENAI_API_KEY", None)
    os.environ["KITARU_SECRETS_KEY"] = kitaru_cli("secrets", "new-key").strip()

    kitaru_cli("secrets", "set", "openai-creds", "--OPENAI_API_KEY=sk-from-secret")
    kitaru_cli("model", "register", "fast", "--model", "openai/gpt-5-nano", "--secret", "openai-creds")

    handle = llm_writer.run("kitaru")
    result = handle.wait()
    print(f"Execution: {handle.exec_id}")
    print(f"Result: {result}")
    assert [body["model"] for _, body in SEEN] == ["gpt-5-nano", "gpt-5-nano"]
    print("keys sent:", [auth.removeprefix("Bearer ") for auth, _ in SEEN])
    calls = [c.name for c in KitaruClient().executions.get(handle.exec_id).checkpoints]
    assert "outline_call" in calls and "write_draft" in calls, calls
    server.shutdown()
