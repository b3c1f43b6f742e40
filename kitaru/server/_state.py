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

import asyncio
import logging
import math
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from kitaru.errors import KitaruError, KitaruLeaseError, KitaruNotFoundError, KitaruStateError
from kitaru.store import ApiKeyRecord, ExecutionRecord, StateStore

__all__ = ["ServerState", "clip"]

log = logging.getLogger("kitaru.server")

#: How many executions one server process drives at once (``KITARU_SERVER_DRIVERS``); the
#: rest wait in its queue. A local flow's sync body holds a worker thread while it runs (anyio
#: allows 40), so this also keeps a burst of resumed flows from taking every thread.
DRIVERS = 16

#: The largest request body the server reads, in bytes (``KITARU_SERVER_MAX_BODY``); larger
#: ones get 413 before more than this is held in memory. A worker's commit carries artifacts of
#: up to 64 KiB inline (larger ones go to the artifact store), so this leaves room for a group
#: of them; an answer or invoke arguments that need more belong in an artifact.
MAX_BODY = 16 * 1024 * 1024

#: A queued drive: the execution, and what drives it.
_Job = tuple[str, Callable[..., Awaitable[Any]], tuple[Any, ...]]

#: How long a drive waits, at most, for a lull in requests before it starts, and the lull.
_DEFER_DRIVES = 0.25
_LULL = 0.01
#: How long a key record is trusted from memory: a revoke (in any replica, or by the CLI on the
#: database) takes effect within this, and a busy server reads each key at most once per period.
_KEY_CACHE_TTL = 1.0
#: How often every process reads the sessions other processes ended (logouts), at most: the
#: key cache's period, so a logout reaches every replica as fast as a revoke does.
_SESSIONS_PULL = _KEY_CACHE_TTL
#: How far back of the newest logout it has seen a process reads again: a logout stamped a
#: moment before another may commit after it, and a read between the two would skip it for good.
_SESSIONS_OVERLAP = 10.0
#: How often the background role deletes the records of logouts whose cookies have expired.
_SESSIONS_PRUNE = 60.0
#: The advisory lock's key: "kitaru" as a number, so other applications' locks do not collide.
_ADVISORY_KEY = int.from_bytes(b"kitaru", "big")


#: How much of a value the client sent an error message repeats (an id, a path), at most.
_ECHO = 120


def clip(text: str) -> str:
    """``text`` (an id, a path: something the client sent) as an error message repeats it:
    quoted, and cut short when long (a 20,000-character id is not sent back whole)."""
    return repr(text if len(text) <= _ECHO else text[:_ECHO] + "...")


