"""kitaru's Azure stack: artifacts in Azure Blob Storage (``az://container/prefix``), state in SQLite
or PostgreSQL.

Config keys of an ``azure`` stack (besides ``state`` and ``artifacts``): ``connection_string``,
``account_url``, ``account_name``, ``account_key``, ``sas_token`` (none of them:
``DefaultAzureCredential``), ``part_size``, ``retries``, ``retry_base_delay``, ``retry_max_delay``,
``connect_timeout``, ``read_timeout``. The SDKs (azure-storage-blob, azure-identity) are imported
on first use of the store, never by ``import kitaru``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from kitaru.stack import ObjectStoreStack

if TYPE_CHECKING:
    from kitaru_stack_azure._store import AzureBlobArtifactStore

__all__ = ["AzureStack", "azure_artifact_store"]


class AzureStack(ObjectStoreStack):
    """The ``azure`` stack type: flows run in-process, artifacts live in the Blob container named
    by ``artifacts`` (an ``az://`` URI, required); the other keys choose the account and credential."""

    type = "azure"
    scheme = "az"


def azure_artifact_store(uri: str, **options: Any) -> AzureBlobArtifactStore:
    """Open the Azure Blob artifact store rooted at an ``az://container/prefix`` URI."""
    from kitaru_stack_azure._store import AzureBlobArtifactStore

    return AzureBlobArtifactStore(uri, **options)


#: The keys the store takes, checked when a stack is read from its config file.
azure_artifact_store.keys = {  # type: ignore[attr-defined]
    "connection_string": str,
    "account_url": str,
    "account_name": str,
    "account_key": str,
    "sas_token": str,
    "part_size": int,
    "retries": int,
    "retry_base_delay": float,
    "retry_max_delay": float,
    "connect_timeout": float,
    "read_timeout": float,
}
