"""Secrets: ``kitaru secrets set|get|list|delete`` and ``kitaru.secret(name)`` inside flows.

A secret's value is encrypted before any store sees it, with AES-256-GCM under the key in
``KITARU_SECRETS_KEY`` (32 bytes, URL-safe base64; ``kitaru secrets new-key`` makes one) and the
secret's name as associated data, so a ciphertext copied onto another name does not decrypt. The
state store of the stack keeps only ciphertext (its ``secrets`` table); the key stays in the
environment of whoever reads or writes secrets: the user's shell, and a remote job's environment,
where the platform's own secret mechanism (a Kubernetes Secret, a cloud secret manager) provides it.
A remote job therefore receives no secret values, only the key that opens them in the state store.

What keeps a value out of kitaru's records: ``secret()`` is not a checkpoint (nothing is journaled
when it is called; a resumed flow reads the secret again), and every value read in this process is
masked (``***``) in the output and ``kitaru.log`` metadata a flow records. A value a checkpoint
*returns* is its output and is stored like any other: return what you computed with it instead.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from kitaru.errors import KitaruConfigError, KitaruNotFoundError, KitaruUsageError

if TYPE_CHECKING:
    from kitaru.store import SecretRecord

__all__ = [
    "KEY_ENV",
    "SecretInfo",
    "delete_secret",
    "get_secret",
    "list_secrets",
    "new_key",
    "redact",
    "redact_json",
    "secret",
    "set_secret",
]

#: The environment variable holding the key secrets are encrypted with.
KEY_ENV = "KITARU_SECRETS_KEY"

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,127}")
_VERSION = b"k1"  # the ciphertext layout: version, 12-byte nonce, AES-GCM ciphertext and tag
_NONCE = 12

# Values read in this process, masked wherever a flow's records could carry them (output capture,
# kitaru.log). Values shorter than 4 characters are not masked: masking them would mangle text.
_revealed: set[str] = set()
_revealed_lock = threading.Lock()


@dataclass(frozen=True, slots=True)
class SecretInfo:
    """A secret as listed: its name and times, never its value."""

    name: str
    created_at: float
    updated_at: float


def new_key() -> str:
    """A fresh random key for ``KITARU_SECRETS_KEY`` (32 bytes, URL-safe base64)."""
    return base64.urlsafe_b64encode(os.urandom(32)).decode("ascii")


def set_secret(name: str, value: str, *, stack: str | None = None) -> SecretInfo:
    """Store (or replace) secret ``name`` in the stack's state store, encrypted."""
    _check_name(name)
    if not isinstance(value, str):
        raise KitaruUsageError(f"secret {name!r}: the value must be a str, got {type(value).__qualname__}.")
    record = _store(stack).put_secret(name, _encrypt(name, value))
    return _info(record)


def get_secret(name: str, *, stack: str | None = None) -> str:
    """The value of secret ``name`` (decrypted here; KitaruNotFoundError when there is none)."""
    _check_name(name)
    record = _store(stack).get_secret(name)
    if record is None:
        raise _missing(name)
    return _reveal(_decrypt(name, record.ciphertext))


def list_secrets(*, stack: str | None = None) -> list[SecretInfo]:
    """Every secret's name and times, by name (values stay encrypted; no key is needed)."""
    return [_info(r) for r in _store(stack).list_secrets()]


def delete_secret(name: str, *, stack: str | None = None) -> None:
    """Remove secret ``name`` (KitaruNotFoundError when there is none)."""
    _check_name(name)
    if not _store(stack).delete_secret(name):
        raise _missing(name)


def secret(name: str) -> str:
    """The value of secret ``name``, for use inside a flow or checkpoint (or anywhere).

    Read from the state store of the stack the flow runs on and decrypted with
    ``KITARU_SECRETS_KEY``; nothing is journaled, so a resumed or replayed flow reads the current
    value again. The value is masked (``***``) in the output and log metadata kitaru records."""
    from kitaru._engine.context import current_execution

    _check_name(name)
    ctx = current_execution()
    if ctx is None:
        return get_secret(name)
    astate = ctx.runtime.astate
    getter = getattr(astate, "get_secret", None)
    if getter is None:
        raise _no_secrets(ctx.runtime.stack_name)
    record: SecretRecord | None = ctx.state_call(getter, name)
    if record is None:
        raise _missing(name)
    return _reveal(_decrypt(name, record.ciphertext))


