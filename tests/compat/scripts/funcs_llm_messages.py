# 0.18 kitaru.llm(): a chat-style message list, the model from KITARU_DEFAULT_MODEL, against an
# OpenAI-compatible server (a small local one here, so the script needs no account).
# expect: reply: shorter: Now make it shorter.
import json
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import kitaru
from kitaru import flow

SEEN = []


class Server(BaseHTTPRequestHandler):
    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        SEEN.append(body)
        text = "shorter: " + body["messages"][-1]["content"]
        reply = {
            "model": body["model"],
            "choices": [{"message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 2},
        }
        data = json.dumps(reply).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@flow
def headline_flow() -> str:
    return kitaru.llm(
        [
            {"role": "user", "content": "Draft a release note headline."},
            {"role": "assistant", "content": "Kitaru adds durable replay controls."},
            {"role": "user", "content": "Now make it shorter."},
        ],
        system="You are a concise technical editor.",
        name="headline_refine",
    )


if __name__ == "__main__":
    server = ThreadingHTTPServer(("127.0.0.1", 0), Server)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    os.environ["OPENAI_BASE_URL"] = f"http://127.0.0.1:{server.server_address[1]}/v1"
    os.environ["OPENAI_API_KEY"] = "sk-local"
    os.environ["KITARU_DEFAULT_MODEL"] = "openai/gpt-4o-mini"
    reply = headline_flow.run().wait()
    [request] = SEEN
    assert request["model"] == "gpt-4o-mini", request
    assert [m["role"] for m in request["messages"]] == ["system", "user", "assistant", "user"]
    print("reply:", reply)
    server.shutdown()
