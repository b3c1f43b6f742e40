"""Storage contracts: the :class:`StateStore` and :class:`ArtifactStore` protocols and their records.

A state store keeps executions, their journals, leases and the artifact index; an artifact store keeps
bytes by key. Implementations: ``sqlite`` (embedded default) and ``memory`` state stores, ``filesystem``
and ``memory`` artifact stores. Each runs the shared conformance suite in
:mod:`kitaru.store.conformance`.

Both protocols are async (every method an ``async def``): one implementation per store, which the
Runner awaits on its event loop. Each store uses its library's natural path: a store whose class sets
``inline = True`` (SQLite, memory) does its work without ever suspending, so sync code may run its
coroutines to their end in place (:func:`kitaru._portal.run_inline`, no thread hop: a SQLite commit
is ~27 µs, cheaper than any hop); asyncpg, aiobotocore and the Azure aio client run on the caller's
event loop, one pool or client per running loop; blocking SDKs and file I/O go through
``anyio.to_thread``. Sync code reaches any store through :func:`sync_view`.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Protocol, runtime_checkable

__all__ = [
    "ACTIVE_STATUSES",
    "TERMINAL_STATUSES",
    "ApiKeyRecord",
    "ArtifactRecord",
    "ArtifactStore",
    "CacheEntry",
    "CatalogStore",
    "DeploymentRecord",
    "EndedSession",
    "ExecutionRecord",
    "ExecutionStatus",
    "JournalRecord",
    "KeyStore",
    "SecretRecord",
    "SecretStore",
    "StateStore",
    "SyncArtifactStore",
    "SyncStateStore",
    "SyncView",
    "TagMove",
    "TagRecord",
    "TagRequest",
    "run_inline",
    "sync_view",
]

from kitaru._portal import run_inline
from kitaru.store._sync import SyncArtifactStore, SyncStateStore, SyncView, sync_view

ExecutionStatus = Literal["running", "waiting", "completed", "failed", "cancelled"]
TERMINAL_STATUSES: frozenset[str] = frozenset({"completed", "failed", "cancelled"})
ACTIVE_STATUSES: frozenset[str] = frozenset({"running", "waiting"})

#: Journal record kinds that may exist at most once per (execution, call id). Stores enforce this:
#: it is what makes a completed checkpoint or an answered wait impossible to record twice.
ONCE_ONLY_KINDS: frozenset[str] = frozenset(
    {"checkpoint_completed", "wait_opened", "wait_answered", "wait_timed_out", "save", "input"}
)

#: The record kinds of one wait (its ``call_id`` is the wait's name), all once-only: what
#: :meth:`StateStore.read_wait` returns, with any ``cancel_requested`` record.
WAIT_KINDS: frozenset[str] = frozenset({"wait_opened", "wait_answered", "wait_timed_out"})


@dataclass(slots=True)
class ExecutionRecord:
    """One run of a flow."""

    id: str
    flow: str
    target: str
    """Import target of the flow: ``module:qualname``, or ``/abs/script.py:qualname`` for scripts."""
    sys_path: str | None
    """Directory to put on ``sys.path`` so ``target`` imports from any working directory."""
    status: str
    created_at: float
    updated_at: float
    error: str | None = None
    result_artifact: str | None = None
    original_exec_id: str | None = None
    lease_owner: str | None = None
    lease_expires_at: float | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class JournalRecord:
    """One entry of an execution's append-only journal."""

    kind: str
    call_id: str | None = None
    seq: int | None = None
    """Position of the call in program order (1, 2, ...); what divergence checks compare."""
    name: str | None = None
    """The checkpoint function's qualified name, or the wait's name."""
    attempt: int | None = None
    artifact_id: str | None = None
    data: dict[str, Any] | None = None
    ts: float = 0.0
    id: int | None = None
    """Assigned by the store; orders records within an execution."""


@dataclass(slots=True)
class ArtifactRecord:
    """A typed, versioned value tied to the execution and call that produced it."""

    id: str
    exec_id: str
    name: str
    version: int
    type: str
    """What the artifact is for: ``output``, ``input``, ``result``, ``answer``, ``save``..."""
    serializer: str
    data_type: str
    content_hash: str
    size: int
    call_id: str | None
    created_at: float
    inline: bytes | None = None
    """The bytes themselves when small; otherwise ``uri`` points into an artifact store."""
    uri: str | None = None
    tags: list[str] = field(default_factory=list)
    """Labels given by ``save(..., tags=[...])``; ``kitaru artifacts list --tag T`` finds them."""


