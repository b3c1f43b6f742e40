"""Conformance suite of :class:`~kitaru.store.CatalogStore`: the checkpoint cache and artifacts by
tag. Subclass it next to a ``state_store`` fixture, like the other suites in
:mod:`kitaru.store.conformance`. Tests only touch records they create (fresh keys, flows, tags)."""

from __future__ import annotations

import time
from typing import Any

import anyio
import pytest

from kitaru._ids import new_id
from kitaru.store import CacheEntry, CatalogStore, JournalRecord
from kitaru.store.conformance import _artifact, _execution

__all__ = ["CatalogStoreConformance"]


def _entry(key: str | None = None, *, flow: str = "cached_flow", artifact_id: str = "a") -> CacheEntry:
    return CacheEntry(
        key=key or new_id(),
        flow=flow,
        checkpoint="mod.step",
        artifact_id=artifact_id,
        exec_id=new_id(),
        call_id="step",
        created_at=time.time(),
    )


@pytest.mark.anyio
class CatalogStoreConformance:
    """Duties of :class:`~kitaru.store.CatalogStore`; needs a ``state_store`` fixture."""

    @pytest.fixture
    def anyio_backend(self) -> str:
        return "asyncio"

    async def test_implements_protocol(self, state_store: Any) -> None:
        assert isinstance(state_store, CatalogStore)

    async def test_cache_entry_round_trip(self, state_store: Any) -> None:
        entry = _entry()

        assert await state_store.get_cache_entry(entry.key) is None
        assert await state_store.put_cache_entry(entry) == entry
        assert await state_store.get_cache_entry(entry.key) == entry
        assert entry in await state_store.list_cache_entries(entry.flow)

    async def test_first_writer_of_a_key_wins(self, state_store: Any) -> None:
        first = _entry(artifact_id="first")
        second = _entry(first.key, artifact_id="second")
        await state_store.put_cache_entry(first)

        assert await state_store.put_cache_entry(second) == first
        assert await state_store.get_cache_entry(first.key) == first

    async def test_concurrent_writers_agree_on_one_entry(self, state_store: Any) -> None:
        key = new_id()
        results: list[CacheEntry] = []

        async def put(n: int) -> None:
            results.append(await state_store.put_cache_entry(_entry(key, artifact_id=f"a{n}")))

        async with anyio.create_task_group() as tg:
            for n in range(8):
                tg.start_soon(put, n)

        stored = await state_store.get_cache_entry(key)
        assert stored is not None
        assert all(r == stored for r in results)

    async def test_cache_entries_are_listed_oldest_first(self, state_store: Any) -> None:
        flow, now = f"flow_{new_id()}", time.time()
        entries = [_entry(f"{new_id()}{c}", flow=flow) for c in "ab"]
        entries[0].created_at, entries[1].created_at = now + 2, now + 1
        for entry in entries:
            await state_store.put_cache_entry(entry)
        assert await state_store.list_cache_entries(flow) == entries[::-1]
        assert [e for e in await state_store.list_cache_entries() if e.flow == flow] == entries[::-1]

    async def test_clear_cache_of_one_flow_keeps_the_others(self, state_store: Any) -> None:
        flow_a, flow_b = f"flow_{new_id()}", f"flow_{new_id()}"
        a1, a2, b1 = _entry(flow=flow_a), _entry(flow=flow_a), _entry(flow=flow_b)
        for entry in (a1, a2, b1):
            await state_store.put_cache_entry(entry)

        assert await state_store.clear_cache(flow_a) == 2

        assert await state_store.get_cache_entry(a1.key) is None
        assert await state_store.list_cache_entries(flow_a) == []
        assert await state_store.get_cache_entry(b1.key) == b1

    async def test_clear_cache_without_a_flow_removes_everything(self, state_store: Any) -> None:
        entry = _entry()
        await state_store.put_cache_entry(entry)

        assert await state_store.clear_cache() >= 1

        assert await state_store.list_cache_entries() == []

    async def test_artifact_tags_round_trip_and_find(self, state_store: Any) -> None:
        execution = _execution()
        await state_store.create_execution(execution, [])
        tag, other = f"tag_{new_id()}", f"tag_{new_id()}"
        older = _artifact(execution.id, "report", type="save", call_id="report")
        older.tags = [tag, other]
        newer = _artifact(execution.id, "notes", type="save", call_id="notes")
        newer.tags = [tag]
        newer.created_at = older.created_at + 1
        untagged = _artifact(execution.id, "plain", type="save", call_id="plain")
        await state_store.commit(
            execution.id,
            [
                JournalRecord(kind="save", call_id=a.call_id, artifact_id=a.id)
                for a in (older, newer, untagged)
            ],
            [older, newer, untagged],
        )

        assert await state_store.get_artifact(older.id) == older
        assert (await state_store.get_artifact(untagged.id)).tags == []
        assert await state_store.find_artifacts(tag=tag) == [newer, older]
        assert await state_store.find_artifacts(tag=other) == [older]
        assert await state_store.find_artifacts(tag=tag, limit=1) == [newer]
        assert await state_store.find_artifacts(tag=f"tag_{new_id()}") == []
