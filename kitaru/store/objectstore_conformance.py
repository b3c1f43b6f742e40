"""The conformance suite every object-store artifact store runs (S3, GCS, Azure Blob...), on top of
:class:`~kitaru.store.conformance.ArtifactStoreConformance`: what they share beyond the contract.

Subclass :class:`ObjectStoreConformance` in the store's test module, set the class attributes that
name the stack type, the store class and the SDK, and give the fixtures that reach the emulator::

    class TestS3ArtifactStore(ObjectStoreConformance):
        stack_type = AwsStack
        store_type = S3ArtifactStore
        extra = "aws"
        sdk_modules = ("aiobotocore",)
        ...

Fixtures: ``artifact_store`` (a store rooted at ``SCHEME://BUCKET/kitaru``), ``bucket`` (a bucket or
container that exists), ``store_options`` (the store keys that reach the emulator: endpoint,
credentials) and ``service_address`` (the address a store error names: its endpoint or account URL).
Behaviours only one store has (an SDK's resumable downloads, one cloud's credentials) stay in its
own module.
"""

from __future__ import annotations

import gc
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, ClassVar

import pytest

from kitaru._ids import new_id
from kitaru._install import install_hint_pattern
from kitaru.errors import (
    KitaruConfigError,
    KitaruConflictError,
    KitaruMissingDependencyError,
    KitaruNotFoundError,
    KitaruStoreError,
)
from kitaru.stack import ObjectStoreStack, artifact_store_for_uri, load_stack
from kitaru.store import sync_view
from kitaru.store.conformance import ArtifactStoreConformance, _chunks, _keys, _to_thread

__all__ = ["ObjectStoreConformance"]

MiB = 1 << 20
#: Retries small enough that a test of an unreachable server ends in seconds.
FAST_RETRIES = {"retries": 2, "retry_base_delay": 0.01, "retry_max_delay": 0.05}
#: Where ``kitaru`` is imported from, for the child process of the 200 MiB round trip.
_SOURCE_ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _without(monkeypatch: pytest.MonkeyPatch, *prefixes: str) -> None:
    """Make imports of modules under ``prefixes`` fail, as if their distribution were absent."""
    import builtins

    real_import = builtins.__import__

    def fake_import(name: str, *args: Any, **kwargs: Any) -> Any:
        if name.startswith(prefixes):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)


# The 200 MiB round trip runs in a child process that reports its peak resident set (``VmHWM``,
# else ``getrusage``), so the figure covers everything the SDK holds, not only Python objects.
_CHILD = r"""
import hashlib, json, resource, sys, time
from kitaru.stack import artifact_store_for_uri
from kitaru.store import sync_view

uri, options, total_mib = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3])
def rss():
    # VmHWM: this process image's peak RSS. getrusage's ru_maxrss would do elsewhere, but Linux
    # carries the forking parent's peak into it across exec (here: the whole pytest process).
    try:
        with open("/proc/self/status") as fh:
            return next(int(l.split()[1]) for l in fh if l.startswith("VmHWM:")) * 1024
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
store = sync_view(artifact_store_for_uri(uri, **options))
store.put("warm-up", b"x")  # the SDK imported and its connections open: the baseline
assert store.get("warm-up") == b"x"
baseline = rss()
written = hashlib.sha256()
def chunks():
    for i in range(total_mib):
        chunk = i.to_bytes(4, "big") * (1 << 18)
        written.update(chunk)
        yield chunk
t0 = time.perf_counter()
store.put_stream("blob", chunks())
t1 = time.perf_counter()
after_write = rss()
read, size = hashlib.sha256(), 0
for chunk in store.open("blob", chunk_size=1 << 20):
    assert len(chunk) <= 1 << 20
    read.update(chunk)
    size += len(chunk)
t2 = time.perf_counter()
print(json.dumps({
    "baseline": baseline, "after_write": after_write, "peak": rss(), "size": size,
    "same": read.hexdigest() == written.hexdigest(), "write_s": t1 - t0, "read_s": t2 - t1,
}))
"""


