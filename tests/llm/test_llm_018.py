"""``kitaru.llm()`` as Kitaru 0.18 code calls it: a chat as a list of messages,
``KITARU_DEFAULT_MODEL``, and an alias whose key lives in a kitaru secret
(``kitaru model register NAME --model M --secret S``)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from click.testing import CliRunner

import kitaru
from kitaru import KitaruClient, flow
from kitaru._engine.runtime import Runtime
from kitaru.cli import main
from kitaru.errors import KitaruConfigError, KitaruUsageError
from kitaru.secrets import KEY_ENV, new_key, set_secret

CHAT = [
    {"role": "user", "content": "Draft a release note headline."},
    {"role": "assistant", "content": "Kitaru adds durable replay controls."},
    {"role": "user", "content": "Now make it shorter."},
]


def cli(*args: str) -> Any:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


@flow
def headline() -> str:
    return kitaru.llm(CHAT, model="openai/gpt-4o-mini", system="terse", name="headline_refine")


class TestMessageLists:
    def test_a_chat_is_sent_as_it_is_after_the_system_prompt(self, openai_env: Any) -> None:
        text = kitaru.llm(CHAT, model="openai/gpt-4o-mini", system="be brief")
        assert text == "answer 1 to: Now make it shorter."
        [seen] = openai_env.requests
        assert seen.body["messages"] == [{"role": "system", "content": "be brief"}, *CHAT]

    def test_anthropic_gets_system_messages_as_its_system_prompt(self, anthropic_env: Any) -> None:
        chat = [{"role": "system", "content": "be kind"}, *CHAT]
        kitaru.llm(chat, model="anthropic/claude-3-5-haiku-latest", system="terse")
        [seen] = anthropic_env.requests
        assert seen.body["messages"] == CHAT
        assert seen.body["system"] == "terse\n\nbe kind"

    def test_in_a_flow_the_chat_is_recorded_and_paid_for_once(
        self, runtime: Runtime, openai_env: Any
    ) -> None:
        handle = headline.run()
        assert handle.wait(timeout=60) == "answer 1 to: Now make it shorter."
        [prompt] = KitaruClient().artifacts.list(handle.exec_id, type="prompt")
        assert prompt.name == "headline_refine.prompt"
        assert prompt.load()["messages"] == [{"role": "system", "content": "terse"}, *CHAT]
        assert openai_env.count == 1

    @pytest.mark.parametrize(
        "bad",
        [[{"content": "no role"}], [{"role": "user"}], ["just text"], []],
    )
    def test_malformed_messages_are_refused_before_any_call(self, openai_env: Any, bad: Any) -> None:
        with pytest.raises(KitaruUsageError, match=r"message|empty list"):
            kitaru.llm(bad, model="openai/gpt-4o-mini")
        assert openai_env.count == 0


class TestDefaultModelFromTheEnvironment:
    def test_kitaru_default_model_is_used_when_the_call_names_none(
        self, openai_env: Any, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("KITARU_DEFAULT_MODEL", "openai/gpt-4.1-nano")
        kitaru.llm("hi")
        assert openai_env.requests[-1].body["model"] == "gpt-4.1-nano"
        # An explicit model still wins.
        kitaru.llm("hi", model="openai/gpt-4o-mini")
        assert openai_env.requests[-1].body["model"] == "gpt-4o-mini"

    def test_it_may_name_an_alias(self, openai_env: Any, monkeypatch: pytest.MonkeyPatch) -> None:
        assert cli("model", "register", "fast", "--model", "openai/gpt-4o-mini").exit_code == 0
        monkeypatch.setenv("KITARU_DEFAULT_MODEL", "fast")
        kitaru.llm("hi")
        assert openai_env.requests[-1].body["model"] == "gpt-4o-mini"


class TestAliasWithASecret:
    @pytest.fixture
    def secrets_key(self, monkeypatch: pytest.MonkeyPatch) -> str:
        key = new_key()
        monkeypatch.setenv(KEY_ENV, key)
        return key

    def test_the_key_comes_from_the_linked_secret(
        self, provider: Any, monkeypatch: pytest.MonkeyPatch, secret: str, secrets_key: str
    ) -> None:
        monkeypatch.setenv("OPENAI_BASE_URL", provider.url + "/v1")
        set_secret("openai-creds", secret)
        done = cli("model", "register", "fast", "--model", "openai/gpt-4o-mini", "--secret", "openai-creds")
        assert done.exit_code == 0, done.output
        assert "secret 'openai-creds'" in done.output
        listed = json.loads(cli("model", "list", "-o", "json").output)
        assert listed["models"][0]["secret"] == "openai-creds"
        kitaru.llm("hi", model="fast")
        assert provider.requests[-1].headers["authorization"] == f"Bearer {secret}"

    def test_a_secret_of_several_values_gives_the_providers_entry(
        self, provider: Any, monkeypatch: pytest.MonkeyPatch, secret: str, secrets_key: str
    ) -> None:
        monkeypatch.setenv("ANTHROPIC_BASE_URL", provider.url)
        set_secret("creds", json.dumps({"OPENAI_API_KEY": "other", "ANTHROPIC_API_KEY": secret}))
        cli(
            "model", "register", "claude", "--model", "anthropic/claude-3-5-haiku-latest", "--secret", "creds"
        )
        kitaru.llm("hi", model="claude")
        assert provider.requests[-1].headers["x-api-key"] == secret

    def test_a_key_in_the_environment_wins_and_the_secret_is_not_read(
        self, openai_env: Any, secret: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.delenv(KEY_ENV, raising=False)  # reading the secret would fail without it
        cli("model", "register", "fast", "--model", "openai/gpt-4o-mini", "--secret", "missing-secret")
        kitaru.llm("hi", model="fast")
        assert openai_env.requests[-1].headers["authorization"] == f"Bearer {secret}"

    def test_a_secret_without_the_providers_entry_is_named(
        self, provider: Any, monkeypatch: pytest.MonkeyPatch, secrets_key: str
    ) -> None:
        monkeypatch.setenv("OPENAI_BASE_URL", provider.url + "/v1")
        set_secret("creds", json.dumps({"OTHER": "x"}))
        cli("model", "register", "fast", "--model", "openai/gpt-4o-mini", "--secret", "creds")
        with pytest.raises(KitaruConfigError, match="no OPENAI_API_KEY entry"):
            kitaru.llm("hi", model="fast")
        assert provider.count == 0
