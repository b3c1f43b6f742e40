"""In-memory stores, for tests and throwaway runs. Nothing survives the process."""

from __future__ import annotations

import copy
import threading
import time
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Sequence
from typing import Any, ClassVar

from kitaru.errors import (
    KitaruConflictError,
    KitaruLeaseError,
    KitaruNotFoundError,
)
from kitaru.store import (
    ONCE_ONLY_KINDS,
    WAIT_KINDS,
    ApiKeyRecord,
    ArtifactRecord,
    CacheEntry,
    DeploymentRecord,
    EndedSession,
    ExecutionRecord,
    JournalRecord,
    SecretRecord,
    TagMove,
    TagRecord,
    TagRequest,
    _rules,
)

__all__ = ["MemoryArtifactStore", "MemoryStateStore"]


def _lease_lost(e: ExecutionRecord) -> KitaruLeaseError:
    # Worded as the SQLite and PostgreSQL stores word it: a runner's log reads the same on each.
    return KitaruLeaseError(
        f"execution {e.id} is now driven by {e.lease_owner or 'nobody'} (status {e.status}); this "
        "runner lost its lease and stops without writing."
    )


def _time_order(e: ExecutionRecord) -> tuple[float, str]:
    """Where an execution lists: by creation time, then id (the SQL stores' index order)."""
    return (e.created_at, e.id)


