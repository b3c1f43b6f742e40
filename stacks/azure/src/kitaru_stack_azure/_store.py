"""The Azure Blob Storage artifact store, on azure-storage-blob's async client
(``azure.storage.blob.aio``) and azure-identity's async ``DefaultAzureCredential``.

Every request runs on the caller's event loop: the store keeps one container client per running
loop (:class:`~kitaru.store._perloop.PerLoop`), opened by that loop's first request and closed, with
its HTTP session and its credential, by ``aclose()`` or by the loop's own shutdown. No worker
thread, no private loop.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import uuid
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar
from urllib.parse import urlparse

import anyio

from kitaru.errors import KitaruConflictError, KitaruError, KitaruNotFoundError, KitaruStoreError
from kitaru.store._perloop import PerLoop
from kitaru.store.objectstore import (
    DEFAULT_PART_SIZE,
    PrefixedStore,
    RetryPolicy,
    arechunk,
    missing_dependency,
    option_float,
    option_int,
    split_uri,
)

__all__ = ["AzureBlobArtifactStore"]

T = TypeVar("T")
_TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})
#: Azure sends identity tokens over TLS only: what to do about an http:// account URL.
_USE_HTTPS = (
    "Azure sends identity tokens (DefaultAzureCredential) only over https. Use an https "
    "account_url, or set the stack's connection_string, account_key or sas_token."
)


@dataclass(frozen=True, slots=True)
class _Client:
    """One loop's container client, and the credential it owns (closed with it), if any."""

    container: Any
    credential: Any = None


