"""Conformance suites every store implementation runs: one test per duty of the protocols.

The tests are async (anyio's pytest plugin, on asyncio): they await the store's coroutines the way
the Runner does. Subclass a suite in a test module and provide the store as a fixture; an async
fixture opens and closes it on the test's event loop::

    @pytest.fixture
    async def state_store(tmp_path):
        store = SQLiteStateStore(tmp_path / "state.db")
        yield store
        await store.aclose()

    class TestSQLiteStateStore(StateStoreConformance):
        def other_process_opener(self, state_store):
            return functools.partial(SQLiteStateStore, state_store.path)

:class:`StateStoreConformance` needs a ``state_store`` fixture, :class:`ArtifactStoreConformance` an
``artifact_store`` fixture. Tests only touch records they create (fresh ids, a fresh flow name where
they list), so a fixture may hand the same store to several tests.

Concurrency tests run both ways a store is shared: many tasks on the test's event loop, and many
threads through :func:`~kitaru.store.sync_view` (inline for an inline store; otherwise on kitaru's
portal loop, so a store that keeps one pool per loop serves two loops at once and must close both).

Lease tests use real processes: a lease owner is ``host:pid:token``, and a holder on this host whose
process has exited must lose its lease at once, while a live one keeps it until it expires.
"""

from __future__ import annotations

import dataclasses
import hashlib
import multiprocessing
import os
import queue
import secrets
import socket
import subprocess
import sys
import threading
import time
import tracemalloc
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from kitaru._ids import new_id
from kitaru.errors import (
    KitaruConflictError,
    KitaruError,
    KitaruLeaseError,
    KitaruNotFoundError,
    KitaruStateError,
    KitaruUsageError,
)
from kitaru.store import (
    ONCE_ONLY_KINDS,
    ArtifactRecord,
    ArtifactStore,
    ExecutionRecord,
    JournalRecord,
    StateStore,
    sync_view,
)
from kitaru.store.deploy_conformance import DeploymentConformance

__all__ = [
    "ArtifactStoreConformance",
    "KeyStoreConformance",
    "SecretStoreConformance",
    "StateStoreConformance",
]

_HOST = socket.gethostname()
_TTL = 60.0
_MiB = 1 << 20


# -- building records ---------------------------------------------------------------------------


def _execution(
    exec_id: str | None = None,
    *,
    flow: str = "conformance_flow",
    status: str = "running",
    created_at: float | None = None,
    metadata: dict[str, Any] | None = None,
    original_exec_id: str | None = None,
) -> ExecutionRecord:
    now = time.time() if created_at is None else created_at
    return ExecutionRecord(
        id=exec_id or new_id(),
        flow=flow,
        target="conformance_flows:flow",
        sys_path=None,
        status=status,
        created_at=now,
        updated_at=now,
        metadata=dict(metadata or {}),
        original_exec_id=original_exec_id,
    )


def _artifact(
    exec_id: str,
    name: str = "out",
    *,
    version: int = 1,
    type: str = "output",
    call_id: str | None = None,
    data: bytes = b"value",
) -> ArtifactRecord:
    return ArtifactRecord(
        id=new_id(),
        exec_id=exec_id,
        name=name,
        version=version,
        type=type,
        serializer="bytes",
        data_type="builtins:bytes",
        content_hash=hashlib.sha256(data).hexdigest(),
        size=len(data),
        call_id=call_id,
        created_at=time.time(),
        inline=data,
    )


def _record(kind: str, call_id: str | None, *, artifact: ArtifactRecord | None = None) -> JournalRecord:
    return JournalRecord(
        kind=kind,
        call_id=call_id,
        seq=1,
        name=f"conformance.{call_id}",
        attempt=1,
        artifact_id=artifact.id if artifact else None,
    )


def _completed(call_id: str, artifact: ArtifactRecord | None = None) -> JournalRecord:
    return _record("checkpoint_completed", call_id, artifact=artifact)


# -- lease owners -------------------------------------------------------------------------------


def _live_owner(token: str = "runner") -> str:
    """An owner in this (live) process."""
    return f"{_HOST}:{os.getpid()}:{token}-{new_id()[-6:]}"


def _remote_owner(token: str = "runner") -> str:
    """An owner on another host: nobody here can prove it dead, so it holds until expiry."""
    return f"elsewhere.invalid:4242:{token}-{new_id()[-6:]}"


