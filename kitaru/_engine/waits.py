"""``wait()``: pause a flow for outside input without holding a process.

How a wait's schema travels (nothing stored is ever evaluated):

* When a wait opens, its ``wait_opened`` record carries the schema three ways: ``json_schema``
  (pydantic's JSON Schema, the contract), ``type`` (a structured reference: a JSON tree of the
  type's shape naming classes as ``module:qualname``, see :func:`type_ref`) and ``schema_text``
  (for people).
* Any process answering a wait (the CLI in another directory, a server without the user's code)
  checks the answer against the JSON Schema, strictly: ``"no"`` is not a bool, ``"3"`` and ``3.0``
  are not ints, ISO date strings are dates. Where the classes the reference names can be imported
  (or the wait was opened in this very process), the type is rebuilt from the tree and pydantic
  checks the answer too, so custom validators refuse a bad answer before it is recorded.
* The answer is stored as its JSON value. When the flow resumes, ``wait()`` validates that value
  with pydantic (strict, JSON mode) against the live schema object and returns the typed value.
  If the flow's own check refuses an answer the other checks let through (a validator the JSON
  Schema cannot express, answered where the class could not be imported), ``wait()`` raises
  :class:`KitaruWaitValidationError` naming the wait, the answer and the replay that gives a new
  one: nothing is coerced silently.
"""

from __future__ import annotations

import time
from typing import Any, NoReturn

from kitaru.config import env_float
from kitaru.errors import (
    KitaruUsageError,
    KitaruWaitAborted,
    KitaruWaitTimeoutError,
)
from kitaru.store import JournalRecord

from .context import ExecutionContext, _current_call, _Suspend, require_flow, running_loop
from .wait_schema import (
    MAX_ANSWER_DEPTH,
    _adapter,
    answer_json,
    build_type,
    check_answer,
    describe_schema,
    json_depth,
    type_ref,
    typed_answer,
)

# Names that lived here before the split stay importable from here.
from .wait_schema import _class_resolver as _class_resolver
from .wait_schema import _Unbuildable as _Unbuildable

__all__ = [
    "MAX_ANSWER_DEPTH",
    "WAIT_FN_NAME",
    "answer_json",
    "build_type",
    "check_answer",
    "describe_schema",
    "json_depth",
    "type_ref",
    "typed_answer",
    "wait",
    "wait_async",
]

#: The name every wait records in the journal (checkpoints record their function's qualname).
WAIT_FN_NAME = "kitaru.wait"

# Schemas of the waits opened in this process, by (execution, wait), so that an answer given here
# is checked with the very schema object (even one defined inside a function, which no other
# process can import).
_LIVE_SCHEMAS: dict[tuple[str, str], Any] = {}


def wait(
    name: str | None = None,
    question: str | None = None,
    schema: Any = None,
    timeout: float | None = None,
    metadata: dict[str, Any] | None = None,
    *,
    expires_in: float | None = None,
) -> Any:
    """Pause the flow until someone answers, then return the answer.

    If the journal already holds the answer (a resumed execution), it is returned at once.
    Otherwise the wait is recorded and the flow *holds*: it keeps its process for up to
    ``timeout`` seconds (default ``KITARU_WAIT_HOLD``, itself 0) in case an answer comes fast,
    and continues in the same run if one does. Then it suspends: the execution becomes
    ``waiting`` and the process is released. The hold is measured from when the wait opened, so
    a later resume without an answer suspends at once. ``timeout`` never expires the wait: it
    can be answered at any time after the hold, as in Kitaru 0.18 (whose default hold was 600 s;
    here holding compute is opt-in).

    Answer with ``kitaru executions input <id> --value JSON`` or
    ``KitaruClient().executions.input(id, value)``; the answer is checked against ``schema``'s
    JSON Schema (and with pydantic where its classes are importable), stored as JSON, and the flow
    resumes from the top, replaying its journal: here the answer is validated against ``schema``
    (any type pydantic can validate, strictly) and returned typed.

    ``expires_in`` gives the wait a deadline (seconds from when it opened, recorded with it):
    without an answer by then, ``wait()`` raises :class:`KitaruWaitTimeoutError` in the flow,
    fired by the hold, the server's timer or the next ``kitaru executions recover``.

    In an async flow, ``await kitaru.wait_async(...)`` is the same wait with the hold awaited.
    This sync form works there too, but cannot hold (sleeping would block the event loop): with
    it an async flow suspends at once, and an explicit ``timeout`` is refused.
    """
    pending = _Pending.open(name, question, schema, timeout, expires_in, metadata, "kitaru.wait()")
    on_loop = running_loop() is not None
    if on_loop and timeout:
        # Accepting the hold and not holding would be a silent change of what the call asks.
        raise KitaruUsageError(
            f"kitaru.wait(timeout={timeout!r}) was called from an async flow's body, where "
            "holding for an answer would block the event loop. Use "
            f"`await kitaru.wait_async(..., timeout={timeout!r})`, or drop timeout= to suspend "
            "at once."
        )
    if pending.done:
        return pending.value
    pending.ctx.commit(pending.new_records)
    # Only poll while holding for a fast answer: an answer that lands after this point is seen
    # by the store's suspend(), which then refuses to suspend and the runner replays at once.
    # Called from an async body (on the event loop), this sync form never holds: sleeping would
    # block the loop. `await kitaru.wait_async(...)` holds there with anyio.sleep.
    hold_until = pending.hold_until(timeout) if not on_loop else 0.0
    while True:
        now = time.time()
        if pending.expired(now):
            pending.ctx.commit(pending.timed_out(now))
            pending.raise_timed_out()
        if now >= hold_until:
            break
        time.sleep(pending.nap(now, hold_until))
        journal = pending.ctx.state_call(pending.ctx.runtime.astate.read_journal, pending.ctx.exec_id)
        if pending.found_answer(journal):
            return pending.answered()
    pending.suspend()


