"""What the object-store artifact stores (S3, GCS, Azure Blob) share: URI parsing, bounded retries
with exponential backoff and jitter, re-blocking a stream into upload parts, option coercion, and
the error for a missing SDK.

The stores themselves live in their stack distributions (``stacks/aws``, ``stacks/gcp``,
``stacks/azure``); each maps its vendor's errors to kitaru's at its own boundary and uses these
helpers so that every cloud store retries, streams and reports the same way.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Self, TypeVar

from kitaru._install import install_hint
from kitaru.errors import KitaruConfigError, KitaruMissingDependencyError

__all__ = [
    "DEFAULT_PART_SIZE",
    "PrefixedStore",
    "RetryPolicy",
    "missing_dependency",
    "option_bool",
    "option_float",
    "option_int",
    "rechunk",
    "split_uri",
]

T = TypeVar("T")

#: Size of the parts a streamed upload is cut into, and of the buffer it holds: peak memory of
#: ``put_stream`` is a small multiple of this, whatever the blob's size.
DEFAULT_PART_SIZE = 8 << 20


class PrefixedStore:
    """What every object store does the same way: its keys live under ``prefix`` in one bucket or
    container, and ``reopen`` roots a store of the same kind, with the same options (endpoint,
    credentials), at another URI. Subclasses set ``uri``, ``prefix`` and ``_options`` and take
    ``(uri, **options)``."""

    uri: str
    prefix: str
    _options: dict[str, Any]

    def reopen(self, uri: str) -> Self:
        """A store with this one's options rooted at ``uri`` (another bucket or prefix)."""
        return type(self)(uri, **self._options)  # type: ignore[call-arg]

    def uri_for(self, key: str) -> str:
        return f"{self.uri}/{key}"

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key


def split_uri(uri: str, scheme: str) -> tuple[str, str]:
    """``scheme://bucket/some/prefix`` → ``("bucket", "some/prefix")`` (no trailing slash)."""
    head, sep, rest = uri.partition("://")
    if not sep or head.lower() != scheme:
        raise KitaruConfigError(f"expected a {scheme}:// URI, got {uri!r}")
    bucket, _, prefix = rest.partition("/")
    if not bucket:
        raise KitaruConfigError(f"{uri!r} names no bucket or container: use {scheme}://NAME/optional/prefix")
    return bucket, prefix.strip("/")


def missing_dependency(extra: str, module: str, exc: ImportError) -> KitaruMissingDependencyError:
    """The error for an SDK that is not installed, naming the extra that installs it."""
    return KitaruMissingDependencyError(
        f"the {extra} artifact store needs {module}, which is not installed ({exc}). "
        f"Install it with: {install_hint(extra)}"
    )


def option_int(value: Any, name: str) -> int:
    """An integer option, which may come as a string from a config file or the environment."""
    try:
        return int(value)
    except (TypeError, ValueError):
        raise KitaruConfigError(f"artifact store option {name}={value!r} is not an integer") from None


def option_float(value: Any, name: str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise KitaruConfigError(f"artifact store option {name}={value!r} is not a number") from None


def option_bool(value: Any, name: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in {"1", "true", "yes", "on"}:
        return True
    if text in {"0", "false", "no", "off", ""}:
        return False
    raise KitaruConfigError(f"artifact store option {name}={value!r} is not a boolean")


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Bounded retries of transient failures (throttling, 5xx, dropped connections), with
    exponential backoff and full jitter: attempt ``n`` sleeps a random time up to
    ``min(max_delay, base_delay * 2**n)``, so many clients hitting the same throttle spread out."""

    attempts: int = 5
    """Tries in all, the first one included (1: no retries)."""
    base_delay: float = 0.1
    max_delay: float = 5.0

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> RetryPolicy:
        """Read ``retries`` (extra attempts), ``retry_base_delay`` and ``retry_max_delay``."""
        default = cls()
        return cls(
            attempts=1 + max(0, option_int(options.pop("retries", default.attempts - 1), "retries")),
            base_delay=option_float(options.pop("retry_base_delay", default.base_delay), "retry_base_delay"),
            max_delay=option_float(options.pop("retry_max_delay", default.max_delay), "retry_max_delay"),
        )

    def delay(self, attempt: int) -> float:
        """Seconds to sleep after failed attempt number ``attempt`` (1-based)."""
        return random.uniform(0, min(self.max_delay, self.base_delay * 2 ** (attempt - 1)))

    def call(self, fn: Callable[[], T], transient: Callable[[BaseException], bool]) -> T:
        """Run ``fn``, again after a backoff while it raises what ``transient`` accepts, at most
        ``attempts`` times; the last error propagates."""
        attempt = 1
        while True:
            try:
                return fn()
            except Exception as exc:
                if attempt >= self.attempts or not transient(exc):
                    raise
            time.sleep(self.delay(attempt))
            attempt += 1


def rechunk(chunks: Iterable[bytes], size: int) -> Iterator[bytes]:
    """Re-block ``chunks`` into pieces of exactly ``size`` bytes (the last may be shorter, and is
    yielded even when empty if nothing else was).

    Memory: the chunks of the piece being filled, then the piece itself (one copy, made by a single
    join); no buffer is grown by reallocation, which would hold two copies while it moves.
    """
    pending: list[bytes | memoryview] = []
    have = 0
    sent = False
    for chunk in chunks:
        if not chunk:
            continue
        if not isinstance(chunk, bytes):  # a mutable buffer the producer may reuse: copy it now
            chunk = bytes(chunk)
        if not pending and len(chunk) == size:
            sent = True
            yield chunk
            continue
        view = memoryview(chunk)
        while have + len(view) >= size:
            take = size - have
            pending.append(view[:take])
            piece = b"".join(pending)
            pending.clear()
            have = 0
            view = view[take:]
            sent = True
            yield piece
            del piece
        if len(view):
            pending.append(view)
            have += len(view)
    if pending or not sent:
        yield b"".join(pending)
