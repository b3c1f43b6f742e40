"""``kitaru.llm()`` against a real local HTTP provider: what is sent, what is recorded, what a
resumed flow does not pay for again, and how provider failures surface."""

from __future__ import annotations

import json
import socket
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

import kitaru
from kitaru import KitaruClient, checkpoint, flow
from kitaru._engine.runtime import Runtime


def completed(runtime: Runtime, exec_id: str) -> Counter[str]:
    return Counter(r.call_id for r in runtime.state.read_journal(exec_id) if r.kind == "checkpoint_completed")


def call_logs(runtime: Runtime, exec_id: str, call_id: str) -> dict[str, object]:
    merged: dict[str, object] = {}
    for r in runtime.state.read_journal(exec_id):
        if r.kind == "log" and r.call_id == call_id:
            merged.update(r.data or {})
    return merged


class TestOutsideAFlow:
    def test_openai_compatible_request_and_answer(self, openai_env: Any, secret: str) -> None:
        text = kitaru.llm(
            "hello", model="openai/gpt-4o-mini", system="be brief", temperature=0.2, max_tokens=50
        )
        assert text == "answer 1 to: hello"
        [seen] = openai_env.requests
        assert seen.path == "/v1/chat/completions"
        assert seen.headers["authorization"] == f"Bearer {secret}"
        assert seen.body == {
            "model": "gpt-4o-mini",
            "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello"}],
            "temperature": 0.2,
            "max_completion_tokens": 50,
        }

    def test_anthropic_messages_request_and_answer(self, anthropic_env: Any, secret: str) -> None:
        text = kitaru.llm("hi", model="anthropic/claude-3-5-haiku-latest", system="terse")
        assert text == "answer 1 to: hi"
        [seen] = anthropic_env.requests
        assert seen.path == "/v1/messages"
        assert seen.headers["x-api-key"] == secret
        assert seen.headers["anthropic-version"] == "2023-06-01"
        assert "authorization" not in seen.headers
        assert seen.body == {
            "model": "claude-3-5-haiku-latest",
            "max_tokens": 1024,
            "messages": [{"role": "user", "content": "hi"}],
            "system": "terse",
        }

    def test_compatible_servers_get_max_tokens_and_no_key(
        self, provider: Any, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("OLLAMA_BASE_URL", provider.url + "/v1")
        assert kitaru.llm("x", model="ollama/llama3", max_tokens=9).startswith("answer 1")
        [seen] = provider.requests
        assert seen.body["max_tokens"] == 9 and "authorization" not in seen.headers

    def test_complete_returns_usage_and_latency(self, openai_env: Any) -> None:
        from kitaru.llm import complete

        reply = complete("q", model="openai/gpt-4o-mini")
        assert (reply.tokens_in, reply.tokens_out, reply.attempts) == (12, 5, 1)
        assert reply.latency_ms > 0 and reply.finish_reason == "stop"


class TestInAFlow:
    def test_each_call_at_flow_scope_is_a_checkpoint_with_prompt_and_response_artifacts(
        self, runtime: Runtime, openai_env: Any
    ) -> None:
        @flow
        def two_calls(topic: str) -> str:
            brief = kitaru.llm(f"research {topic}", model="openai/gpt-4o-mini")
            return kitaru.llm(f"draft from {brief}", model="openai/gpt-4o-mini", system="editor")

        handle = two_calls.run("agents")
        assert handle.wait(timeout=60) == "answer 2 to: draft from answer 1 to: research agents"
        assert completed(runtime, handle.exec_id) == {"llm": 1, "llm:2": 1}
        arts = KitaruClient().artifacts.list(handle.exec_id)
        prompts = [a for a in arts if a.type == "prompt"]
        responses = [a for a in arts if a.type == "response"]
        assert [a.call_id for a in prompts] == ["llm", "llm:2"]
        assert [a.load() for a in responses] == [
            "answer 1 to: research agents",
            "answer 2 to: draft from answer 1 to: research agents",
        ]
        assert prompts[1].load() == {
            "model": "openai/gpt-4o-mini",
            "messages": [
                {"role": "system", "content": "editor"},
                {"role": "user", "content": "draft from answer 1 to: research agents"},
            ],
        }
        usage = call_logs(runtime, handle.exec_id, "llm")
        assert usage["model"] == "openai/gpt-4o-mini"
        assert (usage["tokens_in"], usage["tokens_out"]) == (12, 5)
        assert isinstance(usage["latency_ms"], float)
        assert usage["cost_usd"] == pytest.approx((12 * 0.15 + 5 * 0.60) / 1e6)
        # `kitaru executions get` shows it per checkpoint.
        checkpoints = KitaruClient().executions.get(handle.exec_id).checkpoints
        [llm_cp] = [c for c in checkpoints if c.call_id == "llm"]
        assert llm_cp.metadata["tokens_out"] == 5

    def test_anthropic_calls_are_recorded_and_replayed(self, runtime: Runtime, anthropic_env: Any) -> None:
        @flow
        def ask() -> str:
            text = kitaru.llm("q", model="anthropic/claude-3-5-haiku-20241022", system="s")
            kitaru.wait(name="go")
            return text

        handle = ask.run()
        usage = call_logs(runtime, handle.exec_id, "llm")
        assert (usage["tokens_in"], usage["tokens_out"], usage["finish_reason"]) == (11, 7, "end_turn")
        assert usage["cost_usd"] == pytest.approx((11 * 0.80 + 7 * 4.00) / 1e6)
        assert KitaruClient().executions.input(handle.exec_id, None).wait(timeout=60) == "answer 1 to: q"
        assert anthropic_env.count == 1
        [prompt] = KitaruClient().artifacts.list(handle.exec_id, type="prompt")
        assert prompt.load()["messages"][0] == {"role": "system", "content": "s"}

    def test_name_sets_the_checkpoint_id(self, runtime: Runtime, openai_env: Any) -> None:
        @flow
        def named() -> str:
            kitaru.llm("a", model="openai/gpt-4o-mini", name="outline")
            return kitaru.llm("b", model="openai/gpt-4o-mini", name="outline")

        handle = named.run()
        handle.wait(timeout=60)
        assert completed(runtime, handle.exec_id) == {"outline": 1, "outline:2": 1}
        names = {a.name for a in KitaruClient().artifacts.list(handle.exec_id, type="prompt")}
        assert names == {"outline.prompt"}

    def test_a_resumed_flow_does_not_call_the_provider_again(self, runtime: Runtime, openai_env: Any) -> None:
        @flow
        def review(topic: str) -> str:
            draft = kitaru.llm(f"draft {topic}", model="openai/gpt-4o-mini")
            if not kitaru.wait(name="approve", schema=bool):
                return "rejected"
            return kitaru.llm(f"polish {draft}", model="openai/gpt-4o-mini")

        handle = review.run("x")
        assert handle.status == "waiting"
        assert openai_env.count == 1
        done = KitaruClient().executions.input(handle.exec_id, True)
        assert done.wait(timeout=60) == "answer 2 to: polish answer 1 to: draft x"
        assert openai_env.count == 2  # the first call was replayed from the journal, not re-billed
        assert completed(runtime, handle.exec_id) == {"llm": 1, "llm:2": 1}

    def test_replay_needs_no_key(
        self, runtime: Runtime, openai_env: Any, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        @flow
        def once() -> str:
            text = kitaru.llm("q", model="openai/gpt-4o-mini")
            kitaru.wait(name="go")
            return text

        handle = once.run()
        monkeypatch.delenv("OPENAI_API_KEY")
        monkeypatch.delenv("OPENAI_BASE_URL")
        assert KitaruClient().executions.input(handle.exec_id, None).wait(timeout=60) == "answer 1 to: q"
        assert openai_env.count == 1

    def test_inside_a_checkpoint_the_call_is_recorded_under_it(
        self, runtime: Runtime, openai_env: Any
    ) -> None:
        @checkpoint
        def research(topic: str) -> str:
            notes = kitaru.llm(f"facts on {topic}", model="openai/gpt-4o-mini", name="facts")
            return kitaru.llm(f"summarise {notes}", model="openai/gpt-4o-mini")

        @flow
        def agent(topic: str) -> str:
            brief = research(topic)
            kitaru.wait(name="go")
            return brief

        handle = agent.run("t")
        assert openai_env.count == 2
        assert completed(runtime, handle.exec_id) == {"research": 1}
        arts = KitaruClient().artifacts.list(handle.exec_id)
        assert {(a.name, a.call_id) for a in arts if a.type in ("prompt", "response")} == {
            ("facts.prompt", "research"),
            ("facts.response", "research"),
            ("llm.prompt", "research"),
            ("llm.response", "research"),
        }
        logs = call_logs(runtime, handle.exec_id, "research")
        assert logs["facts.tokens_in"] == 12 and logs["tokens_in"] == 12
        assert KitaruClient().executions.input(handle.exec_id, None).wait(timeout=60).startswith("answer 2")
        assert openai_env.count == 2

    def test_async_flow(self, runtime: Runtime, openai_env: Any) -> None:
        import asyncio

        @flow
        async def aflow() -> str:
            return kitaru.llm("async", model="openai/gpt-4o-mini")

        async def app() -> str:
            return await (await aflow.start()).result(timeout=60)

        assert asyncio.run(app()) == "answer 1 to: async"


class TestSecrets:
    def test_the_key_is_never_stored_or_logged(
        self,
        runtime: Runtime,
        openai_env: Any,
        secret: str,
        kitaru_home: Path,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        # The second call meets a provider that echoes the key in its error: it must not reach
        # the journal either.
        openai_env.slow(0)
        openai_env.fail(401, {"error": {"message": f"Incorrect API key provided: {secret}"}})

        @flow
        def leaky() -> str:
            kitaru.llm("first", model="openai/gpt-4o-mini")
            return kitaru.llm("second", model="openai/gpt-4o-mini")

        handle = leaky.run()
        assert handle.status == "failed"
        with pytest.raises(kitaru.KitaruLLMAuthError) as info:
            handle.wait(timeout=60)
        assert secret not in str(info.value) and "OPENAI_API_KEY" in str(info.value)

        seen: list[str] = [repr(r) for r in runtime.state.read_journal(handle.exec_id)]
        seen += [repr(runtime.state.get_execution(handle.exec_id))]
        for a in runtime.state.list_artifacts(handle.exec_id):
            seen.append(runtime.artifact_bytes(a).decode(errors="replace"))
        seen.append(caplog.text)
        assert all(secret not in text for text in seen)
        for path in kitaru_home.rglob("*"):
            if path.is_file():
                assert secret.encode() not in path.read_bytes(), path

    def test_the_spec_does_not_show_the_key(self, openai_env: Any, secret: str) -> None:
        from kitaru._models import resolve

        assert secret not in repr(resolve("openai/gpt-4o-mini"))


class TestErrors:
    def test_auth_errors_are_not_retried(self, openai_env: Any) -> None:
        openai_env.fail(401)
        with pytest.raises(kitaru.KitaruLLMAuthError, match="OPENAI_API_KEY") as info:
            kitaru.llm("x", model="openai/gpt-4o-mini")
        assert info.value.status == 401 and info.value.provider == "openai"
        assert openai_env.count == 1

    def test_bad_requests_are_not_retried(self, openai_env: Any) -> None:
        openai_env.fail(404, {"error": {"message": "model nope not found"}})
        with pytest.raises(kitaru.KitaruLLMBadRequestError, match="model nope not found"):
            kitaru.llm("x", model="openai/nope")
        assert openai_env.count == 1

    def test_rate_limits_are_retried_then_succeed(self, openai_env: Any) -> None:
        openai_env.fail(429, retry_after="0")
        openai_env.fail(503)
        assert kitaru.llm("x", model="openai/gpt-4o-mini") == "answer 3 to: x"
        assert openai_env.count == 3

    def test_attempts_are_logged(self, runtime: Runtime, openai_env: Any) -> None:
        openai_env.fail(429, retry_after="0")

        @flow
        def f() -> str:
            return kitaru.llm("x", model="openai/gpt-4o-mini")

        handle = f.run()
        handle.wait(timeout=60)
        assert call_logs(runtime, handle.exec_id, "llm")["attempts"] == 2

    def test_rate_limits_give_up_after_the_retries(self, openai_env: Any) -> None:
        openai_env.fail(429, times=5, retry_after="0")
        with pytest.raises(kitaru.KitaruLLMRateLimitError):
            kitaru.llm("x", model="openai/gpt-4o-mini")
        assert openai_env.count == 3  # KITARU_LLM_RETRIES=2 in these tests

    def test_anthropic_overloaded_is_a_rate_limit(self, anthropic_env: Any) -> None:
        anthropic_env.fail(529, {"error": {"message": "Overloaded"}}, times=3)
        with pytest.raises(kitaru.KitaruLLMRateLimitError, match="Overloaded"):
            kitaru.llm("x", model="anthropic/claude-3-5-haiku-latest")

    def test_timeouts_are_retried_then_typed(self, openai_env: Any, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("KITARU_LLM_TIMEOUT", "0.2")
        monkeypatch.setenv("KITARU_LLM_RETRIES", "1")
        openai_env.slow(1.0, times=2)
        with pytest.raises(kitaru.KitaruLLMTimeoutError, match="KITARU_LLM_TIMEOUT"):
            kitaru.llm("x", model="openai/gpt-4o-mini")
        assert openai_env.count == 2

    def test_an_unreachable_server_is_a_clear_error(self, monkeypatch: pytest.MonkeyPatch) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        monkeypatch.setenv("OLLAMA_BASE_URL", f"http://127.0.0.1:{port}/v1")
        with pytest.raises(kitaru.KitaruLLMError, match="cannot reach ollama/llama3"):
            kitaru.llm("x", model="ollama/llama3")

    def test_an_unreadable_reply(self, openai_env: Any) -> None:
        openai_env.fail(201, {"nothing": "here"})
        with pytest.raises(kitaru.KitaruLLMError, match="cannot read"):
            kitaru.llm("x", model="openai/gpt-4o-mini")

    def test_a_provider_error_fails_the_checkpoint_and_retry_continues(
        self, runtime: Runtime, openai_env: Any
    ) -> None:
        openai_env.fail(400, {"error": {"message": "bad"}})

        @flow
        def f() -> str:
            return kitaru.llm("x", model="openai/gpt-4o-mini")

        handle = f.run()
        assert handle.status == "failed"
        failed = [r for r in runtime.state.read_journal(handle.exec_id) if r.kind == "checkpoint_failed"]
        assert "KitaruLLMBadRequestError" in (failed[0].data or {})["error"]
        assert KitaruClient().executions.retry(handle.exec_id).wait(timeout=60) == "answer 2 to: x"

    def test_prompt_must_be_text(self) -> None:
        with pytest.raises(kitaru.KitaruUsageError):
            kitaru.llm(["not", "text"], model="openai/gpt-4o-mini")  # type: ignore[arg-type]

    def test_bad_name(self) -> None:
        with pytest.raises(kitaru.KitaruUsageError):
            kitaru.llm("x", model="openai/gpt-4o-mini", name="a:b")


class TestDefaults:
    def test_no_model_anywhere(self) -> None:
        with pytest.raises(kitaru.KitaruConfigError, match="kitaru model register"):
            kitaru.llm("x")

    def test_kitaru_model_env(self, openai_env: Any, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("KITARU_MODEL", "openai/gpt-4.1-mini")
        kitaru.llm("x")
        assert openai_env.requests[0].body["model"] == "gpt-4.1-mini"

    def test_missing_key_for_the_public_endpoint(self) -> None:
        with pytest.raises(kitaru.KitaruConfigError, match="ANTHROPIC_API_KEY"):
            kitaru.llm("x", model="anthropic/claude-3-5-haiku-latest")

    def test_unknown_provider(self) -> None:
        with pytest.raises(kitaru.KitaruConfigError, match="unknown provider 'mistral'"):
            kitaru.llm("x", model="mistral/large")

    def test_error_body_is_reported(self, openai_env: Any) -> None:
        openai_env.fail(422, {"message": "temperature out of range"})
        with pytest.raises(kitaru.KitaruLLMBadRequestError, match="temperature out of range"):
            kitaru.llm("x", model="openai/gpt-4o-mini", temperature=9)

    def test_json_reply_shape(self, openai_env: Any) -> None:
        # The server answers with exactly what kitaru sent it, so the test above can trust it.
        kitaru.llm("x", model="openai/gpt-4o-mini")
        assert json.loads(json.dumps(openai_env.requests[0].body))["model"] == "gpt-4o-mini"
