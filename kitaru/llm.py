"""``kitaru.llm()``: one model call, paid for once per execution.

At flow scope each call is its own checkpoint (``llm``, ``llm:2``..., or ``name``): a resumed or
replayed execution gets the recorded response back without calling the provider again. Inside a
checkpoint it runs inline and is recorded under that checkpoint. Outside a flow it is a plain call.
Every recorded call saves its prompt (``type="prompt"``) and response (``type="response"``) as
artifacts and logs the model, tokens in and out, latency and, where the price is known, cost.

Providers speak one of two wire protocols over httpx: OpenAI-compatible chat completions (OpenAI,
OpenRouter, Ollama, vLLM and any compatible server) and Anthropic's messages API. Models are named
``provider/model`` or by an alias (see :mod:`kitaru._models` and ``kitaru model --help``). API keys
come from the environment (``OPENAI_API_KEY``, ``ANTHROPIC_API_KEY``, an alias's ``api_key_env``) or
the alias config, and are never written to artifacts, logs or error messages.

Rate limits (429, 529), timeouts, connection failures and server errors (5xx) are retried with
exponential backoff and jitter, honouring ``Retry-After``: ``KITARU_LLM_RETRIES`` (default 3) more
attempts, starting at ``KITARU_LLM_BACKOFF`` seconds (default 1). ``KITARU_LLM_TIMEOUT`` (default
120) bounds each attempt.
"""

from __future__ import annotations

import os
import random
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from kitaru.errors import (
    KitaruLLMAuthError,
    KitaruLLMBadRequestError,
    KitaruLLMError,
    KitaruLLMRateLimitError,
    KitaruLLMTimeoutError,
    KitaruMissingDependencyError,
    KitaruUsageError,
)

if TYPE_CHECKING:
    import httpx

    from kitaru._engine.checkpoint import Checkpoint
    from kitaru._models import ModelSpec

__all__ = ["LLMResponse", "complete", "llm"]

#: Anthropic requires max_tokens; this is used when the caller gives none.
ANTHROPIC_DEFAULT_MAX_TOKENS = 1024
_ANTHROPIC_VERSION = "2023-06-01"


@dataclass(frozen=True, slots=True)
class LLMResponse:
    """What one provider call returned."""

    text: str
    model: str  # the model the provider says answered
    tokens_in: int | None
    tokens_out: int | None
    latency_ms: float
    attempts: int
    finish_reason: str | None


def llm(
    prompt: str,
    *,
    model: str | None = None,
    system: str | None = None,
    temperature: float | None = None,
    max_tokens: int | None = None,
    name: str | None = None,
) -> str:
    """Ask a model and return its text answer.

    ``model`` is an alias (``kitaru model register``) or ``provider/model`` such as
    ``openai/gpt-4o-mini``, ``anthropic/claude-3-5-haiku-latest`` or ``ollama/llama3``; None uses
    ``KITARU_MODEL`` or the configured default. ``name`` names the checkpoint (at flow scope) and
    the saved prompt/response artifacts; it defaults to ``llm``.
    """
    if not isinstance(prompt, str):
        raise KitaruUsageError(f"kitaru.llm() takes the prompt as a str, got {type(prompt).__qualname__}.")
    label = name or "llm"
    if not label or ":" in label or "/" in label:
        raise KitaruUsageError(f"kitaru.llm() name {label!r} must be non-empty, without ':' or '/'.")
    from kitaru._engine.context import current_call, current_execution

    if current_execution() is None:
        return complete(
            prompt, model=model, system=system, temperature=temperature, max_tokens=max_tokens
        ).text
    if current_call() is not None:
        return _recorded(label, prompt, model, system, temperature, max_tokens, inline=True)
    # At flow scope: the call is a checkpoint of its own, so a resumed flow reuses the response.
    step = _checkpoint(label)
    text: str = step(label, prompt, model, system, temperature, max_tokens)
    return text


_CHECKPOINTS: dict[str, Checkpoint[..., str]] = {}


def _checkpoint(label: str) -> Checkpoint[..., str]:
    step = _CHECKPOINTS.get(label)
    if step is None:
        from kitaru._engine.checkpoint import checkpoint

        step = _CHECKPOINTS[label] = checkpoint(name=label)(_recorded)
    return step


