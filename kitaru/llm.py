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
from collections.abc import Awaitable, Mapping
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

__all__ = ["LLMResponse", "acomplete", "allm", "complete", "llm"]

#: What ``kitaru.llm()`` takes: a prompt, or a chat as a list of ``{"role": ..., "content": ...}``
#: messages (as Kitaru 0.18 accepted).
Prompt = str | list[dict[str, Any]]

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
    prompt: Prompt,
    *,
    model: str | None = None,
    system: str | None = None,
    temperature: float | None = None,
    max_tokens: int | None = None,
    name: str | None = None,
) -> str:
    """Ask a model and return its text answer.

    ``prompt`` is the user's message, or a whole chat: a list of ``{"role": "user" | "assistant"
    | "system", "content": ...}`` messages, sent as they are (``system=`` then comes first).
    ``model`` is an alias (``kitaru model register``) or ``provider/model`` such as
    ``openai/gpt-4o-mini``, ``anthropic/claude-3-5-haiku-latest`` or ``ollama/llama3``; None uses
    ``KITARU_MODEL`` (or Kitaru 0.18's ``KITARU_DEFAULT_MODEL``) or the configured default.
    ``name`` names the checkpoint (at flow scope) and
    the saved prompt/response artifacts; it defaults to ``llm``. In async code use
    ``await kitaru.allm(...)``, which never blocks the event loop.
    """
    label = _label(prompt, name)
    prompt = _chat(prompt)
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


async def allm(
    prompt: Prompt,
    *,
    model: str | None = None,
    system: str | None = None,
    temperature: float | None = None,
    max_tokens: int | None = None,
    name: str | None = None,
) -> str:
    """:func:`llm` for async code: ``await kitaru.allm(...)``.

    The same call, recording, retries (the backoff and ``Retry-After`` waits are ``anyio.sleep``)
    and errors, over httpx's async client on the caller's event loop, so an async flow's loop is
    never blocked by a model call. At flow scope it is a checkpoint of its own (``llm``,
    ``llm:2``..., sharing the numbering with :func:`llm`); inside a checkpoint it runs inline and
    is recorded under that checkpoint; outside a flow it is a plain call.
    """
    label = _label(prompt, name)
    prompt = _chat(prompt)
    from kitaru._engine.context import current_call, current_execution

    if current_execution() is None:
        response = await acomplete(
            prompt, model=model, system=system, temperature=temperature, max_tokens=max_tokens
        )
        return response.text
    if current_call() is not None:
        return await _arecorded(label, prompt, model, system, temperature, max_tokens, inline=True)
    step = _acheckpoint(label)
    text: str = await step(label, prompt, model, system, temperature, max_tokens)
    return text


def _label(prompt: object, name: str | None) -> str:
    if not isinstance(prompt, str | list | tuple):
        raise KitaruUsageError(
            "kitaru.llm() takes the prompt as a str or a list of chat messages, got "
            f"{type(prompt).__qualname__}."
        )
    label = name or "llm"
    if not label or ":" in label or "/" in label:
        raise KitaruUsageError(f"kitaru.llm() name {label!r} must be non-empty, without ':' or '/'.")
    return label


def _chat(prompt: Any) -> Prompt:
    """A prompt as sent: a str, or a list of messages each with a str ``role`` and a ``content``."""
    if isinstance(prompt, str):
        return prompt
    messages = []
    for i, message in enumerate(prompt):
        ok = isinstance(message, Mapping) and isinstance(message.get("role"), str) and "content" in message
        if not ok:
            raise KitaruUsageError(
                f"kitaru.llm(): message {i} of the chat must be a dict with 'role' and 'content' "
                f"keys, like {{'role': 'user', 'content': 'Hello'}}; got {message!r}."
            )
        messages.append(dict(message))
    if not messages:
        raise KitaruUsageError("kitaru.llm() was given an empty list of messages: give at least one.")
    return messages


_CHECKPOINTS: dict[str, Checkpoint[..., str]] = {}
_ACHECKPOINTS: dict[str, Checkpoint[..., Awaitable[str]]] = {}


def _checkpoint(label: str) -> Checkpoint[..., str]:
    step = _CHECKPOINTS.get(label)
    if step is None:
        from kitaru._engine.checkpoint import checkpoint

        step = _CHECKPOINTS[label] = checkpoint(name=label)(_recorded)
    return step


