"""The client's views: what ``KitaruClient`` returns about executions, checkpoints, waits, logs
and artifacts, and the fold of a journal into them. Split from :mod:`kitaru.client`, which
re-exports every name (import them from there)."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias, overload

from kitaru.errors import FailureOrigin, KitaruUsageError
from kitaru.store import ArtifactRecord, JournalRecord

if TYPE_CHECKING:
    from kitaru.client import ExecutionHandle, KitaruClient

__all__ = [
    "JSON_SERIALIZERS",
    "Artifact",
    "ArtifactRef",
    "Attempts",
    "CheckpointAttempt",
    "CheckpointCall",
    "Execution",
    "ExecutionStats",
    "ExecutionStatus",
    "FailureInfo",
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


class ExecutionStatus(StrEnum):
    """An execution's status. It is a ``str`` (``status == "waiting"`` holds, JSON shows the
    text) with the original Kitaru's enum surface: ``.value``, ``.is_finished``,
    ``.is_successful``."""

    RUNNING = "running"
    WAITING = "waiting"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_finished(self) -> bool:
        """Whether the execution stopped: completed, failed or cancelled (a failed one may still
        be continued with ``retry``)."""
        return self in (ExecutionStatus.COMPLETED, ExecutionStatus.FAILED, ExecutionStatus.CANCELLED)

    @property
    def is_successful(self) -> bool:
        """Whether the execution completed."""
        return self is ExecutionStatus.COMPLETED


def as_status(value: str) -> ExecutionStatus:
    """``value`` as an :class:`ExecutionStatus`."""
    try:
        return ExecutionStatus(value)
    except ValueError:
        # A newer store may know a status this client does not: show it as it is.
        return value  # type: ignore[return-value]


def _datetime(ts: float | None) -> datetime | None:
    return None if ts is None else datetime.fromtimestamp(ts, tz=UTC)


@dataclass(frozen=True, slots=True)
class FailureInfo:
    """Why an execution, or a checkpoint attempt, failed."""

    message: str
    """The recorded error, ``Type: message``."""
    exception_type: str | None
    """The exception's class name (None when no exception was recorded)."""
    traceback: str | None
    origin: FailureOrigin
    """Whose failure it was: the user's code, kitaru, its stores, or a divergence."""


_ERROR_TYPE = re.compile(r"([A-Za-z_][\w.]*):")


def failure_info(error: str | None, traceback: str | None = None) -> FailureInfo | None:
    """A :class:`FailureInfo` from a recorded error (``Type: message``) and traceback."""
    if not error:
        return None
    import kitaru.errors as errors

    match = _ERROR_TYPE.match(error)
    exc_type = match.group(1) if match else None
    # The recorded class name says whose failure it was: kitaru's own errors name themselves.
    cls = getattr(errors, (exc_type or "").rpartition(".")[2], None)
    if exc_type is None:
        origin = FailureOrigin.UNKNOWN
    elif not (isinstance(cls, type) and issubclass(cls, errors.KitaruError)):
        origin = FailureOrigin.USER_CODE
    elif issubclass(cls, errors.KitaruDivergenceError):
        origin = FailureOrigin.DIVERGENCE
    elif issubclass(cls, errors.KitaruStoreError):
        origin = FailureOrigin.BACKEND
    else:
        origin = FailureOrigin.RUNTIME
    return FailureInfo(message=error, exception_type=exc_type, traceback=traceback, origin=origin)


@dataclass(frozen=True, slots=True)
class CheckpointAttempt:
    """One attempt of a checkpoint call (a retried call has several)."""

    attempt_id: str
    """``<call_id>#<n>``: the call and the attempt's place among its attempts."""
    status: ExecutionStatus
    """``completed`` or ``failed`` (an attempt cut short by a crash of its runner is ``failed``)."""
    started_at: datetime | None
    ended_at: datetime | None
    metadata: dict[str, JSONValue]
    failure: FailureInfo | None


class Attempts(int):
    """How many attempts a checkpoint call took. It is an ``int`` (as ``CheckpointCall.attempts``
    always was here, and as JSON shows it) that also iterates over the recorded attempts, oldest
    first, as the original Kitaru's ``checkpoint.attempts`` list did: ``for a in cp.attempts``,
    ``cp.attempts[-1].failure``. ``len()`` counts the recorded attempts; an attempt whose
    runner died before its first heartbeat is counted in the number but has no record."""

    _history: tuple[CheckpointAttempt, ...]

    def __new__(cls, count: int, history: tuple[CheckpointAttempt, ...] = ()) -> Attempts:
        made = super().__new__(cls, count)
        made._history = tuple(history)
        return made

    def __reduce__(self) -> tuple[Any, ...]:
        return (Attempts, (int(self), self._history))

    def __iter__(self) -> Iterator[CheckpointAttempt]:
        return iter(self._history)

    def __len__(self) -> int:
        return len(self._history)

    @overload
    def __getitem__(self, index: int) -> CheckpointAttempt: ...
    @overload
    def __getitem__(self, index: slice) -> tuple[CheckpointAttempt, ...]: ...
    def __getitem__(self, index: int | slice) -> CheckpointAttempt | tuple[CheckpointAttempt, ...]:
        return self._history[index]


