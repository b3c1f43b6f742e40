"""The Azure Blob artifact store against a real Blob service (Azurite)."""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kitaru_stack_azure import AzureStack
from kitaru_stack_azure._store import AzureBlobArtifactStore

from kitaru._ids import new_id
from kitaru.errors import KitaruConfigError, KitaruConflictError, KitaruNotFoundError, KitaruStoreError
from kitaru.stack import artifact_store_for_uri, load_stack
from kitaru.store import ArtifactStore
from kitaru.store.conformance import ArtifactStoreConformance
from tests._services.azure import ACCOUNT, Azurite, azurite
from tests._services.bigblob import assert_round_trip_in_bounded_memory
from tests._services.s3 import free_port

__all__ = ["azurite"]

MiB = 1 << 20
FAST_RETRIES = {"retries": 2, "retry_base_delay": 0.01, "retry_max_delay": 0.05}


@pytest.fixture(scope="module")
def container(azurite: Azurite) -> str:
    return azurite.create_container()


@pytest.fixture(scope="module")
def artifact_store(azurite: Azurite, container: str) -> Iterator[AzureBlobArtifactStore]:
    store = artifact_store_for_uri(f"az://{container}/kitaru", part_size=MiB, **azurite.options())
    assert isinstance(store, AzureBlobArtifactStore)
    yield store
    store.close()


class TestAzureBlobArtifactStore(ArtifactStoreConformance):
    # azure-core's requests transport holds a downloaded part several times over while it joins
    # the response's pieces (about 9 MiB traced for a 1 MiB part); still bounded by the part size.
    streaming_buffer = 4 * MiB


def test_keys_live_under_the_prefix(
    artifact_store: AzureBlobArtifactStore, azurite: Azurite, container: str
) -> None:
    key = f"blobs/ab/{new_id()}"
    artifact_store.put(key, b"x")
    assert artifact_store.uri_for(key) == f"az://{container}/kitaru/{key}"
    bare = AzureBlobArtifactStore(f"az://{container}", **azurite.options())
    try:
        assert bare.get(f"kitaru/{key}") == b"x"
        assert f"kitaru/{key}" in set(bare.list("kitaru/blobs/"))
    finally:
        bare.close()


def test_a_large_stream_conflicts_with_different_bytes(artifact_store: AzureBlobArtifactStore) -> None:
    key = f"big/{new_id()}"
    one = [bytes([1]) * MiB] * 3  # three staged blocks
    artifact_store.put_stream(key, iter(one))
    artifact_store.put_stream(key, iter(one))  # the same bytes again: fine
    with pytest.raises(KitaruConflictError, match="different bytes"):
        artifact_store.put_stream(key, iter([bytes([2]) * MiB] * 3))
    with pytest.raises(KitaruConflictError):
        artifact_store.put(key, b"small and different")
    assert artifact_store.get(key) == b"".join(one)


def test_account_key_and_account_url(azurite: Azurite, container: str) -> None:
    from tests._services.azure import ACCOUNT_KEY

    store = AzureBlobArtifactStore(
        f"az://{container}/key", account_url=azurite.account_url, account_key=ACCOUNT_KEY
    )
    try:
        store.put("k", b"by account key")
        assert store.get("k") == b"by account key"
    finally:
        store.close()


def test_bad_credentials_are_a_store_error_naming_the_container(azurite: Azurite, container: str) -> None:
    wrong = base64.b64encode(b"not the key" * 4).decode()
    store = AzureBlobArtifactStore(f"az://{container}/p", account_url=azurite.account_url, account_key=wrong)
    try:
        with pytest.raises(KitaruStoreError, match="access denied") as info:
            store.put("k", b"v")
        assert container in str(info.value) and azurite.account_url in str(info.value)
        assert "account_key" in str(info.value)
    finally:
        store.close()


def test_missing_container_is_a_store_error_naming_it(azurite: Azurite) -> None:
    store = AzureBlobArtifactStore(f"az://no-such-container-{new_id().lower()}/p", **azurite.options())
    try:
        for attempt in (lambda: store.put("k", b"v"), lambda: store.get("k"), lambda: list(store.list())):
            with pytest.raises(KitaruStoreError, match="does not exist") as info:
                attempt()
            assert not isinstance(info.value, KitaruNotFoundError)
            assert "no-such-container" in str(info.value) and ACCOUNT in str(info.value)
    finally:
        store.close()


