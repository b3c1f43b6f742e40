"""The simulation's machinery: fault-injecting store wrappers, the "processes" that drive a flow and
die, recovery, and the invariants every run must keep.

A *process* is a fresh :class:`~kitaru._engine.runtime.Runtime` over fresh store connections. A
simulated crash is :class:`SimulatedCrash`, a ``BaseException`` the engine does not catch (as if the
process died): it is raised before or after a state-store write lands, or inside a checkpoint body.

The stores are async contracts, so the wrappers are too: each write is an ``async def`` that raises
the crash before or after awaiting the real call. A wrapper is exactly as ``inline`` as the store it
wraps, and an inline one never suspends (kitaru runs its coroutines in place and would refuse one
that did), so SQLite and memory are exercised on their inline path, PostgreSQL on the Runner's loop.

Where a crash travels under the Runner: raised in a sync body's thread (inline commits), in a
``.submit()`` thread, or on the Runner's loop (async bodies, group commits, non-inline stores), it
reaches the Runner's settling of the body, which treats it like a KeyboardInterrupt and tries to
release the lease; a dead process's store refuses, so the crash leaves ``Runner.drive`` and the
portal call it ran in. anyio lets a ``BaseException`` fall through the portal's task group, which
ends the portal's event loop: everything of the process still on that loop is cancelled. The caller
(:func:`tests.sim.driver.run_to_end`) gets the crash and buries the process.

From the moment of the crash the process is dead: every later store call it makes (state or
artifact, from any of its threads or tasks) raises the crash again (nothing of the old runner
continues: no release of its lease, no flush, no upload), its heartbeat stops, its event loop (the
portal) ends, and its lease names a process id that does not exist, so the next process takes the
execution over, as it would after a real crash on this host.
"""

from __future__ import annotations

import inspect
import socket
import threading
import weakref
from collections import Counter
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import aclosing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kitaru._engine.runtime import INFLIGHT, Runtime
from kitaru._ids import new_id
from kitaru.errors import KitaruStoreError
from kitaru.store import ONCE_ONLY_KINDS, ArtifactRecord, ExecutionRecord, JournalRecord, StateStore

#: No process has this id (above any Linux pid_max): a lease owner naming it looks dead.
DEAD_PID = 2**31 - 2


class SimulatedCrash(BaseException):
    """The simulated process died here. A BaseException: nothing in kitaru may catch it."""


# -- what the simulation observes --------------------------------------------------------------


