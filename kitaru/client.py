"""``KitaruClient``: inspect and steer executions and artifacts from Python (the CLI uses it too)."""

from __future__ import annotations

import builtins
import json
import re
import sys
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from kitaru._engine.handles import FlowHandle
from kitaru._engine.runtime import INFLIGHT, OPTIONS_METADATA
from kitaru._ids import MAX_ID_LENGTH
from kitaru.errors import (
    KitaruError,
    KitaruNotFoundError,
    KitaruStateError,
    KitaruUsageError,
    KitaruWaitAborted,
)
from kitaru.store import ArtifactRecord, ExecutionRecord

if TYPE_CHECKING:
    from kitaru._engine.runner import Outcome
    from kitaru._engine.runtime import Runtime
    from kitaru.diff import ExecutionDiff
    from kitaru.events import ExecutionEvent
    from kitaru.lineage import LineageGraph
    from kitaru.stack import Orchestrator
    from kitaru.store._sync import SyncStateStore

__all__ = [
    "Artifact",
    "ArtifactRef",
    "CheckpointAttempt",
    "CheckpointCall",
    "Execution",
    "ExecutionHandle",
    "ExecutionStats",
    "ExecutionStatus",
    "FailureInfo",
    "FailureOrigin",
    "FlowStats",
    "JSONValue",
    "KitaruClient",
    "LogEntry",
    "PendingWait",
    "Recovery",
    "Wait",
]

# The views live in their own module; they are importable from here as before.
from kitaru._client_views import JSON_SERIALIZERS as JSON_SERIALIZERS
from kitaru._client_views import Artifact as Artifact
from kitaru._client_views import ArtifactRef as ArtifactRef
from kitaru._client_views import CheckpointAttempt as CheckpointAttempt
from kitaru._client_views import CheckpointCall as CheckpointCall
from kitaru._client_views import Execution as Execution
from kitaru._client_views import ExecutionStats as ExecutionStats
from kitaru._client_views import ExecutionStatus as ExecutionStatus
from kitaru._client_views import FailureInfo as FailureInfo
from kitaru._client_views import FlowStats as FlowStats
from kitaru._client_views import JSONValue as JSONValue
from kitaru._client_views import LogEntry as LogEntry
from kitaru._client_views import PendingWait as PendingWait
from kitaru._client_views import Recovery as Recovery
from kitaru._client_views import Wait as Wait
from kitaru._client_views import fold_journal as fold_journal
from kitaru.errors import FailureOrigin as FailureOrigin