async def wait_async(
    name: str | None = None,
    question: str | None = None,
    schema: Any = None,
    timeout: float | None = None,  # noqa: ASYNC109 (0.18's name for the hold; not a cancel scope)
    metadata: dict[str, Any] | None = None,
    *,
    expires_in: float | None = None,
) -> Any:
    """:func:`wait` for async flows: ``await kitaru.wait_async(...)``.

    The same wait (same journal records, ids, schema checks, answers, ``timeout`` hold and
    ``expires_in`` deadline; an execution may switch between the two forms), but the hold is
    awaited: the journal is polled with the state store's async calls between ``anyio.sleep``s,
    so the event loop stays free for the app's other work while the flow holds for a fast answer.
    """
    import anyio

    pending = _Pending.open(name, question, schema, timeout, expires_in, metadata, "kitaru.wait_async()")
    if pending.done:
        return pending.value
    ctx = pending.ctx
    if pending.new_records:
        await ctx.acommit(pending.new_records)
    hold_until = pending.hold_until(timeout)
    while True:
        now = time.time()
        if pending.expired(now):
            await ctx.acommit(pending.timed_out(now))
            pending.raise_timed_out()
        if now >= hold_until:
            break
        await anyio.sleep(pending.nap(now, hold_until))
        if pending.found_answer(await ctx.runtime.astate.read_journal(ctx.exec_id)):
            if not ctx.inline:
                await ctx.preload_artifacts()  # the answer's record, read without blocking
            return pending.answered()
    pending.suspend()


#: How often a holding wait looks for its answer in the journal (seconds).
_POLL = 0.01


