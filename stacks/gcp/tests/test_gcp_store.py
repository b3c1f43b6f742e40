"""The GCS artifact store against a real GCS server (fake-gcs-server)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kitaru_stack_gcp import GcpStack
from kitaru_stack_gcp._store import GcsArtifactStore

from kitaru._ids import new_id
from kitaru.errors import KitaruConfigError, KitaruConflictError, KitaruNotFoundError, KitaruStoreError
from kitaru.stack import artifact_store_for_uri, load_stack
from kitaru.store import ArtifactStore
from kitaru.store.conformance import ArtifactStoreConformance
from tests._services.bigblob import assert_round_trip_in_bounded_memory
from tests._services.gcs import FakeGcsServer, gcs_server
from tests._services.s3 import free_port

__all__ = ["gcs_server"]

MiB = 1 << 20
FAST_RETRIES = {"retries": 2, "retry_base_delay": 0.01, "retry_max_delay": 0.05}


@pytest.fixture(scope="module")
def bucket(gcs_server: FakeGcsServer) -> str:
    return gcs_server.create_bucket()


@pytest.fixture(scope="module")
def artifact_store(gcs_server: FakeGcsServer, bucket: str) -> Iterator[GcsArtifactStore]:
    store = artifact_store_for_uri(f"gs://{bucket}/kitaru", part_size=512 * 1024, **gcs_server.options())
    assert isinstance(store, GcsArtifactStore)
    yield store
    store.close()


class TestGcsArtifactStore(ArtifactStoreConformance):
    pass


def test_keys_live_under_the_prefix(
    artifact_store: GcsArtifactStore, gcs_server: FakeGcsServer, bucket: str
) -> None:
    key = f"blobs/ab/{new_id()}"
    artifact_store.put(key, b"x")
    assert artifact_store.uri_for(key) == f"gs://{bucket}/kitaru/{key}"
    bare = GcsArtifactStore(f"gs://{bucket}", **gcs_server.options())
    try:
        assert bare.get(f"kitaru/{key}") == b"x"
        assert f"kitaru/{key}" in set(bare.list("kitaru/blobs/"))
    finally:
        bare.close()


def test_a_large_stream_conflicts_with_different_bytes(gcs_server: FakeGcsServer, bucket: str) -> None:
    store = GcsArtifactStore(f"gs://{bucket}/big", part_size=MiB, **gcs_server.options())
    key = f"big/{new_id()}"
    one = [bytes([1]) * MiB] * 12  # over the single-request limit: a resumable upload
    store.put_stream(key, iter(one))
    store.put_stream(key, iter(one))  # the same bytes again: fine
    with pytest.raises(KitaruConflictError, match="different bytes"):
        store.put_stream(key, iter([bytes([2]) * MiB] * 12))
    with pytest.raises(KitaruConflictError):
        store.put(key, b"small and different")
    assert store.get(key) == b"".join(one)
    store.close()


def test_missing_bucket_is_a_store_error_naming_it(gcs_server: FakeGcsServer) -> None:
    store = GcsArtifactStore(f"gs://no-such-bucket-{new_id().lower()}/p", **gcs_server.options())
    try:
        for attempt in (lambda: store.put("k", b"v"), lambda: store.get("k")):
            with pytest.raises(KitaruStoreError, match="does not exist") as info:
                attempt()
            assert not isinstance(info.value, KitaruNotFoundError)
            assert "no-such-bucket" in str(info.value) and gcs_server.endpoint_url in str(info.value)
    finally:
        store.close()


def test_server_down_is_a_store_error_after_bounded_retries() -> None:
    endpoint = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    store = GcsArtifactStore("gs://bucket/p", endpoint_url=endpoint, **FAST_RETRIES)
    try:
        started = time.monotonic()
        for attempt in (lambda: store.put("k", b"v"), lambda: store.get("k"), lambda: list(store.list())):
            with pytest.raises(KitaruStoreError, match="unreachable") as info:
                attempt()
            assert endpoint in str(info.value) and "3 attempts" in str(info.value)
        assert time.monotonic() - started < 30
    finally:
        store.close()


def test_transient_errors_are_retried(
    artifact_store: GcsArtifactStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    from google.api_core.exceptions import ServiceUnavailable
    from google.cloud.storage import Blob

    real = Blob.upload_from_string
    failures = [2]

    def flaky(self: Any, *args: Any, **kwargs: Any) -> Any:
        if failures[0] > 0:
            failures[0] -= 1
            raise ServiceUnavailable("try again")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Blob, "upload_from_string", flaky)
    key = f"flaky/{new_id()}"
    artifact_store.put(key, b"after two 503s")
    assert failures == [0]
    assert artifact_store.get(key) == b"after two 503s"


def test_the_gcp_stack_from_a_config_file(
    gcs_server: FakeGcsServer, bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "config.toml"
    keys = "\n".join(f'{k} = "{v}"' for k, v in gcs_server.options().items())
    config.write_text(
        f'[stacks.cloud]\ntype = "gcp"\nartifacts = "gs://{bucket}/stack"\n{keys}\nretries = 1\n'
    )
    monkeypatch.setenv("KITARU_CONFIG", str(config))
    stack = load_stack("cloud")
    assert isinstance(stack, GcpStack)
    store: ArtifactStore = stack.artifact_store()
    assert isinstance(store, GcsArtifactStore) and store.uri == f"gs://{bucket}/stack"
    assert store.retry.attempts == 2
    store.put("hello", b"world")
    assert store.get("hello") == b"world"
    assert store.reopen(f"gs://{bucket}/other").endpoint_url == gcs_server.endpoint_url
    store.close()

    config.write_text(config.read_text() + 'projet = "x"\n')
    with pytest.raises(KitaruConfigError, match="projet"):
        load_stack("cloud")


def test_the_gcp_stack_needs_a_gs_uri() -> None:
    with pytest.raises(KitaruConfigError, match="gs://"):
        GcpStack(name="cloud", artifacts="s3://elsewhere")


def test_200_mb_round_trip_in_bounded_memory(gcs_server: FakeGcsServer, bucket: str) -> None:
    assert_round_trip_in_bounded_memory(
        f"gs://{bucket}/big", gcs_server.options(), part_size=8 * MiB, report_as="GCS"
    )


def test_a_missing_sdk_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    from kitaru.errors import KitaruMissingDependencyError

    _without(monkeypatch, "google.cloud", "google.api_core")
    store = GcsArtifactStore("gs://bucket/p")
    with pytest.raises(KitaruMissingDependencyError, match=r"pip install '\S+\[gcp\]'"):
        store.put("k", b"v")


def _without(monkeypatch: pytest.MonkeyPatch, *prefixes: str) -> None:
    """Make imports of modules under ``prefixes`` fail, as if their distribution were absent."""
    import builtins

    real_import = builtins.__import__

    def fake_import(name: str, *args: Any, **kwargs: Any) -> Any:
        if name.startswith(prefixes):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)


def test_a_failed_large_stream_leaves_nothing(gcs_server: FakeGcsServer, bucket: str) -> None:
    import gc

    store = GcsArtifactStore(f"gs://{bucket}/failed", part_size=MiB, **gcs_server.options())
    key = f"big/{new_id()}"

    def produce() -> Iterator[bytes]:
        for i in range(10):  # past the single-request limit: a resumable upload is under way
            yield bytes([i]) * MiB
        raise RuntimeError("producer died")

    with pytest.raises(RuntimeError, match="producer died"):
        store.put_stream(key, produce())
    gc.collect()  # a dropped BlobWriter must not finalize the upload on its way out
    assert not store.exists(key)
    store.put(key, b"whole")
    assert store.get(key) == b"whole"
    store.close()