@dataclass(slots=True)
class CacheEntry:
    """A checkpoint output reusable by any execution whose call has the same ``key`` (the
    function's code hash and its inputs' fingerprints, or the user's ``cache_key``)."""

    key: str
    flow: str
    checkpoint: str
    """The checkpoint function's qualified name."""
    artifact_id: str
    exec_id: str
    """The execution whose call produced the output."""
    call_id: str
    created_at: float


@dataclass(slots=True)
class DeploymentRecord:
    """An immutable, numbered version of a flow (``flow.deploy()``): the code and how to run it."""

    flow: str
    version: int
    """Assigned by the store (1, 2, ... per flow, never reused); ignored when creating."""
    target: str
    """The flow's import target inside the archive (``module:qualname``)."""
    archive_key: str
    """Key of the code archive in the stack's artifact store (``code/<sha256>.tar.gz``)."""
    archive_sha256: str
    created_by: str
    created_at: float
    image: str | None = None
    stack: str | None = None
    message: str | None = None
    requirements: dict[str, Any] = field(default_factory=dict)
    """What the archive was built with: its lock or requirements file (path, sha256), Python."""


@dataclass(slots=True)
class TagRecord:
    """A tag of a flow pointing at one of its versions; ``weight`` (0-100) makes it a canary:
    that share of new executions invoked on ``default`` goes to this tag's version."""

    flow: str
    tag: str
    version: int
    weight: int | None
    updated_at: float


@dataclass(slots=True)
class TagMove:
    """One recorded move of a tag (``version`` None: the tag was removed)."""

    flow: str
    tag: str
    version: int | None
    previous: int | None
    weight: int | None
    action: str
    """``deploy``, ``tag``, ``untag``, ``promote`` or ``rollback``."""
    who: str
    ts: float
    id: int | None = None
    """Assigned by the store; orders a flow's moves."""


@dataclass(frozen=True, slots=True)
class TagRequest:
    """A tag move to make: ``set`` (to ``version``, with ``weight``), ``remove``, ``promote``
    (this tag takes the version of tag ``source``) or ``rollback`` (to ``version``, or by default
    the previous version in this tag's history). Resolved inside the store's transaction, so
    what it reads (another tag, the history) cannot change before it writes."""

    tag: str
    action: Literal["set", "remove", "promote", "rollback"] = "set"
    version: int | None = None
    source: str | None = None
    weight: int | None = None


@dataclass(slots=True)
class ApiKeyRecord:
    """An API key of the team server, as stored: never the key itself, only its hash."""

    id: str
    """The key's public part (``kitaru_<id>_<secret>``): how a presented key is found."""
    name: str
    key_hash: str
    """``sha256:<hex>`` of the whole key (the secret has 256 bits of entropy, so no salt is needed)."""
    scopes: list[str]
    created_at: float
    revoked_at: float | None = None


@dataclass(frozen=True, slots=True)
class EndedSession:
    """A team-server session ended by a logout, as stored: its nonce, never its cookie (the
    cookie's MAC is what would let someone present it; the nonce alone proves nothing)."""

    nonce: str
    expires_at: float
    """When the session's cookie expires anyway: after that the record is of no use."""
    ended_at: float
    """When the logout was recorded, by the store's clock (readers compare it only with other
    ``ended_at`` values, never with their own clock)."""


@dataclass(slots=True)
class SecretRecord:
    """A secret as stored: its value only as ciphertext (:mod:`kitaru.secrets` encrypts it with
    ``KITARU_SECRETS_KEY`` before any store sees it)."""

    name: str
    ciphertext: bytes
    created_at: float
    updated_at: float


