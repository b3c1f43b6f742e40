"""How a server process learns of logouts served by the others (through the state store), in one
process over the memory store: the commit-order overlap, and the background role's pruning.
Real processes on one PostgreSQL are in test_logout_everywhere.py."""

from __future__ import annotations

import time
from types import SimpleNamespace

import anyio

from kitaru.server._state import ServerState
from kitaru.store import EndedSession
from kitaru.store.memory import MemoryStateStore


def state(store: MemoryStateStore, tick: float = 3600) -> ServerState:
    return ServerState(SimpleNamespace(astate=store), None, state_uri="memory://", tick=tick)


def test_a_logout_stamped_before_one_already_read_is_still_read() -> None:
    async def main() -> None:
        store = MemoryStateStore()
        server = state(store)
        await store.end_session("newer", time.time() + 3600)
        assert await server.pull_ended_sessions() == 1
        newest = (await store.ended_sessions(0.0))[0].ended_at
        # Another replica's logout, stamped a moment before the one read above but committed
        # after that read: a read from the newest stamp on would skip it for good.
        store._ended_sessions["slower"] = EndedSession("slower", time.time() + 3600, newest - 1)

        assert await server.pull_ended_sessions() == 1
        assert server.session_ended("slower") and server.session_ended("newer")
        assert not server.session_ended("never-ended")

    anyio.run(main)


def test_expired_logouts_are_not_taken_and_the_role_prunes_them() -> None:
    async def main() -> None:
        store = MemoryStateStore()
        await store.end_session("expired", time.time() - 1)
        await store.end_session("live", time.time() + 3600)
        server = state(store)
        async with server.running():
            # Read before the first request, and the expired one is no use to keep.
            assert server.session_ended("live") and not server.session_ended("expired")
            with anyio.fail_after(5):
                # The role's first pass prunes it; polling the store is the point.
                while {s.nonce for s in await store.ended_sessions(0.0)} != {"live"}:  # noqa: ASYNC110
                    await anyio.sleep(0.01)

    anyio.run(main)