def _round_trip_in_bounded_memory(
    uri: str, options: dict[str, Any], *, part_size: int, report_as: str, total_mib: int = 200
) -> dict[str, Any]:
    """Round-trip ``total_mib`` MiB through the store at ``uri``; assert the child's peak RSS stays
    under 2 * ``part_size`` + 100 MiB, and print the figures (shown with ``pytest -s`` / ``-rA``)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(_SOURCE_ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, uri, json.dumps({**options, "part_size": part_size}), str(total_mib)],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    figures: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    assert figures["size"] == total_mib * MiB and figures["same"]
    limit = 2 * part_size + 100 * MiB
    print(
        f"\n{report_as}: {total_mib} MiB round trip, part {part_size // MiB} MiB: peak RSS "
        f"{figures['peak'] / MiB:.0f} MiB (baseline {figures['baseline'] / MiB:.0f} MiB, limit "
        f"{limit / MiB:.0f} MiB); write {figures['write_s']:.1f} s, read {figures['read_s']:.1f} s"
    )
    assert figures["peak"] < limit, figures
    return figures


class ObjectStoreConformance(ArtifactStoreConformance):
    """What every object store does the same way; see the module docstring for the fixtures."""

    #: The stack type that pairs with this store (its ``scheme`` is the store's URI scheme).
    stack_type: ClassVar[type[ObjectStoreStack]]
    #: The store's class, built as ``store_type(uri, **options)``.
    store_type: ClassVar[type[Any]]
    #: The extra that installs the store's SDK, named by the missing-SDK error.
    extra: ClassVar[str]
    #: Module prefixes of the SDK (their absence is simulated).
    sdk_modules: ClassVar[tuple[str, ...]]
    #: Options a store needs to be built at all when its SDK is missing.
    offline_options: ClassVar[dict[str, Any]] = {}
    #: A misspelt key of the stack, refused when the config file is read.
    typo_key: ClassVar[str]
    #: The attribute holding the address a reopened store must share with its origin.
    address_attribute: ClassVar[str] = "endpoint_url"
    #: Part size and count (MiB) of a stream large enough to be uploaded in several parts.
    large_part_size: ClassVar[int] = MiB
    large_stream_mib: ClassVar[int] = 12
    #: The store's name in the 200 MiB round trip's report.
    report_as: ClassVar[str]

    # -- hooks for what differs by SDK ------------------------------------------------------------

    def unreachable_store(self, port: int) -> tuple[Any, str]:
        """A store whose server (on ``port``, where nothing listens) is down, with fast retries,
        and the address its errors must name."""
        raise NotImplementedError

    def make_flaky(self, store: Any, monkeypatch: pytest.MonkeyPatch, failures: list[int]) -> None:
        """Make the store's next ``failures[0]`` requests fail with the SDK's transient error,
        counting ``failures[0]`` down."""
        raise NotImplementedError

    def missing_bucket_names(self, service_address: str) -> str:
        """What the error for a missing bucket names besides the bucket (default: the address)."""
        return service_address

    #: The operations tried against a missing bucket.
    missing_bucket_operations: ClassVar[tuple[str, ...]] = ("put", "get", "list")

    # -- helpers ------------------------------------------------------------------------------------

    def _uri(self, bucket: str, prefix: str = "") -> str:
        return f"{self.stack_type.scheme}://{bucket}" + (f"/{prefix}" if prefix else "")

    def _store(self, uri: str, **options: Any) -> Any:
        return self.store_type(uri, **options)

    # -- the shared behaviours ----------------------------------------------------------------------

    async def test_the_store_is_found_by_its_scheme(self, store_options: dict[str, Any], bucket: str) -> None:
        store: Any = artifact_store_for_uri(self._uri(bucket, "kitaru"), **store_options)
        try:
            assert isinstance(store, self.store_type)
        finally:
            await store.aclose()

    async def test_keys_live_under_the_prefix(
        self, artifact_store: Any, store_options: dict[str, Any], bucket: str
    ) -> None:
        key = f"blobs/ab/{new_id()}"
        await artifact_store.put(key, b"x")
        assert artifact_store.uri_for(key) == f"{self._uri(bucket, 'kitaru')}/{key}"
        bare = self._store(self._uri(bucket), **store_options)
        try:
            assert await bare.get(f"kitaru/{key}") == b"x"
            assert f"kitaru/{key}" in {k async for k in bare.list("kitaru/blobs/")}
        finally:
            await bare.aclose()

    async def test_a_large_stream_conflicts_with_different_bytes(
        self, store_options: dict[str, Any], bucket: str
    ) -> None:
        store = self._store(self._uri(bucket, "big"), part_size=self.large_part_size, **store_options)
        key = f"big/{new_id()}"
        one = [bytes([1]) * MiB] * self.large_stream_mib  # several parts / blocks / a resumable upload
        try:
            await store.put_stream(key, _chunks(*one))
            await store.put_stream(key, _chunks(*one))  # the same bytes again: fine
            with pytest.raises(KitaruConflictError, match="different bytes"):
                await store.put_stream(key, _chunks(*[bytes([2]) * MiB] * self.large_stream_mib))
            with pytest.raises(KitaruConflictError):
                await store.put(key, b"small and different")
            assert await store.get(key) == b"".join(one)
        finally:
            await store.aclose()

    async def test_a_failed_large_stream_leaves_nothing(
        self, store_options: dict[str, Any], bucket: str
    ) -> None:
        store = self._store(self._uri(bucket, "failed"), part_size=self.large_part_size, **store_options)
        key = f"big-failed/{new_id()}"

        async def produce() -> AsyncIterator[bytes]:
            for i in range(self.large_stream_mib):  # several parts are already uploaded when it fails
                yield bytes([i]) * MiB
            raise RuntimeError("producer died")

        try:
            with pytest.raises(RuntimeError, match="producer died"):
                await store.put_stream(key, produce())
            gc.collect()  # a dropped SDK writer must not finalize the upload on its way out
            assert not await store.exists(key)
            assert [k async for k in store.list(key)] == []
            await store.put(key, b"whole")
            assert await store.get(key) == b"whole"
        finally:
            await store.aclose()

    async def test_missing_bucket_is_a_store_error_naming_it(
        self, store_options: dict[str, Any], service_address: str
    ) -> None:
        store = self._store(self._uri(f"no-such-bucket-{new_id().lower()}", "p"), **store_options)
        operations: dict[str, Callable[[], Awaitable[object]]] = {
            "put": lambda: store.put("k", b"v"),
            "get": lambda: store.get("k"),
            "list": lambda: _keys(store),
        }
        try:
            for name in self.missing_bucket_operations:
                with pytest.raises(KitaruStoreError, match="does not exist") as info:
                    await operations[name]()
                assert not isinstance(info.value, KitaruNotFoundError)
                assert "no-such-bucket" in str(info.value)
                assert self.missing_bucket_names(service_address) in str(info.value)
        finally:
            await store.aclose()

    async def test_server_down_is_a_store_error_after_bounded_retries(self) -> None:
        store, address = self.unreachable_store(_free_port())
        try:
            started = time.monotonic()
            attempts: list[Callable[[], Awaitable[object]]] = [
                lambda: store.put("k", b"v"),
                lambda: store.get("k"),
                lambda: _keys(store),
            ]
            for attempt in attempts:
                with pytest.raises(KitaruStoreError, match="unreachable") as info:
                    await attempt()
                assert address in str(info.value) and "3 attempts" in str(info.value)
            assert time.monotonic() - started < 30
        finally:
            await store.aclose()

    async def test_transient_errors_are_retried(
        self, artifact_store: Any, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        failures = [2]
        self.make_flaky(artifact_store, monkeypatch, failures)
        key = f"flaky/{new_id()}"
        await artifact_store.put(key, b"after two transient errors")
        assert failures == [0]
        assert await artifact_store.get(key) == b"after two transient errors"

    async def test_a_missing_sdk_names_the_extra(self, monkeypatch: pytest.MonkeyPatch) -> None:
        _without(monkeypatch, *self.sdk_modules)
        store = self._store(self._uri("bucket", "p"), **self.offline_options)
        with pytest.raises(KitaruMissingDependencyError, match=install_hint_pattern(self.extra)):
            await store.put("k", b"v")

    async def test_the_stack_from_a_config_file(
        self,
        store_options: dict[str, Any],
        service_address: str,
        bucket: str,
        tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        config = tmp_path / "config.toml"
        keys = "\n".join(f"{k} = {json.dumps(v)}" for k, v in store_options.items())
        config.write_text(
            f'[stacks.cloud]\ntype = "{self.stack_type.type}"\nartifacts = "{self._uri(bucket, "stack")}"\n'
            f"{keys}\nretries = 1\n"
        )
        monkeypatch.setenv("KITARU_CONFIG", str(config))
        stack = load_stack("cloud")
        assert isinstance(stack, self.stack_type)
        store: Any = stack.artifact_store()
        assert isinstance(store, self.store_type) and store.uri == self._uri(bucket, "stack")
        assert store.retry.attempts == 2
        await store.put("hello", b"world")
        assert await store.get("hello") == b"world"
        other = store.reopen(self._uri(bucket, "other"))
        assert getattr(other, self.address_attribute) == service_address
        await store.aclose()

        config.write_text(config.read_text() + f'{self.typo_key} = "x"\n')
        with pytest.raises(KitaruConfigError, match=self.typo_key):
            load_stack("cloud")

    async def test_the_stack_type_needs_its_scheme(self) -> None:
        other = "file:///tmp/x"
        with pytest.raises(KitaruConfigError, match=f"{self.stack_type.scheme}://"):
            self.stack_type(name="cloud", artifacts=other)
        with pytest.raises(KitaruConfigError, match=f"{self.stack_type.scheme}://"):
            self.stack_type(name="cloud")

    async def test_the_runtime_reads_another_prefix_with_its_own_store_options(
        self, store_options: dict[str, Any], bucket: str
    ) -> None:
        from kitaru._engine.runtime import Runtime
        from kitaru.store.memory import MemoryStateStore

        # Written under one prefix (another stack, say), read by a runtime whose store has another:
        # the endpoint and credentials are not in the URI, so the runtime reuses its own store's.
        writer = self._store(self._uri(bucket, "stack-a"), **store_options)
        reader = self._store(self._uri(bucket, "stack-b"), **store_options)
        runtime = Runtime(MemoryStateStore(), writer)
        record = runtime.make_artifact(
            "exec", name="big", version=1, type="output", value=b"z" * 100_000, call_id="c"
        )
        assert record.inline is None and record.uri is not None and "/stack-a/blobs/" in record.uri
        runtime.artifacts = sync_view(reader)
        assert runtime.load_artifact(record) == b"z" * 100_000
        await _to_thread(runtime.close)
        await writer.aclose()
        await reader.aclose()

    async def test_200_mb_round_trip_in_bounded_memory(
        self, store_options: dict[str, Any], bucket: str
    ) -> None:
        _round_trip_in_bounded_memory(
            self._uri(bucket, "big"), store_options, part_size=8 * MiB, report_as=self.report_as
        )
