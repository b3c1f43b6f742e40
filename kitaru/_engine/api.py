"""``save``, ``load``, ``log`` and ``current_execution_id``: artifacts and metadata from flow code."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from kitaru.errors import KitaruNotFoundError, KitaruUsageError
from kitaru.store import ArtifactRecord, JournalRecord

from .context import _current_call, require_flow, running_loop

__all__ = ["aload", "current_execution_id", "load", "log", "save"]


def current_execution_id() -> str:
    """The id of the execution whose flow or checkpoint is running in this context."""
    return require_flow("kitaru.current_execution_id()").exec_id


def save(name: str, value: Any, type: str = "save", *, tags: Sequence[str] = ()) -> None:
    """Store ``value`` as an artifact called ``name`` of the running execution.

    Inside a checkpoint it is committed together with the checkpoint's output (a failed attempt's
    saves are dropped); at flow scope it is committed at once, and skipped when a resumed
    execution passes the same save again. ``type`` is a free tag (``prompt``, ``context``...)
    to filter artifacts by. Versions count up per name within the execution. ``tags`` label
    the artifact across executions: ``kitaru artifacts list --tag T`` and
    ``KitaruClient().artifacts.list(tag=T)`` find every artifact carrying ``T``.
    """
    ctx = require_flow("kitaru.save()")
    if not name or "/" in name or ":" in name:
        raise KitaruUsageError(f"artifact name {name!r} must be non-empty, without '/' or ':'.")
    if isinstance(tags, str) or not all(isinstance(t, str) and t.strip() for t in tags):
        raise KitaruUsageError(
            f"kitaru.save({name!r}, tags=...) takes a list of non-empty strings, got {tags!r}."
        )
    labels = list(dict.fromkeys(tags))
    frame = _current_call.get()
    if frame is not None:
        n = frame.save_counts.get(name, 0) + 1
        frame.save_counts[name] = n
        call_id = f"{frame.call.call_id}/{name}" + (f":{n}" if n > 1 else "")
        artifact = ctx.make_artifact(name=name, version=n, type=type, value=value, call_id=frame.call.call_id)
        artifact.tags = labels
        frame.artifacts.append(artifact)
        frame.records.append(
            JournalRecord(kind="save", call_id=call_id, name=name, artifact_id=artifact.id, ts=time.time())
        )
        return
    call = ctx.begin_call(f"save.{name}", "kitaru.save")
    if call.call_id in ctx.done_saves:
        return
    version = int(call.call_id.rpartition(":")[2]) if ":" in call.call_id else 1
    artifact = ctx.make_artifact(name=name, version=version, type=type, value=value, call_id=None)
    artifact.tags = labels
    ctx.commit(
        [
            JournalRecord(
                kind="save",
                call_id=call.call_id,
                seq=call.seq,
                name="kitaru.save",
                artifact_id=artifact.id,
                ts=time.time(),
            )
        ],
        [artifact],
    )


def load(exec_id: str, name: str, version: int | None = None) -> Any:
    """Load artifact ``name`` (latest version, or ``version``) of another execution.

    Called inside a checkpoint, the artifact is recorded as one of the checkpoint's inputs, so
    lineage crosses executions. In async code use ``await kitaru.aload(...)``, which does not
    block the event loop.
    """
    ctx = require_flow("kitaru.load()")
    astate = ctx.runtime.astate
    if not ctx.inline and running_loop() is not None:
        # Sync code on the loop the flow runs on cannot wait for that loop's store reads.
        raise KitaruUsageError(
            "kitaru.load() was called from async code on a state store that needs the event loop "
            "(e.g. PostgreSQL); use `await kitaru.aload(...)` there."
        )
    found = ctx.state_call(astate.list_artifacts, exec_id, name=name)
    artifact = _chosen(found, exec_id, name, version)
    if artifact is None:
        known = ctx.state_call(astate.get_execution, exec_id) is not None
        names = ctx.state_call(astate.list_artifacts, exec_id) if known else []
        raise _not_found(exec_id, name, version, known, names)
    _record_load(exec_id, name, artifact)
    return ctx.load_artifact(artifact)


async def aload(exec_id: str, name: str, version: int | None = None) -> Any:
    """:func:`load` for async code: the store reads are awaited on the running loop."""
    ctx = require_flow("kitaru.aload()")
    astate = ctx.runtime.astate
    found = await astate.list_artifacts(exec_id, name=name)
    artifact = _chosen(found, exec_id, name, version)
    if artifact is None:
        known = await astate.get_execution(exec_id) is not None
        names = await astate.list_artifacts(exec_id) if known else []
        raise _not_found(exec_id, name, version, known, names)
    _record_load(exec_id, name, artifact)
    return await ctx.runtime.aload_artifact(artifact)


def _chosen(
    found: list[ArtifactRecord], exec_id: str, name: str, version: int | None
) -> ArtifactRecord | None:
    if version is not None:
        found = [a for a in found if a.version == version]
    return max(found, key=lambda a: (a.version, a.created_at)) if found else None


def _not_found(
    exec_id: str, name: str, version: int | None, known: bool, artifacts: list[ArtifactRecord]
) -> KitaruNotFoundError:
    if not known:
        return KitaruNotFoundError(
            f"kitaru.load(): no execution {exec_id!r}. List them with `kitaru executions list`."
        )
    names = sorted({a.name for a in artifacts})
    return KitaruNotFoundError(
        f"kitaru.load(): execution {exec_id} has no artifact {name!r}"
        + (f" version {version}" if version is not None else "")
        + f"; it has: {', '.join(names) or 'none'}."
    )


def _record_load(exec_id: str, name: str, artifact: ArtifactRecord) -> None:
    """Inside a checkpoint, the loaded artifact is one of its inputs (lineage across executions)."""
    frame = _current_call.get()
    if frame is not None:
        frame.records.append(
            JournalRecord(
                kind="load",
                call_id=frame.call.call_id,
                artifact_id=artifact.id,
                data={"exec_id": exec_id, "name": name},
                ts=time.time(),
            )
        )


def log(**metadata: Any) -> None:
    """Attach metadata to the running checkpoint, or to the execution at flow scope.

    Values must be JSON-serializable. ``kitaru executions get`` shows them. Calls add up: a key
    logged again with a dict merges into the dict logged before (``log(cost={"usd": 0.1})`` then
    ``log(cost={"tokens": 42})`` shows ``cost={"usd": 0.1, "tokens": 42}``, nested dicts merged
    key by key); any other value replaces the one before.
    """
    ctx = require_flow("kitaru.log()")
    import json

    try:
        json.dumps(metadata)
    except (TypeError, ValueError) as exc:
        raise KitaruUsageError(f"kitaru.log() values must be JSON-serializable: {exc}") from None
    from kitaru.secrets import redact_json

    metadata = redact_json(metadata)  # a secret's value never reaches the journal
    frame = _current_call.get()
    if frame is not None:
        frame.records.append(
            JournalRecord(kind="log", call_id=frame.call.call_id, data=metadata, ts=time.time())
        )
        return
    if ctx.replaying:
        return  # this metadata was logged when the execution first passed here
    ctx.add_pending(JournalRecord(kind="log", data=metadata, ts=time.time()), metadata=metadata)