@runtime_checkable
class StateStore(Protocol):
    """Executions, journals, leases and the artifact index.

    Duties every implementation keeps (the conformance suite checks each):

    - ``commit`` is atomic: its records, artifacts and status change all land or none do.
    - A record of a kind in ``ONCE_ONLY_KINDS`` exists at most once per (execution, call id); a second
      one raises :class:`~kitaru.errors.KitaruConflictError` and the whole commit is rolled back.
    - When ``owner`` is given, a commit succeeds only while ``owner`` holds the execution's lease;
      otherwise it raises :class:`~kitaru.errors.KitaruLeaseError` and writes nothing.
    - Journal records come back in the order they were committed.
    - ``completed`` and ``cancelled`` are final: no commit, suspension, lease or answer moves an
      execution out of them (:mod:`kitaru.store._rules` holds these rules and their messages).
    - Safe to call concurrently: from many tasks on one event loop, from several threads and event
      loops (a store that holds connections keeps one pool per running loop), and from several
      processes on the same database.
    - ``inline = True`` promises that every coroutine method completes without ever suspending and
      without needing a running event loop (SQLite, memory); sync callers then run it in place.
    - Deployments: versions are numbered per flow atomically (1, 2, ...; never reused) and never
      change; a call's tag moves are one transaction with their history (every move recorded
      once, in commit order), checked by :func:`kitaru.store._rules.plan_tag_moves` (a bad
      request raises and changes nothing).
    """

    inline: ClassVar[bool]

    async def create_execution(
        self,
        execution: ExecutionRecord,
        artifacts: Sequence[ArtifactRecord],
        records: Sequence[JournalRecord] = (),
    ) -> tuple[ExecutionRecord, bool]:
        """Insert ``execution`` with ``artifacts`` (each one of type ``input`` referenced by an
        ``input`` journal record named after its parameter), then ``records`` (a replay's journal,
        seeded from its original), in one transaction, unless its id exists already.

        Returns the stored record and whether it was created by this call (idempotent starts).
        """
        ...

    async def get_execution(self, exec_id: str) -> ExecutionRecord | None:
        """The execution with exactly this id, or None."""
        ...

    async def match_execution_ids(self, prefix: str, limit: int = 2) -> list[str]:
        """Ids starting with ``prefix`` (to resolve the short ids people type)."""
        ...

    async def list_executions(
        self,
        *,
        flow: str | None = None,
        status: str | None = None,
        limit: int = 50,
        version: int | None = None,
        before: str | None = None,
    ) -> list[ExecutionRecord]:
        """Newest first: by ``created_at``, then id, both descending (ids need not sort by time:
        a caller may choose one). ``version``: only executions of that deployment version (the
        ``deployment.version`` of their metadata); ``before``: the id of an execution, the
        previous page's last (the cursor of the next page): only those after it in this order,
        whatever the filters. A ``before`` that is no execution's id raises KitaruUsageError.
        A page reads by index: its cost grows with ``limit``, not with the number of executions."""
        ...

    async def acquire_lease(
        self,
        exec_id: str,
        owner: str,
        ttl: float,
        *,
        allowed_statuses: Iterable[str],
        set_status: str | None = "running",
    ) -> ExecutionRecord:
        """Make ``owner`` the runner of the execution.

        Succeeds when nobody holds the lease, the lease expired, its holder is ``owner``, or its holder
        is a process on this host that no longer exists. Raises KitaruLeaseError otherwise,
        KitaruStateError when the status is final or not in ``allowed_statuses``,
        KitaruNotFoundError when the execution does not exist.
        """
        ...

    async def list_recoverable(self, *, limit: int = 100) -> list[ExecutionRecord]:
        """Executions that no runner moves on, oldest first: ``running`` ones whose lease is free
        (released, expired, or held by a process on this host that no longer exists), and
        ``waiting`` ones with an open wait whose deadline (``data["deadline"]`` of its
        ``wait_opened`` record) has passed. What ``kitaru executions recover`` resumes."""
        ...

    async def renew_leases(self, owner: str, exec_ids: Sequence[str], ttl: float) -> dict[str, str]:
        """Extend ``owner``'s leases; returns each execution's current status (to see cancels)."""
        ...

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
        """Append records and artifacts, and optionally change the execution's status, atomically.

        Returns the execution's status after the commit: a runner whose commit returns
        ``cancelled`` stops there. KitaruNotFoundError, writing nothing, if there is no such
        execution. Records may still land in a
        cancelled execution (a checkpoint that finished as the cancel came is paid for), but a
        ``status`` change out of a final status raises KitaruStateError and writes nothing.
        """
        ...

    async def suspend(self, exec_id: str, owner: str, waiting_on: Sequence[str]) -> bool:
        """Mark the execution ``waiting`` and release the lease, unless a wait in ``waiting_on``
        was answered meanwhile (then nothing changes and False is returned: keep running).
        KitaruStateError when the execution was cancelled (it does not wait, it stops)."""
        ...

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
        """Record a wait's answer. The wait must have been opened (KitaruNotFoundError otherwise)
        and not be answered or timed out, in an execution that has not finished (KitaruStateError
        otherwise).

        With ``take_lease``, a ``waiting`` execution whose lease is free moves to ``running`` under
        ``owner`` in the same transaction and True is returned: the caller resumes it.
        """
        ...

    async def cancel(self, exec_id: str) -> ExecutionRecord:
        """Cancel a running or waiting execution (KitaruStateError when it already finished)."""
        ...

    async def read_journal(self, exec_id: str, after: int = 0) -> list[JournalRecord]:
        """An execution's records, in commit order; with ``after`` (a record's ``id``) only those
        committed after it, so a follower's next read costs what is new, not the whole journal."""
        ...

    async def read_wait(self, exec_id: str, name: str) -> list[JournalRecord]:
        """The records that decide whether wait ``name`` of the execution takes an answer: its
        ``wait_opened``, ``wait_answered`` and ``wait_timed_out`` records (``call_id == name``) and any
        ``cancel_requested`` record, in commit order; empty for an unknown execution, and for an
        unknown wait of an execution that was not cancelled.

        What answering a wait reads instead of the whole journal: a store finds these records
        through an index, so the read costs the same after ten checkpoints or ten thousand."""
        ...

    async def get_artifact(self, artifact_id: str) -> ArtifactRecord | None:
        """The artifact with this id, or None."""
        ...

    async def list_artifacts(
        self, exec_id: str, *, name: str | None = None, type: str | None = None
    ) -> list[ArtifactRecord]:
        """The artifacts an execution's journal references (all but ``load`` records), in journal
        order, each once, optionally filtered by name and type."""
        ...

    async def create_deployment(
        self, record: DeploymentRecord, *, tag: str | None = None, weight: int | None = None
    ) -> tuple[DeploymentRecord, list[TagMove]]:
        """Store ``record`` as the flow's next version (its number assigned here) and, in the same
        transaction, tag it: ``default`` when it is the flow's first version, and ``tag`` (with
        ``weight``) when given. Returns the stored record and the moves made."""
        ...

    async def get_deployment(self, flow: str, version: int) -> DeploymentRecord | None:
        """Version ``version`` of ``flow``, or None."""
        ...

    async def list_deployments(self, flow: str | None = None) -> list[DeploymentRecord]:
        """Versions by flow, then number."""
        ...

    async def list_tags(self, flow: str | None = None) -> list[TagRecord]:
        """Tags by flow, then name."""
        ...

    async def move_tags(self, flow: str, requests: Sequence[TagRequest], *, who: str) -> list[TagMove]:
        """Apply ``requests`` in order, atomically, each recorded in the history; all or nothing."""
        ...

    async def tag_history(self, flow: str, tag: str | None = None) -> list[TagMove]:
        """A flow's tag moves (of ``tag`` only, when given), oldest first."""
        ...

    async def aclose(self) -> None:
        """Release connections (those of every event loop the store was used on); the store is
        unusable afterwards. Closing twice is fine."""
        ...