class _Executions:
    def __init__(self, client: KitaruClient) -> None:
        self._client = client

    @property
    def _state(self) -> SyncStateStore:
        return self._client._runtime.state

    def resolve(self, exec_id: str) -> str:
        """The full id for an id or a unique prefix of one."""
        if len(exec_id) > MAX_ID_LENGTH:
            # No execution has such an id; and a store cannot match a prefix this long (SQLite's
            # LIKE refuses it as "too complex"), which would report a store error, not the answer.
            raise KitaruNotFoundError(
                f"no execution {exec_id[:40]!r}... ({len(exec_id)} characters; ids are at most "
                f"{MAX_ID_LENGTH}). List executions with `kitaru executions list`."
            )
        if self._state.get_execution(exec_id) is not None:
            return exec_id
        matches = self._state.match_execution_ids(exec_id, limit=5) if exec_id else []
        if len(matches) == 1:
            return str(matches[0])
        if not matches:
            raise KitaruNotFoundError(
                f"no execution {exec_id!r}. List executions with `kitaru executions list`."
            )
        raise KitaruUsageError(
            f"{exec_id!r} matches several executions ({', '.join(matches)}); give more of the id."
        )

    def _record(self, exec_id: str) -> ExecutionRecord:
        record = self._state.get_execution(self.resolve(exec_id))
        assert record is not None
        return record

    def get(self, exec_id: str) -> Execution:
        """An execution with its checkpoints, waits and metadata."""
        record = self._record(exec_id)
        calls, waits, flow_meta = fold_journal(self._state.read_journal(record.id))
        return _execution_view(record, calls, waits, flow_meta, self._client)

    def _failure_traceback(self, exec_id: str) -> str | None:
        """The traceback recorded when the execution last failed."""
        failed = [r for r in self._state.read_journal(exec_id) if r.kind == "flow_failed"]
        return (failed[-1].data or {}).get("traceback") if failed else None

    def list(
        self,
        *,
        flow: str | None = None,
        status: str | None = None,
        limit: int | None = 50,
        version: int | None = None,
    ) -> list[Execution]:
        """Executions, newest first (summaries: without checkpoints and waits); ``status`` an
        :class:`ExecutionStatus` or its text; ``limit=None``: all of them; ``version``: only
        those that ran that deployed version."""
        status = _status_filter(status)
        if limit is None:
            limit = sys.maxsize
        elif limit < 1:
            raise KitaruUsageError(f"limit={limit}: give at least 1, or None for every execution.")
        records = self._state.list_executions(flow=flow, status=status, limit=limit, version=version)
        return [_execution_view(r, [], [], {}, self._client) for r in records]

    def input(
        self, exec_id: str, value: Any, *, wait: str | None = None, resume: bool = True
    ) -> ExecutionHandle:
        """Answer an open wait; with ``resume`` the stack's orchestrator moves the flow on (the
        local stack drives it in this process).

        The answer is checked first, with no user code needed, against the wait's JSON Schema
        (strictly: ``"no"`` is not a bool), then with pydantic where the classes its schema names
        are importable here. A bad one raises :class:`~kitaru.errors.KitaruWaitValidationError`
        and leaves the wait open. Python values (a model, a date) are turned into JSON first: the
        answer is stored as its JSON value and the flow validates it again when it resumes.
        Returns a :class:`~kitaru.FlowHandle` of the execution.
        """
        from kitaru._engine.handles import blocking
        from kitaru._engine.loading import aload_execution_flow
        from kitaru._engine.runner import Runner
        from kitaru._engine.waits import _LIVE_SCHEMAS, check_answer

        runtime = self._client._runtime
        execution = self.get(exec_id)
        chosen = _choose_wait(execution, wait)
        orchestrator = self._client._orchestrator()
        in_process = _drives_here(orchestrator)
        flow_module = None
        try:
            flow_obj = blocking(aload_execution_flow, runtime, self._record(execution.id))
            flow_module = sys.modules.get(flow_obj.fn.__module__)
        except KitaruError:
            # Without the flow's code an answer can still be recorded (--no-resume, or a stack
            # whose jobs carry the code): the wait's JSON Schema needs no user code.
            if resume and in_process:
                raise
        value = check_answer(
            {
                "schema_text": chosen.schema,
                "json_schema": chosen.json_schema,
                "type": chosen.type_ref,
                "schema": chosen.schema_ref,
            },
            value,
            where=f"wait {chosen.name!r} of execution {execution.id}",
            fix=f"answer again with `kitaru executions input {execution.id} --value JSON`.",
            live_schema=_LIVE_SCHEMAS.get((execution.id, chosen.name)),
            flow_module=flow_module,
        )
        runner = Runner(runtime)
        # Driving here: take the lease in the answer's own transaction (nobody can slip in
        # between). Elsewhere: record the answer, then let the orchestrator start the work.
        leased = blocking(runner.answer, execution.id, chosen.name, value, take_lease=resume and in_process)
        if not resume:
            return ExecutionHandle(execution.id, runtime, None, self._client)
        if in_process:
            if leased is None:
                # its runner (still holding) goes on
                return ExecutionHandle(execution.id, runtime, None, self._client)
            flow_obj, started = blocking(runner.load, leased)
            return self._handle(execution.id, blocking(runner.drive, flow_obj, leased, started))
        return self._submit(execution.id)

    def latest(self, *, flow: str | None = None, status: str | None = None) -> Execution:
        """The newest execution (of ``flow``, in ``status``), with its checkpoints and waits;
        :class:`~kitaru.errors.KitaruNotFoundError` when there is none."""
        records = self._state.list_executions(flow=flow, status=_status_filter(status), limit=1)
        if not records:
            which = "".join(
                [f" of flow {flow!r}" if flow else "", f" with status {status}" if status else ""]
            )
            raise KitaruNotFoundError(f"no execution{which} yet. List them with `kitaru executions list`.")
        return self.get(records[0].id)

    def pending_waits(
        self, exec_id: str | None = None, *, flow: str | None = None
    ) -> builtins.list[PendingWait]:
        """Every wait a person owes an answer: the open waits of waiting executions (of ``flow``;
        of execution ``exec_id`` alone when given, also while its flow holds for a fast answer
        with ``wait(timeout=)``, as 0.18 listed them), oldest first, each with its question and
        the JSON Schema an answer must match."""
        from kitaru._client_views import owed_waits
        from kitaru._exec_stats import pending_waits

        if exec_id is None:
            return pending_waits(self._state, flow=flow)
        return owed_waits(self.get(exec_id), flow)

    def stats(self, *, flow: str | None = None, since: float | None = None) -> ExecutionStats:
        """Per flow, over the executions created since ``since`` (a Unix time; all when None):
        counts by status, the p50/p95 time from start to final status of finished ones, and the
        model tokens and cost of their ``kitaru.llm`` calls (the cost recorded at call time, else
        the price table in ``kitaru._models``, which an alias's ``--input-cost/--output-cost``
        overrides). Calls a replay reused are counted once, in the original."""
        from kitaru._exec_stats import execution_stats

        return execution_stats(self._state, flow=flow, since=since)

    def abort_wait(
        self, exec_id: str, *, wait: str | None = None, reason: str | None = None, resume: bool = True
    ) -> ExecutionHandle:
        """Abort an open wait instead of answering it: the flow's ``wait()`` raises
        :class:`~kitaru.errors.KitaruWaitAborted` (with ``reason``), which the flow may catch;
        uncaught, the execution fails. Recorded like an answer (once: an answered wait cannot be
        aborted, nor an aborted one answered). With ``resume`` the stack's orchestrator moves the
        flow on, as :meth:`input` does. Returns the execution's handle even when the flow does not
        catch the abort and fails (the abort is what the caller asked for, and Kitaru 0.18 returned
        the execution then too): its ``status`` is ``failed`` and its ``wait()`` raises that
        ``KitaruWaitAborted``."""
        from kitaru._engine.handles import blocking
        from kitaru._engine.runner import Runner

        runtime = self._client._runtime
        execution = self.get(exec_id)
        chosen = _choose_wait(execution, wait)
        in_process = _drives_here(self._client._orchestrator())
        runner = Runner(runtime)
        leased = blocking(
            runner.answer,
            execution.id,
            chosen.name,
            None,
            take_lease=resume and in_process,
            abort={"aborted": True, "reason": reason},
        )
        if not resume:
            return ExecutionHandle(execution.id, runtime, None, self._client)
        if in_process:
            if leased is None:
                return ExecutionHandle(execution.id, runtime, None, self._client)
            flow_obj, started = blocking(runner.load, leased)
            outcome: Outcome | None = blocking(runner.drive, flow_obj, leased, started)
        else:
            outcome = blocking(self._client._orchestrator().submit, execution.id)
        error = outcome.raise_interrupt().error if outcome is not None else None
        if isinstance(error, KitaruWaitAborted) and error.wait == chosen.name:
            # The flow let this very abort through: that failure is the result asked for, not an
            # error of this call. The handle carries it: `wait()` raises it.
            return ExecutionHandle(execution.id, runtime, outcome, self._client)
        return self._handle(execution.id, outcome)

    def _submit(self, exec_id: str) -> ExecutionHandle:
        """Hand the execution to the stack's orchestrator; the handle has the local outcome when
        it drove the execution here."""
        from kitaru._engine.handles import blocking

        outcome = blocking(self._client._orchestrator().submit, exec_id)
        return self._handle(exec_id, outcome)

    def _handle(self, exec_id: str, outcome: Outcome | None) -> ExecutionHandle:
        return ExecutionHandle.of(_handle(exec_id, self._client._runtime, outcome, self._client))

    def _take_over(self, exec_id: str, allowed: set[str]) -> ExecutionHandle:
        from kitaru.store import _rules

        record = self._record(exec_id)
        if record.status in _rules.FINAL_STATUSES:
            raise _rules.final_error(record.id, record.status, "run again")
        if record.status not in allowed:
            hint = {
                "failed": f"continue it with `kitaru executions retry {record.id}`",
                "waiting": f"answer its wait with `kitaru executions input {record.id} --value JSON`",
                "running": f"resume it with `kitaru executions resume {record.id}`",
            }.get(record.status, "")
            raise KitaruStateError(f"execution {record.id} is {record.status}: {hint}.")
        return self._submit(record.id)

    def resume(self, exec_id: str) -> ExecutionHandle:
        """Drive an interrupted (``running`` with a dead runner) or ``waiting`` execution on from
        its journal (the local stack: in this process). A waiting one suspends again unless its
        wait was answered or timed out."""
        return self._take_over(exec_id, {"running", "waiting"})

    def retry(self, exec_id: str) -> ExecutionHandle:
        """Continue a ``failed`` execution in place, reusing its completed checkpoints."""
        return self._take_over(exec_id, {"failed"})

    def recover(
        self, *, limit: int = 100, progress: Callable[[int, int], None] | None = None
    ) -> builtins.list[Recovery]:
        """Drive on every execution that nobody moves on: ``running`` ones whose runner is gone
        (its process died, or its lease expired), and ``waiting`` ones whose wait deadline passed
        (their flow sees :class:`~kitaru.errors.KitaruWaitTimeoutError`, as an in-process timeout
        does). The stack's orchestrator does the driving (the local stack: in this process).

        Safe to run from cron, or from several processes and hosts at once: taking each lease
        decides who drives; the others skip it. Returns what happened to each, oldest first.
        ``progress`` is called with (done, total) before the first and after each one.
        """
        records = self._state.list_recoverable(limit=limit)
        report: builtins.list[Recovery] = []
        for record in records:
            if progress is not None:
                progress(len(report), len(records))
            report.append(self._recover_one(record))
        if progress is not None:
            progress(len(report), len(records))
        return report

    def _recover_one(self, record: ExecutionRecord) -> Recovery:
        from kitaru._engine.handles import blocking
        from kitaru.errors import KitaruLeaseError

        reason = "runner_gone" if record.status == "running" else "wait_deadline"

        def note(outcome: str, detail: str | None = None) -> Recovery:
            return Recovery(record.id, record.flow, reason, outcome, detail)

        try:
            outcome = blocking(self._client._orchestrator().submit, record.id)
        except KitaruLeaseError:
            return note("skipped", "another runner drives it")
        except KitaruStateError:
            return note("skipped", "it moved on meanwhile")
        except KitaruError as exc:
            return note("error", str(exc))
        if outcome is None:
            return note("submitted", "the stack's orchestrator started it")
        if outcome.status == "lost":
            return note("skipped", "another runner took it over")
        outcome.raise_interrupt()
        return note(outcome.status, str(outcome.error) if outcome.error is not None else None)

    def runner_gone(self, exec_id: str) -> bool:
        """Whether a ``running`` execution has no live runner: its lease was released or expired,
        or its holder was a process on this host that has exited. It will not move on by itself;
        :meth:`recover` (or :meth:`resume`) drives it on."""
        from kitaru.store import _rules

        record = self._record(exec_id)
        return record.status == "running" and _rules.lease_free(
            record.lease_owner, record.lease_expires_at, time.time()
        )

    def replay(
        self,
        exec_id: str,
        from_: str,
        *,
        overrides: dict[str, Any] | None = None,
        args: dict[str, Any] | None = None,
        version: int | None = None,
        **flow_inputs: Any,
    ) -> ExecutionHandle:
        """Re-run an execution from a checkpoint or wait as a new execution, reusing everything
        above it; see :meth:`kitaru.Flow.replay`. Returns the new execution's handle (also a
        view of it: ``.exec_id``, ``.original_exec_id``, ``.status``...).

        ``overrides`` replace reused outputs by call id (``research``, ``research:2``) or, as
        the original Kitaru wrote them, ``checkpoint.<name or call id>``. Flow inputs to change
        are given in ``args`` or as keyword arguments (``topic="new"``).

        The replay runs the execution's own code (its deployed version, if it has one); with
        ``version``, version N of its flow instead (fix a step, deploy, replay from it)."""
        from kitaru._engine.handles import blocking
        from kitaru._engine.loading import aload_execution_flow, aload_version
        from kitaru._engine.replay import merge_flow_inputs
        from kitaru._engine.runner import Runner
        from kitaru.deployments import summary

        args = merge_flow_inputs(args, flow_inputs)
        record = self._record(exec_id)
        runtime = self._client._runtime
        if version is None:
            flow_obj = blocking(aload_execution_flow, runtime, record)
        else:
            deployed = runtime.state.get_deployment(record.flow, version)
            if deployed is None:
                raise KitaruNotFoundError(
                    f"flow {record.flow!r} has no version {version}; see its versions with "
                    f"`kitaru deployments list {record.flow}`."
                )
            flow_obj = blocking(aload_version, runtime, summary(deployed))
        replayed, outcome = blocking(Runner(runtime).replay, flow_obj, record, from_, overrides, args)
        return self._handle(replayed.id, outcome)

    def diff(self, a: str, b: str) -> ExecutionDiff:
        """Compare two executions input by input, checkpoint by checkpoint, wait by wait, and
        their results; returns a :class:`kitaru.diff.ExecutionDiff`."""
        from kitaru.diff import diff_executions

        return diff_executions(self._client._runtime, self.resolve(a), self.resolve(b))

    def graph(self, exec_id: str) -> LineageGraph:
        """The execution's lineage: which artifacts (inputs, outputs, answers, other executions'
        loaded artifacts) fed each checkpoint call; a :class:`kitaru.lineage.LineageGraph`."""
        from kitaru.lineage import build_graph

        return build_graph(self._state, self.resolve(exec_id))

    def events(
        self,
        exec_id: str,
        *,
        kinds: builtins.list[str] | None = None,
        checkpoint: str | None = None,
        correlation_ids: builtins.list[str] | None = None,
        since: str | None = None,
        reconnect: bool = True,
    ) -> Iterator[ExecutionEvent]:
        """Progress and custom events (``kitaru.progress``, ``kitaru.events.publish``) of an
        execution as they are published, until it stops running; see :func:`kitaru.events.watch`."""
        from kitaru.events import watch

        def read(full: str) -> tuple[str, builtins.list[Any]]:
            record = self._state.get_execution(full)
            return (record.status if record else "missing"), self._state.read_journal(full)

        return watch(
            read,
            self.resolve(exec_id),
            kinds=kinds,
            checkpoint=checkpoint,
            correlation_ids=correlation_ids,
            since=since,
            reconnect=reconnect,
        )

    def logs(
        self,
        exec_id: str,
        *,
        checkpoint: str | None = None,
        after: int = 0,
        source: str | None = None,
        limit: int | None = None,
    ) -> builtins.list[LogEntry]:
        """What an execution printed and logged, in order, per call.

        ``source="step"`` keeps what checkpoints wrote, ``source="runner"`` what the flow body
        wrote outside them (None: both); ``limit`` keeps the first that many entries.

        ``checkpoint`` keeps the calls of one checkpoint: a bare name (``step``) keeps every call of
        it (``step``, ``step:2``...), a numbered id (``step:2``) that call alone (``step:1`` is the
        first call, whose id is ``step``). A checkpoint the
        execution never called raises :class:`~kitaru.errors.KitaruNotFoundError` naming those it
        did (unless the execution is still running: it may call it yet). ``after`` skips entries
        up to a previous entry's ``seq``.
        """
        check_log_selection(checkpoint, source, limit)
        return select_logs(self._log_entries(exec_id, checkpoint, after), source, limit)

    def _log_entries(self, exec_id: str, checkpoint: str | None, after: int) -> builtins.list[LogEntry]:
        full = self.resolve(exec_id)
        # Naming a checkpoint needs every call the execution made (to refuse one it never made).
        journal = self._state.read_journal(full, after=0 if checkpoint is not None else after)
        entries = [
            LogEntry(
                r.call_id,
                (r.data or {}).get("stream", "stdout"),
                (r.data or {}).get("text", ""),
                r.ts,
                r.id or 0,
            )
            for r in journal
            if r.kind == "output" and (r.id or 0) > after
        ]
        if checkpoint is None:
            return entries
        wanted = _call_pattern(checkpoint)
        called = {
            r.call_id
            for r in journal
            if r.call_id and r.kind in ("checkpoint_completed", "checkpoint_failed", "output")
        }
        if not any(wanted.fullmatch(c) for c in called):
            record = self._state.get_execution(full)
            if record is None or record.status != "running":
                names = sorted({re.sub(r":\d+$", "", c) for c in called})
                raise KitaruNotFoundError(
                    f"execution {full} has no checkpoint call {checkpoint!r}; its checkpoints: "
                    f"{', '.join(names) or 'none'}. Give a name for every call of it, or name:N "
                    "for one call."
                )
        return [e for e in entries if e.call_id and wanted.fullmatch(e.call_id)]

    def cancel(self, exec_id: str) -> Execution:
        """Cancel a running or waiting execution, through the stack's orchestrator. A running one
        stops at its next checkpoint (an async flow at once)."""
        from kitaru._engine.handles import blocking

        blocking(self._client._orchestrator().cancel, self.resolve(exec_id))
        return self.get(exec_id)


