"""The answer path's share of the work, in one process: a JSON Schema validator is built once per
schema, however many waits use it; the drives a burst of answers hands over run a few at a time,
each execution at most once; a bad driver count is refused before anything starts."""

from __future__ import annotations

import uuid
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from kitaru._engine import wait_schema
from kitaru._engine.wait_schema import check_answer
from kitaru.errors import KitaruConfigError, KitaruWaitValidationError


def test_answers_to_waits_of_one_schema_build_its_validator_once(monkeypatch: pytest.MonkeyPatch) -> None:
    # A title of its own, so no earlier test has built this schema's validator already.
    schema = {
        "title": f"order {uuid.uuid4().hex}",
        "type": "object",
        "properties": {"n": {"type": "integer"}, "at": {"type": "string", "format": "date-time"}},
        "required": ["n"],
    }
    validator_class = wait_schema._json_validator_class()
    built = 0

    def counting(*args: Any, **kwargs: Any) -> Any:
        nonlocal built
        built += 1
        return validator_class(*args, **kwargs)

    monkeypatch.setattr(wait_schema, "_json_validator_class", lambda: counting)
    opened = {"schema_text": "Order", "json_schema": schema}
    for n in range(20):
        assert check_answer(opened, {"n": n}, where=f"wait {n}", fix="fix it.") == {"n": n}
    with pytest.raises(KitaruWaitValidationError, match="is not of type 'integer'"):
        check_answer(opened, {"n": "x"}, where="wait x", fix="fix it.")
    assert built == 1


class _Store:
    async def list_recoverable(self, *, limit: int = 100) -> list[Any]:
        return []


class _Runtime:
    astate = _Store()


def test_a_burst_of_handed_over_drives_runs_a_few_at_a_time_each_once() -> None:
    from kitaru.server._state import ServerState

    server = ServerState(_Runtime(), None, state_uri="", tick=3600, drivers=3)
    running = peak = 0
    driven: list[str] = []
    expected = 50
    all_driven = anyio.Event()

    async def drive(exec_id: str) -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        for _ in range(5):  # yield to every other task: unbounded, all 50 would be in here at once
            await anyio.lowlevel.checkpoint()
        driven.append(exec_id)
        running -= 1
        if len(driven) == expected:
            all_driven.set()

    async def main() -> None:
        nonlocal expected, all_driven
        async with server.running():
            assert all(server.spawn(f"e{i}", drive, f"e{i}") for i in range(50))
            assert not server.spawn("e7", drive, "e7")  # queued already: not twice
            with anyio.fail_after(60):
                await all_driven.wait()
            expected, all_driven = 51, anyio.Event()
            assert server.spawn("e7", drive, "e7")  # done: it may be handed over again
            with anyio.fail_after(60):
                await all_driven.wait()

    anyio.run(main)
    assert peak == 3
    assert sorted(driven) == sorted([f"e{i}" for i in range(50)] + ["e7"])


def test_a_driver_count_that_is_not_a_positive_number_is_refused(
    monkeypatch: pytest.MonkeyPatch, kitaru_home: Any
) -> None:
    from kitaru.server import create_app

    monkeypatch.setenv("KITARU_SERVER_DRIVERS", "0")
    with pytest.raises(KitaruConfigError, match="KITARU_SERVER_DRIVERS='0' is not a positive whole number"):
        create_app(state=f"sqlite:///{kitaru_home / 'kitaru.db'}")


def test_a_burst_of_requests_with_an_uncached_key_reads_it_once() -> None:
    """200 requests arriving together with one key: the first reads the key's record, the rest
    wait for that read (on PostgreSQL each read would queue on the pool before any answer)."""
    import asyncio

    from kitaru.server._state import ServerState
    from kitaru.store import ApiKeyRecord

    reads = 0
    stored = ApiKeyRecord(id="k1", name="bench", key_hash="sha256:x", scopes=["answer"], created_at=1.0)

    class _KeyStore(_Store):
        async def get_api_key(self, key_id: str) -> ApiKeyRecord | None:
            nonlocal reads
            reads += 1
            await asyncio.sleep(0.01)  # a round trip: every other request arrives meanwhile
            return stored if key_id == "k1" else None

    class _KeyRuntime:
        astate = _KeyStore()

    server = ServerState(_KeyRuntime(), None, state_uri="", tick=3600)

    async def main() -> list[ApiKeyRecord | None]:
        return await asyncio.wait_for(asyncio.gather(*(server.key("k1") for _ in range(200))), 60)

    assert asyncio.run(main()) == [stored] * 200
    assert reads == 1


