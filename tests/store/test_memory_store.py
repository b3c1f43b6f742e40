"""The in-memory stores run the shared conformance suites."""

from __future__ import annotations

import pytest

from kitaru.store.catalog_conformance import CatalogStoreConformance
from kitaru.store.conformance import (
    ArtifactStoreConformance,
    KeyStoreConformance,
    SecretStoreConformance,
    StateStoreConformance,
)
from kitaru.store.memory import MemoryArtifactStore, MemoryStateStore


@pytest.fixture
def state_store() -> MemoryStateStore:
    return MemoryStateStore()


@pytest.fixture
def artifact_store() -> MemoryArtifactStore:
    return MemoryArtifactStore()


class TestMemoryKeyStore(KeyStoreConformance):
    """API keys of the team server."""


class TestMemoryCatalogStore(CatalogStoreConformance):
    """The checkpoint cache and artifact tags."""


class TestMemorySecretStore(SecretStoreConformance):
    """Secrets (ciphertext only) for kitaru.secret()."""


class TestMemoryStateStore(StateStoreConformance):
    pass


class TestMemoryArtifactStore(ArtifactStoreConformance):
    streams_out_of_process = False

    def test_uri_names_the_store(self) -> None:
        assert MemoryArtifactStore("scratch").uri_for("a/b") == "memory://scratch/a/b"
        assert MemoryArtifactStore().uri_for("a/b") == "memory://default/a/b"
