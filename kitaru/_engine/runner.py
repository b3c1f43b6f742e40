"""The Runner: the one code path that drives an execution.

Starting, resuming, answering a wait, retrying, replaying, cancelling and recovering all end in
:meth:`Runner.drive`, one async implementation. ``Flow.run()``, the handles, the client and the CLI
ask the Runner; sync callers enter through kitaru's one portal (:mod:`kitaru._portal`).

How a body runs under it (anyio throughout):

- An async body is a coroutine in the Runner's task, inside a cancel scope: a cancel seen by a
  commit or by the heartbeat cancels the scope at once, so an ``await`` deep in a checkpoint stops
  there instead of at the next checkpoint. Async checkpoints it starts concurrently are tracked and
  drained before the outcome is recorded; their completions are group-committed per loop turn.
- A sync body runs on a worker thread (``anyio.to_thread``). Its checkpoints commit inline from
  that thread when the state store is inline (SQLite: no hop per checkpoint), otherwise on the
  Runner's loop (``anyio.from_thread``); async checkpoints it calls run on the Runner's loop too.
"""

from __future__ import annotations

import logging
import math
import time
import traceback
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from kitaru._ids import MAX_ID_LENGTH, new_id
from kitaru.errors import (
    KitaruConflictError,
    KitaruDivergenceError,
    KitaruError,
    KitaruLeaseError,
    KitaruNotFoundError,
    KitaruStateError,
    KitaruUsageError,
)
from kitaru.store import ArtifactRecord, ExecutionRecord, JournalRecord

from .capture import capturing
from .context import ExecutionContext, _Cancelled, _current_exec, _Suspend
from .handle_use import explain_handle_use
from .interrupted import note_interrupted
from .loading import aload_execution_flow
from .runtime import OPTIONS_METADATA, Runtime

logger = logging.getLogger("kitaru")

if TYPE_CHECKING:
    from collections.abc import Sequence

    from kitaru.config import ExecutionOptions
    from kitaru.stack import Orchestrator

    from .flow import Flow

__all__ = ["Outcome", "Runner", "Started"]

#: Statuses an execution can be driven on from (what ``Orchestrator.submit`` accepts).
DRIVABLE = frozenset({"running", "waiting", "failed"})


@dataclass(slots=True)
class Started:
    """The arguments a flow body is called with, and the input artifact of each value."""

    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    inputs: list[tuple[Any, ArtifactRecord]]


@dataclass(slots=True)
class Outcome:
    """How one drive of an execution ended, in this process: a status the store holds now, or
    ``lost`` (another runner took it over) or ``interrupted`` (KeyboardInterrupt, SystemExit: the
    execution stays ``running`` and resumable; the edge re-raises ``error``)."""

    status: str
    value: Any = None
    error: BaseException | None = None

    def raise_interrupt(self) -> Outcome:
        """Re-raise a KeyboardInterrupt or SystemExit the body raised; else return itself."""
        if self.status == "interrupted" and self.error is not None:
            raise self.error
        return self


