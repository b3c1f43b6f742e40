"""``@flow``: the durable agent boundary, its runner, and the handles it returns."""

from __future__ import annotations

import functools
import hashlib
import importlib
import importlib.util
import sys
import time
import traceback
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar, overload

from kitaru import serialization
from kitaru._ids import MAX_ID_LENGTH, new_id
from kitaru.errors import (
    KitaruConflictError,
    KitaruError,
    KitaruExecutionCancelledError,
    KitaruExecutionError,
    KitaruLeaseError,
    KitaruNotFoundError,
    KitaruStateError,
    KitaruStoreError,
    KitaruTimeoutError,
    KitaruUsageError,
)
from kitaru.store import TERMINAL_STATUSES, ArtifactRecord, ExecutionRecord, JournalRecord

from .capture import capturing
from .context import ExecutionContext, _Cancelled, _current_exec, _Suspend, logger, running_loop
from .interrupted import note_interrupted
from .runtime import Runtime, get_runtime

if TYPE_CHECKING:
    import asyncio
    import inspect

__all__ = ["AsyncFlowHandle", "Flow", "FlowHandle", "flow", "load_flow"]

P = ParamSpec("P")
R = TypeVar("R")

_REGISTRY: dict[str, Flow[Any, Any]] = {}

#: A script that ran as ``__main__`` is imported again under this prefix to resume its flows.
SCRIPT_MODULE_PREFIX = "__kitaru_main_"

# The code kitaru is importing to resume an execution (a module or script path), while it does.
# A context variable, not a global: another thread of this process may start flows meanwhile.
_loading: ContextVar[str | None] = ContextVar("kitaru_loading_code", default=None)
_warned_skips: set[str] = set()


def _import_target(fn: Callable[..., Any]) -> tuple[str, str | None]:
    """Where another process finds this function: ``module:qualname`` plus the sys.path root, or
    the absolute path of the script for functions defined in ``__main__``.

    A script re-imported by :func:`_load_script` (its module named ``__kitaru_main_...``) keeps
    its path form too: a replay created from that import must name the script, which any process
    can load, not the private module name, which only this process has."""
    module_name, qualname = fn.__module__, fn.__qualname__
    module = sys.modules.get(module_name)
    file = getattr(module, "__file__", None)
    # A script this process loaded under its private name (to resume or replay it) is still
    # that script: record its path, which every process can load, not the private name.
    if module_name == "__main__" or module_name.startswith(SCRIPT_MODULE_PREFIX):
        if file is None:
            return f"__main__:{qualname}", None
        path = Path(file).resolve()
        return f"{path}:{qualname}", str(path.parent)
    if file is None:
        return f"{module_name}:{qualname}", None
    root = Path(file).resolve().parent
    depth = module_name.count(".") + (1 if Path(file).name == "__init__.py" else 0)
    for _ in range(depth):
        root = root.parent
    return f"{module_name}:{qualname}", str(root)


@contextmanager
def _loading_code(location: str) -> Iterator[None]:
    """Mark that ``location`` is being imported to resume an execution (see :func:`_skipped`)."""
    token = _loading.set(location)
    try:
        yield
    finally:
        _loading.reset(token)


def _skipped(flow_obj: Flow[Any, Any], call: str) -> bool:
    """Whether ``flow.<call>()`` runs while kitaru imports code to resume an execution; it is then
    skipped (and said once per script or module).

    Such a call is the script's own top-level code (``my_flow.run(...)`` without an
    ``if __name__ == "__main__":`` guard): running it would start a second execution, and pay for
    its checkpoints again, every time something resumes the first."""
    location = _loading.get()
    if location is None:
        return False
    if location not in _warned_skips:
        _warned_skips.add(location)
        logger.warning(
            "kitaru: %s.%s() was skipped while kitaru imported %s to resume an execution: the call "
            "is top-level code, and running it would start a second execution (paying for its "
            'checkpoints again). Put it under `if __name__ == "__main__":` so importing the '
            "file runs nothing.",
            flow_obj.name,
            call,
            location,
        )
    return True