class _Artifacts:
    def __init__(self, client: KitaruClient) -> None:
        self._client = client

    def preview(self, artifact_id: str, width: int = 200) -> str:
        """A short text preview of an artifact, read without loading it: JSON-like stored bytes
        (json, pydantic, dataclass values kept inline) are shown, cut to ``width`` characters;
        anything else is described, never unpickled (``kitaru artifacts get`` shows it whole)."""
        record = self._client._runtime.state.get_artifact(artifact_id)
        if record is None:
            raise KitaruNotFoundError(f"no artifact {artifact_id!r}.")
        text = None
        if record.inline is not None and record.serializer in ("json", "pydantic", "dataclass"):
            try:
                raw = record.inline.decode("utf-8")
                value = json.loads(raw)
                text = value if isinstance(value, str) else raw
            except (UnicodeDecodeError, ValueError):
                text = None
        if text is None:
            return f"({record.data_type}, {record.size} bytes: `kitaru artifacts get {record.id}` shows it)"
        text = " ".join(text.split()) if "\n" in text else text
        return text if len(text) <= width else text[: width - 4] + " ..."

    def _view(self, r: ArtifactRecord) -> Artifact:
        return Artifact(
            id=r.id,
            exec_id=r.exec_id,
            name=r.name,
            version=r.version,
            type=r.type,
            serializer=r.serializer,
            data_type=r.data_type,
            content_hash=r.content_hash,
            size=r.size,
            call_id=r.call_id,
            created_at=r.created_at,
            uri=r.uri,
            tags=list(r.tags),
            _record=r,
            _client=self._client,
        )

    def list(
        self,
        exec_id: str | None = None,
        *,
        name: str | None = None,
        type: str | None = None,
        tag: str | None = None,
        limit: int | None = None,
        kind: str | None = None,
        producing_call: str | None = None,
    ) -> list[Artifact]:
        """An execution's artifacts, in creation order; with ``tag``, the artifacts of any
        execution (of ``exec_id`` only, when given) saved with that tag, newest first (at most
        100 unless ``limit`` says).

        ``kind``: only those ``kitaru.save(..., type=KIND)`` stored (see :attr:`Artifact.kind`);
        ``producing_call``: only those of a checkpoint's calls (a name: every call of it;
        ``name:N``: that call); ``limit``: at most that many."""
        if limit is not None and limit < 1:
            raise KitaruUsageError(f"limit={limit}: give at least 1, or None for all of them.")
        found = self._list(exec_id, name=name, type=type, tag=tag, limit=limit)
        if kind is not None:
            found = [a for a in found if a.kind == kind]
        if producing_call is not None:
            wanted = _call_pattern(producing_call)
            found = [a for a in found if a.call_id is not None and wanted.fullmatch(a.call_id)]
        return found if limit is None else found[:limit]

    def _list(
        self, exec_id: str | None, *, name: str | None, type: str | None, tag: str | None, limit: int | None
    ) -> builtins.list[Artifact]:
        state = self._client._runtime.state
        if tag is not None:
            from kitaru.store import CatalogStore

            if not isinstance(self._client._runtime.astate, CatalogStore):
                raise KitaruUsageError(
                    "this stack's state store cannot find artifacts by tag; list an execution's "
                    "artifacts with `kitaru artifacts list <exec_id>` instead."
                )
            full_id = self._client.executions.resolve(exec_id) if exec_id is not None else None
            found = state.find_artifacts(tag=tag, limit=100 if limit is None else limit)  # type: ignore[attr-defined]
            return [
                self._view(r)
                for r in found
                if (full_id is None or r.exec_id == full_id)
                and (name is None or r.name == name)
                and (type is None or r.type == type)
            ]
        if exec_id is None:
            raise KitaruUsageError(
                "artifacts.list() needs an execution id, or a tag to search every execution by."
            )
        full = self._client.executions.resolve(exec_id)
        return [self._view(r) for r in state.list_artifacts(full, name=name, type=type)]

    def get(self, artifact_id: str) -> Artifact:
        """One artifact by id; ``.load()`` returns its value."""
        record = self._client._runtime.state.get_artifact(artifact_id)
        if record is None:
            raise KitaruNotFoundError(
                f"no artifact {artifact_id!r}. List an execution's artifacts with "
                "`kitaru artifacts list <exec_id>`."
            )
        return self._view(record)


