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
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Generator, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar, Self, TypeVar

from kitaru._install import install_hint
from kitaru.errors import KitaruConfigError, KitaruMissingDependencyError

__all__ = [
    "DEFAULT_PART_SIZE",
    "PrefixedStore",
    "RetryPolicy",
    "ThreadedStore",
    "arechunk",
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


class ThreadedStore:
    """The async :class:`~kitaru.store.ArtifactStore` contract over a store whose SDK blocks
    (google-cloud-storage): each call runs the store's blocking ``_put``, ``_put_stream``,
    ``_get``, ``_open``, ``_exists``, ``_list``, ``_delete`` and ``_close`` in a worker thread
    (``anyio.to_thread``), so the event loop never waits on the network. Streams stay streams:
    ``open`` and ``list`` hop once per item, and ``put_stream``'s thread pulls each chunk from the
    caller's async iterable on the caller's loop (``anyio.from_thread``), one at a time."""

    inline: ClassVar[bool] = False

    def _put(self, key: str, data: bytes) -> None:
        raise NotImplementedError

    def _put_stream(self, key: str, chunks: Iterator[bytes]) -> None:
        raise NotImplementedError

    def _get(self, key: str) -> bytes:
        raise NotImplementedError

    def _open(self, key: str, chunk_size: int) -> Generator[bytes, None, None]:
        raise NotImplementedError

    def _exists(self, key: str) -> bool:
        raise NotImplementedError

    def _list(self, prefix: str) -> Generator[str, None, None]:
        raise NotImplementedError

    def _delete(self, key: str) -> None:
        raise NotImplementedError

    def _close(self) -> None:
        raise NotImplementedError

    async def put(self, key: str, data: bytes) -> None:
        await _in_thread(self._put, key, data)

    async def put_stream(self, key: str, chunks: AsyncIterable[bytes]) -> None:
        import anyio.from_thread

        source = aiter(chunks)

        async def pull() -> bytes | None:
            try:
                return await anext(source)
            except StopAsyncIteration:
                return None

        def pulled() -> Iterator[bytes]:
            while (chunk := anyio.from_thread.run(pull)) is not None:
                yield chunk

        await _in_thread(self._put_stream, key, pulled())

    async def get(self, key: str) -> bytes:
        return await _in_thread(self._get, key)

    async def open(self, key: str, chunk_size: int = 1 << 20) -> AsyncIterator[bytes]:
        chunks = self._open(key, chunk_size)  # a generator: nothing happens until its first step
        try:
            while (chunk := await _in_thread(next, chunks, None)) is not None:
                yield chunk
        finally:
            await _in_thread(chunks.close)

    async def exists(self, key: str) -> bool:
        return await _in_thread(self._exists, key)

    async def list(self, prefix: str = "") -> AsyncIterator[str]:
        keys = self._list(prefix)
        try:
            while (key := await _in_thread(next, keys, None)) is not None:
                yield key
        finally:
            await _in_thread(keys.close)

    async def delete(self, key: str) -> None:
        await _in_thread(self._delete, key)

    async def aclose(self) -> None:
        await _in_thread(self._close)


async def _in_thread(fn: Callable[..., T], *args: Any) -> T:
    import anyio.to_thread

    return await anyio.to_thread.run_sync(fn, *args)


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

    async def acall(self, fn: Callable[[], Awaitable[T]], transient: Callable[[BaseException], bool]) -> T:
        """:meth:`call` for a coroutine function; the backoff sleeps on the loop (``anyio.sleep``)."""
        import anyio

        attempt = 1
        while True:
            try:
                return await fn()
            except Exception as exc:
                if attempt >= self.attempts or not transient(exc):
                    raise
            await anyio.sleep(self.delay(attempt))
            attempt += 1


async def arechunk(chunks: AsyncIterable[bytes], size: int) -> AsyncIterator[bytes]:
    """:func:`rechunk` for an async iterable of chunks (the same pieces, the same memory bound)."""
    blocks = _Reblocker(size)
    async for chunk in chunks:
        for piece in blocks.feed(chunk):
            yield piece
    for piece in blocks.end():
        yield piece


class _Reblocker:
    """The state of :func:`rechunk` / :func:`arechunk`, fed one chunk at a time."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.pending: list[bytes | memoryview] = []
        self.have = 0
        self.sent = False

    def feed(self, chunk: bytes) -> Iterator[bytes]:
        if not chunk:
            return
        if not isinstance(chunk, bytes):  # a mutable buffer the producer may reuse: copy it now
            chunk = bytes(chunk)
        size = self.size
        if not self.pending and len(chunk) == size:
            self.sent = True
            yield chunk
            return
        view = memoryview(chunk)
        while self.have + len(view) >= size:
            take = size - self.have
            self.pending.append(view[:take])
            piece = b"".join(self.pending)
            self.pending.clear()
            self.have = 0
            view = view[take:]
            self.sent = True
            yield piece
            del piece
        if len(view):
            self.pending.append(view)
            self.have += len(view)

    def end(self) -> Iterator[bytes]:
        if self.pending or not self.sent:
            yield b"".join(self.pending)


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
