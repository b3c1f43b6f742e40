"""The deployment duties of :class:`~kitaru.store.StateStore`, as a conformance suite.

:class:`~kitaru.store.conformance.StateStoreConformance` inherits it, so every state store runs it
with the rest of its suite (it needs the same ``state_store`` fixture). Each test uses a fresh
flow name, so a fixture may hand the same store to several tests.
"""

from __future__ import annotations

import itertools
import threading
import time
from typing import Any

import anyio
import pytest

from kitaru._ids import new_id
from kitaru.errors import KitaruNotFoundError, KitaruStateError, KitaruUsageError
from kitaru.store import (
    DeploymentRecord,
    ExecutionRecord,
    StateStore,
    TagRequest,
    sync_view,
)

__all__ = ["DeploymentConformance"]


def _flow() -> str:
    return f"deploy_flow_{new_id()}"


def _version(flow: str, *, message: str | None = None, sha: str = "ab" * 32) -> DeploymentRecord:
    return DeploymentRecord(
        flow=flow,
        version=0,
        target="deployed_flows:flow",
        archive_key=f"code/{sha}.tar.gz",
        archive_sha256=sha,
        created_by="tester",
        created_at=time.time(),
        image="registry.example/agent:1",
        stack="local",
        message=message,
        requirements={"lock": {"path": "uv.lock", "sha256": "cd" * 32}, "python": "3.12.1"},
    )


async def _state(store: StateStore, flow: str) -> tuple[dict[str, tuple[int, int | None]], list[Any]]:
    tags = {t.tag: (t.version, t.weight) for t in await store.list_tags(flow)}
    return tags, await store.tag_history(flow)