class KitaruClient:
    """Entry point for inspecting and steering executions: ``.executions`` and ``.artifacts``.

    ``stack`` names the configured stack whose executions it sees (default: the active stack).
    ``read_only`` opens the state store for inspection only (listing, showing, fetching artifacts),
    so it works without write access; steering an execution then fails."""

    def __new__(
        cls, runtime: Runtime | None = None, *, stack: str | None = None, read_only: bool = False
    ) -> KitaruClient:
        # After `kitaru login` (or with KITARU_SERVER and KITARU_API_KEY set), a client that names
        # no runtime or stack talks to the server instead (same calls, same views).
        if runtime is None and stack is None:
            from kitaru.remote._login import current_login

            login = current_login()
            if login is not None:
                from kitaru.remote.client import RemoteClient

                return RemoteClient(login.url, login.key)  # type: ignore[return-value]
        return super().__new__(cls)

    def __init__(
        self, runtime: Runtime | None = None, *, stack: str | None = None, read_only: bool = False
    ) -> None:
        self._explicit = runtime
        self._orchestrator_cache: Orchestrator | None = None
        self._stack = stack
        self._read_only = read_only
        self.executions = _Executions(self)
        self.artifacts = _Artifacts(self)
        from kitaru.deployments import Deployments

        self.deployments = Deployments(self)

    @property
    def _runtime(self) -> Runtime:
        if self._explicit is not None:
            return self._explicit
        from kitaru._engine.runtime import get_runtime, read_only_runtime

        return read_only_runtime(self._stack) if self._read_only else get_runtime(self._stack)

    def _stack_name(self) -> str:
        """The name of the stack whose state store this client reads."""
        return self._runtime.stack_name

    def _orchestrator(self) -> Orchestrator:
        """The orchestrator of the client's stack (a client over an explicit runtime drives in
        this process)."""
        if self._orchestrator_cache is None:
            from kitaru.local_stack import LocalOrchestrator

            if self._explicit is not None:
                self._orchestrator_cache = LocalOrchestrator(runtime=self._explicit)
            else:
                from kitaru.stack import load_stack, orchestrator_of

                self._orchestrator_cache = orchestrator_of(load_stack(self._stack))
        return self._orchestrator_cache


