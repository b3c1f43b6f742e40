"""Live progress and custom events from inside a checkpoint: ``kitaru.progress(...)`` and
``kitaru.events.publish(...)``.

An event is a journal record of its own (kind ``event``) under the running checkpoint's call, and
it is committed when it is published, not with the checkpoint's outcome: ``kitaru executions get
--watch`` and ``KitaruClient().executions.events(...)`` see it while the checkpoint still runs, and
it stays in the journal afterwards (a retried or failed attempt's events stay too: they say what
happened). Publishing is best effort, as in Kitaru 0.18: a store that cannot take the event is
logged and the checkpoint runs on (``flush=True`` raises instead). Misuse (outside a checkpoint,
a reserved kind, a payload that is not JSON) raises at once.

Each event carries ``kind``, ``message``, ``data`` and kitaru's own fields under ``kitaru``
(execution, checkpoint id and name), a ``correlation_id`` shared by the events of one checkpoint
call and an ``index`` counting up within it. Secrets' values are redacted before they are stored.

Kitaru 0.18's automatic events of each checkpoint attempt, ``kitaru.checkpoint.started`` before
its own events and ``kitaru.checkpoint.returned`` (its function returned) or
``kitaru.checkpoint.failed`` (it raised; the exception's type, never its text) after them, are not
written: a watcher derives them from the journal records every attempt already has (its events,
its outcome), so the checkpoint hot path pays nothing for them. A call reused from the cache or by
a replay did not run, and has none (as in 0.18).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from weakref import WeakKeyDictionary

from kitaru.errors import KitaruError, KitaruNotInFlowError, KitaruStoreError, KitaruUsageError

if TYPE_CHECKING:
    import asyncio
    from datetime import datetime

    from kitaru._engine.context import ExecutionContext
    from kitaru.store import JournalRecord

__all__ = [
    "CHECKPOINT_COMPLETED_KIND",
    "CHECKPOINT_FAILED_KIND",
    "CHECKPOINT_PROGRESS_KIND",
    "CHECKPOINT_RETURNED_KIND",
    "CHECKPOINT_STARTED_KIND",
    "RESERVED_KINDS",
    "ExecutionEvent",
    "flush",
    "progress",
    "publish",
    "watch",
]

logger = logging.getLogger(__name__)

#: The kind ``kitaru.progress()`` publishes.
CHECKPOINT_PROGRESS_KIND = "kitaru.checkpoint.progress"
#: A checkpoint attempt began (derived from the journal, see the module's docstring).
CHECKPOINT_STARTED_KIND = "kitaru.checkpoint.started"
#: A checkpoint attempt's function returned (its output is stored with the same record).
CHECKPOINT_RETURNED_KIND = "kitaru.checkpoint.returned"
#: The name earlier 0.x releases gave the returned event.
CHECKPOINT_COMPLETED_KIND = CHECKPOINT_RETURNED_KIND
#: A checkpoint attempt's function raised.
CHECKPOINT_FAILED_KIND = "kitaru.checkpoint.failed"
#: What a failed event says instead of the exception's text (which may hold a secret).
FAILED_MESSAGE = "The checkpoint function raised an exception."
#: Names a stream of events uses for its own control messages; not for events.
RESERVED_KINDS = frozenset({"cursor", "end", "gap", "error", "system"})
#: The journal record kind events are stored as.
RECORD_KIND = "event"

# The next index per correlation group, per running execution (weak: they go with its context),
# and the attempt that last published in each group.
_counters: WeakKeyDictionary[ExecutionContext, dict[str, int]] = WeakKeyDictionary()
_attempts: WeakKeyDictionary[ExecutionContext, dict[str, int]] = WeakKeyDictionary()
# Events published from async code on a store that needs the event loop: queued, and committed in
# order by one task per execution (concurrent group-commit flushes could land out of order).
_queues: WeakKeyDictionary[ExecutionContext, list[JournalRecord]] = WeakKeyDictionary()
_writers: WeakKeyDictionary[ExecutionContext, asyncio.Task[None]] = WeakKeyDictionary()


@dataclass(frozen=True, slots=True)
class ExecutionEvent:
    """One published event, as a watcher sees it. ``cursor`` is its position in the execution's
    journal: pass it back as ``since=`` to see only later events."""

    exec_id: str
    kind: str
    payload: dict[str, Any]
    correlation_id: str
    index: int
    cursor: str
    checkpoint_id: str | None
    checkpoint_name: str | None
    ts: float
    step_name: str | None = field(default=None)

    @property
    def message(self) -> str | None:
        value = self.payload.get("message")
        return value if isinstance(value, str) else None

    @property
    def timestamp(self) -> datetime:
        """When it was published, as a UTC datetime (``ts`` is Unix time)."""
        from datetime import UTC, datetime

        return datetime.fromtimestamp(self.ts, tz=UTC)

    @property
    def percent(self) -> float | None:
        data = self.payload.get("data")
        value = data.get("percent") if isinstance(data, dict) else None
        return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "exec_id": self.exec_id,
            "kind": self.kind,
            "payload": self.payload,
            "correlation_id": self.correlation_id,
            "index": self.index,
            "cursor": self.cursor,
            "checkpoint_id": self.checkpoint_id,
            "checkpoint_name": self.checkpoint_name,
            "ts": self.ts,
        }


def progress(
    message: str,
    *,
    percent: float | None = None,
    correlation_id: str | None = None,
    flush: bool = False,
    stream_id: str | None = None,
    **fields: Any,
) -> None:
    """Say how the running checkpoint is getting on: ``kitaru.progress("Writing draft",
    percent=0.75, topic=topic)``.

    ``percent`` is a fraction from 0 to 1; it and any other keyword ``fields`` go under the
    event's ``data``. ``kitaru executions get --watch`` prints each one as it happens. See
    :func:`publish` for ``correlation_id`` (``stream_id`` is its older name) and ``flush``.
    """
    if not isinstance(message, str) or not message.strip():
        raise KitaruUsageError(f"kitaru.progress() takes a non-empty message, got {message!r}.")
    if percent is not None:
        if isinstance(percent, bool) or not isinstance(percent, int | float) or not 0 <= percent <= 1:
            raise KitaruUsageError(
                "kitaru.progress(percent=...) is a fraction from 0 to 1 (0.25 for a quarter), "
                f"got {percent!r}."
            )
        fields["percent"] = percent
    _publish(
        "kitaru.progress",
        CHECKPOINT_PROGRESS_KIND,
        {"message": message, **({"data": fields} if fields else {})},
        correlation_id=correlation_id or stream_id,
        index=None,
        flush=flush,
    )


def publish(
    kind: str,
    payload: Mapping[str, Any] | None = None,
    *,
    message: str | None = None,
    correlation_id: str | None = None,
    index: int | None = None,
    flush: bool = False,
    stream_id: str | None = None,
) -> None:
    """Publish an event of your own ``kind`` (``"training.batch.completed"``) from the running
    checkpoint, with ``payload`` (JSON values) under its ``data`` and an optional ``message``.

    ``correlation_id`` groups events (default: one group per checkpoint call; ``stream_id`` is
    its older name); ``index`` orders them within the group (default: the next number, from 0).
    The event is committed before this returns (from an async checkpoint: at its next ``await``).
    A store failure is logged and the checkpoint runs on; with ``flush=True`` it is raised, and
    queued writes are waited for as :func:`flush` does.
    """
    if payload is not None and not isinstance(payload, Mapping):
        raise KitaruUsageError(
            f"kitaru.events.publish() takes the payload as a mapping, got {type(payload).__qualname__}."
        )
    if not isinstance(kind, str) or not kind.strip():
        raise KitaruUsageError(f"kitaru.events.publish() takes a non-empty kind, got {kind!r}.")
    kind = kind.strip()
    if kind in RESERVED_KINDS:
        raise KitaruUsageError(
            f"event kind {kind!r} is reserved for the event stream itself "
            f"({', '.join(sorted(RESERVED_KINDS))}); name it after what happened, e.g. "
            "'training.batch.completed'."
        )
    if index is not None and (isinstance(index, bool) or not isinstance(index, int) or index < 0):
        raise KitaruUsageError(f"kitaru.events.publish(index=...) is a non-negative int, got {index!r}.")
    body: dict[str, Any] = {}
    if message is not None:
        body["message"] = str(message)
    if payload:
        body["data"] = dict(payload)
    group = correlation_id or stream_id
    _publish("kitaru.events.publish", kind, body, correlation_id=group, index=index, flush=flush)


def flush(timeout: float = 2.0) -> bool:
    """Wait up to ``timeout`` seconds for this execution's queued writes (events published by
    async code ride with the next group commit) to land. True when nothing is left queued; False
    when they did not land in time, their commit failed, or they can only land once the caller
    (sync code on the running event loop) gives the loop back. Outside a flow there is nothing
    to wait for: True."""
    return _drain(timeout)


def _drain(timeout: float) -> bool:
    from kitaru._engine.context import current_execution, running_loop

    ctx = current_execution()
    if ctx is None:
        return True
    queued = bool(ctx._batch_records or ctx._batch_future is not None or ctx._flushes)
    if running_loop() is not None:
        return not queued  # this thread is the loop: waiting here would never end
    if not queued:
        return True
    import anyio
    import anyio.from_thread

    async def drain() -> bool:
        with anyio.move_on_after(timeout):
            await ctx.flush()
            return True
        return False

    try:
        return bool(anyio.from_thread.run(drain, token=ctx.token))
    except Exception as exc:
        logger.warning("kitaru.events.flush(): queued writes of execution %s failed: %s", ctx.exec_id, exc)
        return False


def _publish(
    api: str,
    kind: str,
    body: dict[str, Any],
    *,
    correlation_id: str | None,
    index: int | None,
    flush: bool,
) -> None:
    from kitaru._engine.context import current_call
    from kitaru.secrets import redact_json
    from kitaru.store import JournalRecord

    frame = current_call()
    if frame is None:
        raise KitaruNotInFlowError(
            f"{api}() reports on a running checkpoint, and none is running here. Call it inside a "
            "@checkpoint function of a running flow (at flow scope, use kitaru.log() for metadata)."
        )
    call_id = frame.call.call_id
    ctx = frame.ctx
    name = _checkpoint_name(call_id)
    group = correlation_id or f"kitaru.checkpoint:{name}:{ctx.exec_id}:{call_id}"
    counters = _counters.setdefault(ctx, {})
    attempts = _attempts.setdefault(ctx, {})
    if attempts.get(group) != frame.attempt:
        # Leave room for the derived events: each attempt before this one has its `started`
        # and its outcome, and this one's `started` comes first (index 0 of attempt 1).
        before = attempts.get(group)
        counters[group] = counters[group] + 2 if before is not None else 2 * frame.attempt - 1
        attempts[group] = frame.attempt
    if index is None:
        index = counters[group]
    counters[group] = max(counters[group], index + 1)
    event = {
        "kind": kind,
        "correlation_id": group,
        "index": index,
        "payload": {
            **body,
            "kitaru": {
                "execution_id": ctx.exec_id,
                "checkpoint_id": call_id,
                "checkpoint_name": name,
                "checkpoint_type": frame.checkpoint_type,
            },
        },
    }
    try:
        json.dumps(event)
    except (TypeError, ValueError) as exc:
        raise KitaruUsageError(f"{api}() values must be JSON-serializable: {exc}") from None
    record = JournalRecord(kind=RECORD_KIND, call_id=call_id, data=redact_json(event), ts=time.time())
    from kitaru._engine.context import running_loop

    if running_loop() is not None and not ctx.inline:
        _queue_on_loop(ctx, record)
        if flush and not _drain(2.0):
            raise KitaruStoreError(
                f"{api}(): the event of checkpoint {call_id!r} is queued; it lands when this async "
                "code next awaits (call it without flush=True here)."
            )
        return
    try:
        ctx.commit([record], unwind=False)
        if flush and not _drain(2.0):
            raise KitaruStoreError(
                f"{api}(): the event of checkpoint {call_id!r} is still queued; it lands when this "
                "async code next awaits."
            )
    except KitaruError as exc:
        if flush:
            raise
        logger.warning("%s(): event %r of execution %s was not recorded: %s", api, kind, ctx.exec_id, exc)


def _queue_on_loop(ctx: ExecutionContext, record: JournalRecord) -> None:
    """Queue ``record`` for this execution's event writer (started when there is none). The
    writer is one of the execution's pending flushes, so its next commit (the checkpoint's outcome)
    and ``kitaru.events.flush()`` wait for the events published before it."""
    import asyncio

    _queues.setdefault(ctx, []).append(record)
    if ctx in _writers:
        return
    task = asyncio.ensure_future(_write_events(ctx))
    _writers[ctx] = ctx._event_writer = task
    ctx._flushes.add(task)
    task.add_done_callback(ctx._flushes.discard)


async def _write_events(ctx: ExecutionContext) -> None:
    try:
        while queue := _queues.get(ctx):
            batch = list(queue)
            queue.clear()
            try:
                await ctx.runtime.astate.commit(ctx.exec_id, batch, [], owner=ctx.runtime.owner)
            except Exception as exc:  # best effort, as publishing from sync code
                logger.warning(
                    "%d event(s) of execution %s were not recorded: %s", len(batch), ctx.exec_id, exc
                )
    finally:
        _writers.pop(ctx, None)
        ctx._event_writer = None


def _checkpoint_name(call_id: str) -> str:
    base, _, n = call_id.rpartition(":")
    return base if base and n.isdigit() else call_id


def _event(exec_id: str, r: JournalRecord) -> ExecutionEvent | None:
    data = r.data or {}
    payload = data.get("payload")
    if r.kind != RECORD_KIND or not isinstance(payload, dict):
        return None
    return ExecutionEvent(
        exec_id=exec_id,
        kind=str(data.get("kind", "")),
        payload=payload,
        correlation_id=str(data.get("correlation_id", "")),
        index=int(data.get("index", 0)),
        cursor=str(r.id or 0),
        checkpoint_id=r.call_id,
        checkpoint_name=_checkpoint_name(r.call_id) if r.call_id else None,
        step_name=r.call_id,
        ts=r.ts,
    )


_OUTCOME_KINDS = frozenset({"checkpoint_completed", "checkpoint_failed", "checkpoint_interrupted"})


def _lifecycle(
    exec_id: str, call_id: str, kind: str, index: int, cursor: int, ts: float, data: dict[str, Any]
) -> ExecutionEvent:
    """One derived ``kitaru.checkpoint.*`` event of a checkpoint attempt."""
    name = _checkpoint_name(call_id)
    status = kind.rpartition(".")[2]
    payload: dict[str, Any] = {
        "status": status,
        "kitaru": {
            "execution_id": exec_id,
            "checkpoint_id": call_id,
            "checkpoint_name": name,
            "checkpoint_type": data.get("type"),
        },
    }
    if status == "failed":
        error = str(data.get("error") or "")
        payload["error_type"] = error.partition(":")[0].rpartition(".")[2] or None
        payload["message"] = FAILED_MESSAGE
    return ExecutionEvent(
        exec_id=exec_id,
        kind=kind,
        payload=payload,
        correlation_id=f"kitaru.checkpoint:{name}:{exec_id}:{call_id}",
        index=index,
        cursor=str(cursor),
        checkpoint_id=call_id,
        checkpoint_name=name,
        step_name=call_id,
        ts=ts,
    )


def recorded(
    journal: list[JournalRecord], exec_id: str, after: int = 0, *, automatic: bool = True
) -> list[ExecutionEvent]:
    """The events in ``journal`` after the record id ``after``, in order; with ``automatic``,
    each checkpoint attempt's derived ``started`` / ``returned`` / ``failed`` events among them.

    A derived ``started`` goes just before the attempt's first event (or its outcome, when it
    published none); its cursor is the record before that, so a watcher resuming from it sees it
    again rather than miss what follows. Its index is the one the attempt's events left free."""
    out: list[ExecutionEvent] = []
    open_attempts: set[str] = set()  # calls whose running attempt's `started` was given
    next_index: dict[str, int] = {}  # per call: the index after the last event of its group
    previous = 0
    for r in journal:
        rid = r.id or 0
        call_id = r.call_id
        event = _event(exec_id, r)
        if automatic and call_id and event is not None and call_id not in open_attempts:
            default_group = (
                event.correlation_id == f"kitaru.checkpoint:{event.checkpoint_name}:{exec_id}:{call_id}"
            )
            index = max(event.index - 1, 0) if default_group else next_index.get(call_id, 0)
            open_attempts.add(call_id)
            next_index[call_id] = index + 1
            if rid > after:
                meta = event.payload.get("kitaru")
                kind_of = {"type": meta.get("checkpoint_type")} if isinstance(meta, dict) else {}
                out.append(
                    _lifecycle(exec_id, call_id, CHECKPOINT_STARTED_KIND, index, previous, event.ts, kind_of)
                )
        if event is not None:
            if call_id and event.correlation_id.endswith(f":{exec_id}:{call_id}"):
                next_index[call_id] = max(next_index.get(call_id, 0), event.index + 1)
            if rid > after:
                out.append(event)
        elif automatic and call_id and r.kind in _OUTCOME_KINDS:
            data = r.data or {}
            ran = not (data.get("cached_from") or data.get("replayed_from"))
            if ran and r.kind != "checkpoint_interrupted":
                if call_id not in open_attempts:
                    index = next_index.get(call_id, 0)
                    next_index[call_id] = index + 1
                    started_at = data.get("started_at")
                    if rid > after:
                        ts = float(started_at) if isinstance(started_at, int | float) else r.ts
                        out.append(
                            _lifecycle(exec_id, call_id, CHECKPOINT_STARTED_KIND, index, previous, ts, data)
                        )
                kind = (
                    CHECKPOINT_RETURNED_KIND if r.kind == "checkpoint_completed" else CHECKPOINT_FAILED_KIND
                )
                index = next_index.get(call_id, 0)
                next_index[call_id] = index + 1
                if rid > after:
                    out.append(_lifecycle(exec_id, call_id, kind, index, rid, r.ts, data))
            open_attempts.discard(call_id)
        previous = rid
    return out


