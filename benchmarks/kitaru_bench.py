"""The benchmark workloads on kitaru (embedded local stack).

Runs in the project's own environment:  ``uv run python benchmarks/kitaru_bench.py [--quick]``
(``benchmarks/run.py`` runs it with a fresh ``KITARU_HOME``; run directly, it makes one).
Prints one JSON object on stdout: ``{"peer": "kitaru", "version": ..., "results": {...}}``.

The flows live at module level on purpose: resuming a waiting execution re-imports its flow
by the import target recorded when it started. Timestamps taken inside checkpoints go to
``_benchlib.MARKS``, which is shared even if this script is imported again under another name.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _benchlib as bl

bl.protect_stdout()

_OWN_HOME: str | None = None
if not os.environ.get("KITARU_HOME"):
    _OWN_HOME = tempfile.mkdtemp(prefix="kitaru-bench-")
    os.environ["KITARU_HOME"] = _OWN_HOME

import kitaru  # noqa: E402
from kitaru import KitaruClient, checkpoint, flow  # noqa: E402

# --- workloads ---------------------------------------------------------------------------------


@checkpoint
def step(i: int) -> int:
    return i + 1


@flow
def seq(n: int) -> int:
    t = 0
    for i in range(n):
        t = step(i)
    return t


PAYLOADS: list[bytes] = []


@checkpoint
def mb_step(i: int) -> bytes:
    return PAYLOADS[i]


@flow
def mb_flow(n: int) -> int:
    for i in range(n):
        mb_step(i)
    return n


@flow
def empty() -> int:
    return 1


@checkpoint
def mark() -> float:
    return bl.record_mark()


@flow
def waits(n: int) -> int:
    for i in range(n):
        step(i)
    kitaru.wait(name="go", schema=bool)
    mark()
    return 1


@checkpoint
async def astep(i: int) -> int:
    return i + 1


@flow
async def fan(n: int) -> list[int]:
    return list(await asyncio.gather(*[astep(i) for i in range(n)]))


# --- measures ----------------------------------------------------------------------------------


def m_checkpoint_overhead(p: bl.Params) -> float:
    n = p.seq_steps
    seq.run(min(n, 100)).wait()  # warm-up flow
    base = bl.plain_loop_seconds(n)
    times = []
    for _ in range(p.seq_repeats):
        t0 = bl.now()
        assert seq.run(n).wait() == n
        times.append(bl.now() - t0)
    return bl.ms((bl.median(times) - base) / n)


def m_checkpoint_1mb(p: bl.Params) -> float:
    global PAYLOADS
    n = p.mb_steps
    PAYLOADS = bl.fresh_payloads(2)
    mb_flow.run(2).wait()  # warm-up flow
    times = []
    for _ in range(p.mb_repeats):
        PAYLOADS = bl.fresh_payloads(n)
        t0 = bl.now()
        mb_flow.run(n).wait()
        times.append(bl.now() - t0)
    PAYLOADS = []
    return bl.ms(bl.median(times) / n)


def m_empty_flow(p: bl.Params) -> float:
    for _ in range(p.empty_warmup):
        empty.run().wait()
    times = []
    for _ in range(p.empty_runs):
        t0 = bl.now()
        assert empty.run().wait() == 1
        times.append(bl.now() - t0)
    return bl.ms(bl.median(times))


def m_import(p: bl.Params) -> float:
    return bl.import_ms(sys.executable, "import kitaru", p.import_repeats)


def m_cli_help(p: bl.Params) -> float:
    script = Path(sys.executable).parent / "kitaru"
    if not script.exists():
        raise RuntimeError(f"no console script at {script}")
    return bl.process_ms([str(script), "--help"], p.import_repeats)


def _answer_once(client: KitaruClient, n: int) -> float:
    h = waits.run(n)
    if h.status != "waiting":
        raise RuntimeError(f"flow did not suspend at wait(): status={h.status!r}")
    bl.take_mark()
    t0 = bl.now()
    client.executions.input(h.exec_id, True)
    t1 = bl.take_mark()
    if t1 is None:
        raise RuntimeError("the checkpoint after wait() did not run on resume")
    return t1 - t0


def m_wait_answer(p: bl.Params) -> float:
    client = KitaruClient()
    _answer_once(client, 0)  # warm-up
    return bl.ms(bl.median([_answer_once(client, 0) for _ in range(p.wait_runs)]))


def m_resume(p: bl.Params) -> float:
    client = KitaruClient()
    _answer_once(client, min(p.resume_steps, 10))  # warm-up
    runs = [_answer_once(client, p.resume_steps) for _ in range(p.resume_repeats)]
    return bl.ms(bl.median(runs))


def m_concurrent(p: bl.Params) -> float:
    n = p.fan_width

    async def main() -> float:
        h = await fan.start(min(n, 100))  # warm-up flow
        await h.result()
        base = await bl.plain_gather_seconds(n)
        times = []
        for _ in range(p.fan_repeats):
            t0 = bl.now()
            h = await fan.start(n)
            out = await h.result()
            times.append(bl.now() - t0)
            assert out == [i + 1 for i in range(n)]
        return (bl.median(times) - base) / n

    return bl.ms(asyncio.run(main()))


def _version() -> str | None:
    v = getattr(kitaru, "__version__", None)
    if v:
        return str(v)
    try:
        import importlib.metadata

        return importlib.metadata.version("kitaru")
    except Exception:
        return None


def _use_state_store(uri: str) -> str:
    """Run against the state store at ``uri`` (``$KITARU_BENCH_STATE``, set by ``run.py
    --kitaru-postgres``), artifacts still under KITARU_HOME; returns a note for the JSON."""
    from kitaru._engine.runtime import Runtime, set_runtime
    from kitaru.config import home
    from kitaru.store.filesystem import FilesystemArtifactStore
    from kitaru.store.open import open_state_store

    state = open_state_store(uri)
    artifacts_uri = os.environ.get("KITARU_BENCH_ARTIFACTS")
    if artifacts_uri:  # run.py --kitaru-artifacts: an object store on its emulator
        import json

        from kitaru.stack import artifact_store_for_uri

        options = json.loads(os.environ.get("KITARU_BENCH_ARTIFACT_OPTIONS", "{}"))
        set_runtime(Runtime(state, artifact_store_for_uri(artifacts_uri, **options)))
        return f"state store {state!r}, artifacts in {artifacts_uri}"
    set_runtime(Runtime(state, FilesystemArtifactStore(home() / "artifacts")))
    return f"state store {state!r} (artifacts on the local filesystem)"


def main() -> int:
    state_uri = os.environ.get("KITARU_BENCH_STATE")
    if not state_uri and os.environ.get("KITARU_BENCH_ARTIFACTS"):
        from kitaru.config import home

        state_uri = f"sqlite:///{home() / 'kitaru.db'}"
    store_note = (
        _use_state_store(state_uri)
        if state_uri
        else "embedded default stack under a fresh KITARU_HOME; SQLite "
        f"synchronous={os.environ.get('KITARU_SQLITE_SYNC', 'default')}"
    )
    try:
        return bl.run_measures(
            "kitaru",
            _version(),
            {
                "checkpoint_overhead_ms": m_checkpoint_overhead,
                "checkpoint_1mb_ms": m_checkpoint_1mb,
                "empty_flow_ms": m_empty_flow,
                "import_ms": m_import,
                "cli_help_ms": m_cli_help,
                "wait_answer_to_running_ms": m_wait_answer,
                "resume_1000_ms": m_resume,
                "concurrent_1000_async_ms": m_concurrent,
            },
            notes={
                "wait_answer_to_running_ms": "client.executions.input(exec_id, True) -> the "
                "checkpoint after wait() starts (replays the journal in this process)",
                "resume_1000_ms": "same, with N completed checkpoints before wait()",
                "store": store_note,
            },
        )
    finally:
        if _OWN_HOME:
            shutil.rmtree(_OWN_HOME, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
