"""The HTTP state store (``state = "https://host:port"``, a ``runner`` key) passes the state-store
conformance suite against a live server process, which is the proof that a worker can do with a
key everything it did with database credentials; so do the catalog (cache, tags) and secret suites
(an ``admin`` key: changing secrets needs it)."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from kitaru.errors import KitaruUsageError
from kitaru.remote.store import HttpStateStore
from kitaru.store import sync_view
from kitaru.store.catalog_conformance import CatalogStoreConformance
from kitaru.store.conformance import SecretStoreConformance, StateStoreConformance
from tests.conftest import ROOT
from tests.server.conftest import ServerProcess, create_key

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, str]]:
    root = tmp_path_factory.mktemp("http-store")
    env = {
        **os.environ,
        "KITARU_HOME": str(root / "home"),
        "XDG_CONFIG_HOME": str(root / "config"),
        "PYTHONPATH": str(ROOT),
    }
    cli = [str(Path(sys.executable).with_name("kitaru"))]
    state = f"sqlite:///{root / 'home' / 'kitaru.db'}"
    server = ServerProcess(cli, env, state, root / "server.log", tick=3600)  # no background passes
    try:
        yield server, create_key(cli, env, state, "worker", "runner")
    finally:
        server.stop()


@pytest.fixture
async def state_store(live: tuple[ServerProcess, str]) -> AsyncIterator[HttpStateStore]:
    server, key = live
    store = HttpStateStore(server.url, key)
    yield store
    await store.aclose()


class TestHttpStateStore(StateStoreConformance):
    def other_process_opener(self, state_store: HttpStateStore) -> Callable[[], HttpStateStore]:
        return functools.partial(HttpStateStore, state_store.url, state_store._key)


class TestHttpCatalogStore(CatalogStoreConformance):
    pass


@pytest.fixture(scope="module")
def admin_key(live: tuple[ServerProcess, str]) -> str:
    server, _ = live
    env = {**os.environ, "XDG_CONFIG_HOME": str(Path(server.state.removeprefix("sqlite:///")).parent.parent)}
    return create_key([str(Path(sys.executable).with_name("kitaru"))], env, server.state, "admin", "admin")


class TestHttpSecretStore(SecretStoreConformance):
    @pytest.fixture
    async def state_store(
        self, live: tuple[ServerProcess, str], admin_key: str
    ) -> AsyncIterator[HttpStateStore]:
        store = HttpStateStore(live[0].url, admin_key)
        yield store
        await store.aclose()


@pytest.mark.anyio
async def test_a_runner_key_reads_secret_ciphertext_but_cannot_change_secrets(
    live: tuple[ServerProcess, str], admin_key: str
) -> None:
    from kitaru.errors import KitaruError

    server, runner_key = live
    admin = HttpStateStore(server.url, admin_key)
    runner = HttpStateStore(server.url, runner_key)
    try:
        await admin.put_secret("runner_reads", b"\x01opaque")
        got = await runner.get_secret("runner_reads")
        assert got is not None and got.ciphertext == b"\x01opaque"
        with pytest.raises(KitaruError, match="needs the 'admin' scope"):
            await runner.put_secret("runner_reads", b"other")
        with pytest.raises(KitaruError, match="needs the 'admin' scope"):
            await runner.delete_secret("runner_reads")
        assert (await admin.get_secret("runner_reads")).ciphertext == b"\x01opaque"  # type: ignore[union-attr]
    finally:
        await admin.aclose()
        await runner.aclose()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def test_a_bad_key_or_a_key_without_the_runner_scope_is_refused(
    live: tuple[ServerProcess, str], kitaru_cli: list[str]
) -> None:
    from kitaru.errors import KitaruError

    server, _ = live
    env = {**os.environ, "XDG_CONFIG_HOME": str(Path(server.state.removeprefix("sqlite:///")).parent.parent)}
    reader = create_key(kitaru_cli, env, server.state, "reader", "read")
    for key, reason in (("kitaru_0000_wrong", "not valid"), (reader, "lacks the 'runner' scope")):
        store = sync_view(HttpStateStore(server.url, key))
        try:
            with pytest.raises(KitaruError, match=reason):
                store.list_executions()
        finally:
            store.close()


def test_an_unknown_operation_is_refused(live: tuple[ServerProcess, str]) -> None:
    import httpx

    server, key = live
    response = httpx.post(
        server.url + "/api/v1/store/aclose", json={}, headers={"Authorization": f"Bearer {key}"}, timeout=30
    )
    assert response.status_code == 400
    assert KitaruUsageError.__name__ == response.json()["error"]["type"]