class ServerState:
    """The server's runtime and the work it does besides answering requests."""

    def __init__(
        self,
        runtime: Any,
        orchestrator: Any,
        *,
        state_uri: str,
        tick: float = 1.0,
        drivers: int = DRIVERS,
        own_process: bool = False,
        max_body: int = MAX_BODY,
    ) -> None:
        from kitaru.client import Execution  # noqa: F401  (imported now: requests must not pay for it)

        _warm_up()

        self.runtime = runtime
        self.astate: StateStore = runtime.astate
        self.orchestrator = orchestrator
        self.state_uri = state_uri
        self.tick = tick
        self.log_poll = 0.5
        self.leader = False
        self._keys: dict[str, tuple[float, ApiKeyRecord | None]] = {}
        self._key_reads: dict[str, asyncio.Future[ApiKeyRecord | None]] = {}
        self._ended_sessions: dict[str, float] = {}  # nonce → when the cookie expires anyway
        self._ended_seen = 0.0  # the newest ``ended_at`` read from the store (0: none yet)
        self._ended_forgotten = -math.inf  # when expired ones were last dropped (time.monotonic())
        self._ended_pruned = -math.inf  # when the role last pruned the store's (time.monotonic())
        self._pull_failing = False
        self.drivers = drivers
        self.max_body = max_body
        self.own_process = own_process
        self._driving: set[str] = set()
        self._queue: MemoryObjectSendStream[_Job] | None = None
        self._answering = 0  # requests whose response has not started yet
        self._last_request = 0.0  # when the last one came (time.monotonic())
        self._quiet: asyncio.Event | None = None  # set while none is

    # -- requests first ----------------------------------------------------------------------

    def request_started(self) -> None:
        self._answering += 1
        self._last_request = time.monotonic()
        if self._answering == 1 and self._quiet is not None:
            self._quiet.clear()

    def request_answered(self) -> None:
        self._answering -= 1
        if not self._answering and self._quiet is not None:
            self._quiet.set()

    async def _requests_answered(self) -> None:
        """Wait (at most ``_DEFER_DRIVES`` seconds) for a lull: no request waiting for its
        response, none come in the last ``_LULL`` seconds. A drive started in the middle of a
        burst of answers takes the event loop, the GIL (a sync flow body runs on a thread) and
        the pool's connections from the answers still arriving, and every one of them returns
        later for it; so drives wait for the burst to be answered. (With SQLite each request is
        answered in one step of the loop: "none in flight" alone holds between any two.)"""
        if self._quiet is None:
            return
        with anyio.move_on_after(_DEFER_DRIVES):
            while True:
                if self._answering:
                    await self._quiet.wait()
                since = time.monotonic() - self._last_request
                if since >= _LULL and not self._answering:
                    return
                await anyio.sleep(max(_LULL - since, 0.001))

    # -- keys ------------------------------------------------------------------------------

    async def key(self, key_id: str) -> ApiKeyRecord | None:
        """The key record with ``key_id`` (cached for a moment: every request looks one up)."""
        now = time.monotonic()
        cached = self._keys.get(key_id)
        if cached is not None and now - cached[0] < _KEY_CACHE_TTL:
            return cached[1]
        # One read per key at a time: a burst of requests with a key not (or no longer) cached
        # waits for one read instead of each making its own (on PostgreSQL, 200 queries queued on
        # the pool before the first answer could start). The read is a task of its own, so a
        # request that goes away does not take the others' read with it.
        reading = self._key_reads.get(key_id)
        if reading is None:
            reading = self._key_reads[key_id] = asyncio.ensure_future(self._read_key(key_id))
            reading.add_done_callback(lambda t: t.cancelled() or t.exception())  # seen, if nobody waits
        return await asyncio.shield(reading)

    async def _read_key(self, key_id: str) -> ApiKeyRecord | None:
        now = time.monotonic()
        try:
            record: ApiKeyRecord | None = await self.astate.get_api_key(key_id)  # type: ignore[attr-defined]
        finally:
            del self._key_reads[key_id]
        if len(self._keys) > 10_000:
            self._keys.clear()  # unknown ids are cached too; do not let them grow without end
        self._keys[key_id] = (now, record)
        return record

    # -- sessions --------------------------------------------------------------------------

    async def end_session(self, nonce: str, expires: float) -> None:
        """Refuse the session with ``nonce`` from now on (a logout): in this process at once, and
        in every other process on the state store within ``_SESSIONS_PULL`` seconds, through the
        store's record of it (which they read on their background tick). Called only for cookies
        that proved valid, so the records are bounded by real logouts."""
        self._ended_sessions[nonce] = expires
        await self.astate.end_session(nonce, expires)  # type: ignore[attr-defined]

    async def pull_ended_sessions(self) -> int:
        """Read the logouts recorded since the last read (all unexpired ones the first time) into
        this process's list; returns how many were new. One query whatever the request rate."""
        since = max(self._ended_seen - _SESSIONS_OVERLAP, 0.0)
        ended = await self.astate.ended_sessions(since)  # type: ignore[attr-defined]
        now, new = time.time(), 0
        for session in ended:
            self._ended_seen = max(self._ended_seen, session.ended_at)
            if session.expires_at > now and session.nonce not in self._ended_sessions:
                self._ended_sessions[session.nonce] = session.expires_at
                new += 1
        if time.monotonic() - self._ended_forgotten > _SESSIONS_PRUNE:
            self._ended_forgotten = time.monotonic()
            self._ended_sessions = {n: t for n, t in self._ended_sessions.items() if t > now}
        return new

    async def _sessions_loop(self) -> None:
        """Every process, leader or not: a logout served elsewhere must be refused here too."""
        while True:
            await anyio.sleep(min(self.tick, _SESSIONS_PULL))
            await self._pull_quietly()

    async def _pull_quietly(self) -> None:
        try:
            await self.pull_ended_sessions()
        except Exception as exc:  # the database away for a moment: the next tick tries again
            if not self._pull_failing:
                log.warning("reading logouts from the state store: %s", exc)
            self._pull_failing = True
        else:
            self._pull_failing = False

    def session_ended(self, nonce: str) -> bool:
        return nonce in self._ended_sessions

    async def still_allowed(self, key_id: str, nonce: str | None) -> bool:
        """Whether the key ``key_id`` is live, and the session ``nonce`` (when given) not
        ended: what a long request (a followed log stream) asks between polls (the key is
        read through the cache, so this costs no query more than once a second)."""
        record = await self.key(key_id)
        if record is None or record.revoked_at is not None:
            return False
        return nonce is None or not self.session_ended(nonce)

    # -- views -----------------------------------------------------------------------------

    async def record(self, exec_id: str) -> ExecutionRecord:
        record = await self.astate.get_execution(exec_id)
        if record is None:
            raise KitaruNotFoundError(
                f"no execution {clip(exec_id)}. List them with `kitaru executions list`."
            )
        return record

    def summary(self, record: ExecutionRecord) -> dict[str, Any]:
        from kitaru.server._app import execution_summary

        return execution_summary(record)

    async def execution(self, exec_id: str) -> Any:
        from kitaru._client_views import as_status
        from kitaru.client import Execution, fold_journal

        record = await self.record(exec_id)
        calls, waits, flow_meta = fold_journal(await self.astate.read_journal(exec_id))
        return Execution(
            id=record.id,
            flow=record.flow,
            status=as_status(record.status),
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

    async def answer(
        self, exec_id: str, name: str, value: Any, *, abort: dict[str, Any] | None = None
    ) -> None:
        """Check ``value`` against the wait's JSON Schema (never importing anything the journal
        names), record it, and have the execution driven on in the background. With ``abort``
        (``{"aborted": True, "reason": ...}``) the wait is aborted instead: no value to check,
        the same once-only record, and the flow's ``wait()`` raises ``KitaruWaitAborted``.

        The request only reads the journal records of this wait (``read_wait``: by index, however
        long the execution's journal; the whole journal only to name the open waits in a refusal), checks
        the value with a validator cached per schema, and records the answer in one store
        transaction, which re-checks the execution and the wait; the driving is queued."""
        from kitaru._engine.runner import Runner
        from kitaru._engine.wait_schema import check_answer
        from kitaru.store import _rules

        opened: dict[str, Any] | None = None
        closed: str | None = None
        for r in await self.astate.read_wait(exec_id, name):
            if r.kind == "cancel_requested":
                raise _rules.final_error(exec_id, "cancelled", "take an answer")
            if r.kind == "wait_opened":
                opened = r.data or {}
            elif r.kind in ("wait_answered", "wait_timed_out"):
                closed = "answered" if r.kind == "wait_answered" else "timed out"
        if opened is None:
            await self.record(exec_id)  # no such execution: 404 naming the execution
            raise KitaruNotFoundError(
                f"execution {exec_id} has no wait {name!r}; open waits: "
                f"{', '.join(await self._open_waits(exec_id)) or 'none'}."
            )
        if closed is not None:
            raise KitaruStateError(
                f"wait {name!r} of execution {exec_id} is {closed}; it takes no other answer."
            )
        checked = (
            None
            if abort is not None
            else check_answer(
                {
                    "schema_text": opened.get("schema_text", "any JSON value"),
                    "json_schema": opened.get("json_schema"),
                },
                value,
                where=f"wait {name!r} of execution {exec_id}",
                fix="answer again with a value that matches.",
            )
        )
        local = self._local()
        took = await Runner(self.runtime).record_answer(exec_id, name, checked, take_lease=local, abort=abort)
        if local:
            if took:  # the driver reads the leased record: one read less before the 202
                self.spawn(exec_id, self._drive_answered, exec_id)
        else:
            self.spawn(exec_id, self.orchestrator.submit, exec_id)

    async def _open_waits(self, exec_id: str) -> list[str]:
        """The names of the execution's open waits (for a refusal: reads the whole journal)."""
        open_names: dict[str, None] = {}
        for r in await self.astate.read_journal(exec_id):
            if r.kind == "wait_opened" and r.call_id:
                open_names[r.call_id] = None
            elif r.kind in ("wait_answered", "wait_timed_out") and r.call_id:
                open_names.pop(r.call_id, None)
        return list(open_names)

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
        from kitaru._engine.runner import Runner

        original = await self.record(exec_id)
        flow = load_flow(original.target, original.sys_path)
        runner = Runner(self.runtime)
        record, started = await runner.create_replay(flow, original, from_, overrides, args)
        self.spawn(record.id, runner.drive, flow, record, started)
        return record

    async def invoke(
        self, flow: str, tag: str, args: Mapping[str, Any], execution_id: str | None
    ) -> tuple[ExecutionRecord, bool]:
        """Start an execution of the version ``flow@tag`` points at (routed by weight on
        ``default``), as :meth:`KitaruClient.deployments.invoke` does, but hand the driving over:
        the execution is created here (an unknown flow or tag, or arguments that do not fit the
        version's signature, are this request's error and create nothing) and driven by a
        background task or the stack's orchestrator. An existing ``execution_id`` is the same
        invocation again: it is returned (and driven on only if its runner is gone).

        Returns the execution and whether this request created it."""
        from kitaru._engine.loading import aload_version
        from kitaru._engine.runner import Runner
        from kitaru._ids import new_id
        from kitaru.deployments import achoose, summary

        runner = Runner(self.runtime)
        if execution_id is not None:
            existing = await self.astate.get_execution(execution_id)
            if existing is not None:
                if existing.status == "running" and _lease_free(existing):
                    self.spawn(existing.id, self.orchestrator.submit, existing.id)
                return existing, False
        exec_id = execution_id or new_id()
        version, routed = await achoose(self.runtime, flow, tag, exec_id)
        flow_obj = await aload_version(self.runtime, summary(version, routed))
        if self._local():
            record, created, started = await runner.create(flow_obj, (), dict(args), exec_id)
            if created:
                self.spawn(record.id, runner.drive, flow_obj, record, started)
            return record, created
        # Elsewhere (a Kubernetes Job...): created with its lease free, its job submitted in the
        # background, as an answer's is.
        prepare = getattr(self.orchestrator, "prepare", None)
        metadata = await prepare(flow_obj) if prepare is not None else None
        record, created, _ = await runner.create(
            flow_obj, (), dict(args), exec_id, metadata=metadata, leased=False
        )
        if created:
            self.spawn(record.id, self.orchestrator.submit, record.id)
        return record, created

    async def _drive_answered(self, exec_id: str) -> Any:
        """Drive on an execution whose lease this process took with an answer."""
        from kitaru._engine.runner import Runner

        leased = await self.record(exec_id)
        runner = Runner(self.runtime)
        flow, started = await runner.load(leased)
        return await runner.drive(flow, leased, started)

    # -- background work -------------------------------------------------------------------

    def spawn(self, exec_id: str, fn: Callable[..., Awaitable[Any]], *args: Any) -> bool:
        """Queue ``fn(*args)`` for a driver unless this process drives ``exec_id`` already.

        Returns at once: requests only enqueue. A fixed number of driver tasks take the queue in
        order, so a burst of answers resumes its flows a few at a time instead of starting them
        all at once, each with its own thread for a sync flow body, contending with the request
        handlers for the event loop and the GIL."""
        if self._queue is None or exec_id in self._driving:
            return False
        self._driving.add(exec_id)
        self._queue.send_nowait((exec_id, fn, args))
        return True

    async def _driver(self, queue: MemoryObjectReceiveStream[_Job]) -> None:
        async with queue:
            async for exec_id, fn, args in queue:
                await self._requests_answered()
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

    @asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """The drivers and the role loop for the life of the app."""
        send, receive = anyio.create_memory_object_stream[_Job](math.inf)
        self._quiet = asyncio.Event()
        if not self._answering:
            self._quiet.set()
        await self._ready_for_bursts()
        async with anyio.create_task_group() as tg:
            for _ in range(self.drivers):
                tg.start_soon(self._driver, receive.clone())
            receive.close()
            self._queue = send
            tg.start_soon(self._role_loop)
            tg.start_soon(self._sessions_loop)
            try:
                yield
            finally:
                self._queue = None
                send.close()
                tg.cancel_scope.cancel()

    async def _ready_for_bursts(self) -> None:
        """Open the store's whole pool before the first request (PostgreSQL), and, in a process
        of its own (``kitaru server start``), freeze the heap built so far."""
        open_full_pool = getattr(self.astate, "open_full_pool", None)
        if open_full_pool is not None:
            try:
                await open_full_pool()
            except KitaruError as exc:  # the database is not up yet: the pool opens on first use
                log.warning("state store not reachable at start (%s); serving anyway", exc)
        # Before the first request: a cookie logged out on another replica before this one
        # started is refused from its first request on.
        await self._pull_quietly()
        if self.own_process:
            _freeze_heap()

    async def _role_loop(self) -> None:
        lock = _role_lock(self.state_uri)
        try:
            while True:
                try:
                    self.leader = await lock.hold()
                    if self.leader:
                        await self.recover_pass()
                        if time.monotonic() - self._ended_pruned > _SESSIONS_PRUNE:
                            await self.astate.prune_ended_sessions(time.time())  # type: ignore[attr-defined]
                            self._ended_pruned = time.monotonic()
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


def _warm_up() -> None:
    """Import and build now what the first answer would otherwise pay for while every other
    request queues behind it (jsonschema alone imports in ~0.1 s; the runner, the validator
    class and its format checker are built once per process)."""
    from kitaru._engine import runner, wait_schema  # noqa: F401

    wait_schema._json_validator_class()
    wait_schema._format_checker()


def _freeze_heap() -> None:
    """Take what exists once the server is up (modules, the app, its schemas: about 90,000
    objects) out of the cyclic garbage collector's sight. Left in, the collector walks them all
    on every full collection, which a burst of requests triggers: ~50 ms on a small machine, in
    the middle of the burst, and the largest single cost of 200 concurrent answers. What is frozen
    lives as long as the process anyway; objects made later are collected as before."""
    import gc

    gc.collect()
    gc.freeze()


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


def _lease_free(record: ExecutionRecord) -> bool:
    from kitaru.store import _rules

    return _rules.lease_free(record.lease_owner, record.lease_expires_at, time.time())