def load_flow(target: str, sys_path: str | None) -> Flow[Any, Any]:
    """Find the flow a journal names, importing its module or script if this process lacks it.

    While the code is imported, calls it makes to ``run``/``start``/``replay`` are skipped: see
    :func:`_skipped`."""
    if target in _REGISTRY:
        return _REGISTRY[target]
    location, _, qualname = target.rpartition(":")
    if "<locals>" in qualname:
        raise KitaruUsageError(
            f"flow {qualname!r} was defined inside a function, so no other process can import "
            "it to resume. Define flows at module level."
        )
    if sys_path and sys_path not in sys.path:
        sys.path.insert(0, sys_path)
    try:
        with _loading_code(location):
            if location.endswith(".py"):
                module = _load_script(location)
            else:
                module = importlib.import_module(location)
        obj: Any = module
        for part in qualname.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError, OSError) as exc:
        raise KitaruUsageError(
            f"cannot load flow {target!r} to resume it: {exc}. Run from an environment where the "
            "flow's code is installed or present at that path."
        ) from exc
    if not isinstance(obj, Flow):
        raise KitaruUsageError(f"{target!r} is not a @flow (found {type(obj).__qualname__}).")
    _REGISTRY[target] = obj
    return obj


def _load_script(path: str) -> ModuleType:
    """Import a script that ran as ``__main__`` under a private name (its main block stays idle)."""
    name = SCRIPT_MODULE_PREFIX + hashlib.sha256(path.encode()).hexdigest()[:12]
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"no loadable script at {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    # Values the script stored with types from __main__ resolve against it from now on.
    serialization.MAIN_ALIASES.append(module)
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        serialization.MAIN_ALIASES.remove(module)
        raise
    return module


# -- outcomes and finishing ----------------------------------------------------------------------


@dataclass(slots=True)
class Started:
    """The arguments a flow body is called with, and the input artifact of each value."""

    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    inputs: list[tuple[Any, ArtifactRecord]]


@dataclass(slots=True)
class Outcome:
    """How one drive of an execution ended, in this process."""

    status: str
    value: Any = None
    error: BaseException | None = None


def _settle_value(ctx: ExecutionContext, value: Any) -> Outcome:
    try:
        artifact = ctx.runtime.make_artifact(
            ctx.exec_id, name="result", version=1, type="result", value=value, call_id=None
        )
    except KitaruError as exc:
        return _settle_error(ctx, exc)
    _, lineage = ctx.describe_inputs((value,), {})
    ctx.commit(
        [
            JournalRecord(
                kind="flow_completed",
                artifact_id=artifact.id,
                data={"inputs": lineage} if lineage else None,
                ts=time.time(),
            )
        ],
        [artifact],
        status="completed",
        result_artifact=artifact.id,
        release_lease=True,
    )
    return Outcome("completed", value=value)


def _settle_error(ctx: ExecutionContext, exc: Exception) -> Outcome:
    message = f"{type(exc).__qualname__}: {exc}"
    ctx.commit(
        [
            JournalRecord(
                kind="flow_failed",
                data={"error": message, "traceback": "".join(traceback.format_exception(exc))},
                ts=time.time(),
            )
        ],
        status="failed",
        error=message,
        release_lease=True,
    )
    return Outcome("failed", error=exc)


def _settle_cancelled(ctx: ExecutionContext) -> Outcome:
    try:
        ctx.commit([JournalRecord(kind="flow_cancelled", ts=time.time())], release_lease=True, unwind=False)
    except KitaruLeaseError:
        pass  # nobody holds it any more (cancelled while it was waiting): nothing left to release
    return Outcome("cancelled")


def _settle(ctx: ExecutionContext, value: Any, exc: BaseException | None) -> Outcome | None:
    """Record how the body ended. None means: an answer arrived while suspending, run again.

    A cancel that lands while the body ends wins: the store refuses to turn a cancelled execution
    into ``completed``, ``failed`` or ``waiting``, and the runner records that it stopped instead.
    """
    try:
        return _settle_as(ctx, value, exc)
    except _Cancelled:
        return _settle_cancelled(ctx)
    except KitaruStateError:
        record = ctx.state.get_execution(ctx.exec_id)
        if record is not None and record.status == "cancelled":
            ctx.runtime.saw_cancel(ctx.exec_id)
            return _settle_cancelled(ctx)
        raise