class Runner:
    """Drives executions of one runtime (its stores, its lease identity, its heartbeat)."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    # -- starting ----------------------------------------------------------------------------

    async def create(
        self,
        flow: Flow[Any, Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        execution_id: str | None,
        *,
        original: ExecutionRecord | None = None,
        reused_inputs: Sequence[ArtifactRecord] = (),
        seed: Sequence[JournalRecord] = (),
        extra_artifacts: Sequence[ArtifactRecord] = (),
        metadata: dict[str, Any] | None = None,
        leased: bool = True,
    ) -> tuple[ExecutionRecord, bool, Started]:
        """Create the execution (leased to this process) with its input artifacts; returns it,
        whether this call created it (an idempotent start finds it instead), and its arguments.
        ``leased=False`` leaves the lease free: another process (a remote job) will take it.

        A replay passes the ``original`` execution, the original input artifacts it keeps
        (``reused_inputs``, referenced rather than copied) and its ``seed`` journal.

        A flow loaded from a deployed version (``flow.deployment`` set) records that version: its
        code identity is the version (archive key and hash, image), not a path on this machine,
        so any process, and a remote orchestrator, loads the same code to resume it."""
        if execution_id is not None and not execution_id.strip():
            raise KitaruUsageError(
                f"flow {flow.name!r}: execution_id={execution_id!r} is empty, and an execution id "
                "cannot be. "
                "Pass a non-empty id to make the start idempotent, or leave it out for a new one."
            )
        if execution_id is not None and len(execution_id) > MAX_ID_LENGTH:
            raise KitaruUsageError(
                f"flow {flow.name!r}: execution_id is {len(execution_id)} characters long; ids are "
                f"at most {MAX_ID_LENGTH}. Derive a shorter one (e.g. a hash of the long key)."
            )
        runtime = self.runtime
        bound = flow.bind(args, kwargs)
        exec_id = execution_id or new_id()
        now = time.time()
        reused = {a.name: a for a in reused_inputs}
        inputs = [
            reused.get(param)
            or await runtime.amake_artifact(
                exec_id, name=param, version=1, type="input", value=value, call_id=None
            )
            for param, value in bound.arguments.items()
        ]
        deployment = getattr(flow, "deployment", None)
        if deployment:
            metadata = {**(metadata or {}), "deployment": dict(deployment)}
        metadata = dict(metadata or {})
        if OPTIONS_METADATA not in metadata:
            # Started without run-time overrides (a replay, an invocation): the flow's own.
            metadata[OPTIONS_METADATA] = flow.options({}).record()
        image = (metadata[OPTIONS_METADATA].get("image") or {}).get("base_image")
        if image and not metadata.get("image"):
            # The execution's image (`@flow(image=...)`, `run(image=...)`...): remote
            # orchestrators run its jobs on it.
            metadata["image"] = image
        record = ExecutionRecord(
            id=exec_id,
            flow=flow.name,
            target=deployment["target"] if deployment else flow.target,
            sys_path=None if deployment else flow.sys_path,
            status="running",
            created_at=now,
            updated_at=now,
            lease_owner=runtime.owner if leased else None,
            lease_expires_at=now + runtime.lease_ttl if leased else None,
            original_exec_id=original.id if original else None,
            metadata=metadata or {},
        )
        new_inputs = [a for a in inputs if a.name not in reused]
        input_refs = [
            JournalRecord(kind="input", call_id=a.name, artifact_id=a.id) for a in inputs if a.name in reused
        ]
        stored, created = await runtime.astate.create_execution(
            record, [*new_inputs, *extra_artifacts], [*input_refs, *seed]
        )
        started = Started(bound.args, bound.kwargs, list(zip(bound.arguments.values(), inputs, strict=True)))
        return stored, created, started

    async def start(
        self,
        flow: Flow[Any, Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        execution_id: str | None,
        options: ExecutionOptions | None = None,
    ) -> tuple[str, Outcome | None]:
        """Create the execution and drive it here to its end or suspension. An existing one with
        ``execution_id`` is driven on if it was left interrupted, else only observed (None).
        ``options``: the run's resolved ``cache``/``retries``/``image`` (default: the flow's)."""
        metadata = {OPTIONS_METADATA: options.record()} if options is not None else None
        record, created, started = await self.create(flow, args, kwargs, execution_id, metadata=metadata)
        if created:
            return record.id, await self.drive(flow, record, started, [])
        return record.id, await self.resume_interrupted(record)

    async def start_elsewhere(
        self,
        orchestrator: Orchestrator,
        flow: Flow[Any, Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        execution_id: str | None,
        options: ExecutionOptions | None = None,
    ) -> str:
        """Create the execution with its lease free and hand it to ``orchestrator``, which runs
        it elsewhere (a Kubernetes Job). An orchestrator may ship what the job needs first: its
        ``prepare(flow)`` returns metadata recorded with the execution (the code archive's key).

        An existing execution with ``execution_id`` is submitted again only if nobody drives it
        (an interrupted one); otherwise it is only observed, as :meth:`start` does. If the
        submit fails, the execution stays ``running`` with a free lease: `kitaru executions
        recover` submits it again."""
        from kitaru.config import refuse_image_builds

        options = options if options is not None else flow.options({})
        if options.image is not None:
            refuse_image_builds(options.image, flow.name)
        prepare = getattr(orchestrator, "prepare", None)
        metadata = await prepare(flow) if prepare is not None else {}
        metadata = {**(metadata or {}), OPTIONS_METADATA: options.record()}
        record, created, _ = await self.create(
            flow, args, kwargs, execution_id, metadata=metadata, leased=False
        )
        try:
            await orchestrator.submit(record.id)
        except (KitaruLeaseError, KitaruStateError):
            if created:
                raise
        return record.id

    async def resume_interrupted(self, record: ExecutionRecord) -> Outcome | None:
        """Drive on an existing execution left ``running`` by a runner that is gone; None when
        another runner drives it or it is not running (it is then only observed)."""
        leased = await self.take_interrupted(record)
        if leased is None:
            return None
        flow, started = await self.load(leased)
        return await self.drive(flow, leased, started)

    async def take_interrupted(self, record: ExecutionRecord) -> ExecutionRecord | None:
        """The lease on an existing ``running`` execution whose runner is gone, or None."""
        if record.status != "running":
            return None
        try:
            leased: ExecutionRecord = await self.runtime.astate.acquire_lease(
                record.id, self.runtime.owner, self.runtime.lease_ttl, allowed_statuses={"running"}
            )
        except (KitaruLeaseError, KitaruStateError):
            return None  # driven elsewhere, or it finished meanwhile: just observe it
        return leased

    async def load(self, record: ExecutionRecord) -> tuple[Flow[Any, Any], Started]:
        """The flow an execution runs, and the arguments it was started with."""
        flow = await aload_execution_flow(self.runtime, record)
        return flow, await self.inputs(flow, record.id)

    async def inputs(self, flow: Flow[Any, Any], exec_id: str) -> Started:
        """The arguments an execution was started with, loaded back from its input artifacts."""
        import inspect

        runtime = self.runtime
        stored = {a.name: a for a in await runtime.astate.list_artifacts(exec_id, type="input")}
        arguments = {
            name: await runtime.aload_artifact(stored[name])
            for name in flow.signature.parameters
            if name in stored
        }
        bound = inspect.BoundArguments(flow.signature, arguments)  # type: ignore[arg-type,unused-ignore]
        return Started(bound.args, bound.kwargs, [(v, stored[k]) for k, v in arguments.items()])

    # -- steering existing executions ------------------------------------------------------------

    async def submit(self, exec_id: str, allowed: Collection[str] = DRIVABLE) -> Outcome:
        """Take the lease on an existing execution in one of ``allowed`` and drive it here.

        The code is loaded first: an execution this process cannot drive keeps its state and
        lease. KitaruLeaseError when another runner holds it, KitaruStateError when its status
        is not ``allowed``."""
        runtime = self.runtime
        record = await runtime.astate.get_execution(exec_id)
        if record is None:
            raise KitaruNotFoundError(f"no execution {exec_id!r}. List them with `kitaru executions list`.")
        flow = await aload_execution_flow(runtime, record)
        leased = await runtime.astate.acquire_lease(
            exec_id, runtime.owner, runtime.lease_ttl, allowed_statuses=set(allowed)
        )
        return await self.drive(flow, leased, await self.inputs(flow, exec_id))

    async def answer(
        self,
        exec_id: str,
        wait: str,
        value: Any,
        *,
        take_lease: bool,
        abort: dict[str, Any] | None = None,
    ) -> ExecutionRecord | None:
        """Record ``value`` (already checked against the wait's schema) as the answer of wait
        ``wait``; with ``take_lease``, a waiting execution whose lease is free becomes this
        process's to drive in the same transaction (returned; None otherwise).

        ``abort`` (``{"aborted": True, "reason": ...}``) records an abort instead: the same
        once-only ``wait_answered`` record (so every store's answer rules apply unchanged: an
        answered wait cannot be aborted, nor an aborted one answered) with a null answer; the
        flow's ``wait()`` raises :class:`~kitaru.errors.KitaruWaitAborted` on it."""
        if not await self.record_answer(exec_id, wait, value, take_lease=take_lease, abort=abort):
            return None
        leased: ExecutionRecord | None = await self.runtime.astate.get_execution(exec_id)
        return leased

    async def record_answer(
        self,
        exec_id: str,
        wait: str,
        value: Any,
        *,
        take_lease: bool,
        abort: dict[str, Any] | None = None,
    ) -> bool:
        """:meth:`answer` without reading the leased execution back: whether this process took
        its lease (the server's request path leaves that read to the driver that drives it)."""
        runtime = self.runtime
        artifact = await runtime.amake_artifact(
            exec_id, name=wait, version=1, type="answer", value=value, call_id=wait
        )
        record = JournalRecord(
            kind="wait_answered", call_id=wait, artifact_id=artifact.id, data=abort, ts=time.time()
        )
        took: bool = await runtime.astate.answer_wait(
            exec_id, record, artifact, owner=runtime.owner, ttl=runtime.lease_ttl, take_lease=take_lease
        )
        return took

    async def cancel(self, exec_id: str) -> ExecutionRecord:
        """Cancel a running or waiting execution: final. Its runner (here or anywhere) sees it on
        its next commit or heartbeat and stops; an async body stops at once."""
        record: ExecutionRecord = await self.runtime.astate.cancel(exec_id)
        return record

    async def replay(
        self,
        flow: Flow[Any, Any],
        original: ExecutionRecord,
        from_: str,
        overrides: Mapping[str, Any] | None = None,
        args: Mapping[str, Any] | None = None,
    ) -> tuple[ExecutionRecord, Outcome]:
        """Create the replay of ``original`` from call ``from_`` and drive it here."""
        record, started = await self.create_replay(flow, original, from_, overrides, args)
        return record, await self.drive(flow, record, started)

    async def create_replay(
        self,
        flow: Flow[Any, Any],
        original: ExecutionRecord,
        from_: str,
        overrides: Mapping[str, Any] | None = None,
        args: Mapping[str, Any] | None = None,
    ) -> tuple[ExecutionRecord, Started]:
        """Plan and create the replay of ``original`` from call ``from_`` (leased to this runner),
        without driving it: a bad request raises before anything is written."""
        import anyio.to_thread

        from .replay import plan_replay

        # The plan validates everything before the first write; it reads through the sync store
        # views, so it runs on a worker thread rather than on this loop.
        plan = await anyio.to_thread.run_sync(
            lambda: plan_replay(self.runtime, flow, original, from_, overrides, args)
        )
        exec_id = new_id()
        for artifact in plan.new_artifacts:
            artifact.exec_id = exec_id
        record, _, started = await self.create(
            flow,
            (),
            dict(plan.arguments),
            exec_id,
            original=original,
            reused_inputs=plan.reused_inputs,
            seed=plan.seed,
            extra_artifacts=plan.new_artifacts,
            metadata={"replay": {"of": original.id, "from": plan.boundary}},
        )
        return record, started

    async def recover_one(self, record: ExecutionRecord) -> tuple[str, str | None]:
        """Drive on one execution nobody moves on; returns what became of it (a Recovery's
        ``outcome`` and ``detail``)."""
        try:
            outcome = await self.submit(record.id, {record.status})
        except KitaruLeaseError:
            return "skipped", "another runner drives it"
        except KitaruStateError:
            return "skipped", "it moved on meanwhile"
        except KitaruError as exc:
            return "error", str(exc)
        if outcome.status == "lost":
            return "skipped", "another runner took it over"
        return outcome.status, str(outcome.error) if outcome.error is not None else None

    # -- driving ---------------------------------------------------------------------------------

    async def drive(
        self,
        flow: Flow[Any, Any],
        execution: ExecutionRecord,
        started: Started,
        journal: list[JournalRecord] | None = None,
    ) -> Outcome:
        """Run the body to its end or suspension (the lease is already held) and record how it
        ended. An answer that lands while the body suspends runs it again at once."""
        import anyio.lowlevel

        runtime = self.runtime
        runtime.track(execution.id)
        try:
            journal = await note_interrupted(runtime, execution, journal)
            while True:
                if journal is None:
                    journal = await runtime.astate.read_journal(execution.id)
                retried = sum(1 for r in journal if r.kind == "flow_retry")
                ctx = ExecutionContext(runtime, execution, journal)
                options = execution.metadata.get(OPTIONS_METADATA) or {}
                ctx.cache_default = bool(options.get("cache", getattr(flow, "cache", False)))
                if flow.is_async:
                    if not runtime.inline:
                        await ctx.preload_artifacts()
                    await ctx.preload_sync_outputs()
                journal = None  # a second pass (an answer came while suspending) rereads it
                ctx.token = anyio.lowlevel.current_token()
                for value, artifact in started.inputs:
                    ctx.remember_output(value, artifact)
                if flow.is_async:
                    value, error = await _run_async_body(flow, ctx, started)
                else:
                    value, error = await _run_sync_body(flow, ctx, started)
                error = await explain_handle_use(ctx, error)  # 0.18 code calling .load() on a value
                retries = options.get("retries", getattr(flow, "retries", None) or 0)
                if await _retried(retries, ctx, error, retried):
                    retried += 1
                    continue
                outcome = await _settle(ctx, value, error)
                if outcome is not None:
                    return outcome
        finally:
            runtime.untrack(execution.id)


# -- running a body --------------------------------------------------------------------------


async def _run_sync_body(
    flow: Flow[Any, Any], ctx: ExecutionContext, started: Started
) -> tuple[Any, BaseException | None]:
    import anyio
    import anyio.to_thread

    def body() -> tuple[Any, BaseException | None]:
        token = _current_exec.set(ctx)
        try:
            with capturing():
                try:
                    return flow.fn(*started.args, **started.kwargs), None
                finally:
                    ctx.drain_threads()
        except BaseException as exc:
            return None, exc
        finally:
            _current_exec.reset(token)
            ctx.close()

    # Bodies get threads of their own, never a slot another flow's commit needs (a bounded
    # limiter shared with the stores' threads could deadlock under many concurrent flows).
    return await anyio.to_thread.run_sync(body, limiter=anyio.CapacityLimiter(math.inf))


async def _run_async_body(
    flow: Flow[Any, Any], ctx: ExecutionContext, started: Started
) -> tuple[Any, BaseException | None]:
    import asyncio

    import anyio

    loop = asyncio.get_running_loop()
    ctx.main_task = asyncio.current_task()
    token = _current_exec.set(ctx)
    value: Any = None
    error: BaseException | None = None
    try:
        with capturing():
            scope = anyio.CancelScope()

            def cancel() -> None:
                # Called from the heartbeat's thread or from a commit on the loop.
                loop.call_soon_threadsafe(_cancel_body, scope, ctx)

            remove = ctx.runtime.on_cancel(ctx.exec_id, cancel)
            try:
                with scope:
                    value = await flow.fn(*started.args, **started.kwargs)
            except BaseException as exc:
                error = exc
            finally:
                remove()
                await ctx.drain_tasks()
                ctx.drain_threads()
            if scope.cancelled_caught and error is None:
                error = _Cancelled()
    finally:
        _current_exec.reset(token)
        ctx.close()
    return value, error


def _cancel_body(scope: Any, ctx: ExecutionContext) -> None:
    scope.cancel()
    for task in list(ctx.tasks):  # async checkpoints the body started on their own
        if task is not ctx.main_task:
            task.cancel()


# -- recording how the body ended ------------------------------------------------------------


async def _retried(retries: int, ctx: ExecutionContext, exc: BaseException | None, done: int) -> bool:
    """``retries`` (the execution's resolved ``retries=``): record a failed run as a retry and
    say whether to run the body again (from the journal: completed checkpoints replay, the failed
    one runs anew). Errors that another run cannot fix (a lost lease, divergence, misuse) are
    not retried."""
    if not retries or done >= retries or not isinstance(exc, Exception):
        return False
    if isinstance(exc, KitaruLeaseError | KitaruConflictError | KitaruDivergenceError | KitaruUsageError):
        return False
    await ctx.flush()
    await ctx.acommit(
        [
            JournalRecord(
                kind="flow_retry",
                data={"attempt": done + 2, "error": f"{type(exc).__qualname__}: {exc}"},
                ts=time.time(),
            )
        ]
    )
    logger.warning(
        "execution %s failed (%s: %s); retrying it from its journal (retry %d of %d).",
        ctx.exec_id,
        type(exc).__qualname__,
        exc,
        done + 1,
        retries,
    )
    return True


async def _settle(ctx: ExecutionContext, value: Any, exc: BaseException | None) -> Outcome | None:
    """Record how the body ended. None means: an answer arrived while suspending, run again.

    A cancel that lands while the body ends wins: the store refuses to turn a cancelled execution
    into ``completed``, ``failed`` or ``waiting``, and the runner records that it stopped instead.
    """
    try:
        try:
            await ctx.flush()  # writes queued by sync code on the loop land first
        except BaseException as flush_error:
            if exc is None or isinstance(flush_error, _Cancelled | KitaruLeaseError | KitaruConflictError):
                exc = flush_error
        return await _settle_as(ctx, value, exc)
    except _Cancelled:
        return await _settle_cancelled(ctx)
    except KitaruStateError:
        record = await ctx.runtime.astate.get_execution(ctx.exec_id)
        if record is not None and record.status == "cancelled":
            ctx.runtime.saw_cancel(ctx.exec_id)
            return await _settle_cancelled(ctx)
        raise


async def _settle_as(ctx: ExecutionContext, value: Any, exc: BaseException | None) -> Outcome | None:
    if exc is None:
        return await _settle_value(ctx, value)
    if isinstance(exc, _Suspend):
        await ctx.acommit([])  # flush anything pending before the process lets go (and see a cancel)
        if await ctx.runtime.astate.suspend(ctx.exec_id, ctx.runtime.owner, ctx.suspended_on):
            return Outcome("waiting")
        return None
    if isinstance(exc, _Cancelled):
        return await _settle_cancelled(ctx)
    if isinstance(exc, KitaruLeaseError | KitaruConflictError):
        if isinstance(exc, KitaruConflictError) and await _still_ours(ctx):
            # A conflict while this runner still holds the lease is not another runner's work
            # (a key the flow's own code tried to create twice, say): read as "lost", it left
            # the execution running under a lease nobody would renew, to fail the same way
            # after every recovery.
            return await _settle_error(ctx, exc)
        # Another runner owns the execution now: stop without writing anything more.
        return Outcome("lost", error=exc)
    if isinstance(exc, Exception):
        return await _settle_error(ctx, exc)
    # KeyboardInterrupt, SystemExit: leave the execution running and resumable, lease released.
    # The error travels in the outcome and is raised at the edge that started the drive (raised
    # here, it would take down the event loop the Runner shares with other executions).
    await ctx.runtime.astate.commit(ctx.exec_id, [], owner=ctx.runtime.owner, release_lease=True)
    return Outcome("interrupted", error=exc)


async def _still_ours(ctx: ExecutionContext) -> bool:
    record = await ctx.runtime.astate.get_execution(ctx.exec_id)
    return record is not None and record.status == "running" and record.lease_owner == ctx.runtime.owner


async def _settle_value(ctx: ExecutionContext, value: Any) -> Outcome:
    try:
        artifact = await ctx.runtime.amake_artifact(
            ctx.exec_id, name="result", version=1, type="result", value=value, call_id=None
        )
    except KitaruError as exc:
        return await _settle_error(ctx, exc)
    _, lineage = ctx.describe_inputs((value,), {})
    await ctx.acommit(
        [
            JournalRecord(
                kind="flow_completed",
                artifact_id=artifact.id,
                data={"inputs": lineage} if lineage else None,
                ts=time.time(),
            )
        ],
        [artifact],
        status="completed",
        result_artifact=artifact.id,
        release_lease=True,
    )
    return Outcome("completed", value=value)


async def _settle_error(ctx: ExecutionContext, exc: Exception) -> Outcome:
    message = f"{type(exc).__qualname__}: {exc}"
    await ctx.acommit(
        [
            JournalRecord(
                kind="flow_failed",
                data={"error": message, "traceback": "".join(traceback.format_exception(exc))},
                ts=time.time(),
            )
        ],
        status="failed",
        error=message,
        release_lease=True,
    )
    return Outcome("failed", error=exc)


async def _settle_cancelled(ctx: ExecutionContext) -> Outcome:
    try:
        await ctx.acommit(
            [JournalRecord(kind="flow_cancelled", ts=time.time())], release_lease=True, unwind=False
        )
    except KitaruLeaseError:
        pass  # nobody holds it any more (cancelled while it was waiting): nothing left to release
    return Outcome("cancelled")
