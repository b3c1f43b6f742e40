"""kitaru's AWS stack: artifacts in S3 (``s3://bucket/prefix``), state in SQLite or PostgreSQL.

Config keys of an ``aws`` stack (besides ``state`` and ``artifacts``): ``endpoint_url``, ``region``,
``aws_access_key_id``, ``aws_secret_access_key``, ``aws_session_token``, ``profile``, ``part_size``,
``retries``, ``retry_base_delay``, ``retry_max_delay``, ``connect_timeout``, ``read_timeout``. The
SDK (aiobotocore) is imported on first use of the store, never by ``import kitaru``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from kitaru.stack import ObjectStoreStack

if TYPE_CHECKING:
    from kitaru_stack_aws._store import S3ArtifactStore

__all__ = ["AwsStack", "s3_artifact_store"]


class AwsStack(ObjectStoreStack):
    """The ``aws`` stack type: flows run in-process, artifacts live in the S3 bucket named by
    ``artifacts`` (an ``s3://`` URI, required); the other keys configure the S3 client."""

    type = "aws"
    scheme = "s3"


def s3_artifact_store(uri: str, **options: Any) -> S3ArtifactStore:
    """Open the S3 artifact store rooted at an ``s3://bucket/prefix`` URI."""
    from kitaru_stack_aws._store import S3ArtifactStore

    return S3ArtifactStore(uri, **options)


#: The keys the store takes, checked when a stack is read from its config file.
s3_artifact_store.keys = {  # type: ignore[attr-defined]
    "endpoint_url": str,
    "region": str,
    "aws_access_key_id": str,
    "aws_secret_access_key": str,
    "aws_session_token": str,
    "profile": str,
    "part_size": int,
    "retries": int,
    "retry_base_delay": float,
    "retry_max_delay": float,
    "connect_timeout": float,
    "read_timeout": float,
}