def _settle_as(ctx: ExecutionContext, value: Any, exc: BaseException | None) -> Outcome | None:
    if exc is None:
        return _settle_value(ctx, value)
    if isinstance(exc, _Suspend):
        ctx.commit([])  # flush anything pending before the process lets go (and see a cancel)
        if ctx.state.suspend(ctx.exec_id, ctx.runtime.owner, ctx.suspended_on):
            return Outcome("waiting")
        return None
    if isinstance(exc, _Cancelled):
        return _settle_cancelled(ctx)
    if isinstance(exc, KitaruLeaseError | KitaruConflictError):
        # Another runner owns the execution now: stop without writing anything more.
        return Outcome("lost", error=exc)
    if isinstance(exc, Exception):
        return _settle_error(ctx, exc)
    # KeyboardInterrupt, SystemExit: leave the execution running and resumable, lease released.
    ctx.state.commit(ctx.exec_id, [], owner=ctx.runtime.owner, release_lease=True)
    raise exc


def _pass_context(
    runtime: Runtime, execution: ExecutionRecord, started: Started, journal: list[JournalRecord] | None
) -> ExecutionContext:
    """A fresh view of the journal for one pass of the body, with the flow's inputs known (so
    passing one to a checkpoint records lineage)."""
    if journal is None:
        journal = runtime.state.read_journal(execution.id)
    ctx = ExecutionContext(runtime, execution, journal)
    for value, artifact in started.inputs:
        ctx.remember_output(value, artifact)
    return ctx


def _drive_sync(
    flow: Flow[Any, Any],
    runtime: Runtime,
    execution: ExecutionRecord,
    started: Started,
    journal: list[JournalRecord] | None,
) -> Outcome:
    runtime.track(execution.id)
    try:
        journal = note_interrupted(runtime, execution, journal)
        while True:
            ctx = _pass_context(runtime, execution, started, journal)
            journal = None  # a second pass (an answer came while suspending) rereads it
            token = _current_exec.set(ctx)
            value, error = None, None
            try:
                with capturing():
                    try:
                        value = flow.fn(*started.args, **started.kwargs)
                    finally:
                        ctx.drain_threads()
            except BaseException as exc:
                error = exc
            finally:
                _current_exec.reset(token)
                ctx.close()
            outcome = _settle(ctx, value, error)
            if outcome is not None:
                return outcome
    finally:
        runtime.untrack(execution.id)


async def _drive_async(
    flow: Flow[Any, Any],
    runtime: Runtime,
    execution: ExecutionRecord,
    started: Started,
    journal: list[JournalRecord] | None,
) -> Outcome:
    runtime.track(execution.id)
    try:
        journal = note_interrupted(runtime, execution, journal)
        while True:
            ctx = _pass_context(runtime, execution, started, journal)
            journal = None
            import asyncio

            ctx.main_task = asyncio.current_task()
            token = _current_exec.set(ctx)
            value, error = None, None
            try:
                with capturing():
                    try:
                        value = await flow.fn(*started.args, **started.kwargs)
                    finally:
                        await ctx.drain_tasks()
                        ctx.drain_threads()
            except BaseException as exc:
                error = exc
            finally:
                _current_exec.reset(token)
                ctx.close()
            outcome = _settle(ctx, value, error)
            if outcome is not None:
                return outcome
    finally:
        runtime.untrack(execution.id)


# -- handles ----------------------------------------------------------------------------------


def _unreachable(exec_id: str, last_status: str | None, exc: KitaruStoreError) -> KitaruStoreError:
    """The error a handle raises when the store fails under it: which execution, where it was last
    seen, and the commands that pick it up once the store is back (the cause is chained)."""
    seen = f"it was last seen {last_status}" if last_status else "its state was never read"
    return KitaruStoreError(
        f"execution {exec_id}: the state store failed while this handle waited for it ({exc}); "
        f"{seen}. Once the store is reachable, `kitaru executions get {exec_id}` shows where it "
        f"is: `kitaru executions resume {exec_id}` continues it if it was interrupted, "
        f"`kitaru executions retry {exec_id}` if it failed."
    )


