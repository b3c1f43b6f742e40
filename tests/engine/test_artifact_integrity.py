"""Bytes are verified against the state store's record on every read, on each store: a changed blob
(or inline value) is a KitaruStoreError naming the artifact, never a wrong value, and a replaced
pickle never runs."""

from __future__ import annotations

import dataclasses
import hashlib
import pathlib
import pickle
from pathlib import Path
from typing import Any

import pytest

from kitaru import KitaruClient, checkpoint, flow, wait
from kitaru._engine.runtime import Runtime
from kitaru.errors import KitaruStoreError
from kitaru.store import ArtifactRecord
from tests._services.s3 import s3_server

__all__ = ["s3_server"]  # the S3 fixture, for the object-store test

BIG = 100_000  # past the inline limit: the value is a blob in the artifact store


class Payload:
    """Not JSON, pydantic or a dataclass: stored with cloudpickle."""

    def __init__(self, text: str) -> None:
        self.text = text


class Touch:
    """What an attacker with write access to the artifact store plants: unpickling it creates a file."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (pathlib.Path.touch, (pathlib.Path(self.path),))


@checkpoint
def make_text(n: int) -> str:
    return "x" * n


@checkpoint
def make_payload(n: int) -> Payload:
    return Payload("p" * n)


@flow
def text_flow(n: int) -> int:
    text = make_text(n)
    wait(name="go", schema=bool)
    return len(text)


@flow
def payload_flow(n: int) -> int:
    payload = make_payload(n)
    wait(name="go", schema=bool)
    return len(payload.text)


def blob_of(runtime: Runtime, exec_id: str, name: str) -> tuple[ArtifactRecord, str]:
    [record] = runtime.state.list_artifacts(exec_id, name=name, type="output")
    assert record.inline is None and record.uri is not None
    return record, "blobs/" + record.uri.rpartition("/blobs/")[2]


def replace_blob(runtime: Runtime, key: str, data: bytes) -> None:
    """Write ``data`` under ``key`` behind kitaru's back (the stores refuse to overwrite)."""
    runtime.artifacts.delete(key)
    runtime.artifacts.put(key, data)


class TestBlobsAreVerified:
    def test_truncated_blob_fails_the_execution_then_retry_after_restoring_it(self, runtime: Runtime) -> None:
        handle = text_flow.run(BIG)
        assert handle.status == "waiting"
        record, key = blob_of(runtime, handle.exec_id, "make_text")
        original = runtime.artifacts.get(key)
        # Still valid JSON, ten characters short: unverified, the flow would complete with it.
        replace_blob(runtime, key, original[:-11] + b'"')

        client = KitaruClient()
        with pytest.raises(KitaruStoreError) as info:
            client.executions.input(handle.exec_id, True)
        message = str(info.value)
        assert record.id in message and "make_text" in message and handle.exec_id in message
        assert f"expected {record.size} bytes" in message and f"found {record.size - 10} bytes" in message
        assert record.content_hash in message and "restore" in message.lower()
        execution = client.executions.get(handle.exec_id)
        assert execution.status == "failed" and record.id in (execution.error or "")

        replace_blob(runtime, key, original)
        assert client.executions.retry(handle.exec_id).wait() == BIG

    def test_a_flipped_byte_of_the_same_size_is_caught(self, runtime: Runtime) -> None:
        handle = text_flow.run(BIG)
        record, key = blob_of(runtime, handle.exec_id, "make_text")
        original = runtime.artifacts.get(key)
        flipped = original[:500] + bytes([original[500] ^ 1]) + original[501:]
        replace_blob(runtime, key, flipped)
        with pytest.raises(KitaruStoreError) as info:
            runtime.load_artifact(record)
        found = "sha256:" + hashlib.sha256(flipped).hexdigest()
        assert record.content_hash in str(info.value) and found in str(info.value)
        with pytest.raises(KitaruStoreError):
            runtime.artifact_bytes(record)

    def test_changed_inline_bytes_are_caught(self, runtime: Runtime) -> None:
        handle = text_flow.run(10)
        [record] = runtime.state.list_artifacts(handle.exec_id, name="make_text", type="output")
        assert record.inline == b'"xxxxxxxxxx"'
        changed = dataclasses.replace(record, inline=b'"yyyyyyyyyy"')
        with pytest.raises(KitaruStoreError, match=record.id):
            runtime.load_artifact(changed)
        assert runtime.load_artifact(record) == "x" * 10

    def test_streamed_read_verifies_and_writes_nothing_on_mismatch(
        self, runtime: Runtime, tmp_path: Path
    ) -> None:
        handle = text_flow.run(BIG)
        record, key = blob_of(runtime, handle.exec_id, "make_text")
        original = runtime.artifacts.get(key)
        artifact = KitaruClient().artifacts.get(record.id)
        out = tmp_path / "out"
        out.mkdir()
        good = out / "good.json"
        assert artifact.write_to(good) == record.size
        assert good.read_bytes() == original

        replace_blob(runtime, key, original + b" ")
        bad = out / "bad.json"
        with pytest.raises(KitaruStoreError, match=record.id):
            artifact.write_to(bad)
        assert not bad.exists()
        assert sorted(p.name for p in out.iterdir()) == ["good.json"]  # no temporary left


