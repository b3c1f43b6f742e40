"""Team server benchmark (a report, not a test): answer-wait API latency under 200 concurrent
clients, answer -> running again, and one list page over 10,000 executions.

    uv run python benchmarks/server_api.py [--state postgresql://... | --postgres] [--workers N]
        [--rounds K] [--clients N]

Starts `kitaru server start` on a fresh SQLite home (the given PostgreSQL database, or with
``--postgres`` a throwaway cluster from tests/_services/postgres.py), parks K x 200 executions on
a wait, and K times answers 200 of them at once from 200 concurrent clients (waiting for those
flows to finish between rounds); then times single answers until the flow's next checkpoint runs
(answer -> running again, through the server's background drive), then seeds 10,000 executions
and times `GET /api/v1/executions?limit=50`.

The clients are 200 keep-alive connections opened before the clock starts, each sending one
request at the same moment; each latency is stopped in the callback that completes its response
(a few microseconds of client work per request), and the connections are closed once every
response is in: what is timed is the server answering. ``--client httpx``
times the same burst through one httpx.AsyncClient instead (connections opened inside the timed
window, ~2 ms of client CPU per request on a shared 2-core machine: that measures httpx more than
the server).

Besides the percentiles it prints what bounds them: the same burst against the smallest ASGI app
under uvicorn (``_bare_asgi.py``: the machine and the HTTP server alone, a floor to compare runs on
different machines by) and against ``GET /healthz`` (the HTTP server and the framework alone), and
the server's CPU time per answer, from /proc, during the burst (the request path, with accepting
and closing the connections) and after it (driving the flows on).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlparse

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.server.conftest import FLOWS, ServerProcess, create_key  # noqa: E402

Request = tuple[str, str, dict[str, str], bytes]


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * p))]


def cpu_seconds(pid: int) -> float:
    """User + system CPU of ``pid`` and its descendants (uvicorn's workers), from /proc."""
    total = 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        for task in Path(f"/proc/{pid}/task").iterdir():
            for child in (task / "children").read_text().split():
                total += cpu_seconds(int(child))
    except (OSError, IndexError):
        pass
    return total


class _Exchange(asyncio.Protocol):
    """One keep-alive connection sending one request: the clock stops in the callback that
    completes the response, so the client's own queue of work adds nothing to a latency."""

    def __init__(self, done: asyncio.Future[tuple[float, int, bytes]]) -> None:
        self.done = done
        self.data = b""
        self.sent = 0.0
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def send(self, data: bytes) -> None:
        assert self.transport is not None
        self.sent = time.perf_counter()
        self.transport.write(data)

    def data_received(self, data: bytes) -> None:
        self.data += data
        head, sep, rest = self.data.partition(b"\r\n\r\n")
        if not sep or self.done.done():
            return
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        if len(rest) >= length:
            elapsed = (time.perf_counter() - self.sent) * 1000
            self.done.set_result((elapsed, int(head.split(b" ", 2)[1]), rest[:length]))

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_exception(exc or ConnectionError("closed before the response"))


async def raw_burst(url: str, requests: list[Request]) -> list[tuple[float, int, bytes]]:
    """Send every request at once, each on its own keep-alive connection opened beforehand;
    per request: milliseconds from its write to its full response, status, body."""
    u = urlparse(url)
    assert u.hostname and u.port
    loop = asyncio.get_running_loop()
    exchanges: list[tuple[_Exchange, bytes]] = []
    for method, path, headers, body in requests:
        done: asyncio.Future[tuple[float, int, bytes]] = loop.create_future()
        _, exchange = await loop.create_connection(lambda d=done: _Exchange(d), u.hostname, u.port)
        head = f"{method} {path} HTTP/1.1\r\nHost: {u.netloc}\r\nContent-Length: {len(body)}\r\n"
        head += "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
        exchanges.append((exchange, head.encode() + body))
    await asyncio.sleep(0.2)  # the server has accepted every connection
    for exchange, data in exchanges:
        exchange.send(data)
    try:
        return list(await asyncio.gather(*(e.done for e, _ in exchanges)))
    finally:
        # Closed once every response is in, as keep-alive clients would: a connection closed
        # in the middle of the burst puts its teardown on the server's loop ahead of requests
        # still waiting for their answer.
        for exchange, _ in exchanges:
            if exchange.transport is not None:
                exchange.transport.close()


async def httpx_burst(url: str, requests: list[Request]) -> list[tuple[float, int, bytes]]:
    async with httpx.AsyncClient(
        base_url=url, timeout=60, limits=httpx.Limits(max_connections=len(requests))
    ) as client:

        async def one(request: Request) -> tuple[float, int, bytes]:
            method, path, headers, body = request
            t = time.perf_counter()
            r = await client.request(method, path, headers=headers, content=body)
            return (time.perf_counter() - t) * 1000, r.status_code, r.content

        return list(await asyncio.gather(*(one(r) for r in requests)))


def report(what: str, results: list[tuple[float, int, bytes]], expect: int) -> list[float]:
    bad = [(s, b[:200]) for _, s, b in results if s != expect]
    assert not bad, f"{what}: {len(bad)} unexpected answers, e.g. {bad[0]}"
    latencies = [r[0] for r in results]
    print(f"{what}: p50 {statistics.median(latencies):.1f} ms, p99 {pct(latencies, 0.99):.1f} ms")
    return latencies


#: Executions parked for the single-answer measure (answer -> running again).
_SINGLE = 10


def _bare_floor(clients: int) -> float:
    """p99 of the same burst against the smallest ASGI app under uvicorn: what the machine and
    uvicorn alone allow (the median of three bursts)."""
    from tests.server.conftest import free_port

    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "--app-dir", str(ROOT / "benchmarks"), "_bare_asgi:app",
         "--port", str(port), "--log-level", "warning"],
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(f"http://127.0.0.1:{port}/", timeout=1)
                break
            except httpx.HTTPError:
                assert time.monotonic() < deadline, "the bare ASGI app did not start"
                time.sleep(0.1)
        p99s = []
        for _ in range(3):
            results = asyncio.run(raw_burst(f"http://127.0.0.1:{port}", [("GET", "/", {}, b"")] * clients))
            p99s.append(pct([r[0] for r in results], 0.99))
        return statistics.median(p99s)
    finally:
        proc.terminate()
        proc.wait(10)