def _bound_client(view: object) -> KitaruClient:
    """The client a view was read through (views built from JSON have none)."""
    client: KitaruClient | None = getattr(view, "_client", None)
    if client is None:
        raise KitaruUsageError(
            f"this {type(view).__name__} was not read through a KitaruClient, so it cannot fetch "
            "more; read it with `KitaruClient().executions.get(exec_id)`."
        )
    return client


def bind(execution: Execution, client: KitaruClient | None) -> Execution:
    """``execution`` (and its checkpoint calls) tied to the client it was read through, so they
    can fetch artifacts and act (``refresh()``, ``replay()``...)."""
    # The views are frozen dataclasses; the client is kept beside their fields (not one of
    # them), so to_dict(), JSON output and equality are unchanged by it.
    for view in (execution, *execution.checkpoints):
        object.__setattr__(view, "_client", client)
    return execution


@dataclass(frozen=True)
class CheckpointCall:
    """One checkpoint call of an execution, folded from its journal records."""

    call_id: str
    function: str
    status: str
    """``completed``, ``failed`` (no attempt left), ``retrying``, or ``interrupted`` (a crash cut
    its last attempt short; it runs again when the execution resumes)."""
    attempts: int
    """The number of attempts; iterate it for each attempt's details (see :class:`Attempts`)."""
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
    saved_artifacts: tuple[str, ...] = ()
    """Ids of the artifacts the call saved with ``kitaru.save()``, in order."""

    @property
    def name(self) -> str:
        """The checkpoint's name: the call id without its ``:N`` call number."""
        return re.sub(r":\d+$", "", self.call_id)

    @property
    def original_call_id(self) -> str | None:
        """For a replay: the call of the original execution whose output this call reused."""
        return self.call_id if self.reused_from else None

    @property
    def failure(self) -> FailureInfo | None:
        """Why the call failed, when its last attempt failed."""
        if self.status not in ("failed", "retrying", "interrupted"):
            return None
        history = list(self.attempts) if isinstance(self.attempts, Attempts) else []
        last = history[-1].failure if history else None
        return last or failure_info(self.error)

    @property
    def artifacts(self) -> list[Artifact]:
        """The call's output artifact, then what it saved with ``kitaru.save()``; each
        ``.load()`` gives the value."""
        client = _bound_client(self)
        ids = ([self.output_artifact] if self.output_artifact else []) + list(self.saved_artifacts)
        return [client.artifacts.get(i) for i in ids]


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

    # -- the original Kitaru's ``LogEntry`` names ------------------------------------------

    @property
    def message(self) -> str:
        """The text (``text``)."""
        return self.text

    @property
    def level(self) -> str | None:
        """A logging record's own level (``WARNING``...: the first word of its text, as the
        capture writes it), ``ERROR`` for what went to stderr, ``INFO`` otherwise."""
        if self.stream == "log":
            first = self.text.split(" ", 1)[0]
            if first.isupper() and first.isalpha():
                return first
        return "ERROR" if self.stream == "stderr" else "INFO"

    @property
    def timestamp(self) -> str:
        """When it was written, as ISO 8601 text in UTC (``ts`` is Unix time)."""
        return datetime.fromtimestamp(self.ts, tz=UTC).isoformat()

    @property
    def source(self) -> str:
        """``step`` for what a checkpoint wrote, ``runner`` for the flow body's own output."""
        return "step" if self.call_id else "runner"

    @property
    def checkpoint_name(self) -> str | None:
        """The checkpoint that wrote it: its call id without the ``:N`` call number."""
        return re.sub(r":\d+$", "", self.call_id) if self.call_id else None