class AzureBlobArtifactStore(PrefixedStore):
    """An :class:`~kitaru.store.ArtifactStore` in an Azure Blob container (``az://container/prefix``).

    Writes are create-only: a blob is uploaded with ``If-None-Match: *`` (``overwrite=False``), or, when
    it spans several blocks, its blocks are staged under fresh ids and committed with
    ``If-None-Match: *``. Staged blocks are invisible until that commit, so a failed producer leaves
    nothing. When Azure refuses the write because the blob exists, the existing blob's SHA-256 (kept
    in its metadata) decides between "same bytes, fine" and
    :class:`~kitaru.errors.KitaruConflictError`. Transient failures (429, 5xx, dropped connections)
    are retried with exponential backoff and jitter, sleeping on the loop; the SDK's own retries are
    switched off so that one policy applies.

    Authentication, first that applies: ``connection_string`` (or ``AZURE_STORAGE_CONNECTION_STRING``);
    ``account_key`` with ``account_url`` or ``account_name``; ``sas_token``; otherwise
    ``DefaultAzureCredential`` (environment, managed identity, Azure CLI login...) for
    ``account_url`` / ``account_name`` (or ``AZURE_STORAGE_ACCOUNT_URL`` / ``AZURE_STORAGE_ACCOUNT``).
    Other options: ``part_size`` (block size, bytes, default 8 MiB), ``retries``,
    ``retry_base_delay``, ``retry_max_delay``, ``connect_timeout``, ``read_timeout``.
    """

    inline: ClassVar[bool] = False

    def __init__(self, uri: str, **options: Any) -> None:
        self.container, self.prefix = split_uri(uri, "az")
        self.uri = f"az://{self.container}" + (f"/{self.prefix}" if self.prefix else "")
        self._options = dict(options)
        options = dict(options)
        self.retry = RetryPolicy.from_options(options)
        self.part_size = max(64 << 10, option_int(options.pop("part_size", DEFAULT_PART_SIZE), "part_size"))
        self._connection_string: str | None = (
            options.pop("connection_string", None)
            or os.environ.get("AZURE_STORAGE_CONNECTION_STRING")
            or None
        )
        account_name = options.pop("account_name", None) or os.environ.get("AZURE_STORAGE_ACCOUNT") or None
        self.account_url: str | None = (
            options.pop("account_url", None)
            or os.environ.get("AZURE_STORAGE_ACCOUNT_URL")
            or (f"https://{account_name}.blob.core.windows.net" if account_name else None)
        )
        if self._connection_string and not self.account_url:
            self.account_url = _endpoint_of(self._connection_string)
        self._account_name = account_name or _account_of(self.account_url)
        self._account_key: str | None = options.pop("account_key", None) or None
        self._sas_token: str | None = options.pop("sas_token", None) or None
        self._connect_timeout = option_float(options.pop("connect_timeout", 5), "connect_timeout")
        self._read_timeout = option_float(options.pop("read_timeout", 60), "read_timeout")
        # Other keys of the stack's configuration (state URI, orchestrator settings) are not ours.
        self._clients: PerLoop[_Client] = PerLoop(self._open_client, _close_client)
        self._exc: Any = None

    # -- plumbing ---------------------------------------------------------------------------

    @property
    def _where(self) -> str:
        return f"container {self.container!r} at {self.account_url or 'Azure Blob Storage'}"

    async def _open_client(self) -> _Client:
        """This loop's container client (its HTTP session opens with its first request)."""
        try:
            import aiohttp  # noqa: F401  (the async transport azure-core uses)
            from azure.core import exceptions
            from azure.storage.blob.aio import ContainerClient
        except ImportError as exc:
            module = "aiohttp" if (exc.name or "").startswith("aiohttp") else "azure-storage-blob"
            raise missing_dependency("azure", module, exc) from exc
        self._exc = exceptions
        settings: dict[str, Any] = {
            # Retries are ours (RetryPolicy), the same for every cloud store.
            "retry_total": 0,
            "connection_timeout": self._connect_timeout,
            "read_timeout": self._read_timeout,
            # Bounded memory: reads fetch one part at a time, writes send one block.
            "max_single_get_size": self.part_size,
            "max_chunk_get_size": self.part_size,
            "max_single_put_size": self.part_size,
            "max_block_size": self.part_size,
        }
        credential: Any = None
        try:
            if self._connection_string:
                container = ContainerClient.from_connection_string(
                    self._connection_string, self.container, **settings
                )
            elif not self.account_url:
                raise KitaruStoreError(
                    f"no Azure storage account for {self.uri}: set the stack's connection_string, "
                    "account_url or account_name (or AZURE_STORAGE_CONNECTION_STRING)."
                )
            elif self._account_key:
                key: Any = {"account_name": self._account_name, "account_key": self._account_key}
                container = ContainerClient(self.account_url, self.container, credential=key, **settings)
            elif self._sas_token:
                container = ContainerClient(
                    self.account_url, self.container, credential=self._sas_token, **settings
                )
            else:
                try:
                    from azure.identity.aio import DefaultAzureCredential
                except ImportError as exc:
                    raise missing_dependency("azure", "azure-identity", exc) from exc
                credential = DefaultAzureCredential()
                container = ContainerClient(
                    self.account_url, self.container, credential=credential, **settings
                )
        except Exception as exc:  # nothing above awaits: no cancellation to let through
            if credential is not None:
                await credential.close()
            if isinstance(exc, KitaruError):
                raise
            if credential is not None and "HTTPS" in str(exc):  # the SDK refuses tokens over http
                raise KitaruStoreError(
                    f"cannot use {self._where}: it is an http:// address. {_USE_HTTPS}"
                ) from exc
            raise KitaruStoreError(
                f"cannot open an Azure Blob client for {self._where}: {exc}. Check the stack's "
                "connection_string / account_url / account_key."
            ) from exc
        return _Client(container, credential)

    async def aclose(self) -> None:
        """Close every loop's HTTP session and credential (the store reopens on next use)."""
        await self._clients.aclose()

    async def _container(self) -> Any:
        return (await self._clients.get()).container

    async def _call(self, op: str, key: str | None, fn: Callable[[], Awaitable[T]]) -> T:
        """One Azure request, retried while it fails transiently, its errors translated."""
        try:
            return await self.retry.acall(fn, self._transient)
        except KitaruError:
            raise
        except Exception as exc:
            raise self._translate(exc, op, key) from exc

    def _transient(self, exc: BaseException) -> bool:
        ex = self._exc
        if isinstance(exc, ConnectionError | asyncio.TimeoutError):
            return True
        if ex is None:
            return False
        if isinstance(exc, ex.ServiceRequestError | ex.ServiceResponseError):
            return True
        try:
            import aiohttp
        except ImportError:  # pragma: no cover - the store does not open without it
            pass
        else:
            if isinstance(exc, aiohttp.ClientConnectionError | aiohttp.ClientPayloadError):
                return True
        return (
            isinstance(exc, ex.HttpResponseError) and getattr(exc, "status_code", None) in _TRANSIENT_STATUS
        )

    def _translate(self, exc: BaseException, op: str, key: str | None) -> KitaruError:
        ex = self._exc
        what = f"Azure {op}" + (f" of {key!r}" if key else "")
        code = str(getattr(exc, "error_code", "") or "")
        status = getattr(exc, "status_code", None)
        if code == "ContainerNotFound" or (
            ex is not None and isinstance(exc, ex.ResourceNotFoundError) and not key
        ):
            return KitaruStoreError(
                f"{what} failed: {self._where} does not exist. Create the container, or point the "
                "stack's `artifacts` URI at an existing one."
            )
        if ex is not None and isinstance(exc, ex.ResourceNotFoundError):
            return KitaruNotFoundError(f"no artifact blob {key!r} in {self._where}")
        # Before the generic authentication error: azure-identity's CredentialUnavailableError
        # is a ClientAuthenticationError, but "no credential at all" has its own fix.
        if "CredentialUnavailable" in type(exc).__name__:
            return KitaruStoreError(
                f"{what} failed: no Azure credential found for {self._where} ({exc}). Set the "
                "stack's connection_string or account_key, or sign in (`az login`, managed identity)."
            )
        if (ex is not None and isinstance(exc, ex.ClientAuthenticationError)) or status in {401, 403}:
            return KitaruStoreError(
                f"{what} failed: access denied to {self._where} ({code or status}). Check the "
                "credentials (connection_string, account_key, sas_token, or the identity "
                "DefaultAzureCredential finds) and that they may read, write and list this container."
            )
        if self._transient(exc):
            return KitaruStoreError(
                f"{what} failed after {self.retry.attempts} attempts: {self._where} is unreachable, "
                f"throttling or failing ({type(exc).__name__}: {str(exc)[:300]}). Check the endpoint and "
                "the network; the operation can be retried."
            )
        return KitaruStoreError(f"{what} failed on {self._where}: {exc}")

    def _exists_conflict(self, exc: KitaruStoreError) -> bool:
        """Whether Azure refused a create-only write because the blob exists."""
        cause = exc.__cause__
        ex = self._exc
        return ex is not None and isinstance(cause, ex.ResourceExistsError | ex.ResourceModifiedError)

    # -- create-only writes ------------------------------------------------------------------

    async def put(self, key: str, data: bytes) -> None:
        if len(data) > self.part_size:
            await self._put_blocks(key, _slices(data, self.part_size))
            return
        container = await self._container()
        digest = hashlib.sha256(data).hexdigest()

        async def once() -> None:
            await container.upload_blob(self._key(key), data, overwrite=False, metadata={"sha256": digest})

        try:
            await self._call("put", key, once)
        except KitaruStoreError as exc:
            if not self._exists_conflict(exc):
                raise
            if not await self.exists(key):
                # Only uncommitted blocks of an abandoned upload are there, and some services
                # (Azurite) refuse a conditional Put Blob over them: a conditional block-list
                # commit is still create-only, and replaces them.
                await self._put_blocks(key, _slices(data, self.part_size))
                return
            await self._check_same(key, digest)

    async def _check_same(self, key: str, digest: str) -> None:
        """The blob exists: fine when it holds the bytes whose SHA-256 is ``digest``."""
        blob = (await self._container()).get_blob_client(self._key(key))
        props = await self._call("head", key, blob.get_blob_properties)
        existing = (props.metadata or {}).get("sha256")
        if existing is None:  # written by another tool: hash it
            h = hashlib.sha256()
            async for chunk in self.open(key, self.part_size):
                h.update(chunk)
            existing = h.hexdigest()
        if existing != digest:
            raise KitaruConflictError(
                f"artifact blob {key!r} in {self._where} already holds different bytes; "
                "artifacts are written once."
            )

    async def put_stream(self, key: str, chunks: AsyncIterable[bytes]) -> None:
        parts = arechunk(chunks, self.part_size)
        first = await anext(parts)
        if len(first) < self.part_size:  # the whole stream fits in one request
            await self.put(key, first)
            return
        pending = [first]
        del first  # only `pending` holds the part read ahead, and lets go of it

        async def every_part() -> AsyncIterator[bytes]:
            while pending:
                yield pending.pop(0)
            async for part in parts:
                yield part

        await self._put_blocks(key, every_part())

    async def _put_blocks(self, key: str, parts: AsyncIterator[bytes]) -> None:
        """Stage ``parts`` as blocks, one in memory at a time, then commit them at once with
        ``If-None-Match: *``. A producer that fails leaves only uncommitted blocks, which no
        reader sees and which Azure discards (a week later, or at the next commit of this name)."""
        blob = (await self._container()).get_blob_client(self._key(key))
        upload = uuid.uuid4().hex  # block ids of this upload only: concurrent writers never mix
        ids: list[str] = []
        sha = hashlib.sha256()
        number = 0
        async for part in parts:
            block_id = base64.b64encode(f"{upload}-{number:08d}".encode()).decode()
            sha.update(part)

            async def stage(block_id: str = block_id, part: bytes = part) -> None:
                await blob.stage_block(block_id, part)

            await self._call("put", key, stage)
            ids.append(block_id)
            number += 1
            del part, stage
        digest = sha.hexdigest()

        async def commit() -> None:
            await blob.commit_block_list(ids, metadata={"sha256": digest}, if_none_match="*")

        try:
            await self._call("put", key, commit)
        except KitaruStoreError as exc:
            if not self._exists_conflict(exc):
                raise
            await self._check_same(key, digest)

    # -- reads -------------------------------------------------------------------------------

    async def get(self, key: str) -> bytes:
        return b"".join([chunk async for chunk in self.open(key, self.part_size)])

    async def open(self, key: str, chunk_size: int = 1 << 20) -> AsyncIterator[bytes]:
        blob = (await self._container()).get_blob_client(self._key(key))
        offset, end, etag = 0, 0, None
        attempt = 1
        while True:

            async def start(offset: int = offset, etag: str | None = etag) -> Any:
                if etag is None:
                    return await blob.download_blob(max_concurrency=1)
                # Resuming a broken download: the same blob (If-Match), from the byte it reached.
                from azure.core import MatchConditions

                return await blob.download_blob(
                    offset, max_concurrency=1, etag=etag, match_condition=MatchConditions.IfNotModified
                )

            downloader = await self._call("get", key, start)
            end, etag = offset + downloader.size, downloader.properties.etag
            pieces = downloader.chunks()  # one part per request, fetched as the caller reads
            while True:
                try:
                    piece = await anext(pieces, None)
                except Exception as exc:
                    if attempt >= self.retry.attempts or not self._transient(exc):
                        raise self._translate(exc, "get", key) from exc
                    await anyio.sleep(self.retry.delay(attempt))
                    attempt += 1
                    break
                if piece is None:
                    return
                offset += len(piece)
                if len(piece) <= chunk_size:
                    yield piece
                    continue
                with memoryview(piece) as view:
                    for at in range(0, len(piece), chunk_size):
                        yield bytes(view[at : at + chunk_size])
                del piece
            if offset >= end:
                return

    async def exists(self, key: str) -> bool:
        blob = (await self._container()).get_blob_client(self._key(key))
        return bool(await self._call("head", key, blob.exists))

    async def list(self, prefix: str = "") -> AsyncIterator[str]:
        container = await self._container()
        base = f"{self.prefix}/" if self.prefix else ""
        token: str | None = None
        while True:

            async def page(token: str | None = token) -> tuple[list[str], str | None]:
                pages = container.list_blobs(name_starts_with=base + prefix).by_page(continuation_token=token)
                names = [b.name async for b in await anext(pages)]
                return names, pages.continuation_token

            names, token = await self._call("list", None, page)
            for name in names:
                yield name[len(base) :]
            if not token:
                return

    async def delete(self, key: str) -> None:
        container = await self._container()

        async def once() -> None:
            try:
                await container.delete_blob(self._key(key))
            except self._exc.ResourceNotFoundError as exc:
                if getattr(exc, "error_code", None) == "ContainerNotFound":
                    raise

        await self._call("delete", key, once)


