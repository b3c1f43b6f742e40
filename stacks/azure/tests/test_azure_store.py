"""The Azure Blob artifact store against a real Blob service (Azurite): the object-store conformance
suite, and what only Azure does (account keys and their errors)."""

from __future__ import annotations

import base64
import gc
import os
import warnings
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio
import anyio.to_thread
import pytest
from kitaru_stack_azure import AzureStack
from kitaru_stack_azure._store import AzureBlobArtifactStore

from kitaru._ids import new_id
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
    # The aio download joins each fetched part onto what is left of the one before while
    # aiohttp still holds the response (about 4.3 MiB traced for 1 MiB parts); bounded by the part.
    streaming_buffer = 4 * MiB

    def missing_bucket_names(self, service_address: str) -> str:
        return ACCOUNT

    def unreachable_store(self, port: int) -> tuple[AzureBlobArtifactStore, str]:
        url = f"http://127.0.0.1:{port}/{ACCOUNT}"
        store = AzureBlobArtifactStore("az://c/p", account_url=url, account_key=ACCOUNT_KEY, **FAST_RETRIES)
        return store, url

    def make_flaky(self, store: Any, monkeypatch: pytest.MonkeyPatch, failures: list[int]) -> None:
        from azure.core.exceptions import HttpResponseError
        from azure.storage.blob.aio import ContainerClient

        real = ContainerClient.upload_blob

        async def flaky(self: Any, *args: Any, **kwargs: Any) -> Any:
            if failures[0] > 0:
                failures[0] -= 1
                busy = HttpResponseError(message="server busy")
                busy.status_code = 503
                raise busy
            return await real(self, *args, **kwargs)

        monkeypatch.setattr(ContainerClient, "upload_blob", flaky)


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


# -- on the caller's loop: no worker threads, one client per loop, everything closed ---------------


def _connections_to(port: int) -> int:
    """How many established TCP connections this process has to ``port`` (Linux: /proc)."""
    return len(_sockets_to(port))


def _sockets_to(port: int) -> set[str]:
    """The socket inodes of this process's established TCP connections to ``port``."""
    sockets = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            sockets.add(target[len("socket:[") : -1])
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as fh:
                rows = fh.read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            remote, state, inode = fields[2], fields[3], fields[9]
            if int(remote.rsplit(":", 1)[1], 16) == port and state == "01" and inode in sockets:
                found.add(inode)
    return found


async def _no_connections_left(port: int) -> None:
    """Wait (at most 30 s) until no connection to ``port`` is open: a closed transport lets go of
    its socket on a later turn of its loop (here: the portal's loop, in another thread)."""
    for _ in range(600):  # polled: a socket's state in /proc has no event to wait on
        if not _connections_to(port):
            return
        await anyio.sleep(0.05)
    raise AssertionError(f"{_connections_to(port)} connection(s) to port {port} still open after 30 s")


needs_proc = pytest.mark.skipif(not os.path.exists("/proc/net/tcp"), reason="counts sockets in /proc")


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_requests_need_no_worker_thread(artifact_store: AzureBlobArtifactStore) -> None:
    # Every worker thread busy (sync checkpoints, say): the store still works, on the loop itself.
    key = f"no-threads/{new_id()}"
    limiter = anyio.to_thread.current_default_thread_limiter()
    total = limiter.total_tokens
    limiter.total_tokens = 1

    async def produce() -> AsyncIterator[bytes]:
        for i in range(3):
            yield bytes([i]) * MiB  # three blocks of the fixture's 1 MiB parts

    holder = object()  # a sync checkpoint's thread, say, holding the only worker thread
    await limiter.acquire_on_behalf_of(holder)
    try:
        with anyio.fail_after(120):
            await artifact_store.put(key, b"small")
            assert await artifact_store.get(key) == b"small"
            await artifact_store.put_stream(f"{key}-big", produce())
            assert [len(c) async for c in artifact_store.open(f"{key}-big", MiB)] == [MiB] * 3
            assert await artifact_store.exists(key)
            assert key in {k async for k in artifact_store.list("no-threads/")}
            await artifact_store.delete(key)
            assert not await artifact_store.exists(key)
    finally:
        limiter.release_on_behalf_of(holder)
        limiter.total_tokens = total


