"""The client's views: what ``KitaruClient`` returns about executions, checkpoints, waits, logs
and artifacts, and the fold of a journal into them. Split from :mod:`kitaru.client`, which
re-exports every name (import them from there)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

from kitaru.errors import KitaruUsageError
from kitaru.store import ArtifactRecord, JournalRecord

if TYPE_CHECKING:
    from kitaru.client import KitaruClient

__all__ = [
    "JSON_SERIALIZERS",
    "Artifact",
    "CheckpointCall",
    "Execution",
    "ExecutionStats",
    "FlowStats",
    "JSONValue",
    "LogEntry",
    "PendingWait",
    "Recovery",
    "Wait",
    "fold_journal",
]


#: A JSON value, as :func:`json.loads` gives it: what metadata, wait schemas and
#: :meth:`Artifact.as_json` hold.
JSONValue: TypeAlias = "bool | int | float | str | list[JSONValue] | dict[str, JSONValue] | None"

#: Serializers whose bytes are JSON: inspection shows them without importing or running code.
JSON_SERIALIZERS = frozenset({"json", "pydantic", "dataclass"})


@dataclass(frozen=True, slots=True)
class CheckpointCall:
    """One checkpoint call of an execution, folded from its journal records."""

    call_id: str
    function: str
    status: str
    """``completed``, ``failed`` (no attempt left), ``retrying``, or ``interrupted`` (a crash cut
    its last attempt short; it runs again when the execution resumes)."""
    attempts: int
    output_artifact: str | None
    started_at: float | None
    ended_at: float | None
    error: str | None
    metadata: dict[str, JSONValue]
    reused_from: str | None = None
    """For a replay: the execution whose recorded output this call reused (it did not run here)."""
    overridden: bool = False
    """For a replay: the reused output was replaced by an ``--override``."""
    interrupted: int = 0
    """Attempts cut short by a crash of their runner (counted in ``attempts``). Only attempts
    that lasted past one of the runner's heartbeats are seen."""
    cached: bool = False
    """A checkpoint cache hit: the output came from the cache; the call did not run."""
    cached_from: str | None = None
    """For a cache hit: the execution whose call produced the reused output."""
    type: str | None = None
    """The checkpoint's ``@checkpoint(type=...)`` label (``llm_call``, ``tool_call``...)."""


@dataclass(frozen=True, slots=True)
class Wait:
    """A wait of an execution."""

    name: str
    question: str | None
    schema: str
    status: str
    """``open``, ``answered``, ``aborted`` or ``timed_out``."""
    answer_artifact: str | None
    metadata: dict[str, JSONValue]
    deadline: float | None
    schema_ref: str | None = None
    """The text reference journals written before structured references carry (never evaluated)."""
    json_schema: dict[str, JSONValue] | None = None
    """What an answer must match, as a JSON Schema (None: any JSON value)."""
    type_ref: dict[str, JSONValue] | None = None
    """The schema's structured type reference (see ``kitaru._engine.waits.type_ref``)."""
    opened_at: float | None = None
    """When the wait was opened (its ``wait_opened`` record)."""


@dataclass(frozen=True, slots=True)
class LogEntry:
    """Text a flow wrote: ``stream`` is ``stdout``, ``stderr`` or ``log`` (logging records)."""

    call_id: str | None
    """The checkpoint call that wrote it, or None for the flow body."""
    stream: str
    text: str
    ts: float
    seq: int
    """Journal position, to continue from with ``after=``."""


