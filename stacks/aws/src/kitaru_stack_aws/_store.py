"""The S3 artifact store, on aiobotocore.

Every request runs on the caller's event loop: the store keeps one aiobotocore client per running
loop (:class:`~kitaru.store._perloop.PerLoop`), opened by that loop's first request and closed by
``aclose()`` or by the loop's own shutdown. No private loop, no thread hop.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
from collections.abc import AsyncIterable, AsyncIterator
from typing import Any, ClassVar, TypeVar

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

__all__ = ["S3ArtifactStore"]

T = TypeVar("T")

#: S3 refuses multipart parts below 5 MiB (except the last one).
_MIN_PART = 5 << 20
_STREAMED_BODY = 1 << 20
_TRANSIENT_CODES = frozenset(
    {
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "RequestLimitExceeded",
        "RequestTimeout",
        "InternalError",
        "ServiceUnavailable",
        "ConditionalRequestConflict",  # a concurrent conditional write: retry, then see who won
    }
)
_DENIED_CODES = frozenset(
    {
        "AccessDenied",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "ExpiredToken",
        "InvalidToken",
        "AllAccessDisabled",
    }
)


class S3ArtifactStore(PrefixedStore):
    """An :class:`~kitaru.store.ArtifactStore` in an S3 bucket (``s3://bucket/prefix``).

    Writes are create-only: ``PutObject`` and ``CompleteMultipartUpload`` carry ``If-None-Match: *``,
    so S3 itself refuses to replace an existing object; when it refuses, the existing object's
    SHA-256 (kept in its metadata, else computed by streaming it) decides between "same bytes,
    fine" and :class:`~kitaru.errors.KitaruConflictError`. Streams larger than one part go up as a
    multipart upload, one part in memory at a time, and are aborted if the producer fails, so the
    key never shows half a blob. Transient failures (throttling, 5xx, dropped connections) are
    retried per request with exponential backoff and jitter; a download that breaks mid-way
    continues from the byte it reached.

    Options (the stack's config keys): ``endpoint_url`` (S3-compatible servers, moto, MinIO),
    ``region``, ``aws_access_key_id`` / ``aws_secret_access_key`` / ``aws_session_token``,
    ``profile``, ``part_size`` (bytes, default 8 MiB), ``retries`` (default 4),
    ``retry_base_delay`` / ``retry_max_delay`` (seconds), ``connect_timeout`` / ``read_timeout``.
    Unset credentials come from the usual AWS chain (environment, profile, instance role).
    """

    inline: ClassVar[bool] = False

    def __init__(self, uri: str, **options: Any) -> None:
        self.bucket, self.prefix = split_uri(uri, "s3")
        self.uri = f"s3://{self.bucket}" + (f"/{self.prefix}" if self.prefix else "")
        self._options = dict(options)
        options = dict(options)
        self.retry = RetryPolicy.from_options(options)
        self.part_size = max(_MIN_PART, option_int(options.pop("part_size", DEFAULT_PART_SIZE), "part_size"))
        self.endpoint_url: str | None = options.pop("endpoint_url", None) or None
        self.region: str | None = options.pop("region", None) or options.pop("region_name", None) or None
        self._credentials = {
            k: options.pop(k)
            for k in ("aws_access_key_id", "aws_secret_access_key", "aws_session_token")
            if options.get(k)
        }
        self._profile: str | None = options.pop("profile", None) or None
        self._connect_timeout = option_float(options.pop("connect_timeout", 5), "connect_timeout")
        self._read_timeout = option_float(options.pop("read_timeout", 60), "read_timeout")
        # Other keys of the stack's configuration (state URI, orchestrator settings) are not ours.
        self._clients: PerLoop[tuple[Any, Any]] = PerLoop(self._open_client, _close_client)
        self._exceptions: Any = None

    # -- plumbing ---------------------------------------------------------------------------

    @property
    def _where(self) -> str:
        return f"bucket {self.bucket!r} at {self.endpoint_url or 'AWS S3'}" + (
            f" (region {self.region})" if self.region else ""
        )

    async def _open_client(self) -> tuple[Any, Any]:
        """This loop's client (and the context that closes it)."""
        try:
            from aiobotocore.config import AioConfig
            from aiobotocore.session import get_session
            from botocore import exceptions
        except ImportError as exc:
            raise missing_dependency("aws", "aiobotocore", exc) from exc
        self._exceptions = exceptions
        session = get_session()
        if self._profile:
            session.set_config_variable("profile", self._profile)
        config = AioConfig(
            # Retries are ours (RetryPolicy), the same for every cloud store.
            retries={"max_attempts": 1, "mode": "standard"},
            connect_timeout=self._connect_timeout,
            read_timeout=self._read_timeout,
            max_pool_connections=16,
            # Checksums of streamed uploads only when S3 requires one (moto and older S3-compatible
            # servers reject the newer trailing checksums).
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        ctx = session.create_client(
            "s3",
            region_name=self.region or "us-east-1",
            endpoint_url=self.endpoint_url,
            config=config,
            **self._credentials,
        )
        return await ctx.__aenter__(), ctx

    async def aclose(self) -> None:
        """Close every loop's HTTP connections (the store reopens on next use)."""
        await self._clients.aclose()

    async def _call(self, op: str, key: str | None = None, /, **params: Any) -> Any:
        """One S3 request, retried while it fails transiently, its errors translated."""
        client, _ctx = await self._clients.get()
        method = getattr(client, op)

        async def once() -> Any:
            body = params.get("Body")
            if isinstance(body, bytes) and len(body) > _STREAMED_BODY:
                # A file-like body is sent in small pieces; bytes would be copied whole into the
                # transport's buffer when the socket cannot take them at once. A fresh one per
                # attempt: a retry starts from the first byte. (BytesIO shares the bytes.)
                return await method(Bucket=self.bucket, **{**params, "Body": io.BytesIO(body)})
            return await method(Bucket=self.bucket, **params)

        try:
            return await self.retry.acall(once, self._transient)
        except KitaruError:
            raise
        except Exception as exc:
            raise self._translate(exc, op, key) from exc

    def _code(self, exc: BaseException) -> tuple[str, int]:
        response = getattr(exc, "response", None)
        if not isinstance(response, dict):
            return "", 0
        code = str(response.get("Error", {}).get("Code", ""))
        status = int(response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        return code, status

    def _transient(self, exc: BaseException) -> bool:
        if isinstance(exc, asyncio.TimeoutError | ConnectionError):
            return True
        ex = self._exceptions
        if ex is not None and isinstance(
            exc,
            ex.EndpointConnectionError
            | ex.ConnectionClosedError
            | ex.ReadTimeoutError
            | ex.ConnectTimeoutError
            | ex.ResponseStreamingError,
        ):
            return True
        try:
            import aiohttp
        except ImportError:  # pragma: no cover - aiobotocore depends on it
            pass
        else:
            if isinstance(exc, aiohttp.ClientConnectionError | aiohttp.ClientPayloadError):
                return True
        code, status = self._code(exc)
        return code in _TRANSIENT_CODES or status in {500, 502, 503, 504}

    def _translate(self, exc: BaseException, op: str, key: str | None) -> KitaruError:
        code, status = self._code(exc)
        what = f"S3 {op}" + (f" of {key!r}" if key else "")
        if code in {"NoSuchKey", "NotFound", "404"}:
            return KitaruNotFoundError(f"no artifact blob {key!r} in {self._where}")
        if code == "NoSuchBucket":
            return KitaruStoreError(
                f"{what} failed: {self._where} does not exist. Create the bucket, or point the "
                "stack's `artifacts` URI at an existing one."
            )
        if code in _DENIED_CODES or status == 403:
            return KitaruStoreError(
                f"{what} failed: access denied to {self._where} ({code or status}). Check the "
                "credentials (aws_access_key_id/profile, AWS_* variables) and that they may read, "
                "write and list this bucket."
            )
        ex = self._exceptions
        if ex is not None and isinstance(exc, ex.NoCredentialsError | ex.PartialCredentialsError):
            return KitaruStoreError(
                f"{what} failed: no AWS credentials found for {self._where}. Set the stack's "
                "aws_access_key_id/aws_secret_access_key or profile, or the AWS_* variables."
            )
        if self._transient(exc):
            return KitaruStoreError(
                f"{what} failed after {self.retry.attempts} attempts: {self._where} is unreachable, "
                f"throttling or failing ({exc}). Check the endpoint and the network; the operation "
                "can be retried."
            )
        return KitaruStoreError(f"{what} failed on {self._where}: {exc}")

    # -- create-only writes ------------------------------------------------------------------

    async def put(self, key: str, data: bytes) -> None:
        digest = hashlib.sha256(data).hexdigest()
        await self._put_once(key, data, digest)

    async def _put_once(self, key: str, data: bytes, digest: str) -> None:
        try:
            await self._call(
                "put_object",
                key,
                Key=self._key(key),
                Body=data,
                IfNoneMatch="*",
                Metadata={"sha256": digest},
            )
        except KitaruStoreError as exc:
            if not self._precondition_failed(exc):
                raise
            await self._check_same(key, digest)

    def _precondition_failed(self, exc: KitaruStoreError) -> bool:
        """Whether S3 refused a create-only write because the key exists. ``NoSuchUpload`` on
        completion means a retried completion whose first try went through: the key exists too."""
        code, status = self._code(exc.__cause__) if exc.__cause__ else ("", 0)
        return code in {"PreconditionFailed", "NoSuchUpload"} or status == 412

    async def _check_same(self, key: str, digest: str) -> None:
        """The key exists: fine when it holds the bytes whose SHA-256 is ``digest``."""
        head = await self._call("head_object", key, Key=self._key(key))
        existing = head.get("Metadata", {}).get("sha256")
        if existing is None:  # written by a multipart upload or another tool: hash it
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
            await self._put_once(key, first, hashlib.sha256(first).hexdigest())
            return
        digest = hashlib.sha256()
        full = self._key(key)
        upload_id = (await self._call("create_multipart_upload", key, Key=full))["UploadId"]
        done: list[dict[str, Any]] = []
        pending = [first]
        del first  # only `pending` holds the part read ahead, and lets go of it

        async def every_part() -> AsyncIterator[bytes]:
            while pending:
                yield pending.pop(0)
            async for part in parts:
                yield part

        try:
            number = 0
            async for part in every_part():
                number += 1
                digest.update(part)
                etag = (
                    await self._call(
                        "upload_part", key, Key=full, UploadId=upload_id, PartNumber=number, Body=part
                    )
                )["ETag"]
                done.append({"ETag": etag, "PartNumber": number})
                del part
            await self._call(
                "complete_multipart_upload",
                key,
                Key=full,
                UploadId=upload_id,
                MultipartUpload={"Parts": done},
                IfNoneMatch="*",
            )
        except KitaruStoreError as exc:
            await self._abort(full, upload_id)
            if not self._precondition_failed(exc):
                raise
            await self._check_same(key, digest.hexdigest())
        except BaseException:
            await self._abort(full, upload_id)
            raise

    async def _abort(self, full: str, upload_id: str) -> None:
        import anyio

        try:
            # Shielded: a cancelled upload still aborts, or its parts linger until a lifecycle rule.
            with anyio.CancelScope(shield=True):
                await self._call("abort_multipart_upload", None, Key=full, UploadId=upload_id)
        except KitaruError:
            pass  # S3 lifecycle rules clean up abandoned uploads; the key never appeared

    # -- reads -------------------------------------------------------------------------------

    async def get(self, key: str) -> bytes:
        return b"".join([chunk async for chunk in self.open(key, self.part_size)])

    async def open(self, key: str, chunk_size: int = 1 << 20) -> AsyncIterator[bytes]:
        offset, etag, body = 0, None, None
        attempt = 1
        try:
            while True:
                if body is None:
                    params: dict[str, Any] = {"Key": self._key(key)}
                    if etag is not None:  # resuming a broken download: the same object, from here
                        params.update(Range=f"bytes={offset}-", IfMatch=etag)
                    response = await self._call("get_object", key, **params)
                    etag, body = response.get("ETag"), response["Body"]
                try:
                    chunk = await _read_block(body, chunk_size)
                except Exception as exc:
                    body.close()
                    body = None
                    if attempt >= self.retry.attempts or not self._transient(exc):
                        raise self._translate(exc, "get_object", key) from exc
                    attempt += 1
                    continue
                if not chunk:
                    return
                offset += len(chunk)
                yield chunk
        finally:
            if body is not None:
                body.close()

    async def exists(self, key: str) -> bool:
        try:
            await self._call("head_object", key, Key=self._key(key))
        except KitaruNotFoundError:
            return False
        return True

    async def list(self, prefix: str = "") -> AsyncIterator[str]:
        base = f"{self.prefix}/" if self.prefix else ""
        token: str | None = None
        while True:
            params: dict[str, Any] = {"Prefix": base + prefix}
            if token:
                params["ContinuationToken"] = token
            page = await self._call("list_objects_v2", None, **params)
            for item in page.get("Contents", ()):
                yield item["Key"][len(base) :]
            token = page.get("NextContinuationToken")
            if not page.get("IsTruncated") or not token:
                return

    async def delete(self, key: str) -> None:
        await self._call("delete_object", key, Key=self._key(key))


async def _read_block(body: Any, size: int) -> bytes:
    """Up to ``size`` bytes of a response body (fewer only at its end)."""
    block = await body.read(size)
    if not block or len(block) == size:
        return bytes(block)
    buffer = bytearray(block)
    while len(buffer) < size:
        more = await body.read(size - len(buffer))
        if not more:
            break
        buffer += more
    return bytes(buffer)


async def _close_client(client: tuple[Any, Any]) -> None:
    try:
        await client[1].__aexit__(None, None, None)
    except Exception:
        pass  # the connections are dropped either way
