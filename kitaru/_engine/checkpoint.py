"""``@checkpoint``: a durable step whose output is journaled and never recomputed in its execution."""

from __future__ import annotations

import functools
import random
import time
import traceback
from collections.abc import Callable, Iterable
from contextvars import copy_context
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar, cast, overload

from kitaru.cache import CacheKey
from kitaru.errors import KitaruUsageError
from kitaru.store import ArtifactRecord, CacheEntry, CatalogStore, JournalRecord

from .context import (
    SYNC_CHECKPOINTS,
    Call,
    CallFrame,
    ExecutionContext,
    _current_call,
    _current_exec,
    running_loop,
)

if TYPE_CHECKING:
    from .futures import CheckpointFuture

__all__ = ["Checkpoint", "checkpoint"]

P = ParamSpec("P")
R = TypeVar("R")


class Checkpoint(Generic[P, R]):
    """A function made durable by :func:`checkpoint`. Its definition is frozen when applied."""

    __slots__ = (
        "__dict__",
        "backoff",
        "cache",
        "cache_key",
        "fn",
        "is_async",
        "name",
        "qualname",
        "retries",
        "retry_delay",
        "retry_on",
        "runtime",
        "type",
    )

    fn: Callable[..., Any]
    name: str
    qualname: str

    def __init__(
        self,
        fn: Callable[P, R],
        *,
        name: str | None,
        retries: int,
        retry_delay: float,
        backoff: float,
        retry_on: tuple[type[BaseException], ...],
        cache: bool | None = None,
        cache_key: CacheKey | None = None,
        type: str | None = None,
        runtime: str | None = None,
    ) -> None:
        import inspect

        if isinstance(fn, Checkpoint):
            raise KitaruUsageError(f"{fn.qualname!r} is already a checkpoint; apply @checkpoint once.")
        if not callable(fn) or inspect.isclass(fn):
            raise KitaruUsageError(f"@checkpoint needs a function, got {fn!r}.")
        if inspect.isgeneratorfunction(fn) or inspect.isasyncgenfunction(fn):
            raise KitaruUsageError(
                f"@checkpoint cannot wrap generator {fn.__qualname__!r}: its output would be "
                "consumed lazily, after the checkpoint is recorded. Return a list instead."
            )
        if retries < 0 or retry_delay < 0 or backoff < 1:
            raise KitaruUsageError(
                f"@checkpoint on {fn.__qualname__!r}: retries and retry_delay must be >= 0 and "
                f"backoff >= 1 (got retries={retries}, retry_delay={retry_delay}, "
                f"backoff={backoff})."
            )
        if name is not None and (not name or ":" in name or "/" in name):
            raise KitaruUsageError(
                f"checkpoint name {name!r} must be non-empty, without ':' or '/' (they separate "
                "call numbers and saved names)."
            )
        self.fn = fn
        self.name = name or fn.__name__
        self.qualname = fn.__qualname__
        self.retries = retries
        self.retry_delay = retry_delay
        self.backoff = backoff
        self.retry_on = retry_on
        if cache_key is not None and not (isinstance(cache_key, str) or callable(cache_key)):
            raise KitaruUsageError(
                f"@checkpoint on {fn.__qualname__!r}: cache_key must be a string or a function of "
                f"the checkpoint's arguments returning one, got {cache_key!r}."
            )
        # None: the flow's `cache=` decides; a cache_key alone turns caching on.
        self.cache = cache if cache is not None else (True if cache_key is not None else None)
        self.cache_key = cache_key
        if type is not None and (not isinstance(type, str) or not type.strip()):
            raise KitaruUsageError(
                f"@checkpoint on {fn.__qualname__!r}: type labels the call (e.g. 'llm_call', "
                f"'tool_call'); it must be a non-empty string, got {type!r}."
            )
        self.type = type.strip() if type is not None else None
        """A label for the call and its output artifact (``llm_call``, ``tool_call``...)."""
        normalized = runtime.strip().lower() if isinstance(runtime, str) else runtime
        if normalized not in (None, "inline", "isolated"):
            raise KitaruUsageError(
                f"@checkpoint on {fn.__qualname__!r}: unsupported runtime {runtime!r}; expected "
                "'inline' (in the flow's process, the default) or 'isolated' (a process, or on a "
                "remote stack a job, of its own)."
            )
        self.runtime = normalized or "inline"
        """``inline`` or ``isolated`` (see :mod:`kitaru._engine.isolated`)."""
        self.is_async = inspect.iscoroutinefunction(fn)
        if not self.is_async:
            SYNC_CHECKPOINTS.add(self.qualname)  # its blob outputs are read ahead for async flows
        functools.update_wrapper(self, fn)

    def __repr__(self) -> str:
        return f"<checkpoint {self.name!r} ({self.qualname})>"

    # -- calling --------------------------------------------------------------------------

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        ctx = _current_exec.get()
        if ctx is None:
            # Outside a flow a checkpoint is the plain function: handy in unit tests and scripts.
            return cast(R, self.fn(*args, **kwargs))
        frame = _current_call.get()
        if frame is not None:
            raise KitaruUsageError(
                f"checkpoint {self.name!r} was called inside checkpoint {frame.call.call_id!r}; "
                "checkpoints do not nest. Call it from the flow body, or drop @checkpoint from "
                "the inner function."
            )
        call = ctx.begin_call(self.name, self.qualname)
        if self.runtime == "isolated":
            return cast(R, self._isolated(ctx, call, args, kwargs))
        if self.is_async:
            if running_loop() is None:
                # A sync flow body calling an async checkpoint gets the value, not a coroutine: it
                # runs on the Runner's loop.
                return cast(R, ctx.run_async(self._run_async, ctx, call, args, kwargs))
            return cast(R, self._run_async(ctx, call, args, kwargs))
        return cast(R, self._run_sync(ctx, call, args, kwargs))

    def _isolated(
        self, ctx: ExecutionContext, call: Call, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        """An isolated call: its value (sync flow body), or an awaitable of it (async body: the
        wait for the child runs on a worker thread, the loop stays free)."""
        from .isolated import run_isolated

        if running_loop() is None:
            return run_isolated(self, ctx, call, args, kwargs)

        async def awaited() -> Any:
            import anyio.to_thread

            return await anyio.to_thread.run_sync(lambda: run_isolated(self, ctx, call, args, kwargs))

        return awaited()

    def submit(self, *args: P.args, **kwargs: P.kwargs) -> CheckpointFuture[R]:
        """Start a sync checkpoint on a worker thread; returns a future of its output
        (``.result()``, or ``.load()`` as Kitaru 0.18 wrote it)."""
        from .futures import CheckpointFuture

        ctx = _current_exec.get()
        if self.is_async:
            raise KitaruUsageError(
                f"checkpoint {self.name!r} is async: run several at once with asyncio.gather "
                "instead of .submit()."
            )
        if ctx is None:
            future: CheckpointFuture[R] = CheckpointFuture()
            future.run(functools.partial(self.fn, *args, **kwargs))
            return future
        call = ctx.begin_call(self.name, self.qualname)
        run = self._isolated if self.runtime == "isolated" else self._run_sync
        return ctx.submit(copy_context().run, run, ctx, call, args, kwargs)

    def map(self, *iterables: Iterable[Any]) -> list[R]:
        """Run the checkpoint on each item (zipped across ``iterables``) concurrently, in order."""
        futures = [self.submit(*items) for items in zip(*iterables, strict=False)]  # type: ignore[call-arg]
        return [f.result() for f in futures]

    def product(self, *iterables: Iterable[Any]) -> list[R]:
        """Run the checkpoint on every combination of items of ``iterables`` (their cartesian
        product, as ``itertools.product`` orders it) concurrently; the outputs in that order."""
        import itertools

        futures = [self.submit(*items) for items in itertools.product(*iterables)]  # type: ignore[call-arg]
        return [f.result() for f in futures]

    # -- execution ----------------------------------------------------------------------------

    def _replayed(self, ctx: ExecutionContext, call: Call, fingerprint: str) -> tuple[bool, Any]:
        if call.call_id not in ctx.completed:
            return False, None
        ctx.check_inputs(call, fingerprint)
        record = ctx.completed[call.call_id]
        artifact = ctx.stored_artifact(record)
        value = ctx.load_artifact(artifact)
        ctx.remember_output(value, artifact)
        return True, value

    async def _areplayed(self, ctx: ExecutionContext, call: Call, fingerprint: str) -> tuple[bool, Any]:
        """:meth:`_replayed` for async checkpoints: the reads are awaited on the loop."""
        if call.call_id not in ctx.completed:
            return False, None
        ctx.check_inputs(call, fingerprint)
        record = ctx.completed[call.call_id]
        if ctx.inline:
            artifact = ctx.stored_artifact(record)
        else:
            found = await ctx.runtime.astate.get_artifact(record.artifact_id or "")
            artifact = found if found is not None else ctx.stored_artifact(record)  # raises
        value = await ctx.runtime.aload_artifact(artifact)
        ctx.remember_output(value, artifact)
        return True, value

    # -- the cross-execution cache (kitaru/cache.py) ---------------------------------------------

    def _cache_key(
        self, ctx: ExecutionContext, fingerprint: str, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> str | None:
        """The call's cache key when caching applies to it and the state store keeps a cache."""
        enabled = self.cache if self.cache is not None else ctx.cache_default
        if not enabled or not isinstance(ctx.runtime.astate, CatalogStore):
            return None
        from kitaru.cache import cache_key_for

        opaque = [] if self.cache_key is not None else ctx.opaque_inputs(args, kwargs)
        return cache_key_for(
            flow=ctx.execution.flow,
            qualname=self.qualname,
            fn=self.fn,
            fingerprint=fingerprint,
            opaque=opaque,
            user_key=self.cache_key,
            args=args,
            kwargs=kwargs,
        )

    def _cache_hit_records(
        self, call: Call, key: str, entry: CacheEntry, fingerprint: str, lineage: list[str]
    ) -> list[JournalRecord]:
        # The hit is journaled like a completed call pointing at the cached artifact (the same
        # one, no copy), so replay, lineage and `executions get` see it; `cached_from` marks it.
        now = time.time()
        data: dict[str, Any] = {
            "fp": fingerprint,
            "started_at": now,
            "cached_from": entry.exec_id,
            "cache_key": key,
        }
        if self.type is not None:
            data["type"] = self.type
        if lineage:
            data["inputs"] = lineage
        return [
            JournalRecord(
                kind="checkpoint_completed",
                call_id=call.call_id,
                seq=call.seq,
                name=call.name,
                attempt=1,
                artifact_id=entry.artifact_id,
                data=data,
                ts=now,
            )
        ]

    def _cache_lookup(
        self, ctx: ExecutionContext, call: Call, key: str, fingerprint: str, lineage: list[str]
    ) -> tuple[bool, Any]:
        store: Any = ctx.runtime.astate
        entry = ctx.state_call(store.get_cache_entry, key)
        if entry is None:
            return False, None
        artifact = ctx.state_call(store.get_artifact, entry.artifact_id)
        if artifact is None:  # its execution's records were removed: run the call again
            return False, None
        value = ctx.load_artifact(artifact)
        ctx.commit(self._cache_hit_records(call, key, entry, fingerprint, lineage))
        ctx.remember_output(value, artifact)
        return True, value

    async def _acache_lookup(
        self, ctx: ExecutionContext, call: Call, key: str, fingerprint: str, lineage: list[str]
    ) -> tuple[bool, Any]:
        store: Any = ctx.runtime.astate
        entry = await store.get_cache_entry(key)
        if entry is None:
            return False, None
        artifact = await store.get_artifact(entry.artifact_id)
        if artifact is None:
            return False, None
        value = await ctx.runtime.aload_artifact(artifact)
        await ctx.commit_async(self._cache_hit_records(call, key, entry, fingerprint, lineage), ())
        ctx.remember_output(value, artifact)
        return True, value

    def _cache_entry(self, ctx: ExecutionContext, call: Call, key: str, artifact_id: str) -> CacheEntry:
        return CacheEntry(
            key=key,
            flow=ctx.execution.flow,
            checkpoint=self.qualname,
            artifact_id=artifact_id,
            exec_id=ctx.exec_id,
            call_id=call.call_id,
            created_at=time.time(),
        )

    def _started(self, call: Call, attempt: int, fingerprint: str, lineage: list[str]) -> JournalRecord:
        # Not committed on its own: its fields ride in the attempt's outcome record, which saves a
        # write per checkpoint. A crash mid-attempt leaves no record, and the call simply runs again.
        data: dict[str, Any] = {"fp": fingerprint, "started_at": time.time()}
        if lineage:
            data["inputs"] = lineage
        if self.type is not None:
            data["type"] = self.type
        return JournalRecord(
            kind="checkpoint_started",
            call_id=call.call_id,
            seq=call.seq,
            name=call.name,
            attempt=attempt,
            data=data,
            ts=time.time(),
        )

    def _succeeded(
        self, frame: CallFrame, started: JournalRecord, value: Any
    ) -> tuple[list[JournalRecord], list[ArtifactRecord]]:
        ctx, call = frame.ctx, frame.call
        version = int(call.call_id.rpartition(":")[2]) if ":" in call.call_id else 1
        artifact = ctx.make_artifact(
            name=self.name,
            version=version,
            type="output",
            value=value,
            call_id=call.call_id,
        )
        if self.type is not None:
            artifact.tags = [self.type]  # `kitaru artifacts list --tag llm_call` finds them
        ctx.remember_output(value, artifact)
        done = JournalRecord(
            kind="checkpoint_completed",
            call_id=call.call_id,
            seq=call.seq,
            name=call.name,
            attempt=started.attempt,
            artifact_id=artifact.id,
            data=started.data,
            ts=time.time(),
        )
        return [*frame.records, done], [*frame.artifacts, artifact]

    def _failed(
        self, frame: CallFrame, started: JournalRecord, exc: Exception
    ) -> tuple[list[JournalRecord], float | None]:
        """Records for a failed attempt, and the delay before the next one (None: give up)."""
        attempt = started.attempt or 1
        retry = attempt <= self.retries and isinstance(exc, self.retry_on)
        delay = None
        if retry:
            # Exponential backoff with full jitter, so concurrent retries do not stampede.
            delay = self.retry_delay * self.backoff ** (attempt - 1) * random.uniform(0.5, 1.5)
        failed = JournalRecord(
            kind="checkpoint_failed",
            call_id=frame.call.call_id,
            seq=frame.call.seq,
            name=frame.call.name,
            attempt=attempt,
            data={
                **(started.data or {}),
                "error": f"{type(exc).__qualname__}: {exc}",
                "traceback": "".join(traceback.format_exception(exc)),
                "will_retry": retry,
                "retry_in": delay,
            },
            ts=time.time(),
        )
        # Logs of the failed attempt are kept; its saves are not (the retry saves again).
        logs = [r for r in frame.records if r.kind in ("log", "output")]
        return [*logs, failed], delay

    def _run_sync(
        self, ctx: ExecutionContext, call: Call, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        fingerprint, lineage = ctx.describe_inputs(args, kwargs)
        hit, value = self._replayed(ctx, call, fingerprint)
        if hit:
            return value
        key = None
        # Sync code on the loop's thread reaches a non-inline store only by blocking the loop
        # (refused on kitaru's portal loop): such a call runs uncached rather than fail.
        if ctx.inline or running_loop() is None:
            key = self._cache_key(ctx, fingerprint, args, kwargs)
        if key is not None:
            hit, value = self._cache_lookup(ctx, call, key, fingerprint, lineage)
            if hit:
                return value
        attempt = 1
        runtime = ctx.runtime
        while True:
            frame = CallFrame(call, ctx, checkpoint_type=self.type, attempt=attempt)
            started = self._started(call, attempt, fingerprint, lineage)
            runtime.call_started(ctx.exec_id, started)  # the heartbeat notes it (no commit here)
            try:
                token = _current_call.set(frame)
                try:
                    value = self.fn(*args, **kwargs)
                except Exception as exc:
                    records, delay = self._failed(frame, started, exc)
                    ctx.commit(records)
                    if delay is None:
                        raise
                    time.sleep(delay)
                    attempt += 1
                    continue
                finally:
                    _current_call.reset(token)
                records, artifacts = self._succeeded(frame, started, value)
                ctx.commit(records, artifacts)
                if key is not None:
                    store: Any = ctx.runtime.astate
                    ctx.state_call(
                        store.put_cache_entry,
                        self._cache_entry(ctx, call, key, records[-1].artifact_id or ""),
                    )
                return value
            finally:
                runtime.call_ended(ctx.exec_id, call.call_id)

    async def _run_async(
        self, ctx: ExecutionContext, call: Call, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        fingerprint, lineage = ctx.describe_inputs(args, kwargs)
        hit, value = await self._areplayed(ctx, call, fingerprint)
        if hit:
            return value
        key = self._cache_key(ctx, fingerprint, args, kwargs)
        if key is not None:
            hit, value = await self._acache_lookup(ctx, call, key, fingerprint, lineage)
            if hit:
                return value
        import asyncio

        import anyio

        task = asyncio.current_task()
        if task is not None:
            ctx.tasks.add(task)
        try:
            attempt = 1
            runtime = ctx.runtime
            while True:
                frame = CallFrame(call, ctx, checkpoint_type=self.type, attempt=attempt)
                started = self._started(call, attempt, fingerprint, lineage)
                runtime.call_started(ctx.exec_id, started)  # the heartbeat notes it (no commit here)
                try:
                    token = _current_call.set(frame)
                    try:
                        value = await self.fn(*args, **kwargs)
                    except Exception as exc:
                        records, delay = self._failed(frame, started, exc)
                        await ctx.commit_async(records, ())
                        if delay is None:
                            raise
                        await anyio.sleep(delay)
                        attempt += 1
                        continue
                    finally:
                        _current_call.reset(token)
                    records, artifacts = self._succeeded(frame, started, value)
                    await ctx.commit_async(records, artifacts)
                    if key is not None:
                        # After the commit: an entry must never point at an uncommitted output.
                        entry = self._cache_entry(ctx, call, key, records[-1].artifact_id or "")
                        await ctx.runtime.astate.put_cache_entry(entry)  # type: ignore[attr-defined]
                    return value
                finally:
                    runtime.call_ended(ctx.exec_id, call.call_id)
        finally:
            if task is not None:
                ctx.tasks.discard(task)


@overload
def checkpoint(fn: Callable[P, R], /) -> Checkpoint[P, R]: ...


@overload
def checkpoint(
    *,
    name: str | None = None,
    retries: int = 0,
    retry_delay: float = 1.0,
    backoff: float = 2.0,
    retry_on: type[BaseException] | tuple[type[BaseException], ...] = Exception,
    cache: bool | None = None,
    cache_key: CacheKey | None = None,
    type: str | None = None,
    runtime: str | None = None,
) -> Callable[[Callable[P, R]], Checkpoint[P, R]]: ...


def checkpoint(
    fn: Callable[P, R] | None = None,
    /,
    *,
    name: str | None = None,
    retries: int = 0,
    retry_delay: float = 1.0,
    backoff: float = 2.0,
    retry_on: type[BaseException] | tuple[type[BaseException], ...] = Exception,
    cache: bool | None = None,
    cache_key: CacheKey | None = None,
    type: str | None = None,
    runtime: str | None = None,
) -> Checkpoint[P, R] | Callable[[Callable[P, R]], Checkpoint[P, R]]:
    """Make a function a durable step of a flow.

    Inside a flow, each call gets a deterministic id (``name``, ``name:2``...), its output is stored
    as an artifact, and a resumed execution returns the stored output without running it again.
    A failing call is retried ``retries`` times, waiting ``retry_delay * backoff**(n-1)`` seconds
    (with jitter) before retry ``n``, for exceptions matching ``retry_on``. Outside a flow the
    function runs plainly.

    ``cache=True`` reuses the output of an earlier call, in any execution of the flow, with the
    same code and inputs (or the same ``cache_key``: a string, or a function of the arguments
    returning one) instead of running it; ``cache=None`` follows the flow's ``cache=``. See
    :mod:`kitaru.cache`; ``kitaru cache clear`` empties the cache.

    ``type`` labels the call and its output artifact (``"llm_call"``, ``"tool_call"``,
    ``"memory_call"``, or any label): ``kitaru executions get`` and the client's
    ``CheckpointCall.type`` show it, and the artifact carries it as a tag. ``runtime="isolated"``
    runs each call in a process of its own (on a Kubernetes stack, a Job of its own) that commits
    the output itself, so a crash of either side never runs a committed call again;
    ``"inline"`` (the default) runs it in the flow's process.
    """
    retry_types = retry_on if isinstance(retry_on, tuple) else (retry_on,)

    def wrap(f: Callable[P, R]) -> Checkpoint[P, R]:
        return Checkpoint(
            f,
            name=name,
            retries=retries,
            retry_delay=retry_delay,
            backoff=backoff,
            retry_on=retry_types,
            cache=cache,
            cache_key=cache_key,
            type=type,
            runtime=runtime,
        )

    return wrap(fn) if fn is not None else wrap