class MemoryStateStore:
    """A :class:`~kitaru.store.StateStore` in dictionaries, guarded by one lock (``inline``: its
    coroutines never suspend)."""

    inline: ClassVar[bool] = True

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._executions: dict[str, ExecutionRecord] = {}
        self._journal: dict[str, list[JournalRecord]] = {}
        self._once: set[tuple[str, str, str | None]] = set()
        self._artifacts: dict[str, ArtifactRecord] = {}
        self._next_id = 1
        self._deployments: dict[str, list[DeploymentRecord]] = {}
        self._tags: dict[str, dict[str, TagRecord]] = {}
        self._moves: list[TagMove] = []
        self._keys: dict[str, ApiKeyRecord] = {}
        self._ended_sessions: dict[str, EndedSession] = {}
        self._cache: dict[str, CacheEntry] = {}
        self._secrets: dict[str, SecretRecord] = {}

    def _get(self, exec_id: str) -> ExecutionRecord:
        try:
            return self._executions[exec_id]
        except KeyError:
            raise KitaruNotFoundError(f"no execution {exec_id!r}") from None

    def _append(self, exec_id: str, records: Sequence[JournalRecord]) -> None:
        keys = [(exec_id, r.kind, r.call_id) for r in records if r.kind in ONCE_ONLY_KINDS]
        if len(set(keys)) != len(keys) or self._once.intersection(keys):
            raise KitaruConflictError(
                f"execution {exec_id}: a record already exists for this call; another runner "
                "completed it first."
            )
        self._once.update(keys)
        journal = self._journal.setdefault(exec_id, [])
        now = time.time()
        for r in records:
            stored = copy.copy(r)
            stored.id, stored.ts = self._next_id, r.ts or now
            self._next_id += 1
            journal.append(stored)

    async def create_execution(
        self,
        execution: ExecutionRecord,
        artifacts: Sequence[ArtifactRecord],
        records: Sequence[JournalRecord] = (),
    ) -> tuple[ExecutionRecord, bool]:
        with self._lock:
            if execution.id in self._executions:
                return copy.deepcopy(self._executions[execution.id]), False
            self._executions[execution.id] = copy.deepcopy(execution)
            for a in artifacts:
                self._artifacts[a.id] = a
            self._append(
                execution.id,
                [
                    *(
                        JournalRecord(kind="input", call_id=a.name, artifact_id=a.id)
                        for a in artifacts
                        if a.type == "input"
                    ),
                    *records,
                ],
            )
        return execution, True

    async def get_execution(self, exec_id: str) -> ExecutionRecord | None:
        with self._lock:
            e = self._executions.get(exec_id)
            return copy.deepcopy(e) if e else None

    async def match_execution_ids(self, prefix: str, limit: int = 2) -> list[str]:
        with self._lock:
            return sorted(i for i in self._executions if i.startswith(prefix))[:limit]

    async def list_executions(
        self,
        *,
        flow: str | None = None,
        status: str | None = None,
        limit: int = 50,
        version: int | None = None,
        before: str | None = None,
    ) -> list[ExecutionRecord]:
        _rules.check_page_size(limit)
        with self._lock:
            after: tuple[float, str] | None = None
            if before is not None:
                cursor = self._executions.get(before)
                if cursor is None:
                    raise _rules.unknown_cursor(before)
                after = _time_order(cursor)
            found = [
                copy.deepcopy(e)
                for e in self._executions.values()
                if (flow is None or e.flow == flow)
                and (status is None or e.status == status)
                and (version is None or (e.metadata.get("deployment") or {}).get("version") == version)
                and (after is None or _time_order(e) < after)
            ]
        return sorted(found, key=_time_order, reverse=True)[:limit]

    async def acquire_lease(
        self,
        exec_id: str,
        owner: str,
        ttl: float,
        *,
        allowed_statuses: Iterable[str],
        set_status: str | None = "running",
    ) -> ExecutionRecord:
        allowed = set(allowed_statuses)
        now = time.time()
        with self._lock:
            e = self._get(exec_id)
            _rules.check_acquirable(exec_id, e.status, allowed)
            _rules.check_takeover(exec_id, e.lease_owner, e.lease_expires_at, owner, now)
            e.lease_owner, e.lease_expires_at = owner, now + ttl
            e.status = set_status or e.status
            e.updated_at = now
            return copy.deepcopy(e)

    async def list_recoverable(self, *, limit: int = 100) -> list[ExecutionRecord]:
        now = time.time()
        with self._lock:
            found = []
            for e in self._executions.values():
                if e.status == "running":
                    due = _rules.lease_free(e.lease_owner, e.lease_expires_at, now)
                elif e.status == "waiting":
                    due = any(
                        r.kind == "wait_opened"
                        and (r.data or {}).get("deadline") is not None
                        and (r.data or {})["deadline"] <= now
                        and (e.id, "wait_answered", r.call_id) not in self._once
                        and (e.id, "wait_timed_out", r.call_id) not in self._once
                        for r in self._journal.get(e.id, [])
                    )
                else:
                    due = False
                if due:
                    found.append(copy.deepcopy(e))
        return sorted(found, key=_time_order)[:limit]

    async def renew_leases(self, owner: str, exec_ids: Sequence[str], ttl: float) -> dict[str, str]:
        with self._lock:
            out = {}
            for i in exec_ids:
                e = self._executions.get(i)
                if e is None:
                    continue
                if e.lease_owner == owner:
                    e.lease_expires_at = time.time() + ttl
                out[i] = e.status
            return out

    async def commit(
        self,
        exec_id: str,
        records: Sequence[JournalRecord],
        artifacts: Sequence[ArtifactRecord] = (),
        *,
        owner: str | None = None,
        status: str | None = None,
        error: str | None = None,
        result_artifact: str | None = None,
        release_lease: bool = False,
        metadata: dict[str, Any] | None = None,
    ) -> str | None:
        with self._lock:
            e = self._get(exec_id)
            if owner is not None and e.lease_owner != owner:
                raise _lease_lost(e)
            if status is not None:
                _rules.check_status_change(exec_id, e.status, status)
            self._append(exec_id, records)
            for a in artifacts:
                self._artifacts[a.id] = a
            if metadata:
                e.metadata = {**e.metadata, **metadata}
            if status is not None:
                e.status, e.error = status, error
            if result_artifact is not None:
                e.result_artifact = result_artifact
            if release_lease:
                e.lease_owner = e.lease_expires_at = None
            e.updated_at = time.time()
            return e.status

    async def suspend(self, exec_id: str, owner: str, waiting_on: Sequence[str]) -> bool:
        with self._lock:
            e = self._get(exec_id)
            if e.lease_owner != owner:
                raise _lease_lost(e)
            _rules.check_status_change(exec_id, e.status, "waiting")
            if any((exec_id, "wait_answered", c) in self._once for c in waiting_on):
                return False
            e.status, e.lease_owner, e.lease_expires_at = "waiting", None, None
            e.updated_at = time.time()
            return True

    async def answer_wait(
        self,
        exec_id: str,
        record: JournalRecord,
        artifact: ArtifactRecord,
        *,
        owner: str,
        ttl: float,
        take_lease: bool,
    ) -> bool:
        now = time.time()
        with self._lock:
            e = self._get(exec_id)
            _rules.check_answerable(exec_id, e.status)
            kinds = [
                kind
                for kind in ("wait_opened", "wait_answered", "wait_timed_out")
                if (exec_id, kind, record.call_id) in self._once
            ]
            _rules.check_wait_open(exec_id, record.call_id, kinds)
            self._append(exec_id, [record])
            self._artifacts[artifact.id] = artifact
            free = _rules.lease_free(e.lease_owner, e.lease_expires_at, now)
            if take_lease and e.status == "waiting" and free:
                e.status, e.lease_owner, e.lease_expires_at = "running", owner, now + ttl
                return True
            return False

    async def create_api_key(self, key: ApiKeyRecord) -> None:
        with self._lock:
            if key.id in self._keys or any(k.name == key.name for k in self._keys.values()):
                raise _rules.key_exists(key.name)
            self._keys[key.id] = copy.deepcopy(key)

    async def get_api_key(self, key_id: str) -> ApiKeyRecord | None:
        with self._lock:
            key = self._keys.get(key_id)
            return copy.deepcopy(key) if key is not None else None

    async def list_api_keys(self) -> list[ApiKeyRecord]:
        with self._lock:
            return sorted((copy.deepcopy(k) for k in self._keys.values()), key=lambda k: (k.created_at, k.id))

    async def revoke_api_key(self, name: str) -> ApiKeyRecord:
        with self._lock:
            for key in self._keys.values():
                if key.name == name:
                    if key.revoked_at is None:
                        key.revoked_at = time.time()
                    return copy.deepcopy(key)
        raise _rules.no_such_key(name)

    async def end_session(self, nonce: str, expires_at: float) -> None:
        with self._lock:
            self._ended_sessions.setdefault(nonce, EndedSession(nonce, expires_at, time.time()))

    async def ended_sessions(self, since: float) -> list[EndedSession]:
        with self._lock:
            found = [s for s in self._ended_sessions.values() if s.ended_at >= since]
        return sorted(found, key=lambda s: (s.ended_at, s.nonce))

    async def prune_ended_sessions(self, before: float) -> int:
        with self._lock:
            gone = [n for n, s in self._ended_sessions.items() if s.expires_at < before]
            for nonce in gone:
                del self._ended_sessions[nonce]
        return len(gone)

    async def get_cache_entry(self, key: str) -> CacheEntry | None:
        with self._lock:
            entry = self._cache.get(key)
            return copy.copy(entry) if entry is not None else None

    async def put_cache_entry(self, entry: CacheEntry) -> CacheEntry:
        with self._lock:
            return copy.copy(self._cache.setdefault(entry.key, copy.copy(entry)))

    async def clear_cache(self, flow: str | None = None) -> int:
        with self._lock:
            gone = [k for k, e in self._cache.items() if flow is None or e.flow == flow]
            for key in gone:
                del self._cache[key]
            return len(gone)

    async def list_cache_entries(self, flow: str | None = None) -> list[CacheEntry]:
        with self._lock:
            entries = [copy.copy(e) for e in self._cache.values() if flow is None or e.flow == flow]
        return sorted(entries, key=lambda e: (e.created_at, e.key))

    async def find_artifacts(self, *, tag: str, limit: int = 100) -> list[ArtifactRecord]:
        with self._lock:
            found = [a for a in self._artifacts.values() if tag in a.tags]
        return sorted(found, key=lambda a: (a.created_at, a.id), reverse=True)[:limit]

    async def put_secret(self, name: str, ciphertext: bytes) -> SecretRecord:
        with self._lock:
            now = time.time()
            old = self._secrets.get(name)
            record = SecretRecord(name, bytes(ciphertext), old.created_at if old else now, now)
            self._secrets[name] = record
            return copy.deepcopy(record)

    async def get_secret(self, name: str) -> SecretRecord | None:
        with self._lock:
            record = self._secrets.get(name)
            return copy.deepcopy(record) if record is not None else None

    async def list_secrets(self) -> list[SecretRecord]:
        with self._lock:
            return [copy.deepcopy(self._secrets[n]) for n in sorted(self._secrets)]

    async def delete_secret(self, name: str) -> bool:
        with self._lock:
            return self._secrets.pop(name, None) is not None

    async def cancel(self, exec_id: str) -> ExecutionRecord:
        with self._lock:
            e = self._get(exec_id)
            _rules.check_cancellable(exec_id, e.status)
            if e.status == "waiting":
                e.lease_owner = None
            e.status = "cancelled"
            self._append(exec_id, [JournalRecord(kind="cancel_requested")])
            return copy.deepcopy(e)

    async def read_journal(self, exec_id: str, after: int = 0) -> list[JournalRecord]:
        with self._lock:
            return [copy.copy(r) for r in self._journal.get(exec_id, []) if (r.id or 0) > after]

    async def read_wait(self, exec_id: str, name: str) -> list[JournalRecord]:
        # A scan: this store holds test-sized journals, and a scan cannot drift from the contract.
        with self._lock:
            return [
                copy.copy(r)
                for r in self._journal.get(exec_id, [])
                if r.kind == "cancel_requested" or (r.kind in WAIT_KINDS and r.call_id == name)
            ]

    async def get_artifact(self, artifact_id: str) -> ArtifactRecord | None:
        with self._lock:
            return self._artifacts.get(artifact_id)

    async def list_artifacts(
        self, exec_id: str, *, name: str | None = None, type: str | None = None
    ) -> list[ArtifactRecord]:
        with self._lock:
            seen: dict[str, ArtifactRecord] = {}
            for r in self._journal.get(exec_id, []):
                a = self._artifacts.get(r.artifact_id or "")
                if (
                    a is not None
                    and r.kind != "load"
                    and a.id not in seen
                    and (name is None or a.name == name)
                    and (type is None or a.type == type)
                ):
                    seen[a.id] = a
            return list(seen.values())

    # -- deployments ------------------------------------------------------------------------

    def _apply(self, flow: str, requests: list[TagRequest], who: str, action: str | None) -> list[TagMove]:
        tags = {t.tag: (t.version, t.weight) for t in self._tags.get(flow, {}).values()}
        moves = _rules.plan_tag_moves(
            flow,
            requests,
            (d.version for d in self._deployments.get(flow, [])),
            tags,
            lambda tag: [m.version for m in self._moves if m.flow == flow and m.tag == tag],
            who=who,
            now=time.time(),
            action=action,
        )
        current = self._tags.setdefault(flow, {})
        for m in moves:
            m.id = self._next_id
            self._next_id += 1
            self._moves.append(copy.copy(m))
            if m.version is None:
                current.pop(m.tag, None)
            else:
                current[m.tag] = TagRecord(flow, m.tag, m.version, m.weight, m.ts)
        return moves

    async def create_deployment(
        self, record: DeploymentRecord, *, tag: str | None = None, weight: int | None = None
    ) -> tuple[DeploymentRecord, list[TagMove]]:
        with self._lock:
            versions = self._deployments.setdefault(record.flow, [])
            stored = copy.deepcopy(record)
            stored.version = len(versions) + 1
            requests = _rules.deploy_requests(tag, weight, stored.version, not versions)
            versions.append(stored)
            try:
                moves = self._apply(record.flow, requests, record.created_by, "deploy")
            except BaseException:
                versions.pop()
                raise
            return copy.deepcopy(stored), moves

    async def get_deployment(self, flow: str, version: int) -> DeploymentRecord | None:
        with self._lock:
            found = [d for d in self._deployments.get(flow, []) if d.version == version]
            return copy.deepcopy(found[0]) if found else None

    async def list_deployments(self, flow: str | None = None) -> list[DeploymentRecord]:
        with self._lock:
            return [
                copy.deepcopy(d)
                for name in sorted(self._deployments)
                if flow is None or name == flow
                for d in self._deployments[name]
            ]

    async def list_tags(self, flow: str | None = None) -> list[TagRecord]:
        with self._lock:
            return [
                copy.copy(self._tags[name][tag])
                for name in sorted(self._tags)
                if flow is None or name == flow
                for tag in sorted(self._tags[name])
            ]

    async def move_tags(self, flow: str, requests: Sequence[TagRequest], *, who: str) -> list[TagMove]:
        with self._lock:
            # plan_tag_moves raises before _apply changes anything: all or nothing.
            return self._apply(flow, list(requests), who, None)

    async def tag_history(self, flow: str, tag: str | None = None) -> list[TagMove]:
        with self._lock:
            return [copy.copy(m) for m in self._moves if m.flow == flow and (tag is None or m.tag == tag)]

    async def aclose(self) -> None:
        pass


