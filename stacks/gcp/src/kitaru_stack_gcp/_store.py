"""The Google Cloud Storage artifact store, on google-cloud-storage.

Why this SDK rather than gcloud-aio-storage: its resumable uploads (``BlobWriter``) and ranged
reads (``BlobReader``) stream in fixed-size chunks, so memory stays bounded both ways, whereas
gcloud-aio-storage sends an upload's whole body in one request. The SDK blocks, so the async
contract runs each call in a worker thread (:class:`~kitaru.store.objectstore.ThreadedStore`,
``anyio.to_thread``): the event loop never waits on it, and streams still stream.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable, Generator, Iterable, Iterator
from typing import Any, TypeVar

from kitaru.errors import KitaruConflictError, KitaruError, KitaruNotFoundError, KitaruStoreError
from kitaru.store.objectstore import (
    DEFAULT_PART_SIZE,
    PrefixedStore,
    RetryPolicy,
    ThreadedStore,
    missing_dependency,
    option_bool,
    option_float,
    option_int,
    rechunk,
    split_uri,
)

__all__ = ["GcsArtifactStore"]

T = TypeVar("T")
_QUANTUM = 256 << 10  # resumable upload chunks are multiples of 256 KiB
#: Blobs up to this size go up in one multipart request; larger ones as a resumable upload.
_SINGLE_REQUEST = 8 << 20


class GcsArtifactStore(ThreadedStore, PrefixedStore):
    """An :class:`~kitaru.store.ArtifactStore` in a GCS bucket (``gs://bucket/prefix``).

    Writes are create-only through ``ifGenerationMatch=0``: GCS refuses to replace an existing
    object, and the existing object's hash (SHA-256 in its metadata, else its MD5) decides between
    "same bytes, fine" and :class:`~kitaru.errors.KitaruConflictError`. Blobs over 8 MiB go up as a
    resumable upload, one ``part_size`` chunk in memory at a time; GCS makes the object visible
    only when the upload is finalized, so a failed producer leaves nothing. Before a resumable
    upload the store checks whether the key exists (emulators such as fake-gcs-server enforce
    ``ifGenerationMatch`` on single-request uploads only). Transient failures (429, 5xx, dropped
    connections) are retried with exponential backoff and jitter.

    Options (the stack's config keys): ``endpoint_url`` (an emulator; ``STORAGE_EMULATOR_HOST``
    works too), ``project``, ``credentials_file`` (a service-account JSON; otherwise Application
    Default Credentials, or anonymous access when an endpoint is given), ``anonymous``,
    ``part_size`` (bytes, a multiple of 256 KiB, default 8 MiB), ``retries``, ``retry_base_delay``,
    ``retry_max_delay``, ``timeout`` (seconds per request).
    """

    def __init__(self, uri: str, **options: Any) -> None:
        self.bucket, self.prefix = split_uri(uri, "gs")
        self.uri = f"gs://{self.bucket}" + (f"/{self.prefix}" if self.prefix else "")
        self._options = dict(options)
        options = dict(options)
        self.retry = RetryPolicy.from_options(options)
        part = option_int(options.pop("part_size", DEFAULT_PART_SIZE), "part_size")
        self.part_size = max(_QUANTUM, part // _QUANTUM * _QUANTUM)
        self.endpoint_url: str | None = (
            options.pop("endpoint_url", None) or os.environ.get("STORAGE_EMULATOR_HOST") or None
        )
        self.project: str | None = options.pop("project", None) or None
        self._credentials_file: str | None = options.pop("credentials_file", None) or None
        self._anonymous = option_bool(
            options.pop("anonymous", bool(self.endpoint_url and not self._credentials_file)), "anonymous"
        )
        self._timeout = option_float(options.pop("timeout", 60), "timeout")
        self._lock = threading.Lock()
        self._client: Any = None
        self._bucket: Any = None
        self._exc: Any = None

    # -- plumbing ---------------------------------------------------------------------------

    @property
    def _where(self) -> str:
        return f"bucket {self.bucket!r} at {self.endpoint_url or 'Google Cloud Storage'}"

    def _ensure(self) -> Any:
        if self._bucket is not None:
            return self._bucket
        with self._lock:
            if self._bucket is None:
                try:
                    import google.cloud.storage as storage
                    from google.api_core import exceptions
                except ImportError as exc:
                    raise missing_dependency("gcp", "google-cloud-storage", exc) from exc
                credentials: Any = None
                try:
                    if self._credentials_file:
                        from google.oauth2 import service_account

                        credentials = service_account.Credentials.from_service_account_file(  # type: ignore[no-untyped-call]
                            self._credentials_file
                        )
                    elif self._anonymous:
                        from google.auth.credentials import AnonymousCredentials

                        credentials = AnonymousCredentials()  # type: ignore[no-untyped-call]
                    client = storage.Client(
                        project=self.project or ("kitaru" if self._anonymous else None),
                        credentials=credentials,
                        client_options={"api_endpoint": self.endpoint_url} if self.endpoint_url else None,
                    )
                except Exception as exc:
                    raise KitaruStoreError(
                        f"cannot open a GCS client for {self._where}: {exc}. Set the stack's "
                        "credentials_file, or run `gcloud auth application-default login`, or set "
                        "GOOGLE_APPLICATION_CREDENTIALS."
                    ) from exc
                self._exc, self._client = exceptions, client
                self._bucket = client.bucket(self.bucket)
        return self._bucket

    def _call(self, op: str, key: str | None, fn: Callable[[], T]) -> T:
        """One GCS request, retried while it fails transiently, its errors translated."""
        self._ensure()
        try:
            return self.retry.call(fn, self._transient)
        except KitaruError:
            raise
        except Exception as exc:
            raise self._translate(exc, op, key) from exc

    def _transient(self, exc: BaseException) -> bool:
        ex = self._exc
        if ex is not None and isinstance(
            exc,
            ex.TooManyRequests
            | ex.InternalServerError
            | ex.BadGateway
            | ex.ServiceUnavailable
            | ex.GatewayTimeout,
        ):
            return True
        if isinstance(exc, ConnectionError | TimeoutError):
            return True
        try:
            import requests
            from google.auth import exceptions as auth_exceptions
        except ImportError:  # pragma: no cover - google-cloud-storage depends on both
            return False
        return isinstance(
            exc,
            requests.ConnectionError
            | requests.Timeout
            | requests.exceptions.ChunkedEncodingError
            | auth_exceptions.TransportError,
        )

    def _translate(self, exc: BaseException, op: str, key: str | None) -> KitaruError:
        ex = self._exc
        what = f"GCS {op}" + (f" of {key!r}" if key else "")
        if ex is not None and isinstance(exc, ex.NotFound):
            if key is not None and op in {"get", "open", "head"} and self._bucket_exists():
                return KitaruNotFoundError(f"no artifact blob {key!r} in {self._where}")
            return KitaruStoreError(
                f"{what} failed: {self._where} does not exist. Create the bucket, or point the "
                "stack's `artifacts` URI at an existing one."
            )
        if ex is not None and isinstance(exc, ex.Forbidden | ex.Unauthorized):
            return KitaruStoreError(
                f"{what} failed: access denied to {self._where} ({exc}). Check the credentials "
                "(credentials_file, GOOGLE_APPLICATION_CREDENTIALS) and that they hold "
                "roles/storage.objectAdmin on this bucket."
            )
        if self._transient(exc):
            return KitaruStoreError(
                f"{what} failed after {self.retry.attempts} attempts: {self._where} is unreachable, "
                f"throttling or failing ({exc}). Check the endpoint and the network; the operation "
                "can be retried."
            )
        return KitaruStoreError(f"{what} failed on {self._where}: {exc}")

    def _bucket_exists(self) -> bool:
        try:
            return bool(self.retry.call(lambda: self._bucket.exists(retry=None), self._transient))
        except Exception:
            return True  # cannot tell: report the key as missing

    def _api_retry(self) -> Any:
        """The same policy as the SDK's retry object, for the chunks of streamed transfers."""
        from google.api_core.retry import Retry

        return Retry(
            predicate=self._transient,
            initial=self.retry.base_delay,
            maximum=self.retry.max_delay,
            multiplier=2.0,
            timeout=self.retry.attempts * self.retry.max_delay,
        )

    # -- create-only writes ------------------------------------------------------------------

    def _put(self, key: str, data: bytes) -> None:
        if len(data) <= _SINGLE_REQUEST:
            self._put_single(key, data)
        else:
            self._put_stream(key, (data,))

    def _put_single(self, key: str, data: bytes) -> None:
        bucket = self._ensure()
        digest = hashlib.sha256(data).hexdigest()

        def once() -> None:
            blob = bucket.blob(self._key(key))
            blob.metadata = {"sha256": digest}
            # Multipart (one request): ifGenerationMatch is enforced everywhere, emulators included.
            blob.upload_from_string(
                data,
                content_type="application/octet-stream",
                if_generation_match=0,
                retry=None,
                timeout=self._timeout,
            )

        try:
            self._call("put", key, once)
        except KitaruStoreError as exc:
            if not isinstance(exc.__cause__, self._exc.PreconditionFailed):
                raise
            self._check_same(key, digest, hashlib.md5(data).digest())

    def _check_same(self, key: str, sha256: str, md5: bytes) -> None:
        """The key exists: fine when it holds the same bytes."""
        bucket = self._ensure()
        blob = self._call("head", key, lambda: bucket.get_blob(self._key(key), retry=None))
        if blob is None:
            raise KitaruStoreError(f"artifact blob {key!r} in {self._where} vanished during a write")
        existing = (blob.metadata or {}).get("sha256")
        if existing is not None:
            same = existing == sha256
        elif blob.md5_hash:
            import base64

            same = base64.b64decode(blob.md5_hash) == md5
        else:
            h = hashlib.sha256()
            for chunk in self._open(key, self.part_size):
                h.update(chunk)
            same = h.hexdigest() == sha256
        if not same:
            raise KitaruConflictError(
                f"artifact blob {key!r} in {self._where} already holds different bytes; "
                "artifacts are written once."
            )

    def _put_stream(self, key: str, chunks: Iterable[bytes]) -> None:
        parts = rechunk(chunks, self.part_size)
        first = next(parts)
        second = next(parts, None)
        if second is None and len(first) <= _SINGLE_REQUEST:
            self._put_single(key, first)
            return
        pending = [first] + ([second] if second is not None else [])
        del first, second
        sha, md5 = hashlib.sha256(), hashlib.md5()

        def every_part() -> Iterator[bytes]:
            while pending:
                yield pending.pop(0)
            yield from parts

        if self._exists(key):  # compare instead of uploading (see the class docstring)
            for part in every_part():
                sha.update(part)
                md5.update(part)
            self._check_same(key, sha.hexdigest(), md5.digest())
            return
        bucket = self._ensure()
        blob = bucket.blob(self._key(key), chunk_size=self.part_size)
        writer = self._call(
            "put",
            key,
            lambda: blob.open(
                "wb",
                ignore_flush=True,
                if_generation_match=0,
                content_type="application/octet-stream",
                retry=self._api_retry(),
                timeout=self._timeout,
            ),
        )
        try:
            for part in every_part():
                sha.update(part)
                md5.update(part)
                writer.write(part)
                del part
            writer.close()  # finalizes: the object appears now, whole
        except BaseException as exc:
            _abandon(writer)
            if isinstance(exc, KitaruError) or not isinstance(exc, Exception):
                raise
            if isinstance(exc, self._exc.PreconditionFailed):
                self._check_same(key, sha.hexdigest(), md5.digest())
                return
            if isinstance(exc, self._exc.GoogleAPICallError) or self._transient(exc):
                raise self._translate(exc, "put", key) from exc
            raise  # the producer's own error: the upload is never finalized

    # -- reads -------------------------------------------------------------------------------

    def _get(self, key: str) -> bytes:
        bucket = self._ensure()
        return bytes(
            self._call(
                "get",
                key,
                lambda: bucket.blob(self._key(key)).download_as_bytes(retry=None, timeout=self._timeout),
            )
        )

    def _open(self, key: str, chunk_size: int = 1 << 20) -> Generator[bytes, None, None]:
        bucket = self._ensure()
        blob = bucket.blob(self._key(key))
        reader = self._call(
            "open",
            key,
            lambda: blob.open(
                "rb",
                chunk_size=max(chunk_size, _QUANTUM),
                retry=self._api_retry(),
                timeout=self._timeout,
            ),
        )
        with reader:
            while True:
                try:
                    chunk = reader.read(chunk_size)
                except Exception as exc:
                    raise self._translate(exc, "open", key) from exc
                if not chunk:
                    return
                yield chunk

    def _exists(self, key: str) -> bool:
        bucket = self._ensure()
        return bool(
            self._call(
                "head",
                key,
                lambda: bucket.blob(self._key(key)).exists(retry=None, timeout=self._timeout),
            )
        )

    def _list(self, prefix: str = "") -> Generator[str, None, None]:
        self._ensure()
        base = f"{self.prefix}/" if self.prefix else ""
        token: str | None = None
        while True:

            def page(token: str | None = token) -> tuple[list[str], str | None]:
                listing = self._client.list_blobs(
                    self.bucket,
                    prefix=base + prefix,
                    page_token=token,
                    max_results=1000,
                    retry=None,
                    timeout=self._timeout,
                )
                first = next(listing.pages)
                return [b.name for b in first], listing.next_page_token

            names, token = self._call("list", None, page)
            for name in names:
                yield name[len(base) :]
            if not token:
                return

    def _delete(self, key: str) -> None:
        bucket = self._ensure()

        def once() -> None:
            try:
                bucket.blob(self._key(key)).delete(retry=None, timeout=self._timeout)
            except self._exc.NotFound:
                pass

        self._call("delete", key, once)

    def _close(self) -> None:
        """Close the HTTP session (the store reopens on next use)."""
        with self._lock:
            client, self._client, self._bucket = self._client, None, None
        if client is not None:
            client.close()


def _abandon(writer: Any) -> None:
    """Drop an unfinished resumable upload. ``BlobWriter.close()``, which io also calls when the
    writer is garbage-collected, would finalize it with whatever it received so far: closing its
    buffer first leaves the upload unfinalized, so the object never appears (GCS expires it)."""
    buffer = getattr(writer, "_buffer", None)
    if buffer is not None:
        buffer.close()
