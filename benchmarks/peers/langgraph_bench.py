"""The benchmark workloads on LangGraph's functional API (SqliteSaver, durability="sync").

Run in LangGraph's own virtualenv (``benchmarks/run.py`` makes it). Prints one JSON object on
stdout: ``{"peer": "langgraph", "version": ..., "results": {measure_key: ms_or_null}, ...}``.

Each workload mirrors ``benchmarks/kitaru_bench.py`` step for step; see benchmarks/README.md.
The sync flows use ``SqliteSaver``; the async fan-out uses ``AsyncSqliteSaver`` (the sync saver
has no async methods), both on a file in a fresh temporary directory.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import os
import shutil
import sqlite3
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import _benchlib as bl

bl.protect_stdout()

from langgraph.checkpoint.sqlite import SqliteSaver  # noqa: E402
from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver  # noqa: E402
from langgraph.func import entrypoint, task  # noqa: E402
from langgraph.types import Command, interrupt  # noqa: E402

DURABILITY = "sync"
_OWN_TMP = None if os.environ.get("BENCH_LANGGRAPH_DIR") else tempfile.mkdtemp(prefix="lg-bench-")
TMP = os.environ.get("BENCH_LANGGRAPH_DIR") or str(_OWN_TMP)

# --- workloads ---------------------------------------------------------------------------------


@task
def step(i: int) -> int:
    return i + 1


PAYLOADS: list[bytes] = []


@task
def mb_step(i: int) -> bytes:
    return PAYLOADS[i]


@task
def mark() -> float:
    return bl.record_mark()


@task
async def astep(i: int) -> int:
    return i + 1


def build_sync(saver: SqliteSaver) -> dict[str, Any]:
    @entrypoint(checkpointer=saver)
    def seq(n: int) -> int:
        t = 0
        for i in range(n):
            t = step(i).result()
        return t

    @entrypoint(checkpointer=saver)
    def mb_flow(n: int) -> int:
        for i in range(n):
            mb_step(i).result()
        return n

    @entrypoint(checkpointer=saver)
    def empty(_: int) -> int:  # an entrypoint needs one input; it is ignored
        return 1

    @entrypoint(checkpointer=saver)
    def waits(n: int) -> int:
        for i in range(n):
            step(i).result()
        interrupt("go")
        mark().result()
        return 1

    return {"seq": seq, "mb_flow": mb_flow, "empty": empty, "waits": waits}


def build_async(saver: AsyncSqliteSaver) -> Any:
    @entrypoint(checkpointer=saver)
    async def fan(n: int) -> list[int]:
        return list(await asyncio.gather(*[astep(i) for i in range(n)]))

    return fan


def cfg() -> dict[str, Any]:
    """A fresh thread: every run is a new execution."""
    return {"configurable": {"thread_id": str(uuid.uuid4())}}


def run(flow: Any, arg: Any, config: dict[str, Any] | None = None) -> Any:
    return flow.invoke(arg, config or cfg(), durability=DURABILITY)


# --- measures ----------------------------------------------------------------------------------

F: dict[str, Any] = {}


def m_checkpoint_overhead(p: bl.Params) -> float:
    n = p.seq_steps
    run(F["seq"], min(n, 100))  # warm-up flow
    base = bl.plain_loop_seconds(n)
    times = []
    for _ in range(p.seq_repeats):
        t0 = bl.now()
        assert run(F["seq"], n) == n
        times.append(bl.now() - t0)
    return bl.ms((bl.median(times) - base) / n)


def m_checkpoint_1mb(p: bl.Params) -> float:
    global PAYLOADS
    n = p.mb_steps
    PAYLOADS = bl.fresh_payloads(2)
    run(F["mb_flow"], 2)  # warm-up flow
    times = []
    for _ in range(p.mb_repeats):
        PAYLOADS = bl.fresh_payloads(n)
        t0 = bl.now()
        run(F["mb_flow"], n)
        times.append(bl.now() - t0)
    PAYLOADS = []
    return bl.ms(bl.median(times) / n)


def m_empty_flow(p: bl.Params) -> float:
    for _ in range(p.empty_warmup):
        run(F["empty"], 0)
    times = []
    for _ in range(p.empty_runs):
        t0 = bl.now()
        assert run(F["empty"], 0) == 1
        times.append(bl.now() - t0)
    return bl.ms(bl.median(times))


def m_import(p: bl.Params) -> float:
    return bl.import_ms(
        sys.executable,
        "import langgraph.func\nimport langgraph.checkpoint.sqlite",
        p.import_repeats,
    )


def _answer_once(n: int) -> float:
    config = cfg()
    out = run(F["waits"], n, config)
    if not (isinstance(out, dict) and "__interrupt__" in out):
        raise RuntimeError(f"flow did not stop at interrupt(): {out!r}")
    bl.take_mark()
    t0 = bl.now()
    out = run(F["waits"], Command(resume=True), config)
    t1 = bl.take_mark()
    if out != 1 or t1 is None:
        raise RuntimeError(f"resume did not run the step after interrupt(): {out!r}")
    return t1 - t0


def m_wait_answer(p: bl.Params) -> float:
    _answer_once(0)  # warm-up
    return bl.ms(bl.median([_answer_once(0) for _ in range(p.wait_runs)]))


def m_resume(p: bl.Params) -> float:
    return bl.ms(bl.median([_answer_once(p.resume_steps) for _ in range(p.resume_repeats)]))


def m_concurrent(p: bl.Params) -> float:
    n = p.fan_width

    async def main() -> float:
        async with AsyncSqliteSaver.from_conn_string(f"{TMP}/langgraph-async.sqlite") as saver:
            fan = build_async(saver)
            await fan.ainvoke(min(n, 100), cfg(), durability=DURABILITY)  # warm-up flow
            base = await bl.plain_gather_seconds(n)
            times = []
            for _ in range(p.fan_repeats):
                t0 = bl.now()
                out = await fan.ainvoke(n, cfg(), durability=DURABILITY)
                times.append(bl.now() - t0)
                assert out == [i + 1 for i in range(n)]
            return (bl.median(times) - base) / n

    return bl.ms(asyncio.run(main()))


def main() -> int:
    conn = sqlite3.connect(f"{TMP}/langgraph.sqlite", check_same_thread=False)
    saver = SqliteSaver(conn)
    saver.setup()
    F.update(build_sync(saver))
    try:
        return bl.run_measures(
            "langgraph",
            importlib.metadata.version("langgraph"),
            {
                "checkpoint_overhead_ms": m_checkpoint_overhead,
                "checkpoint_1mb_ms": m_checkpoint_1mb,
                "empty_flow_ms": m_empty_flow,
                "import_ms": m_import,
                "wait_answer_to_running_ms": m_wait_answer,
                "resume_1000_ms": m_resume,
                "concurrent_1000_async_ms": m_concurrent,
            },
            notes={
                "wait_answer_to_running_ms": "invoke(Command(resume=True)) -> the task after "
                "interrupt() starts (replays the entrypoint from its checkpoint)",
                "resume_1000_ms": "same, with N completed tasks before interrupt()",
                "concurrent_1000_async_ms": "async tasks gathered in an async entrypoint, AsyncSqliteSaver",
            },
        )
    finally:
        conn.close()
        if _OWN_TMP:
            shutil.rmtree(_OWN_TMP, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
