"""The Azure Blob Storage artifact store, on azure-storage-blob (sync API) and azure-identity.

The async contract runs each blocking SDK call in a worker thread
(:class:`~kitaru.store.objectstore.ThreadedStore`): the event loop never waits on it.
"""

# transition (issue 9): moving to azure.storage.blob.aio + azure.identity.aio (one client per loop,
# as the S3 store does) is still to do; until then the sync SDK runs in worker threads.

from __future__ import annotations

import base64
import functools
import hashlib
import os
import threading
import uuid
from collections.abc import Callable, Generator, Iterable, Iterator
from typing import Any, TypeVar
from urllib.parse import urlparse

from kitaru.errors import KitaruConflictError, KitaruError, KitaruNotFoundError, KitaruStoreError
from kitaru.store.objectstore import (
    DEFAULT_PART_SIZE,
    PrefixedStore,
    RetryPolicy,
    ThreadedStore,
    missing_dependency,
    option_float,
    option_int,
    rechunk,
    split_uri,
)

__all__ = ["AzureBlobArtifactStore"]

T = TypeVar("T")
_TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})


class AzureBlobArtifactStore(ThreadedStore, PrefixedStore):
    """An :class:`~kitaru.store.ArtifactStore` in an Azure Blob container (``az://container/prefix``).

    Writes are create-only: a blob is uploaded with ``If-None-Match: *`` (``overwrite=False``), or, when
    it spans several blocks, its blocks are staged under fresh ids and committed with
    ``If-None-Match: *``. Staged blocks are invisible until that commit, so a failed producer leaves
    nothing. When Azure refuses the write because the blob exists, the existing blob's SHA-256 (kept
    in its metadata) decides between "same bytes, fine" and
    :class:`~kitaru.errors.KitaruConflictError`. Transient failures (429, 5xx, dropped connections)
    are retried with exponential backoff and jitter; the SDK's own retries are switched off so that
    one policy applies.

    Authentication, first that applies: ``connection_string`` (or ``AZURE_STORAGE_CONNECTION_STRING``);
    ``account_key`` with ``account_url`` or ``account_name``; ``sas_token``; otherwise
    ``DefaultAzureCredential`` (environment, managed identity, Azure CLI login...) for
    ``account_url`` / ``account_name`` (or ``AZURE_STORAGE_ACCOUNT_URL`` / ``AZURE_STORAGE_ACCOUNT``).
    Other options: ``part_size`` (block size, bytes, default 8 MiB), ``retries``,
    ``retry_base_delay``, ``retry_max_delay``, ``connect_timeout``, ``read_timeout``.
    """

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
        self._lock = threading.Lock()
        self._client: Any = None
        self._exc: Any = None

    # -- plumbing ---------------------------------------------------------------------------

    @property
    def _where(self) -> str:
        return f"container {self.container!r} at {self.account_url or 'Azure Blob Storage'}"

    def _ensure(self) -> Any:
        if self._client is not None:
            return self._client
        with self._lock:
            if self._client is None:
                try:
                    from azure.core import exceptions
                    from azure.storage.blob import BlobServiceClient
                except ImportError as exc:
                    raise missing_dependency("azure", "azure-storage-blob", exc) from exc
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
                try:
                    if self._connection_string:
                        service = BlobServiceClient.from_connection_string(
                            self._connection_string, **settings
                        )
                    elif not self.account_url:
                        raise KitaruStoreError(
                            f"no Azure storage account for {self.uri}: set the stack's connection_string, "
                            "account_url or account_name (or AZURE_STORAGE_CONNECTION_STRING)."
                        )
                    elif self._account_key:
                        credential: Any = {
                            "account_name": self._account_name,
                            "account_key": self._account_key,
                        }
                        service = BlobServiceClient(self.account_url, credential=credential, **settings)
                    elif self._sas_token:
                        service = BlobServiceClient(self.account_url, credential=self._sas_token, **settings)
                    else:
                        try:
                            from azure.identity import DefaultAzureCredential
                        except ImportError as exc:
                            raise missing_dependency("azure", "azure-identity", exc) from exc
                        service = BlobServiceClient(
                            self.account_url, credential=DefaultAzureCredential(), **settings
                        )
                except KitaruError:
                    raise
                except Exception as exc:
                    raise KitaruStoreError(
                        f"cannot open an Azure Blob client for {self._where}: {exc}. Check the stack's "
                        "connection_string / account_url / account_key."
                    ) from exc
                self._exc = exceptions
                self._client = service.get_container_client(self.container)
        return self._client

    def _call(self, op: str, key: str | None, fn: Callable[[], T]) -> T:
        """One Azure request, retried while it fails transiently, its errors translated."""
        self._ensure()
        try:
            return self.retry.call(fn, self._transient)
        except KitaruError:
            raise
        except Exception as exc:
            raise self._translate(exc, op, key) from exc

    def _transient(self, exc: BaseException) -> bool:
        ex = self._exc
        if isinstance(exc, ConnectionError | TimeoutError):
            return True
        if ex is None:
            return False
        if isinstance(exc, ex.ServiceRequestError | ex.ServiceResponseError):
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
        if (ex is not None and isinstance(exc, ex.ClientAuthenticationError)) or status in {401, 403}:
            return KitaruStoreError(
                f"{what} failed: access denied to {self._where} ({code or status}). Check the "
                "credentials (connection_string, account_key, sas_token, or the identity "
                "DefaultAzureCredential finds) and that they may read, write and list this container."
            )
        if "CredentialUnavailable" in type(exc).__name__:
            return KitaruStoreError(
                f"{what} failed: no Azure credential found for {self._where} ({exc}). Set the "
                "stack's connection_string or account_key, or sign in (`az login`, managed identity)."
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

    def _put(self, key: str, data: bytes) -> None:
        if len(data) > self.part_size:
            self._put_stream(key, (data,))
            return
        client = self._ensure()
        digest = hashlib.sha256(data).hexdigest()

        def once() -> None:
            client.upload_blob(self._key(key), data, overwrite=False, metadata={"sha256": digest})

        try:
            self._call("put", key, once)
        except KitaruStoreError as exc:
            if not self._exists_conflict(exc):
                raise
            if not self._exists(key):
                # Only uncommitted blocks of an abandoned upload are there, and some services
                # (Azurite) refuse a conditional Put Blob over them: a conditional block-list
                # commit is still create-only, and replaces them.
                self._put_blocks(key, iter((data,)))
                return
            self._check_same(key, digest)

    def _check_same(self, key: str, digest: str) -> None:
        """The blob exists: fine when it holds the bytes whose SHA-256 is ``digest``."""
        blob = self._ensure().get_blob_client(self._key(key))
        props = self._call("head", key, blob.get_blob_properties)
        existing = (props.metadata or {}).get("sha256")
        if existing is None:  # written by another tool: hash it
            h = hashlib.sha256()
            for chunk in self._open(key, self.part_size):
                h.update(chunk)
            existing = h.hexdigest()
        if existing != digest:
            raise KitaruConflictError(
                f"artifact blob {key!r} in {self._where} already holds different bytes; "
                "artifacts are written once."
            )

    def _put_stream(self, key: str, chunks: Iterable[bytes]) -> None:
        parts = rechunk(chunks, self.part_size)
        first = next(parts)
        second = next(parts, None)
        if second is None:
            self._put(key, first)
            return
        pending = [first, second]
        del first, second

        def every_part() -> Iterator[bytes]:
            while pending:
                yield pending.pop(0)
            yield from parts

        self._put_blocks(key, every_part())

    def _put_blocks(self, key: str, parts: Iterator[bytes]) -> None:
        """Stage ``parts`` as blocks, then commit them at once with ``If-None-Match: *``."""
        blob = self._ensure().get_blob_client(self._key(key))
        upload = uuid.uuid4().hex  # block ids of this upload only: concurrent writers never mix
        ids: list[str] = []
        sha = hashlib.sha256()
        for number, part in enumerate(parts):
            block_id = base64.b64encode(f"{upload}-{number:08d}".encode()).decode()
            sha.update(part)
            self._call("put", key, functools.partial(blob.stage_block, block_id, part))
            ids.append(block_id)
            del part
        digest = sha.hexdigest()
        try:
            self._call(
                "put",
                key,
                lambda: blob.commit_block_list(ids, metadata={"sha256": digest}, if_none_match="*"),
            )
        except KitaruStoreError as exc:
            if not self._exists_conflict(exc):
                raise
            self._check_same(key, digest)

    # -- reads -------------------------------------------------------------------------------

    def _get(self, key: str) -> bytes:
        return b"".join(self._open(key, self.part_size))

    def _open(self, key: str, chunk_size: int = 1 << 20) -> Generator[bytes, None, None]:
        blob = self._ensure().get_blob_client(self._key(key))
        downloader = self._call("get", key, lambda: blob.download_blob(max_concurrency=1))
        pieces = downloader.chunks()
        while True:
            try:
                piece = next(pieces, None)
            except Exception as exc:
                raise self._translate(exc, "get", key) from exc
            if piece is None:
                return
            if len(piece) <= chunk_size:
                yield piece
                continue
            with memoryview(piece) as view:
                for start in range(0, len(piece), chunk_size):
                    yield bytes(view[start : start + chunk_size])

    def _exists(self, key: str) -> bool:
        blob = self._ensure().get_blob_client(self._key(key))
        return bool(self._call("head", key, blob.exists))

    def _list(self, prefix: str = "") -> Generator[str, None, None]:
        client = self._ensure()
        base = f"{self.prefix}/" if self.prefix else ""
        token: str | None = None
        while True:

            def page(token: str | None = token) -> tuple[list[str], str | None]:
                pages = client.list_blobs(name_starts_with=base + prefix).by_page(continuation_token=token)
                names = [b.name for b in next(pages)]
                return names, pages.continuation_token

            names, token = self._call("list", None, page)
            for name in names:
                yield name[len(base) :]
            if not token:
                return

    def _delete(self, key: str) -> None:
        client = self._ensure()

        def once() -> None:
            try:
                client.delete_blob(self._key(key))
            except self._exc.ResourceNotFoundError as exc:
                if getattr(exc, "error_code", None) == "ContainerNotFound":
                    raise

        self._call("delete", key, once)

    def _close(self) -> None:
        """Close the HTTP session (the store reopens on next use)."""
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()


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