@dataclass(frozen=True, slots=True)
class Execution:
    """An execution as people see it: status, checkpoints, waits and metadata."""

    id: str
    flow: str
    status: str
    created_at: float
    updated_at: float
    target: str
    error: str | None
    original_exec_id: str | None
    metadata: dict[str, JSONValue]
    checkpoints: tuple[CheckpointCall, ...] = ()
    waits: tuple[Wait, ...] = ()
    result_artifact: str | None = None

    @property
    def open_waits(self) -> list[Wait]:
        return [w for w in self.waits if w.status == "open"]

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class Recovery:
    """What ``recover()`` did with one execution that nobody moved on."""

    exec_id: str
    flow: str
    reason: str
    """``runner_gone`` (running, its runner dead or its lease expired) or ``wait_deadline`` (waiting,
    a wait's deadline passed)."""
    outcome: str
    """The status this process left it in (``completed``, ``failed``, ``waiting``, ``cancelled``),
    ``skipped`` (another runner drives it, or it moved on meanwhile) or ``error`` (it could not be
    driven here, e.g. its code does not import)."""
    detail: str | None = None

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class Artifact:
    """A stored artifact; ``load()`` gives the value back with its type."""

    id: str
    exec_id: str
    name: str
    version: int
    type: str
    serializer: str
    data_type: str
    content_hash: str
    size: int
    call_id: str | None
    created_at: float
    uri: str | None
    tags: list[str]
    _record: ArtifactRecord = field(repr=False, compare=False)
    _client: KitaruClient = field(repr=False, compare=False)

    def load(self) -> object:
        """The value with its type, from bytes verified against the recorded hash. Pickled values
        are unpickled (unless ``KITARU_ALLOW_PICKLE=0``): only load what the state store vouches for."""
        return self._client._runtime.load_artifact(self._record)

    @property
    def is_json(self) -> bool:
        """Whether the stored bytes are JSON (the ``json``, ``pydantic`` and ``dataclass``
        serializers), so :meth:`as_json` can show them without running any code."""
        return self.serializer in JSON_SERIALIZERS

    def read_bytes(self) -> bytes:
        """The stored bytes, verified against the state store's size and sha256."""
        return self._client._runtime.artifact_bytes(self._record)

    def as_json(self) -> JSONValue:
        """The value as plain JSON data, parsed from the verified bytes without importing or
        running anything: a pydantic model or dataclass comes back as its JSON object."""
        if not self.is_json:
            raise KitaruUsageError(
                f"artifact {self.id} is stored by the {self.serializer!r} serializer, not as JSON. "
                f"Load it with `kitaru artifacts get {self.id} --load` (which may unpickle it), or "
                f"write its bytes with `kitaru artifacts get {self.id} --out FILE`."
            )
        value: JSONValue = json.loads(self.read_bytes())
        return value

    def write_to(self, path: str | os.PathLike[str], *, progress: Callable[[int], None] | None = None) -> int:
        """Write the stored bytes to ``path``, streamed in bounded memory and verified on the way.

        The bytes go to a temporary file beside ``path`` that is renamed into place only once all
        of them matched the recorded hash: a mismatch leaves ``path`` untouched. Returns the size.
        ``progress`` is called with the size of each chunk written."""
        target = Path(path).absolute()
        parent = target.parent
        if not parent.is_dir():
            raise KitaruUsageError(
                f"cannot write {target}: the directory {parent} does not exist. Create it "
                f"(mkdir -p {parent}) or choose another path."
            )
        if target.is_dir():
            raise KitaruUsageError(f"cannot write {target}: it is a directory. Give a file path.")
        import tempfile

        try:
            fd, tmp = tempfile.mkstemp(dir=parent, prefix=f".{target.name}.", suffix=".part")
        except OSError as exc:
            raise KitaruUsageError(
                f"cannot write {target}: {exc.strerror or exc}. Choose a writable directory."
            ) from exc
        try:
            with os.fdopen(fd, "wb") as fh:
                for chunk in self._client._runtime.artifact_chunks(self._record):
                    fh.write(chunk)
                    if progress is not None:
                        progress(len(chunk))
            os.replace(tmp, target)
        except OSError as exc:
            raise KitaruUsageError(
                f"cannot write {target}: {exc.strerror or exc}. Check the directory is writable "
                "and has space."
            ) from exc
        finally:
            if os.path.lexists(tmp):
                os.unlink(tmp)
        return self.size

    def to_dict(self) -> dict[str, object]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__ if not k.startswith("_")}


