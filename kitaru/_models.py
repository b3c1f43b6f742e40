"""Model aliases for ``kitaru.llm()``: which provider and model a name means, and where its key is.

Aliases live in a small TOML file, ``models.toml`` in kitaru's config directory
(``$KITARU_CONFIG_DIR``, else ``$XDG_CONFIG_HOME/kitaru``, else ``~/.config/kitaru``)::

    default = "fast"

    [models.fast]
    model = "openai/gpt-4o-mini"

    [models.local]
    model = "ollama/llama3"
    base_url = "http://gpu-box:11434/v1"

``kitaru model register|list|remove|default`` edit it. A model string is either an alias or
``provider/model``; the provider says which wire protocol is spoken (OpenAI-compatible chat
completions, or Anthropic's messages API), the default base URL, and which environment variable
holds the key. Keys are read when a call is made and never written anywhere else.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kitaru.errors import KitaruConfigError, KitaruUsageError

__all__ = [
    "PROVIDERS",
    "ModelAlias",
    "ModelSpec",
    "ModelsConfig",
    "Provider",
    "load_config",
    "models_file",
    "register",
    "remove",
    "resolve",
    "set_default",
]


@dataclass(frozen=True, slots=True)
class Provider:
    """A kind of model endpoint: its wire protocol, default base URL and key variable."""

    name: str
    protocol: str  # "openai" (chat completions) or "anthropic" (messages)
    base_url: str | None
    key_env: str | None
    base_url_env: str | None
    key_required: bool = True


PROVIDERS: dict[str, Provider] = {
    p.name: p
    for p in (
        Provider("openai", "openai", "https://api.openai.com/v1", "OPENAI_API_KEY", "OPENAI_BASE_URL"),
        Provider(
            "anthropic", "anthropic", "https://api.anthropic.com", "ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL"
        ),
        Provider(
            "openrouter",
            "openai",
            "https://openrouter.ai/api/v1",
            "OPENROUTER_API_KEY",
            "OPENROUTER_BASE_URL",
        ),
        Provider(
            "ollama", "openai", "http://localhost:11434/v1", None, "OLLAMA_BASE_URL", key_required=False
        ),
        Provider("vllm", "openai", None, "VLLM_API_KEY", "VLLM_BASE_URL", key_required=False),
    )
}

# USD per million tokens (input, output) for a few common models, so usage logs can carry a cost.
# Prices move: an alias's `input_cost`/`output_cost` override these.
_PRICES: dict[str, tuple[float, float]] = {
    "gpt-4o-mini": (0.15, 0.60),
    "gpt-4o": (2.50, 10.00),
    "gpt-4.1": (2.00, 8.00),
    "gpt-4.1-mini": (0.40, 1.60),
    "gpt-4.1-nano": (0.10, 0.40),
    "claude-3-5-haiku": (0.80, 4.00),
    "claude-3-haiku": (0.25, 1.25),
    "claude-3-5-sonnet": (3.00, 15.00),
    "claude-3-7-sonnet": (3.00, 15.00),
    "claude-sonnet-4": (3.00, 15.00),
    "claude-opus-4": (15.00, 75.00),
}


@dataclass(frozen=True, slots=True)
class ModelAlias:
    """One ``[models.NAME]`` table of the config file."""

    name: str
    model: str
    base_url: str | None = None
    api_key_env: str | None = None
    api_key: str | None = None
    input_cost: float | None = None
    output_cost: float | None = None
    secret: str | None = None
    """A kitaru secret holding the API key, read when a call is made and the environment has no
    key (``kitaru model register NAME --model M --secret S``, as in Kitaru 0.18)."""

    def to_dict(self) -> dict[str, Any]:
        """The alias for display: a key stored in the file is reported, never shown."""
        return {
            "name": self.name,
            "model": self.model,
            "base_url": self.base_url,
            "api_key_env": self.api_key_env,
            "api_key": "(set in config)" if self.api_key else None,
            "input_cost": self.input_cost,
            "output_cost": self.output_cost,
            "secret": self.secret,
        }


@dataclass(slots=True)
class ModelsConfig:
    """The parsed config file."""

    default: str | None = None
    aliases: dict[str, ModelAlias] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """A resolved model: everything a call needs. ``api_key`` is read from the environment or the
    config at resolve time and must never be stored or logged (``repr`` hides it)."""

    label: str  # what the caller asked for: an alias or "provider/model"
    provider: Provider
    model: str  # the provider's model name
    base_url: str
    api_key: str | None = field(repr=False)
    key_source: str | None  # where the key came from (an env var name, or "config"), for messages
    input_cost: float | None
    output_cost: float | None

    @property
    def full_name(self) -> str:
        return f"{self.provider.name}/{self.model}"

    def cost(self, tokens_in: int | None, tokens_out: int | None) -> float | None:
        """USD for the tokens, where the price is known."""
        if self.input_cost is None or self.output_cost is None or tokens_in is None or tokens_out is None:
            return None
        return round((tokens_in * self.input_cost + tokens_out * self.output_cost) / 1_000_000, 8)


def config_dir() -> Path:
    explicit = os.environ.get("KITARU_CONFIG_DIR")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CONFIG_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".config"
    return base / "kitaru"


def models_file() -> Path:
    """Where model aliases are kept."""
    return config_dir() / "models.toml"


def load_config(path: Path | None = None) -> ModelsConfig:
    """Read the aliases file; a missing file is an empty config."""
    import tomllib

    path = path or models_file()
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        return ModelsConfig()
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise KitaruConfigError(
            f"cannot read model aliases from {path}: {exc}. Fix or remove the file."
        ) from None
    config = ModelsConfig(default=raw.get("default"))
    tables = raw.get("models", {})
    if not isinstance(tables, dict):
        raise KitaruConfigError(f"{path}: `models` must be a table of aliases.")
    for name, table in tables.items():
        if not isinstance(table, dict) or not isinstance(table.get("model"), str):
            raise KitaruConfigError(f'{path}: alias {name!r} needs a `model = "provider/model"` entry.')
        config.aliases[name] = ModelAlias(
            name=name,
            model=table["model"],
            base_url=table.get("base_url"),
            api_key_env=table.get("api_key_env"),
            api_key=table.get("api_key"),
            input_cost=_number(table.get("input_cost"), path, name),
            output_cost=_number(table.get("output_cost"), path, name),
            secret=table.get("secret"),
        )
    return config


def _key_from_secret(name: str, key_env: str | None) -> str:
    """The API key in kitaru secret ``name``: its value, or, when the value is a JSON object of
    environment variables (``{"OPENAI_API_KEY": "sk-..."}``, how 0.18 secrets held several keys),
    the entry named ``key_env``."""
    from kitaru.secrets import secret

    value = secret(name)
    try:
        parsed = json.loads(value)
    except ValueError:
        return value
    if not isinstance(parsed, dict):
        return value
    found = parsed.get(key_env) if key_env else None
    if not isinstance(found, str):
        raise KitaruConfigError(
            f"secret {name!r} holds several values but no {key_env or 'API key'} entry (it has: "
            f"{', '.join(sorted(parsed))}). Store the key under that name in the secret."
        )
    return found


def _number(value: Any, path: Path, name: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise KitaruConfigError(f"{path}: alias {name!r}: costs are numbers (USD per million tokens).")
    return float(value)


def _write(config: ModelsConfig, path: Path | None = None) -> Path:
    """Write the config atomically; the file is private to the user (it may hold a key)."""
    path = path or models_file()
    lines = ["# kitaru model aliases: edit with `kitaru model register|remove|default`.", ""]
    if config.default:
        lines += [f"default = {json.dumps(config.default)}", ""]
    for alias in config.aliases.values():
        lines.append(f"[models.{json.dumps(alias.name)}]")
        for key in ("model", "base_url", "api_key_env", "api_key", "input_cost", "output_cost", "secret"):
            value = getattr(alias, key)
            if value is not None:
                lines.append(f"{key} = {json.dumps(value)}")
        lines.append("")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write("\n".join(lines))
    os.replace(tmp, path)
    return path


def _check_alias_name(name: str) -> None:
    if not name or "/" in name or any(c.isspace() for c in name):
        raise KitaruUsageError(f"alias {name!r} must be non-empty, without '/' or spaces.")


def _check_base_url(base_url: str) -> None:
    """A base URL is where requests go: it needs an http(s) scheme and a host."""
    from urllib.parse import urlparse

    try:
        parsed = urlparse(base_url)
        host = parsed.hostname
    except ValueError:
        host = None
        parsed = None
    if parsed is None or parsed.scheme not in ("http", "https") or not host:
        raise KitaruUsageError(
            f"--base-url {base_url!r} is not an http(s) URL with a host; give one like "
            "http://localhost:11434/v1 or https://proxy.example.com/v1."
        )


def register(
    name: str,
    model: str,
    *,
    base_url: str | None = None,
    api_key_env: str | None = None,
    api_key: str | None = None,
    input_cost: float | None = None,
    output_cost: float | None = None,
    default: bool = False,
    secret: str | None = None,
) -> ModelAlias:
    """Add or replace alias ``name``; ``default=True`` also makes it the default model.
    ``secret`` names a kitaru secret that holds the key when the environment has none."""
    _check_alias_name(name)
    if secret is not None:
        from kitaru.secrets import _check_name

        _check_name(secret)
    provider, _, model_name = model.partition("/")
    if not model_name:
        raise KitaruUsageError(
            f"--model {model!r} must be provider/model, e.g. openai/gpt-4o-mini "
            f"(providers: {', '.join(PROVIDERS)})."
        )
    if provider not in PROVIDERS:
        raise KitaruUsageError(
            f"unknown provider {provider!r} in {model!r}; known: {', '.join(PROVIDERS)}. Any "
            "OpenAI-compatible server works as `openai/<model>` or `vllm/<model>` with --base-url."
        )
    if base_url is not None:
        _check_base_url(base_url)
    if provider == "vllm" and not base_url and not os.environ.get("VLLM_BASE_URL"):
        raise KitaruUsageError("a vllm model needs --base-url (or VLLM_BASE_URL), e.g. http://host:8000/v1.")
    config = load_config()
    alias = ModelAlias(name, model, base_url, api_key_env, api_key, input_cost, output_cost, secret)
    config.aliases[name] = alias
    if default:
        config.default = name
    _write(config)
    return alias


def remove(name: str) -> None:
    config = load_config()
    if name not in config.aliases:
        raise KitaruConfigError(f"no model alias {name!r}; see `kitaru model list`.")
    del config.aliases[name]
    if config.default == name:
        config.default = None
    _write(config)


def set_default(name: str) -> None:
    config = load_config()
    if name not in config.aliases and "/" not in name:
        raise KitaruConfigError(
            f"no model alias {name!r}; register it first (`kitaru model register {name} --model "
            "provider/model`) or give a provider/model string."
        )
    config.default = name
    _write(config)


def resolve(model: str | None, config: ModelsConfig | None = None) -> ModelSpec:
    """Turn what the caller asked for (an alias, ``provider/model``, or None for the default) into a
    model spec with its endpoint and key."""
    config = config if config is not None else load_config()
    from kitaru.config import configured

    asked = (
        model
        or configured("model")
        or os.environ.get("KITARU_MODEL")
        or os.environ.get("KITARU_DEFAULT_MODEL")  # Kitaru 0.18's name for it
        or config.default
    )
    if not asked:
        raise KitaruConfigError(
            "kitaru.llm() has no model: pass model='provider/model' (e.g. 'openai/gpt-4o-mini'), "
            "set KITARU_MODEL (or KITARU_DEFAULT_MODEL), or register a default: `kitaru model "
            "register fast --model openai/gpt-4o-mini --default`."
        )
    alias = config.aliases.get(asked)
    target = alias.model if alias else asked
    provider_name, _, model_name = target.partition("/")
    if not model_name:
        known = ", ".join(config.aliases) or "none yet"
        raise KitaruConfigError(
            f"model {asked!r} is neither a registered alias (known: {known}) nor provider/model. "
            f"Register it: `kitaru model register {asked} --model openai/gpt-4o-mini`."
        )
    provider = PROVIDERS.get(provider_name)
    if provider is None:
        raise KitaruConfigError(
            f"model {asked!r}: unknown provider {provider_name!r}; known: {', '.join(PROVIDERS)}."
        )
    base_url = (
        (alias.base_url if alias else None)
        or (os.environ.get(provider.base_url_env) if provider.base_url_env else None)
        or provider.base_url
    )
    if not base_url:
        raise KitaruConfigError(
            f"model {asked!r} needs a base URL: register the alias with --base-url, or set "
            f"{provider.base_url_env}."
        )
    key, source = None, None
    if alias and alias.api_key_env:
        key, source = os.environ.get(alias.api_key_env) or None, alias.api_key_env
    if key is None and alias and alias.api_key:
        key, source = alias.api_key, "config"
    if key is None and provider.key_env:
        key, source = os.environ.get(provider.key_env) or None, source or provider.key_env
    if key is None and alias and alias.secret:
        # As in Kitaru 0.18: a key in the environment wins; the linked secret is read only when
        # there is none (so nothing needs KITARU_SECRETS_KEY where the key is in the env).
        key = _key_from_secret(alias.secret, alias.api_key_env or provider.key_env)
        source = f"secret {alias.secret!r}"
    custom_endpoint = base_url.rstrip("/") != (provider.base_url or "").rstrip("/")
    if key is None and provider.key_required and not custom_endpoint:
        raise KitaruConfigError(
            f"model {asked!r} needs an API key: set {source or provider.key_env} in the environment."
        )
    price = _PRICES.get(model_name.rpartition("/")[2]) or _dated_price(model_name)
    input_cost = alias.input_cost if alias and alias.input_cost is not None else (price[0] if price else None)
    output_cost = (
        alias.output_cost if alias and alias.output_cost is not None else (price[1] if price else None)
    )
    return ModelSpec(
        label=asked,
        provider=provider,
        model=model_name,
        base_url=base_url.rstrip("/"),
        api_key=key,
        key_source=source,
        input_cost=input_cost,
        output_cost=output_cost,
    )


def price_of(model: str) -> tuple[float, float] | None:
    """USD per million tokens (input, output) for a recorded ``provider/model``: a registered
    alias of that model with both costs set wins (the per-alias override), else the table."""
    aliases: list[ModelAlias]
    try:
        aliases = list(load_config().aliases.values())
    except KitaruConfigError:
        aliases = []  # a broken models file must not hide the table's prices
    for alias in aliases:
        if alias.model == model and alias.input_cost is not None and alias.output_cost is not None:
            return alias.input_cost, alias.output_cost
    model_name = model.partition("/")[2] or model
    return _PRICES.get(model_name.rpartition("/")[2]) or _dated_price(model_name)


def _dated_price(model_name: str) -> tuple[float, float] | None:
    """Prices of dated snapshots (``claude-3-5-haiku-20241022``, ``gpt-4o-2024-08-06``)."""
    base = model_name.rpartition("/")[2]
    for known in sorted(_PRICES, key=len, reverse=True):
        if base.startswith(known + "-"):
            return _PRICES[known]
    return None
