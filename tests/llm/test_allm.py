"""``await kitaru.allm()`` against the same local HTTP provider: the awaitable form sends the same
request, records the same way (a checkpoint at flow scope, inline inside one), is not paid for
again on resume, retries on the event loop with ``anyio.sleep`` (honouring ``Retry-After``) and
raises the same errors."""

from __future__ import annotations

import socket
from collections import Counter
from typing import Any

import anyio
import pytest

import kitaru
from kitaru import KitaruClient, checkpoint, flow
from kitaru._engine.runtime import Runtime
from kitaru.llm import LLMResponse, acomplete


def completed(runtime: Runtime, exec_id: str) -> Counter[str]:
    return Counter(r.call_id for r in runtime.state.read_journal(exec_id) if r.kind == "checkpoint_completed")


def call_logs(runtime: Runtime, exec_id: str, call_id: str) -> dict[str, object]:
    merged: dict[str, object] = {}
    for r in runtime.state.read_journal(exec_id):
        if r.kind == "log" and r.call_id == call_id:
            merged.update(r.data or {})
    return merged


def llm_names(runtime: Runtime, exec_id: str) -> set[str]:
    return {r.name for r in runtime.state.read_journal(exec_id) if r.call_id == "llm" and r.name}


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The delays ``anyio.sleep`` was asked for (the backoff between attempts is awaited)."""
    asked: list[float] = []
    real = anyio.sleep

    async def sleep(delay: float) -> None:
        asked.append(delay)
        await real(delay)

    monkeypatch.setattr(anyio, "sleep", sleep)
    return asked


class TestOutsideAFlow:
    def test_same_request_and_answer_as_the_sync_form(self, openai_env: Any, secret: str) -> None:
        async def main() -> str:
            return await kitaru.allm(
                "hello", model="openai/gpt-4o-mini", system="be brief", temperature=0.2, max_tokens=50
            )

        assert anyio.run(main) == "answer 1 to: hello"
        [seen] = openai_env.requests
        assert seen.path == "/v1/chat/completions"
        assert seen.headers["authorization"] == f"Bearer {secret}"
        assert seen.body == {
            "model": "gpt-4o-mini",
            "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello"}],
            "temperature": 0.2,
            "max_completion_tokens": 50,
        }

    def test_anthropic(self, anthropic_env: Any, secret: str) -> None:
        async def main() -> str:
            return await kitaru.allm("hi", model="anthropic/claude-3-5-haiku-latest")

        assert anyio.run(main) == "answer 1 to: hi"
        [seen] = anthropic_env.requests
        assert seen.path == "/v1/messages" and seen.headers["x-api-key"] == secret


class TestInAnAsyncFlow:
    def test_flow_scope_calls_are_checkpoints_and_not_paid_again_on_resume(
        self, runtime: Runtime, openai_env: Any
    ) -> None:
        @flow
        async def two_calls(topic: str) -> str:
            brief = await kitaru.allm(f"research {topic}", model="openai/gpt-4o-mini")
            await kitaru.wait_async(name="go")
            return await kitaru.allm(f"draft from {brief}", model="openai/gpt-4o-mini", system="editor")

        handle = two_calls.run("agents")
        assert handle.status == "waiting"
        assert openai_env.count == 1
        resumed = KitaruClient().executions.input(handle.exec_id, None)
        assert resumed.wait(timeout=60) == "answer 2 to: draft from answer 1 to: research agents"
        assert openai_env.count == 2  # the first call was replayed from the journal, not re-sent
        assert completed(runtime, handle.exec_id) == {"llm": 1, "llm:2": 1}
        arts = KitaruClient().artifacts.list(handle.exec_id)
        assert [a.call_id for a in arts if a.type == "prompt"] == ["llm", "llm:2"]
        assert [a.load() for a in arts if a.type == "response"] == [
            "answer 1 to: research agents",
            "answer 2 to: draft from answer 1 to: research agents",
        ]
        usage = call_logs(runtime, handle.exec_id, "llm")
        assert (usage["model"], usage["tokens_in"], usage["tokens_out"]) == ("openai/gpt-4o-mini", 12, 5)

    def test_inside_a_checkpoint_it_is_recorded_under_that_checkpoint(
        self, runtime: Runtime, openai_env: Any
    ) -> None:
        @checkpoint
        async def summarize(text: str) -> str:
            outline = await kitaru.allm(f"outline {text}", model="openai/gpt-4o-mini", name="outline")
            return await kitaru.allm(f"write {outline}", model="openai/gpt-4o-mini")

        @flow
        async def f() -> str:
            return await summarize("doc")

        handle = f.run()
        assert handle.wait(timeout=60) == "answer 2 to: write answer 1 to: outline doc"
        assert completed(runtime, handle.exec_id) == {"summarize": 1}
        logs = call_logs(runtime, handle.exec_id, "summarize")
        assert logs["outline.tokens_out"] == 5 and logs["tokens_out"] == 5
        names = sorted(a.name for a in KitaruClient().artifacts.list(handle.exec_id, type="prompt"))
        assert names == ["llm.prompt", "outline.prompt"]

    def test_the_same_journal_as_the_sync_form(self, runtime: Runtime, openai_env: Any) -> None:
        # An execution recorded with llm() replays under allm(): a flow may move to the async form.
        @flow
        def sync_version() -> str:
            return kitaru.llm("x", model="openai/gpt-4o-mini")

        @flow
        async def async_version() -> str:
            return await kitaru.allm("x", model="openai/gpt-4o-mini")

        by_sync, by_async = sync_version.run(), async_version.run()
        sync_names = {
            r.name for r in runtime.state.read_journal(by_sync.exec_id) if r.call_id == "llm" and r.name
        }
        async_names = {
            r.name for r in runtime.state.read_journal(by_async.exec_id) if r.call_id == "llm" and r.name
        }
        assert sync_names == async_names == {"_recorded"}


class TestRetriesAndErrors:
    def test_retry_after_is_honoured_with_anyio_sleep(self, openai_env: Any, sleeps: list[float]) -> None:
        openai_env.fail(429, retry_after="0.05")
        openai_env.fail(503)

        async def main() -> LLMResponse:
            return await acomplete("x", model="openai/gpt-4o-mini")

        response = anyio.run(main)
        assert response.text == "answer 3 to: x" and response.attempts == 3
        assert sleeps[0] == 0.05  # the server's Retry-After
        assert len(sleeps) == 2  # then exponential backoff, awaited as well

    def test_attempts_are_logged_in_a_flow(
        self, runtime: Runtime, openai_env: Any, sleeps: list[float]
    ) -> None:
        openai_env.fail(429, retry_after="0")

        @flow
        async def f() -> str:
            return await kitaru.allm("x", model="openai/gpt-4o-mini")

        handle = f.run()
        handle.wait(timeout=60)
        assert call_logs(runtime, handle.exec_id, "llm")["attempts"] == 2
        assert sleeps == [0.0]

    def test_auth_errors_are_not_retried(self, openai_env: Any) -> None:
        openai_env.fail(401)

        async def main() -> str:
            return await kitaru.allm("x", model="openai/gpt-4o-mini")

        with pytest.raises(kitaru.KitaruLLMAuthError, match="OPENAI_API_KEY") as info:
            anyio.run(main)
        assert info.value.status == 401 and openai_env.count == 1

    def test_rate_limits_give_up_after_the_retries(self, openai_env: Any) -> None:
        openai_env.fail(429, times=5, retry_after="0")

        async def main() -> str:
            return await kitaru.allm("x", model="openai/gpt-4o-mini")

        with pytest.raises(kitaru.KitaruLLMRateLimitError):
            anyio.run(main)
        assert openai_env.count == 3  # KITARU_LLM_RETRIES=2 in these tests

    def test_timeouts_are_retried_then_typed(self, openai_env: Any, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("KITARU_LLM_TIMEOUT", "0.2")
        monkeypatch.setenv("KITARU_LLM_RETRIES", "1")
        openai_env.slow(1.0, times=2)

        async def main() -> str:
            return await kitaru.allm("x", model="openai/gpt-4o-mini")

        with pytest.raises(kitaru.KitaruLLMTimeoutError, match="KITARU_LLM_TIMEOUT"):
            anyio.run(main)
        assert openai_env.count == 2

    def test_an_unreachable_server_is_a_clear_error(self, monkeypatch: pytest.MonkeyPatch) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        monkeypatch.setenv("OLLAMA_BASE_URL", f"http://127.0.0.1:{port}/v1")

        async def main() -> str:
            return await kitaru.allm("x", model="ollama/llama3")

        with pytest.raises(kitaru.KitaruLLMError, match="cannot reach ollama/llama3"):
            anyio.run(main)

    def test_a_provider_error_fails_the_checkpoint_and_retry_continues(
        self, runtime: Runtime, openai_env: Any
    ) -> None:
        openai_env.fail(400, {"error": {"message": "bad"}})

        @flow
        async def f() -> str:
            return await kitaru.allm("x", model="openai/gpt-4o-mini")

        handle = f.run()
        assert handle.status == "failed"
        failed = [r for r in runtime.state.read_journal(handle.exec_id) if r.kind == "checkpoint_failed"]
        assert "KitaruLLMBadRequestError" in (failed[0].data or {})["error"]
        assert KitaruClient().executions.retry(handle.exec_id).wait(timeout=60) == "answer 2 to: x"

    def test_bad_arguments(self) -> None:
        async def main() -> None:
            with pytest.raises(kitaru.KitaruUsageError):
                await kitaru.allm(["not", "text"], model="openai/gpt-4o-mini")  # type: ignore[arg-type]
            with pytest.raises(kitaru.KitaruUsageError):
                await kitaru.allm("x", model="openai/gpt-4o-mini", name="a:b")

        anyio.run(main)
