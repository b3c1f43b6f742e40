"""Team server benchmark (a report, not a test): answer-wait API latency under 200 concurrent
clients, and one list page over 10,000 executions.

    uv run python benchmarks/server_api.py [--state postgresql://...]

Starts `kitaru server start` on a fresh SQLite home (or the given PostgreSQL database), parks 200
executions on a wait, answers them all at once from 200 concurrent clients, then seeds 10,000
executions and times `GET /api/v1/executions?limit=50`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.server.conftest import FLOWS, ServerProcess, create_key  # noqa: E402


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * p))]


async def answer_all(url: str, key: str, ids: list[str]) -> list[float]:
    async with httpx.AsyncClient(
        base_url=url,
        headers={"Authorization": f"Bearer {key}"},
        timeout=60,
        limits=httpx.Limits(max_connections=len(ids)),
    ) as client:

        async def one(exec_id: str) -> float:
            t = time.perf_counter()
            r = await client.post(f"/api/v1/executions/{exec_id}/waits/approve", json={"value": True})
            assert r.status_code == 202, r.text
            return (time.perf_counter() - t) * 1000

        return list(await asyncio.gather(*(one(i) for i in ids)))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--state")
    parser.add_argument("--clients", type=int, default=200)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="kitaru-bench-"))
    env = {
        **os.environ,
        "KITARU_HOME": str(root / "home"),
        "XDG_CONFIG_HOME": str(root / "cfg"),
        "PYTHONPATH": str(ROOT),
        "COUNT_FILE": str(root / "count"),
    }
    state = args.state or f"sqlite:///{root / 'home' / 'kitaru.db'}"
    if args.state:
        env["KITARU_STACK__STATE"] = args.state
    cli = [str(Path(sys.executable).with_name("kitaru"))]
    code = (
        f"import sys; sys.path.insert(0, {str(FLOWS.parent)!r})\nimport server_flows as f\n"
        f"for _ in range({args.clients}): print(f.approve.run('bench').exec_id)\n"
    )
    ids = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    ).stdout.splitlines()
    ids = [line for line in ids if not line.startswith("researching")]
    key = create_key(cli, env, state, "bench", "admin")
    server = ServerProcess(cli, env, state, root / "server.log", tick=3600)
    try:
        latencies = asyncio.run(answer_all(server.url, key, ids))
        print(
            f"answer-wait, {len(ids)} concurrent clients: p50 {statistics.median(latencies):.1f} ms, "
            f"p99 {pct(latencies, 0.99):.1f} ms"
        )
        # Seed 10,000 more executions straight into the store, then time one list page.
        from kitaru._ids import new_id
        from kitaru.store import ExecutionRecord, sync_view
        from kitaru.store.open import open_state_store

        store = sync_view(open_state_store(state))
        now = time.time()
        for _ in range(10_000):
            e = ExecutionRecord(new_id(), "bench", "m:f", None, "completed", now, now)
            store.create_execution(e, [])
        store.close()
        with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {key}"}) as c:
            c.get("/api/v1/executions", params={"limit": 50})
            times = []
            for _ in range(20):
                t = time.perf_counter()
                page = c.get("/api/v1/executions", params={"limit": 50}).json()
                times.append((time.perf_counter() - t) * 1000)
                c.get("/api/v1/executions", params={"limit": 50, "cursor": page["next_cursor"]})
        print(
            f"list page of 50 over 10,000+ executions: p50 {statistics.median(times):.1f} ms, "
            f"max {max(times):.1f} ms"
        )
    finally:
        server.stop()


if __name__ == "__main__":
    main()