def _published(count: Path) -> int:
    """How many flows ran their checkpoint after the wait (each writes "publish" to the file)."""
    try:
        return count.read_text().count("publish")
    except FileNotFoundError:
        return 0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--state")
    parser.add_argument("--postgres", action="store_true", help="on a throwaway PostgreSQL cluster")
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3, help="bursts of answers, each to new waits")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--client", choices=("raw", "httpx"), default="raw")
    args = parser.parse_args()
    cluster = None
    if args.postgres:
        from tests._services.postgres import PostgresCluster

        cluster = PostgresCluster.launch()
        args.state = cluster.dsn(cluster.create_database("kitaru_bench"))
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
        f"for _ in range({args.clients * args.rounds + _SINGLE}): print(f.approve.run('bench').exec_id)\n"
    )
    ids = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    ).stdout.splitlines()
    ids = [line for line in ids if not line.startswith("researching")]
    key = create_key(cli, env, state, "bench", "admin")
    bare_floor = _bare_floor(args.clients)
    server = ServerProcess(cli, env, state, root / "server.log", tick=3600, workers=args.workers)
    burst = raw_burst if args.client == "raw" else httpx_burst
    print(f"{state.partition(':')[0]}, {args.workers} worker(s), {args.client} client")
    try:
        print(f"bare ASGI app under uvicorn, {args.clients} concurrent clients: p99 {bare_floor:.1f} ms")
        report(
            f"GET /healthz, {args.clients} concurrent clients (the floor)",
            asyncio.run(burst(server.url, [("GET", "/healthz", {}, b"")] * args.clients)),
            200,
        )
        headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
        body = json.dumps({"value": True}).encode()
        count = root / "count"
        # Answer -> running again: one answer, then the flow's next checkpoint (it writes its name
        # to the count file) runs in the server's background drive. First, so the bursts after
        # it find the server's answer path used once (the first burst still finds most of the
        # database connections it uses fresh).
        again = []
        with httpx.Client(base_url=server.url, headers=headers) as c:
            for i, exec_id in enumerate(ids[:_SINGLE]):
                t = time.perf_counter()
                assert c.post(f"/api/v1/executions/{exec_id}/waits/approve", content=body).status_code == 202
                while _published(count) < i + 1:
                    time.sleep(0.0005)
                again.append((time.perf_counter() - t) * 1000)
                time.sleep(0.1)
        print(
            f"answer -> running again (one answer): p50 {statistics.median(again):.1f} ms, "
            f"max {max(again):.1f} ms"
        )
        p99s = []
        for round_ in range(args.rounds):
            batch = ids[_SINGLE + round_ * args.clients : _SINGLE + (round_ + 1) * args.clients]
            answers = [("POST", f"/api/v1/executions/{i}/waits/approve", headers, body) for i in batch]
            before = cpu_seconds(server.proc.pid)
            results = asyncio.run(burst(server.url, answers))
            during = cpu_seconds(server.proc.pid)
            latencies = report(
                f"answer-wait, {len(batch)} concurrent clients, round {round_ + 1}", results, 202
            )
            p99s.append(pct(latencies, 0.99))
            finished = _SINGLE + (round_ + 1) * args.clients
            deadline = time.monotonic() + 120
            while _published(count) < finished:  # every answered flow ran its last checkpoint
                assert time.monotonic() < deadline, "the answered executions did not finish in 120 s"
                time.sleep(0.05)
            # ... and completed, so the next round's burst meets no drive still finishing.
            with httpx.Client(base_url=server.url, headers=headers) as c:
                while c.get("/api/v1/executions", params={"status": "running", "limit": 1}).json()["items"]:
                    assert time.monotonic() < deadline, "the answered executions did not complete in 120 s"
                    time.sleep(0.05)
            time.sleep(0.2)
            after = cpu_seconds(server.proc.pid)
            print(
                f"  server CPU per answer: {(during - before) * 1000 / len(batch):.2f} ms in the burst "
                f"(incl. accepting and closing the connections), "
                f"{(after - during) * 1000 / len(batch):.2f} ms after (driving the flows on)"
            )
        print(
            f"answer-wait p99 over {args.rounds} rounds: median {statistics.median(p99s):.1f} ms, "
            f"worst {max(p99s):.1f} ms"
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
        if cluster is not None:
            cluster.destroy()


if __name__ == "__main__":
    main()
