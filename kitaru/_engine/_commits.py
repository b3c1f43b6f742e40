"""The group commit of an execution: journal records and artifacts queued from sync and async
code, and landed together, in as few state store transactions as one event-loop turn allows."""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from kitaru.store import ArtifactRecord, JournalRecord

from ._signals import _Cancelled, running_loop
from .runtime import Runtime

if TYPE_CHECKING:
    # asyncio and anyio load on first use: `import kitaru` stays light.
    import asyncio

T = TypeVar("T")


class _GroupCommit:
    """Commits of :class:`~kitaru._engine.context.ExecutionContext` (which sets up the state below)."""

    runtime: Runtime
    exec_id: str
    inline: bool
    _pending: list[JournalRecord]
    pending_output: list[JournalRecord]
    _pending_metadata: dict[str, Any]
    _pending_lock: threading.Lock
    _batch_records: list[JournalRecord]
    _batch_artifacts: list[ArtifactRecord]
    _batch_uploads: list[tuple[str, bytes]]
    _batch_future: asyncio.Future[None] | None
    _flushes: set[asyncio.Future[None]]
    _event_writer: asyncio.Future[None] | None
    _flush_error: BaseException | None
    _awaited: set[asyncio.Future[None]]

    if TYPE_CHECKING:

        def blocking(self, fn: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T: ...

    def add_pending(self, record: JournalRecord, metadata: dict[str, Any] | None = None) -> None:
        """Queue a record that rides along with the next commit."""
        with self._pending_lock:
            self._pending.append(record)
            if metadata:
                self._pending_metadata.update(metadata)

    def _take_pending(self, records: Sequence[JournalRecord], kw: dict[str, Any]) -> Sequence[JournalRecord]:
        with self._pending_lock:
            if self._pending or self.pending_output:
                records = [*self._pending, *self.pending_output, *records]
                self._pending, self.pending_output = [], []
            if self._pending_metadata:
                kw["metadata"] = {**self._pending_metadata, **(kw.get("metadata") or {})}
                self._pending_metadata = {}
        return records

    async def acommit(
        self,
        records: Sequence[JournalRecord],
        artifacts: Sequence[ArtifactRecord] = (),
        *,
        unwind: bool = True,
        **kw: Any,
    ) -> None:
        """Commit records and artifacts (with anything pending) as this execution's runner.

        The store answers with the execution's status in the same transaction: when it says
        ``cancelled`` (and ``unwind``), the records landed (that work is paid for) and the body
        unwinds now with :class:`_Cancelled`, rather than running on until the next heartbeat.
        Writes queued from sync code on the loop land first (their blobs before their records).
        """
        if self._batch_future is not None or self._flushes:
            await self.flush()
        records = self._take_pending(records, kw)
        status = await self.runtime.astate.commit(
            self.exec_id, records, artifacts, owner=self.runtime.owner, **kw
        )
        self._saw_status(status, unwind)

    def _saw_status(self, status: str | None, unwind: bool) -> None:
        if status == "cancelled":
            self.runtime.saw_cancel(self.exec_id)
            if unwind:
                raise _Cancelled()

    def commit(
        self,
        records: Sequence[JournalRecord],
        artifacts: Sequence[ArtifactRecord] = (),
        *,
        unwind: bool = True,
        **kw: Any,
    ) -> None:
        """:meth:`acommit` from sync code of the execution.

        Inline (SQLite) it commits here, on this thread; from a worker thread it commits on the
        Runner's loop. On the loop's own thread (a sync checkpoint called from an async body) a
        non-inline store must not block the loop: the commit joins the group commit, which the
        body's next await flushes (a cancel it reports then cancels the body's scope)."""
        if running_loop() is not None and (not self.inline or self._batch_uploads or self._batch_future):
            self._batch_records.extend(records)  # pending records ride with the flush
            self._batch_artifacts.extend(artifacts)
            self._schedule_flush()
            return
        if self.inline:
            from kitaru._portal import run_inline

            records = self._take_pending(records, kw)
            coro = self.runtime.astate.commit(
                self.exec_id, records, artifacts, owner=self.runtime.owner, **kw
            )
            self._saw_status(run_inline(coro), unwind)
            return
        self.blocking(self.acommit, records, artifacts, unwind=unwind, **kw)

    async def commit_async(
        self, records: Sequence[JournalRecord], artifacts: Sequence[ArtifactRecord]
    ) -> None:
        """Group commit: everything completing in the same event-loop turn lands in one
        transaction, which is what makes a thousand concurrent checkpoints cheap."""
        self._batch_records.extend(records)
        self._batch_artifacts.extend(artifacts)
        future = self._schedule_flush()
        self._awaited.add(future)  # its error reaches this checkpoint, not the next flush()
        await future

    def _schedule_flush(self) -> asyncio.Future[None]:
        future = self._batch_future
        if future is None:
            import asyncio

            loop = asyncio.get_running_loop()
            future = self._batch_future = loop.create_future()
            # A flush nobody awaits (queued by sync code) reports its error at the next flush().
            future.add_done_callback(self._note_flush_error)
            loop.call_soon(self._flush_batch)
        return future

    def _note_flush_error(self, future: asyncio.Future[None]) -> None:
        if future in self._awaited:
            self._awaited.discard(future)
            return
        if not future.cancelled() and future.exception() is not None and self._flush_error is None:
            self._flush_error = future.exception()

    def _flush_batch(self) -> None:
        future = self._batch_future
        records, artifacts, uploads = self._batch_records, self._batch_artifacts, self._batch_uploads
        self._batch_future, self._batch_records, self._batch_artifacts, self._batch_uploads = None, [], [], []
        assert future is not None
        if self.inline and not uploads:
            # SQLite: commit in this callback, without a task (the 1,000-checkpoint fan-out path).
            from kitaru._portal import run_inline

            try:
                kw: dict[str, Any] = {}
                taken = self._take_pending(records, kw)
                coro = self.runtime.astate.commit(
                    self.exec_id, taken, artifacts, owner=self.runtime.owner, **kw
                )
                self._saw_status(run_inline(coro), True)
            except BaseException as exc:
                future.set_exception(exc)
            else:
                future.set_result(None)
            return
        import asyncio

        task = asyncio.ensure_future(self._flush_async(future, records, artifacts, uploads))
        self._flushes.add(task)
        task.add_done_callback(self._flushes.discard)

    async def _flush_async(
        self,
        future: asyncio.Future[None],
        records: list[JournalRecord],
        artifacts: list[ArtifactRecord],
        uploads: list[tuple[str, bytes]],
    ) -> None:
        try:
            writer = self._event_writer
            if writer is not None and not writer.done():
                import asyncio

                # Events the call published are written by their own task: they land first.
                await asyncio.wait([writer])
            if uploads:
                import anyio

                async with anyio.create_task_group() as tg:
                    for key, data in uploads:
                        tg.start_soon(self.runtime.aput_blob, key, data)
            kw: dict[str, Any] = {}
            taken = self._take_pending(records, kw)
            if taken or artifacts or kw:
                status = await self.runtime.astate.commit(
                    self.exec_id, taken, artifacts, owner=self.runtime.owner, **kw
                )
                self._saw_status(status, True)
        except BaseException as exc:
            import asyncio

            if isinstance(exc, asyncio.CancelledError):
                future.cancel()
                raise
            if not future.done():
                future.set_exception(exc)
        else:
            if not future.done():
                future.set_result(None)

    async def flush(self) -> None:
        """Let every queued write land; raise the first error one of them met."""
        import asyncio

        while self._batch_future is not None or self._flushes:
            pending: list[asyncio.Future[None]] = [*self._flushes]
            if self._batch_future is not None:
                pending.append(self._batch_future)
            await asyncio.wait(pending)
        error, self._flush_error = self._flush_error, None
        if error is not None:
            raise error