@runtime_checkable
class KeyStore(Protocol):
    """The team server's API keys, kept by the state stores that can back a server (SQLite,
    PostgreSQL, memory); a state store reached over HTTP does not expose them.

    Duties (checked by ``KeyStoreConformance``): names are unique among all keys, revoked or not
    (KitaruConflictError); ``revoke_api_key`` is final and idempotent; records hold hashes only.
    Ended sessions (logouts) are shared through the store so every server process refuses the
    cookie: recording one is idempotent and keeps the first ``ended_at``; reading them since a
    point returns every record ended at or after it; pruning removes only expired ones."""

    async def create_api_key(self, key: ApiKeyRecord) -> None:
        """Store a new key (KitaruConflictError when its name or id exists)."""
        ...

    async def get_api_key(self, key_id: str) -> ApiKeyRecord | None:
        """The key with this public id, revoked or not, or None."""
        ...

    async def list_api_keys(self) -> list[ApiKeyRecord]:
        """Every key, oldest first."""
        ...

    async def revoke_api_key(self, name: str) -> ApiKeyRecord:
        """Revoke the key called ``name`` (KitaruNotFoundError when there is none); revoking a
        revoked key keeps its first revocation time."""
        ...

    async def end_session(self, nonce: str, expires_at: float) -> None:
        """Record that the session with ``nonce`` ended (a logout), stamped with the store's
        clock; recording it again changes nothing."""
        ...

    async def ended_sessions(self, since: float) -> list[EndedSession]:
        """The sessions recorded as ended at or after ``since`` (an ``ended_at`` value; 0 for
        all), oldest first; expired ones not pruned yet included."""
        ...

    async def prune_ended_sessions(self, before: float) -> int:
        """Forget the ended sessions whose cookie expires before ``before``; returns how many."""
        ...