def _acheckpoint(label: str) -> Checkpoint[..., Awaitable[str]]:
    # Both forms journal under the same function name, so an execution may switch between
    # `llm()` and `await allm()` across versions of its code and still replay.
    step = _ACHECKPOINTS.get(label)
    if step is None:
        from kitaru._engine.checkpoint import checkpoint

        step = _ACHECKPOINTS[label] = checkpoint(name=label)(_arecorded)
        step.qualname = _recorded.__qualname__
    return step


def _recorded(
    label: str,
    prompt: Prompt,
    model: str | None,
    system: str | None,
    temperature: float | None,
    max_tokens: int | None,
    inline: bool = False,
) -> str:
    """Make the call inside the running checkpoint and record it there. Inline calls (inside a
    user's checkpoint) prefix their log keys with their name when they have one, so several
    named calls in one checkpoint keep apart."""
    spec = _record_request(label, prompt, model, system, temperature, max_tokens)
    response = _call(spec, prompt, system, temperature, max_tokens)
    return _record_response(label, spec, response, inline)


async def _arecorded(
    label: str,
    prompt: Prompt,
    model: str | None,
    system: str | None,
    temperature: float | None,
    max_tokens: int | None,
    inline: bool = False,
) -> str:
    """:func:`_recorded` with the provider call awaited."""
    spec = _record_request(label, prompt, model, system, temperature, max_tokens)
    response = await _acall(spec, prompt, system, temperature, max_tokens)
    return _record_response(label, spec, response, inline)


def _record_request(
    label: str,
    prompt: Prompt,
    model: str | None,
    system: str | None,
    temperature: float | None,
    max_tokens: int | None,
) -> ModelSpec:
    """Resolve the model and save the request as the ``prompt`` artifact (never the API key)."""
    from kitaru._engine.api import save
    from kitaru._models import resolve

    spec = resolve(model)
    request: dict[str, Any] = {"model": spec.full_name, "messages": _messages(prompt, system)}
    if temperature is not None:
        request["temperature"] = temperature
    if max_tokens is not None:
        request["max_tokens"] = max_tokens
    save(f"{label}.prompt", request, type="prompt")
    return spec


def _record_response(label: str, spec: ModelSpec, response: LLMResponse, inline: bool) -> str:
    """Save the answer as the ``response`` artifact and log the call's usage."""
    from kitaru._engine.api import log, save

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
    prompt: Prompt,
    *,
    model: str | None = None,
    system: str | None = None,
    temperature: float | None = None,
    max_tokens: int | None = None,
) -> LLMResponse:
    """One provider call with retries, recording nothing: the text plus usage and latency."""
    from kitaru._models import resolve

    return _call(resolve(model), prompt, system, temperature, max_tokens)


async def acomplete(
    prompt: Prompt,
    *,
    model: str | None = None,
    system: str | None = None,
    temperature: float | None = None,
    max_tokens: int | None = None,
) -> LLMResponse:
    """:func:`complete` for async code (httpx's async client, anyio.sleep between attempts)."""
    from kitaru._models import resolve

    return await _acall(resolve(model), prompt, system, temperature, max_tokens)


def _messages(prompt: Prompt, system: str | None) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = [{"role": "system", "content": system}] if system else []
    if isinstance(prompt, str):
        return [*messages, {"role": "user", "content": prompt}]
    return [*messages, *prompt]


def _anthropic_messages(prompt: Prompt, system: str | None) -> tuple[list[dict[str, Any]], str | None]:
    """Anthropic's messages API takes the system prompt apart: system messages of a chat join
    ``system=`` (in order), the others are sent as they are."""
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}], system
    systems = [system] if system else []
    chat = []
    for message in prompt:
        if message["role"] == "system":
            systems.append(str(message["content"]))
        else:
            chat.append(message)
    return chat, "\n\n".join(systems) or None


# -- the wire ------------------------------------------------------------------------------------


def _env_number(name: str, default: float) -> float:
    try:
        return float(os.environ[name])
    except (KeyError, ValueError):
        return default


