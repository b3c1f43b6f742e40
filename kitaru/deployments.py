"""Deployments: immutable numbered versions of a flow, tags that point at them, weighted canaries.

``flow.deploy()`` freezes the flow's code (a content-addressed archive of its source root,
uploaded once per content to the stack's artifact store), the environment's lock, the image and
the flow's target into version ``N`` of the flow (numbered by the state store, never reused).
Tags point at versions; the first version gets ``default``. Invoking ``FLOW@default`` routes each
new execution: a tag with a weight ``w`` takes ``w`` % of them, chosen by a stable hash of the
execution id (its idempotency key), so the same key always lands on the same version.

An execution records its version (``metadata["deployment"]``: flow, version, archive key and
hash, target, image); resuming, answering, retrying or replaying it loads that version's code
(:func:`kitaru._engine.loading.aload_execution_flow`), whatever was deployed since.

``KitaruClient().deployments`` is the Python side of ``kitaru deployments``.
"""

from __future__ import annotations

import builtins
import contextlib
import dataclasses
import getpass
import hashlib
import socket
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kitaru.errors import KitaruLeaseError, KitaruNotFoundError, KitaruStateError, KitaruUsageError
from kitaru.store import DeploymentRecord, TagMove, TagRecord, TagRequest
from kitaru.store._rules import DEFAULT_TAG, check_weight

if TYPE_CHECKING:
    from kitaru._engine.flow import Flow
    from kitaru._engine.handles import FlowHandle
    from kitaru._engine.runner import Outcome
    from kitaru._engine.runtime import Runtime
    from kitaru.client import KitaruClient

__all__ = [
    "DEFAULT_TAG",
    "Deployment",
    "Deployments",
    "achoose",
    "adeploy",
    "aflow_known",
    "aget",
    "ahistory",
    "ainvoke",
    "alist",
    "amove",
    "parse_ref",
    "route",
    "summary",
]

#: Buckets a key hashes into; a weight of w % takes w * 100 of them.
_BUCKETS = 10_000


@dataclass(frozen=True, slots=True)
class Deployment:
    """A version of a flow with the tags that point at it now."""

    flow: str
    version: int
    target: str
    archive_key: str
    archive_sha256: str
    created_by: str
    created_at: float
    image: str | None
    stack: str | None
    message: str | None
    requirements: dict[str, Any]
    tags: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _view(record: DeploymentRecord, tags: list[TagRecord]) -> Deployment:
    names = tuple(t.tag for t in tags if t.flow == record.flow and t.version == record.version)
    return Deployment(**dataclasses.asdict(record), tags=names)


def summary(record: DeploymentRecord, tag: str | None = None) -> dict[str, Any]:
    """What an execution records of its version: enough for any process (or a remote job) to
    load the same code: the archive's key and hash, the target inside it, the image."""
    return {
        "flow": record.flow,
        "version": record.version,
        "tag": tag,
        "target": record.target,
        "archive_key": record.archive_key,
        "archive_sha256": record.archive_sha256,
        "image": record.image,
    }


