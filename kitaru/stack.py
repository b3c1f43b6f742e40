"""Stacks: where flows run and where their state and artifacts live.

Stack types and artifact stores are plugins, discovered through entry points with stevedore:
``kitaru.stacks`` (stack types, e.g. ``local``) and ``kitaru.artifact_stores`` (by URI scheme, e.g.
``file``). The core imports none of them by name; the embedded default (``kitaru.local_stack``)
ships inside kitaru but is registered through the same entry points as any third party.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

from kitaru.errors import KitaruConfigError
from kitaru.stack_config import load_settings, resolve_stack, stack_type
from kitaru.stack_config._plugins import ARTIFACT_STORE_NAMESPACE as ARTIFACT_STORE_NAMESPACE
from kitaru.stack_config._plugins import STACK_NAMESPACE as STACK_NAMESPACE
from kitaru.stack_config._plugins import artifact_store_for_uri as artifact_store_for_uri
from kitaru.store import ArtifactStore, StateStore

if TYPE_CHECKING:
    from kitaru._engine.runner import Outcome

__all__ = [
    "ARTIFACT_STORE_NAMESPACE",
    "STACK_NAMESPACE",
    "BaseStack",
    "ObjectStoreStack",
    "Orchestrator",
    "Stack",
    "active_stack_name",
    "artifact_store_for_uri",
    "load_stack",
    "orchestrator_of",
]


@runtime_checkable
class Orchestrator(Protocol):
    """Where a stack's executions run: the seam between steering an execution (answer, resume,
    retry, recover, cancel) and the compute that drives it.

    Duties: ``submit`` makes sure the execution is driven on from its journal, exactly as a
    resume in this process would (the runner that takes its lease decides; a lease held by a live
    runner raises :class:`~kitaru.errors.KitaruLeaseError`, a status that cannot be driven
    :class:`~kitaru.errors.KitaruStateError`). An orchestrator that drives in this process returns
    the :class:`~kitaru._engine.runner.Outcome`; one that starts a job elsewhere returns None once
    the job is submitted. ``cancel`` makes the cancel final in the state store (and may stop the
    job); ``describe`` says, for people, where the execution runs."""

    async def submit(self, exec_id: str) -> Outcome | None: ...

    async def cancel(self, exec_id: str) -> None: ...

    async def describe(self, exec_id: str) -> str: ...


@runtime_checkable
class Stack(Protocol):
    """A configured stack. ``state_store`` and ``artifact_store`` are opened once per process."""

    name: str

    def state_store(self, *, read_only: bool = False) -> StateStore:
        """The store of executions, journals and the artifact index; ``read_only`` for inspection
        (a store may ignore it, but must then not need write access to read)."""
        ...

    def artifact_store(self) -> ArtifactStore:
        """The store of artifact bytes."""
        ...

    def orchestrator(self) -> Orchestrator:
        """Where executions of this stack run (``local``: in the calling process)."""
        ...


class BaseStack:
    """What most stack types share: a state store and an artifact store, each named by a URI.

    Stack types are constructed as ``StackType(name=<stack name>, **options)``, ``options`` being the
    keys of the stack's configuration (minus ``type``). Every type understands:

    - ``state``: URI of the state store, ``sqlite:///abs/path.db`` or ``postgresql://...``
      (default: ``kitaru.db`` under kitaru's home);
    - ``artifacts``: URI of the artifact store, ``file:///dir``, ``s3://bucket/prefix``,
      ``gs://bucket/prefix``, ``az://container/prefix`` (default: ``artifacts/`` under the home).

    Other options are passed to the artifact store's factory (credentials, endpoints, regions...),
    which is found by the URI's scheme among the ``kitaru.artifact_stores`` entry points.

    Declaring keys: ``keys`` maps each key the type understands to its type (checked with pydantic
    before the stack is built, so a wrong value names the file and line it came from). Keys not in
    ``keys`` go to the artifact store; its factory may declare its own ``keys`` mapping (a function
    attribute), and then nothing else is accepted. ``other_keys = False`` refuses every key not in
    ``keys``. A subclass adding keys writes ``keys = {**BaseStack.keys, "region": str}``.
    """

    type: str = "base"
    keys: ClassVar[Mapping[str, Any]] = {"state": str, "artifacts": str}
    other_keys: ClassVar[bool] = True

    def __init__(
        self, name: str, state: str | None = None, artifacts: str | None = None, **options: Any
    ) -> None:
        from kitaru.config import home

        self.name = name
        root = home()
        self.state_uri = state or f"sqlite:///{root / 'kitaru.db'}"
        self.artifacts_uri = artifacts or (root / "artifacts").resolve().as_uri()
        self.options = options

    def state_store(self, *, read_only: bool = False) -> StateStore:
        from kitaru.store.open import open_state_store

        return open_state_store(self.state_uri, read_only=read_only)

    def artifact_store(self) -> ArtifactStore:
        return artifact_store_for_uri(self.artifacts_uri, **self.options)

    def orchestrator(self) -> Orchestrator:
        """Executions run in the calling process, through the Runner."""
        from kitaru.local_stack import LocalOrchestrator

        return LocalOrchestrator(stack_name=self.name)


def orchestrator_of(stack: Any) -> Orchestrator:
    """The stack's orchestrator; a stack type written before orchestrators existed drives in the
    calling process, as it always did."""
    make = getattr(stack, "orchestrator", None)
    if make is None:
        from kitaru.local_stack import LocalOrchestrator

        return LocalOrchestrator(stack_name=stack.name)
    orchestrator: Orchestrator = make()
    return orchestrator


class ObjectStoreStack(BaseStack):
    """A stack type whose artifacts live in an object store (S3, GCS, Azure Blob...): the same as
    :class:`BaseStack`, except that ``artifacts`` is required and must be a ``scheme://`` URI. A
    plugin sets ``type`` and ``scheme``; its artifact store's factory declares the other keys."""

    scheme: ClassVar[str]
    """The URI scheme of the artifact store this stack type pairs with, e.g. ``s3``."""

    def __init__(
        self, name: str, state: str | None = None, artifacts: str | None = None, **options: Any
    ) -> None:
        if not artifacts or not artifacts.startswith(f"{self.scheme}://"):
            raise KitaruConfigError(
                f"stack {name!r} (type {self.type}) keeps its artifacts in an object store: it needs "
                f'`artifacts = "{self.scheme}://NAME/PREFIX"` (NAME: the bucket or container), '
                f"got {artifacts!r}."
            )
        super().__init__(name, state=state, artifacts=artifacts, **options)


def active_stack_name() -> str:
    """The stack flows use: ``$KITARU_STACK``, else ``active_stack`` of the project file, else of the
    user file, else ``local`` (see :mod:`kitaru.stack_config`)."""
    return load_settings().active_stack


def load_stack(name: str | None = None, **options: Any) -> Stack:
    """Build the stack ``name`` (default: the active stack) from its configuration: its type's
    class comes from the ``kitaru.stacks`` entry points (stevedore), its keys from the config files
    and the environment; ``options`` override them."""
    config = resolve_stack(name, **options)
    cls = stack_type(config.type)
    try:
        stack: Stack = cls(name=config.name, **config.options)
    except TypeError as exc:
        raise KitaruConfigError(
            f"stack {config.name!r} ({config.declared_in}) cannot be built by its type {config.type!r}: "
            f"{exc}. See stacks.example.toml for the keys of each stack type."
        ) from None
    return stack