@dataclass(frozen=True)
class Execution:
    """An execution as people see it: status, checkpoints, waits and metadata.

    Read through a :class:`~kitaru.KitaruClient`, it can also act: :meth:`refresh`,
    :meth:`retry`, :meth:`resume`, :meth:`cancel`, :meth:`replay` go through that client."""

    id: str
    flow: str
    status: ExecutionStatus
    """An :class:`ExecutionStatus` (a ``str``: ``status == "waiting"`` holds)."""
    created_at: float
    updated_at: float
    target: str
    error: str | None
    original_exec_id: str | None
    metadata: dict[str, JSONValue]
    checkpoints: tuple[CheckpointCall, ...] = ()
    waits: tuple[Wait, ...] = ()
    result_artifact: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "status", as_status(self.status))

    @property
    def open_waits(self) -> list[Wait]:
        return [w for w in self.waits if w.status == "open"]

    # -- the original Kitaru's names for what is above -------------------------------------

    @property
    def exec_id(self) -> str:
        """The execution's id (``id``)."""
        return self.id

    @property
    def flow_name(self) -> str:
        """The flow's name (``flow``)."""
        return self.flow

    @property
    def status_reason(self) -> str | None:
        """The recorded error of a failed execution (``error``)."""
        return self.error

    @property
    def started_at(self) -> datetime:
        """When the execution was created, as a UTC datetime (``created_at`` is Unix time)."""
        return datetime.fromtimestamp(self.created_at, tz=UTC)

    @property
    def ended_at(self) -> datetime | None:
        """When it stopped (completed, failed or cancelled), as a UTC datetime; None before."""
        finished = isinstance(self.status, ExecutionStatus) and self.status.is_finished
        return _datetime(self.updated_at) if finished else None

    @property
    def stack_name(self) -> str | None:
        """The stack whose state store holds the execution (None when not read locally)."""
        client = getattr(self, "_client", None)
        return client._stack_name() if client is not None else None

    @property
    def failure(self) -> FailureInfo | None:
        """Why a failed execution failed: message, exception type, traceback and origin."""
        if self.status != "failed" or not self.error:
            return None
        traceback = None
        client = getattr(self, "_client", None)
        if client is not None:
            traceback = client.executions._failure_traceback(self.id)
        return failure_info(self.error, traceback)

    @property
    def pending_wait(self) -> PendingWait | None:
        """The first wait that waits for an answer (see ``pending_waits()`` for all of them)."""
        waits: tuple[Wait, ...] = self.waits
        if self.status == "waiting" and not waits and getattr(self, "_client", None) is not None:
            waits = _bound_client(self).executions.get(self.id).waits  # a list()'s summary
        opened = [w for w in waits if w.status == "open"]
        return pending_wait_of(self, opened[0]) if opened else None

    @property
    def artifacts(self) -> list[Artifact]:
        """Every checkpoint call's artifacts (outputs and saves), in call order."""
        seen: dict[str, Artifact] = {}
        for call in self.checkpoints:
            for artifact in call.artifacts:
                seen.setdefault(artifact.id, artifact)
        return list(seen.values())

    def list_checkpoints(self) -> list[CheckpointCall]:
        """The checkpoint calls, in call order."""
        return list(self.checkpoints)

    def list_artifacts(self) -> list[Artifact]:
        """See :attr:`artifacts`."""
        return self.artifacts

    # -- acting through the client it was read with -----------------------------------------

    def refresh(self) -> Execution:
        """The execution as it is now (a new view; this one does not change)."""
        return _bound_client(self).executions.get(self.id)

    def retry(self) -> ExecutionHandle:
        """Continue this failed execution in place (``executions.retry``)."""
        return _bound_client(self).executions.retry(self.id)

    def resume(self) -> ExecutionHandle:
        """Drive this execution on from its journal (``executions.resume``)."""
        return _bound_client(self).executions.resume(self.id)

    def cancel(self) -> Execution:
        """Cancel this execution (``executions.cancel``)."""
        return _bound_client(self).executions.cancel(self.id)

    def replay(
        self, from_: str, *, overrides: dict[str, Any] | None = None, **flow_inputs: Any
    ) -> ExecutionHandle:
        """Replay this execution from ``from_`` as a new one (``executions.replay``): flow
        inputs to change are given by name, as keyword arguments."""
        return _bound_client(self).executions.replay(self.id, from_=from_, overrides=overrides, **flow_inputs)

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

    # -- the original Kitaru's ``ArtifactRef`` names ----------------------------------------

    @property
    def artifact_id(self) -> str:
        """The artifact's id (``id``)."""
        return self.id

    @property
    def is_checkpoint_output(self) -> bool:
        """Whether this is a checkpoint call's return value (named after its call), rather than
        something ``kitaru.save()`` stored."""
        return self.type == "output" and self.call_id is not None and self.name == self.call_id

    @property
    def kind(self) -> str | None:
        """What ``kitaru.save(..., type=KIND)`` called it (``context``, ``prompt``...), or the
        role kitaru gave it (``input``, ``answer``, ``result``); None for a checkpoint's return
        value, as in the original Kitaru."""
        return None if self.is_checkpoint_output else self.type

    @property
    def save_type(self) -> str:
        """How it was stored, in the original Kitaru's terms: ``step_output`` (a checkpoint's
        return value, or the flow's result), ``manual`` (``kitaru.save()``), ``external`` (a
        value given from outside: a flow input, a wait's answer)."""
        if self.is_checkpoint_output or self.type == "result":
            return "step_output"
        if self.type in ("input", "answer"):
            return "external"
        return "manual"

    @property
    def producing_call(self) -> str | None:
        """The checkpoint call that produced it (None for flow inputs and results)."""
        return self.call_id

    @property
    def metadata(self) -> dict[str, JSONValue]:
        """What the original Kitaru recorded with a saved artifact: its ``kitaru_artifact_type``."""
        return {} if self.kind is None else {"kitaru_artifact_type": self.kind}

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


