"""kitaru's embedded default stack: flows run in the calling process, state lives in SQLite and
artifacts on the local filesystem, both under kitaru's home directory (``KITARU_HOME``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["LocalStack", "filesystem_artifact_store"]


class LocalStack:
    """The ``local`` stack type. Options: ``path`` (state database), ``artifacts`` (directory)."""

    def __init__(
        self, name: str = "local", path: str | None = None, artifacts: str | None = None, **_: Any
    ) -> None:
        from kitaru.config import home

        self.name = name
        root = home()
        self.db_path = Path(path) if path else root / "kitaru.db"
        self.artifacts_path = Path(artifacts) if artifacts else root / "artifacts"

    def state_store(self) -> Any:
        from kitaru.store.sqlite import SQLiteStateStore

        return SQLiteStateStore(self.db_path)

    def artifact_store(self) -> Any:
        from kitaru.store.filesystem import FilesystemArtifactStore

        return FilesystemArtifactStore(self.artifacts_path)


def filesystem_artifact_store(uri: str) -> Any:
    """Open the filesystem artifact store a ``file://`` URI points into."""
    from kitaru.store.filesystem import FilesystemArtifactStore

    return FilesystemArtifactStore.from_uri(uri)