def _request(
    spec: ModelSpec, prompt: Prompt, system: str | None, temperature: float | None, max_tokens: int | None
) -> tuple[str, dict[str, str], dict[str, Any]]:
    """The URL, headers and JSON body of one call in the provider's wire protocol."""
    if spec.provider.protocol == "anthropic":
        # Anthropic's base URL is conventionally given without /v1; accept it either way.
        url = spec.base_url.removesuffix("/v1") + "/v1/messages"
        headers = {"anthropic-version": _ANTHROPIC_VERSION}
        if spec.api_key:
            headers["x-api-key"] = spec.api_key
        chat, system = _anthropic_messages(prompt, system)
        body: dict[str, Any] = {
            "model": spec.model,
            "max_tokens": max_tokens if max_tokens is not None else ANTHROPIC_DEFAULT_MAX_TOKENS,
            "messages": chat,
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
    return url, headers, body


def _httpx() -> Any:
    try:
        import httpx
    except ImportError as exc:  # pragma: no cover - httpx is a core dependency
        raise KitaruMissingDependencyError(
            "kitaru.llm() needs httpx, one of kitaru's own dependencies: this environment lost it. "
            "Reinstall kitaru from your checkout (`pip install .`, or `./uvw sync` there)."
        ) from exc
    return httpx


def _policy() -> tuple[int, float, float]:
    """Retries, first backoff and per-attempt timeout, from the environment."""
    retries = int(_env_number("KITARU_LLM_RETRIES", 3))
    return retries, _env_number("KITARU_LLM_BACKOFF", 1.0), _env_number("KITARU_LLM_TIMEOUT", 120.0)


def _failed_to_send(exc: Exception, spec: ModelSpec, timeout: float, attempt: int) -> KitaruLLMError:
    """The error for an attempt that got no HTTP reply (a timeout, a connection failure)."""
    import httpx

    if isinstance(exc, httpx.TimeoutException):
        return KitaruLLMTimeoutError(
            f"{spec.full_name} at {spec.base_url} did not answer within {timeout:g} s "
            f"(attempt {attempt}). Raise KITARU_LLM_TIMEOUT if the model is slow.",
            provider=spec.provider.name,
        )
    return KitaruLLMError(
        f"cannot reach {spec.full_name} at {spec.base_url}: {type(exc).__name__}: "
        f"{_redact(str(exc), spec)}. Check the base URL and that the server is up.",
        provider=spec.provider.name,
    )


class _Attempts:
    """One model call's attempts under the retry policy (``KITARU_LLM_RETRIES`` and friends),
    shared by the sync and the async call so both retry, time and fail the same way."""

    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec
        self.retries, self.backoff, self.timeout = _policy()
        self.attempt = 0
        self._started = 0.0

    def begin(self) -> None:
        self.attempt += 1
        self._started = time.perf_counter()

    def settle(self, reply: httpx.Response | Exception) -> LLMResponse | float:
        """The response, or how long to sleep before the next attempt; raises when none is left.
        ``reply`` is the HTTP reply, or the httpx error sending the request raised."""
        latency = (time.perf_counter() - self._started) * 1000
        if isinstance(reply, Exception):
            error: KitaruLLMError | None = _failed_to_send(reply, self.spec, self.timeout, self.attempt)
            response = None
        else:
            error, response = _classify(self.spec, reply), reply
        if error is None:
            assert response is not None
            return _parse(self.spec, response, latency, self.attempt)
        if not _retryable(error, response) or self.attempt > self.retries:
            raise error
        return _delay(response, self.backoff, self.attempt)


def _call(
    spec: ModelSpec, prompt: Prompt, system: str | None, temperature: float | None, max_tokens: int | None
) -> LLMResponse:
    hx = _httpx()
    url, headers, body = _request(spec, prompt, system, temperature, max_tokens)
    attempts = _Attempts(spec)
    with hx.Client(timeout=attempts.timeout) as client:
        while True:
            attempts.begin()
            reply: httpx.Response | Exception
            try:
                reply = client.post(url, json=body, headers=headers)
            except hx.HTTPError as exc:
                reply = exc
            outcome = attempts.settle(reply)
            if isinstance(outcome, LLMResponse):
                return outcome
            time.sleep(outcome)


async def _acall(
    spec: ModelSpec, prompt: Prompt, system: str | None, temperature: float | None, max_tokens: int | None
) -> LLMResponse:
    """:func:`_call` on the caller's event loop: httpx's async client, backoff with anyio.sleep
    (same retries, same errors)."""
    import anyio

    hx = _httpx()
    url, headers, body = _request(spec, prompt, system, temperature, max_tokens)
    attempts = _Attempts(spec)
    async with hx.AsyncClient(timeout=attempts.timeout) as client:
        while True:
            attempts.begin()
            reply: httpx.Response | Exception
            try:
                reply = await client.post(url, json=body, headers=headers)
            except hx.HTTPError as exc:
                reply = exc
            outcome = attempts.settle(reply)
            if isinstance(outcome, LLMResponse):
                return outcome
            await anyio.sleep(outcome)


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