#: The original Kitaru's name for an artifact view.
ArtifactRef = Artifact


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


def _attempt(r: JournalRecord, n: int) -> CheckpointAttempt:
    """One attempt of a checkpoint call, from its outcome record."""
    data = r.data or {}
    if r.kind == "checkpoint_completed":
        status, failure = ExecutionStatus.COMPLETED, None
    elif r.kind == "checkpoint_interrupted":
        status = ExecutionStatus.FAILED
        failure = FailureInfo(
            message="the attempt was cut short: its runner stopped (a crash, or the machine went away)",
            exception_type=None,
            traceback=None,
            origin=FailureOrigin.RUNTIME,
        )
    else:
        status = ExecutionStatus.FAILED
        failure = failure_info(data.get("error") or "failed", data.get("traceback"))
    started = data.get("started_at")
    return CheckpointAttempt(
        attempt_id=f"{r.call_id}#{n}",
        status=status,
        # A replay's reused record did not run here: it has no start of its own.
        started_at=None if data.get("replayed_from") else _datetime(started),
        ended_at=_datetime(r.ts),
        metadata={},
        failure=failure,
    )


def fold_journal(
    journal: list[JournalRecord],
) -> tuple[list[CheckpointCall], list[Wait], dict[str, Any]]:
    """Fold an execution's journal into its checkpoint calls, waits and flow-level metadata."""
    calls: dict[str, dict[str, Any]] = {}
    waits: dict[str, dict[str, Any]] = {}
    flow_meta: dict[str, Any] = {}
    call_meta: dict[str, dict[str, Any]] = {}
    history: dict[str, list[CheckpointAttempt]] = {}
    saved: dict[str, list[str]] = {}
    for r in journal:
        if r.kind == "save" and r.call_id and "/" in r.call_id and r.artifact_id:
            saved.setdefault(r.call_id.split("/", 1)[0], []).append(r.artifact_id)
        if r.kind in _ATTEMPT_KINDS and r.call_id:
            data = r.data or {}
            history.setdefault(r.call_id, []).append(_attempt(r, len(history.get(r.call_id, ())) + 1))
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
            attempts=Attempts(c["attempts"], tuple(history.get(cid, ()))),
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
            saved_artifacts=tuple(saved.get(cid, ())),
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
    """An open wait of a waiting execution: what a person is asked, and what an answer must be.

    ``schema`` is the JSON Schema an answer must match (a dict, as in Kitaru 0.18); ``expects``
    is the same as short text (``"bool"``, ``"Order"``)."""

    exec_id: str
    flow: str
    name: str
    question: str | None
    expects: str
    schema: dict[str, JSONValue] | None
    metadata: dict[str, JSONValue]
    opened_at: float | None
    deadline: float | None

    @property
    def json_schema(self) -> dict[str, JSONValue] | None:
        """The JSON Schema (``schema``), under the name the execution's ``Wait`` uses for it."""
        return self.schema

    @property
    def wait_id(self) -> str:
        """The wait's id within its execution: its name (``input(exec_id, wait=...)`` takes it)."""
        return self.name

    @property
    def entered_waiting_at(self) -> datetime | None:
        """When the wait was opened, as a UTC datetime (``opened_at`` is Unix time)."""
        return _datetime(self.opened_at)

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def owed_waits(execution: Execution, flow: str | None = None) -> list[PendingWait]:
    """The waits a person owes an answer on one execution (of ``flow`` when given): its open waits
    while it waits or while its flow holds for an answer; none once it finished."""
    if execution.status not in ("waiting", "running") or (flow is not None and execution.flow != flow):
        return []
    return [pending_wait_of(execution, w) for w in execution.open_waits]


def pending_wait_of(execution: Execution, wait: Wait) -> PendingWait:
    """An open wait of an execution, as a :class:`PendingWait`."""
    return PendingWait(
        exec_id=execution.id,
        flow=execution.flow,
        name=wait.name,
        question=wait.question,
        expects=wait.schema,
        schema=wait.json_schema,
        metadata=wait.metadata,
        opened_at=wait.opened_at,
        deadline=wait.deadline,
    )


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