def _result_of(runtime: Runtime, exec_id: str, local: Outcome | None, last_status: str | None = None) -> Any:
    """The value of a finished execution, or the error that says why there is none."""
    try:
        record = runtime.state.get_execution(exec_id)
        if record is not None and record.status == "completed":
            last_status = record.status
            if local is not None and local.status == "completed":
                return local.value
            artifact = runtime.state.get_artifact(record.result_artifact or "")
            assert artifact is not None, f"result artifact of {exec_id} is missing"
            return runtime.load_artifact(artifact)
    except KitaruStoreError as exc:
        if isinstance(exc, KitaruLeaseError | KitaruConflictError):
            raise
        raise _unreachable(exec_id, last_status, exc) from exc
    if record is None:
        raise KitaruNotFoundError(f"no execution {exec_id!r}")
    if record.status == "cancelled":
        raise KitaruExecutionCancelledError(f"execution {exec_id} was cancelled.", exec_id=exec_id)
    cause = local.error if local is not None else None
    if isinstance(cause, KitaruError):
        raise cause
    raise KitaruExecutionError(
        f"execution {exec_id} failed: {record.error}. See `kitaru executions get {exec_id}`; "
        f"after fixing the cause, `kitaru executions retry {exec_id}` continues it.",
        exec_id=exec_id,
        error=record.error,
    ) from cause


class FlowHandle:
    """A handle on an execution, returned by ``flow.run()`` and the client."""

    def __init__(self, exec_id: str, runtime: Runtime, outcome: Outcome | None = None) -> None:
        self.exec_id = exec_id
        self._runtime = runtime
        self._outcome = outcome

    def __repr__(self) -> str:
        return f"<FlowHandle {self.exec_id} {self.status}>"

    @property
    def status(self) -> str:
        """The execution's current status, read from the store."""
        record = self._runtime.state.get_execution(self.exec_id)
        return record.status if record else "unknown"

    def wait(self, timeout: float | None = None) -> Any:
        """Block until the execution finishes and return its result.

        A failed execution raises :class:`KitaruExecutionError` (the flow's exception is its
        ``__cause__``); a cancelled one :class:`KitaruExecutionCancelledError`. A waiting execution
        is polled until someone answers and it finishes, or ``timeout`` seconds pass
        (:class:`KitaruTimeoutError`).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = 0.01
        last = self._outcome.status if self._outcome is not None else None
        while (last := self._poll(last)) not in TERMINAL_STATUSES:
            if deadline is not None and time.monotonic() >= deadline:
                raise KitaruTimeoutError(f"execution {self.exec_id} is still {last} after {timeout} s.")
            time.sleep(delay)
            delay = min(delay * 2, 0.5)
        return _result_of(self._runtime, self.exec_id, self._outcome, last)

    def _poll(self, last: str | None) -> str:
        """The status now; a store failure names the execution and the last status seen."""
        try:
            return self.status
        except KitaruStoreError as exc:
            raise _unreachable(self.exec_id, last, exc) from exc

    get = wait


class AsyncFlowHandle:
    """A handle on an execution started with ``await flow.start()``."""

    def __init__(self, exec_id: str, runtime: Runtime, task: asyncio.Task[Outcome] | None) -> None:
        self.exec_id = exec_id
        self._runtime = runtime
        self._task = task

    def __repr__(self) -> str:
        return f"<AsyncFlowHandle {self.exec_id} {self.status}>"

    @property
    def status(self) -> str:
        record = self._runtime.state.get_execution(self.exec_id)
        return record.status if record else "unknown"

    async def result(self, timeout: float | None = None) -> Any:  # noqa: ASYNC109 - mirrors wait()
        """Await the execution's end and return its result (errors as in FlowHandle.wait)."""
        import asyncio

        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        outcome = None
        if self._task is not None:
            outcome = await asyncio.wait_for(asyncio.shield(self._task), timeout)
        delay = 0.01
        last = outcome.status if outcome is not None else None
        while (last := self._poll(last)) not in TERMINAL_STATUSES:
            if deadline is not None and loop.time() >= deadline:
                raise KitaruTimeoutError(f"execution {self.exec_id} is still {last} after {timeout} s.")
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.5)
        return _result_of(self._runtime, self.exec_id, outcome, last)

    def _poll(self, last: str | None) -> str:
        try:
            return self.status
        except KitaruStoreError as exc:
            raise _unreachable(self.exec_id, last, exc) from exc