def _recorded(
    label: str,
    prompt: str,
    model: str | None,
    system: str | None,
    temperature: float | None,
    max_tokens: int | None,
    inline: bool = False,
) -> str:
    """Make the call inside the running checkpoint and record it there. Inline calls (inside a
    user's checkpoint) prefix their log keys with their name when they have one, so several
    named calls in one checkpoint keep apart."""
    from kitaru._engine.api import log, save
    from kitaru._models import resolve

    spec = resolve(model)
    messages = _messages(prompt, system)
    request: dict[str, Any] = {"model": spec.full_name, "messages": messages}
    if temperature is not None:
        request["temperature"] = temperature
    if max_tokens is not None:
        request["max_tokens"] = max_tokens
    save(f"{label}.prompt", request, type="prompt")
    response = _call(spec, prompt, system, temperature, max_tokens)
    save(f"{label}.response", response.text, type="response")
    usage: dict[str, Any] = {
        "model": spec.full_name,
        "response_model": response.model,
        "tokens_in": response.tokens_in,
        "tokens_out": response.tokens_out,
        "latency_ms": round(response.latency_ms, 1),
        "attempts": response.attempts,
    }
    cost = spec.cost(response.tokens_in, response.tokens_out)
    if cost is not None:
        usage["cost_usd"] = cost
    if response.finish_reason:
        usage["finish_reason"] = response.finish_reason
    prefix = f"{label}." if inline and label != "llm" else ""
    log(**{prefix + k: v for k, v in usage.items()})
    return response.text


def complete(
    prompt: str,
    *,
    model: str | None = None,
    system: str | None = None,
    temperature: float | None = None,
    max_tokens: int | None = None,
) -> LLMResponse:
    """One provider call with retries, recording nothing: the text plus usage and latency."""
    from kitaru._models import resolve

    return _call(resolve(model), prompt, system, temperature, max_tokens)


def _messages(prompt: str, system: str | None) -> list[dict[str, str]]:
    messages = [{"role": "system", "content": system}] if system else []
    return [*messages, {"role": "user", "content": prompt}]


# -- the wire ------------------------------------------------------------------------------------


def _env_number(name: str, default: float) -> float:
    try:
        return float(os.environ[name])
    except (KeyError, ValueError):
        return default


def _call(
    spec: ModelSpec, prompt: str, system: str | None, temperature: float | None, max_tokens: int | None
) -> LLMResponse:
    try:
        import httpx
    except ImportError as exc:  # pragma: no cover - httpx is a core dependency
        raise KitaruMissingDependencyError(
            "kitaru.llm() needs httpx: install kitaru with its dependencies (`pip install kitaru`)."
        ) from exc
    if spec.provider.protocol == "anthropic":
        # Anthropic's base URL is conventionally given without /v1; accept it either way.
        url = spec.base_url.removesuffix("/v1") + "/v1/messages"
        headers = {"anthropic-version": _ANTHROPIC_VERSION}
        if spec.api_key:
            headers["x-api-key"] = spec.api_key
        body: dict[str, Any] = {
            "model": spec.model,
            "max_tokens": max_tokens if max_tokens is not None else ANTHROPIC_DEFAULT_MAX_TOKENS,
            "messages": [{"role": "user", "content": prompt}],
        }
        if system:
            body["system"] = system
    else:
        url = f"{spec.base_url}/chat/completions"
        headers = {"authorization": f"Bearer {spec.api_key}"} if spec.api_key else {}
        body = {"model": spec.model, "messages": _messages(prompt, system)}
        if max_tokens is not None:
            # OpenAI's own API wants the newer name; compatible servers know the older one.
            body["max_completion_tokens" if spec.provider.name == "openai" else "max_tokens"] = max_tokens
    if temperature is not None:
        body["temperature"] = temperature

    retries = int(_env_number("KITARU_LLM_RETRIES", 3))
    backoff = _env_number("KITARU_LLM_BACKOFF", 1.0)
    timeout = _env_number("KITARU_LLM_TIMEOUT", 120.0)
    attempt = 0
    with httpx.Client(timeout=timeout) as client:
        while True:
            attempt += 1
            started = time.perf_counter()
            try:
                reply = client.post(url, json=body, headers=headers)
                error = _classify(spec, reply)
            except httpx.TimeoutException:
                error = KitaruLLMTimeoutError(
                    f"{spec.full_name} at {spec.base_url} did not answer within {timeout:g} s "
                    f"(attempt {attempt}). Raise KITARU_LLM_TIMEOUT if the model is slow.",
                    provider=spec.provider.name,
                )
                reply = None
            except httpx.HTTPError as exc:
                error = KitaruLLMError(
                    f"cannot reach {spec.full_name} at {spec.base_url}: {type(exc).__name__}: "
                    f"{_redact(str(exc), spec)}. Check the base URL and that the server is up.",
                    provider=spec.provider.name,
                )
                reply = None
            latency = (time.perf_counter() - started) * 1000
            if error is None:
                assert reply is not None
                return _parse(spec, reply, latency, attempt)
            if not _retryable(error, reply) or attempt > retries:
                raise error
            time.sleep(_delay(reply, backoff, attempt))