def _python(code: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-S", "-c", code])


def _dead_owner() -> str:
    """An owner on this host whose process has exited (and been reaped)."""
    proc = _python("pass")
    proc.wait()
    return f"{_HOST}:{proc.pid}:gone"


def _is_zombie(pid: int) -> bool:
    with open(f"/proc/{pid}/stat", "rb") as fh:
        return fh.read().rsplit(b") ", 1)[1][:1] == b"Z"


async def _sleep(seconds: float) -> None:
    import anyio

    await anyio.sleep(seconds)


async def _leased(store: StateStore, owner: str, **kwargs: Any) -> ExecutionRecord:
    """A running execution driven by ``owner``."""
    execution = _execution(**kwargs)
    await store.create_execution(execution, [])
    return await store.acquire_lease(execution.id, owner, _TTL, allowed_statuses={"running"})


async def _waiting(store: StateStore, wait: str = "approve") -> str:
    """A suspended execution with the wait ``wait`` open and its lease free."""
    owner = _live_owner()
    execution = await _leased(store, owner)
    await store.commit(execution.id, [_record("wait_opened", wait)], owner=owner)
    assert await store.suspend(execution.id, owner, [wait]) is True
    return execution.id


def _answer(exec_id: str, wait: str = "approve") -> tuple[JournalRecord, ArtifactRecord]:
    artifact = _artifact(exec_id, wait, type="answer", call_id=wait, data=b"true")
    return _record("wait_answered", wait, artifact=artifact), artifact


async def _get(store: StateStore, exec_id: str) -> ExecutionRecord:
    record = await store.get_execution(exec_id)
    assert record is not None
    return record


async def _kinds(store: StateStore, exec_id: str) -> list[tuple[str, str | None]]:
    return [(r.kind, r.call_id) for r in await store.read_journal(exec_id)]


def _commit_from_process(
    opener: Callable[[], StateStore],
    exec_id: str,
    worker: int,
    count: int,
    ready: Any,
    go: Any,
    results: Any,
) -> None:
    """Body of a child process in the cross-process test: many commits, then one contested record."""
    store = sync_view(opener())
    try:
        ready.put(worker)
        if not go.wait(60):
            raise TimeoutError("the parent never said go")
        for n in range(count):
            artifact = _artifact(exec_id, f"p{worker}", version=n + 1, call_id=f"p{worker}-{n}")
            store.commit(exec_id, [_completed(f"p{worker}-{n}", artifact)], [artifact])
        try:
            store.commit(exec_id, [_completed("contested")])
            won = True
        except KitaruConflictError:
            won = False
        results.put((worker, won, None))
    except BaseException as exc:
        results.put((worker, None, repr(exc)))
    finally:
        store.close()


async def _read(store: ArtifactStore, key: str, chunk_size: int = _MiB) -> bytes:
    return b"".join([chunk async for chunk in store.open(key, chunk_size)])


async def _keys(store: ArtifactStore, prefix: str = "") -> list[str]:
    return [key async for key in store.list(prefix)]


async def _chunks(*chunks: bytes) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk


async def _race(how: str, count: int, target: Callable[[int], Awaitable[Any]], store: Any) -> list[Any]:
    """Run ``target(i)`` ``count`` times at once; each result or exception, in order.

    ``how``: ``tasks`` runs them as tasks on this event loop; ``threads`` on threads released
    together, each running its coroutine through a sync view of ``store`` (inline, or on kitaru's
    portal loop: a second loop the store serves), while this loop waits in a worker thread."""
    if how == "threads":
        view = sync_view(store)
        done: list[Any] = await _to_thread(_run_threads, count, lambda i: _view_call(view, target, i))
        return done
    import anyio

    out: list[Any] = [None] * count
    go = anyio.Event()

    async def body(i: int) -> None:
        await go.wait()
        try:
            out[i] = await target(i)
        except Exception as exc:
            out[i] = exc

    async with anyio.create_task_group() as tg:
        for i in range(count):
            tg.start_soon(body, i)
        go.set()
    return out


def _view_call(view: Any, target: Callable[[int], Awaitable[Any]], i: int) -> Any:
    """Run ``target(i)``'s coroutine to its end through ``view``'s way of running (inline or on
    the portal), from a plain thread."""
    from kitaru.store._sync import _run

    return _run(target(i), view._inline)


async def _to_thread(fn: Callable[..., Any], *args: Any) -> Any:
    import anyio.to_thread

    return await anyio.to_thread.run_sync(fn, *args)


def _run_threads(count: int, target: Callable[[int], Any]) -> list[Any]:
    """Run ``target(i)`` on ``count`` threads released together; each result or exception."""
    barrier = threading.Barrier(count, timeout=30)
    out: list[Any] = [None] * count

    def body(i: int) -> None:
        barrier.wait()
        try:
            out[i] = target(i)
        except BaseException as exc:
            out[i] = exc

    threads = [threading.Thread(target=body, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return out


# -- the API key suite (stores that can back the team server) -------------------------------------


@pytest.mark.anyio
class KeyStoreConformance:
    """Duties of :class:`~kitaru.store.KeyStore`; needs a ``state_store`` fixture."""

    @pytest.fixture
    def anyio_backend(self) -> str:
        return "asyncio"

    @staticmethod
    def _key(name: str | None = None, scopes: list[str] | None = None) -> Any:
        from kitaru.store import ApiKeyRecord

        key_id = new_id()
        return ApiKeyRecord(
            id=key_id,
            name=name or f"key_{key_id}",
            key_hash="sha256:" + hashlib.sha256(key_id.encode()).hexdigest(),
            scopes=scopes or ["read"],
            created_at=time.time(),
        )

    async def test_implements_protocol(self, state_store: Any) -> None:
        from kitaru.store import KeyStore

        assert isinstance(state_store, KeyStore)

    async def test_create_get_list_round_trip(self, state_store: Any) -> None:
        key = self._key(scopes=["read", "answer"])
        await state_store.create_api_key(key)

        assert await state_store.get_api_key(key.id) == key
        assert key in await state_store.list_api_keys()
        assert await state_store.get_api_key(new_id()) is None

    async def test_names_are_unique_even_after_a_revoke(self, state_store: Any) -> None:
        key = self._key()
        await state_store.create_api_key(key)
        with pytest.raises(KitaruConflictError, match=f"{key.name!r}.*exists already"):
            await state_store.create_api_key(self._key(name=key.name))
        await state_store.revoke_api_key(key.name)
        with pytest.raises(KitaruConflictError):
            await state_store.create_api_key(self._key(name=key.name))
        assert [k.id for k in await state_store.list_api_keys() if k.name == key.name] == [key.id]

    async def test_keys_are_listed_oldest_first_and_are_the_callers_copies(self, state_store: Any) -> None:
        now = time.time()
        newer, older = self._key(), self._key()
        newer.created_at, older.created_at = now + 2, now + 1
        await state_store.create_api_key(newer)
        await state_store.create_api_key(older)
        newer.scopes.append("admin")  # the caller's record, changed after the call
        listed = [k for k in await state_store.list_api_keys() if k.id in (newer.id, older.id)]
        assert [k.id for k in listed] == [older.id, newer.id]
        for key in (
            listed[1],
            await state_store.get_api_key(newer.id),
            await state_store.revoke_api_key(newer.name),
        ):
            assert key is not None and key.scopes == ["read"]
            key.scopes.append("answer")
        stored = await state_store.get_api_key(newer.id)
        assert stored is not None and stored.scopes == ["read"]

    async def test_revoke_is_final_and_idempotent(self, state_store: Any) -> None:
        key = self._key()
        await state_store.create_api_key(key)

        revoked = await state_store.revoke_api_key(key.name)
        assert revoked.revoked_at is not None
        again = await state_store.revoke_api_key(key.name)
        assert again.revoked_at == revoked.revoked_at
        stored = await state_store.get_api_key(key.id)
        assert stored is not None and stored.revoked_at == revoked.revoked_at
        absent = f"absent_{new_id()}"
        with pytest.raises(KitaruNotFoundError, match=f"no API key.*{absent}"):
            await state_store.revoke_api_key(absent)

    # -- ended sessions: how a logout reaches every server process ----------------------------

    async def test_an_ended_session_is_read_back_since_a_point_before_it(self, state_store: Any) -> None:
        nonce, expires = secrets.token_hex(16), time.time() + 3600
        await state_store.end_session(nonce, expires)

        (ended,) = [s for s in await state_store.ended_sessions(0.0) if s.nonce == nonce]
        assert ended.expires_at == expires
        assert [s.nonce for s in await state_store.ended_sessions(ended.ended_at)].count(nonce) == 1
        assert nonce not in {s.nonce for s in await state_store.ended_sessions(ended.ended_at + 1)}

    async def test_ending_a_session_again_keeps_the_first_record(self, state_store: Any) -> None:
        nonce = secrets.token_hex(16)
        await state_store.end_session(nonce, time.time() + 3600)
        (first,) = [s for s in await state_store.ended_sessions(0.0) if s.nonce == nonce]
        await state_store.end_session(nonce, time.time() + 7200)

        assert [s for s in await state_store.ended_sessions(0.0) if s.nonce == nonce] == [first]

    async def test_ended_sessions_come_oldest_first(self, state_store: Any) -> None:
        nonces = [secrets.token_hex(16) for _ in range(3)]
        for nonce in nonces:
            await state_store.end_session(nonce, time.time() + 3600)
        ended = [s for s in await state_store.ended_sessions(0.0) if s.nonce in nonces]
        assert [s.ended_at for s in ended] == sorted(s.ended_at for s in ended)
        assert [(s.ended_at, s.nonce) for s in ended] == sorted((s.ended_at, s.nonce) for s in ended)
        assert {s.nonce for s in ended} == set(nonces)

    async def test_pruning_forgets_only_expired_sessions(self, state_store: Any) -> None:
        now = time.time()
        expired, live = secrets.token_hex(16), secrets.token_hex(16)
        await state_store.end_session(expired, now - 10)
        await state_store.end_session(live, now + 3600)

        assert await state_store.prune_ended_sessions(now) >= 1
        left = {s.nonce for s in await state_store.ended_sessions(0.0)}
        assert expired not in left and live in left
        assert await state_store.prune_ended_sessions(now - 3600) == 0


# -- the secret suite (state stores flows read secrets from) ---------------------------------------


@pytest.mark.anyio
class SecretStoreConformance:
    """Duties of :class:`~kitaru.store.SecretStore`; needs a ``state_store`` fixture."""

    @pytest.fixture
    def anyio_backend(self) -> str:
        return "asyncio"

    async def test_implements_protocol(self, state_store: Any) -> None:
        from kitaru.store import SecretStore

        assert isinstance(state_store, SecretStore)

    async def test_put_get_list_delete_round_trip(self, state_store: Any) -> None:
        name = f"s_{new_id()}"
        before = time.time()
        stored = await state_store.put_secret(name, b"\x00cipher\xff")
        assert (stored.name, stored.ciphertext) == (name, b"\x00cipher\xff")
        assert before - 1 <= stored.created_at == stored.updated_at <= time.time() + 1
        assert await state_store.get_secret(name) == stored
        assert name in [s.name for s in await state_store.list_secrets()]
        assert await state_store.delete_secret(name) is True
        assert await state_store.get_secret(name) is None
        assert await state_store.delete_secret(name) is False
        assert name not in [s.name for s in await state_store.list_secrets()]

    async def test_put_replaces_the_value_and_keeps_its_creation_time(self, state_store: Any) -> None:
        name = f"s_{new_id()}"
        first = await state_store.put_secret(name, b"one")
        second = await state_store.put_secret(name, b"two")
        assert second.ciphertext == b"two" and second.created_at == first.created_at
        assert second.updated_at >= first.updated_at
        assert [s.ciphertext for s in await state_store.list_secrets() if s.name == name] == [b"two"]

    async def test_list_is_sorted_by_name(self, state_store: Any) -> None:
        prefix = f"s_{new_id()}"
        for suffix in ("b", "a", "c"):
            await state_store.put_secret(prefix + suffix, b"x")
        names = [s.name for s in await state_store.list_secrets() if s.name.startswith(prefix)]
        assert names == [prefix + "a", prefix + "b", prefix + "c"]


# -- the state store suite ------------------------------------------------------------------------


@pytest.mark.anyio
class StateStoreConformance(DeploymentConformance):
    """Duties of :class:`~kitaru.store.StateStore`; needs a ``state_store`` fixture (the
    deployment duties come from :class:`~kitaru.store.deploy_conformance.DeploymentConformance`)."""

    @pytest.fixture
    def anyio_backend(self) -> str:
        return "asyncio"

    def other_process_opener(self, state_store: Any) -> Callable[[], StateStore] | None:
        """A picklable callable opening the same store in another process.

        None (the default) for stores that live inside one process: the cross-process test skips.
        """
        return None

    # -- executions ---------------------------------------------------------------------------

    async def test_implements_protocol(self, state_store: StateStore) -> None:
        assert isinstance(state_store, StateStore)

    async def test_create_and_get_round_trip(self, state_store: StateStore) -> None:
        original = _execution()
        await state_store.create_execution(original, [])
        execution = _execution(
            metadata={"tags": ["a", "b"], "nested": {"n": 1}}, original_exec_id=original.id
        )
        inputs = _artifact(execution.id, "inputs", type="input", data=b'{"args": []}')

        stored, created = await state_store.create_execution(execution, [inputs])

        assert created is True
        assert stored == execution
        assert await state_store.get_execution(execution.id) == execution
        assert await state_store.get_artifact(inputs.id) == inputs
        assert await state_store.list_artifacts(execution.id) == [inputs]
        journal = await state_store.read_journal(execution.id)
        assert [(r.kind, r.call_id, r.artifact_id) for r in journal] == [("input", "inputs", inputs.id)]

    async def test_create_execution_is_idempotent(self, state_store: StateStore) -> None:
        first = _execution(flow="first_flow")
        first_inputs = _artifact(first.id, "inputs", type="input")
        await state_store.create_execution(first, [first_inputs])

        again = _execution(first.id, flow="second_flow", status="waiting")
        again_inputs = _artifact(first.id, "inputs", type="input", data=b"other")
        stored, created = await state_store.create_execution(again, [again_inputs])

        assert created is False
        assert stored == first
        assert await _get(state_store, first.id) == first
        assert await state_store.get_artifact(again_inputs.id) is None
        assert await state_store.list_artifacts(first.id) == [first_inputs]
        assert len(await state_store.read_journal(first.id)) == 1

    async def test_create_execution_seeds_a_journal_that_may_share_artifacts(
        self, state_store: StateStore
    ) -> None:
        original = _execution()
        shared = _artifact(original.id, "research", call_id="research")
        await state_store.create_execution(original, [])
        await state_store.commit(original.id, [_completed("research", shared)], [shared])
        replay = _execution(original_exec_id=original.id)
        seeded = [_completed("research", shared)]

        await state_store.create_execution(replay, [], seeded)

        journal = await state_store.read_journal(replay.id)
        assert [(r.kind, r.call_id, r.artifact_id) for r in journal] == [
            ("checkpoint_completed", "research", shared.id)
        ]
        assert await state_store.list_artifacts(replay.id) == [shared]
        with pytest.raises(KitaruConflictError):
            await state_store.commit(replay.id, [_completed("research")])

    async def test_get_execution_needs_the_exact_id(self, state_store: StateStore) -> None:
        execution = _execution()
        await state_store.create_execution(execution, [])
        assert await state_store.get_execution(execution.id[:-1]) is None
        assert await state_store.get_execution(execution.id + "X") is None
        assert await state_store.get_execution("no-such-execution") is None

    async def test_match_execution_ids_by_prefix(self, state_store: StateStore) -> None:
        base = new_id()
        ids = [base + "A1", base + "A2", base + "B1"]
        for exec_id in ids:
            await state_store.create_execution(_execution(exec_id), [])

        assert sorted(await state_store.match_execution_ids(base + "A", limit=10)) == ids[:2]
        assert sorted(await state_store.match_execution_ids(base, limit=10)) == ids
        assert len(await state_store.match_execution_ids(base)) == 2  # the default limit
        assert len(await state_store.match_execution_ids(base, limit=1)) == 1
        assert await state_store.match_execution_ids(base + "B1") == [base + "B1"]
        assert await state_store.match_execution_ids(base + "C") == []

    @pytest.mark.parametrize("wildcard", ["_", "%"])
    async def test_match_execution_ids_treats_wildcards_literally(
        self, state_store: StateStore, wildcard: str
    ) -> None:
        # Explicit ids (idempotency keys) may hold any character, including SQL LIKE wildcards.
        base = new_id()
        await state_store.create_execution(_execution(f"{base}{wildcard}x"), [])
        await state_store.create_execution(_execution(f"{base}Zx"), [])
        assert await state_store.match_execution_ids(base + wildcard, limit=10) == [f"{base}{wildcard}x"]

    async def test_match_execution_ids_is_case_sensitive(self, state_store: StateStore) -> None:
        base = new_id()
        for suffix in ("Ab", "ab", "AB"):
            await state_store.create_execution(_execution(base + suffix), [])
        assert await state_store.match_execution_ids(base + "a", limit=10) == [base + "ab"]
        assert sorted(await state_store.match_execution_ids(base + "A", limit=10)) == [
            base + "AB",
            base + "Ab",
        ]

    async def test_list_executions_newest_first(self, state_store: StateStore) -> None:
        flow = f"flow_{new_id()}"
        base, start = new_id()[:-3], time.time()
        ids = [f"{base}A{i}" for i in range(4)]
        for i, exec_id in enumerate(ids):
            await state_store.create_execution(_execution(exec_id, flow=flow, created_at=start + i), [])

        assert [e.id for e in await state_store.list_executions(flow=flow)] == ids[::-1]
        assert [e.id for e in await state_store.list_executions(flow=flow, limit=2)] == ids[:1:-1]
        everything = [e.id for e in await state_store.list_executions(limit=10_000)]
        assert [i for i in everything if i in ids] == ids[::-1]
        assert len(await state_store.list_executions(limit=1)) == 1

    async def test_list_executions_pages_with_a_cursor(self, state_store: StateStore) -> None:
        flow = f"flow_{new_id()}"
        base = new_id()[:-3]
        ids = [f"{base}A{i}" for i in range(5)]
        for exec_id in ids:
            await state_store.create_execution(_execution(exec_id, flow=flow), [])

        pages, before = [], None
        while True:
            page = await state_store.list_executions(flow=flow, limit=2, before=before)
            if not page:
                break
            pages.append([e.id for e in page])
            before = page[-1].id
        assert pages == [ids[:2:-1], ids[2:0:-1], ids[:1]]
        assert [e.id for e in await state_store.list_executions(flow=flow, before=ids[0])] == []

    async def test_list_executions_filters(self, state_store: StateStore) -> None:
        flow, other_flow = f"flow_{new_id()}", f"other_{new_id()}"
        running = _execution(flow=flow)
        waiting = _execution(flow=flow, status="waiting")
        elsewhere = _execution(flow=other_flow, status="waiting")
        for e in (running, waiting, elsewhere):
            await state_store.create_execution(e, [])

        assert {e.id for e in await state_store.list_executions(flow=flow)} == {running.id, waiting.id}
        assert [e.id for e in await state_store.list_executions(flow=flow, status="waiting")] == [waiting.id]
        assert await state_store.list_executions(flow=flow, status="completed") == []
        all_waiting = await state_store.list_executions(status="waiting", limit=10_000)
        assert {waiting.id, elsewhere.id} <= {e.id for e in all_waiting}
        assert {e.status for e in all_waiting} == {"waiting"}
        assert await state_store.list_executions(flow=f"absent_{new_id()}") == []

    async def test_list_executions_orders_by_creation_time_not_by_id(self, state_store: StateStore) -> None:
        # A caller's own id (an idempotency key) sorts wherever its text puts it: lowercase after
        # every generated id, "!" before them. Each lists at its creation time among generated ones.
        flow, tag, start = f"flow_{new_id()}", new_id(), time.time() - 100
        made = [
            (new_id(), 0.0),
            (f"order-42-{tag}", 1.0),
            (new_id(), 2.0),
            (f"!first-{tag}", 3.0),
            (new_id(), 4.0),
        ]
        for exec_id, offset in made:
            await state_store.create_execution(_execution(exec_id, flow=flow, created_at=start + offset), [])
        newest_first = [exec_id for exec_id, _ in made[::-1]]

        assert [e.id for e in await state_store.list_executions(flow=flow)] == newest_first
        assert [e.id for e in await state_store.list_executions(flow=flow, limit=1)] == newest_first[:1]
        everything = [e.id for e in await state_store.list_executions(limit=10_000)]
        assert [i for i in everything if i in newest_first] == newest_first
        # Executions created in the same instant list by id, largest first.
        same = [f"{tag}-same-{c}" for c in "bca"]
        for exec_id in same:
            await state_store.create_execution(_execution(exec_id, flow=flow, created_at=start + 5), [])
        listed = [e.id for e in await state_store.list_executions(flow=flow, limit=3)]
        assert listed == sorted(same, reverse=True)

    async def test_list_executions_pages_in_time_order_across_custom_ids(
        self, state_store: StateStore
    ) -> None:
        flow, tag, start = f"flow_{new_id()}", new_id(), time.time() - 100
        # Generated ids and chosen ones interleaved in time, two pairs created in the same instant.
        made = [
            (new_id(), 0.0),
            (f"zz-{tag}", 1.0),
            (new_id(), 1.0),
            (f"!a-{tag}", 2.0),
            (new_id(), 3.0),
            (f"order-{tag}", 4.0),
            (f"order-{tag}-b", 4.0),
        ]
        for exec_id, offset in made:
            await state_store.create_execution(_execution(exec_id, flow=flow, created_at=start + offset), [])
        expected = [i for i, _ in sorted(made, key=lambda m: (m[1], m[0]), reverse=True)]

        for size in (1, 2, 3):
            pages, before = [], None
            while page := await state_store.list_executions(flow=flow, limit=size, before=before):
                pages.append([e.id for e in page])
                before = page[-1].id
            assert [i for p in pages for i in p] == expected, size
            assert all(len(p) == size for p in pages[:-1])
        assert await state_store.list_executions(flow=flow, before=expected[-1]) == []

    async def test_list_executions_cursor_is_a_place_in_time_whatever_the_filters(
        self, state_store: StateStore
    ) -> None:
        flow, other, start = f"flow_{new_id()}", f"other_{new_id()}", time.time() - 100
        version = 700_000 + int.from_bytes(os.urandom(3), "big")  # no other test's version
        deployed = {"deployment": {"flow": flow, "version": version}}
        rows = [
            _execution(f"w-{new_id()}", flow=flow, status="waiting", created_at=start, metadata=deployed),
            _execution(new_id(), flow=flow, status="completed", created_at=start + 1),
            _execution(f"x-{new_id()}", flow=other, status="waiting", created_at=start + 2),
            _execution(new_id(), flow=flow, status="waiting", created_at=start + 3, metadata=deployed),
            _execution(f"c-{new_id()}", flow=flow, status="completed", created_at=start + 4),
            _execution(new_id(), flow=flow, status="waiting", created_at=start + 5),
        ]
        for e in rows:
            await state_store.create_execution(e, [])
        w0, c1, elsewhere, w3, c4, w5 = (e.id for e in rows)

        async def ids(**filters: Any) -> list[str]:
            return [e.id for e in await state_store.list_executions(limit=10_000, **filters)]

        assert await ids(flow=flow, status="waiting") == [w5, w3, w0]
        assert await ids(flow=flow, status="waiting", before=w5) == [w3, w0]
        assert await ids(flow=flow, status="completed") == [c4, c1]
        assert await ids(flow=flow, version=version) == [w3, w0]
        assert await ids(version=version) == [w3, w0]
        assert await ids(version=version, status="waiting", before=w3) == [w0]
        # The cursor need not match the filters: another flow's execution, or another status,
        # still marks a place in time.
        assert await ids(flow=flow, before=elsewhere) == [c1, w0]
        assert await ids(flow=flow, status="waiting", before=c4) == [w3, w0]
        assert [i for i in await ids(status="waiting", before=c4) if i in {w0, elsewhere, w3}] == [
            w3,
            elsewhere,
            w0,
        ]

    async def test_list_executions_refuses_a_cursor_that_is_no_execution(
        self, state_store: StateStore
    ) -> None:
        flow = f"flow_{new_id()}"
        await state_store.create_execution(_execution(flow=flow), [])
        # Before, an unknown cursor was read as a bound on ids and listed whatever sorted below it.
        for cursor in (f"gone-{new_id()}", "z" * 300):
            with pytest.raises(KitaruUsageError) as info:
                await state_store.list_executions(flow=flow, before=cursor)
            message = str(info.value)
            assert message.startswith(f"no execution {cursor[:120]!r}"[:-1]), message
            assert "next_cursor" in message and len(message) < 400, message
        # With no execution at all after the cursor's place, a known cursor gives an empty page.
        last = (await state_store.list_executions(flow=flow))[-1]
        assert await state_store.list_executions(flow=flow, before=last.id) == []

    async def test_list_executions_refuses_a_page_size_below_one(self, state_store: StateStore) -> None:
        flow = f"flow_{new_id()}"
        for _ in range(2):
            await state_store.create_execution(_execution(flow=flow), [])
        # Each backend read a negative size its own way (all rows, an error, a slice from the end).
        for limit in (0, -1, -5):
            with pytest.raises(KitaruUsageError, match=rf"^limit={limit}: a page holds at least 1"):
                await state_store.list_executions(flow=flow, limit=limit)
        assert len(await state_store.list_executions(flow=flow, limit=1)) == 1

    # -- leases -------------------------------------------------------------------------------

    async def test_acquire_free_lease(self, state_store: StateStore) -> None:
        execution = _execution(status="waiting")
        await state_store.create_execution(execution, [])
        owner = _live_owner()

        before = time.time()
        leased = await state_store.acquire_lease(execution.id, owner, _TTL, allowed_statuses={"waiting"})

        stored = await _get(state_store, execution.id)
        for record in (leased, stored):
            assert record.lease_owner == owner
            assert record.status == "running"
            assert record.lease_expires_at is not None
            assert before + _TTL - 5 <= record.lease_expires_at <= time.time() + _TTL + 5

    async def test_acquire_can_keep_the_status(self, state_store: StateStore) -> None:
        execution = _execution(status="waiting")
        await state_store.create_execution(execution, [])
        owner = _live_owner()
        leased = await state_store.acquire_lease(
            execution.id, owner, _TTL, allowed_statuses={"waiting"}, set_status=None
        )
        assert leased.status == "waiting"
        assert (await _get(state_store, execution.id)).status == "waiting"
        assert (await _get(state_store, execution.id)).lease_owner == owner

    async def test_same_owner_reacquires_and_extends(self, state_store: StateStore) -> None:
        owner = _live_owner()
        execution = await state_store.acquire_lease(
            (await _leased(state_store, owner, status="running")).id,
            owner,
            1.0,
            allowed_statuses={"running"},
        )
        again = await state_store.acquire_lease(execution.id, owner, _TTL, allowed_statuses={"running"})
        assert again.lease_owner == owner
        assert again.lease_expires_at is not None and execution.lease_expires_at is not None
        assert again.lease_expires_at > execution.lease_expires_at + _TTL / 2

    @pytest.mark.parametrize("holder", ["this_process", "live_child", "other_host"])
    async def test_live_holder_keeps_its_lease(self, state_store: StateStore, holder: str) -> None:
        child = _python("import time; time.sleep(120)") if holder == "live_child" else None
        try:
            if child is not None:
                owner = f"{_HOST}:{child.pid}:child"
            elif holder == "this_process":
                owner = _live_owner("holder")
            else:
                owner = _remote_owner("holder")
            execution = await _leased(state_store, owner)

            with pytest.raises(KitaruLeaseError):
                await state_store.acquire_lease(
                    execution.id, _live_owner("intruder"), _TTL, allowed_statuses={"running"}
                )
            stored = await _get(state_store, execution.id)
            assert stored.lease_owner == owner
            assert stored.lease_expires_at == execution.lease_expires_at
        finally:
            if child is not None:
                child.kill()
                child.wait()

    async def test_expired_lease_is_taken_over(self, state_store: StateStore) -> None:
        holder = _live_owner("holder")
        execution = _execution()
        await state_store.create_execution(execution, [])
        await state_store.acquire_lease(execution.id, holder, -1.0, allowed_statuses={"running"})

        taker = _live_owner("taker")
        leased = await state_store.acquire_lease(execution.id, taker, _TTL, allowed_statuses={"running"})
        assert leased.lease_owner == taker == (await _get(state_store, execution.id)).lease_owner

    async def test_dead_local_holder_is_taken_over(self, state_store: StateStore) -> None:
        execution = await _leased(state_store, _dead_owner())
        taker = _live_owner("taker")
        leased = await state_store.acquire_lease(execution.id, taker, _TTL, allowed_statuses={"running"})
        assert leased.lease_owner == taker == (await _get(state_store, execution.id)).lease_owner

    @pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="needs /proc")
    async def test_zombie_holder_is_taken_over(self, state_store: StateStore) -> None:
        # An exited child not yet reaped still answers kill(pid, 0); it is dead all the same.
        child = _python("pass")
        try:
            deadline = time.monotonic() + 10
            while True:
                if _is_zombie(child.pid):
                    break
                assert time.monotonic() < deadline, "the child never exited"
                await _sleep(0.005)
            execution = await _leased(state_store, f"{_HOST}:{child.pid}:zombie")
            taker = _live_owner("taker")
            leased = await state_store.acquire_lease(execution.id, taker, _TTL, allowed_statuses={"running"})
            assert leased.lease_owner == taker
        finally:
            child.wait()

    async def test_acquire_in_wrong_status_raises_state_error(self, state_store: StateStore) -> None:
        execution = _execution(status="completed")
        await state_store.create_execution(execution, [])
        with pytest.raises(KitaruStateError):
            await state_store.acquire_lease(
                execution.id, _live_owner(), _TTL, allowed_statuses={"running", "waiting"}
            )
        stored = await _get(state_store, execution.id)
        assert stored.status == "completed"
        assert stored.lease_owner is None

    async def test_acquire_missing_execution_raises_not_found(self, state_store: StateStore) -> None:
        with pytest.raises(KitaruNotFoundError):
            await state_store.acquire_lease(
                f"missing-{new_id()}", _live_owner(), _TTL, allowed_statuses={"running"}
            )

    async def test_renew_leases_extends_own_and_reports_statuses(self, state_store: StateStore) -> None:
        owner, other = _live_owner("mine"), _live_owner("theirs")
        mine = await _leased(state_store, owner)
        await state_store.acquire_lease(mine.id, owner, 1.0, allowed_statuses={"running"})
        cancelled = await _leased(state_store, owner)
        await state_store.cancel(cancelled.id)
        theirs = await _leased(state_store, other)
        missing = f"missing-{new_id()}"

        statuses = await state_store.renew_leases(owner, [mine.id, cancelled.id, theirs.id, missing], _TTL)

        assert statuses == {mine.id: "running", cancelled.id: "cancelled", theirs.id: "running"}
        expires = (await _get(state_store, mine.id)).lease_expires_at
        assert expires is not None and expires > time.time() + _TTL / 2
        assert (await _get(state_store, theirs.id)).lease_owner == other
        assert (await _get(state_store, theirs.id)).lease_expires_at == theirs.lease_expires_at
        assert await state_store.renew_leases(owner, [], _TTL) == {}

    # -- commit -------------------------------------------------------------------------------

    async def test_commit_appends_in_order(self, state_store: StateStore) -> None:
        owner = _live_owner()
        execution = await _leased(state_store, owner)
        first = [_record("checkpoint_started", "a"), _completed("a")]
        first[1].data = {"note": "ünïcode", "nested": [1, {"x": None}]}
        second = [
            JournalRecord(kind="log", data={"line": "hello"}, ts=123.5),
            _record("checkpoint_started", "b"),
        ]
        await state_store.commit(execution.id, first, owner=owner)
        await state_store.commit(execution.id, second)

        journal = await state_store.read_journal(execution.id)
        assert [(r.kind, r.call_id) for r in journal] == [
            ("checkpoint_started", "a"),
            ("checkpoint_completed", "a"),
            ("log", None),
            ("checkpoint_started", "b"),
        ]
        ids = [r.id for r in journal if isinstance(r.id, int)]
        assert len(ids) == len(journal)
        assert ids == sorted(ids) and len(set(ids)) == len(ids)
        assert journal[1].data == {"note": "ünïcode", "nested": [1, {"x": None}]}
        assert (journal[1].seq, journal[1].name, journal[1].attempt) == (1, "conformance.a", 1)
        assert journal[2].ts == 123.5
        assert all(r.ts > 0 for r in journal)

    async def test_commit_stores_artifacts_and_changes_status(self, state_store: StateStore) -> None:
        owner = _live_owner()
        execution = await _leased(state_store, owner)
        result = _artifact(execution.id, "result", type="result", data=b"42")

        await state_store.commit(
            execution.id,
            [JournalRecord(kind="flow_finished")],
            [result],
            owner=owner,
            status="completed",
            result_artifact=result.id,
            release_lease=True,
        )

        stored = await _get(state_store, execution.id)
        assert stored.status == "completed"
        assert stored.result_artifact == result.id
        assert stored.error is None
        assert stored.lease_owner is None and stored.lease_expires_at is None
        assert await state_store.get_artifact(result.id) == result

    async def test_commit_records_an_error(self, state_store: StateStore) -> None:
        owner = _live_owner()
        execution = await _leased(state_store, owner)
        await state_store.commit(execution.id, [], owner=owner, status="failed", error="Boom: no")
        stored = await _get(state_store, execution.id)
        assert (stored.status, stored.error) == ("failed", "Boom: no")
        assert stored.lease_owner == owner  # released only when asked

    async def test_commit_merges_metadata(self, state_store: StateStore) -> None:
        execution = _execution(metadata={"a": 1, "b": {"x": 1}})
        await state_store.create_execution(execution, [])

        await state_store.commit(execution.id, [], metadata={"b": 2, "c": [3]})
        assert (await _get(state_store, execution.id)).metadata == {"a": 1, "b": 2, "c": [3]}
        await state_store.commit(execution.id, [_record("log", None)])
        assert (await _get(state_store, execution.id)).metadata == {"a": 1, "b": 2, "c": [3]}

    @pytest.mark.parametrize("kind", sorted(ONCE_ONLY_KINDS))
    async def test_once_only_duplicate_in_a_batch_rolls_back_the_batch(
        self, state_store: StateStore, kind: str
    ) -> None:
        owner = _live_owner()
        execution = await _leased(state_store, owner, metadata={"m": 0})
        artifact = _artifact(execution.id, call_id="c1")

        with pytest.raises(KitaruConflictError):
            await state_store.commit(
                execution.id,
                [_record("checkpoint_started", "c0"), _record(kind, "c1"), _record(kind, "c1")],
                [artifact],
                owner=owner,
                status="completed",
                result_artifact=artifact.id,
                release_lease=True,
                metadata={"m": 1},
            )

        assert await state_store.read_journal(execution.id) == []
        assert await state_store.get_artifact(artifact.id) is None
        assert await _get(state_store, execution.id) == execution

    @pytest.mark.parametrize("kind", sorted(ONCE_ONLY_KINDS))
    async def test_once_only_duplicate_of_a_committed_record_rolls_back(
        self, state_store: StateStore, kind: str
    ) -> None:
        owner = _live_owner()
        execution = await _leased(state_store, owner)
        await state_store.commit(execution.id, [_record(kind, "c1")], owner=owner)
        before = await state_store.read_journal(execution.id)
        artifact = _artifact(execution.id, call_id="c2")

        with pytest.raises(KitaruConflictError):
            await state_store.commit(
                execution.id,
                [_record("checkpoint_started", "c2"), _completed("c2", artifact), _record(kind, "c1")],
                [artifact],
                owner=owner,
                status="failed",
                error="late",
                release_lease=True,
            )

        assert await state_store.read_journal(execution.id) == before
        assert await state_store.get_artifact(artifact.id) is None
        stored = await _get(state_store, execution.id)
        assert (stored.status, stored.error, stored.lease_owner) == ("running", None, owner)
        # The store is still usable after the rollback.
        await state_store.commit(execution.id, [_completed("c2")], owner=owner)
        assert (await _kinds(state_store, execution.id))[-1] == ("checkpoint_completed", "c2")

    async def test_repeatable_kinds_may_repeat(self, state_store: StateStore) -> None:
        execution = _execution()
        await state_store.create_execution(execution, [])
        records = [
            _record("checkpoint_started", "a"),
            _record("checkpoint_failed", "a"),
            _record("checkpoint_started", "a"),
            _record("log", "a"),
            _record("log", "a"),
        ]
        await state_store.commit(execution.id, records)
        await state_store.commit(execution.id, [_record("checkpoint_started", "a")])
        assert len(await state_store.read_journal(execution.id)) == 6

    @pytest.mark.parametrize("owner", [None, "someone"])
    async def test_commit_to_no_execution_is_refused_and_writes_nothing(
        self, state_store: StateStore, owner: str | None
    ) -> None:
        gone = f"gone-{new_id()}"
        for metadata in (None, {"k": "v"}):  # both commit paths (with metadata: merged under a lock)
            with pytest.raises(KitaruNotFoundError, match=f"no execution '{gone}'"):
                await state_store.commit(gone, [_completed("a")], owner=owner, metadata=metadata)
        assert await state_store.read_journal(gone) == []

    async def test_read_journal_after_a_record_gives_what_came_later(self, state_store: StateStore) -> None:
        execution, other = _execution(), _execution()
        for e in (execution, other):
            await state_store.create_execution(e, [])
        await state_store.commit(execution.id, [_completed("a"), _record("log", "a")])
        await state_store.commit(other.id, [_completed("x")])  # ids interleave across executions
        await state_store.commit(execution.id, [_completed("b"), _record("log", "b")])
        whole = await state_store.read_journal(execution.id)
        assert [(r.kind, r.call_id) for r in whole] == [
            ("checkpoint_completed", "a"),
            ("log", "a"),
            ("checkpoint_completed", "b"),
            ("log", "b"),
        ]
        for n, record in enumerate(whole):
            assert record.id is not None
            assert await state_store.read_journal(execution.id, after=record.id) == whole[n + 1 :]
        assert await state_store.read_journal(execution.id, after=0) == whole

    async def test_once_only_is_per_execution_kind_and_call(self, state_store: StateStore) -> None:
        one, two = _execution(), _execution()
        for e in (one, two):
            await state_store.create_execution(e, [])
        await state_store.commit(one.id, [_completed("a"), _completed("b")])
        await state_store.commit(two.id, [_completed("a")])
        await state_store.commit(one.id, [_record("wait_opened", "w"), _record("wait_answered", "w")])
        assert len(await state_store.read_journal(one.id)) == 4
        assert len(await state_store.read_journal(two.id)) == 1

    @pytest.mark.parametrize("holder", ["other_owner", "nobody"])
    async def test_commit_without_the_lease_writes_nothing(
        self, state_store: StateStore, holder: str
    ) -> None:
        if holder == "nobody":
            execution = _execution(metadata={"m": 0})
            await state_store.create_execution(execution, [])
        else:
            execution = await _leased(state_store, _live_owner("holder"), metadata={"m": 0})
        artifact = _artifact(execution.id)

        with pytest.raises(KitaruLeaseError):
            await state_store.commit(
                execution.id,
                [_completed("a", artifact)],
                [artifact],
                owner=_live_owner("stale"),
                status="completed",
                result_artifact=artifact.id,
                release_lease=True,
                metadata={"m": 1},
            )

        assert await state_store.read_journal(execution.id) == []
        assert await state_store.get_artifact(artifact.id) is None
        assert await _get(state_store, execution.id) == execution

    # -- suspend ------------------------------------------------------------------------------

    async def test_suspend_marks_waiting_and_releases_the_lease(self, state_store: StateStore) -> None:
        owner = _live_owner()
        execution = await _leased(state_store, owner)
        await state_store.commit(execution.id, [_record("wait_opened", "w")], owner=owner)

        assert await state_store.suspend(execution.id, owner, ["w"]) is True

        stored = await _get(state_store, execution.id)
        assert stored.status == "waiting"
        assert stored.lease_owner is None and stored.lease_expires_at is None
        # Free for whoever resumes it.
        other = _live_owner("resumer")
        await state_store.acquire_lease(execution.id, other, _TTL, allowed_statuses={"waiting"})

    async def test_suspend_refuses_when_a_wait_was_answered(self, state_store: StateStore) -> None:
        owner = _live_owner()
        execution = await _leased(state_store, owner)
        await state_store.commit(
            execution.id, [_record("wait_opened", "w1"), _record("wait_opened", "w2")], owner=owner
        )
        record, artifact = _answer(execution.id, "w2")
        # Answered while the runner still holds the lease: recorded, nobody else takes over.
        assert (
            await state_store.answer_wait(
                execution.id,
                record,
                artifact,
                owner=_live_owner("answerer"),
                ttl=_TTL,
                take_lease=True,
            )
            is False
        )
        before = await _get(state_store, execution.id)

        assert await state_store.suspend(execution.id, owner, ["w1", "w2"]) is False

        stored = await _get(state_store, execution.id)
        assert stored.status == "running"
        assert stored.lease_owner == owner
        assert stored.lease_expires_at == before.lease_expires_at
        assert await state_store.suspend(execution.id, owner, ["w1"]) is True

    async def test_suspend_without_the_lease_raises(self, state_store: StateStore) -> None:
        owner = _live_owner()
        execution = await _leased(state_store, owner)
        with pytest.raises(KitaruLeaseError):
            await state_store.suspend(execution.id, _live_owner("stale"), [])
        stored = await _get(state_store, execution.id)
        assert (stored.status, stored.lease_owner) == ("running", owner)

    # -- answering waits ----------------------------------------------------------------------

    async def test_answer_takes_the_free_lease_of_a_waiting_execution(self, state_store: StateStore) -> None:
        exec_id = await _waiting(state_store, "approve")
        record, artifact = _answer(exec_id, "approve")
        answerer = _live_owner("answerer")

        took = await state_store.answer_wait(
            exec_id, record, artifact, owner=answerer, ttl=_TTL, take_lease=True
        )

        assert took is True
        stored = await _get(state_store, exec_id)
        assert (stored.status, stored.lease_owner) == ("running", answerer)
        assert stored.lease_expires_at is not None and stored.lease_expires_at > time.time()
        last = (await state_store.read_journal(exec_id))[-1]
        assert (last.kind, last.call_id, last.artifact_id) == (
            "wait_answered",
            "approve",
            artifact.id,
        )
        assert await state_store.get_artifact(artifact.id) == artifact

    async def test_concurrent_answers_each_get_their_own_outcome(self, state_store: StateStore) -> None:
        """A burst of answers on one loop (a store may write them together): each caller learns
        its own outcome, and a refused answer holds back none of the others."""
        import anyio

        waiting = [await _waiting(state_store, "approve") for _ in range(6)]
        answers = [(exec_id, "approve") for exec_id in waiting]
        answers += [(waiting[0], "approve"), (waiting[1], "never_opened"), ("no-such-execution", "approve")]
        outcomes: dict[int, Any] = {}

        async def one(n: int, exec_id: str, wait: str) -> None:
            record, artifact = _answer(exec_id, wait)
            try:
                outcomes[n] = await state_store.answer_wait(
                    exec_id, record, artifact, owner=_live_owner("answerer"), ttl=_TTL, take_lease=True
                )
            except KitaruError as exc:
                outcomes[n] = exc

        async with anyio.create_task_group() as tg:
            for n, (exec_id, wait) in enumerate(answers):
                tg.start_soon(one, n, exec_id, wait)

        first = [outcomes[0], outcomes[6]]  # two answers to one wait: exactly one is recorded
        assert sorted(isinstance(o, KitaruStateError) for o in first) == [False, True]
        assert True in first
        assert [outcomes[n] for n in range(1, 6)] == [True] * 5
        assert isinstance(outcomes[7], KitaruNotFoundError)
        assert isinstance(outcomes[8], KitaruNotFoundError)
        for exec_id in waiting:
            assert (await _kinds(state_store, exec_id)).count(("wait_answered", "approve")) == 1
            assert (await _get(state_store, exec_id)).status == "running"

    async def test_answer_without_take_lease_leaves_it_waiting(self, state_store: StateStore) -> None:
        exec_id = await _waiting(state_store)
        record, artifact = _answer(exec_id)
        took = await state_store.answer_wait(
            exec_id, record, artifact, owner=_live_owner(), ttl=_TTL, take_lease=False
        )
        assert took is False
        stored = await _get(state_store, exec_id)
        assert (stored.status, stored.lease_owner) == ("waiting", None)
        assert (await _kinds(state_store, exec_id))[-1] == ("wait_answered", "approve")

    async def test_answer_leaves_a_live_lease_alone(self, state_store: StateStore) -> None:
        exec_id = await _waiting(state_store)
        holder = _remote_owner("holder")
        held = await state_store.acquire_lease(
            exec_id, holder, _TTL, allowed_statuses={"waiting"}, set_status=None
        )
        record, artifact = _answer(exec_id)

        took = await state_store.answer_wait(
            exec_id, record, artifact, owner=_live_owner(), ttl=_TTL, take_lease=True
        )

        assert took is False
        stored = await _get(state_store, exec_id)
        assert (stored.status, stored.lease_owner) == ("waiting", holder)
        assert stored.lease_expires_at == held.lease_expires_at
        assert (await _kinds(state_store, exec_id))[-1] == ("wait_answered", "approve")

    @pytest.mark.parametrize("holder", ["dead", "expired"])
    async def test_answer_takes_a_lease_that_is_no_longer_held(
        self, state_store: StateStore, holder: str
    ) -> None:
        exec_id = await _waiting(state_store)
        if holder == "dead":
            await state_store.acquire_lease(
                exec_id, _dead_owner(), _TTL, allowed_statuses={"waiting"}, set_status=None
            )
        else:
            await state_store.acquire_lease(
                exec_id, _remote_owner(), -1.0, allowed_statuses={"waiting"}, set_status=None
            )
        record, artifact = _answer(exec_id)
        answerer = _live_owner("answerer")

        assert await state_store.answer_wait(
            exec_id, record, artifact, owner=answerer, ttl=_TTL, take_lease=True
        )
        assert (await _get(state_store, exec_id)).lease_owner == answerer

    async def test_answer_needs_an_opened_wait(self, state_store: StateStore) -> None:
        exec_id = await _waiting(state_store, "approve")
        before = await state_store.read_journal(exec_id)
        record, artifact = _answer(exec_id, "never_opened")

        with pytest.raises(KitaruNotFoundError):
            await state_store.answer_wait(
                exec_id, record, artifact, owner=_live_owner(), ttl=_TTL, take_lease=True
            )

        assert await state_store.read_journal(exec_id) == before
        assert await state_store.get_artifact(artifact.id) is None
        assert (await _get(state_store, exec_id)).status == "waiting"

    @pytest.mark.parametrize("closed_by", ["wait_answered", "wait_timed_out"])
    async def test_answer_to_a_closed_wait_raises_state_error(
        self, state_store: StateStore, closed_by: str
    ) -> None:
        exec_id = await _waiting(state_store)
        if closed_by == "wait_answered":
            record, artifact = _answer(exec_id)
            await state_store.answer_wait(
                exec_id, record, artifact, owner=_live_owner(), ttl=_TTL, take_lease=False
            )
        else:
            await state_store.commit(exec_id, [_record("wait_timed_out", "approve")])
        before = await state_store.read_journal(exec_id)
        record, artifact = _answer(exec_id)

        with pytest.raises(KitaruStateError):
            await state_store.answer_wait(
                exec_id, record, artifact, owner=_live_owner(), ttl=_TTL, take_lease=True
            )

        assert await state_store.read_journal(exec_id) == before
        assert await state_store.get_artifact(artifact.id) is None
        assert (await _get(state_store, exec_id)).status == "waiting"

    @pytest.mark.parametrize("status", ["completed", "failed", "cancelled"])
    async def test_answer_to_a_finished_execution_raises_state_error(
        self, state_store: StateStore, status: str
    ) -> None:
        exec_id = await _waiting(state_store)
        if status == "cancelled":
            await state_store.cancel(exec_id)
        else:
            await state_store.commit(exec_id, [], status=status)
        before = await state_store.read_journal(exec_id)
        record, artifact = _answer(exec_id)

        with pytest.raises(KitaruStateError):
            await state_store.answer_wait(
                exec_id, record, artifact, owner=_live_owner(), ttl=_TTL, take_lease=True
            )

        assert await state_store.read_journal(exec_id) == before
        assert await state_store.get_artifact(artifact.id) is None
        stored = await _get(state_store, exec_id)
        assert (stored.status, stored.lease_owner) == (status, None)

    async def test_answer_for_a_missing_execution_raises_not_found(self, state_store: StateStore) -> None:
        record, artifact = _answer(f"missing-{new_id()}")
        with pytest.raises(KitaruNotFoundError):
            await state_store.answer_wait(
                artifact.exec_id, record, artifact, owner=_live_owner(), ttl=_TTL, take_lease=True
            )

    # -- cancel -------------------------------------------------------------------------------

    async def test_cancel_a_waiting_execution(self, state_store: StateStore) -> None:
        exec_id = await _waiting(state_store)
        cancelled = await state_store.cancel(exec_id)
        assert cancelled.status == "cancelled"
        stored = await _get(state_store, exec_id)
        assert (stored.status, stored.lease_owner) == ("cancelled", None)
        with pytest.raises(KitaruStateError):
            await state_store.acquire_lease(
                exec_id, _live_owner(), _TTL, allowed_statuses={"running", "waiting"}
            )

    async def test_cancel_a_running_execution_lets_its_runner_notice(self, state_store: StateStore) -> None:
        owner = _live_owner()
        execution = await _leased(state_store, owner)

        assert (await state_store.cancel(execution.id)).status == "cancelled"

        # The runner keeps its lease until it stops, and sees the cancel when it renews.
        assert await state_store.renew_leases(owner, [execution.id], _TTL) == {execution.id: "cancelled"}
        assert (await _get(state_store, execution.id)).lease_owner == owner
        await state_store.commit(execution.id, [_record("checkpoint_failed", "a")], owner=owner)

    # -- final statuses: cancelled (and completed) are never left ------------------------------

    async def test_commit_returns_the_status(self, state_store: StateStore) -> None:
        owner = _live_owner()
        execution = await _leased(state_store, owner)
        assert await state_store.commit(execution.id, [_completed("a")], owner=owner) == "running"
        assert await state_store.commit(execution.id, [], owner=owner, status="failed", error="E") == "failed"

    async def test_a_runner_commit_sees_a_cancel_and_its_paid_work_is_kept(
        self, state_store: StateStore
    ) -> None:
        owner = _live_owner()
        execution = await _leased(state_store, owner)
        await state_store.cancel(execution.id)
        artifact = _artifact(execution.id, call_id="a")

        # The checkpoint that finished as the cancel came is recorded; the answer says stop.
        assert await state_store.commit(
            execution.id, [_completed("a", artifact)], [artifact], owner=owner
        ) == ("cancelled")
        assert ("checkpoint_completed", "a") in await _kinds(state_store, execution.id)
        assert await state_store.get_artifact(artifact.id) == artifact

    @pytest.mark.parametrize("final", ["cancelled", "completed"])
    @pytest.mark.parametrize("status", ["completed", "failed", "running", "waiting"])
    async def test_a_final_status_is_never_left_by_commit(
        self, state_store: StateStore, final: str, status: str
    ) -> None:
        if final == status:
            pytest.skip("not a change of status")
        owner = _live_owner()
        execution = await _leased(state_store, owner)
        if final == "cancelled":
            await state_store.cancel(execution.id)
        else:
            await state_store.commit(execution.id, [], owner=owner, status="completed")
        before = await state_store.read_journal(execution.id)
        artifact = _artifact(execution.id, "result", type="result")

        with pytest.raises(KitaruStateError, match=final):
            await state_store.commit(
                execution.id,
                [_record("flow_completed", None, artifact=artifact)],
                [artifact],
                owner=owner,
                status=status,
                result_artifact=artifact.id,
                release_lease=True,
            )
        with pytest.raises(KitaruStateError, match=final):
            await state_store.commit(execution.id, [], status=status, metadata={"m": 1})

        assert await state_store.read_journal(execution.id) == before
        assert await state_store.get_artifact(artifact.id) is None
        stored = await _get(state_store, execution.id)
        assert (stored.status, stored.result_artifact, stored.metadata) == (final, None, {})

    async def test_a_cancelled_execution_does_not_suspend(self, state_store: StateStore) -> None:
        owner = _live_owner()
        execution = await _leased(state_store, owner)
        await state_store.commit(execution.id, [_record("wait_opened", "w")], owner=owner)
        await state_store.cancel(execution.id)

        with pytest.raises(KitaruStateError, match="cancelled"):
            await state_store.suspend(execution.id, owner, ["w"])

        assert (await _get(state_store, execution.id)).status == "cancelled"

    @pytest.mark.parametrize("was", ["running", "waiting"])
    async def test_a_cancelled_execution_takes_no_lease_and_no_answer(
        self, state_store: StateStore, was: str
    ) -> None:
        exec_id = (
            await _waiting(state_store)
            if was == "waiting"
            else (await _leased(state_store, _dead_owner())).id
        )
        await state_store.cancel(exec_id)
        before = await state_store.read_journal(exec_id)

        for set_status in ("running", None):
            with pytest.raises(KitaruStateError, match="stays cancelled"):
                await state_store.acquire_lease(
                    exec_id,
                    _live_owner(),
                    _TTL,
                    allowed_statuses={"running", "waiting", "cancelled"},
                    set_status=set_status,
                )
        if was == "waiting":
            record, artifact = _answer(exec_id)
            with pytest.raises(KitaruStateError, match="stays cancelled"):
                await state_store.answer_wait(
                    exec_id, record, artifact, owner=_live_owner(), ttl=_TTL, take_lease=True
                )

        assert await state_store.read_journal(exec_id) == before
        assert (await _get(state_store, exec_id)).status == "cancelled"

    # -- recovery candidates ------------------------------------------------------------------

    async def test_list_recoverable_finds_running_executions_nobody_drives(
        self, state_store: StateStore
    ) -> None:
        dead = (await _leased(state_store, _dead_owner())).id
        expired = _execution()
        await state_store.create_execution(expired, [])
        await state_store.acquire_lease(expired.id, _remote_owner(), -1.0, allowed_statuses={"running"})
        released = await _leased(state_store, _live_owner())
        await state_store.commit(released.id, [], owner=released.lease_owner, release_lease=True)
        live_here = (await _leased(state_store, _live_owner())).id
        live_elsewhere = (await _leased(state_store, _remote_owner())).id
        finished = await _leased(state_store, _dead_owner())
        await state_store.commit(finished.id, [], status="failed", error="E")

        found = [e.id for e in await state_store.list_recoverable(limit=10_000)]

        assert {dead, expired.id, released.id} <= set(found)
        assert not {live_here, live_elsewhere, finished.id} & set(found)
        records = await state_store.list_recoverable(limit=10_000)
        assert records == sorted(records, key=lambda e: (e.created_at, e.id))  # oldest first

    async def test_list_recoverable_finds_waits_past_their_deadline(self, state_store: StateStore) -> None:
        async def waiting(deadline: float | None, closed_by: str | None = None) -> str:
            owner = _live_owner()
            execution = await _leased(state_store, owner)
            opened = _record("wait_opened", "w")
            opened.data = {"question": "?", "deadline": deadline}
            await state_store.commit(execution.id, [opened], owner=owner)
            if closed_by is not None:
                await state_store.commit(execution.id, [_record(closed_by, "w")], owner=owner)
            assert await state_store.suspend(execution.id, owner, []) is True
            return execution.id

        past, future = time.time() - 5, time.time() + 3600
        due = await waiting(past)
        not_yet, no_deadline = await waiting(future), await waiting(None)
        answered, timed_out = await waiting(past, "wait_answered"), await waiting(past, "wait_timed_out")
        cancelled = await waiting(past)
        await state_store.cancel(cancelled)

        found = {e.id: e for e in await state_store.list_recoverable(limit=10_000)}

        assert due in found and found[due].status == "waiting"
        assert not {not_yet, no_deadline, answered, timed_out, cancelled} & set(found)

    @pytest.mark.parametrize("status", ["completed", "failed", "cancelled"])
    async def test_cancel_a_finished_execution_raises_state_error(
        self, state_store: StateStore, status: str
    ) -> None:
        execution = _execution(status=status)
        await state_store.create_execution(execution, [])
        with pytest.raises(KitaruStateError):
            await state_store.cancel(execution.id)
        assert (await _get(state_store, execution.id)).status == status
        assert await state_store.read_journal(execution.id) == []

    async def test_cancel_a_missing_execution_raises_not_found(self, state_store: StateStore) -> None:
        with pytest.raises(KitaruNotFoundError):
            await state_store.cancel(f"missing-{new_id()}")

    # -- journal and artifacts ----------------------------------------------------------------

    async def test_journals_are_per_execution(self, state_store: StateStore) -> None:
        one, two = _execution(), _execution()
        for e in (one, two):
            await state_store.create_execution(e, [])
        await state_store.commit(one.id, [_completed("a")])
        await state_store.commit(two.id, [_completed("b")])
        await state_store.commit(one.id, [_completed("c")])
        assert await _kinds(state_store, one.id) == [
            ("checkpoint_completed", "a"),
            ("checkpoint_completed", "c"),
        ]
        assert await _kinds(state_store, two.id) == [("checkpoint_completed", "b")]
        assert await state_store.read_journal(f"missing-{new_id()}") == []

    # -- one wait's records (read_wait) ----------------------------------------------------------

    async def test_read_wait_gives_that_wait_s_records_in_commit_order(self, state_store: StateStore) -> None:
        owner = _live_owner()
        execution = await _leased(state_store, owner)
        # A checkpoint and a log that share the wait's call id are not the wait's records.
        await state_store.commit(
            execution.id,
            [
                _record("checkpoint_started", "approve"),
                _completed("approve"),
                _record("wait_opened", "other"),
                _record("wait_opened", "approve"),
                JournalRecord(kind="log", call_id="approve", data={"line": "asked"}),
            ],
            owner=owner,
        )
        await state_store.commit(execution.id, [_completed("between")], owner=owner)
        assert await state_store.suspend(execution.id, owner, ["approve", "other"]) is True
        record, artifact = _answer(execution.id, "approve")
        record.data = {"aborted": True, "reason": "no"}
        await state_store.answer_wait(
            execution.id, record, artifact, owner=_live_owner(), ttl=_TTL, take_lease=False
        )
        await state_store.commit(execution.id, [_record("wait_timed_out", "other"), _completed("after")])
        journal = await state_store.read_journal(execution.id)

        approve = await state_store.read_wait(execution.id, "approve")
        other = await state_store.read_wait(execution.id, "other")

        # Each record as read_journal gives it (its id, data, artifact...), and nothing else.
        assert approve == [journal[3], journal[6]]
        assert [(r.kind, r.call_id) for r in approve] == [
            ("wait_opened", "approve"),
            ("wait_answered", "approve"),
        ]
        assert (approve[1].artifact_id, approve[1].data) == (artifact.id, {"aborted": True, "reason": "no"})
        assert other == [journal[2], journal[7]]
        assert [(r.kind, r.call_id) for r in other] == [("wait_opened", "other"), ("wait_timed_out", "other")]

    async def test_read_wait_includes_a_cancel(self, state_store: StateStore) -> None:
        exec_id = await _waiting(state_store, "approve")
        assert [r.kind for r in await state_store.read_wait(exec_id, "approve")] == ["wait_opened"]
        await state_store.cancel(exec_id)
        journal = await state_store.read_journal(exec_id)

        got = await state_store.read_wait(exec_id, "approve")

        assert [(r.kind, r.call_id) for r in got] == [("wait_opened", "approve"), ("cancel_requested", None)]
        assert got == [journal[0], journal[-1]]
        # The cancel decides an answer to any wait of the execution, even one never opened.
        assert await state_store.read_wait(exec_id, "never_opened") == [journal[-1]]

    async def test_read_wait_of_an_unknown_execution_or_wait_is_empty(self, state_store: StateStore) -> None:
        exec_id = await _waiting(state_store, "approve")
        await state_store.commit(exec_id, [_completed("research"), _record("wait_opened", "later")])
        assert await state_store.read_wait(f"missing-{new_id()}", "approve") == []
        assert await state_store.read_wait(exec_id, "never_opened") == []
        assert await state_store.read_wait(exec_id, "research") == []  # a checkpoint's call id
        assert await state_store.read_wait(exec_id, "approv") == []
        assert [r.call_id for r in await state_store.read_wait(exec_id, "later")] == ["later"]

    async def test_read_wait_is_per_execution(self, state_store: StateStore) -> None:
        one = await _waiting(state_store, "approve")
        two = await _waiting(state_store, "approve")
        record, artifact = _answer(two, "approve")
        await state_store.answer_wait(two, record, artifact, owner=_live_owner(), ttl=_TTL, take_lease=False)
        await state_store.cancel(two)

        assert await state_store.read_wait(one, "approve") == (await state_store.read_journal(one))[:1]
        assert [r.kind for r in await state_store.read_wait(two, "approve")] == [
            "wait_opened",
            "wait_answered",
            "cancel_requested",
        ]

    async def test_concurrent_wait_reads_each_get_their_own(self, state_store: StateStore) -> None:
        """Wait reads made together (a store may serve them in one query) each get what a read of
        its own gets: its execution's records of its wait."""
        import anyio

        executions = [await _waiting(state_store, "approve") for _ in range(4)]
        owner = _live_owner()
        await state_store.acquire_lease(executions[1], owner, _TTL, allowed_statuses={"waiting"})
        await state_store.commit(executions[1], [_record("wait_opened", "second")], owner=owner)
        record, artifact = _answer(executions[2], "approve")
        await state_store.answer_wait(
            executions[2], record, artifact, owner=_live_owner(), ttl=_TTL, take_lease=False
        )
        await state_store.cancel(executions[3])
        asked = [(e, w) for e in [*executions, f"missing-{new_id()}"] for w in ("approve", "second", "none")]
        asked += asked[:3]
        alone = [await state_store.read_wait(e, w) for e, w in asked]
        got: list[Any] = [None] * len(asked)

        async def one(n: int) -> None:
            got[n] = await state_store.read_wait(*asked[n])

        async with anyio.create_task_group() as tg:
            for n in range(len(asked)):
                tg.start_soon(one, n)

        assert got == alone
        assert [len(records) for records in alone[:12]] == [1, 0, 0, 1, 1, 0, 2, 0, 0, 2, 1, 1]
        assert alone[12:15] == [[], [], []]

    async def test_artifact_round_trip(self, state_store: StateStore) -> None:
        execution = _execution()
        await state_store.create_execution(execution, [])
        inline = _artifact(execution.id, "small", call_id="a", data=b"\x00\xffbytes")
        external = _artifact(execution.id, "large", call_id="b")
        external.inline, external.uri = None, "file:///tmp/blobs/ab/cdef"
        await state_store.commit(execution.id, [], [inline, external])

        assert await state_store.get_artifact(inline.id) == inline
        assert await state_store.get_artifact(external.id) == external
        assert await state_store.get_artifact(f"missing-{new_id()}") is None

    async def test_list_artifacts_follows_the_journal(self, state_store: StateStore) -> None:
        original = _execution()
        reused = _artifact(original.id, "out", call_id="a")
        await state_store.create_execution(original, [])
        await state_store.commit(original.id, [_completed("a", reused)], [reused])

        execution = _execution(original_exec_id=original.id)
        inputs = _artifact(execution.id, "topic", type="input")
        await state_store.create_execution(execution, [inputs])
        out2 = _artifact(execution.id, "out", version=2, call_id="b")
        note = _artifact(execution.id, "note", type="save", call_id="b")
        loaded = _artifact(original.id, "elsewhere", call_id="z")
        unreferenced = _artifact(execution.id, "stray")
        await state_store.commit(
            execution.id,
            [
                _completed("a", reused),  # a replay reuses the original's output
                _record("checkpoint_started", "b"),
                _record("save", "b", artifact=note),
                JournalRecord(kind="load", call_id="b", artifact_id=loaded.id),
            ],
            [note, loaded, unreferenced],
        )
        await state_store.commit(
            execution.id, [_completed("b", out2), _record("log", "b", artifact=note)], [out2]
        )

        assert await state_store.list_artifacts(execution.id) == [inputs, reused, note, out2]
        assert await state_store.list_artifacts(execution.id, name="out") == [reused, out2]
        assert await state_store.list_artifacts(execution.id, type="output") == [reused, out2]
        assert await state_store.list_artifacts(execution.id, type="save") == [note]
        assert await state_store.list_artifacts(execution.id, type="input") == [inputs]
        assert await state_store.list_artifacts(execution.id, name="out", type="save") == []
        assert await state_store.list_artifacts(original.id) == [reused]
        assert await state_store.get_artifact(unreferenced.id) == unreferenced
        assert await state_store.list_artifacts(f"missing-{new_id()}") == []

    # -- concurrency --------------------------------------------------------------------------

    @pytest.mark.parametrize("how", ["tasks", "threads"])
    async def test_threads_commit_distinct_records(self, state_store: StateStore, how: str) -> None:
        owner = _live_owner()
        execution = await _leased(state_store, owner)
        threads, per_thread = 8, 20

        async def work(i: int) -> None:
            for n in range(per_thread):
                artifact = _artifact(execution.id, f"t{i}", version=n + 1, call_id=f"t{i}-{n}")
                await state_store.commit(
                    execution.id, [_completed(f"t{i}-{n}", artifact)], [artifact], owner=owner
                )

        assert await _race(how, threads, work, state_store) == [None] * threads

        journal = await state_store.read_journal(execution.id)
        assert len(journal) == threads * per_thread
        assert len({r.id for r in journal}) == len(journal)
        for i in range(threads):
            # Each thread's records in the order that thread committed them.
            mine = [r.call_id for r in journal if r.call_id and r.call_id.startswith(f"t{i}-")]
            assert mine == [f"t{i}-{n}" for n in range(per_thread)]
        assert len(await state_store.list_artifacts(execution.id)) == threads * per_thread

    @pytest.mark.parametrize("how", ["tasks", "threads"])
    async def test_threads_racing_on_one_record_store_it_once(
        self, state_store: StateStore, how: str
    ) -> None:
        execution = _execution()
        await state_store.create_execution(execution, [])

        async def work(i: int) -> str:
            artifact = _artifact(execution.id, call_id="contested")
            await state_store.commit(execution.id, [_completed("contested", artifact)], [artifact])
            return artifact.id

        results = await _race(how, 8, work, state_store)

        winners = [r for r in results if isinstance(r, str)]
        assert len(winners) == 1
        assert all(isinstance(r, KitaruConflictError) for r in results if r not in winners)
        journal = await state_store.read_journal(execution.id)
        assert [(r.kind, r.artifact_id) for r in journal] == [("checkpoint_completed", winners[0])]
        assert [a.id for a in await state_store.list_artifacts(execution.id)] == winners

    @pytest.mark.parametrize("how", ["tasks", "threads"])
    async def test_threads_racing_for_a_lease_one_wins(self, state_store: StateStore, how: str) -> None:
        execution = _execution(status="waiting")
        await state_store.create_execution(execution, [])
        owners = [_remote_owner(f"r{i}") for i in range(8)]

        results = await _race(
            how,
            8,
            lambda i: state_store.acquire_lease(
                execution.id, owners[i], _TTL, allowed_statuses={"waiting", "running"}
            ),
            state_store,
        )

        winners = [r for r in results if isinstance(r, ExecutionRecord)]
        assert len(winners) == 1
        assert all(isinstance(r, KitaruLeaseError) for r in results if r not in winners)
        assert (await _get(state_store, execution.id)).lease_owner == winners[0].lease_owner

    async def test_processes_commit_concurrently(self, state_store: StateStore) -> None:
        opener = self.other_process_opener(state_store)
        if opener is None:
            pytest.skip("this store lives inside one process")
        execution = _execution()
        await state_store.create_execution(execution, [])
        ctx = multiprocessing.get_context("spawn")
        ready, results, go = ctx.Queue(), ctx.Queue(), ctx.Event()
        workers, count = 2, 100
        procs = [
            ctx.Process(
                target=_commit_from_process,
                args=(opener, execution.id, w, count, ready, go, results),
            )
            for w in range(workers)
        ]
        for p in procs:
            p.start()
        try:
            for _ in procs:
                ready.get(timeout=60)
            go.set()
            outcomes = sorted(results.get(timeout=120) for _ in procs)
        except queue.Empty:
            pytest.fail("a child process did not report back")
        finally:
            go.set()
            for p in procs:
                p.join(60)
                if p.is_alive():
                    p.kill()
                    p.join()
            for q in (ready, results):
                q.close()
                q.join_thread()

        assert [error for _, _, error in outcomes] == [None] * workers
        assert sorted(won for _, won, _ in outcomes) == [False] * (workers - 1) + [True]
        assert all(p.exitcode == 0 for p in procs)
        journal = await state_store.read_journal(execution.id)
        assert len(journal) == workers * count + 1
        for w in range(workers):
            mine = [r.call_id for r in journal if r.call_id and r.call_id.startswith(f"p{w}-")]
            assert mine == [f"p{w}-{n}" for n in range(count)]
        assert len(await state_store.list_artifacts(execution.id)) == workers * count

    # -- what a user reads back, and what a refusal tells them ---------------------------------

    async def test_every_field_of_an_execution_reads_back(self, state_store: StateStore) -> None:
        # The directory a script ran from is what a resume in another process imports it with.
        execution = dataclasses.replace(_execution(), sys_path="/srv/agents")
        await state_store.create_execution(execution, [])
        assert await state_store.get_execution(execution.id) == execution
        assert [e for e in await state_store.list_executions(limit=10_000) if e.id == execution.id] == [
            execution
        ]

    async def test_match_execution_ids_takes_a_backslash_literally(self, state_store: StateStore) -> None:
        base = new_id()
        await state_store.create_execution(_execution(base + "\\x"), [])
        await state_store.create_execution(_execution(base + "%x"), [])
        assert await state_store.match_execution_ids(base + "\\", limit=10) == [base + "\\x"]

    async def test_a_runner_that_lost_its_lease_is_told_who_drives_now(self, state_store: StateStore) -> None:
        owner, other = _live_owner("first"), _live_owner("second")
        execution = await _leased(state_store, owner)
        # Every store words it the same: which execution, who drives it, and that nothing was written.
        lost = (
            f"execution {execution.id} is now driven by {owner} (status running); this runner lost "
            "its lease and stops without writing."
        )
        for call in (
            lambda: state_store.commit(execution.id, [_completed("a")], owner=other),
            lambda: state_store.suspend(execution.id, other, []),
        ):
            with pytest.raises(KitaruLeaseError) as info:
                await call()
            assert str(info.value) == lost
        await state_store.commit(execution.id, [], owner=owner, release_lease=True)
        with pytest.raises(KitaruLeaseError) as released:
            await state_store.suspend(execution.id, owner, [])
        assert str(released.value) == lost.replace(f"by {owner}", "by nobody")
        assert await _kinds(state_store, execution.id) == []

    async def test_commit_to_a_missing_execution_with_an_owner_raises_not_found(
        self, state_store: StateStore
    ) -> None:
        missing = new_id()
        with pytest.raises(KitaruNotFoundError, match=repr(missing)):
            await state_store.commit(missing, [_completed("a")], owner=_live_owner())
        assert await state_store.read_journal(missing) == []

    async def test_refusals_name_the_execution(self, state_store: StateStore) -> None:
        missing = new_id()
        for call in (
            lambda: state_store.acquire_lease(missing, _live_owner(), _TTL, allowed_statuses={"running"}),
            lambda: state_store.cancel(missing),
            lambda: state_store.answer_wait(
                missing, *_answer(missing), owner=_live_owner(), ttl=_TTL, take_lease=True
            ),
        ):
            with pytest.raises(KitaruNotFoundError) as info:
                await call()
            assert repr(missing) in str(info.value)

        held = await _leased(state_store, _remote_owner())
        with pytest.raises(KitaruLeaseError, match=held.id):
            await state_store.acquire_lease(held.id, _live_owner(), _TTL, allowed_statuses={"running"})
        with pytest.raises(KitaruStateError, match=held.id):
            await state_store.acquire_lease(held.id, _live_owner(), _TTL, allowed_statuses={"waiting"})
        with pytest.raises(KitaruNotFoundError, match=f"{held.id}.*never_opened|never_opened.*{held.id}"):
            await state_store.answer_wait(
                held.id, *_answer(held.id, "never_opened"), owner=_live_owner(), ttl=_TTL, take_lease=False
            )
        with pytest.raises(KitaruConflictError, match=held.id):
            await state_store.commit(held.id, [_completed("a"), _completed("a")])

        owner = _live_owner()
        done = await _leased(state_store, owner)
        await state_store.commit(done.id, [], owner=owner, status="completed", release_lease=True)
        for refuse in (
            lambda: state_store.acquire_lease(done.id, _live_owner(), _TTL, allowed_statuses={"running"}),
            lambda: state_store.cancel(done.id),
            lambda: state_store.answer_wait(
                done.id, *_answer(done.id), owner=_live_owner(), ttl=_TTL, take_lease=True
            ),
            lambda: state_store.commit(done.id, [], status="failed"),
        ):
            with pytest.raises(KitaruStateError) as refused:
                await refuse()
            assert f"execution {done.id} is" in str(refused.value)

    async def test_records_handed_out_are_the_callers_copies(self, state_store: StateStore) -> None:
        # A caller that edits what it got (or what it passed in) changes nothing stored.
        execution = _execution(metadata={"tags": ["a"]})
        await state_store.create_execution(execution, [])
        execution.metadata["tags"].append("passed")
        owner = _live_owner()
        handed = [
            (await state_store.create_execution(_execution(execution.id), []))[0],
            await _get(state_store, execution.id),
            *[e for e in await state_store.list_executions(limit=10_000) if e.id == execution.id],
            await state_store.acquire_lease(execution.id, owner, _TTL, allowed_statuses={"running"}),
            await state_store.cancel(execution.id),
        ]
        orphan = await _leased(state_store, _dead_owner(), metadata={"tags": ["a"]})
        handed += [e for e in await state_store.list_recoverable(limit=10_000) if e.id == orphan.id]
        assert len(handed) == 6
        for record in handed:
            assert record.metadata == {"tags": ["a"]}
            record.metadata["tags"].append("edited")
        assert (await _get(state_store, execution.id)).metadata == {"tags": ["a"]}
        assert (await _get(state_store, orphan.id)).metadata == {"tags": ["a"]}

    async def test_writes_move_updated_at(self, state_store: StateStore) -> None:
        owner = _live_owner()
        execution = _execution(created_at=time.time() - 100)
        await state_store.create_execution(execution, [])
        stamps = [(await _get(state_store, execution.id)).updated_at]
        await state_store.acquire_lease(execution.id, owner, _TTL, allowed_statuses={"running"})
        stamps.append((await _get(state_store, execution.id)).updated_at)
        await state_store.commit(
            execution.id, [_record("wait_opened", "approve")], owner=owner, status="running"
        )
        stamps.append((await _get(state_store, execution.id)).updated_at)
        await state_store.suspend(execution.id, owner, ["approve"])
        stamps.append((await _get(state_store, execution.id)).updated_at)
        assert stamps[0] == execution.created_at
        assert all(isinstance(t, float) and t > stamps[0] for t in stamps[1:])
        assert stamps[1:] == sorted(stamps[1:])

    async def test_renewing_skips_leases_held_by_others(self, state_store: StateStore) -> None:
        owner = _live_owner()
        others = await _leased(state_store, _remote_owner())
        mine = await _leased(state_store, owner)
        assert mine.lease_expires_at is not None
        await _sleep(0.05)
        statuses = await state_store.renew_leases(owner, [new_id(), others.id, mine.id], _TTL * 2)
        assert statuses == {others.id: "running", mine.id: "running"}  # an unknown id is left out
        renewed = await _get(state_store, mine.id)
        assert (
            renewed.lease_expires_at is not None
            and renewed.lease_expires_at > mine.lease_expires_at + _TTL / 2
        )
        assert (await _get(state_store, others.id)).lease_expires_at == others.lease_expires_at

    async def test_cancel_is_journaled_and_frees_a_waiting_execution_s_lease(
        self, state_store: StateStore
    ) -> None:
        exec_id = await _waiting(state_store)
        # Someone holds the lease of the waiting execution without running it (set_status=None).
        await state_store.acquire_lease(
            exec_id, _remote_owner(), _TTL, allowed_statuses={"waiting"}, set_status=None
        )
        await state_store.cancel(exec_id)
        stored = await _get(state_store, exec_id)
        assert (stored.status, stored.lease_owner) == ("cancelled", None)
        assert (await _kinds(state_store, exec_id))[-1] == ("cancel_requested", None)

    async def test_a_waiting_execution_without_a_due_wait_is_not_recoverable(
        self, state_store: StateStore
    ) -> None:
        # Created waiting with no journal at all (nothing opened a wait yet): nothing is due.
        execution = _execution(status="waiting")
        await state_store.create_execution(execution, [])
        assert execution.id not in [e.id for e in await state_store.list_recoverable(limit=10_000)]

    async def test_a_cancelled_runner_cannot_wait_for_input(self, state_store: StateStore) -> None:
        owner = _live_owner()
        execution = await _leased(state_store, owner)
        await state_store.commit(execution.id, [_record("wait_opened", "approve")], owner=owner)
        await state_store.cancel(execution.id)
        with pytest.raises(KitaruStateError) as info:
            await state_store.suspend(execution.id, owner, ["approve"])
        assert str(info.value).startswith(
            f"execution {execution.id} is cancelled, so it cannot wait for input"
        )
        assert (await _get(state_store, execution.id)).status == "cancelled"

    async def test_a_cancelled_runner_records_that_it_stopped(self, state_store: StateStore) -> None:
        # Setting the status an execution already has is no change: the runner that saw the
        # cancel writes its last records with it and lets the lease go.
        owner = _live_owner()
        execution = await _leased(state_store, owner)
        await state_store.cancel(execution.id)
        status = await state_store.commit(
            execution.id,
            [_record("checkpoint_failed", "a")],
            owner=owner,
            status="cancelled",
            release_lease=True,
        )
        assert status == "cancelled"
        stored = await _get(state_store, execution.id)
        assert (stored.status, stored.lease_owner) == ("cancelled", None)


# -- the artifact store suite ---------------------------------------------------------------------


def _blob(i: int, size: int = _MiB) -> bytes:
    """A fresh ``size``-byte chunk whose content depends on ``i``."""
    return i.to_bytes(4, "big") * (size // 4)


@pytest.mark.anyio
class ArtifactStoreConformance:
    """Duties of :class:`~kitaru.store.ArtifactStore`; needs an ``artifact_store`` fixture."""

    @pytest.fixture
    def anyio_backend(self) -> str:
        return "asyncio"

    #: False for stores that keep the bytes in this process's memory: ``put_stream`` cannot stay
    #: below the blob's size there, so the bounded-memory test skips.
    streams_out_of_process: bool = True
    #: Bytes a store holds per stream by design (object stores: the upload part size, which S3
    #: keeps at 5 MiB or more); the bounded-memory test allows twice this on top of its limit.
    streaming_buffer: int = 0

    async def test_implements_protocol(self, artifact_store: ArtifactStore) -> None:
        assert isinstance(artifact_store, ArtifactStore)

    async def test_put_then_get(self, artifact_store: ArtifactStore) -> None:
        key = f"blobs/{new_id()}/value.bin"
        data = bytes(range(256)) * 10
        await artifact_store.put(key, data)
        assert await artifact_store.get(key) == data
        assert await artifact_store.exists(key)

    async def test_empty_blob(self, artifact_store: ArtifactStore) -> None:
        key = f"empty/{new_id()}"
        await artifact_store.put(key, b"")
        assert await artifact_store.exists(key)
        assert await artifact_store.get(key) == b""
        assert await _read(artifact_store, key) == b""

    async def test_put_same_bytes_again_is_fine(self, artifact_store: ArtifactStore) -> None:
        key = f"cas/{new_id()}"
        await artifact_store.put(key, b"shared blob")
        await artifact_store.put(key, b"shared blob")
        await artifact_store.put_stream(key, _chunks(b"shared", b" ", b"blob"))
        assert await artifact_store.get(key) == b"shared blob"

    @pytest.mark.parametrize("other", [b"different!!", b"original", b"original bytes+", b""])
    @pytest.mark.parametrize("how", ["put", "put_stream"])
    async def test_different_bytes_conflict_and_keep_the_original(
        self, artifact_store: ArtifactStore, other: bytes, how: str
    ) -> None:
        key = f"once/{new_id()}"
        await artifact_store.put(key, b"original bytes")
        with pytest.raises(KitaruConflictError):
            if how == "put":
                await artifact_store.put(key, other)
            else:
                await artifact_store.put_stream(key, _chunks(other[:3], other[3:]))
        assert await artifact_store.get(key) == b"original bytes"

    async def test_get_missing_raises_not_found(self, artifact_store: ArtifactStore) -> None:
        key = f"missing/{new_id()}"
        with pytest.raises(KitaruNotFoundError):
            await artifact_store.get(key)
        with pytest.raises(KitaruNotFoundError):
            await _read(artifact_store, key)
        assert not await artifact_store.exists(key)

    async def test_open_streams_in_chunks(self, artifact_store: ArtifactStore) -> None:
        key = f"stream/{new_id()}"
        data = os.urandom(10_000)
        await artifact_store.put(key, data)

        chunks = [chunk async for chunk in artifact_store.open(key, chunk_size=4096)]

        assert b"".join(chunks) == data
        assert len(chunks) >= 3
        assert all(0 < len(c) <= 4096 for c in chunks)

    async def test_put_stream_and_open_hold_bounded_memory(self, artifact_store: ArtifactStore) -> None:
        if not self.streams_out_of_process:
            pytest.skip("this store keeps blobs in process memory")
        key = f"large/{new_id()}"
        chunks, total = 64, 64 * _MiB
        digest = hashlib.sha256()

        async def produce() -> AsyncIterator[bytes]:
            for i in range(chunks):
                chunk = _blob(i)
                digest.update(chunk)
                yield chunk

        # The store's client on this loop is made first, outside the measure (it is the baseline).
        assert not await artifact_store.exists(key)
        tracemalloc.start()
        try:
            await artifact_store.put_stream(key, produce())
            write_peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.reset_peak()
            read = hashlib.sha256()
            size = 0
            async for chunk in artifact_store.open(key, chunk_size=_MiB):
                assert len(chunk) <= _MiB
                read.update(chunk)
                size += len(chunk)
            read_peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

        assert size == total
        assert read.hexdigest() == digest.hexdigest()
        limit = total // 8 + 2 * self.streaming_buffer
        assert write_peak < limit, f"put_stream peaked at {write_peak / _MiB:.1f} MiB"
        assert read_peak < limit, f"open peaked at {read_peak / _MiB:.1f} MiB"

    async def test_a_reader_never_sees_a_partial_blob(self, artifact_store: ArtifactStore) -> None:
        key = f"partial/{new_id()}/blob"
        seen: list[tuple[bool, list[str]]] = []

        async def produce() -> AsyncIterator[bytes]:
            for i in range(4):
                yield _blob(i, 1024)
                seen.append((await artifact_store.exists(key), list(await _keys(artifact_store, "partial/"))))
                with pytest.raises(KitaruNotFoundError):
                    await artifact_store.get(key)

        await artifact_store.put_stream(key, produce())

        assert seen == [(False, [])] * 4
        assert await artifact_store.get(key) == b"".join(_blob(i, 1024) for i in range(4))

    async def test_a_failed_stream_leaves_nothing(self, artifact_store: ArtifactStore) -> None:
        key = f"failed/{new_id()}"

        async def produce() -> AsyncIterator[bytes]:
            yield b"first half"
            raise RuntimeError("producer died")

        with pytest.raises(RuntimeError, match="producer died"):
            await artifact_store.put_stream(key, produce())
        assert not await artifact_store.exists(key)
        assert list(await _keys(artifact_store, key)) == []
        await artifact_store.put(key, b"whole")  # the key is still free
        assert await artifact_store.get(key) == b"whole"

    async def test_exists_list_delete(self, artifact_store: ArtifactStore) -> None:
        base = f"tree{new_id()}"
        keys = [f"{base}/a/1", f"{base}/a/2", f"{base}/ab/3", f"{base}/b/4"]
        for key in keys:
            await artifact_store.put(key, key.encode())

        assert sorted(await _keys(artifact_store, f"{base}/")) == keys
        assert sorted(await _keys(artifact_store, f"{base}/a/")) == keys[:2]
        assert sorted(await _keys(artifact_store, f"{base}/a")) == keys[:3]
        assert list(await _keys(artifact_store, f"{base}/c")) == []
        assert set(keys) <= set(await _keys(artifact_store))
        assert set(keys) <= {key async for key in artifact_store.list()}  # no prefix: every key
        assert await artifact_store.exists(keys[0])
        assert not await artifact_store.exists(f"{base}/a")  # a prefix is not a key

        await artifact_store.delete(keys[0])

        assert not await artifact_store.exists(keys[0])
        assert sorted(await _keys(artifact_store, f"{base}/")) == keys[1:]
        with pytest.raises(KitaruNotFoundError):
            await artifact_store.get(keys[0])

    async def test_delete_missing_is_fine_and_frees_the_key(self, artifact_store: ArtifactStore) -> None:
        key = f"del/{new_id()}"
        await artifact_store.delete(key)
        await artifact_store.put(key, b"one")
        await artifact_store.delete(key)
        await artifact_store.delete(key)
        await artifact_store.put(key, b"two")
        assert await artifact_store.get(key) == b"two"

    async def test_uri_for(self, artifact_store: ArtifactStore) -> None:
        key = f"dir/{new_id()}/blob.bin"
        uri = artifact_store.uri_for(key)
        assert uri.startswith(artifact_store.uri)
        assert uri.endswith(key)
        assert "://" in artifact_store.uri
        assert artifact_store.uri_for("x") != artifact_store.uri_for("y")

    @pytest.mark.parametrize("how", ["tasks", "threads"])
    async def test_threads_put_distinct_keys(self, artifact_store: ArtifactStore, how: str) -> None:
        base = f"threads/{new_id()}"

        async def work(i: int) -> None:
            for n in range(10):
                await artifact_store.put(f"{base}/{i}/{n}", _blob(i * 100 + n, 4096))

        assert await _race(how, 8, work, artifact_store) == [None] * 8
        assert len(list(await _keys(artifact_store, base + "/"))) == 80
        assert await artifact_store.get(f"{base}/7/9") == _blob(709, 4096)

    @pytest.mark.parametrize("how", ["tasks", "threads"])
    async def test_threads_racing_on_one_key(self, artifact_store: ArtifactStore, how: str) -> None:
        same, contested = f"race/{new_id()}/same", f"race/{new_id()}/contested"
        blobs = [_blob(i, 256 * 1024) for i in range(8)]

        # Equal bytes from every writer: all succeed (content-addressed sharing).
        assert await _race(how, 8, lambda i: artifact_store.put(same, blobs[0]), artifact_store) == [None] * 8
        assert await artifact_store.get(same) == blobs[0]

        # Different bytes: one writer wins whole, the rest conflict.
        results = await _race(how, 8, lambda i: artifact_store.put(contested, blobs[i]), artifact_store)
        winners = [i for i, r in enumerate(results) if r is None]
        assert len(winners) == 1
        assert all(isinstance(r, KitaruConflictError) for r in results if r is not None)
        assert await artifact_store.get(contested) == blobs[winners[0]]
