"""Attempts a crash cut short: noted in flight by the heartbeat, journaled by the next runner.

A checkpoint attempt writes nothing until it ends (one commit per checkpoint), so a runner killed
mid-attempt leaves no record of it, and the resumed run would show ``attempts: 1`` for a body that
ran twice. The runtime's heartbeat already writes to the store every few seconds; it also notes
the attempts in flight in the execution's metadata (:data:`~kitaru._engine.runtime.INFLIGHT`).
The runner that takes the execution over journals each noted attempt that never ended as
``checkpoint_interrupted`` before running the body again.

The limit: an attempt that started and was killed between two beats was never noted, and still
leaves no trace.
"""

from __future__ import annotations

import time

from kitaru.store import ExecutionRecord, JournalRecord

from .runtime import INFLIGHT, Runtime

__all__ = ["note_interrupted"]

_ENDED = frozenset({"checkpoint_completed", "checkpoint_failed", "checkpoint_interrupted"})


async def note_interrupted(
    runtime: Runtime, execution: ExecutionRecord, journal: list[JournalRecord] | None
) -> list[JournalRecord] | None:
    """Journal the attempts ``execution``'s previous runner had in flight and never finished;
    returns the journal with them (or ``journal`` as given when there are none)."""
    inflight = execution.metadata.get(INFLIGHT)
    if not inflight:
        return journal
    if journal is None:
        journal = await runtime.astate.read_journal(execution.id)
    # An attempt is known by its call and start time: attempt numbers restart with each runner.
    ended = {(r.call_id, (r.data or {}).get("started_at")) for r in journal if r.kind in _ENDED}
    now = time.time()
    records = [
        JournalRecord(
            kind="checkpoint_interrupted",
            call_id=call_id,
            name=note.get("name"),
            attempt=note.get("attempt"),
            data={"started_at": note.get("started_at")},
            ts=now,
        )
        for call_id, note in inflight.items()
        if (call_id, note.get("started_at")) not in ended
    ]
    if not records:
        return journal
    await runtime.astate.commit(execution.id, records, owner=runtime.owner, metadata={INFLIGHT: {}})
    execution.metadata = {**execution.metadata, INFLIGHT: {}}
    return [*journal, *records]
