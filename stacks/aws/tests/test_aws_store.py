"""The S3 artifact store against a real S3 server (moto in server mode): the object-store conformance
suite, and what only S3 does."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from kitaru_stack_aws import AwsStack
from kitaru_stack_aws._store import S3ArtifactStore

from kitaru._ids import new_id
from kitaru.stack import artifact_store_for_uri
from kitaru.store import sync_view
from kitaru.store.objectstore_conformance import FAST_RETRIES, ObjectStoreConformance
from tests._services.s3 import MotoServer, s3_server

__all__ = ["s3_server"]

MiB = 1 << 20


@pytest.fixture(scope="module")
def bucket(s3_server: MotoServer) -> str:
    return s3_server.create_bucket()


@pytest.fixture(scope="module")
def store_options(s3_server: MotoServer) -> dict[str, Any]:
    return s3_server.options()


@pytest.fixture(scope="module")
def service_address(s3_server: MotoServer) -> str:
    return s3_server.endpoint_url


@pytest.fixture(scope="module")
def artifact_store(store_options: dict[str, Any], bucket: str) -> Iterator[S3ArtifactStore]:
    # Found by URI scheme through the entry point, as a stack would find it.
    store = artifact_store_for_uri(f"s3://{bucket}/kitaru", part_size=5 * MiB, **store_options)
    assert isinstance(store, S3ArtifactStore)
    yield store
    sync_view(store).close()


class TestS3ArtifactStore(ObjectStoreConformance):
    stack_type = AwsStack
    store_type = S3ArtifactStore
    extra = "aws"
    sdk_modules = ("aiobotocore",)
    typo_key = "regoin"
    report_as = "S3"
    # S3 refuses multipart parts under 5 MiB: a stream holds a part being filled and one in flight.
    streaming_buffer = 5 * MiB
    large_part_size = 5 * MiB  # 12 MiB: three multipart parts
    missing_bucket_operations = ("put",)

    def unreachable_store(self, port: int) -> tuple[S3ArtifactStore, str]:
        endpoint = f"http://127.0.0.1:{port}"
        store = S3ArtifactStore(
            "s3://bucket/p", endpoint_url=endpoint, aws_access_key_id="a", aws_secret_access_key="b",
            **FAST_RETRIES,
        )  # fmt: skip
        return store, endpoint

    def make_flaky(self, store: Any, monkeypatch: pytest.MonkeyPatch, failures: list[int]) -> None:
        from botocore.exceptions import ClientError

        real = store._clients.get

        class Throttled:  # the next S3 requests are throttled
            def __init__(self, client: Any) -> None:
                self.client = client

            def __getattr__(self, name: str) -> Any:
                method = getattr(self.client, name)

                async def call(**params: Any) -> Any:
                    if failures[0] > 0:
                        failures[0] -= 1
                        raise ClientError({"Error": {"Code": "SlowDown", "Message": "slow down"}}, name)
                    return await method(**params)

                return call

        async def flaky() -> Any:
            client, ctx = await real()
            return Throttled(client), ctx

        monkeypatch.setattr(store._clients, "get", flaky)


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_a_download_cut_mid_way_resumes_from_where_it_was(
    artifact_store: S3ArtifactStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    import aiohttp
    from kitaru_stack_aws import _store

    key = f"resume/{new_id()}"
    data = bytes(range(256)) * 4096  # 1 MiB
    await artifact_store.put(key, data)
    real, calls = _store._read_block, [0]

    async def cut_once(body: Any, size: int) -> bytes:
        calls[0] += 1
        if calls[0] == 3:
            raise aiohttp.ClientPayloadError("connection reset mid-body")
        return await real(body, size)

    monkeypatch.setattr(_store, "_read_block", cut_once)
    chunks = [chunk async for chunk in artifact_store.open(key, chunk_size=64 * 1024)]
    assert b"".join(chunks) == data and calls[0] > 3
