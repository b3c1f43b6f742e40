"""The S3 artifact store against a real S3 server (moto in server mode)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kitaru_stack_aws import AwsStack
from kitaru_stack_aws._store import S3ArtifactStore

from kitaru._ids import new_id
from kitaru.errors import KitaruConfigError, KitaruConflictError, KitaruNotFoundError, KitaruStoreError
from kitaru.stack import artifact_store_for_uri, load_stack
from kitaru.store import ArtifactStore
from kitaru.store.conformance import ArtifactStoreConformance
from tests._services.bigblob import assert_round_trip_in_bounded_memory
from tests._services.s3 import MotoServer, free_port, s3_server

__all__ = ["s3_server"]

MiB = 1 << 20
FAST_RETRIES = {"retries": 2, "retry_base_delay": 0.01, "retry_max_delay": 0.05}


@pytest.fixture(scope="module")
def bucket(s3_server: MotoServer) -> str:
    return s3_server.create_bucket()


@pytest.fixture(scope="module")
def artifact_store(s3_server: MotoServer, bucket: str) -> Iterator[S3ArtifactStore]:
    # Found by URI scheme through the entry point, as a stack would find it.
    store = artifact_store_for_uri(f"s3://{bucket}/kitaru", part_size=5 * MiB, **s3_server.options())
    assert isinstance(store, S3ArtifactStore)
    yield store
    store.close()


class TestS3ArtifactStore(ArtifactStoreConformance):
    # S3 refuses multipart parts under 5 MiB: a stream holds a part being filled and one in flight.
    streaming_buffer = 5 * MiB


def test_keys_live_under_the_prefix(
    artifact_store: S3ArtifactStore, s3_server: MotoServer, bucket: str
) -> None:
    key = f"blobs/ab/{new_id()}"
    artifact_store.put(key, b"x")
    assert artifact_store.uri_for(key) == f"s3://{bucket}/kitaru/{key}"
    bare = S3ArtifactStore(f"s3://{bucket}", **s3_server.options())
    try:
        assert bare.get(f"kitaru/{key}") == b"x"
        assert f"kitaru/{key}" in set(bare.list("kitaru/blobs/"))
    finally:
        bare.close()


def test_a_large_stream_conflicts_with_different_bytes(artifact_store: S3ArtifactStore) -> None:
    key = f"big/{new_id()}"
    one = [bytes([1]) * MiB] * 12  # three multipart parts
    artifact_store.put_stream(key, iter(one))
    artifact_store.put_stream(key, iter(one))  # the same bytes again: fine
    with pytest.raises(KitaruConflictError, match="different bytes"):
        artifact_store.put_stream(key, iter([bytes([2]) * MiB] * 12))
    with pytest.raises(KitaruConflictError):
        artifact_store.put(key, b"small and different")
    assert artifact_store.get(key) == b"".join(one)


def test_missing_bucket_is_a_store_error_naming_it(s3_server: MotoServer) -> None:
    store = S3ArtifactStore(f"s3://no-such-bucket-{new_id().lower()}/p", **s3_server.options())
    try:
        with pytest.raises(KitaruStoreError, match="does not exist") as info:
            store.put("k", b"v")
        assert not isinstance(info.value, KitaruNotFoundError)
        assert "no-such-bucket" in str(info.value) and s3_server.endpoint_url in str(info.value)
    finally:
        store.close()


def test_server_down_is_a_store_error_after_bounded_retries() -> None:
    endpoint = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    store = S3ArtifactStore(
        "s3://bucket/p",
        endpoint_url=endpoint,
        aws_access_key_id="a",
        aws_secret_access_key="b",
        **FAST_RETRIES,
    )
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
    artifact_store: S3ArtifactStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    from botocore.exceptions import ClientError

    real = artifact_store._run
    failures = [2]

    def flaky(coro: Any) -> Any:  # the next two S3 requests are throttled
        if failures[0] > 0:
            failures[0] -= 1
            coro.close()
            raise ClientError({"Error": {"Code": "SlowDown", "Message": "slow down"}}, "PutObject")
        return real(coro)

    monkeypatch.setattr(artifact_store, "_run", flaky)
    key = f"flaky/{new_id()}"
    artifact_store.put(key, b"after two throttles")
    assert failures == [0]
    assert artifact_store.get(key) == b"after two throttles"


def test_the_aws_stack_from_a_config_file(
    s3_server: MotoServer, bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "config.toml"
    keys = "\n".join(f'{k} = "{v}"' for k, v in s3_server.options().items())
    config.write_text(
        f'[stacks.cloud]\ntype = "aws"\nartifacts = "s3://{bucket}/stack"\n{keys}\nretries = 1\n'
    )
    monkeypatch.setenv("KITARU_CONFIG", str(config))
    stack = load_stack("cloud")
    assert isinstance(stack, AwsStack)
    store: ArtifactStore = stack.artifact_store()
    assert isinstance(store, S3ArtifactStore) and store.uri == f"s3://{bucket}/stack"
    assert store.retry.attempts == 2
    store.put("hello", b"world")
    assert store.get("hello") == b"world"
    other = store.reopen(f"s3://{bucket}/other")
    assert other.endpoint_url == s3_server.endpoint_url
    store.close()

    config.write_text(config.read_text() + 'regoin = "eu-west-1"\n')
    with pytest.raises(KitaruConfigError, match="regoin"):
        load_stack("cloud")


def test_the_aws_stack_needs_an_s3_uri() -> None:
    with pytest.raises(KitaruConfigError, match="s3://"):
        AwsStack(name="cloud", artifacts="file:///tmp/x")


def test_200_mb_round_trip_in_bounded_memory(s3_server: MotoServer, bucket: str) -> None:
    assert_round_trip_in_bounded_memory(
        f"s3://{bucket}/big", s3_server.options(), part_size=8 * MiB, report_as="S3"
    )


def test_the_runtime_reads_another_prefix_with_its_own_store_options(
    s3_server: MotoServer, bucket: str, tmp_path: Path
) -> None:
    from kitaru._engine.runtime import Runtime
    from kitaru.store.memory import MemoryStateStore

    # Written under one prefix (another stack, say), read by a runtime whose store has another:
    # the endpoint and credentials are not in the URI, so the runtime reuses its own store's.
    writer = S3ArtifactStore(f"s3://{bucket}/stack-a", **s3_server.options())
    reader = S3ArtifactStore(f"s3://{bucket}/stack-b", **s3_server.options())
    runtime = Runtime(MemoryStateStore(), writer)
    record = runtime.make_artifact(
        "exec", name="big", version=1, type="output", value=b"z" * 100_000, call_id="c"
    )
    assert record.inline is None and record.uri is not None and "/stack-a/blobs/" in record.uri
    runtime.artifacts = reader
    assert runtime.load_artifact(record) == b"z" * 100_000
    runtime.close()
    writer.close()
    reader.close()


def test_a_missing_sdk_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    from kitaru.errors import KitaruMissingDependencyError

    _without(monkeypatch, "aiobotocore")
    store = S3ArtifactStore("s3://bucket/p")
    with pytest.raises(KitaruMissingDependencyError, match=r"pip install '\S+\[aws\]'"):
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


def test_a_download_cut_mid_way_resumes_from_where_it_was(
    artifact_store: S3ArtifactStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    import aiohttp
    from kitaru_stack_aws import _store

    key = f"resume/{new_id()}"
    data = bytes(range(256)) * 4096  # 1 MiB
    artifact_store.put(key, data)
    real, calls = _store._read_block, [0]

    async def cut_once(body: Any, size: int) -> bytes:
        calls[0] += 1
        if calls[0] == 3:
            raise aiohttp.ClientPayloadError("connection reset mid-body")
        return await real(body, size)

    monkeypatch.setattr(_store, "_read_block", cut_once)
    chunks = list(artifact_store.open(key, chunk_size=64 * 1024))
    assert b"".join(chunks) == data and calls[0] > 3


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
