"""The GCS artifact store against a real GCS server (fake-gcs-server): the object-store conformance
suite."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from kitaru_stack_gcp import GcpStack
from kitaru_stack_gcp._store import GcsArtifactStore

from kitaru.stack import artifact_store_for_uri
from kitaru.store import sync_view
from kitaru.store.objectstore_conformance import FAST_RETRIES, ObjectStoreConformance
from tests._services.gcs import FakeGcsServer, gcs_server

__all__ = ["gcs_server"]


@pytest.fixture(scope="module")
def bucket(gcs_server: FakeGcsServer) -> str:
    return gcs_server.create_bucket()


@pytest.fixture(scope="module")
def store_options(gcs_server: FakeGcsServer) -> dict[str, Any]:
    return gcs_server.options()


@pytest.fixture(scope="module")
def service_address(gcs_server: FakeGcsServer) -> str:
    return gcs_server.endpoint_url


@pytest.fixture(scope="module")
def artifact_store(store_options: dict[str, Any], bucket: str) -> Iterator[GcsArtifactStore]:
    store = artifact_store_for_uri(f"gs://{bucket}/kitaru", part_size=512 * 1024, **store_options)
    assert isinstance(store, GcsArtifactStore)
    yield store
    sync_view(store).close()


class TestGcsArtifactStore(ObjectStoreConformance):
    stack_type = GcpStack
    store_type = GcsArtifactStore
    extra = "gcp"
    sdk_modules = ("google.cloud", "google.api_core")
    typo_key = "projet"
    report_as = "GCS"
    # 12 MiB in 1 MiB parts: over the single-request limit, so a resumable upload.
    missing_bucket_operations = ("put", "get")

    def unreachable_store(self, port: int) -> tuple[GcsArtifactStore, str]:
        endpoint = f"http://127.0.0.1:{port}"
        return GcsArtifactStore("gs://bucket/p", endpoint_url=endpoint, **FAST_RETRIES), endpoint

    def make_flaky(self, store: Any, monkeypatch: pytest.MonkeyPatch, failures: list[int]) -> None:
        from google.api_core.exceptions import ServiceUnavailable
        from google.cloud.storage import Blob

        real = Blob.upload_from_string

        def flaky(self: Any, *args: Any, **kwargs: Any) -> Any:
            if failures[0] > 0:
                failures[0] -= 1
                raise ServiceUnavailable("try again")
            return real(self, *args, **kwargs)

        monkeypatch.setattr(Blob, "upload_from_string", flaky)
