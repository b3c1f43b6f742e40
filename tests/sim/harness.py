"""The simulation's machinery: fault-injecting store wrappers, the "processes" that drive a flow and
die, recovery, and the invariants every run must keep.

A *process* is a fresh :class:`~kitaru._engine.runtime.Runtime` over fresh store connections. A
simulated crash is :class:`SimulatedCrash`, a ``BaseException`` the engine does not catch (as if the
process died): it is raised before or after a state-store write lands, or inside a checkpoint body.
From that moment the process is dead: every later store call it makes raises the crash again
(nothing of the old runner continues: no release of its lease, no flush, no heartbeat), its
worker threads stop at their next store call, and its lease names a process id that does not exist,
so the next process takes the execution over, as it would after a real crash on this host.
"""

from __future__ import annotations

import socket
import threading
import weakref
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kitaru._engine.runtime import Runtime
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
        state = ctx.runtime.state
        if isinstance(state, FaultyState) and state.dead:
            raise SimulatedCrash("a worker thread of a dead process")  # the thread died with it
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
    the database is terminated (the store must retry through it).
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


class FaultyState:
    """A state store as one process sees it, with crashes before or after its writes land."""

    def __init__(self, inner: StateStore, plan: Plan | None, *, owns_inner: bool) -> None:
        self.inner = inner
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
            raise SimulatedCrash("a call from a dead process")

    def _write(
        self, what: str, op: Callable[[], Any], records: Sequence[JournalRecord] = (), exec_id: str = ""
    ) -> Any:
        self._alive()
        plan = self.plan
        if plan is None:
            result = op()
            SIM.committed(exec_id, records)
            return result
        n = plan.next("write")
        if n in plan.pg_drops and plan.drop_connections is not None:
            plan.drop_connections()
        mode = plan.crashes.get(n)
        if mode == "before":
            self.die(f"before {what} (write #{n}) landed")
            raise SimulatedCrash(self.cause)
        result = op()
        SIM.committed(exec_id, records)
        if mode == "after":
            self.die(f"after {what} (write #{n}) landed")
            raise SimulatedCrash(self.cause)
        return result

    # -- writes --------------------------------------------------------------------------------

    def create_execution(
        self,
        execution: ExecutionRecord,
        artifacts: Sequence[ArtifactRecord],
        records: Sequence[JournalRecord] = (),
    ) -> tuple[ExecutionRecord, bool]:
        return self._write(  # type: ignore[no-any-return]
            "create_execution", lambda: self.inner.create_execution(execution, artifacts, records)
        )

    def acquire_lease(self, exec_id: str, owner: str, ttl: float, **kw: Any) -> ExecutionRecord:
        return self._write("acquire_lease", lambda: self.inner.acquire_lease(exec_id, owner, ttl, **kw))  # type: ignore[no-any-return]

    def commit(
        self,
        exec_id: str,
        records: Sequence[JournalRecord],
        artifacts: Sequence[ArtifactRecord] = (),
        **kw: Any,
    ) -> None:
        self._write("commit", lambda: self.inner.commit(exec_id, records, artifacts, **kw), records, exec_id)

    def suspend(self, exec_id: str, owner: str, waiting_on: Sequence[str]) -> bool:
        return self._write("suspend", lambda: self.inner.suspend(exec_id, owner, waiting_on))  # type: ignore[no-any-return]

    def answer_wait(self, exec_id: str, record: JournalRecord, artifact: ArtifactRecord, **kw: Any) -> bool:
        return self._write("answer_wait", lambda: self.inner.answer_wait(exec_id, record, artifact, **kw))  # type: ignore[no-any-return]

    def cancel(self, exec_id: str) -> ExecutionRecord:
        return self._write("cancel", lambda: self.inner.cancel(exec_id))  # type: ignore[no-any-return]

    # -- reads and the rest --------------------------------------------------------------------

    def renew_leases(self, owner: str, exec_ids: Sequence[str], ttl: float) -> dict[str, str]:
        if self.dead:
            raise ConnectionError("a dead process has no heartbeat")  # what the heartbeat tolerates
        return self.inner.renew_leases(owner, exec_ids, ttl)

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.inner, name)
        if not callable(attr):
            return attr

        def read(*args: Any, **kwargs: Any) -> Any:
            self._alive()
            return attr(*args, **kwargs)

        return read

    def close(self) -> None:
        if self.owns_inner:
            self.inner.close()


class FaultyArtifacts:
    """An artifact store whose calls fail where the plan says (S3 5xx, connection resets)."""

    def __init__(self, inner: Any, plan: Plan | None) -> None:
        self.inner = inner
        self.plan = plan
        self.uri = inner.uri

    def _fault(self, what: str, key: str) -> str | None:
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

    def put(self, key: str, data: bytes) -> None:
        fault = self._fault("put", key)
        self.inner.put(key, data)
        if fault == "lost_reply":
            raise KitaruStoreError(f"simulated: the connection reset after put of {key} landed.")

    def get(self, key: str) -> bytes:
        self._fault("get", key)
        return self.inner.get(key)  # type: ignore[no-any-return]

    def open(self, key: str, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        self._fault("open", key)
        return self.inner.open(key, chunk_size)  # type: ignore[no-any-return]

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


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
        runtime = Runtime(faulty, FaultyArtifacts(artifacts, plan), heartbeat_interval=0.5)  # type: ignore[arg-type]
        faulty.runtime = runtime
        if plan is not None:
            runtime.owner = f"{socket.gethostname()}:{DEAD_PID}:{new_id()[-8:]}"
        return runtime

    def bury(self, runtime: Runtime) -> None:
        """After a crash: what the OS does for a dead process (its connections close); no
        graceful shutdown of the runtime."""
        state = runtime.state
        assert isinstance(state, FaultyState)
        state.die()
        if state.owns_inner:
            try:
                state.inner.close()
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
]