def test_an_answer_is_accepted_without_reading_the_execution_back() -> None:
    """Before its 202 an answer reads the wait's records and writes once; the execution it leased
    is read by the driver that drives it on, not by the request."""
    from kitaru._engine.runtime import Runtime
    from kitaru.local_stack import LocalOrchestrator
    from kitaru.server._state import ServerState
    from kitaru.store.conformance import _waiting
    from kitaru.store.memory import MemoryArtifactStore, MemoryStateStore

    store = MemoryStateStore()
    runtime = Runtime(store, MemoryArtifactStore())
    server = ServerState(runtime, LocalOrchestrator(runtime=runtime), state_uri="", tick=3600)
    reads: list[str] = []
    get_execution = store.get_execution

    async def counting(exec_id: str) -> Any:
        reads.append(exec_id)
        return await get_execution(exec_id)

    async def main() -> None:
        exec_id = await _waiting(store, "approve")
        store.get_execution = counting  # type: ignore[method-assign]
        await server.answer(exec_id, "approve", True)
        assert [r.kind for r in await store.read_journal(exec_id)][-1] == "wait_answered"
        record = await get_execution(exec_id)
        assert record is not None and (record.status, record.lease_owner) == ("running", runtime.owner)

    try:
        anyio.run(main)
    finally:
        runtime.close()
    assert reads == []


def test_drives_wait_for_the_requests_in_flight_to_be_answered(monkeypatch: pytest.MonkeyPatch) -> None:
    """A drive handed over while requests still wait for their responses starts once they are
    answered (a burst of answers is not slowed by the flows it resumes), and then at once."""
    from kitaru.server import _state
    from kitaru.server._state import ServerState

    monkeypatch.setattr(_state, "_DEFER_DRIVES", 60.0)  # only the requests hold it back here
    server = ServerState(_Runtime(), None, state_uri="", tick=3600, drivers=2)
    driven = anyio.Event()

    async def drive() -> None:
        driven.set()

    async def main() -> None:
        async with server.running():
            server.request_started()
            server.request_started()
            assert server.spawn("e1", drive)
            for _ in range(50):
                await anyio.lowlevel.checkpoint()
            server.request_answered()
            for _ in range(50):
                await anyio.lowlevel.checkpoint()
            assert not driven.is_set()  # one request still waits for its response
            server.request_answered()
            with anyio.fail_after(60):
                await driven.wait()

    anyio.run(main)


def test_the_answer_endpoint_keeps_its_contract(kitaru_home: Any) -> None:
    """The answer endpoint reads its request itself: a key is checked before the body, a body
    that is not ``{"value": ...}`` is FastAPI's 422 (in the API's error shape), and the OpenAPI
    document still describes its path parameters and body."""
    import httpx

    from kitaru.server import create_app
    from kitaru.server._auth import new_key

    app = create_app(state=f"sqlite:///{kitaru_home / 'kitaru.db'}", tick=3600)
    key, record = new_key("answers", ["answer"])
    read_key, read_record = new_key("reader", ["read"])

    async def main() -> None:
        async with app.router.lifespan_context(app):
            from kitaru._engine.runtime import get_runtime

            store: Any = get_runtime().astate  # the server's (create_app made it current)
            await store.create_api_key(record)
            await store.create_api_key(read_record)
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
                path = "/api/v1/executions/nope/waits/approve"
                assert (await c.post(path, content=b"{")).status_code == 401
                bearer = {"Authorization": f"Bearer {read_key}"}
                assert (await c.post(path, json={"value": 1}, headers=bearer)).status_code == 403
                bearer = {"Authorization": f"Bearer {key}"}
                json_type = {**bearer, "Content-Type": "application/json"}
                bad = await c.post(path, content=b"{", headers=json_type)
                assert bad.status_code == 422 and bad.json()["error"]["detail"][0]["type"] == "json_invalid"
                missing = await c.post(path, json={"answer": True}, headers=bearer)
                assert missing.status_code == 422
                assert missing.json()["error"]["detail"][0]["loc"] == ["body", "value"]
                unknown = await c.post(path, json={"value": True}, headers=bearer)
                assert unknown.status_code == 404 and "nope" in unknown.json()["error"]["message"]
                spec = (await c.get("/openapi.json")).json()
                post = spec["paths"]["/api/v1/executions/{exec_id}/waits/{name}"]["post"]
                assert sorted(p["name"] for p in post["parameters"]) == ["exec_id", "name"]
                body = post["requestBody"]["content"]["application/json"]["schema"]
                if "$ref" in body:  # FastAPI names the body model among the components
                    body = spec["components"]["schemas"][body["$ref"].rpartition("/")[2]]
                assert body["required"] == ["value"]

    anyio.run(main)
