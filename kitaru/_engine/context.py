"""Per-execution state while a flow body runs: call ids, the replay view of the journal, commits."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar

from kitaru.errors import (
    KitaruConfigError,
    KitaruDivergenceError,
    KitaruNotInFlowError,
    KitaruStoreError,
    KitaruUsageError,
)
from kitaru.store import ArtifactRecord, ExecutionRecord, JournalRecord

from ._commits import _GroupCommit
from ._lineage import _INDEX_BUDGET, _OutputsIndex
from ._signals import _Cancelled as _Cancelled
from ._signals import _Suspend as _Suspend
from ._signals import running_loop as running_loop
from .runtime import Runtime

if TYPE_CHECKING:
    # asyncio, anyio and concurrent.futures load on first use: `import kitaru` stays light.
    import asyncio
    from concurrent.futures import Future, ThreadPoolExecutor

    from anyio.lowlevel import EventLoopToken

    from .futures import CheckpointFuture

T = TypeVar("T")

logger = logging.getLogger("kitaru")

__all__ = ["CallFrame", "ExecutionContext", "current_call", "current_execution", "require_flow"]

#: Qualified names of the sync checkpoints defined in this process (see
#: :meth:`ExecutionContext.preload_sync_outputs`); a name shared with an async one only costs a read.
SYNC_CHECKPOINTS: set[str] = set()

_current_exec: ContextVar[ExecutionContext | None] = ContextVar("kitaru_execution", default=None)
_current_call: ContextVar[CallFrame | None] = ContextVar("kitaru_call", default=None)


def current_execution() -> ExecutionContext | None:
    return _current_exec.get()


def current_call() -> CallFrame | None:
    return _current_call.get()


def require_flow(what: str) -> ExecutionContext:
    ctx = _current_exec.get()
    if ctx is None:
        raise KitaruNotInFlowError(
            f"{what} needs a running flow, and none is running here. Call it from a @flow "
            "function (or a @checkpoint inside one), started with .run() or .start()."
        )
    return ctx


@dataclass(slots=True)
class Call:
    """One call made by the flow body, with its deterministic identity."""

    call_id: str
    seq: int
    name: str


@dataclass(slots=True)
class CallFrame:
    """What a running checkpoint accumulates; committed atomically with its outcome."""

    call: Call
    ctx: ExecutionContext
    records: list[JournalRecord] = field(default_factory=list)
    artifacts: list[ArtifactRecord] = field(default_factory=list)
    save_counts: dict[str, int] = field(default_factory=dict)
    checkpoint_type: str | None = None  # @checkpoint(type=...), for kitaru.runtime and events
    attempt: int = 1  # which attempt of the call this is (events number each attempt's own)


class ExecutionContext(_GroupCommit, _OutputsIndex):
    """The flow body's view of its execution: what the journal already holds, and new commits."""

    def __init__(self, runtime: Runtime, execution: ExecutionRecord, journal: list[JournalRecord]):
        self.runtime = runtime
        self.cache_default = False
        """The flow's ``cache=``: whether its checkpoints without a ``cache=`` of their own cache."""
        self.execution = execution
        self.exec_id = execution.id
        self.state = runtime.state
        self.completed: dict[str, JournalRecord] = {}
        self.answers: dict[str, JournalRecord] = {}
        self.opened: dict[str, JournalRecord] = {}
        self.timed_out: set[str] = set()
        self.at_seq: dict[int, JournalRecord] = {}
        self.done_saves: set[str] = set()
        self._referenced = [r.artifact_id for r in journal if r.artifact_id]
        self._sync_outputs: list[str] = []
        # Blob outputs of sync checkpoints read ahead for sync code on the loop (or the error
        # their read met, raised where the output is wanted).
        self._read_ahead: dict[str, bytes | Exception] = {}
        for r in journal:
            kind = r.kind
            if r.seq is not None and r.seq not in self.at_seq:
                self.at_seq[r.seq] = r
            if kind == "checkpoint_completed" and r.call_id:
                self.completed[r.call_id] = r
                if r.name in SYNC_CHECKPOINTS and r.artifact_id:
                    self._sync_outputs.append(r.artifact_id)
            elif kind == "wait_opened" and r.call_id:
                self.opened[r.call_id] = r
            elif kind == "wait_answered" and r.call_id:
                self.answers[r.call_id] = r
            elif kind == "wait_timed_out" and r.call_id:
                self.timed_out.add(r.call_id)
            elif kind == "save" and r.call_id:
                self.done_saves.add(r.call_id)
        self.recorded_seq = max(self.at_seq, default=0)
        self.seq = 0
        self.counts: dict[str, int] = {}
        self.suspended_on: list[str] = []
        self._pending: list[JournalRecord] = []
        self.pending_output: list[JournalRecord] = []
        self._pending_metadata: dict[str, Any] = {}
        self._pending_lock = threading.Lock()
        self._outputs: dict[int, tuple[str, str | None, Any, int]] = {}
        self._outputs_bytes = 0
        # Concurrency: worker threads for .submit(), tasks for async checkpoints, group commit.
        self._executor: ThreadPoolExecutor | None = None
        self._futures: set[Future[Any]] = set()
        self.tasks: set[asyncio.Task[Any]] = set()
        self.main_task: asyncio.Task[Any] | None = None
        self._batch_records: list[JournalRecord] = []
        self._batch_artifacts: list[ArtifactRecord] = []
        self._batch_uploads: list[tuple[str, bytes]] = []
        self._batch_future: asyncio.Future[None] | None = None
        self._flushes: set[asyncio.Future[None]] = set()
        #: The task writing this execution's events published from async code (kitaru.events),
        #: which a checkpoint's outcome commit waits for so its events land before it.
        self._event_writer: asyncio.Future[None] | None = None
        self._flush_error: BaseException | None = None
        self._awaited: set[asyncio.Future[None]] = set()
        #: The Runner's event loop, for sync code of this execution running on other threads.
        self.token: EventLoopToken | None = None
        self.inline = runtime.inline
        self._known_artifacts: dict[str, ArtifactRecord] = {}

    # -- identity and replay -------------------------------------------------------------

    @property
    def replaying(self) -> bool:
        """True while the body is still re-walking calls the journal already holds."""
        return self.seq < self.recorded_seq

    def begin_call(self, base: str, name: str, explicit_id: str | None = None) -> Call:
        """Give the next call its id (``base``, ``base:2``...) and position, and check both against
        the journal. Runs synchronously at call time, so concurrent calls get ids in call order."""
        if self.runtime.cancelled(self.exec_id):
            raise _Cancelled()
        self.seq += 1
        seq = self.seq
        n = self.counts.get(explicit_id or base, 0) + 1
        self.counts[explicit_id or base] = n
        if explicit_id is not None:
            if n > 1:
                raise KitaruUsageError(
                    f"checkpoint id {explicit_id!r} was used twice in execution {self.exec_id}; "
                    "explicit ids must be unique within a flow run."
                )
            call_id = explicit_id
        else:
            call_id = base if n == 1 else f"{base}:{n}"
        recorded = self.at_seq.get(seq)
        if recorded is not None and (recorded.call_id != call_id or recorded.name != name):
            raise KitaruDivergenceError(
                f"execution {self.exec_id} diverged from its journal at call #{seq}: the journal "
                f"recorded {recorded.call_id!r} ({recorded.name}), but the flow now calls "
                f"{call_id!r} ({name}). The flow's code changed above this point since the "
                "execution ran. Restore the previous code and run `kitaru executions retry "
                f"{self.exec_id}`, or start a new execution."
            )
        return Call(call_id, seq, name)

    def stored_artifact(self, record: JournalRecord) -> ArtifactRecord:
        """The artifact a journal record points to; its absence means the store lost data."""
        artifact = self._known_artifacts.get(record.artifact_id or "")
        if artifact is None:
            artifact = self.state_call(self.runtime.astate.get_artifact, record.artifact_id or "")
        if artifact is None:
            raise KitaruStoreError(
                f"execution {self.exec_id}: the journal's {record.kind} record of "
                f"{record.call_id!r} points to artifact {record.artifact_id}, which the state store "
                "does not have. The store was modified or restored partially; restore it whole."
            )
        return artifact

    async def preload_artifacts(self) -> None:
        """Read the records of every artifact the journal references, up front, so that sync
        code of an async body (``kitaru.wait()`` returning an answer, a sync checkpoint replaying
        its output) finds them without a store call it could not make without blocking the loop."""
        wanted = set(self._referenced)
        self._referenced = []  # once per pass
        if not wanted:
            return
        astate = self.runtime.astate
        for artifact in await astate.list_artifacts(self.exec_id):
            if artifact.id in wanted:
                self._known_artifacts[artifact.id] = artifact
        for artifact_id in wanted - self._known_artifacts.keys():  # a replay's reused ones
            found = await astate.get_artifact(artifact_id)
            if found is not None:
                self._known_artifacts[artifact_id] = found

    async def preload_sync_outputs(self) -> None:
        """Read ahead the bytes of the blob outputs (over 64 KiB) that sync checkpoints of an
        async body will replay. Such a checkpoint runs on the loop's thread and must return its
        value there and then; on kitaru's portal loop (a flow driven from ``run()``, the client,
        the CLI) nothing could read the blob without waiting on the loop it blocks, so an
        execution that ran fine would fail on every resume. Bounded by the same budget as the
        outputs index; an output beyond it is read where it is wanted, as before."""
        wanted, self._sync_outputs = self._sync_outputs, []  # once per pass
        if not wanted:
            return
        known = self._known_artifacts
        if any(artifact_id not in known for artifact_id in wanted):
            for listed in await self.runtime.astate.list_artifacts(self.exec_id, type="output"):
                known.setdefault(listed.id, listed)
        budget = _INDEX_BUDGET
        for artifact_id in wanted:
            found = known.get(artifact_id)
            if found is None or found.inline is not None or found.size > budget:
                continue  # a missing record is reported where the output is wanted
            budget -= found.size
            try:
                self._read_ahead[artifact_id] = await self.runtime.aartifact_bytes(found)
            except Exception as exc:  # raised in the body, where it fails the execution
                self._read_ahead[artifact_id] = exc

    # -- reaching the stores from sync code ---------------------------------------------------
    #
    # The stores are async; the Runner awaits them. Sync code of the execution (a sync body or
    # checkpoint, kitaru.wait(), kitaru.save()) reaches them here: inline when the state store is
    # inline (SQLite: no thread hop on the hot path), from a worker thread onto the Runner's loop,
    # and from sync code running on the loop itself (a sync checkpoint called from an async body)
    # writes are queued into the group commit, flushed at the body's next await.

    def blocking(self, fn: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
        """``await fn(*args, **kwargs)`` from sync code of this execution, waiting for it."""
        if running_loop() is None:
            import anyio.from_thread

            return anyio.from_thread.run(partial(_awaited, fn, *args, **kwargs), token=self.token)
        # Sync code on an event loop's thread cannot wait for that loop. Reads here are rare (a
        # sync checkpoint of an async flow replaying an output kept in the artifact store): they
        # block this loop while kitaru's portal loop does them, as any sync call would.
        from kitaru._portal import in_portal_thread, portal

        if in_portal_thread():
            raise KitaruUsageError(
                f"execution {self.exec_id}: sync code called from the async flow needs a store "
                "read that cannot run without blocking the event loop it is on (a sync "
                "checkpoint replaying an output kept in the artifact store). Make that "
                "checkpoint `async def`."
            )
        return portal().call(partial(fn, *args, **kwargs))

    def state_call(self, fn: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
        """Call a state store method from sync code: inline when the store is inline."""
        if self.inline:
            from kitaru._portal import run_inline

            return run_inline(fn(*args, **kwargs))  # type: ignore[no-any-return]
        return self.blocking(fn, *args, **kwargs)

    def make_artifact(
        self, *, name: str, version: int, type: str, value: Any, call_id: str | None
    ) -> ArtifactRecord:
        """Serialize ``value`` into an artifact of this execution, from sync code. A large value's
        bytes are uploaded before this returns, or (on the loop's thread) queued ahead of the
        commit that references them."""
        record, blob = self.runtime.serialize_artifact(
            self.exec_id, name=name, version=version, type=type, value=value, call_id=call_id
        )
        if blob is not None:
            if running_loop() is None:
                self.blocking(self.runtime.aput_blob, *blob)
            else:
                self._batch_uploads.append(blob)
                self._schedule_flush()
        return record

    def load_artifact(self, artifact: ArtifactRecord) -> Any:
        """An artifact's value, from sync code of this execution."""
        if artifact.inline is not None:
            return self.runtime.load_artifact(artifact)
        ahead = self._read_ahead.pop(artifact.id, None)
        if isinstance(ahead, Exception):
            raise ahead
        if ahead is not None:
            from kitaru import serialization

            return serialization.loads(artifact.serializer, artifact.data_type, ahead)
        return self.blocking(self.runtime.aload_artifact, artifact)

    def opaque_inputs(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[str]:
        """Types of the arguments that are neither recorded outputs nor values the engine can
        fingerprint by content (the cache cannot tell two of them apart)."""
        from ._lineage import _fingerprint

        found = []
        for value in (*args, *kwargs.values()):
            known = self._outputs.get(id(value))
            if known is not None and known[2] is value:
                continue
            text = _fingerprint(value)
            if text.startswith("t:"):
                found.append(text[2:])
        return found

    def check_inputs(self, call: Call, fingerprint: str) -> None:
        recorded = self.completed[call.call_id].data or {}
        before = recorded.get("fp")
        if before is not None and before != fingerprint:
            logger.warning(
                "execution %s: checkpoint %r is replayed from its journal, but its inputs "
                "changed since it ran; the recorded output is used. Replay from it "
                "(`kitaru executions replay %s --from %s`) to run it on the new inputs.",
                self.exec_id,
                call.call_id,
                self.exec_id,
                call.call_id,
            )
            self.add_pending(
                JournalRecord(
                    kind="input_changed",
                    call_id=call.call_id,
                    data={"recorded": before, "now": fingerprint},
                )
            )

    # -- concurrency helpers ----------------------------------------------------------------

    def submit(self, fn: Any, *args: Any) -> CheckpointFuture[Any]:
        """Run ``fn`` on the execution's worker threads (``.submit()``/``.map()`` checkpoints); at
        most ``KITARU_MAX_THREADS`` run at once (see :func:`max_threads`), the rest queue."""
        from .futures import CheckpointFuture

        if self._executor is None:
            from concurrent.futures import ThreadPoolExecutor

            self._executor = ThreadPoolExecutor(
                max_workers=max_threads(), thread_name_prefix=f"kitaru-{self.exec_id[-6:]}"
            )
        future: CheckpointFuture[Any] = CheckpointFuture()
        self._executor.submit(future.run, fn, *args)
        self._futures.add(future)
        future.add_done_callback(self._futures.discard)
        return future

    def run_async(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Run an async checkpoint to completion from sync code of this execution (a sync body
        or a ``.submit()`` thread), on the Runner's loop, in this execution's context."""

        async def in_context() -> T:
            if not self.inline:
                await self.preload_artifacts()  # sync code on the loop may read them
            token = _current_exec.set(self)
            try:
                return await fn(*args)
            finally:
                _current_exec.reset(token)

        if running_loop() is not None:
            raise KitaruUsageError(
                f"execution {self.exec_id}: an async checkpoint was called from sync code running "
                "on the event loop; `await` it from async code instead."
            )
        import anyio.from_thread

        return anyio.from_thread.run(in_context, token=self.token)

    def drain_threads(self) -> None:
        """Let in-flight ``.submit()`` checkpoints finish (and record) before the body exits."""
        while self._futures:
            for future in list(self._futures):
                try:
                    future.exception()
                except BaseException:
                    pass
                self._futures.discard(future)

    async def drain_tasks(self) -> None:
        """Let in-flight async checkpoints finish (and record) before the body exits."""
        import asyncio

        while True:
            pending = {t for t in self.tasks if not t.done() and t is not self.main_task}
            if not pending:
                return
            await asyncio.wait(pending)

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True)


async def _awaited(fn: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
    return await fn(*args, **kwargs)


def max_threads() -> int | None:
    """How many ``.submit()``/``.map()`` checkpoints of one execution run at once:
    ``KITARU_MAX_THREADS``, else None (Python's default, ``min(32, CPUs + 4)``). Checkpoints that
    wait on rate-limited APIs want more; ones that fill memory, fewer."""
    raw = os.environ.get("KITARU_MAX_THREADS", "").strip()
    if not raw:
        return None
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise KitaruConfigError(
            f"KITARU_MAX_THREADS={raw!r} is not a positive whole number of threads; set it to e.g. "
            "8, or unset it for the default (min(32, CPUs + 4))."
        )
    return value


def now() -> float:
    return time.time()