class Recorder:
    """What checkpoint bodies report (shared by every process of the simulation, like a file the
    test counts runs in): body runs per call, the calls whose completion landed, violations."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.plan: Plan | None = None
        self.runs: Counter[tuple[str, str]] = Counter()
        self.landed: set[tuple[str, str]] = set()
        self.violations: list[str] = []
        # Attempts per call within one pass of the flow body (a retry loop), keyed by the pass.
        self._attempts: weakref.WeakKeyDictionary[Any, Counter[str]] = weakref.WeakKeyDictionary()

    def body_started(self, ctx: Any, call_id: str) -> int:
        """A checkpoint body starts; returns its attempt number within this pass."""
        state = ctx.runtime.astate
        if isinstance(state, FaultyState) and state.dead:
            raise SimulatedCrash("a worker thread or task of a dead process")  # it died with it
        with self._lock:
            key = (ctx.exec_id, call_id)
            self.runs[key] += 1
            if key in self.landed:
                self.violations.append(f"checkpoint {call_id} of {ctx.exec_id} ran after it completed")
            attempts = self._attempts.setdefault(ctx, Counter())
            attempts[call_id] += 1
            attempt = attempts[call_id]
        plan = self.plan
        if isinstance(state, FaultyState) and plan is not None and plan.tick("body"):
            state.die(f"inside the body of {call_id}")
            raise SimulatedCrash(state.cause)
        return attempt

    def committed(self, exec_id: str, records: Iterable[JournalRecord]) -> None:
        with self._lock:
            for r in records:
                if r.kind == "checkpoint_completed" and r.call_id:
                    self.landed.add((exec_id, r.call_id))


SIM = Recorder()


# -- fault plans ----------------------------------------------------------------------------------


@dataclass
class Plan:
    """Where faults strike in one simulated run, by the running count of each kind of event.

    ``crashes`` maps the n-th state-store write (create, lease, commit, suspend, answer) to
    ``before`` (it does not land) or ``after`` (it lands, then the process dies); ``body_crashes``
    the n-th checkpoint body start; ``artifact_faults`` the n-th artifact-store call to ``error``
    (a 5xx or reset that the store's own retries did not ride out) or ``lost_reply`` (a put lands,
    its reply is lost); ``pg_drops`` the n-th write before which every PostgreSQL connection of
    the database is terminated (the store must retry through it). The heartbeat's writes (its note
    of attempts in flight) are not counted: they come when the clock says, and counting them would
    make a seed strike elsewhere on its replay.
    """

    crashes: dict[int, str] = field(default_factory=dict)
    body_crashes: set[int] = field(default_factory=set)
    artifact_faults: dict[int, str] = field(default_factory=dict)
    pg_drops: set[int] = field(default_factory=set)
    drop_connections: Callable[[], None] | None = None
    counts: Counter[str] = field(default_factory=Counter)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def tick(self, kind: str) -> bool:
        """Count an event; True when a crash is planned at it (``body`` events)."""
        with self._lock:
            self.counts[kind] += 1
            return self.counts[kind] in self.body_crashes

    def next(self, kind: str) -> int:
        with self._lock:
            self.counts[kind] += 1
            return self.counts[kind]

    @property
    def budget(self) -> int:
        return len(self.crashes) + len(self.body_crashes) + len(self.artifact_faults)


def _is_beat(records: Sequence[JournalRecord], kw: dict[str, Any]) -> bool:
    """Whether a commit is the heartbeat's note of attempts in flight (no records, only that)."""
    return not records and set(kw) == {"owner", "metadata"} and set(kw["metadata"] or {}) == {INFLIGHT}


class FaultyState:
    """A state store as one process sees it, with crashes before or after its writes land.

    As ``inline`` as the store it wraps: on an inline store nothing here awaits anything that
    suspends (the dropped-connection fault, the only blocking step, is PostgreSQL's alone)."""

    def __init__(self, inner: StateStore, plan: Plan | None, *, owns_inner: bool) -> None:
        self.inner = inner
        self.inline = bool(inner.inline)
        self.plan = plan
        self.owns_inner = owns_inner
        self.dead = False
        self.cause = ""
        self.runtime: Runtime | None = None

    def die(self, cause: str = "") -> None:
        """The process is gone: no heartbeat, no store call from anything it left running."""
        self.cause = self.cause or cause
        self.dead = True
        if self.runtime is not None:
            self.runtime._stop.set()

    def _alive(self) -> None:
        if self.dead:
            raise SimulatedCrash(f"a call from a dead process (it died {self.cause})")

    async def _write(
        self,
        what: str,
        op: Callable[[], Awaitable[Any]],
        records: Sequence[JournalRecord] = (),
        exec_id: str = "",
    ) -> Any:
        self._alive()
        plan = self.plan
        if plan is None:
            result = await op()
            SIM.committed(exec_id, records)
            return result
        n = plan.next("write")
        if n in plan.pg_drops and plan.drop_connections is not None:
            if self.inline:
                plan.drop_connections()  # (never planned: only PostgreSQL drops connections)
            else:
                import anyio.to_thread

                await anyio.to_thread.run_sync(plan.drop_connections)
        mode = plan.crashes.get(n)
        if mode == "before":
            self.die(f"before {what} (write #{n}) landed")
            raise SimulatedCrash(self.cause)
        result = await op()
        SIM.committed(exec_id, records)
        if mode == "after":
            self.die(f"after {what} (write #{n}) landed")
            raise SimulatedCrash(self.cause)
        return result

    # -- writes --------------------------------------------------------------------------------

    async def create_execution(
        self,
        execution: ExecutionRecord,
        artifacts: Sequence[ArtifactRecord],
        records: Sequence[JournalRecord] = (),
    ) -> tuple[ExecutionRecord, bool]:
        return await self._write(
            "create_execution", lambda: self.inner.create_execution(execution, artifacts, records)
        )

    async def acquire_lease(self, exec_id: str, owner: str, ttl: float, **kw: Any) -> ExecutionRecord:
        return await self._write("acquire_lease", lambda: self.inner.acquire_lease(exec_id, owner, ttl, **kw))

    async def commit(
        self,
        exec_id: str,
        records: Sequence[JournalRecord],
        artifacts: Sequence[ArtifactRecord] = (),
        **kw: Any,
    ) -> str | None:
        if _is_beat(records, kw):
            if self.dead:
                raise ConnectionError("a dead process has no heartbeat")  # what the heartbeat tolerates
            return await self.inner.commit(exec_id, records, artifacts, **kw)
        return await self._write(
            "commit", lambda: self.inner.commit(exec_id, records, artifacts, **kw), records, exec_id
        )

    async def suspend(self, exec_id: str, owner: str, waiting_on: Sequence[str]) -> bool:
        return await self._write("suspend", lambda: self.inner.suspend(exec_id, owner, waiting_on))

    async def answer_wait(
        self, exec_id: str, record: JournalRecord, artifact: ArtifactRecord, **kw: Any
    ) -> bool:
        return await self._write(
            "answer_wait", lambda: self.inner.answer_wait(exec_id, record, artifact, **kw)
        )

    async def cancel(self, exec_id: str) -> ExecutionRecord:
        return await self._write("cancel", lambda: self.inner.cancel(exec_id))

    # -- reads and the rest --------------------------------------------------------------------

    async def renew_leases(self, owner: str, exec_ids: Sequence[str], ttl: float) -> dict[str, str]:
        if self.dead:
            raise ConnectionError("a dead process has no heartbeat")  # what the heartbeat tolerates
        return await self.inner.renew_leases(owner, exec_ids, ttl)

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.inner, name)
        if not inspect.iscoroutinefunction(attr):
            return attr

        async def read(*args: Any, **kwargs: Any) -> Any:
            self._alive()
            return await attr(*args, **kwargs)

        return read

    async def aclose(self) -> None:
        if self.owns_inner:
            await self.inner.aclose()