class ExecutionHandle(FlowHandle):
    """What the client's steering calls (``input``, ``abort_wait``, ``retry``, ``resume``,
    ``replay``) return: a :class:`~kitaru.FlowHandle` (``wait()`` gives the result) that is also
    a view of the execution as it is now, as the original Kitaru's calls returned an
    ``Execution``: ``.status`` is an :class:`ExecutionStatus`, and every other ``Execution``
    attribute (``.original_exec_id``, ``.checkpoints``, ``.failure``, ``.refresh()``...) is read
    fresh from the store each time."""

    def __init__(self, exec_id: str, runtime: Runtime, outcome: Outcome | None, client: KitaruClient) -> None:
        super().__init__(exec_id, runtime, outcome)
        self._client = client

    @staticmethod
    def of(handle: FlowHandle) -> ExecutionHandle:
        assert isinstance(handle, ExecutionHandle)
        return handle

    def refresh(self) -> Execution:
        """The execution as it is now."""
        return self._client.executions.get(self.exec_id)

    def __getattr__(self, name: str) -> Any:
        # Only reached for names the handle itself lacks: the Execution view answers them.
        if name not in _EXECUTION_NAMES:
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        return getattr(self.refresh(), name)


#: What an ExecutionHandle reads from the Execution view.
_EXECUTION_NAMES = frozenset(
    {n for n in dir(Execution) if not n.startswith("_")} | set(Execution.__dataclass_fields__)
)