def watch(
    read: Any,
    exec_id: str,
    *,
    kinds: list[str] | None = None,
    checkpoint: str | None = None,
    correlation_ids: list[str] | None = None,
    since: str | None = None,
    reconnect: bool = True,
    interval: float = 0.5,
) -> Iterator[ExecutionEvent]:
    """Events of ``exec_id`` as they are published, until the execution stops running (it
    completes, fails, is cancelled, or waits). ``read(exec_id)`` returns ``(status, journal)``.

    Filters: ``kinds``, ``checkpoint`` (a name keeps all its calls, ``name:2`` one call),
    ``correlation_ids``; ``since`` is a cursor from an earlier event. With ``reconnect`` a failed
    read (a store or server that does not answer for a moment) is tried again, up to ten times
    in a row; without it, the error is raised.
    """
    try:
        after = int(since) if since else 0
    except ValueError:
        raise KitaruUsageError(f"since={since!r} is not a cursor: pass an event's .cursor.") from None
    failures = 0
    while True:
        try:
            status, journal = read(exec_id)
        except KitaruStoreError:
            failures += 1
            if not reconnect or failures > 10:
                raise
            time.sleep(interval)
            continue
        failures = 0
        for event in recorded(journal, exec_id, after):
            after = int(event.cursor)
            if kinds is not None and event.kind not in kinds:
                continue
            if correlation_ids is not None and event.correlation_id not in correlation_ids:
                continue
            if checkpoint is not None and checkpoint not in (event.checkpoint_id, event.checkpoint_name):
                continue
            yield event
        if status != "running":
            return
        time.sleep(interval)