def redact(text: str) -> str:
    """``text`` with the secret values read in this process masked."""
    if not _revealed:
        return text
    for value in sorted(_revealed, key=len, reverse=True):
        if value in text:
            text = text.replace(value, "***")
    return text


def redact_json(value: Any) -> Any:
    """``redact`` through the strings of a JSON-like value (kitaru.log metadata)."""
    if not _revealed:
        return value
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: redact_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [redact_json(v) for v in value]
    return value


# -- internals -------------------------------------------------------------------------------


def _reveal(value: str) -> str:
    if len(value) >= 4:
        with _revealed_lock:
            _revealed.add(value)
    return value


def _check_name(name: str) -> None:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise KitaruUsageError(
            f"secret name {name!r} must start with a letter or '_' and hold only letters, digits, "
            "'_', '.' and '-' (at most 128 characters)."
        )


def _missing(name: str) -> KitaruNotFoundError:
    return KitaruNotFoundError(
        f"no secret {name!r} in the active stack's state store. Create it with "
        f"`kitaru secrets set {name}` (it reads the value from stdin); list them with `kitaru secrets list`."
    )


def _no_secrets(stack: str | None) -> KitaruConfigError:
    return KitaruConfigError(
        f"the state store of stack {stack!r} does not keep secrets (only SQLite, PostgreSQL and "
        "memory state stores do). Use a stack whose state store is one of them: `kitaru stack list`."
    )


def _store(stack: str | None) -> Any:
    from kitaru._engine.runtime import get_runtime

    if stack is None:
        # After `kitaru login` the secrets are the server's; they still are encrypted and
        # decrypted here, so the server only ever holds ciphertext.
        from kitaru.remote._login import current_login

        login = current_login()
        if login is not None:
            from kitaru.remote.client import shared_client

            return shared_client(login.url, login.key).secrets

    runtime = get_runtime(stack)
    state = runtime.state
    if getattr(runtime.astate, "put_secret", None) is None:
        raise _no_secrets(runtime.stack_name)
    return state


def _info(record: SecretRecord) -> SecretInfo:
    return SecretInfo(record.name, record.created_at, record.updated_at)


def _key() -> bytes:
    raw = os.environ.get(KEY_ENV, "").strip()
    if not raw:
        raise KitaruConfigError(
            f"{KEY_ENV} is not set: kitaru encrypts secrets with it and needs it to read or write "
            f"one. Create a key once with `export {KEY_ENV}=$(kitaru secrets new-key)`, keep it "
            "somewhere safe, and give the same key to every process (and remote job) that uses secrets."
        )
    try:
        key = base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4))
    except (binascii.Error, ValueError):
        key = b""
    if len(key) != 32:
        raise KitaruConfigError(
            f"{KEY_ENV} is not a valid key: it must be 32 bytes in URL-safe base64 (44 characters), "
            f"as `kitaru secrets new-key` prints."
        )
    return key


def _aad(name: str) -> bytes:
    return b"kitaru-secret\x00" + name.encode("utf-8")


def _encrypt(name: str, value: str) -> bytes:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    nonce = os.urandom(_NONCE)
    return _VERSION + nonce + AESGCM(_key()).encrypt(nonce, value.encode("utf-8"), _aad(name))


def _decrypt(name: str, blob: bytes) -> str:
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    key = _key()
    if not blob.startswith(_VERSION) or len(blob) < len(_VERSION) + _NONCE + 16:
        raise KitaruConfigError(
            f"secret {name!r} is not in a format this kitaru reads; set it again with "
            f"`kitaru secrets set {name}`."
        )
    nonce, body = blob[len(_VERSION) : len(_VERSION) + _NONCE], blob[len(_VERSION) + _NONCE :]
    try:
        return AESGCM(key).decrypt(nonce, body, _aad(name)).decode("utf-8")
    except InvalidTag:
        raise KitaruConfigError(
            f"secret {name!r} cannot be decrypted with the key in {KEY_ENV}: it was stored with "
            f"another key (or its stored bytes were changed). Set {KEY_ENV} to the key it was stored "
            f"with, or store it again under this key with `kitaru secrets set {name}`."
        ) from None
