"""kitaru's GCP stack: artifacts in Google Cloud Storage (``gs://bucket/prefix``), state in SQLite or
PostgreSQL.

Config keys of a ``gcp`` stack (besides ``state`` and ``artifacts``): ``endpoint_url``, ``project``,
``credentials_file``, ``anonymous``, ``part_size``, ``retries``, ``retry_base_delay``,
``retry_max_delay``, ``timeout``. The SDK (google-cloud-storage) is imported on first use of the
store, never by ``import kitaru``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from kitaru.stack import ObjectStoreStack

if TYPE_CHECKING:
    from kitaru_stack_gcp._store import GcsArtifactStore

__all__ = ["GcpStack", "gcs_artifact_store"]


class GcpStack(ObjectStoreStack):
    """The ``gcp`` stack type: flows run in-process, artifacts live in the GCS bucket named by
    ``artifacts`` (a ``gs://`` URI, required); the other keys configure the GCS client."""

    type = "gcp"
    scheme = "gs"


def gcs_artifact_store(uri: str, **options: Any) -> GcsArtifactStore:
    """Open the GCS artifact store rooted at a ``gs://bucket/prefix`` URI."""
    from kitaru_stack_gcp._store import GcsArtifactStore

    return GcsArtifactStore(uri, **options)


#: The keys the store takes, checked when a stack is read from its config file.
gcs_artifact_store.keys = {  # type: ignore[attr-defined]
    "endpoint_url": str,
    "project": str,
    "credentials_file": str,
    "anonymous": bool,
    "part_size": int,
    "retries": int,
    "retry_base_delay": float,
    "retry_max_delay": float,
    "timeout": float,
}