def _retryable(error: KitaruLLMError, reply: httpx.Response | None) -> bool:
    if isinstance(error, KitaruLLMRateLimitError | KitaruLLMTimeoutError):
        return True
    if isinstance(error, KitaruLLMAuthError | KitaruLLMBadRequestError):
        return False
    return reply is None or reply.status_code >= 500  # connection failures and server errors


def _delay(reply: httpx.Response | None, backoff: float, attempt: int) -> float:
    """Seconds before the next attempt: the server's Retry-After if it sent one, else exponential
    backoff with jitter."""
    if reply is not None:
        after = reply.headers.get("retry-after")
        if after is not None:
            try:
                return min(max(float(after), 0.0), 60.0)
            except ValueError:
                pass
    return float(backoff * 2 ** (attempt - 1) * random.uniform(0.5, 1.5))


def _redact(text: str, spec: ModelSpec) -> str:
    if spec.api_key and len(spec.api_key) >= 4:
        text = text.replace(spec.api_key, "***")
    return text


def _provider_message(reply: httpx.Response, spec: ModelSpec) -> str:
    try:
        payload = reply.json()
    except ValueError:
        payload = None
    message = None
    if isinstance(payload, dict):
        err = payload.get("error")
        if isinstance(err, dict):
            message = err.get("message")
        elif isinstance(err, str):
            message = err
        message = message or payload.get("message")
    text = str(message) if message else reply.text
    return _redact(text.strip()[:500], spec)


def _classify(spec: ModelSpec, reply: httpx.Response) -> KitaruLLMError | None:
    status = reply.status_code
    if status < 300:
        return None
    where = f"{spec.full_name} at {spec.base_url}"
    said = _provider_message(reply, spec)
    p = spec.provider.name
    if status in (401, 403):
        key = spec.key_source or spec.provider.key_env or "the API key"
        return KitaruLLMAuthError(
            f"{where} refused the credentials (HTTP {status}: {said}). Check {key}.",
            provider=p,
            status=status,
        )
    if status in (429, 529):
        return KitaruLLMRateLimitError(
            f"{where} is rate-limiting or overloaded (HTTP {status}: {said}); retries did not get "
            "through. Slow down, or raise KITARU_LLM_RETRIES.",
            provider=p,
            status=status,
        )
    if status in (408, 504):
        return KitaruLLMTimeoutError(f"{where} timed out (HTTP {status}: {said}).", provider=p, status=status)
    if 400 <= status < 500:
        return KitaruLLMBadRequestError(
            f"{where} rejected the request (HTTP {status}: {said}).", provider=p, status=status
        )
    return KitaruLLMError(f"{where} failed (HTTP {status}: {said}).", provider=p, status=status)


def _parse(spec: ModelSpec, reply: httpx.Response, latency_ms: float, attempts: int) -> LLMResponse:
    try:
        payload = reply.json()
        if spec.provider.protocol == "anthropic":
            blocks = payload.get("content") or []
            text = "".join(b.get("text", "") for b in blocks if b.get("type") == "text")
            usage = payload.get("usage") or {}
            tokens_in, tokens_out = usage.get("input_tokens"), usage.get("output_tokens")
            finish = payload.get("stop_reason")
        else:
            choice = payload["choices"][0]
            text = choice["message"].get("content") or ""
            usage = payload.get("usage") or {}
            tokens_in, tokens_out = usage.get("prompt_tokens"), usage.get("completion_tokens")
            finish = choice.get("finish_reason")
    except (ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
        raise KitaruLLMError(
            f"{spec.full_name} at {spec.base_url} sent a reply kitaru cannot read ({type(exc).__name__}: "
            f"{exc}): {_redact(reply.text[:300], spec)}",
            provider=spec.provider.name,
            status=reply.status_code,
        ) from None
    return LLMResponse(
        text=text,
        model=str(payload.get("model") or spec.model),
        tokens_in=tokens_in,
        tokens_out=tokens_out,
        latency_ms=latency_ms,
        attempts=attempts,
        finish_reason=finish,
    )