def _call_pattern(selector: str) -> re.Pattern[str]:
    """Which call ids a checkpoint selector means: a bare name every call of it (``step``,
    ``step:2``...), a numbered id (``step:2``) that call alone (``step:1`` is the first call,
    whose id is ``step``)."""
    numbered = re.fullmatch(r"(.+):(\d+)", selector)
    if numbered and int(numbered.group(2)) == 1:
        return re.compile(re.escape(numbered.group(1)) + "(:1)?")  # the first call is `name`
    if numbered:
        return re.compile(re.escape(selector))  # one numbered call
    return re.compile(re.escape(selector) + r"(:\d+)?")  # every call of the name


def _status_filter(status: str | None) -> str | None:
    """A status filter checked against the statuses there are (a typo would match nothing)."""
    if status is None:
        return None
    try:
        return ExecutionStatus(str(status).strip().lower()).value
    except ValueError:
        known = ", ".join(s.value for s in ExecutionStatus)
        raise KitaruUsageError(f"status={status!r} is no execution status; give one of {known}.") from None


def _execution_view(
    r: ExecutionRecord,
    calls: list[CheckpointCall],
    waits: list[Wait],
    flow_meta: dict[str, Any],
    client: KitaruClient | None = None,
) -> Execution:
    from kitaru._client_views import as_status, bind

    return bind(
        Execution(
            id=r.id,
            flow=r.flow,
            status=as_status(r.status),
            created_at=r.created_at,
            updated_at=r.updated_at,
            target=r.target,
            error=r.error,
            original_exec_id=r.original_exec_id,
            # The heartbeat's note of attempts in flight and the resolved options are bookkeeping,
            # not the user's metadata.
            metadata={
                **{k: v for k, v in r.metadata.items() if k not in (INFLIGHT, OPTIONS_METADATA)},
                **flow_meta,
            },
            checkpoints=tuple(calls),
            waits=tuple(waits),
            result_artifact=r.result_artifact,
        ),
        client,
    )