class MemoryArtifactStore:
    """An :class:`~kitaru.store.ArtifactStore` in a dictionary.

    Not ``inline``, like every artifact store (the contract lets callers rely on no artifact store
    being inline), although its coroutines never suspend."""

    inline: ClassVar[bool] = False

    def __init__(self, name: str = "default") -> None:
        self.uri = f"memory://{name}"
        self._blobs: dict[str, bytes] = {}
        self._lock = threading.Lock()

    def uri_for(self, key: str) -> str:
        return f"{self.uri}/{key}"

    async def put(self, key: str, data: bytes) -> None:
        self._put(key, data)

    def _put(self, key: str, data: bytes) -> None:
        with self._lock:
            existing = self._blobs.get(key)
            if existing is not None and existing != data:
                raise KitaruConflictError(
                    f"artifact {key!r} already holds different bytes; artifacts are written once."
                )
            self._blobs[key] = bytes(data)

    async def put_stream(self, key: str, chunks: AsyncIterable[bytes]) -> None:
        self._put(key, b"".join([chunk async for chunk in chunks]))

    async def get(self, key: str) -> bytes:
        return self._get(key)

    def _get(self, key: str) -> bytes:
        try:
            return self._blobs[key]
        except KeyError:
            raise KitaruNotFoundError(f"no artifact blob {key!r} in {self.uri}") from None

    async def open(self, key: str, chunk_size: int = 1 << 20) -> AsyncIterator[bytes]:
        data = self._get(key)
        for i in range(0, len(data), chunk_size):
            yield data[i : i + chunk_size]

    async def exists(self, key: str) -> bool:
        return key in self._blobs

    async def list(self, prefix: str = "") -> AsyncIterator[str]:
        with self._lock:
            keys = sorted(k for k in self._blobs if k.startswith(prefix))
        for key in keys:
            yield key

    async def delete(self, key: str) -> None:
        with self._lock:
            self._blobs.pop(key, None)

    async def aclose(self) -> None:
        pass
