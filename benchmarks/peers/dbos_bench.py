"""The benchmark workloads on DBOS (SQLite system database).

Run in DBOS's own virtualenv (``benchmarks/run.py`` makes it). Prints one JSON object on
stdout: ``{"peer": "dbos", "version": ..., "results": {measure_key: ms_or_null}, ...}``.
Everything else (DBOS's logs included) goes to stderr.

Each workload mirrors ``benchmarks/kitaru_bench.py`` step for step; see benchmarks/README.md.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import _benchlib as bl

bl.protect_stdout()

from dbos import DBOS, SetWorkflowID  # noqa: E402

# --- workloads (module level: DBOS registers them at import, and recovery finds them) -------


@DBOS.step()
def step(i: int) -> int:
    return i + 1


@DBOS.workflow()
def seq(n: int) -> int:
    t = 0
    for i in range(n):
        t = step(i)
    return t


PAYLOADS: list[bytes] = []


@DBOS.step()
def mb_step(i: int) -> bytes:
    return PAYLOADS[i]


@DBOS.workflow()
def mb_flow(n: int) -> int:
    for i in range(n):
        mb_step(i)
    return n


@DBOS.workflow()
def empty() -> int:
    return 1


WAIT_READY = threading.Event()


@DBOS.step()
def mark() -> float:
    return bl.record_mark()


@DBOS.workflow()
def waits(n: int) -> int:
    for i in range(n):
        step(i)
    WAIT_READY.set()  # plain code: runs again on every replay, records nothing
    DBOS.recv("go", timeout_seconds=600)
    mark()
    return 1


@DBOS.step()
async def astep(i: int) -> int:
    return i + 1


@DBOS.workflow()
async def fan(n: int) -> list[int]:
    return list(await asyncio.gather(*[astep(i) for i in range(n)]))


# --- measures ----------------------------------------------------------------------------------


def m_checkpoint_overhead(p: bl.Params) -> float:
    n = p.seq_steps
    seq(min(n, 100))  # warm-up flow
    base = bl.plain_loop_seconds(n)
    times = []
    for _ in range(p.seq_repeats):
        t0 = bl.now()
        assert seq(n) == n
        times.append(bl.now() - t0)
    return bl.ms((bl.median(times) - base) / n)


def m_checkpoint_1mb(p: bl.Params) -> float:
    global PAYLOADS
    n = p.mb_steps
    PAYLOADS = bl.fresh_payloads(2)
    mb_flow(2)  # warm-up flow
    times = []
    for _ in range(p.mb_repeats):
        PAYLOADS = bl.fresh_payloads(n)
        t0 = bl.now()
        mb_flow(n)
        times.append(bl.now() - t0)
    PAYLOADS = []
    return bl.ms(bl.median(times) / n)


def m_empty_flow(p: bl.Params) -> float:
    for _ in range(p.empty_warmup):
        empty()
    times = []
    for _ in range(p.empty_runs):
        t0 = bl.now()
        assert empty() == 1
        times.append(bl.now() - t0)
    return bl.ms(bl.median(times))


def m_import(p: bl.Params) -> float:
    return bl.import_ms(sys.executable, "import dbos", p.import_repeats)


def _answer_once(n: int) -> float:
    WAIT_READY.clear()
    handle = DBOS.start_workflow(waits, n)
    if not WAIT_READY.wait(120):
        raise RuntimeError("workflow never reached recv()")
    time.sleep(0.05)  # let it block in recv()
    bl.take_mark()
    t0 = bl.now()
    DBOS.send(handle.get_workflow_id(), True, "go")
    assert handle.get_result() == 1
    t1 = bl.take_mark()
    if t1 is None:
        raise RuntimeError("mark step did not run")
    return t1 - t0


def m_wait_answer(p: bl.Params) -> float:
    _answer_once(0)  # warm-up
    return bl.ms(bl.median([_answer_once(0) for _ in range(p.wait_runs)]))


def _resume_once(n: int) -> float:
    """Crash a runner parked in recv() after ``n`` steps, then answer and recover it here."""
    wfid = f"resume-{uuid.uuid4()}"
    child = subprocess.Popen(
        [sys.executable, __file__, "--resume-child", wfid, str(n)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=os.environ.copy(),
    )
    try:
        assert child.stdout is not None
        line = child.stdout.readline()
        if line.strip() != b"ready":
            raise RuntimeError(f"resume child did not get ready: {line!r}")
        time.sleep(0.1)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    bl.take_mark()
    t0 = bl.now()
    DBOS.send(wfid, True, "go")
    # What DBOS does on launch (or an admin "recover" call) for a crashed executor's workflows.
    handles = DBOS._recover_pending_workflows(["local"])
    if wfid not in [h.get_workflow_id() for h in handles]:
        raise RuntimeError("crashed workflow was not recovered")
    deadline = bl.now() + 300
    while not bl.MARKS and bl.now() < deadline:
        time.sleep(0.0005)
    t1 = bl.take_mark()
    if t1 is None:
        raise RuntimeError("mark step did not run after recovery")
    assert DBOS.retrieve_workflow(wfid).get_result() == 1
    return t1 - t0


def m_resume(p: bl.Params) -> float:
    return bl.ms(bl.median([_resume_once(p.resume_steps) for _ in range(p.resume_repeats)]))


def m_concurrent(p: bl.Params) -> float:
    n = p.fan_width

    async def main() -> float:
        h = await DBOS.start_workflow_async(fan, min(n, 100))  # warm-up flow
        await h.get_result()
        base = await bl.plain_gather_seconds(n)
        times = []
        for _ in range(p.fan_repeats):
            t0 = bl.now()
            h = await DBOS.start_workflow_async(fan, n)
            out = await h.get_result()
            times.append(bl.now() - t0)
            assert out == [i + 1 for i in range(n)]
        return (bl.median(times) - base) / n

    return bl.ms(asyncio.run(main()))


# --- driver ------------------------------------------------------------------------------------


def _config(tmp: str) -> dict:
    return {
        "name": "bench",
        "system_database_url": f"sqlite:///{tmp}/dbos.sqlite",
    }


def resume_child(tmp: str, wfid: str, n: int) -> None:
    DBOS(config=_config(tmp))  # type: ignore[arg-type]
    DBOS.launch()
    with SetWorkflowID(wfid):
        DBOS.start_workflow(waits, n)
    if not WAIT_READY.wait(300):
        raise SystemExit("never reached recv()")
    os.write(bl._REAL_STDOUT_FD or 1, b"ready\n")
    time.sleep(3600)  # parked in recv(); the parent kills us


def main() -> int:
    if len(sys.argv) >= 2 and sys.argv[1] == "--resume-child":
        resume_child(os.environ["BENCH_DBOS_DIR"], sys.argv[2], int(sys.argv[3]))
        return 0
    own_tmp = None
    if not os.environ.get("BENCH_DBOS_DIR"):
        own_tmp = os.environ["BENCH_DBOS_DIR"] = tempfile.mkdtemp(prefix="dbos-bench-")
    tmp = os.environ["BENCH_DBOS_DIR"]
    DBOS(config=_config(tmp))  # type: ignore[arg-type]
    DBOS.launch()
    try:
        return bl.run_measures(
            "dbos",
            importlib.metadata.version("dbos"),
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
                "wait_answer_to_running_ms": "DBOS.send -> the step after DBOS.recv starts "
                "(the workflow thread stays parked in recv; nothing is replayed). On SQLite "
                "DBOS learns of a message by polling, every "
                "notification_listener_polling_interval_sec (default 1 s, kept here)",
                "resume_1000_ms": "runner process SIGKILLed while parked in recv after N steps; "
                "DBOS.send + recover pending workflows -> the step after recv starts",
            },
        )
    finally:
        DBOS.destroy()
        if own_tmp:
            shutil.rmtree(own_tmp, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
