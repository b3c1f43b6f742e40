"""Model aliases: ``kitaru model register|list|remove|default`` and how ``kitaru.llm()`` resolves them."""

from __future__ import annotations

import json
import stat
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import kitaru
from kitaru import _models
from kitaru.cli import main


def cli(*args: str) -> Any:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


class TestCommands:
    def test_register_list_default_remove(self, llm_env: Path) -> None:
        done = cli("model", "register", "fast", "--model", "openai/gpt-4o-mini", "--default")
        assert done.exit_code == 0 and "registered fast" in done.output
        cli("model", "register", "local", "--model", "ollama/llama3", "--base-url", "http://box:11434/v1")
        listed = cli("model", "list")
        assert "* fast" in listed.output.replace("*  fast", "* fast")
        assert "http://box:11434/v1" in listed.output
        data = json.loads(cli("model", "list", "-o", "json").output)
        assert data["default"] == "fast"
        assert [m["name"] for m in data["models"]] == ["fast", "local"]
        assert cli("model", "default", "local").exit_code == 0
        assert _models.load_config().default == "local"
        assert cli("model", "remove", "local").exit_code == 0
        config = _models.load_config()
        assert list(config.aliases) == ["fast"] and config.default is None
        assert (llm_env / "models.toml").exists()

    def test_the_file_is_private(self, llm_env: Path) -> None:
        cli("model", "register", "fast", "--model", "openai/gpt-4o-mini")
        mode = stat.S_IMODE((llm_env / "models.toml").stat().st_mode)
        assert mode == 0o600

    @pytest.mark.parametrize(
        ("model", "message"),
        [
            ("gpt-4o", "must be provider/model"),
            ("mistral/large", "unknown provider"),
            ("vllm/x", "--base-url"),
        ],
    )
    def test_register_refuses_bad_models(self, model: str, message: str) -> None:
        done = cli("model", "register", "x", "--model", model)
        assert done.exit_code == 2 and message in done.output

    def test_remove_unknown(self) -> None:
        done = cli("model", "remove", "nope")
        assert done.exit_code == 3 and "kitaru model list" in done.output

    def test_empty_list_says_how_to_start(self) -> None:
        assert "kitaru model register" in cli("model", "list").output

    def test_a_key_in_the_file_is_never_listed(self, llm_env: Path) -> None:
        _models.register("k", "openai/gpt-4o-mini", api_key="sk-in-file-123")
        assert "sk-in-file-123" not in cli("model", "list").output
        assert "sk-in-file-123" not in cli("model", "list", "-o", "json").output
        assert "(set in config)" in cli("model", "list").output


class TestResolution:
    def test_alias_with_base_url_and_key_env(self, provider: Any, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("TEAM_GATEWAY_KEY", "team-key-1")
        _models.register(
            "fast",
            "openai/gpt-4o-mini",
            base_url=provider.url + "/v1",
            api_key_env="TEAM_GATEWAY_KEY",
            default=True,
        )
        assert kitaru.llm("hello", model="fast") == "answer 1 to: hello"
        assert kitaru.llm("again") == "answer 2 to: again"  # the default model
        assert provider.requests[0].headers["authorization"] == "Bearer team-key-1"
        assert provider.requests[0].body["model"] == "gpt-4o-mini"

    def test_alias_costs_override_the_price_table(self, provider: Any) -> None:
        _models.register("cheap", "vllm/qwen", base_url=provider.url + "/v1", input_cost=1.0, output_cost=2.0)
        spec = _models.resolve("cheap")
        assert spec.cost(1_000_000, 500_000) == pytest.approx(2.0)

    def test_dated_snapshots_find_their_price(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("ANTHROPIC_API_KEY", "k")
        spec = _models.resolve("anthropic/claude-3-5-haiku-20241022")
        assert (spec.input_cost, spec.output_cost) == (0.80, 4.00)
        assert _models.resolve("ollama/llama3").input_cost is None

    def test_openrouter_model_names_keep_their_slashes(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("OPENROUTER_API_KEY", "k")
        spec = _models.resolve("openrouter/anthropic/claude-3.5-haiku")
        assert spec.model == "anthropic/claude-3.5-haiku"
        assert spec.base_url == "https://openrouter.ai/api/v1"

    def test_unknown_alias(self) -> None:
        with pytest.raises(kitaru.KitaruConfigError, match="kitaru model register fast"):
            kitaru.llm("x", model="fast")

    def test_broken_file(self, llm_env: Path) -> None:
        llm_env.mkdir(parents=True)
        (llm_env / "models.toml").write_text("default = [")
        with pytest.raises(kitaru.KitaruConfigError, match=r"models\.toml"):
            kitaru.llm("x")

    def test_names_with_toml_specials_round_trip(self) -> None:
        _models.register('we"ird.name', "ollama/llama3", base_url='http://h/"v1"')
        config = _models.load_config()
        assert config.aliases['we"ird.name'].base_url == 'http://h/"v1"'
