"""A handle waiting on an execution while the state store goes away says which execution, where
it was last seen and what picks it up later, instead of a bare driver error; once the store is
back, the same handle gets the result."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

import kitaru
from kitaru import KitaruClient, checkpoint, flow
from kitaru._engine.runtime import Runtime, use_runtime
from kitaru.store.filesystem import FilesystemArtifactStore
from kitaru.store.postgres import PostgresStateStore
from tests._services.postgres import PostgresCluster

pytestmark = pytest.mark.e2e


@checkpoint
def prepare(topic: str) -> str:
    return f"draft on {topic}"


@flow
def approval(topic: str) -> str:
    text = prepare(topic)
    kitaru.wait(name="approve", schema=bool)
    return text


@pytest.fixture
def pg_runtime(postgres_cluster: PostgresCluster, postgres_dsn: str, kitaru_home: Path) -> Iterator[Runtime]:
    # Few, quick retries: the outage must surface in seconds, not after the default back-off.
    state = PostgresStateStore(postgres_dsn, retries=1, backoff=0.01, connect_timeout=2, command_timeout=5)
    runtime = Runtime(state, FilesystemArtifactStore(kitaru_home / "artifacts"), heartbeat_interval=0.05)
    with use_runtime(runtime):
        yield runtime
    runtime.close()


def test_wait_during_a_store_outage_names_the_execution_and_the_way_back(
    postgres_cluster: PostgresCluster, pg_runtime: Runtime
) -> None:
    handle = approval.run("outages")
    assert handle.status == "waiting"
    postgres_cluster.stop("immediate")
    try:
        with pytest.raises(kitaru.KitaruStoreError) as err:
            handle.wait(timeout=60)
    finally:
        postgres_cluster.start()
    message = str(err.value)
    assert handle.exec_id in message
    assert "last seen waiting" in message
    assert f"kitaru executions resume {handle.exec_id}" in message
    assert f"kitaru executions retry {handle.exec_id}" in message
    assert isinstance(err.value.__cause__, kitaru.KitaruStoreError)  # the driver's error, chained

    # The store is back: nothing was lost, and the same handle gets the result.
    KitaruClient().executions.input(handle.exec_id, True, resume=True)
    assert handle.wait(timeout=60) == "draft on outages"