def _choose_wait(execution: Execution, name: str | None) -> Wait:
    from kitaru.store import _rules

    if execution.status == "cancelled":  # before naming waits: none of them is open now
        raise _rules.final_error(execution.id, execution.status, "take an answer")
    open_waits = execution.open_waits
    if name is not None:
        for w in execution.waits:
            if w.name == name:
                if w.status != "open":
                    raise KitaruStateError(
                        f"wait {name!r} of execution {execution.id} is {w.status.replace('_', ' ')}"
                        "; it takes no other answer."
                    )
                return w
        raise KitaruNotFoundError(
            f"execution {execution.id} has no wait {name!r}; open waits: "
            f"{', '.join(w.name for w in open_waits) or 'none'}."
        )
    if execution.status in {"completed", "failed", "cancelled"}:
        raise KitaruStateError(
            f"execution {execution.id} is {execution.status}: it has no open wait to answer."
        )
    if not open_waits:
        raise KitaruStateError(
            f"execution {execution.id} ({execution.status}) has no open wait to answer yet."
        )
    if len(open_waits) > 1:
        raise KitaruUsageError(
            f"execution {execution.id} has several open waits "
            f"({', '.join(w.name for w in open_waits)}); choose one with --wait NAME."
        )
    return open_waits[0]


def _drives_here(orchestrator: Orchestrator) -> bool:
    """Whether the orchestrator drives executions in this process (the local one)."""
    from kitaru.local_stack import LocalOrchestrator

    return isinstance(orchestrator, LocalOrchestrator)


