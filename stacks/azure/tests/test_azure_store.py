"""The Azure Blob artifact store against a real Blob service (Azurite): the object-store conformance
suite, and what only Azure does (account keys and their errors)."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Any

import pytest
from kitaru_stack_azure import AzureStack
from kitaru_stack_azure._store import AzureBlobArtifactStore

from kitaru.errors import KitaruStoreError
from kitaru.stack import artifact_store_for_uri
from kitaru.store import sync_view
from kitaru.store.objectstore_conformance import FAST_RETRIES, ObjectStoreConformance
from tests._services.azure import ACCOUNT, ACCOUNT_KEY, Azurite, azurite

__all__ = ["azurite"]

MiB = 1 << 20


@pytest.fixture(scope="module")
def container(azurite: Azurite) -> str:
    return azurite.create_container()


@pytest.fixture(scope="module")
def bucket(container: str) -> str:
    return container


@pytest.fixture(scope="module")
def store_options(azurite: Azurite) -> dict[str, Any]:
    return azurite.options()


@pytest.fixture(scope="module")
def service_address(azurite: Azurite) -> str:
    return azurite.account_url


@pytest.fixture(scope="module")
def artifact_store(store_options: dict[str, Any], container: str) -> Iterator[AzureBlobArtifactStore]:
    store = artifact_store_for_uri(f"az://{container}/kitaru", part_size=MiB, **store_options)
    assert isinstance(store, AzureBlobArtifactStore)
    yield store
    sync_view(store).close()


class TestAzureBlobArtifactStore(ObjectStoreConformance):
    stack_type = AzureStack
    store_type = AzureBlobArtifactStore
    extra = "azure"
    sdk_modules = ("azure.storage", "azure.core")
    offline_options = {"account_url": "http://127.0.0.1:1/acct"}
    typo_key = "acount_key"
    address_attribute = "account_url"
    report_as = "Azure Blob"
    # azure-core's requests transport holds a downloaded part several times over while it joins
    # the response's pieces (about 9 MiB traced for a 1 MiB part); still bounded by the part size.
    streaming_buffer = 4 * MiB

    def missing_bucket_names(self, service_address: str) -> str:
        return ACCOUNT

    def unreachable_store(self, port: int) -> tuple[AzureBlobArtifactStore, str]:
        url = f"http://127.0.0.1:{port}/{ACCOUNT}"
        store = AzureBlobArtifactStore("az://c/p", account_url=url, account_key=ACCOUNT_KEY, **FAST_RETRIES)
        return store, url

    def make_flaky(self, store: Any, monkeypatch: pytest.MonkeyPatch, failures: list[int]) -> None:
        from azure.core.exceptions import HttpResponseError

        client = store._ensure()
        real = client.upload_blob

        def flaky(*args: Any, **kwargs: Any) -> Any:
            if failures[0] > 0:
                failures[0] -= 1
                busy = HttpResponseError(message="server busy")
                busy.status_code = 503
                raise busy
            return real(*args, **kwargs)

        monkeypatch.setattr(client, "upload_blob", flaky)


def test_account_key_and_account_url(azurite: Azurite, container: str) -> None:
    store = AzureBlobArtifactStore(
        f"az://{container}/key", account_url=azurite.account_url, account_key=ACCOUNT_KEY
    )
    try:
        sync_view(store).put("k", b"by account key")
        assert sync_view(store).get("k") == b"by account key"
    finally:
        sync_view(store).close()


def test_bad_credentials_are_a_store_error_naming_the_container(azurite: Azurite, container: str) -> None:
    wrong = base64.b64encode(b"not the key" * 4).decode()
    store = AzureBlobArtifactStore(f"az://{container}/p", account_url=azurite.account_url, account_key=wrong)
    try:
        with pytest.raises(KitaruStoreError, match="access denied") as info:
            sync_view(store).put("k", b"v")
        assert container in str(info.value) and azurite.account_url in str(info.value)
        assert "account_key" in str(info.value)
    finally:
        sync_view(store).close()
