"""A local model provider for ``kitaru.llm()`` tests: a real HTTP server in a thread that speaks
OpenAI chat completions and Anthropic messages, counts requests, and can be told to fail."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest


@dataclass
class Scripted:
    """A canned failure: HTTP status, body and headers, or a delay before answering."""

    status: int = 200
    body: dict[str, Any] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


@dataclass
class Seen:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]


class FakeProvider:
    """State shared with the handler: what was asked, and what to answer next."""

    def __init__(self) -> None:
        self.requests: list[Seen] = []
        self.script: list[Scripted] = []  # consumed one per request; empty means answer normally
        self.lock = threading.Lock()
        self.url = ""

    @property
    def count(self) -> int:
        return len(self.requests)

    def fail(self, status: int, body: dict[str, Any] | None = None, times: int = 1, **headers: str) -> None:
        """The next ``times`` requests get this HTTP error (header names with ``_`` for ``-``)."""
        sent = {k.replace("_", "-"): v for k, v in headers.items()}
        self.script += [Scripted(status=status, body=body, headers=sent) for _ in range(times)]

    def slow(self, delay: float, times: int = 1) -> None:
        """The next ``times`` requests are answered after ``delay`` seconds."""
        self.script += [Scripted(delay=delay) for _ in range(times)]

    def answer(self, seen: Seen) -> tuple[int, dict[str, Any], dict[str, str], float]:
        with self.lock:
            self.requests.append(seen)
            n = len(self.requests)
            scripted = self.script.pop(0) if self.script else None
        if scripted is not None and scripted.status != 200:
            return scripted.status, scripted.body or {"error": {"message": "scripted"}}, scripted.headers, 0
        delay = scripted.delay if scripted else 0.0
        prompt = seen.body["messages"][-1]["content"]
        text = f"answer {n} to: {prompt}"
        if seen.path.endswith("/messages"):
            body: dict[str, Any] = {
                "id": f"msg_{n}",
                "type": "message",
                "role": "assistant",
                "model": seen.body["model"],
                "content": [{"type": "text", "text": text}],
                "stop_reason": "end_turn",
                "usage": {"input_tokens": 11, "output_tokens": 7},
            }
        else:
            body = {
                "id": f"chatcmpl-{n}",
                "object": "chat.completion",
                "model": seen.body["model"],
                "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
                ],
                "usage": {"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17},
            }
        return 200, body, {}, delay


def _handler(provider: FakeProvider) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("content-length", 0))
            body = json.loads(self.rfile.read(length) or b"{}")
            seen = Seen(self.path, {k.lower(): v for k, v in self.headers.items()}, body)
            status, reply, headers, delay = provider.answer(seen)
            if delay:
                time.sleep(delay)
            data = json.dumps(reply).encode()
            try:
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                for k, v in headers.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client timed out and left

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


@pytest.fixture
def provider() -> Iterator[FakeProvider]:
    state = FakeProvider()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


SECRET = "sk-test-DO-NOT-LEAK-4f1c9e"


@pytest.fixture
def secret() -> str:
    """The API key the fake provider's clients use; it must never reach a store or a log."""
    return SECRET


@pytest.fixture(autouse=True)
def llm_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Own config dir, no keys or model from the developer's environment, fast retries."""
    config = tmp_path / "config"
    monkeypatch.setenv("KITARU_CONFIG_DIR", str(config))
    for var in (
        "KITARU_MODEL",
        "OPENAI_API_KEY",
        "OPENAI_BASE_URL",
        "ANTHROPIC_API_KEY",
        "ANTHROPIC_BASE_URL",
        "OPENROUTER_API_KEY",
        "OLLAMA_BASE_URL",
        "VLLM_BASE_URL",
    ):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("KITARU_LLM_BACKOFF", "0.01")
    monkeypatch.setenv("KITARU_LLM_RETRIES", "2")
    return config


@pytest.fixture
def openai_env(provider: FakeProvider, monkeypatch: pytest.MonkeyPatch) -> FakeProvider:
    """``openai/...`` models go to the fake provider, with a key set."""
    monkeypatch.setenv("OPENAI_BASE_URL", provider.url + "/v1")
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    return provider


@pytest.fixture
def anthropic_env(provider: FakeProvider, monkeypatch: pytest.MonkeyPatch) -> FakeProvider:
    monkeypatch.setenv("ANTHROPIC_BASE_URL", provider.url)
    monkeypatch.setenv("ANTHROPIC_API_KEY", SECRET)
    return provider