class FaultyArtifacts:
    """An artifact store whose calls fail where the plan says (S3 5xx, connection resets), and
    refuse every call of a dead process."""

    inline = False  # as no artifact store is

    def __init__(self, inner: Any, plan: Plan | None, state: FaultyState) -> None:
        self.inner = inner
        self.plan = plan
        self.state = state
        self.uri = inner.uri

    def _fault(self, what: str, key: str) -> str | None:
        self.state._alive()
        if self.plan is None:
            return None
        n = self.plan.next("artifact")
        fault = self.plan.artifact_faults.get(n)
        if fault == "error":
            raise KitaruStoreError(
                f"simulated: {what} of {key} failed with HTTP 503 (or a reset connection) after the "
                "store's retries."
            )
        return fault

    def uri_for(self, key: str) -> str:
        return self.inner.uri_for(key)

    async def put(self, key: str, data: bytes) -> None:
        fault = self._fault("put", key)
        await self.inner.put(key, data)
        if fault == "lost_reply":
            raise KitaruStoreError(f"simulated: the connection reset after put of {key} landed.")

    async def put_stream(self, key: str, chunks: AsyncIterable[bytes]) -> None:
        self.state._alive()
        await self.inner.put_stream(key, chunks)

    async def get(self, key: str) -> bytes:
        self._fault("get", key)
        return await self.inner.get(key)

    async def open(self, key: str, chunk_size: int = 1 << 20) -> AsyncIterator[bytes]:
        self._fault("open", key)  # from the first step, as the contract says of a missing key
        async with aclosing(self.inner.open(key, chunk_size)) as chunks:
            async for chunk in chunks:
                self.state._alive()
                yield chunk

    async def exists(self, key: str) -> bool:
        self.state._alive()
        return await self.inner.exists(key)

    async def list(self, prefix: str = "") -> AsyncIterator[str]:
        self.state._alive()
        async with aclosing(self.inner.list(prefix)) as keys:
            async for key in keys:
                yield key

    async def delete(self, key: str) -> None:
        self.state._alive()
        await self.inner.delete(key)

    async def aclose(self) -> None:
        if self.state.owns_inner:
            await self.inner.aclose()