class _SkippedFlowHandle(FlowHandle):
    """What ``run()``/``replay()`` return when the call was skipped (see :func:`_skipped`):
    nothing ran, so there is no execution; ``status`` is ``skipped`` and ``wait()`` gives None."""

    def __init__(self) -> None:  # no runtime: nothing is ever read
        self.exec_id = ""
        self._outcome = None

    def __repr__(self) -> str:
        return "<FlowHandle skipped>"

    @property
    def status(self) -> str:
        return "skipped"

    def wait(self, timeout: float | None = None) -> Any:
        return None

    get = wait


class _SkippedAsyncFlowHandle(AsyncFlowHandle):
    """What ``await start()`` returns when the call was skipped (see :func:`_skipped`)."""

    def __init__(self) -> None:
        self.exec_id = ""
        self._task = None

    def __repr__(self) -> str:
        return "<AsyncFlowHandle skipped>"

    @property
    def status(self) -> str:
        return "skipped"

    async def result(self, timeout: float | None = None) -> Any:  # noqa: ASYNC109 - mirrors wait()
        return None


# -- the decorator --------------------------------------------------------------------------------


class Flow(Generic[P, R]):
    """A function made a durable flow by :func:`flow`."""

    fn: Callable[..., Any]
    name: str
    target: str
    sys_path: str | None

    def __init__(self, fn: Callable[P, R], *, name: str | None = None) -> None:
        import inspect

        if isinstance(fn, Flow):
            raise KitaruUsageError(f"{fn.target!r} is already a flow; apply @flow once.")
        if not callable(fn) or inspect.isclass(fn):
            raise KitaruUsageError(f"@flow needs a function, got {fn!r}.")
        if inspect.isgeneratorfunction(fn) or inspect.isasyncgenfunction(fn):
            raise KitaruUsageError(f"@flow cannot wrap generator {fn.__qualname__!r}.")
        self.fn = fn
        self.name = name or fn.__name__
        self.is_async = inspect.iscoroutinefunction(fn)
        self.signature = inspect.signature(fn)
        self.target, self.sys_path = _import_target(fn)
        functools.update_wrapper(self, fn)
        _REGISTRY[self.target] = self

    def __repr__(self) -> str:
        return f"<flow {self.name!r} ({self.target})>"

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        raise KitaruUsageError(
            f"flow {self.name!r} is not called directly: use `{self.name}.run(...)` (returns a "
            f"handle; `.wait()` gives the result) or `await {self.name}.start(...)` in async code."
        )

    # -- starting ---------------------------------------------------------------------------

    def _bind(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> inspect.BoundArguments:
        try:
            bound = self.signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise KitaruUsageError(f"flow {self.name!r}: {exc} (signature {self.signature})") from None
        bound.apply_defaults()
        return bound

    def _create(
        self,
        runtime: Runtime,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        execution_id: str | None,
        *,
        original: ExecutionRecord | None = None,
        reused_inputs: Sequence[ArtifactRecord] = (),
        seed: Sequence[JournalRecord] = (),
        extra_artifacts: Sequence[ArtifactRecord] = (),
        metadata: dict[str, Any] | None = None,
    ) -> tuple[ExecutionRecord, bool, Started]:
        """Create the execution (leased to this process) with its input artifacts.

        A replay passes the ``original`` execution, the original input artifacts it keeps
        (``reused_inputs``, referenced rather than copied) and its ``seed`` journal.
        """
        if execution_id is not None and not execution_id.strip():
            raise KitaruUsageError(
                f"flow {self.name!r}: execution_id={execution_id!r} is empty, and an execution id "
                "cannot be. "
                "Pass a non-empty id to make the start idempotent, or leave it out for a new one."
            )
        if execution_id is not None and len(execution_id) > MAX_ID_LENGTH:
            raise KitaruUsageError(
                f"flow {self.name!r}: execution_id is {len(execution_id)} characters long; ids are "
                f"at most {MAX_ID_LENGTH}. Derive a shorter one (e.g. a hash of the long key)."
            )
        bound = self._bind(args, kwargs)
        exec_id = execution_id or new_id()
        now = time.time()
        reused = {a.name: a for a in reused_inputs}
        inputs = [
            reused.get(param)
            or runtime.make_artifact(exec_id, name=param, version=1, type="input", value=value, call_id=None)
            for param, value in bound.arguments.items()
        ]
        record = ExecutionRecord(
            id=exec_id,
            flow=self.name,
            target=self.target,
            sys_path=self.sys_path,
            status="running",
            created_at=now,
            updated_at=now,
            lease_owner=runtime.owner,
            lease_expires_at=now + runtime.lease_ttl,
            original_exec_id=original.id if original else None,
            metadata=metadata or {},
        )
        new_inputs = [a for a in inputs if a.name not in reused]
        input_refs = [
            JournalRecord(kind="input", call_id=a.name, artifact_id=a.id) for a in inputs if a.name in reused
        ]
        stored, created = runtime.state.create_execution(
            record, [*new_inputs, *extra_artifacts], [*input_refs, *seed]
        )
        started = Started(bound.args, bound.kwargs, list(zip(bound.arguments.values(), inputs, strict=True)))
        return stored, created, started

    def inputs_of(self, runtime: Runtime, exec_id: str) -> Started:
        """The arguments an execution was started with, loaded back from its input artifacts."""
        stored = {a.name: a for a in runtime.state.list_artifacts(exec_id, type="input")}
        arguments = {
            name: runtime.load_artifact(stored[name]) for name in self.signature.parameters if name in stored
        }
        import inspect

        bound = inspect.BoundArguments(self.signature, arguments)  # type: ignore[arg-type,unused-ignore]
        return Started(bound.args, bound.kwargs, [(v, stored[k]) for k, v in arguments.items()])

    # `execution_id` and `stack` are keywords of run/start itself, and typing cannot place a keyword
    # between ParamSpec *args and **kwargs: the flow's arguments are checked when bound, at run time.
    def run(
        self, *args: Any, execution_id: str | None = None, stack: str | None = None, **kwargs: Any
    ) -> FlowHandle:
        """Run the flow in this thread until it finishes or suspends on a wait.

        ``execution_id`` makes the start idempotent: an existing execution with that id is
        returned (and driven on if it was interrupted) instead of starting another. ``stack`` runs
        it on that configured stack instead of the active one (``kitaru stack list``).
        """
        if _skipped(self, "run"):
            return _SkippedFlowHandle()
        if running_loop() is not None:
            raise KitaruUsageError(
                f"{self.name}.run() blocks, and an event loop is running in this thread. Use "
                f"`handle = await {self.name}.start(...)` then `await handle.result()`."
            )
        runtime = get_runtime(stack)
        record, created, started = self._create(runtime, args, kwargs, execution_id)
        if not created:
            return resume_existing(runtime, record, block=True)  # type: ignore[return-value]
        return FlowHandle(record.id, runtime, self.drive(runtime, record, started, []))

    async def start(
        self, *args: Any, execution_id: str | None = None, stack: str | None = None, **kwargs: Any
    ) -> AsyncFlowHandle:
        """Start the flow on the running event loop; ``await handle.result()`` gives its value.

        Async flow bodies run as a task on this loop; sync ones on a worker thread. ``execution_id``
        and ``stack`` work as in :meth:`run`.
        """
        if _skipped(self, "start"):
            return _SkippedAsyncFlowHandle()
        runtime = get_runtime(stack)
        record, created, started = self._create(runtime, args, kwargs, execution_id)
        if not created:
            handle = resume_existing(runtime, record, block=False)
            assert isinstance(handle, AsyncFlowHandle)
            return handle
        import asyncio

        task = asyncio.ensure_future(self.drive_async(runtime, record, started, []))
        return AsyncFlowHandle(record.id, runtime, task)

    def replay(
        self,
        exec_id: str,
        from_: str,
        overrides: dict[str, Any] | None = None,
        args: dict[str, Any] | None = None,
    ) -> FlowHandle:
        """Re-run execution ``exec_id`` from call ``from_`` as a new, linked execution.

        Calls before ``from_`` (a checkpoint name, a call id like ``name:3``, or a wait name)
        reuse the original's outputs and answers without running; ``from_`` and everything after
        run again. ``overrides`` replace reused outputs or answers by call id; ``args`` replace
        flow arguments by name. Bad requests raise before anything is written.
        """
        if _skipped(self, "replay"):
            return _SkippedFlowHandle()
        return self._replay(get_runtime(), exec_id, from_, overrides, args)

    def _replay(
        self,
        runtime: Runtime,
        exec_id: str,
        from_: str,
        overrides: dict[str, Any] | None,
        args: dict[str, Any] | None,
    ) -> FlowHandle:
        from .replay import replay

        if _skipped(self, "replay"):
            return _SkippedFlowHandle()
        original = runtime.state.get_execution(exec_id)
        if original is None:
            raise KitaruNotFoundError(f"no execution {exec_id!r}. List them with `kitaru executions list`.")
        if original.target != self.target and original.flow != self.name:
            raise KitaruUsageError(
                f"execution {exec_id} ran flow {original.flow!r}, not {self.name!r}; replay it "
                f"with `kitaru executions replay {exec_id} --from ...`."
            )
        record, outcome = replay(runtime, self, original, from_, overrides, args)
        if isinstance(outcome.error, KitaruError):
            raise outcome.error
        return FlowHandle(record.id, runtime, outcome)

    # -- driving ----------------------------------------------------------------------------

    def drive(
        self,
        runtime: Runtime,
        record: ExecutionRecord,
        started: Started,
        journal: list[JournalRecord] | None = None,
    ) -> Outcome:
        """Run the body to its end or suspension, blocking this thread (the lease is already held)."""
        if self.is_async:
            import asyncio

            coro = _drive_async(self, runtime, record, started, journal)
            if running_loop() is None:
                return asyncio.run(coro)
            # A blocking call (the client's input/resume/replay) made from async code: the body
            # gets a loop of its own on a helper thread rather than failing inside asyncio.run.
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(1, thread_name_prefix="kitaru-drive") as pool:
                return pool.submit(asyncio.run, coro).result()
        return _drive_sync(self, runtime, record, started, journal)

    def drive_async(
        self,
        runtime: Runtime,
        record: ExecutionRecord,
        started: Started,
        journal: list[JournalRecord] | None = None,
    ) -> Awaitable[Outcome]:
        if self.is_async:
            return _drive_async(self, runtime, record, started, journal)
        import asyncio

        return asyncio.to_thread(_drive_sync, self, runtime, record, started, journal)


def resume_existing(
    runtime: Runtime, record: ExecutionRecord, *, block: bool
) -> FlowHandle | AsyncFlowHandle:
    """Handle for an execution that already exists; drives it on if it was left interrupted."""
    if record.status == "running":
        try:
            leased = runtime.state.acquire_lease(
                record.id, runtime.owner, runtime.lease_ttl, allowed_statuses={"running"}
            )
        except (KitaruLeaseError, KitaruStateError):
            leased = None  # driven elsewhere, or it finished meanwhile: just observe it
        if leased is not None:
            flow_obj = load_flow(leased.target, leased.sys_path)
            started = flow_obj.inputs_of(runtime, record.id)
            if block:
                return FlowHandle(record.id, runtime, flow_obj.drive(runtime, leased, started))
            import asyncio

            task = asyncio.ensure_future(flow_obj.drive_async(runtime, leased, started))
            return AsyncFlowHandle(record.id, runtime, task)
    if block:
        return FlowHandle(record.id, runtime)
    return AsyncFlowHandle(record.id, runtime, None)


@overload
def flow(fn: Callable[P, R], /) -> Flow[P, R]: ...


@overload
def flow(*, name: str | None = None) -> Callable[[Callable[P, R]], Flow[P, R]]: ...


def flow(
    fn: Callable[P, R] | None = None, /, *, name: str | None = None
) -> Flow[P, R] | Callable[[Callable[P, R]], Flow[P, R]]:
    """Make a function a durable flow: run it with ``.run()`` (sync) or ``await .start()``.

    The flow's inputs, every checkpoint output, every wait answer and its result are journaled, so
    a crashed or waiting execution resumes by re-running the body and replaying the journal.
    """
    if fn is not None:
        return Flow(fn, name=name)
    return lambda f: Flow(f, name=name)