class _Pending:
    """One wait() call between its journal checks and its hold: what both forms share."""

    __slots__ = ("call_id", "ctx", "deadline", "done", "new_records", "opened_at", "schema", "value")

    def __init__(self, ctx: ExecutionContext, call_id: str, schema: Any) -> None:
        self.ctx = ctx
        self.call_id = call_id
        self.schema = schema
        self.done = False
        self.value: Any = None
        self.new_records: list[JournalRecord] = []
        self.deadline: float | None = None
        self.opened_at = time.time()

    @classmethod
    def open(
        cls,
        name: str | None,
        question: str | None,
        schema: Any,
        timeout: float | None,
        expires_in: float | None,
        metadata: dict[str, Any] | None,
        what: str,
    ) -> _Pending:
        """Check the call, give it its id, and return the answer the journal holds (``done``) or
        the ``wait_opened`` record still to commit (``new_records``; empty when it is recorded)."""
        ctx = require_flow(what)
        frame = _current_call.get()
        if frame is not None:
            raise KitaruUsageError(
                f"{what} was called inside checkpoint {frame.call.call_id!r}; a checkpoint "
                "cannot pause halfway. Call it from the flow body, between checkpoints."
            )
        if name is not None and (not name or ":" in name or "/" in name):
            raise KitaruUsageError(f"wait name {name!r} must be non-empty, without ':' or '/'.")
        if timeout is not None and not timeout >= 0:
            raise KitaruUsageError(
                f"wait timeout= (how long to hold for an answer) must be 0 or more seconds, got {timeout!r}."
            )
        if expires_in is not None and not expires_in > 0:
            raise KitaruUsageError(
                f"wait expires_in= (its deadline) must be positive seconds, got {expires_in!r}."
            )
        call = ctx.begin_call(name or "wait", WAIT_FN_NAME)
        pending = cls(ctx, call.call_id, schema)
        call_id = call.call_id
        if schema is not None:
            _LIVE_SCHEMAS[(ctx.exec_id, call_id)] = schema
        if call_id in ctx.answers:
            pending.done, pending.value = True, pending.answered()
            return pending
        if call_id in ctx.timed_out:
            raise KitaruWaitTimeoutError(
                f"wait {call_id!r} passed its deadline (expires_in=) before it was answered."
            )
        opened = ctx.opened.get(call_id)
        if opened is None:
            deadline = time.time() + expires_in if expires_in is not None else None
            data: dict[str, Any] = {
                "question": question,
                "schema_text": describe_schema(schema),
                "metadata": metadata or {},
                "deadline": deadline,
            }
            if schema is not None:
                try:
                    data["json_schema"] = _adapter(schema).json_schema()
                    data["type"] = type_ref(schema)
                except Exception as exc:
                    raise KitaruUsageError(
                        f"wait {call_id!r}: schema {schema!r} is not a type pydantic can validate "
                        f"({exc}). Use a type such as bool, str, a pydantic model or a dataclass."
                    ) from exc
            opened = JournalRecord(
                kind="wait_opened",
                call_id=call_id,
                seq=call.seq,
                name=WAIT_FN_NAME,
                data=data,
                ts=time.time(),
            )
            pending.new_records = [opened]
            ctx.opened[call_id] = opened
        pending.deadline = (opened.data or {}).get("deadline")
        pending.opened_at = opened.ts or time.time()  # a record without a time: from now
        return pending

    def answered(self) -> Any:
        """The recorded answer, typed by the live schema (and remembered as lineage); an aborted
        wait (its ``wait_answered`` record says ``aborted``) raises :class:`KitaruWaitAborted`."""
        ctx = self.ctx
        data = ctx.answers[self.call_id].data or {}
        if data.get("aborted"):
            reason = data.get("reason")
            raise KitaruWaitAborted(
                f"wait {self.call_id!r} of execution {ctx.exec_id} was aborted"
                + (f": {reason}" if reason else "")
                + f". Replay from it to ask again: `kitaru executions replay {ctx.exec_id} "
                f"--from {self.call_id}`.",
                wait=self.call_id,
                reason=reason,
            )
        artifact = ctx.stored_artifact(ctx.answers[self.call_id])
        value = typed_answer(
            self.schema,
            ctx.load_artifact(artifact),
            artifact.serializer,
            call_id=self.call_id,
            exec_id=ctx.exec_id,
        )
        ctx.remember_output(value, artifact)  # an answer passed on to a checkpoint is lineage
        return value

    def found_answer(self, journal: list[JournalRecord]) -> bool:
        for record in journal:
            if record.kind == "wait_answered" and record.call_id == self.call_id:
                self.ctx.answers[self.call_id] = record
                self.ctx._referenced.append(record.artifact_id or "")
                return True
        return False

    @staticmethod
    def hold_seconds(timeout: float | None) -> float:
        """How long a wait holds: its own ``timeout``, else ``KITARU_WAIT_HOLD`` (default 0)."""
        return timeout if timeout is not None else env_float("KITARU_WAIT_HOLD", 0.0)

    def hold_until(self, timeout: float | None) -> float:
        # Measured from the wait's opening (recorded in the journal), not from this call: a
        # replay that reaches the unanswered wait again (a resume with no answer, a recovery
        # after the holder died) holds only what is left, and suspends at once after the hold.
        return self.opened_at + self.hold_seconds(timeout)

    def nap(self, now: float, hold_until: float) -> float:
        # Never sleep past the deadline either: an expiry during the hold fires on time.
        until = hold_until if self.deadline is None else min(hold_until, self.deadline)
        return max(0.0, min(_POLL, until - now))

    def expired(self, now: float) -> bool:
        return self.deadline is not None and now >= self.deadline

    def timed_out(self, now: float) -> list[JournalRecord]:
        self.ctx.timed_out.add(self.call_id)
        return [JournalRecord(kind="wait_timed_out", call_id=self.call_id, ts=now)]

    def raise_timed_out(self) -> NoReturn:
        raise KitaruWaitTimeoutError(
            f"wait {self.call_id!r} of execution {self.ctx.exec_id} got no answer before its "
            "deadline (expires_in=)."
        )

    def suspend(self) -> NoReturn:
        self.ctx.suspended_on.append(self.call_id)
        raise _Suspend()