def route(flow: str, key: str, default_version: int, weighted: list[tuple[str, int, int]]) -> tuple[str, int]:
    """The (tag, version) an invocation of ``flow@default`` with idempotency key ``key`` runs.

    ``weighted``: (tag, version, weight %) of the flow's weighted tags. The key's SHA-256 (with the
    flow's name, so flows split independently) picks a bucket; each weighted tag, by name, takes
    its share of the buckets, and the rest go to ``default``. The same key always gets the same
    answer while the tags stay put."""
    digest = hashlib.sha256(f"{flow}\0{key}".encode()).digest()
    bucket = int.from_bytes(digest[:8], "big") % _BUCKETS
    edge = 0
    for tag, version, weight in sorted(weighted):
        edge += weight * (_BUCKETS // 100)
        if bucket < edge:
            return tag, version
    return DEFAULT_TAG, default_version


def parse_ref(ref: str) -> tuple[str, str | None, int | None]:
    """``FLOW``, ``FLOW@TAG`` or ``FLOW:N`` as (flow, tag, version)."""
    if "@" in ref:
        flow, _, tag = ref.partition("@")
        if not flow or not tag:
            raise KitaruUsageError(f"{ref!r} is not FLOW@TAG (e.g. `review_flow@canary`).")
        return flow, tag, None
    if ":" in ref:
        flow, _, number = ref.rpartition(":")
        if not flow or not number.isdigit():
            raise KitaruUsageError(f"{ref!r} is not FLOW:N (e.g. `review_flow:3`).")
        return flow, None, int(number)
    return ref, None, None


def _who() -> str:
    try:
        user = getpass.getuser()
    except Exception:  # no user name in this environment (a container without passwd entry)
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def _source(flow: Flow[Any, Any]) -> tuple[Path, str]:
    """The directory to freeze and the flow's target inside it; refuses code with no source."""
    location, _, qualname = flow.target.rpartition(":")
    if flow.sys_path is None or location == "__main__":
        raise KitaruUsageError(
            f"flow {flow.name!r} was defined in an interactive session (no source file), so "
            "there is no code to freeze into a version. Put it in a module or script and deploy "
            "from there, e.g. `python -c 'from agent import my_flow; my_flow.deploy()'`."
        )
    if "<locals>" in qualname:
        raise KitaruUsageError(
            f"flow {qualname!r} was defined inside a function, so its deployed code could not "
            "import it. Define flows at module level."
        )
    root = Path(flow.sys_path)
    if location.endswith(".py"):
        # A script: the archive holds its directory, and the target names it relative to that.
        return root, f"{Path(location).relative_to(root).as_posix()}:{qualname}"
    return root, flow.target


async def adeploy(
    runtime: Runtime,
    flow: Flow[Any, Any],
    *,
    tag: str | None = None,
    weight: int | None = None,
    image: str | None = None,
    message: str | None = None,
) -> tuple[DeploymentRecord, list[TagMove]]:
    """Freeze ``flow`` into its next version on ``runtime``'s stores (see :meth:`Flow.deploy`)."""
    import anyio.to_thread

    from kitaru import _shipping

    if weight is not None and tag is None:
        raise KitaruUsageError(
            f"a weight routes a share of `{flow.name}@default` to another tag's version, so it "
            "needs that tag: `flow.deploy(tag='canary', weight=10)`."
        )
    if tag is not None:
        check_weight(flow.name, tag, weight)
    root, target = _source(flow)
    with tempfile.TemporaryDirectory(prefix="kitaru-deploy-") as tmp:
        archive = await anyio.to_thread.run_sync(_shipping.build_archive, root, Path(tmp))
        # Content-addressed: an identical version's archive is already there and is not sent again.
        key = await _shipping.upload(runtime.aartifacts, archive)
    env = archive.manifest.get("environment") or {}
    # The image the version runs on where executions run in containers (a kubernetes stack):
    # the one given, else the stack's at deploy time, so a later change of the stack's image
    # does not change what an old version runs on.
    image = image or getattr(runtime.stack, "image", None)
    record = DeploymentRecord(
        flow=flow.name,
        version=0,
        target=target,
        archive_key=key,
        archive_sha256=archive.sha256,
        created_by=_who(),
        created_at=time.time(),
        image=image,
        stack=runtime.stack_name,
        message=message,
        requirements={"lock": archive.manifest.get("lock"), "python": env.get("python")},
    )
    stored: tuple[DeploymentRecord, list[TagMove]] = await runtime.astate.create_deployment(
        record, tag=tag, weight=weight
    )
    return stored


async def achoose(runtime: Runtime, flow: str, tag: str, key: str) -> tuple[DeploymentRecord, str]:
    """The version an invocation of ``flow@tag`` with idempotency key ``key`` runs (routed by
    weight when ``tag`` is ``default``), and the tag it went by; refuses unknown flows and tags."""
    tags = {t.tag: t for t in await runtime.astate.list_tags(flow)}
    if not tags:
        raise KitaruNotFoundError(
            f"flow {flow!r} has no deployed versions, so there is nothing to invoke. Deploy it "
            f"with `{flow}.deploy()`; `kitaru deployments list` shows what is deployed."
        )
    chosen = tags.get(tag)
    if chosen is None:
        raise KitaruNotFoundError(
            f"flow {flow!r} has no tag {tag!r} (its tags: {', '.join(sorted(tags))}); nothing was "
            f"started. See them with `kitaru deployments list {flow}`."
        )
    routed = tag
    version = chosen.version
    if tag == DEFAULT_TAG:
        weighted = [(t.tag, t.version, t.weight) for t in tags.values() if t.weight and t.tag != tag]
        routed, version = route(flow, key, chosen.version, weighted)
    record = await runtime.astate.get_deployment(flow, version)
    if record is None:  # a tag always points at a stored version; a store that lost it is broken
        raise KitaruNotFoundError(
            f"tag {routed!r} of flow {flow!r} points at version {version}, which is gone."
        )
    return record, routed


async def ainvoke(
    runtime: Runtime,
    flow: str,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    *,
    tag: str = DEFAULT_TAG,
    execution_id: str | None = None,
) -> tuple[str, Outcome | None]:
    """Start an execution of a deployed version of ``flow`` (by ``tag``, routed by weight when
    ``default``) and drive it here to its end or suspension. An existing execution with
    ``execution_id`` is returned (driven on if its runner is gone): invoking is idempotent.

    On a stack that runs executions elsewhere (kubernetes) the execution is created with its
    version recorded and handed to the stack's orchestrator, which runs it on the version's
    image and archive; this returns at once, with no outcome (None)."""
    from kitaru._engine.flow import _elsewhere
    from kitaru._engine.loading import aload_version
    from kitaru._engine.runner import Runner
    from kitaru._ids import new_id

    exec_id = execution_id or new_id()
    existing = await runtime.astate.get_execution(exec_id) if execution_id else None
    runner = Runner(runtime)
    elsewhere = _elsewhere(runtime)
    if existing is not None:
        if elsewhere is None:
            return exec_id, await runner.resume_interrupted(existing)
        if existing.status == "running":
            # Submitted again only if nobody drives it (its Job died with the lease free).
            with contextlib.suppress(KitaruLeaseError, KitaruStateError):
                await elsewhere.submit(exec_id)
        return exec_id, None
    record, routed = await achoose(runtime, flow, tag, exec_id)
    # Imported here too: binding the arguments to the version's signature needs its flow.
    flow_obj = await aload_version(runtime, summary(record, routed))
    if elsewhere is not None:
        return await runner.start_elsewhere(elsewhere, flow_obj, args, kwargs, exec_id), None
    return await runner.start(flow_obj, args, kwargs, exec_id)


# The reads and tag moves behind ``KitaruClient().deployments``, async over a state store, so the
# team server answers its deployment endpoints with the same checks and the same messages.


async def aflow_known(store: Any, flow: str) -> None:
    """Raise KitaruNotFoundError when ``flow`` has no deployed version."""
    if not await store.list_deployments(flow):
        raise KitaruNotFoundError(
            f"flow {flow!r} has no deployed versions. Deploy it with `{flow}.deploy()`; "
            "`kitaru deployments list` shows what is deployed."
        )


async def alist(store: Any, flow: str | None = None) -> builtins.list[Deployment]:
    """Versions (of ``flow``, or of every flow) with their current tags."""
    records = await store.list_deployments(flow)
    tags = await store.list_tags(flow)
    return [_view(r, tags) for r in records]


async def aget(store: Any, ref: str) -> Deployment:
    """The version ``FLOW`` (its ``default``), ``FLOW@TAG`` or ``FLOW:N`` names."""
    flow, tag, version = parse_ref(ref)
    await aflow_known(store, flow)
    tags: builtins.list[TagRecord] = await store.list_tags(flow)
    if version is None:
        tag = tag or DEFAULT_TAG
        found = [t for t in tags if t.tag == tag]
        if not found:
            raise KitaruNotFoundError(
                f"flow {flow!r} has no tag {tag!r}. See its tags with `kitaru deployments list {flow}`."
            )
        version = found[0].version
    record = await store.get_deployment(flow, version)
    if record is None:
        raise KitaruNotFoundError(
            f"flow {flow!r} has no version {version}. See them with `kitaru deployments list {flow}`."
        )
    return _view(record, tags)


async def ahistory(store: Any, flow: str, tag: str | None = None) -> builtins.list[TagMove]:
    """Every move of the flow's tags (of ``tag`` only, when given), oldest first."""
    await aflow_known(store, flow)
    moves: builtins.list[TagMove] = await store.tag_history(flow, tag)
    return moves


async def amove(store: Any, flow: str, request: TagRequest, *, who: str) -> TagMove:
    """Make one tag move (checked and recorded by the store, atomically); returns it."""
    await aflow_known(store, flow)
    moves: builtins.list[TagMove] = await store.move_tags(flow, [request], who=who)
    return moves[0]


class Deployments:
    """``KitaruClient().deployments``: versions, tags, promote/rollback, invoke."""

    def __init__(self, client: KitaruClient) -> None:
        self._client = client

    def _run(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        from kitaru._engine.handles import blocking

        return blocking(fn, *args, **kwargs)

    @property
    def _store(self) -> Any:
        return self._client._runtime.astate

    def list(self, flow: str | None = None) -> builtins.list[Deployment]:
        """Versions (of ``flow``, or of every flow) with their current tags."""
        found: builtins.list[Deployment] = self._run(alist, self._store, flow)
        return found

    def tags(self, flow: str | None = None) -> builtins.list[TagRecord]:
        """Tags (of ``flow``, or of every flow) and the versions they point at."""
        found: builtins.list[TagRecord] = self._run(self._store.list_tags, flow)
        return found

    def get(self, ref: str) -> Deployment:
        """``FLOW`` (its ``default``), ``FLOW@TAG`` or ``FLOW:N``."""
        found: Deployment = self._run(aget, self._store, ref)
        return found

    def history(self, flow: str, tag: str | None = None) -> builtins.list[TagMove]:
        """Every move of the flow's tags (of ``tag`` only, when given), oldest first."""
        moves: builtins.list[TagMove] = self._run(ahistory, self._store, flow, tag)
        return moves

    def _move(self, flow: str, request: TagRequest) -> TagMove:
        move: TagMove = self._run(amove, self._store, flow, request, who=_who())
        return move

    def tag(self, flow: str, tag: str, version: int, *, weight: int | None = None) -> TagMove:
        """Point ``tag`` at ``version`` (with a canary ``weight`` 0-100), atomically, recorded."""
        return self._move(flow, TagRequest(tag, "set", version, weight=weight))

    def untag(self, flow: str, tag: str) -> TagMove:
        """Remove ``tag`` (never ``default``)."""
        return self._move(flow, TagRequest(tag, "remove"))

    def promote(self, flow: str, tag: str) -> TagMove:
        """Move ``default`` to ``tag``'s version."""
        return self._move(flow, TagRequest(DEFAULT_TAG, "promote", source=tag))

    def rollback(self, flow: str, *, to: int | None = None) -> TagMove:
        """Move ``default`` back: to version ``to``, or to the version it pointed at before."""
        return self._move(flow, TagRequest(DEFAULT_TAG, "rollback", version=to))

    def invoke(
        self,
        flow: str,
        *args: Any,
        tag: str = DEFAULT_TAG,
        execution_id: str | None = None,
        **kwargs: Any,
    ) -> FlowHandle:
        """Start an execution of ``flow``'s deployed version (see :meth:`kitaru.Flow.invoke`)."""
        from kitaru._engine.handles import FlowHandle, blocking
        from kitaru.client import _handle

        if "@" in flow:
            flow, _, tag = flow.partition("@")
        runtime = self._client._runtime
        exec_id, outcome = blocking(ainvoke, runtime, flow, args, kwargs, tag=tag, execution_id=execution_id)
        if outcome is None:
            return FlowHandle(exec_id, runtime)
        return _handle(exec_id, runtime, outcome)