async def _slices(data: bytes, size: int) -> AsyncIterator[bytes]:
    """``data`` in blocks of ``size`` bytes (one copied block at a time)."""
    with memoryview(data) as view:
        for start in range(0, max(len(data), 1), size):
            yield bytes(view[start : start + size])


async def _close_client(client: _Client) -> None:
    """Close a loop's client (its aiohttp session) and then the credential it used."""
    try:
        await client.container.close()
    except Exception:
        pass  # the connections are dropped either way
    if client.credential is not None:
        try:
            await client.credential.close()
        except Exception:
            pass


def _endpoint_of(connection_string: str) -> str | None:
    """The blob endpoint a connection string names (for messages)."""
    fields = dict(part.split("=", 1) for part in connection_string.split(";") if "=" in part)
    if "BlobEndpoint" in fields:
        return fields["BlobEndpoint"]
    if "AccountName" in fields:
        suffix = fields.get("EndpointSuffix", "core.windows.net")
        return f"{fields.get('DefaultEndpointsProtocol', 'https')}://{fields['AccountName']}.blob.{suffix}"
    return None


def _account_of(url: str | None) -> str | None:
    """The account name in a blob endpoint: ``NAME.blob.core.windows.net``, or the first path
    segment of an emulator's ``http://127.0.0.1:10000/NAME``."""
    if not url:
        return None
    parsed = urlparse(url)
    host = parsed.hostname or ""
    if ".blob." in host:
        return host.split(".", 1)[0]
    return parsed.path.strip("/").split("/", 1)[0] or None
