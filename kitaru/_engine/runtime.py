"""The process-wide runtime: the open stores, this process's lease identity, and the heartbeat."""

from __future__ import annotations

import hashlib
import os
import socket
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar, cast

from kitaru import serialization
from kitaru._ids import new_id
from kitaru.config import env_float
from kitaru.errors import KitaruConflictError, KitaruNotFoundError, KitaruStoreError
from kitaru.store import (
    ArtifactRecord,
    ArtifactStore,
    JournalRecord,
    StateStore,
    SyncArtifactStore,
    SyncStateStore,
    SyncView,
    sync_view,
)

__all__ = [
    "INFLIGHT",
    "Runtime",
    "close_stack_runtimes",
    "get_runtime",
    "read_only_runtime",
    "release_default_runtime",
    "set_runtime",
    "use_runtime",
]

T = TypeVar("T")

#: Execution metadata key under which the heartbeat notes the checkpoint attempts in flight.
INFLIGHT = "inflight"
#: The execution metadata key of its resolved options (``cache``, ``retries``, ``image``; see
#: :class:`kitaru.config.ExecutionOptions`), read by whoever drives it, wherever.
OPTIONS_METADATA = "options"

#: The shortest lease that holds: a runner renews every TTL/3 seconds (at most every
#: ``KITARU_HEARTBEAT`` seconds), so a lease survives two late renewals; below this, one stall of the
#: process or the store lets another process take over a live runner and run its work twice.
MIN_LEASE_TTL = 3.0
_DEFAULT_LEASE_TTL = 30.0
_DEFAULT_HEARTBEAT = 2.0


def lease_timing(lease_ttl: float | None = None, heartbeat: float | None = None) -> tuple[float, float]:
    """The lease TTL (``KITARU_LEASE_TTL``) and the heartbeat derived from it: TTL/3, capped at
    ``KITARU_HEARTBEAT`` (default 2 s). A TTL too short to hold is a KitaruConfigError."""
    from kitaru.errors import KitaruConfigError

    ttl = lease_ttl if lease_ttl is not None else env_float("KITARU_LEASE_TTL", _DEFAULT_LEASE_TTL)
    if not ttl >= MIN_LEASE_TTL:
        raise KitaruConfigError(
            f"KITARU_LEASE_TTL={ttl:g} is too short for a lease to hold: a runner renews its lease "
            f"every TTL/3 seconds, and with less than {MIN_LEASE_TTL:g} s one slow renewal lets "
            "another process take over a live runner and run its checkpoints a second time. Set "
            f"KITARU_LEASE_TTL to {MIN_LEASE_TTL:g} or more (default {_DEFAULT_LEASE_TTL:g})."
        )
    cap = heartbeat or env_float("KITARU_HEARTBEAT", _DEFAULT_HEARTBEAT)
    return ttl, min(cap, ttl / 3) if cap > 0 else ttl / 3


#: Serialized values up to this size live inline in the state store; larger ones are
#: content-addressed blobs in the artifact store.
INLINE_LIMIT = 64 * 1024
_BLOB_PREFIX = "blobs/"