# -- the process's event loop ---------------------------------------------------------------------


def end_portal() -> None:
    """What the OS does to a dead process's event loop thread (kitaru's portal): it ends, and
    everything still on it with it; the next process starts its own on first use.

    A crash that left ``Runner.drive`` through a portal call has ended the loop already (anyio
    lets a BaseException through the portal's task group); this forgets it, stops one still
    running, and waits for its thread (so nothing of the dead process runs on afterwards)."""
    from kitaru import _portal

    with _portal._lock:
        portal, thread = _portal._portal, _portal._thread
        _portal._portal = _portal._thread = None
    if portal is not None and thread is not None and thread.is_alive():
        try:
            portal.start_task_soon(portal.stop, True)  # cancel what it still runs
        except BaseException:
            pass  # it is ending already
    if thread is not None:
        thread.join(timeout=60)
        assert not thread.is_alive(), "a dead process's event loop did not end"


# -- environments: one kind of store, fresh connections per process ----------------------------


class Env:
    """Opens stores the way a new process would; ``kind`` is ``sqlite``, ``memory`` or ``postgres``."""

    def __init__(self, kind: str, root: Path, dsn: str | None = None, drop: Callable[[], None] | None = None):
        self.kind = kind
        self.root = root
        self.dsn = dsn
        self.drop = drop
        self._memory: tuple[Any, Any] | None = None
        self.source: str | None = None

    def _stores(self) -> tuple[StateStore, Any, bool]:
        from kitaru.store.filesystem import FilesystemArtifactStore

        if self.kind == "memory":
            if self._memory is None:
                from kitaru.store.memory import MemoryArtifactStore, MemoryStateStore

                self._memory = (MemoryStateStore(), MemoryArtifactStore())
            return self._memory[0], self._memory[1], False
        artifacts = FilesystemArtifactStore(self.root / "artifacts")
        if self.kind == "sqlite":
            from kitaru.store.sqlite import SQLiteStateStore

            return SQLiteStateStore(self.root / "kitaru.db"), artifacts, True
        from kitaru.store.postgres import PostgresStateStore

        assert self.dsn is not None
        return PostgresStateStore(self.dsn, min_size=1, max_size=4, backoff=0.02), artifacts, True

    def process(self, plan: Plan | None) -> Runtime:
        """A new process: fresh connections; with a plan, its lease owner names a dead pid."""
        state, artifacts, owns = self._stores()
        faulty = FaultyState(state, plan, owns_inner=owns)
        runtime = Runtime(faulty, FaultyArtifacts(artifacts, plan, faulty), heartbeat_interval=0.5)  # type: ignore[arg-type]
        faulty.runtime = runtime
        if plan is not None:
            runtime.owner = f"{socket.gethostname()}:{DEAD_PID}:{new_id()[-8:]}"
        return runtime

    def bury(self, runtime: Runtime) -> None:
        """After a crash: what the OS does for a dead process (its event loop ends, its
        connections close); no graceful shutdown of the runtime."""
        state = runtime.astate
        assert isinstance(state, FaultyState)
        state.die()
        end_portal()
        if state.owns_inner:
            try:
                runtime.state.close()  # the view runs the wrapper's aclose, which a death allows
            except Exception:
                pass

    def source_execution(self) -> str:
        """An execution (run once, without faults) whose ``data`` artifact the flows load."""
        if self.source is None:
            from kitaru._engine.runtime import use_runtime

            from .flows import source_flow

            runtime = self.process(None)
            with use_runtime(runtime):
                handle = source_flow.run()
                handle.wait(timeout=60)
            runtime.close()
            self.source = handle.exec_id
        return self.source


__all__ = [
    "DEAD_PID",
    "ONCE_ONLY_KINDS",
    "SIM",
    "Env",
    "FaultyArtifacts",
    "FaultyState",
    "Plan",
    "Recorder",
    "SimulatedCrash",
    "end_portal",
]
