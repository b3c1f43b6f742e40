"""Replay: a new execution that reuses everything its original did before a chosen boundary.

The new execution's journal is seeded, in the same transaction that creates it, with the
original's records for every call made before the boundary (checkpoint outputs, wait answers,
flow-scope saves), pointing at the original's artifacts: nothing is copied, and no step above the
boundary runs again. From the boundary on, the flow runs for real. Because seeded records keep
their call positions and function names, a flow whose code changed above the boundary fails with
:class:`~kitaru.errors.KitaruDivergenceError` instead of mixing old and new results.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from kitaru.errors import KitaruStateError, KitaruUsageError
from kitaru.store import ArtifactRecord, ExecutionRecord, JournalRecord

from .runtime import Runtime

if TYPE_CHECKING:
    from .flow import Flow

__all__ = ["ReplayPlan", "merge_flow_inputs", "plan_replay"]

_CALL_KINDS = ("checkpoint_completed", "checkpoint_failed", "wait_opened", "save")


@dataclass(slots=True)
class _Call:
    call_id: str
    seq: int
    kind: str
    """``checkpoint``, ``wait`` or ``save``."""
    name: str


@dataclass(slots=True)
class ReplayPlan:
    """What a replay reuses and what it changes, decided before anything runs."""

    boundary: str
    seed: list[JournalRecord]
    new_artifacts: list[ArtifactRecord]
    reused_inputs: list[ArtifactRecord]
    arguments: dict[str, Any]


def _calls(journal: list[JournalRecord]) -> dict[str, _Call]:
    calls: dict[str, _Call] = {}
    for r in journal:
        if r.kind in _CALL_KINDS and r.call_id and r.seq is not None and r.call_id not in calls:
            kind = "wait" if r.kind == "wait_opened" else "save" if r.kind == "save" else "checkpoint"
            calls[r.call_id] = _Call(r.call_id, r.seq, kind, r.name or "")
    return calls


def merge_flow_inputs(
    args: Mapping[str, Any] | None, flow_inputs: Mapping[str, Any]
) -> dict[str, Any] | None:
    """Flow inputs a replay changes, given as ``args={...}``, as keyword arguments (the original
    Kitaru's ``replay(exec_id, from_=..., topic="new")``), or both; None when there are none."""
    twice = sorted(set(args or {}) & set(flow_inputs))
    if twice:
        raise KitaruUsageError(
            f"replay: flow input {', '.join(map(repr, twice))} given both in args= and as a keyword "
            "argument; give each once."
        )
    merged = {**(args or {}), **flow_inputs}
    return merged or None


def _override_target(key: str, calls: dict[str, _Call], exec_id: str) -> str:
    """The call id an override key names: a call id (``research``, ``research:2``, a wait's
    name), or, as the original Kitaru wrote them, ``checkpoint.<name or call id>`` (a name
    called more than once must be given as a call id) or ``wait.<name>``."""
    if key in calls:
        return key
    kind, dot, selector = key.partition(".")
    if not dot or kind not in ("checkpoint", "wait") or not selector.strip():
        return key  # not found: plan_replay says which calls there are
    selector = selector.strip()
    wanted = "checkpoint" if kind == "checkpoint" else "wait"
    if wanted == "checkpoint":
        # As in the original: a checkpoint's name selects its call only when it was called once
        # (here the first call's id is the bare name too, but a name called twice is ambiguous).
        named = sorted(
            (c for c in calls.values() if c.kind == "checkpoint" and _base(c.call_id) == selector),
            key=lambda c: c.seq,
        )
        if len(named) == 1:
            return named[0].call_id
        if len(named) > 1:
            raise KitaruUsageError(
                f"--override {key}: checkpoint {selector!r} was called {len(named)} times in "
                f"execution {exec_id} ({', '.join(c.call_id for c in named)}); name one call: "
                f"checkpoint.{named[1].call_id}."
            )
    found = calls.get(selector)
    if found is not None and found.kind == wanted:
        return selector
    known = [c.call_id for c in sorted(calls.values(), key=lambda c: c.seq) if c.kind == wanted]
    raise KitaruUsageError(
        f"--override {key}: execution {exec_id} has no {wanted} {selector!r}; its {wanted}s: "
        f"{', '.join(known[:30]) or 'none'}."
    )


def _base(call_id: str) -> str:
    """A call id without its ``:N`` call number: the checkpoint's name."""
    name, colon, number = call_id.rpartition(":")
    return name if colon and number.isdigit() else call_id


def _checkpoint_return_type(flow: Flow[Any, Any], qualname: str) -> Any:
    """The return annotation of the checkpoint ``qualname`` in the flow's module, if findable."""
    import sys
    import typing

    from .checkpoint import Checkpoint

    module = sys.modules.get(flow.fn.__module__)
    for obj in vars(module).values() if module else ():
        if isinstance(obj, Checkpoint) and obj.qualname == qualname:
            try:
                return typing.get_type_hints(obj.fn).get("return", Any)
            except Exception:
                return Any
    return Any


def plan_replay(
    runtime: Runtime,
    flow: Flow[Any, Any],
    original: ExecutionRecord,
    from_: str,
    overrides: Mapping[str, Any] | None = None,
    args: Mapping[str, Any] | None = None,
) -> ReplayPlan:
    """Check a replay request against the original's journal; every error comes before any write."""
    from .waits import _LIVE_SCHEMAS, check_answer

    if original.status == "running":
        raise KitaruStateError(
            f"execution {original.id} is running; replay it once it has stopped (or cancel it "
            f"with `kitaru executions cancel {original.id}`)."
        )
    journal = runtime.state.read_journal(original.id)
    calls = _calls(journal)
    boundary = calls.get(from_)
    if boundary is None or boundary.kind == "save":
        known = [c.call_id for c in sorted(calls.values(), key=lambda c: c.seq) if c.kind != "save"]
        shown = ", ".join(known[:30]) + (" ..." if len(known) > 30 else "")
        raise KitaruUsageError(
            f"execution {original.id} has no checkpoint or wait {from_!r} to replay from. "
            f"Boundaries it has, in call order: {shown or 'none'}. A checkpoint's later calls are "
            "named like 'name:2'."
        )
    before = {c.call_id for c in calls.values() if c.seq < boundary.seq}

    new_artifacts: list[ArtifactRecord] = []
    replaced: dict[str, ArtifactRecord] = {}
    stored = {a.id: a for a in runtime.state.list_artifacts(original.id)}
    answered = {r.call_id: r for r in journal if r.kind == "wait_answered"}
    completed = {r.call_id: r for r in journal if r.kind == "checkpoint_completed"}
    opened = {r.call_id: r for r in journal if r.kind == "wait_opened"}
    targets: dict[str, Any] = {}
    for key, value in (overrides or {}).items():
        target = _override_target(key, calls, original.id)
        if target in targets:
            raise KitaruUsageError(f"--override {key}: call {target!r} is overridden twice; give it once.")
        targets[target] = value
    for name, value in targets.items():
        call = calls.get(name)
        if call is None or call.kind == "save":
            raise KitaruUsageError(
                f"--override {name}: execution {original.id} has no checkpoint or wait called "
                f"{name!r}. Overrides name a call id from `kitaru executions get {original.id}`, "
                "or checkpoint.<name>."
            )
        if name not in before:
            raise KitaruUsageError(
                f"--override {name}: {name!r} is not before --from {from_!r}, so it runs again "
                "and an override would be ignored. Replay from a later call, or drop the override."
            )
        source = completed.get(name) if call.kind == "checkpoint" else answered.get(name)
        if source is None:
            raise KitaruUsageError(
                f"--override {name}: {name!r} never "
                f"{'completed' if call.kind == 'checkpoint' else 'got an answer'} in execution "
                f"{original.id}, so there is no output to replace."
            )
        if call.kind == "checkpoint":
            value = _validated(_checkpoint_return_type(flow, call.name), value, name, call.name)
        else:
            import sys

            # The same check as an answer given with `kitaru executions input`; the override is
            # stored as its JSON value and the replayed flow validates it again in wait().
            value = check_answer(
                opened[name].data or {},
                value,
                where=f"the override of wait {name!r}",
                fix="give a valid answer.",
                live_schema=_LIVE_SCHEMAS.get((original.id, name)),
                flow_module=sys.modules.get(flow.fn.__module__),
            )
        previous = stored.get(source.artifact_id or "") or runtime.state.get_artifact(
            source.artifact_id or ""
        )
        assert previous is not None
        artifact = runtime.make_artifact(
            "",  # set below, once the new execution id exists
            name=previous.name,
            version=previous.version,
            type=previous.type,
            value=value,
            call_id=previous.call_id,
        )
        new_artifacts.append(artifact)
        replaced[name] = artifact

    # Inputs: the original's, except those --args replaces.
    original_inputs = {a.name: a for a in runtime.state.list_artifacts(original.id, type="input")}
    unknown = sorted(set(args or {}) - set(flow.signature.parameters))
    if unknown:
        raise KitaruUsageError(
            f"--args: flow {flow.name!r} has no parameter {', '.join(map(repr, unknown))}; its "
            f"parameters are {', '.join(flow.signature.parameters) or 'none'}."
        )
    arguments = {name: runtime.load_artifact(a) for name, a in original_inputs.items()}
    arguments.update(args or {})
    reused_inputs = [a for name, a in original_inputs.items() if name not in (args or {})]

    seed: list[JournalRecord] = []
    kept_checkpoints = {c for c in before if calls[c].kind == "checkpoint"}
    for r in journal:
        owner_call = (r.call_id or "").split("/", 1)[0]
        keep = False
        if r.kind in ("checkpoint_completed", "wait_opened", "save") and r.call_id in before:
            keep = True
        elif r.kind in ("wait_answered", "wait_timed_out") and r.call_id in before:
            keep = True
        elif r.kind in ("log", "load", "output", "save") and owner_call in kept_checkpoints:
            keep = True  # what a reused checkpoint logged, loaded and saved belongs with it
        if not keep:
            continue
        copy = JournalRecord(
            kind=r.kind,
            call_id=r.call_id,
            seq=r.seq,
            name=r.name,
            attempt=r.attempt,
            artifact_id=r.artifact_id,
            # A log record's data is the user's metadata, shown as is by `executions get`.
            data=dict(r.data or {}) if r.kind == "log" else {**(r.data or {}), "replayed_from": original.id},
            ts=time.time(),
        )
        if r.call_id in replaced and r.kind in ("checkpoint_completed", "wait_answered"):
            copy.artifact_id = replaced[r.call_id].id
            copy.data = {**(copy.data or {}), "overridden": True}
        seed.append(copy)
    return ReplayPlan(from_, seed, new_artifacts, reused_inputs, arguments)


def _validated(expected: Any, value: Any, name: str, qualname: str) -> Any:
    """``value`` checked (and coerced, as pydantic does) against a checkpoint's return type."""
    if expected is Any:
        return value
    from pydantic import TypeAdapter, ValidationError

    try:
        return TypeAdapter(expected).validate_python(value)
    except ValidationError as exc:
        problems = "; ".join(e["msg"] for e in exc.errors())
        raise KitaruUsageError(
            f"--override {name}: {value!r} does not fit the return type of checkpoint {qualname} "
            f"({expected!r}): {problems}."
        ) from None