def _handle(
    exec_id: str, runtime: Runtime, outcome: Outcome | None, client: KitaruClient | None = None
) -> FlowHandle:
    """The handle on an execution driven here (an :class:`ExecutionHandle` for a client's call);
    the flow's kitaru errors (a divergence, a bad answer) are raised as the driving call's own."""
    error = outcome.raise_interrupt().error if outcome is not None else None
    if isinstance(error, KitaruError):
        raise error
    if client is None:
        return FlowHandle(exec_id, runtime, outcome)
    return ExecutionHandle(exec_id, runtime, outcome, client)


def dumps_json(value: Any) -> str:
    return json.dumps(value, indent=2, default=str)


def check_log_selection(checkpoint: str | None, source: str | None, limit: int | None) -> None:
    """Refuse a ``logs()`` selection that cannot select anything (local and remote clients alike)."""
    if source not in (None, "step", "runner"):
        raise KitaruUsageError(f"source={source!r}: give 'step', 'runner', or None for both.")
    if source == "runner" and checkpoint is not None:
        raise KitaruUsageError("source='runner' is the flow body's output: it has no checkpoint.")
    if limit is not None and limit < 1:
        raise KitaruUsageError(f"limit={limit}: give at least 1, or None for every entry.")


def select_logs(entries: list[LogEntry], source: str | None, limit: int | None) -> list[LogEntry]:
    """The entries of one ``source`` (None: both), the first ``limit`` of them (None: all)."""
    if source is not None:
        entries = [e for e in entries if e.source == source]
    return entries if limit is None else entries[:limit]
