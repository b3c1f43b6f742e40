"""Eight processes move one flow's tags at once, on SQLite and PostgreSQL: every move lands in the
history exactly once, each move saw the one before it, and each tag ends on its last move."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kitaru._portal import block_on
from kitaru.store import DeploymentRecord, StateStore

pytestmark = pytest.mark.e2e

PROCESSES = 8
MOVES = 12

WORKER = f"""
import json, sys, time
from pathlib import Path
from kitaru._portal import block_on
from kitaru.store import TagRequest

kind, where, flow, index, go = sys.argv[1:6]
if kind == "sqlite":
    from kitaru.store.sqlite import SQLiteStateStore
    store = SQLiteStateStore(where)
else:
    from kitaru.store.postgres import PostgresStateStore
    store = PostgresStateStore(where)
deadline = time.monotonic() + 60
while not Path(go).exists():
    if time.monotonic() > deadline:
        sys.exit("no go signal")
    time.sleep(0.005)

async def main():
    done = []
    for n in range({MOVES}):
        who = f"p{{index}}-{{n}}"
        if n % 3 == 2:
            request = TagRequest("default", "promote", source="live")
        else:
            request = TagRequest("live", "set", (int(index) + n) % 4 + 1, weight=(n * 7) % 50)
        (move,) = await store.move_tags(flow, [request], who=who)
        done.append([move.id, who, move.tag, move.version])
    await store.aclose()
    return done

print(json.dumps(block_on(main())))
"""


def _open(kind: str, where: str) -> StateStore:
    if kind == "sqlite":
        from kitaru.store.sqlite import SQLiteStateStore

        return SQLiteStateStore(where)
    from kitaru.store.postgres import PostgresStateStore

    return PostgresStateStore(where)


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_eight_processes_moving_tags(
    kind: str, tmp_path: Path, subprocess_env: dict[str, str], request: pytest.FixtureRequest
) -> None:
    where = str(tmp_path / "state.db") if kind == "sqlite" else request.getfixturevalue("postgres_dsn")
    flow = "contended"

    async def setup() -> None:
        store = _open(kind, where)
        for _ in range(4):
            await store.create_deployment(
                DeploymentRecord(flow, 0, "m:f", "code/" + "a" * 64 + ".tar.gz", "a" * 64, "t", time.time())
            )
        await store.aclose()

    block_on(setup())
    go = tmp_path / "go"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, kind, where, flow, str(i), str(go)],
            env=subprocess_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(PROCESSES)
    ]
    go.touch()
    reported = []
    for proc in procs:
        out, err = proc.communicate(timeout=240)
        assert proc.returncode == 0, err
        reported += json.loads(out)

    async def read() -> tuple[list, dict]:  # type: ignore[type-arg]
        store = _open(kind, where)
        history = await store.tag_history(flow)
        tags = {t.tag: t for t in await store.list_tags(flow)}
        await store.aclose()
        return history, tags

    history, tags = block_on(read())
    moves = [m for m in history if m.action != "deploy"]
    # Every move once: the same ids and names the processes were told, nothing else.
    assert sorted(m.who for m in moves) == sorted(r[1] for r in reported)
    assert len({m.who for m in moves}) == PROCESSES * MOVES
    assert sorted(m.id for m in moves) == sorted(r[0] for r in reported)
    # No torn state: each tag's moves form a chain, and the tag holds its last move's version.
    for tag in ("live", "default"):
        chain = [m for m in history if m.tag == tag]
        for before, after in itertools.pairwise(chain):
            assert after.previous == before.version, (before, after)
        assert tags[tag].version == chain[-1].version
        assert tags[tag].weight == chain[-1].weight
    # A promote moved default to the version live held just then (the last live move before it).
    for m in history:
        if m.action == "promote":
            live_before = [x for x in history if x.tag == "live" and (x.id or 0) < (m.id or 0)]
            assert m.version == live_before[-1].version
