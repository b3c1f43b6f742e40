"""kitaru's embedded default stack: flows run in the calling process, state lives in SQLite and
artifacts on the local filesystem, both under kitaru's home directory (``KITARU_HOME``)."""

from __future__ import annotations

from typing import Any

from kitaru.stack import BaseStack

__all__ = ["LocalStack", "filesystem_artifact_store"]


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