@needs_proc
def test_a_loop_that_ends_closes_its_connections(azurite: Azurite, container: str) -> None:
    store = AzureBlobArtifactStore(f"az://{container}/loops", **azurite.options())
    key = f"loop/{new_id()}"

    async def use(data: bytes) -> None:
        if not await store.exists(key):
            await store.put(key, data)
        assert await store.get(key) == data
        assert _sockets_to(azurite.port) - before  # this loop opened its own

    # Other tests' stores (on kitaru's long-lived portal loop) may hold connections of their own.
    before = _sockets_to(azurite.port)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        anyio.run(use, b"first loop", backend="asyncio")
        assert not _sockets_to(azurite.port) - before  # closed as the loop ended, without aclose()
        anyio.run(use, b"first loop", backend="asyncio")  # a new loop opens its own client
        assert not _sockets_to(azurite.port) - before
        gc.collect()
    assert [str(w.message) for w in seen if issubclass(w.category, ResourceWarning)] == []


@needs_proc
@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_one_store_on_two_loops_and_aclose_closes_both(azurite: Azurite, container: str) -> None:
    store = AzureBlobArtifactStore(f"az://{container}/two-loops", **azurite.options())
    view = sync_view(store)  # a sync caller's loop (kitaru's portal)
    key = f"two/{new_id()}"
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        await anyio.to_thread.run_sync(view.put, key, b"from the portal loop")
        assert await store.get(key) == b"from the portal loop"  # from this test's loop
        assert await anyio.to_thread.run_sync(view.exists, key)
        await store.aclose()  # closes this loop's client and the portal loop's
        await _no_connections_left(azurite.port)
        assert await store.get(key) == b"from the portal loop"  # reopens on next use
        await store.aclose()
        await _no_connections_left(azurite.port)
        gc.collect()
    assert [str(w.message) for w in seen if issubclass(w.category, ResourceWarning)] == []


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_default_azure_credential_is_the_async_one_and_is_closed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import azure.identity.aio
    from azure.identity import CredentialUnavailableError

    made: list[Any] = []

    class NoIdentity:  # what DefaultAzureCredential is on a machine with no identity configured
        def __init__(self, **kwargs: Any) -> None:
            self.closed = False
            made.append(self)

        async def get_token(self, *scopes: str, **kwargs: Any) -> Any:
            raise CredentialUnavailableError(message="no identity on this machine")

        async def close(self) -> None:
            self.closed = True

        async def __aenter__(self) -> Any:
            return self

        async def __aexit__(self, *exc: object) -> None:
            await self.close()

    monkeypatch.setattr(azure.identity.aio, "DefaultAzureCredential", NoIdentity)
    monkeypatch.delenv("AZURE_STORAGE_CONNECTION_STRING", raising=False)
    # https: azure-core sends identity tokens over TLS only; nothing listens there, and nothing is
    # sent: the token is asked for first.
    store = AzureBlobArtifactStore("az://c/p", account_url="https://127.0.0.1:1/acct", retries=0)
    try:
        with anyio.fail_after(60), pytest.raises(KitaruStoreError, match="no Azure credential") as info:
            await store.put("k", b"v")
        assert "az login" in str(info.value) and "https://127.0.0.1:1/acct" in str(info.value)
        assert len(made) == 1 and not made[0].closed
    finally:
        await store.aclose()
    assert made[0].closed


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_a_token_credential_over_http_says_to_use_https(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AZURE_STORAGE_CONNECTION_STRING", raising=False)
    store = AzureBlobArtifactStore("az://c/p", account_url="http://127.0.0.1:1/acct", retries=0)
    try:
        with anyio.fail_after(60), pytest.raises(KitaruStoreError, match="only over https") as info:
            await store.put("k", b"v")
        assert "unreachable" not in str(info.value)
    finally:
        await store.aclose()


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_a_download_cut_mid_way_resumes_from_where_it_was(
    artifact_store: AzureBlobArtifactStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    from azure.core.exceptions import ServiceResponseError
    from azure.storage.blob.aio import StorageStreamDownloader

    key = f"resume/{new_id()}"
    data = b"".join(bytes([i]) * MiB for i in range(4))  # four of the fixture's 1 MiB parts
    await artifact_store.put(key, data)
    real, downloads, served = StorageStreamDownloader.chunks, [], [0]

    def cut_once(self: Any) -> Any:
        pieces = real(self)
        downloads.append(self.size)

        async def cut() -> AsyncIterator[bytes]:
            async for piece in pieces:
                served[0] += 1
                if served[0] == 3:  # the connection drops during the third part
                    raise ServiceResponseError("connection reset mid-body")
                yield piece

        return cut()

    monkeypatch.setattr(StorageStreamDownloader, "chunks", cut_once)
    chunks = [chunk async for chunk in artifact_store.open(key, chunk_size=256 * 1024)]
    assert b"".join(chunks) == data
    assert downloads == [4 * MiB, 2 * MiB]  # the second request asked for what was missing only