class TestReplacedPickleNeverRuns:
    def test_on_load_and_on_resume(self, runtime: Runtime, tmp_path: Path) -> None:
        handle = payload_flow.run(BIG)
        assert handle.status == "waiting"
        record, key = blob_of(runtime, handle.exec_id, "make_payload")
        assert record.serializer == "cloudpickle"
        marker = tmp_path / "pwned"
        replace_blob(runtime, key, pickle.dumps(Touch(marker)))

        with pytest.raises(KitaruStoreError, match=record.id):
            KitaruClient().artifacts.get(record.id).load()
        assert not marker.exists()

        with pytest.raises(KitaruStoreError, match=record.id):
            KitaruClient().executions.input(handle.exec_id, True)
        assert not marker.exists()
        assert KitaruClient().executions.get(handle.exec_id).status == "failed"


class TestOnAnObjectStore:
    """The check is the runtime's, so it holds on every artifact store; S3 (moto) stands for the
    object stores, whose reads are streamed in parts."""

    def test_a_changed_s3_blob_fails_the_execution_then_retry_after_restoring_it(
        self, request: pytest.FixtureRequest, kitaru_home: Path
    ) -> None:
        pytest.importorskip("kitaru_stack_aws")
        from kitaru._engine.runtime import use_runtime
        from kitaru.stack import artifact_store_for_uri
        from kitaru.store.sqlite import SQLiteStateStore

        server = request.getfixturevalue("s3_server")
        store = artifact_store_for_uri(f"s3://{server.create_bucket()}/kitaru", **server.options())
        runtime = Runtime(SQLiteStateStore(kitaru_home / "kitaru.db"), store, heartbeat_interval=0.05)
        with use_runtime(runtime):
            handle = text_flow.run(BIG)
            record, key = blob_of(runtime, handle.exec_id, "make_text")
            original = runtime.artifacts.get(key)
            replace_blob(runtime, key, original.replace(b"x", b"y", 1))
            with pytest.raises(KitaruStoreError, match=record.id):
                KitaruClient().executions.input(handle.exec_id, True)
            replace_blob(runtime, key, original)
            assert KitaruClient().executions.retry(handle.exec_id).wait() == BIG
        runtime.close()


@flow
def text_only(n: int) -> int:
    return len(make_text(n))


@checkpoint
async def make_text_async(n: int) -> str:
    return "x" * n


@flow
async def text_only_async(n: int) -> int:
    return len(await make_text_async(n))


class TestADamagedBlobIsRepairedByTheNextWrite:
    """Blob keys are the hash of their bytes, so a later write of the same value knows the right
    bytes: it replaces a damaged blob instead of failing on it (which the runner used to read as
    a lost lease, leaving the execution running with nobody driving it)."""

    @pytest.mark.parametrize(
        ("body", "name"),
        [(text_only, "make_text"), (text_only_async, "make_text_async")],
        ids=["sync", "async"],
    )
    def test_the_same_value_written_again_completes_and_repairs_the_earlier_execution(
        self, runtime: Runtime, body: Any, name: str
    ) -> None:
        first = body.run(BIG)
        assert first.wait() == BIG
        record, key = blob_of(runtime, first.exec_id, name)
        original = runtime.artifacts.get(key)
        replace_blob(runtime, key, original[:-11] + b'"')
        with pytest.raises(KitaruStoreError, match=record.id):
            runtime.load_artifact(record)

        second = body.run(BIG)
        assert second.wait(timeout=30) == BIG
        assert KitaruClient().executions.get(second.exec_id).status == "completed"
        assert runtime.artifacts.get(key) == original
        assert runtime.load_artifact(record) == "x" * BIG  # the first execution's output reads again