def merge_metadata(into: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """Fold one ``kitaru.log()`` call into the metadata before it, as Kitaru 0.18 did: a key
    logged again with a dict merges into the dict it had (recursively, key by key); any other
    value replaces what was there (the latest wins)."""
    for key, value in new.items():
        before = into.get(key)
        if isinstance(value, dict) and isinstance(before, dict):
            into[key] = merge_metadata(dict(before), value)
        else:
            into[key] = value
    return into


_ATTEMPT_KINDS = frozenset({"checkpoint_completed", "checkpoint_failed", "checkpoint_interrupted"})


def fold_journal(
    journal: list[JournalRecord],
) -> tuple[list[CheckpointCall], list[Wait], dict[str, Any]]:
    """Fold an execution's journal into its checkpoint calls, waits and flow-level metadata."""
    calls: dict[str, dict[str, Any]] = {}
    waits: dict[str, dict[str, Any]] = {}
    flow_meta: dict[str, Any] = {}
    call_meta: dict[str, dict[str, Any]] = {}
    for r in journal:
        if r.kind in _ATTEMPT_KINDS and r.call_id:
            data = r.data or {}
            c = calls.setdefault(
                r.call_id,
                {
                    "function": r.name,
                    "attempts": 0,
                    "records": 0,
                    "interrupted": 0,
                    "started_at": data.get("started_at", r.ts),
                    "ended_at": None,
                    "status": "interrupted",
                    "output": None,
                    "error": None,
                    "reused_from": None,
                    "overridden": False,
                    "cached_from": None,
                },
            )
            # Attempt numbers restart when a runner takes over, so each attempt record counts too.
            c["records"] += 1
            c["attempts"] = max(c["attempts"], r.attempt or 1, c["records"])
            if r.kind == "checkpoint_interrupted":
                c["interrupted"] += 1
                if c["status"] != "completed":
                    c["status"] = "interrupted"
                continue
            c["ended_at"] = r.ts
            # A replay's seeded record: the call did not run in this execution, so it has no start
            # (and no duration) here; its original run's timing belongs to the original.
            c["reused_from"] = data.get("replayed_from")
            c["overridden"] = bool(data.get("overridden"))
            c["cached_from"] = data.get("cached_from")
            c["type"] = data.get("type")
            if c["reused_from"]:
                c["started_at"] = None
            if r.kind == "checkpoint_completed":
                c.update(status="completed", output=r.artifact_id, error=None)
            else:
                c.update(
                    status="retrying" if data.get("will_retry") else "failed",
                    output=None,
                    error=data.get("error"),
                )
        elif r.kind == "log":
            if r.call_id:
                # A checkpoint's logs are committed just before its outcome record.
                merge_metadata(call_meta.setdefault(r.call_id, {}), r.data or {})
            else:
                merge_metadata(flow_meta, r.data or {})
        elif r.kind == "wait_opened" and r.call_id:
            d = r.data or {}
            waits[r.call_id] = {
                "question": d.get("question"),
                "schema": d.get("schema_text", "any JSON value"),
                "status": "open",
                "answer": None,
                "metadata": d.get("metadata") or {},
                "deadline": d.get("deadline"),
                "schema_ref": d.get("schema"),
                "json_schema": d.get("json_schema"),
                "type_ref": d.get("type"),
                "opened_at": r.ts,
            }
        elif r.kind == "wait_answered" and r.call_id in waits:
            aborted = bool((r.data or {}).get("aborted"))
            waits[r.call_id].update(status="aborted" if aborted else "answered", answer=r.artifact_id)
        elif r.kind == "wait_timed_out" and r.call_id in waits:
            waits[r.call_id]["status"] = "timed_out"
    checkpoint_calls = [
        CheckpointCall(
            call_id=cid,
            function=c["function"] or "",
            status=c["status"],
            attempts=c["attempts"],
            output_artifact=c["output"],
            started_at=c["started_at"],
            ended_at=c["ended_at"],
            error=c["error"],
            metadata=call_meta.get(cid, {}),
            reused_from=c["reused_from"],
            overridden=c["overridden"],
            interrupted=c["interrupted"],
            cached=c["cached_from"] is not None,
            cached_from=c["cached_from"],
            type=c.get("type"),
        )
        for cid, c in calls.items()
    ]
    wait_list = [
        Wait(
            name=wid,
            question=w["question"],
            schema=w["schema"],
            status=w["status"],
            answer_artifact=w["answer"],
            metadata=w["metadata"],
            deadline=w["deadline"],
            schema_ref=w["schema_ref"],
            json_schema=w["json_schema"],
            type_ref=w["type_ref"],
            opened_at=w["opened_at"],
        )
        for wid, w in waits.items()
    ]
    return checkpoint_calls, wait_list, flow_meta


@dataclass(frozen=True, slots=True)
class PendingWait:
    """An open wait of a waiting execution: what a person is asked, and what an answer must be."""

    exec_id: str
    flow: str
    name: str
    question: str | None
    schema: str
    json_schema: dict[str, JSONValue] | None
    metadata: dict[str, JSONValue]
    opened_at: float | None
    deadline: float | None

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class FlowStats:
    """One flow's executions in a window: counts by status, durations, model usage."""

    flow: str
    executions: int
    by_status: dict[str, int]
    duration_p50: float | None
    """Seconds from start to the final status, over finished executions (None: none finished)."""
    duration_p95: float | None
    llm_calls: int
    tokens_in: int
    tokens_out: int
    cost_usd: float
    """Over the calls whose price is known (recorded at call time, else from the price table)."""
    unpriced_calls: int
    """Model calls with no known price (register one: ``kitaru model register ... --input-cost``)."""

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class ExecutionStats:
    """What ``executions.stats()`` returns: per-flow figures, and the window they cover."""

    since: float | None
    flows: tuple[FlowStats, ...]

    def to_dict(self) -> dict[str, object]:
        return asdict(self)
