"""``@checkpoint(runtime="isolated")``: one call run in a process (or remote job) of its own.

Why a separate process: a call that may crash the interpreter (native code, a memory blow-up), or
that needs its own job on a cluster (a GPU pod), must not take the flow's runner down with it.

The parent (the flow's runner) commits a ``checkpoint_isolated`` record with the call's inputs as
an artifact *before* it starts the child, then waits. The child (``kitaru worker call EXEC CALL``:
a local subprocess, or a Job of the stack's orchestrator when it offers ``submit_call``) loads the
flow's code, runs the function with the recorded inputs and retries, and commits the call's outcome
itself. So the outcome is durable the moment the child commits: a parent killed after that finds it
in the journal on resume and never runs the call again; a parent killed while the child runs finds
the launch record on resume and waits for that child (a live local pid, or the Job of that name)
instead of starting another.

On a remote stack the orchestrator offers three methods, each keyed by the execution, the call
and the launch (1, then 2 when a relaunch follows a job that ended without an outcome):
``call_job_name`` (deterministic, recorded in the launch record before anything starts),
``submit_call`` (starts the job, or finds it started: a second submit of a launch starts nothing)
and ``call_state`` (a :class:`kitaru._remote_jobs.CallState`: missing, running, succeeded or
failed with the platform's reason). A resumed parent reads the recorded launch's job: running, it
waits for it; missing (the parent died before its submit reached the platform), it submits it;
ended without an outcome, it launches the call again under the next launch number.

What the child does not have: the flow's context inside the function (``kitaru.log``/``save``/
``wait`` are flow calls of the parent; an isolated function gets its inputs and returns a value).
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import time
from typing import TYPE_CHECKING, Any

from kitaru.errors import KitaruExecutionError, KitaruUsageError
from kitaru.store import JournalRecord

if TYPE_CHECKING:
    from kitaru._remote_jobs import CallState
    from kitaru.store import ExecutionRecord

    from .checkpoint import Checkpoint
    from .context import Call, ExecutionContext
    from .runtime import Runtime

__all__ = ["arun_call", "run_isolated"]

#: The journal record a parent commits before it starts an isolated call's child (with the
#: call's inputs as its artifact), and the one naming the local child's pid once it exists.
LAUNCHED = "checkpoint_isolated"
RUNNING = "isolated_started"
_POLL = 0.2
#: Seconds between reads of a remote job's state (the journal is read every ``_POLL``): the
#: outcome arrives through the journal; the platform is asked only whether the job still runs.
_STATE_EVERY = 2.0
#: Seconds after its own submit during which a parent takes a job the platform does not list yet
#: for one that is starting (listing is eventually consistent on some platforms).
_SUBMIT_GRACE = 60.0

logger = logging.getLogger("kitaru.isolated")


def run_isolated(
    cp: Checkpoint[Any, Any], ctx: ExecutionContext, call: Call, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    """The parent's side (blocking; never on the Runner's loop): the call's value, from the
    journal, the cache, or a child that runs it."""
    fingerprint, lineage = ctx.describe_inputs(args, kwargs)
    hit, value = cp._replayed(ctx, call, fingerprint)
    if hit:
        return value
    key = cp._cache_key(ctx, fingerprint, args, kwargs)
    if key is not None:
        hit, value = cp._cache_lookup(ctx, call, key, fingerprint, lineage)
        if hit:
            return value
    store: Any = ctx.runtime.astate
    journal: list[JournalRecord] = ctx.state_call(store.read_journal, ctx.exec_id)
    launched = [r for r in journal if r.kind == LAUNCHED and r.call_id == call.call_id]
    child = _Child.find(ctx, launched[-1]) if launched else None
    if child is None:
        inputs = ctx.make_artifact(
            name=f"{cp.name}.inputs",
            version=len(launched) + 1,
            type="isolated_input",
            value={"args": list(args), "kwargs": kwargs},
            call_id=call.call_id,
        )
        data: dict[str, Any] = {
            "fp": fingerprint,
            "module": cp.fn.__module__,
            "qualname": cp.qualname,
            "started_at": time.time(),
        }
        if lineage:
            data["inputs"] = lineage
        if cp.type is not None:
            data["type"] = cp.type
        child = _Child.start(ctx, call, launch=len(launched) + 1)
        data.update(child.where)
        ctx.commit(
            [
                JournalRecord(
                    kind=LAUNCHED,
                    call_id=call.call_id,
                    seq=call.seq,
                    name=call.name,
                    artifact_id=inputs.id,
                    data=data,
                    ts=time.time(),
                )
            ],
            [inputs],
        )
        child.go()
    outcome = child.wait()
    if outcome.kind != "checkpoint_completed":
        error = (outcome.data or {}).get("error") or "it ended without recording an outcome"
        raise KitaruExecutionError(
            f"isolated checkpoint {call.call_id!r} failed in its own process: {error}. "
            f"`kitaru executions get {ctx.exec_id}` shows its attempts.",
            exec_id=ctx.exec_id,
            error=str(error),
        )
    artifact = ctx.stored_artifact(outcome)
    value = ctx.load_artifact(artifact)
    ctx.remember_output(value, artifact)
    if key is not None:
        ctx.state_call(store.put_cache_entry, cp._cache_entry(ctx, call, key, outcome.artifact_id or ""))
    return value


class _Child:
    """The process or job running one isolated call, seen from the parent."""

    def __init__(self, ctx: ExecutionContext, call_id: str, where: dict[str, Any]) -> None:
        self.ctx = ctx
        self.call_id = call_id
        self.where = where
        self.proc: subprocess.Popen[bytes] | None = None
        self.orchestrator: Any = None
        self.command: list[str] | None = None
        #: Which launch of the call a remote job runs (its name and lookups are keyed by it).
        self.launch = int(where.get("launch") or 1)
        self.submitted_at: float | None = None
        self.state: CallState | None = None
        self.state_read = 0.0

    @classmethod
    def start(cls, ctx: ExecutionContext, call: Call, launch: int = 1) -> _Child:
        """A child for ``call``, not yet started (:meth:`go` starts it, after the launch record
        is committed: a child must never run without a record saying it may be running)."""
        runtime = ctx.runtime
        orchestrator = _remote_orchestrator(runtime)
        if orchestrator is not None:
            name = orchestrator.call_job_name(ctx.exec_id, call.call_id, launch)
            child = cls(ctx, call.call_id, {"job": name, "launch": launch})
            child.orchestrator = orchestrator
            return child
        if runtime.stack is None:
            raise KitaruUsageError(
                f"checkpoint {call.call_id!r} is isolated, and this runtime was built from stores "
                "directly: a child process could not open them. Run the flow on a configured stack "
                "(`kitaru stack list`), or drop runtime='isolated'."
            )
        child = cls(ctx, call.call_id, {"host": socket.gethostname()})
        child.command = [sys.executable, "-m", "kitaru.cli", "worker", "call", ctx.exec_id, call.call_id]
        return child

    def go(self) -> None:
        if self.orchestrator is not None:
            self.ctx.blocking(self.orchestrator.submit_call, self.ctx.exec_id, self.call_id, self.launch)
            self.submitted_at = time.monotonic()
            return
        assert self.command is not None
        env = {**os.environ, "KITARU_STACK": self.ctx.runtime.stack_name}
        self.proc = subprocess.Popen(self.command, env=env)
        # Where it runs, for a resumed parent: recorded once the pid exists.
        self.ctx.commit(
            [
                JournalRecord(
                    kind=RUNNING,
                    call_id=self.call_id,
                    data={"pid": self.proc.pid, **self.where},
                    ts=time.time(),
                )
            ]
        )
        self.where["pid"] = self.proc.pid

    @classmethod
    def find(cls, ctx: ExecutionContext, launched: JournalRecord) -> _Child | None:
        """The child a previous parent started for this call, if it may still be running."""
        data = launched.data or {}
        call_id = launched.call_id or ""
        if data.get("job"):
            orchestrator = _remote_orchestrator(ctx.runtime)
            if orchestrator is None:
                return None if _outcome(ctx, call_id) is None else cls(ctx, call_id, data)
            child = cls(ctx, call_id, {"job": data["job"], "launch": data.get("launch") or 1})
            child.orchestrator = orchestrator
            if _outcome(ctx, call_id) is not None:
                return child
            state = child._job_state()
            job = data["job"]
            if state.phase == "running":
                # The job a previous parent started: wait for it, start no other.
                logger.info("kitaru: isolated call %s: waiting for its job %s, started before", call_id, job)
                return child
            if state.phase == "missing":
                # The previous parent died between its launch record and its submit (or the
                # platform forgot a job that never committed): submit that launch now.
                logger.info("kitaru: isolated call %s: its job %s is not there; submitting it", call_id, job)
                child.go()
                return child
            # It ended; it may have committed meanwhile. Else a new launch runs the call again.
            if _outcome(ctx, call_id) is not None:
                return child
            logger.info(
                "kitaru: isolated call %s: its job %s ended without an outcome (%s%s); launching it again",
                call_id,
                job,
                state.phase,
                f": {state.reason}" if state.reason else "",
            )
            return None
        store: Any = ctx.runtime.astate
        journal: list[JournalRecord] = ctx.state_call(store.read_journal, ctx.exec_id)
        pid = None
        for r in journal:
            if r.kind == RUNNING and r.call_id == call_id and r.data:
                pid = r.data.get("pid")
        if data.get("host") != socket.gethostname() or not isinstance(pid, int) or not _alive(pid):
            return None if _outcome(ctx, call_id) is None else cls(ctx, call_id, data)
        return cls(ctx, call_id, {**data, "pid": pid})

    def wait(self) -> JournalRecord:
        """Block until the call's outcome is in the journal; a child that ended without one
        gives a synthetic failed record."""
        while True:
            outcome = _outcome(self.ctx, self.call_id)
            if outcome is not None:
                return outcome
            if not self._running():
                outcome = _outcome(self.ctx, self.call_id)  # it may have committed, then exited
                if outcome is not None:
                    return outcome
                return JournalRecord(
                    kind="checkpoint_failed",
                    call_id=self.call_id,
                    data={"error": f"its {self._what()} ended without recording an outcome"},
                )
            time.sleep(_POLL)

    def _running(self) -> bool:
        if self.proc is not None:
            return self.proc.poll() is None
        if self.orchestrator is not None:
            if time.monotonic() - self.state_read < _STATE_EVERY and self.state is not None:
                return self.state.phase != "succeeded" and self.state.phase != "failed"
            state = self._job_state()
            if state.phase == "missing" and self.submitted_at is not None:
                return time.monotonic() - self.submitted_at < _SUBMIT_GRACE
            return state.phase == "running"
        pid = self.where.get("pid")
        return isinstance(pid, int) and _alive(pid)

    def _job_state(self) -> CallState:
        """The remote job's state, read from the platform now."""
        state: CallState = self.ctx.blocking(
            self.orchestrator.call_state, self.ctx.exec_id, self.call_id, self.launch
        )
        self.state, self.state_read = state, time.monotonic()
        return state

    def _what(self) -> str:
        if self.orchestrator is not None:
            state = self.state
            said = f" ({state.phase}: {state.reason})" if state is not None and state.reason else ""
            return f"job {self.where.get('job')}{said}"
        code = self.proc.returncode if self.proc is not None else None
        return f"process (pid {self.where.get('pid')}, exit code {code})"


