"""API keys, browser sessions and CSRF tokens of the team server (no web framework imported here).

- **Keys** look like ``kitaru_<id>_<secret>``: ``id`` finds the stored record, ``secret`` carries
  256 bits of entropy. Only ``sha256`` of the whole key is stored (a key that strong needs no salt
  or slow hash: nobody can guess one from its hash), and a presented key is compared with
  :func:`hmac.compare_digest`. The key is shown once, when it is created.
- **Scopes**: ``read`` (look), ``answer`` (answer waits; and look), ``invoke`` (cancel, retry,
  resume, replay, invoke a deployment; and look), ``runner`` (only the state-store operations a
  worker needs), ``admin`` (everything, and alone may move deployment tags).
- **Sessions** (the web UI): logging in with a key sets an HttpOnly, SameSite=Strict cookie
  ``<key id>.<expiry>.<nonce>.<mac>``, the MAC keyed by the key's stored hash. Any replica
  checks it with the state store alone (no session table, no shared secret to distribute), and
  revoking the key ends its sessions. A session's CSRF token is a second MAC over its nonce: a
  request that a cookie authenticates must carry it (header ``X-CSRF-Token`` or form field
  ``csrf_token``) to change anything; a Bearer request needs none (no browser sends it by itself).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass

from kitaru.store import ApiKeyRecord

__all__ = [
    "SCOPES",
    "SESSION_COOKIE",
    "Principal",
    "csrf_token",
    "hash_key",
    "new_key",
    "parse_key",
    "session_cookie",
    "verify_key",
    "verify_session",
]

SCOPES: tuple[str, ...] = ("read", "answer", "invoke", "runner", "admin")
#: What each scope allows: whoever answers or steers an execution must see it; ``runner`` is
#: only the worker's state-store operations; ``admin`` is everything.
IMPLIES: dict[str, tuple[str, ...]] = {
    "read": ("read",),
    "answer": ("answer", "read"),
    "invoke": ("invoke", "read"),
    "runner": ("runner",),
    "admin": SCOPES,
}
SESSION_COOKIE = "kitaru_session"
SESSION_TTL = 12 * 3600.0
_PREFIX = "kitaru_"


@dataclass(frozen=True, slots=True)
class Principal:
    """Who made a request: the key's name and scopes, and how it came (``bearer`` or ``session``)."""

    key_id: str
    name: str
    scopes: frozenset[str]
    via: str
    nonce: str | None = None

    def allows(self, scope: str) -> bool:
        return any(scope in IMPLIES.get(s, (s,)) for s in self.scopes)


def hash_key(key: str) -> str:
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()


def new_key(name: str, scopes: list[str]) -> tuple[str, ApiKeyRecord]:
    """A fresh key and the record to store for it (which holds its hash, never the key)."""
    key_id = secrets.token_hex(6)
    key = f"{_PREFIX}{key_id}_{secrets.token_urlsafe(32)}"
    return key, ApiKeyRecord(
        id=key_id, name=name, key_hash=hash_key(key), scopes=list(scopes), created_at=time.time()
    )


def _is_key_id(text: str) -> bool:
    """Whether ``text`` can be a key's id (ours are 12 hex digits): anything else is refused
    before the store is asked, so a presented key or cookie cannot make the store fail (a NUL
    in a PostgreSQL query is a database error) or fill the key cache with long junk."""
    return 0 < len(text) <= 64 and text.isascii() and text.isalnum()


def parse_key(key: str) -> str | None:
    """The id part of a well-formed key, or None."""
    if not key.startswith(_PREFIX):
        return None
    key_id, sep, secret = key[len(_PREFIX) :].partition("_")
    return key_id if sep and secret and _is_key_id(key_id) else None


def verify_key(key: str, record: ApiKeyRecord | None) -> bool:
    """Whether ``key`` is the live key ``record`` stores (constant time in the key's bytes)."""
    if record is None or record.revoked_at is not None:
        return False
    return hmac.compare_digest(hash_key(key).encode(), record.key_hash.encode())


def _mac(record: ApiKeyRecord, message: str) -> str:
    return hmac.new(record.key_hash.encode(), message.encode(), hashlib.sha256).hexdigest()


def session_cookie(record: ApiKeyRecord, now: float | None = None) -> str:
    """A new session's cookie value for the key ``record``."""
    expires = int((now or time.time()) + SESSION_TTL)
    body = f"{record.id}.{expires}.{secrets.token_hex(16)}"
    return f"{body}.{_mac(record, 'session.' + body)}"


def session_key_id(cookie: str) -> str | None:
    parts = cookie.split(".")
    return parts[0] if len(parts) == 4 and _is_key_id(parts[0]) else None


def verify_session(cookie: str, record: ApiKeyRecord | None, now: float | None = None) -> str | None:
    """The session's nonce when ``cookie`` is a live session of the live key ``record``, else None."""
    parts = cookie.split(".")
    if record is None or record.revoked_at is not None or len(parts) != 4:
        return None
    key_id, expires, nonce, mac = parts
    body = f"{key_id}.{expires}.{nonce}"
    if key_id != record.id or not hmac.compare_digest(mac.encode(), _mac(record, "session." + body).encode()):
        return None
    if not expires.isdigit() or int(expires) < (now or time.time()):
        return None
    return nonce


def csrf_token(record: ApiKeyRecord, nonce: str) -> str:
    """The CSRF token of the session with ``nonce``."""
    return _mac(record, "csrf." + nonce)


def check_csrf(record: ApiKeyRecord, nonce: str, presented: str | None) -> bool:
    return presented is not None and hmac.compare_digest(
        presented.encode(), csrf_token(record, nonce).encode()
    )
