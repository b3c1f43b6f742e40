"""Handles on executions: ``FlowHandle`` (sync, from ``flow.run()`` and the client) and
``AsyncFlowHandle`` (from ``await flow.start()``). One async implementation of waiting for the
result; the sync handle enters it through kitaru's portal."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

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
)
from kitaru.store import TERMINAL_STATUSES

from .runner import Outcome
from .runtime import Runtime

if TYPE_CHECKING:
    import asyncio

    from kitaru._client_views import ExecutionStatus, LogEntry

__all__ = ["AsyncFlowHandle", "FlowHandle"]

T = TypeVar("T")


def blocking(fn: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
    """Run ``await fn(*args)`` from sync code on kitaru's portal loop (the one sync edge). From a
    thread whose own event loop runs, this blocks that loop, as any blocking call there does."""
    from kitaru._portal import in_portal_thread, portal

    if in_portal_thread():
        raise RuntimeError("a blocking kitaru call was made on kitaru's portal loop; await it instead")
    from functools import partial

    return portal().call(partial(fn, *args, **kwargs))


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


async def _status(runtime: Runtime, exec_id: str, last: str | None) -> str:
    """The status now; a store failure names the execution and the last status seen."""
    try:
        record = await runtime.astate.get_execution(exec_id)
    except KitaruStoreError as exc:
        raise _unreachable(exec_id, last, exc) from exc
    return record.status if record else "unknown"


async def await_result(
    runtime: Runtime,
    exec_id: str,
    local: Outcome | None,
    timeout: float | None,  # noqa: ASYNC109 - the handles' timeout, passed on
    task: asyncio.Future[Outcome] | None = None,
) -> Any:
    """Wait for the execution's end (polling while it waits elsewhere) and return its result, or
    raise the error that says why there is none."""
    import anyio

    deadline = None if timeout is None else anyio.current_time() + timeout
    if task is not None:
        import asyncio

        try:
            local = (await asyncio.wait_for(asyncio.shield(task), timeout)).raise_interrupt()
        except TimeoutError:
            # Still driven here (holding on a wait, say): the same error as when it runs elsewhere.
            raise KitaruTimeoutError(f"execution {exec_id} is still running after {timeout} s.") from None
    delay = 0.01
    last = local.status if local is not None else None
    while (last := await _status(runtime, exec_id, last)) not in TERMINAL_STATUSES:
        if deadline is not None and anyio.current_time() >= deadline:
            raise KitaruTimeoutError(f"execution {exec_id} is still {last} after {timeout} s.")
        await anyio.sleep(delay)
        delay = min(delay * 2, 0.5)
    return await _result_of(runtime, exec_id, local, last)


async def _result_of(runtime: Runtime, exec_id: str, local: Outcome | None, last_status: str | None) -> Any:
    """The value of a finished execution, or the error that says why there is none."""
    try:
        record = await runtime.astate.get_execution(exec_id)
        if record is not None and record.status == "completed":
            last_status = record.status
            if local is not None and local.status == "completed":
                return local.value
            artifact = await runtime.astate.get_artifact(record.result_artifact or "")
            if artifact is None:
                raise KitaruStoreError(
                    f"execution {exec_id} completed, but its result artifact "
                    f"{record.result_artifact} is missing from the state store. Restore the store "
                    "from a backup."
                )
            return await runtime.aload_artifact(artifact)
    except KitaruStoreError as exc:
        if isinstance(exc, KitaruLeaseError | KitaruConflictError):
            raise
        raise _unreachable(exec_id, last_status, exc) from exc
    if record is None:
        raise KitaruNotFoundError(f"no execution {exec_id!r}")
    if record.status == "cancelled":
        raise KitaruExecutionCancelledError(
            f"execution {exec_id} was cancelled.", exec_id=exec_id, status="cancelled"
        )
    cause = local.error if local is not None else None
    if isinstance(cause, KitaruError):
        raise cause
    from kitaru._client_views import failure_info
    from kitaru.errors import FailureOrigin, KitaruUserCodeError

    failure = failure_info(record.error)
    origin = failure.origin if failure is not None else FailureOrigin.UNKNOWN
    error_class = KitaruUserCodeError if origin == FailureOrigin.USER_CODE else KitaruExecutionError
    raise error_class(
        f"execution {exec_id} failed: {record.error}. See `kitaru executions get {exec_id}`; "
        f"after fixing the cause, `kitaru executions retry {exec_id}` continues it.",
        exec_id=exec_id,
        error=record.error,
        status="failed",
        failure_origin=origin,
    ) from cause


def _print_entry(entry: LogEntry) -> None:
    """``wait(stream_logs=True)``'s sink: the entry's text, as the flow wrote it."""
    import sys

    stream = sys.stderr if entry.stream == "stderr" else sys.stdout
    stream.write(entry.text if entry.text.endswith("\n") else entry.text + "\n")
    stream.flush()


class FlowHandle:
    """A handle on an execution, returned by ``flow.run()`` and the client."""

    def __init__(self, exec_id: str, runtime: Runtime, outcome: Outcome | None = None) -> None:
        self.exec_id = exec_id
        self._runtime = runtime
        self._outcome = outcome

    def __repr__(self) -> str:
        return f"<FlowHandle {self.exec_id} {self.status}>"

    @property
    def status(self) -> ExecutionStatus:
        """The execution's current status, read from the store: an
        :class:`~kitaru.client.ExecutionStatus` (a ``str``; ``.is_finished`` as in Kitaru 0.18)."""
        from kitaru._client_views import as_status

        record = self._runtime.state.get_execution(self.exec_id)
        return as_status(record.status if record else "unknown")

    def wait(
        self,
        timeout: float | None = None,
        *,
        stream_logs: bool = False,
        log_sink: Callable[[LogEntry], None] | None = None,
    ) -> Any:
        """Block until the execution finishes and return its result.

        A failed execution raises :class:`KitaruExecutionError` (the flow's exception is its
        ``__cause__``); a cancelled one :class:`KitaruExecutionCancelledError`. A waiting execution
        is polled until someone answers and it finishes, or ``timeout`` seconds pass
        (:class:`KitaruTimeoutError`).

        As in Kitaru 0.18, ``log_sink`` is called with each :class:`~kitaru.client.LogEntry` the
        execution writes (checkpoints and flow body, in order) while this waits, and
        ``stream_logs=True`` prints their text. Off by default: a flow that runs in this process
        prints as it goes already.
        """
        if log_sink is None and not stream_logs:
            return blocking(await_result, self._runtime, self.exec_id, self._outcome, timeout)
        return self._follow_logs(timeout, log_sink or _print_entry)

    def _follow_logs(self, timeout: float | None, sink: Callable[[LogEntry], None]) -> Any:
        import time

        from kitaru.client import KitaruClient

        executions = KitaruClient(self._runtime).executions
        deadline = None if timeout is None else time.monotonic() + timeout
        after = 0
        while True:
            status = self.status  # before the logs: a finished execution's are then all there
            for entry in executions.logs(self.exec_id, after=after):
                sink(entry)
                after = max(after, entry.seq)
            if status in TERMINAL_STATUSES:
                left = None if deadline is None else max(deadline - time.monotonic(), 0.0)
                return blocking(await_result, self._runtime, self.exec_id, self._outcome, left)
            if deadline is not None and time.monotonic() >= deadline:
                raise KitaruTimeoutError(f"execution {self.exec_id} is still {status} after {timeout} s.")
            time.sleep(0.25)

    def get(self) -> Any:
        """The result of a finished execution, without waiting (as Kitaru 0.18's ``get()``): a
        failed or cancelled one raises as :meth:`wait` does; one still running or waiting raises
        :class:`KitaruStateError` (``wait()`` blocks until it finishes)."""
        status = self.status
        if status not in TERMINAL_STATUSES:
            raise KitaruStateError(
                f"execution {self.exec_id} is still {status}: get() returns only a finished "
                "execution's result. Block until it finishes with `.wait()`"
                + (
                    f", after answering its wait with `kitaru executions input {self.exec_id} --value JSON`."
                    if status == "waiting"
                    else "."
                )
            )
        return self.wait()


class AsyncFlowHandle:
    """A handle on an execution started with ``await flow.start()``."""

    def __init__(self, exec_id: str, runtime: Runtime, task: asyncio.Future[Outcome] | None) -> None:
        self.exec_id = exec_id
        self._runtime = runtime
        self._task = task

    def __repr__(self) -> str:
        return f"<AsyncFlowHandle {self.exec_id} {self.status}>"

    @property
    def status(self) -> ExecutionStatus:
        from kitaru._client_views import as_status

        record = self._runtime.state.get_execution(self.exec_id)
        return as_status(record.status if record else "unknown")

    async def result(self, timeout: float | None = None) -> Any:  # noqa: ASYNC109 - mirrors wait()
        """Await the execution's end and return its result (errors as in FlowHandle.wait)."""
        return await await_result(self._runtime, self.exec_id, None, timeout, self._task)


class SkippedFlowHandle(FlowHandle):
    """What ``run()``/``replay()`` return when the call was skipped (see
    :func:`~kitaru._engine.loading._skipped`): nothing ran, so there is no execution; ``status``
    is ``skipped`` and ``wait()`` gives None."""

    def __init__(self) -> None:  # no runtime: nothing is ever read
        self.exec_id = ""
        self._outcome = None

    def __repr__(self) -> str:
        return "<FlowHandle skipped>"

    @property
    def status(self) -> ExecutionStatus:
        from kitaru._client_views import as_status

        return as_status("skipped")

    def wait(
        self,
        timeout: float | None = None,
        *,
        stream_logs: bool = False,
        log_sink: Callable[[LogEntry], None] | None = None,
    ) -> Any:
        return None

    def get(self) -> Any:
        return None


class SkippedAsyncFlowHandle(AsyncFlowHandle):
    """What ``await start()`` returns when the call was skipped."""

    def __init__(self) -> None:
        self.exec_id = ""
        self._task = None

    def __repr__(self) -> str:
        return "<AsyncFlowHandle skipped>"

    @property
    def status(self) -> ExecutionStatus:
        from kitaru._client_views import as_status

        return as_status("skipped")

    async def result(self, timeout: float | None = None) -> Any:  # noqa: ASYNC109 - mirrors wait()
        return None