class DeploymentConformance:
    """Versions, tags and their history; needs a ``state_store`` fixture."""

    async def test_versions_are_numbered_per_flow_and_kept_as_given(self, state_store: StateStore) -> None:
        a, b = _flow(), _flow()
        first, moves = await state_store.create_deployment(_version(a, message="first"))
        assert first.version == 1
        assert [(m.tag, m.version, m.action) for m in moves] == [("default", 1, "deploy")]
        second, moves = await state_store.create_deployment(_version(a))
        assert second.version == 2 and moves == []  # only the first version takes `default`
        other, _ = await state_store.create_deployment(_version(b))
        assert other.version == 1
        stored = await state_store.get_deployment(a, 1)
        assert stored == first
        assert stored is not None and stored.message == "first" and stored.image == "registry.example/agent:1"
        assert stored.requirements["lock"]["path"] == "uv.lock"
        assert await state_store.get_deployment(a, 3) is None
        assert [d.version for d in await state_store.list_deployments(a)] == [1, 2]
        everything = {(d.flow, d.version) for d in await state_store.list_deployments()}
        assert {(a, 1), (a, 2), (b, 1)} <= everything

    async def test_deploy_with_a_tag_and_weight(self, state_store: StateStore) -> None:
        flow = _flow()
        await state_store.create_deployment(_version(flow))
        _, moves = await state_store.create_deployment(_version(flow), tag="canary", weight=10)
        assert [(m.tag, m.version, m.weight, m.previous) for m in moves] == [("canary", 2, 10, None)]
        tags, history = await _state(state_store, flow)
        assert tags == {"default": (1, None), "canary": (2, 10)}
        assert [(m.tag, m.version, m.action) for m in history] == [
            ("default", 1, "deploy"),
            ("canary", 2, "deploy"),
        ]

    async def test_first_deploy_tagged_default_is_recorded_once(self, state_store: StateStore) -> None:
        flow = _flow()
        _, moves = await state_store.create_deployment(_version(flow), tag="default")
        assert [(m.tag, m.version) for m in moves] == [("default", 1)]
        assert len(await state_store.tag_history(flow)) == 1

    async def test_concurrent_deploys_get_distinct_numbers(self, state_store: StateStore) -> None:
        flow = _flow()
        got: list[int] = []

        async def deploy() -> None:
            record, _ = await state_store.create_deployment(_version(flow))
            got.append(record.version)

        async with anyio.create_task_group() as tg:
            for _ in range(10):
                tg.start_soon(deploy)
        view = sync_view(state_store)

        def in_thread() -> None:
            got.append(view.create_deployment(_version(flow))[0].version)

        threads = [threading.Thread(target=in_thread) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert sorted(got) == list(range(1, 17))
        assert [d.version for d in await state_store.list_deployments(flow)] == list(range(1, 17))

    async def test_set_promote_rollback_untag(self, state_store: StateStore) -> None:
        flow = _flow()
        for _ in range(3):
            await state_store.create_deployment(_version(flow))
        await state_store.move_tags(flow, [TagRequest("canary", "set", 3, weight=20)], who="a")
        promote = TagRequest("default", "promote", source="canary")
        (moved,) = await state_store.move_tags(flow, [promote], who="b")
        assert (moved.tag, moved.version, moved.previous, moved.action, moved.who) == (
            "default",
            3,
            1,
            "promote",
            "b",
        )
        (back,) = await state_store.move_tags(flow, [TagRequest("default", "rollback")], who="c")
        assert (back.version, back.previous, back.action) == (1, 3, "rollback")
        (to,) = await state_store.move_tags(flow, [TagRequest("default", "rollback", version=2)], who="c")
        assert (to.version, to.previous) == (2, 1)
        (gone,) = await state_store.move_tags(flow, [TagRequest("canary", "remove")], who="d")
        assert (gone.version, gone.previous, gone.action) == (None, 3, "untag")
        tags, history = await _state(state_store, flow)
        assert tags == {"default": (2, None)}
        assert [(m.tag, m.version) for m in history] == [
            ("default", 1),
            ("canary", 3),
            ("default", 3),
            ("default", 1),
            ("default", 2),
            ("canary", None),
        ]
        ids = [m.id for m in history]
        assert ids == sorted(ids) and len(set(ids)) == len(ids)
        assert [m.version for m in await state_store.tag_history(flow, "canary")] == [3, None]

    @pytest.mark.parametrize(
        ("request_", "error", "words"),
        [
            (TagRequest("canary", "set", 9), KitaruNotFoundError, "has no version 9"),
            (TagRequest("canary", "set", 1, weight=101), KitaruUsageError, "0 to 100"),
            (TagRequest("canary", "set", 1, weight=-1), KitaruUsageError, "0 to 100"),
            (TagRequest("default", "set", 1, weight=5), KitaruUsageError, "carries no weight"),
            (TagRequest("default", "promote", source="nope"), KitaruNotFoundError, "no tag 'nope'"),
            (TagRequest("nope", "remove"), KitaruNotFoundError, "no tag 'nope'"),
            (TagRequest("default", "remove"), KitaruUsageError, "not removed"),
            (TagRequest("default", "rollback"), KitaruStateError, "nothing to roll back to"),
            (TagRequest("default", "rollback", version=7), KitaruNotFoundError, "has no version 7"),
            (TagRequest("bad tag", "set", 1), KitaruUsageError, "not a tag name"),
        ],
    )
    async def test_bad_requests_change_nothing(
        self, state_store: StateStore, request_: TagRequest, error: type[Exception], words: str
    ) -> None:
        flow = _flow()
        await state_store.create_deployment(_version(flow))
        await state_store.create_deployment(_version(flow), tag="canary", weight=10)
        before = await _state(state_store, flow)
        # A good move first, in the same call: the bad one must take it back too (all or nothing).
        good = TagRequest("other", "set", 2)
        with pytest.raises(error, match=words):
            await state_store.move_tags(flow, [good, request_], who="x")
        assert await _state(state_store, flow) == before

    async def test_tags_are_listed_per_flow_or_for_all(self, state_store: StateStore) -> None:
        a, b = _flow(), _flow()
        await state_store.create_deployment(_version(a))
        await state_store.create_deployment(_version(b))
        await state_store.create_deployment(_version(b), tag="canary", weight=10)
        assert [(t.flow, t.tag, t.version) for t in await state_store.list_tags(a)] == [(a, "default", 1)]
        everything = [(t.flow, t.tag) for t in await state_store.list_tags() if t.flow in (a, b)]
        assert sorted(everything) == sorted([(a, "default"), (b, "canary"), (b, "default")])

    async def test_moves_say_who_and_when(self, state_store: StateStore) -> None:
        flow, before = _flow(), time.time()
        await state_store.create_deployment(_version(flow))
        await state_store.move_tags(flow, [TagRequest("canary", "set", 1, weight=5)], who="alice")
        history = await state_store.tag_history(flow)
        assert [(m.tag, m.who, m.action) for m in history] == [
            ("default", "tester", "deploy"),
            ("canary", "alice", "tag"),
        ]
        assert all(before - 1 <= m.ts <= time.time() + 1 for m in history)
        tags = await state_store.list_tags(flow)
        assert all(before - 1 <= t.updated_at <= time.time() + 1 for t in tags)

    async def test_a_flow_never_deployed_has_nothing(self, state_store: StateStore) -> None:
        flow = _flow()
        assert await state_store.get_deployment(flow, 1) is None
        assert await state_store.list_deployments(flow) == []
        with pytest.raises(KitaruNotFoundError, match=flow):
            await state_store.move_tags(flow, [TagRequest("default", "set", 1)], who="x")

    async def test_deployments_handed_out_are_the_callers_copies(self, state_store: StateStore) -> None:
        flow = _flow()
        record = _version(flow)
        stored, _ = await state_store.create_deployment(record)
        stored.requirements["python"] = "edited"
        record.requirements["python"] = "2.7"
        for handed in (
            await state_store.get_deployment(flow, 1),
            *await state_store.list_deployments(flow),
        ):
            assert handed is not None and handed.requirements["python"] == "3.12.1"
            handed.requirements["python"] = "edited"
        again = await state_store.get_deployment(flow, 1)
        assert again is not None and again.requirements["python"] == "3.12.1"

    async def test_a_refused_move_names_the_flow(self, state_store: StateStore) -> None:
        flow = _flow()
        await state_store.create_deployment(_version(flow))
        with pytest.raises(KitaruNotFoundError) as info:
            await state_store.move_tags(flow, [TagRequest("canary", "set", 9)], who="x")
        assert f"flow {flow!r} has no version 9" in str(info.value)

    async def test_weights_add_up_to_at_most_100(self, state_store: StateStore) -> None:
        flow = _flow()
        await state_store.create_deployment(_version(flow))
        await state_store.move_tags(flow, [TagRequest("a", "set", 1, weight=60)], who="x")
        with pytest.raises(KitaruUsageError, match="over 100%"):
            await state_store.move_tags(flow, [TagRequest("b", "set", 1, weight=50)], who="x")
        await state_store.move_tags(flow, [TagRequest("b", "set", 1, weight=40)], who="x")

    async def test_a_refused_deploy_leaves_no_version(self, state_store: StateStore) -> None:
        flow = _flow()
        await state_store.create_deployment(_version(flow))
        with pytest.raises(KitaruUsageError, match="0 to 100"):
            await state_store.create_deployment(_version(flow), tag="canary", weight=150)
        assert [d.version for d in await state_store.list_deployments(flow)] == [1]
        assert len(await state_store.tag_history(flow)) == 1
        second, _ = await state_store.create_deployment(_version(flow))
        assert second.version == 2

    async def test_concurrent_moves_are_each_recorded_once(self, state_store: StateStore) -> None:
        flow = _flow()
        for _ in range(4):
            await state_store.create_deployment(_version(flow))
        moves: list[Any] = []

        async def move(n: int) -> None:
            request = TagRequest("live", "set", n % 4 + 1)
            moves.extend(await state_store.move_tags(flow, [request], who=str(n)))

        async with anyio.create_task_group() as tg:
            for n in range(20):
                tg.start_soon(move, n)
        history = await state_store.tag_history(flow, "live")
        assert sorted(m.who for m in history) == sorted(str(n) for n in range(20))
        assert [m.id for m in history] == sorted(m.id for m in moves)
        # Each move saw the one before it: the history is a chain, and the tag ends on the last.
        for before, after in itertools.pairwise(history):
            assert after.previous == before.version
        tags, _ = await _state(state_store, flow)
        assert tags["live"][0] == history[-1].version

    async def test_list_executions_by_deployment_version(self, state_store: StateStore) -> None:
        flow = _flow()
        now = time.time()
        ids: dict[int, set[str]] = {}
        for version in (1, 2, 2):
            record = ExecutionRecord(
                id=new_id(),
                flow=flow,
                target="deployed_flows:flow",
                sys_path=None,
                status="running",
                created_at=now,
                updated_at=now,
                metadata={"deployment": {"flow": flow, "version": version}},
            )
            await state_store.create_execution(record, [])
            ids.setdefault(version, set()).add(record.id)
        found = {e.id for e in await state_store.list_executions(flow=flow, version=2)}
        assert found == ids[2]
        assert {e.id for e in await state_store.list_executions(flow=flow, version=1)} == ids[1]
        assert await state_store.list_executions(flow=flow, version=3) == []