def _outcome(ctx: ExecutionContext, call_id: str) -> JournalRecord | None:
    store: Any = ctx.runtime.astate
    journal: list[JournalRecord] = ctx.state_call(store.read_journal, ctx.exec_id)
    for r in journal:
        if r.call_id != call_id:
            continue
        if r.kind == "checkpoint_completed":
            return r
        if r.kind == "checkpoint_failed" and not (r.data or {}).get("will_retry"):
            return r
    return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # our own child that exited but was not reaped yet is a zombie: not running
        done, _ = os.waitpid(pid, os.WNOHANG)
        return done == 0
    except ChildProcessError:
        pass
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def _remote_orchestrator(runtime: Runtime) -> Any:
    """The stack's orchestrator when it runs isolated calls as jobs of their own."""
    if runtime.stack is None:
        return None
    from kitaru.stack import orchestrator_of

    orchestrator = orchestrator_of(runtime.stack)
    return orchestrator if hasattr(orchestrator, "submit_call") else None


# -- the child's side ---------------------------------------------------------------------------


async def arun_call(runtime: Runtime, record: ExecutionRecord, call_id: str) -> str:
    """Run isolated call ``call_id`` of execution ``record`` here and commit its outcome.
    Returns ``done`` (it completed, now or before), or ``failed`` (its last attempt failed)."""
    import anyio
    import anyio.to_thread

    from .checkpoint import Checkpoint
    from .context import Call, CallFrame
    from .loading import aload_execution_flow

    journal = await runtime.astate.read_journal(record.id)
    if any(r.call_id == call_id and r.kind == "checkpoint_completed" for r in journal):
        return "done"  # a retried job of a call that committed: nothing to run again
    launched = [r for r in journal if r.kind == LAUNCHED and r.call_id == call_id]
    if not launched:
        raise KitaruUsageError(f"execution {record.id} has no isolated call {call_id!r} to run.")
    launch = launched[-1]
    data = launch.data or {}
    flow = await aload_execution_flow(runtime, record)
    cp = _find_checkpoint(flow.fn.__globals__, str(data.get("module")), str(data.get("qualname")))
    if not isinstance(cp, Checkpoint):
        raise KitaruUsageError(
            f"execution {record.id}: isolated call {call_id!r} names {data.get('qualname')!r}, "
            "which is not a checkpoint in the flow's code any more. Restore the code it ran with."
        )
    inputs_artifact = await runtime.astate.get_artifact(launch.artifact_id or "")
    if inputs_artifact is None:
        raise KitaruUsageError(f"execution {record.id}: the inputs of isolated call {call_id!r} are gone.")
    inputs = await runtime.aload_artifact(inputs_artifact)
    call = Call(call_id, launch.seq or 0, launch.name or cp.qualname)
    attempt = 1
    while True:
        started = cp._started(call, attempt, str(data.get("fp", "")), list(data.get("inputs") or []))
        if started.data is not None:
            started.data.update({k: data[k] for k in ("type",) if k in data}, pid=os.getpid())
        try:
            if cp.is_async:
                value = await cp.fn(*inputs["args"], **inputs["kwargs"])
            else:
                value = await anyio.to_thread.run_sync(lambda: cp.fn(*inputs["args"], **inputs["kwargs"]))
        except Exception as exc:
            frame: Any = CallFrame(call, None)  # type: ignore[arg-type]  # _failed reads only call, records
            records, delay = cp._failed(frame, started, exc)
            await runtime.astate.commit(record.id, records)
            if delay is None:
                return "failed"
            await anyio.sleep(delay)
            attempt += 1
            continue
        version = int(call_id.rpartition(":")[2]) if ":" in call_id else 1
        artifact = await runtime.amake_artifact(
            record.id, name=cp.name, version=version, type="output", value=value, call_id=call_id
        )
        if cp.type is not None:
            artifact.tags = [cp.type]
        done = JournalRecord(
            kind="checkpoint_completed",
            call_id=call_id,
            seq=call.seq,
            name=call.name,
            attempt=attempt,
            artifact_id=artifact.id,
            data=started.data,
            ts=time.time(),
        )
        await runtime.astate.commit(record.id, [done], [artifact])
        return "done"


def _find_checkpoint(flow_globals: dict[str, Any], module: str, qualname: str) -> Any:
    """The object ``qualname`` names in ``module``: the flow's own module when the checkpoint was
    defined beside it (a script runs as ``__main__``), else that module imported."""
    if flow_globals.get("__name__") == module or module == "__main__":
        scope: Any = flow_globals
    else:
        import importlib

        scope = vars(importlib.import_module(module))
    head, *rest = qualname.split(".")
    obj = scope.get(head)
    for part in rest:
        obj = getattr(obj, part, None)
    return obj