@runtime_checkable
class CatalogStore(Protocol):
    """What is found across executions: the checkpoint cache and artifacts by tag. Kept by the
    state stores with tables of their own (SQLite, PostgreSQL, memory); a store without it (one
    reached over HTTP) runs checkpoints uncached.

    Duties (checked by :class:`kitaru.store.catalog_conformance.CatalogStoreConformance`): one
    entry per key, the first one written wins (a concurrent writer of the same key keeps the
    stored entry and gets it back); ``clear_cache`` removes every entry, or a flow's, and says
    how many; artifacts are found by any of their tags, newest first."""

    async def get_cache_entry(self, key: str) -> CacheEntry | None:
        """The entry under ``key``, or None."""
        ...

    async def put_cache_entry(self, entry: CacheEntry) -> CacheEntry:
        """Store ``entry`` unless its key exists; returns the stored entry."""
        ...

    async def clear_cache(self, flow: str | None = None) -> int:
        """Remove the entries (of ``flow`` only, when given); returns how many went."""
        ...

    async def list_cache_entries(self, flow: str | None = None) -> list[CacheEntry]:
        """Entries (of ``flow`` only, when given), oldest first."""
        ...

    async def find_artifacts(self, *, tag: str, limit: int = 100) -> list[ArtifactRecord]:
        """Artifacts carrying ``tag``, newest first."""


@runtime_checkable
class SecretStore(Protocol):
    """Secrets for ``kitaru.secret()``, kept by the state stores flows run on (SQLite,
    PostgreSQL, memory) as opaque ciphertext: a store never sees a plain value.

    Duties (checked by ``SecretStoreConformance``): names are unique; ``put_secret`` replaces a
    secret's ciphertext and keeps its ``created_at``; ``delete_secret`` says whether there was one."""

    async def put_secret(self, name: str, ciphertext: bytes) -> SecretRecord:
        """Create or replace the secret ``name``; returns what is stored."""
        ...

    async def get_secret(self, name: str) -> SecretRecord | None:
        """The secret ``name``, or None."""
        ...

    async def list_secrets(self) -> list[SecretRecord]:
        """Every secret, by name."""
        ...

    async def delete_secret(self, name: str) -> bool:
        """Remove the secret ``name``; False when there was none."""
        ...


@runtime_checkable
class ArtifactStore(Protocol):
    """Bytes by key, written once.

    Duties: ``put`` never overwrites a *different* blob under an existing key (writing the same bytes
    again is fine, that is how content-addressed blobs are shared); a reader never sees a partial blob;
    ``open`` streams in bounded chunks. Keys are ``/``-separated relative paths. No artifact store is
    ``inline``: its calls happen only for values over 64 KiB, where a thread hop is noise.
    """

    inline: ClassVar[bool]

    uri: str
    """Base URI of the store (``file:///...``, ``s3://bucket/prefix``); ``uri_for`` builds on it."""

    def uri_for(self, key: str) -> str:
        """The full URI of ``key`` in this store."""
        ...

    async def put(self, key: str, data: bytes) -> None:
        """Create ``key`` with ``data`` (KitaruConflictError if it holds different bytes)."""
        ...

    async def put_stream(self, key: str, chunks: AsyncIterable[bytes]) -> None:
        """Create ``key`` from chunks without holding them all in memory."""
        ...

    async def get(self, key: str) -> bytes:
        """The bytes under ``key`` (KitaruNotFoundError if absent)."""
        ...

    def open(self, key: str, chunk_size: int = 1 << 20) -> AsyncIterator[bytes]:
        """Stream the bytes under ``key`` (an async generator: KitaruNotFoundError comes from its
        first step when the key is absent)."""
        ...

    async def exists(self, key: str) -> bool:
        """Whether ``key`` exists."""
        ...

    def list(self, prefix: str = "") -> AsyncIterator[str]:
        """Keys starting with ``prefix`` (an async generator)."""
        ...

    async def delete(self, key: str) -> None:
        """Remove ``key``; absent keys are not an error."""
        ...

    async def aclose(self) -> None:
        """Release clients (those of every event loop the store was used on); closing twice is
        fine, and a store with nothing to release does nothing."""
        ...
