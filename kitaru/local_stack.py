"""kitaru's embedded default stack: flows run in the calling process, state lives in SQLite and
artifacts on the local filesystem, both under kitaru's home directory (``KITARU_HOME``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from kitaru.stack import BaseStack

if TYPE_CHECKING:
    from kitaru._engine.runner import Outcome, Runner
    from kitaru._engine.runtime import Runtime

__all__ = ["LocalOrchestrator", "LocalStack", "filesystem_artifact_store"]


class LocalOrchestrator:
    """The orchestrator that drives executions in the calling process, through the Runner (what
    every stack did before orchestrators existed, and what ``local`` does)."""

    def __init__(self, *, stack_name: str | None = None, runtime: Runtime | None = None) -> None:
        self._stack_name = stack_name
        self._runtime = runtime

    def __repr__(self) -> str:
        return f"<LocalOrchestrator {self._stack_name or 'runtime'}>"

    def _runner(self) -> Runner:
        from kitaru._engine.runner import Runner
        from kitaru._engine.runtime import get_runtime

        return Runner(self._runtime or get_runtime(self._stack_name))

    async def submit(self, exec_id: str) -> Outcome:
        """Take the execution's lease and drive it here to its end or next suspension."""
        return await self._runner().submit(exec_id)

    async def cancel(self, exec_id: str) -> None:
        await self._runner().cancel(exec_id)

    async def describe(self, exec_id: str) -> str:
        runtime = self._runner().runtime
        record = await runtime.astate.get_execution(exec_id)
        if record is None:
            return f"no execution {exec_id}"
        holder = record.lease_owner or "nobody"
        return f"in-process ({record.status}; lease held by {holder})"


class LocalStack(BaseStack):
    """The ``local`` stack type: flows run in-process; ``state`` and ``artifacts`` default to
    ``kitaru.db`` and ``artifacts/`` under kitaru's home."""

    type = "local"


def filesystem_artifact_store(uri: str, **_: Any) -> Any:
    """Open the filesystem artifact store rooted at a ``file://`` URI."""
    from kitaru.store.filesystem import FilesystemArtifactStore

    return FilesystemArtifactStore.from_uri(uri)


#: The keys the filesystem store takes from a stack's configuration: none, so a misspelt key of a
#: stack whose artifacts are files is reported instead of ignored.
filesystem_artifact_store.keys = {}  # type: ignore[attr-defined]
