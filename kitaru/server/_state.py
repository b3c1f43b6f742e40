"""What one server process holds: its runtime (stores), the stack's orchestrator, the background
tasks that drive executions, and the background role (timers, recovery) held through a lock.

**The background role.** Every replica serves the API; one at a time also fires wait deadlines
and recovers executions whose runner died. The role is held through a PostgreSQL advisory lock
(on a connection of its own: a replica that dies or loses the database loses the role with it) or,
on SQLite, an exclusive ``flock`` beside the database file. Whoever holds it lists the recoverable
executions (:meth:`StateStore.list_recoverable`: running ones with a free lease, waiting ones past
a deadline) every ``tick`` seconds and hands each to the orchestrator; taking the execution's lease
decides who drives, so even two holders (a lock lost and retaken mid-pass) never drive one twice.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
from anyio.abc import TaskGroup

from kitaru.errors import KitaruError, KitaruLeaseError, KitaruNotFoundError, KitaruStateError
from kitaru.store import ApiKeyRecord, ExecutionRecord, StateStore

__all__ = ["ServerState"]

log = logging.getLogger("kitaru.server")

#: How long a key record is trusted from memory (a revoke takes effect within this).
_KEY_CACHE_TTL = 2.0
#: The advisory lock's key: "kitaru" as a number, so other applications' locks do not collide.
_ADVISORY_KEY = int.from_bytes(b"kitaru", "big")


class ServerState:
    """The server's runtime and the work it does besides answering requests."""

    def __init__(self, runtime: Any, orchestrator: Any, *, state_uri: str, tick: float = 1.0) -> None:
        from kitaru.client import Execution  # noqa: F401  (imported now: requests must not pay for it)

        self.runtime = runtime
        self.astate: StateStore = runtime.astate
        self.orchestrator = orchestrator
        self.state_uri = state_uri
        self.tick = tick
        self.log_poll = 0.5
        self.leader = False
        self._keys: dict[str, tuple[float, ApiKeyRecord | None]] = {}
        self._driving: set[str] = set()
        self._tasks: TaskGroup | None = None

    # -- keys ------------------------------------------------------------------------------

    async def key(self, key_id: str) -> ApiKeyRecord | None:
        """The key record with ``key_id`` (cached for a moment: every request looks one up)."""
        now = time.monotonic()
        cached = self._keys.get(key_id)
        if cached is not None and now - cached[0] < _KEY_CACHE_TTL:
            return cached[1]
        record: ApiKeyRecord | None = await self.astate.get_api_key(key_id)  # type: ignore[attr-defined]
        if len(self._keys) > 10_000:
            self._keys.clear()  # unknown ids are cached too; do not let them grow without end
        self._keys[key_id] = (now, record)
        return record

    # -- views -----------------------------------------------------------------------------

    async def record(self, exec_id: str) -> ExecutionRecord:
        record = await self.astate.get_execution(exec_id)
        if record is None:
            raise KitaruNotFoundError(f"no execution {exec_id!r}. List them with `kitaru executions list`.")
        return record

    def summary(self, record: ExecutionRecord) -> dict[str, Any]:
        from kitaru.server._app import execution_summary

        return execution_summary(record)

    async def execution(self, exec_id: str) -> Any:
        from kitaru.client import Execution, fold_journal

        record = await self.record(exec_id)
        calls, waits, flow_meta = fold_journal(await self.astate.read_journal(exec_id))
        return Execution(
            id=record.id,
            flow=record.flow,
            status=record.status,
            created_at=record.created_at,
            updated_at=record.updated_at,
            target=record.target,
            error=record.error,
            original_exec_id=record.original_exec_id,
            metadata={**{k: v for k, v in record.metadata.items() if k != "inflight"}, **flow_meta},
            checkpoints=tuple(calls),
            waits=tuple(waits),
            result_artifact=record.result_artifact,
        )

    # -- steering ----------------------------------------------------------------------------

    def _local(self) -> bool:
        from kitaru.local_stack import LocalOrchestrator

        return isinstance(self.orchestrator, LocalOrchestrator)

    async def answer(self, exec_id: str, name: str, value: Any) -> None:
        """Check ``value`` against the wait's JSON Schema (never importing anything the journal
        names), record it, and have the execution driven on in the background."""
        from kitaru._engine.runner import Runner
        from kitaru._engine.waits import check_answer
        from kitaru.store import _rules

        execution = await self.execution(exec_id)
        if execution.status == "cancelled":
            raise _rules.final_error(exec_id, "cancelled", "take an answer")
        wait = next((w for w in execution.waits if w.name == name), None)
        if wait is None:
            open_names = ", ".join(w.name for w in execution.open_waits) or "none"
            raise KitaruNotFoundError(f"execution {exec_id} has no wait {name!r}; open waits: {open_names}.")
        if wait.status != "open":
            raise KitaruStateError(
                f"wait {name!r} of execution {exec_id} is {wait.status.replace('_', ' ')}; it takes no "
                "other answer."
            )
        checked = check_answer(
            {"schema_text": wait.schema, "json_schema": wait.json_schema},
            value,
            where=f"wait {name!r} of execution {exec_id}",
            fix="answer again with a value that matches.",
        )
        local = self._local()
        leased = await Runner(self.runtime).answer(exec_id, name, checked, take_lease=local)
        if local:
            if leased is not None:
                self.spawn(exec_id, self._drive_leased, leased)
        else:
            self.spawn(exec_id, self.orchestrator.submit, exec_id)

    async def take_over(self, exec_id: str, allowed: Collection[str]) -> dict[str, Any]:
        from kitaru.store import _rules

        record = await self.record(exec_id)
        if record.status in _rules.FINAL_STATUSES:
            raise _rules.final_error(record.id, record.status, "run again")
        if record.status not in allowed:
            raise KitaruStateError(
                f"execution {exec_id} is {record.status}; this needs it {' or '.join(sorted(allowed))}."
            )
        if record.status == "running" and not _rules.lease_free(
            record.lease_owner, record.lease_expires_at, time.time()
        ):
            raise KitaruLeaseError(f"execution {exec_id} is being driven by a live runner; it goes on there.")
        self.spawn(exec_id, self.orchestrator.submit, exec_id)
        return {"id": exec_id, "accepted": True}

    async def replay(
        self, exec_id: str, from_: str, overrides: Mapping[str, Any] | None, args: Mapping[str, Any] | None
    ) -> ExecutionRecord:
        """Plan and create the replay here (a bad override is this request's error); drive it in
        the background."""
        from kitaru._engine.loading import load_flow
        from kitaru._engine.replay import plan_replay
        from kitaru._engine.runner import Runner
        from kitaru._ids import new_id

        original = await self.record(exec_id)
        flow = load_flow(original.target, original.sys_path)
        plan = await anyio.to_thread.run_sync(
            lambda: plan_replay(self.runtime, flow, original, from_, overrides, args)
        )
        new = new_id()
        for artifact in plan.new_artifacts:
            artifact.exec_id = new
        runner = Runner(self.runtime)
        record, _, started = await runner.create(
            flow,
            (),
            dict(plan.arguments),
            new,
            original=original,
            reused_inputs=plan.reused_inputs,
            seed=plan.seed,
            extra_artifacts=plan.new_artifacts,
            metadata={"replay": {"of": original.id, "from": plan.boundary}},
        )
        self.spawn(record.id, runner.drive, flow, record, started)
        return record

    async def _drive_leased(self, leased: ExecutionRecord) -> Any:
        from kitaru._engine.runner import Runner

        runner = Runner(self.runtime)
        flow, started = await runner.load(leased)
        return await runner.drive(flow, leased, started)

    # -- background work -------------------------------------------------------------------

    def spawn(self, exec_id: str, fn: Callable[..., Awaitable[Any]], *args: Any) -> bool:
        """Run ``fn(*args)`` in the background unless this process drives ``exec_id`` already."""
        if self._tasks is None or exec_id in self._driving:
            return False
        self._driving.add(exec_id)

        async def run() -> None:
            try:
                outcome = await fn(*args)
                status = getattr(outcome, "status", "submitted")
                log.info("execution %s: %s", exec_id, status)
            except (KitaruLeaseError, KitaruStateError) as exc:
                log.info("execution %s not driven here: %s", exec_id, exc)
            except KitaruError as exc:
                log.warning("execution %s could not be driven: %s", exec_id, exc)
            except Exception:
                log.exception("execution %s: driving it failed", exec_id)
            finally:
                self._driving.discard(exec_id)

        self._tasks.start_soon(run, name=f"kitaru drive {exec_id}")
        return True

    @asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Background tasks and the role loop for the life of the app."""
        async with anyio.create_task_group() as tg:
            self._tasks = tg
            tg.start_soon(self._role_loop)
            try:
                yield
            finally:
                self._tasks = None
                tg.cancel_scope.cancel()

    async def _role_loop(self) -> None:
        lock = _role_lock(self.state_uri)
        try:
            while True:
                try:
                    self.leader = await lock.hold()
                    if self.leader:
                        await self.recover_pass()
                except Exception as exc:  # the database away for a moment: try again next tick
                    self.leader = False
                    log.warning("background role: %s", exc)
                    await lock.release()
                await anyio.sleep(self.tick)
        finally:
            with anyio.CancelScope(shield=True):
                await lock.release()

    async def recover_pass(self) -> int:
        """Hand every execution nobody moves on to the orchestrator; returns how many."""
        handed = 0
        for record in await self.astate.list_recoverable(limit=100):
            reason = "runner gone" if record.status == "running" else "wait deadline passed"
            if self.spawn(record.id, self.orchestrator.submit, record.id):
                handed += 1
                log.info("recovering execution %s (%s)", record.id, reason)
        return handed


class _RoleLock:
    """Held by at most one server process among those sharing a state store."""

    async def hold(self) -> bool:
        """Take the lock if free, or confirm it is still held; whether this process holds it."""
        return True

    async def release(self) -> None:
        return None


class _FileRoleLock(_RoleLock):
    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    async def hold(self) -> bool:
        import fcntl

        if self._fd is not None:
            return True
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        self._fd = fd
        return True

    async def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock
            self._fd = None


class _AdvisoryRoleLock(_RoleLock):
    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self._conn: Any = None

    async def hold(self) -> bool:
        import asyncpg  # type: ignore[import-untyped,unused-ignore]

        if self._conn is not None:
            if self._conn.is_closed():
                self._conn = None
            else:
                await self._conn.execute("SELECT 1")  # a dead connection raises: role lost
                return True
        conn = await asyncpg.connect(self.dsn)
        if await conn.fetchval("SELECT pg_try_advisory_lock($1)", _ADVISORY_KEY):
            self._conn = conn
            return True
        await conn.close()
        return False

    async def release(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                await conn.close()  # the session's advisory lock goes with it
            except Exception:
                conn.terminate()


def _role_lock(state_uri: str) -> _RoleLock:
    scheme = state_uri.partition("://")[0].lower()
    if scheme in ("postgresql", "postgres"):
        return _AdvisoryRoleLock(state_uri)
    if scheme == "sqlite":
        from urllib.parse import unquote, urlparse

        path = Path(unquote(urlparse(state_uri).path))
        return _FileRoleLock(path.with_name(path.name + ".server-lock"))
    return _RoleLock()