def test_server_down_is_a_store_error_after_bounded_retries() -> None:
    from tests._services.azure import ACCOUNT_KEY

    url = f"http://127.0.0.1:{free_port()}/{ACCOUNT}"  # nothing listens there
    store = AzureBlobArtifactStore("az://c/p", account_url=url, account_key=ACCOUNT_KEY, **FAST_RETRIES)
    try:
        started = time.monotonic()
        for attempt in (lambda: store.put("k", b"v"), lambda: store.get("k"), lambda: list(store.list())):
            with pytest.raises(KitaruStoreError, match="unreachable") as info:
                attempt()
            assert url in str(info.value) and "3 attempts" in str(info.value)
        assert time.monotonic() - started < 30
    finally:
        store.close()


def test_transient_errors_are_retried(
    artifact_store: AzureBlobArtifactStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    from azure.core.exceptions import HttpResponseError

    client = artifact_store._ensure()
    real = client.upload_blob
    failures = [2]

    def flaky(*args: Any, **kwargs: Any) -> Any:
        if failures[0] > 0:
            failures[0] -= 1
            busy = HttpResponseError(message="server busy")
            busy.status_code = 503
            raise busy
        return real(*args, **kwargs)

    monkeypatch.setattr(client, "upload_blob", flaky)
    key = f"flaky/{new_id()}"
    artifact_store.put(key, b"after two 503s")
    assert failures == [0]
    assert artifact_store.get(key) == b"after two 503s"


def test_the_azure_stack_from_a_config_file(
    azurite: Azurite, container: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "config.toml"
    config.write_text(
        f'[stacks.cloud]\ntype = "azure"\nartifacts = "az://{container}/stack"\n'
        f'connection_string = "{azurite.connection_string}"\nretries = 1\n'
    )
    monkeypatch.setenv("KITARU_CONFIG", str(config))
    stack = load_stack("cloud")
    assert isinstance(stack, AzureStack)
    store: ArtifactStore = stack.artifact_store()
    assert isinstance(store, AzureBlobArtifactStore) and store.uri == f"az://{container}/stack"
    assert store.retry.attempts == 2
    store.put("hello", b"world")
    assert store.get("hello") == b"world"
    assert store.reopen(f"az://{container}/other").account_url == azurite.account_url
    store.close()

    config.write_text(config.read_text() + 'acount_key = "x"\n')
    with pytest.raises(KitaruConfigError, match="acount_key"):
        load_stack("cloud")


def test_the_azure_stack_needs_an_az_uri() -> None:
    with pytest.raises(KitaruConfigError, match="az://"):
        AzureStack(name="cloud", artifacts="gs://elsewhere")


def test_200_mb_round_trip_in_bounded_memory(azurite: Azurite, container: str) -> None:
    assert_round_trip_in_bounded_memory(
        f"az://{container}/big", azurite.options(), part_size=8 * MiB, report_as="Azure Blob"
    )


def test_a_missing_sdk_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    from kitaru.errors import KitaruMissingDependencyError

    _without(monkeypatch, "azure.storage", "azure.core")
    store = AzureBlobArtifactStore("az://container/p", account_url="http://127.0.0.1:1/acct")
    with pytest.raises(KitaruMissingDependencyError, match=r"pip install '\S+\[azure\]'"):
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


def test_a_failed_large_stream_leaves_nothing(artifact_store: Any) -> None:
    key = f"big-failed/{new_id()}"

    def produce() -> Iterator[bytes]:
        for i in range(12):  # several parts / blocks are already uploaded when it fails
            yield bytes([i]) * MiB
        raise RuntimeError("producer died")

    with pytest.raises(RuntimeError, match="producer died"):
        artifact_store.put_stream(key, produce())
    assert not artifact_store.exists(key)
    assert list(artifact_store.list(key)) == []
    artifact_store.put(key, b"whole")
    assert artifact_store.get(key) == b"whole"