class Runtime:
    """Stores plus the machinery every runner in this process shares."""

    def __init__(
        self,
        state: StateStore | SyncView,
        artifacts: ArtifactStore | SyncView,
        *,
        stack_name: str = "local",
        lease_ttl: float | None = None,
        heartbeat_interval: float | None = None,
    ) -> None:
        #: The async stores: what the engine (the Runner) awaits.
        self.astate: StateStore = state.store if isinstance(state, SyncView) else state
        self.aartifacts: ArtifactStore = artifacts.store if isinstance(artifacts, SyncView) else artifacts
        #: Blocking views of the same stores, for sync edges (the client, the CLI, the heartbeat):
        #: inline for SQLite and memory, kitaru's portal loop otherwise.
        self.state: SyncStateStore = cast(SyncStateStore, sync_view(self.astate))
        self.artifacts: SyncArtifactStore = cast(SyncArtifactStore, sync_view(self.aartifacts))
        #: The state store's calls never suspend: sync code may run them inline, without a hop.
        self.inline = bool(getattr(self.astate, "inline", False))
        self.stack_name = stack_name
        #: The stack this runtime was opened from (None: built from stores directly, drives here).
        self.stack: Any = None
        self.lease_ttl, self.heartbeat_interval = lease_timing(lease_ttl, heartbeat_interval)
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{new_id()[-8:]}"
        self._active: dict[str, int] = {}
        self._cancelled: set[str] = set()
        self._lock = threading.Lock()
        self._beat: threading.Thread | None = None
        self._stop = threading.Event()
        self._foreign: dict[str, Any] = {}
        # Called when a cancel of the execution is seen (the Runner cancels the body's scope).
        self._cancel_hooks: dict[str, list[Callable[[], None]]] = {}
        # Checkpoint attempts running now, per execution, and what the heartbeat last wrote of them.
        self._inflight: dict[str, dict[str, dict[str, Any]]] = {}
        self._noted: dict[str, dict[str, dict[str, Any]]] = {}

    # -- leases ---------------------------------------------------------------------------

    def track(self, exec_id: str) -> None:
        """Keep renewing this process's lease on ``exec_id`` until :meth:`untrack`."""
        with self._lock:
            self._active[exec_id] = self._active.get(exec_id, 0) + 1
            self._cancelled.discard(exec_id)
            if self._beat is None or not self._beat.is_alive():
                self._stop.clear()
                self._beat = threading.Thread(target=self._heartbeat, name="kitaru-heartbeat", daemon=True)
                self._beat.start()

    def untrack(self, exec_id: str) -> None:
        with self._lock:
            left = self._active.get(exec_id, 0) - 1
            if left <= 0:
                self._active.pop(exec_id, None)
                self._inflight.pop(exec_id, None)
                self._noted.pop(exec_id, None)
            else:
                self._active[exec_id] = left

    def cancelled(self, exec_id: str) -> bool:
        """Whether a cancel of ``exec_id`` was seen, by a commit or the heartbeat (checked at call
        boundaries, so concurrent calls of the same execution stop too)."""
        return exec_id in self._cancelled

    def saw_cancel(self, exec_id: str) -> None:
        with self._lock:
            self._cancelled.add(exec_id)
            hooks = list(self._cancel_hooks.get(exec_id, ()))
        for hook in hooks:
            hook()

    def on_cancel(self, exec_id: str, hook: Callable[[], None]) -> Callable[[], None]:
        """Call ``hook`` (from any thread) when a cancel of ``exec_id`` is seen; returns the
        function that unregisters it."""
        with self._lock:
            self._cancel_hooks.setdefault(exec_id, []).append(hook)

        def remove() -> None:
            with self._lock:
                hooks = self._cancel_hooks.get(exec_id, [])
                if hook in hooks:
                    hooks.remove(hook)
                if not hooks:
                    self._cancel_hooks.pop(exec_id, None)

        return remove

    def _heartbeat(self) -> None:
        """The heartbeat thread: renew this process's leases every ``heartbeat_interval``.

        It is a thread of its own, not a task on a Runner's loop, so that a flow whose body blocks
        its event loop (sync code in an async flow, a CPU-bound step) keeps its lease: the lease
        is what stops another process from taking over and running the same work twice. An
        inline store (SQLite, memory) is renewed right here. Any other store is renewed on an
        event loop this thread runs for itself: never through kitaru's portal (a blocked portal
        loop would stall the renewal, and a renewal waiting on the portal could deadlock its
        shutdown), and on its own connection, so a renewal never holds up a flow's loop or pool.
        """
        if self.inline:
            while not self._stop.wait(self.heartbeat_interval):
                self._beat_inline()
            return
        import anyio

        anyio.run(self._abeat)

    def _beat_inline(self) -> None:
        with self._lock:
            ids = list(self._active)
        if not ids:
            return
        try:
            statuses = self.state.renew_leases(self.owner, ids, self.lease_ttl)
        except Exception:
            # A store hiccup must not kill the heartbeat; the next beat tries again, and a
            # lost lease is caught by the owner check on the next commit.
            return
        self._saw_statuses(ids, statuses)
        for exec_id, note in self._inflight_changes(ids):
            try:
                self.state.commit(exec_id, [], owner=self.owner, metadata={INFLIGHT: note})
            except Exception:
                continue  # lease lost or store down: the owner check and the next beat handle it
            self._noted_inflight(exec_id, note)

    async def _abeat(self) -> None:
        """:meth:`_beat_inline` for a store that awaits the network, on the heartbeat's own loop."""
        import anyio.to_thread

        # Waiting on the stop event (in anyio's worker thread) lets close() end this loop, and
        # with it the loop's connections, at once.
        while not await anyio.to_thread.run_sync(self._stop.wait, self.heartbeat_interval):
            with self._lock:
                ids = list(self._active)
            if not ids:
                continue
            try:
                statuses = await self.astate.renew_leases(self.owner, ids, self.lease_ttl)
            except Exception:
                continue  # as above: the next beat tries again
            self._saw_statuses(ids, statuses)
            for exec_id, note in self._inflight_changes(ids):
                try:
                    await self.astate.commit(exec_id, [], owner=self.owner, metadata={INFLIGHT: note})
                except Exception:
                    continue
                self._noted_inflight(exec_id, note)

    def _saw_statuses(self, ids: list[str], statuses: dict[str, str]) -> None:
        for exec_id, status in statuses.items():
            if status == "cancelled" and exec_id in ids:
                self.saw_cancel(exec_id)

    # -- attempts in flight (so a crash that cuts one short is visible after resume) ---------

    def call_started(self, exec_id: str, started: JournalRecord) -> None:
        """Note a checkpoint attempt as running (``started``: its never-committed start record)."""
        note = {
            "attempt": started.attempt or 1,
            "name": started.name,
            "started_at": (started.data or {}).get("started_at", started.ts),
        }
        with self._lock:
            self._inflight.setdefault(exec_id, {})[started.call_id or ""] = note

    def call_ended(self, exec_id: str, call_id: str) -> None:
        with self._lock:
            calls = self._inflight.get(exec_id)
            if calls is not None:
                calls.pop(call_id, None)

    def _inflight_changes(self, exec_ids: list[str]) -> list[tuple[str, dict[str, dict[str, Any]]]]:
        """Each execution's attempts in flight, where they changed since the last beat wrote them.
        They ride on the heartbeat, not on checkpoints: a checkpoint stays one commit, and an
        attempt shorter than a beat may go unnoted (its crash then leaves no trace)."""
        changed = []
        for exec_id in exec_ids:
            with self._lock:
                now = {call_id: dict(note) for call_id, note in self._inflight.get(exec_id, {}).items()}
            if now != self._noted.get(exec_id, {}):
                changed.append((exec_id, now))
        return changed

    def _noted_inflight(self, exec_id: str, note: dict[str, dict[str, Any]]) -> None:
        with self._lock:
            if exec_id in self._active:
                self._noted[exec_id] = note

    def close(self) -> None:
        self._stop.set()
        # Let the heartbeat's own loop end first: it closes that loop's connections as it shuts
        # down, and closing them from here at the same time could leave a pool half closed.
        beat = self._beat
        if beat is not None and beat is not threading.current_thread():
            beat.join(timeout=10)
        self.state.close()
        # Artifact stores hold clients too (per event loop, for the cloud ones).
        for store in (self.artifacts, *self._foreign.values()):
            store.close()
        self._foreign.clear()

    # -- artifacts --------------------------------------------------------------------------
    #
    # One implementation, async; the few sync callers (the client, the CLI) go through the
    # ``blocking`` edge. Engine code reaches them through its ExecutionContext instead, which hops
    # onto the Runner's loop.

    def serialize_artifact(
        self,
        exec_id: str,
        *,
        name: str,
        version: int,
        type: str,
        value: Any,
        call_id: str | None,
    ) -> tuple[ArtifactRecord, tuple[str, bytes] | None]:
        """Serialize ``value`` into its record: inline when small, else the blob ``(key, bytes)``
        that must be in the artifact store before the record is committed."""
        s = serialization.dumps(value)
        data = s.data
        digest = hashlib.sha256(data).hexdigest()
        inline: bytes | None = data
        uri = None
        blob = None
        if len(data) > INLINE_LIMIT:
            key = f"{_BLOB_PREFIX}{digest[:2]}/{digest}"
            blob = (key, data)
            inline, uri = None, self.aartifacts.uri_for(key)
        record = ArtifactRecord(
            id=new_id(),
            exec_id=exec_id,
            name=name,
            version=version,
            type=type,
            serializer=s.serializer,
            data_type=s.type_path,
            content_hash=f"sha256:{digest}",
            size=len(data),
            call_id=call_id,
            created_at=time.time(),
            inline=inline,
            uri=uri,
        )
        return record, blob

    async def amake_artifact(
        self, exec_id: str, *, name: str, version: int, type: str, value: Any, call_id: str | None
    ) -> ArtifactRecord:
        """Serialize ``value`` and write its bytes: inline when small, else as a shared blob."""
        record, blob = self.serialize_artifact(
            exec_id, name=name, version=version, type=type, value=value, call_id=call_id
        )
        if blob is not None:
            await self.aput_blob(*blob)
        return record

    def make_artifact(
        self, exec_id: str, *, name: str, version: int, type: str, value: Any, call_id: str | None
    ) -> ArtifactRecord:
        """:meth:`amake_artifact` for sync callers."""
        record, blob = self.serialize_artifact(
            exec_id, name=name, version=version, type=type, value=value, call_id=call_id
        )
        if blob is not None:
            self.blocking(self.aput_blob, *blob)
        return record

    async def aput_blob(self, key: str, data: bytes) -> None:
        """Write a blob of :meth:`serialize_artifact` (``blobs/<sha256 of data>``).

        The stores write create-only and refuse different bytes under an existing key. A blob key
        is the hash of its bytes, and ``data`` was hashed just now, so a refusal means the stored
        blob is damaged (a truncated copy, a bad restore, tampering): it is replaced with ``data``,
        which also repairs every artifact recorded with that hash. Left as a conflict, it would
        fail every later write of that value, and the runner reads a conflict as a lost lease."""
        try:
            await self.aartifacts.put(key, data)
            return
        except KitaruConflictError as exc:
            conflict = exc
        import logging

        logging.getLogger("kitaru").warning(
            "artifact blob %s in %s held bytes that do not hash to its name (damaged or "
            "changed after it was written); replacing it with the bytes being written, which do.",
            key,
            self.aartifacts.uri,
        )
        await self.aartifacts.delete(key)
        try:
            await self.aartifacts.put(key, data)
        except KitaruConflictError as exc:
            # Someone wrote different bytes again between the delete and the put: not a damaged
            # copy any more but a store that keeps changing under us. Not a conflict of runners.
            raise KitaruStoreError(
                f"artifact blob {key} in {self.aartifacts.uri} holds bytes that do not hash to its "
                f"name, and replacing them failed: {exc}. Something else is writing to the "
                "artifact store; stop it, then retry the execution with `kitaru executions retry`."
            ) from conflict

    async def aartifact_chunks(
        self, record: ArtifactRecord, chunk_size: int = 1 << 20
    ) -> AsyncIterator[bytes]:
        """Stream the artifact's bytes in bounded chunks, hashing as they pass.

        The chunks are only trustworthy once the iterator is exhausted: the size and hash are
        checked at the end (and the size on the way, so a longer blob stops early), raising
        :class:`~kitaru.errors.KitaruStoreError` on a mismatch. Consumers write to a temporary
        place and keep the result only when the iteration finished."""
        if record.inline is not None:
            yield _inline_bytes(record)
            return
        store, key = self._blob_store(record)
        where = record.uri or key
        digest = hashlib.sha256()
        size = 0
        try:
            async for chunk in store.open(key, chunk_size):
                size += len(chunk)
                if size > record.size:
                    _verify(record, size, None, where)
                digest.update(chunk)
                yield chunk
        except KitaruNotFoundError as exc:
            raise KitaruStoreError(
                f"{_describe(record)} is missing from the artifact store: no blob at {where}. "
                f"{_restore_hint(record)}"
            ) from exc
        _verify(record, size, digest.hexdigest(), where)

    async def aartifact_bytes(self, record: ArtifactRecord) -> bytes:
        """The artifact's bytes, verified against the size and sha256 the state store recorded.

        The state store is trusted and the artifact store is not: bytes that do not match raise
        :class:`~kitaru.errors.KitaruStoreError` and are never handed to a deserializer."""
        if record.inline is not None:
            return _inline_bytes(record)
        # Joining costs a second copy while it runs, but lets a blob longer than the record stop
        # the read at once instead of filling memory with whatever replaced it.
        return b"".join([chunk async for chunk in self.aartifact_chunks(record)])

    async def aload_artifact(self, record: ArtifactRecord) -> Any:
        """The artifact's value: verified bytes (see :meth:`aartifact_bytes`), then deserialized."""
        return serialization.loads(record.serializer, record.data_type, await self.aartifact_bytes(record))

    def artifact_bytes(self, record: ArtifactRecord) -> bytes:
        """:meth:`aartifact_bytes` for sync callers."""
        if record.inline is not None:
            return _inline_bytes(record)
        return self.blocking(self.aartifact_bytes, record)

    def artifact_chunks(self, record: ArtifactRecord, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        """:meth:`aartifact_chunks` for sync callers (same verification duties)."""
        if record.inline is not None:
            yield _inline_bytes(record)
            return
        chunks = self.aartifact_chunks(record, chunk_size)
        while True:
            try:
                yield self.blocking(chunks.__anext__)
            except StopAsyncIteration:
                return

    def load_artifact(self, record: ArtifactRecord) -> Any:
        """:meth:`aload_artifact` for sync callers."""
        return serialization.loads(record.serializer, record.data_type, self.artifact_bytes(record))

    def blocking(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Run ``await fn(*args)`` from sync code (the client, the CLI) on kitaru's portal loop."""
        from kitaru._portal import in_portal_thread, portal

        if in_portal_thread():
            raise RuntimeError("a blocking store call was made on kitaru's portal loop; await it")
        return portal().call(fn, *args)

    def _blob_store(self, record: ArtifactRecord) -> tuple[Any, str]:
        """The (async) store holding the record's blob (ours, or another bucket or prefix) and
        its key."""
        if record.uri is None:
            raise KitaruStoreError(
                f"{_describe(record)} has neither inline bytes nor a URI in the state store. The "
                "state database is damaged; restore it from a backup."
            )
        base, _sep, key = record.uri.rpartition("/" + _BLOB_PREFIX)
        key = _BLOB_PREFIX + key
        if base == self.aartifacts.uri:
            return self.aartifacts, key
        store = self._foreign.get(base)
        if store is None:
            from kitaru.stack import artifact_store_for_uri

            # Another bucket or prefix of our own kind of store (a replay across stacks) needs our
            # endpoint and credentials: cloud stores offer ``reopen(uri)`` with their options.
            reopen = getattr(self.aartifacts, "reopen", None)
            same_kind = base.partition("://")[0] == self.aartifacts.uri.partition("://")[0]
            opened = reopen(base) if reopen is not None and same_kind else artifact_store_for_uri(base)
            store = self._foreign[base] = opened
        return store, key


def _inline_bytes(record: ArtifactRecord) -> bytes:
    data = record.inline
    assert data is not None
    _verify(record, len(data), hashlib.sha256(data).hexdigest(), "inline in the state store")
    return data


def _describe(record: ArtifactRecord) -> str:
    return f"artifact {record.id} ({record.name!r} v{record.version} of execution {record.exec_id})"


def _restore_hint(record: ArtifactRecord) -> str:
    hint = (
        f"Restore the original bytes (they hash to {record.content_hash}) from a backup, then "
        f"continue with `kitaru executions retry {record.exec_id}` if the execution failed on it."
    )
    if record.type == "output" and record.call_id:
        # Without a backup, the checkpoint that made it can make it again: writing the same
        # bytes puts the blob back (see Runtime.aput_blob), which also lets the retry above work.
        hint += (
            f" Without a backup, `kitaru executions replay {record.exec_id} --from "
            f"{record.call_id}` runs that checkpoint again; if it returns the same value, that "
            "puts the blob back too."
        )
    return hint


def _verify(record: ArtifactRecord, size: int, hexdigest: str | None, where: str) -> None:
    """Raise unless ``size`` and ``hexdigest`` (None: not known yet) match the record."""
    algorithm, _, expected = record.content_hash.partition(":")
    if algorithm != "sha256":
        raise KitaruStoreError(
            f"{_describe(record)} records a {algorithm or 'missing'} hash, which this kitaru cannot "
            "verify, so its bytes are not loaded. Upgrade kitaru."
        )
    if size == record.size and hexdigest == expected:
        return
    found = f"more than {record.size} bytes" if hexdigest is None else f"{size} bytes with sha256:{hexdigest}"
    raise KitaruStoreError(
        f"{_describe(record)} does not match the state store's record: expected {record.size} "
        f"bytes with {record.content_hash}, found {found} ({where}). The bytes were changed or "
        f"damaged after they were written; nothing was loaded from them. {_restore_hint(record)}"
    )


_runtime: Runtime | None = None
_runtime_lock = threading.Lock()
#: Runtimes of stacks named explicitly (``flow.run(..., stack=NAME)``), one per name per process.
_stack_runtimes: dict[str, Runtime] = {}
#: Runtimes opened for inspection only (read-only state stores), one per stack name.
_read_only_runtimes: dict[str, Runtime] = {}


def _open_runtime(stack_name: str | None, *, read_only: bool = False) -> Runtime:
    from kitaru.stack import load_stack

    lease_timing()  # a lease setting that cannot hold fails before any store is opened
    stack = load_stack(stack_name)
    state = (
        stack.state_store(read_only=True) if read_only and _takes_read_only(stack) else stack.state_store()
    )
    runtime = Runtime(state, stack.artifact_store(), stack_name=stack.name)
    runtime.stack = stack  # its orchestrator decides where Flow.run/start drive (see _engine.flow)
    return runtime


def _takes_read_only(stack: Any) -> bool:
    """Whether the stack's ``state_store`` takes ``read_only`` (a third-party stack written
    before it existed opens its store as it always did)."""
    import inspect

    return "read_only" in inspect.signature(stack.state_store).parameters


def read_only_runtime(stack_name: str | None = None) -> Runtime:
    """A runtime to inspect with, which never writes: the process's runtime of that stack when one
    is open already (it reads as well), else one whose state store is opened read-only, so that
    listing and showing work on a read-only home or a full disk (cached per stack name)."""
    current = _runtime
    if current is not None and stack_name in (None, current.stack_name):
        return current
    if stack_name is None:
        from kitaru.stack_config import load_settings

        stack_name = load_settings().active_stack
    opened = _stack_runtimes.get(stack_name) or _read_only_runtimes.get(stack_name)
    if opened is None:
        with _runtime_lock:
            opened = _read_only_runtimes.get(stack_name)
            if opened is None:
                opened = _read_only_runtimes[stack_name] = _open_runtime(stack_name, read_only=True)
    return opened


def get_runtime(stack_name: str | None = None) -> Runtime:
    """The process's runtime, opened from the active stack on first use; with ``stack_name``, the
    runtime of that stack from the configuration (opened once per name, then cached)."""
    global _runtime
    if stack_name is not None:
        current = _runtime
        if current is not None and current.stack_name == stack_name:
            return current
        named = _stack_runtimes.get(stack_name)
        if named is None:
            with _runtime_lock:
                named = _stack_runtimes.get(stack_name)
                if named is None:
                    named = _stack_runtimes[stack_name] = _open_runtime(stack_name)
        return named
    if _runtime is None:
        with _runtime_lock:
            if _runtime is None:
                from kitaru.stack_config import load_settings

                # A stack already opened by name moves to the default slot rather than opening twice.
                name = load_settings().active_stack
                _runtime = _stack_runtimes.pop(name, None) or _open_runtime(None)
    return _runtime


def release_default_runtime() -> None:
    """Let the next ``get_runtime()`` open the active stack afresh (its choice changed): the
    runtime opened so far moves to its stack's named slot, open for the handles that use it."""
    global _runtime
    with _runtime_lock:
        current, _runtime = _runtime, None
        if current is not None and current.stack_name is not None:
            _stack_runtimes.setdefault(current.stack_name, current)


def close_stack_runtimes() -> None:
    """Close and forget the runtimes opened by stack name and the read-only ones (the default
    runtime stays)."""
    with _runtime_lock:
        runtimes = [*_stack_runtimes.values(), *_read_only_runtimes.values()]
        _stack_runtimes.clear()
        _read_only_runtimes.clear()
    for runtime in runtimes:
        runtime.close()


def set_runtime(runtime: Runtime | None) -> Runtime | None:
    """Replace the process's runtime (None: reopen from the active stack on next use)."""
    global _runtime
    with _runtime_lock:
        previous, _runtime = _runtime, runtime
    return previous


@contextmanager
def use_runtime(runtime: Runtime) -> Iterator[Runtime]:
    """Run a block against ``runtime`` (for tests: memory stores, a temporary home...)."""
    previous = set_runtime(runtime)
    try:
        yield runtime
    finally:
        set_runtime(previous)
