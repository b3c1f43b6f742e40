"""Shared, stdlib-only helpers for the benchmark scripts.

Every bench script (kitaru's and each peer's) imports this module by path, so it must run
unchanged in the project's environment and in each peer's own virtualenv. It holds:

* the workload sizes (full and ``--quick``), so all systems run exactly the same workload;
* small timing helpers;
* the one-JSON-object-on-stdout protocol that ``run.py`` reads.

This module is imported under its own name (never as ``__main__``), so it is also the one
place a resumed flow can record a timestamp that the measuring code can see, even if a
runtime re-imports the bench script as a fresh module when it resumes a flow.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

# Every measure a bench script reports, in table order. A script that cannot (or does not)
# measure one reports null for it.
MEASURES: tuple[str, ...] = (
    "checkpoint_overhead_ms",
    "checkpoint_1mb_ms",
    "empty_flow_ms",
    "import_ms",
    "cli_help_ms",
    "wait_answer_to_running_ms",
    "resume_1000_ms",
    "concurrent_1000_async_ms",
)


@dataclass(frozen=True)
class Params:
    """Workload sizes. The full set is what the README and DESIGN.md targets describe."""

    seq_steps: int = 1000  # checkpoint_overhead: sequential trivial steps per flow
    seq_repeats: int = 3  # measured flows (median taken), after one warm-up flow
    mb_steps: int = 50  # checkpoint_1mb: steps returning 1 MiB each
    mb_repeats: int = 3
    empty_runs: int = 200  # empty_flow: measured runs (median)
    empty_warmup: int = 10
    import_repeats: int = 5  # import_ms / cli_help_ms: fresh processes (median)
    wait_runs: int = 20  # wait_answer_to_running: measured answer -> running (median)
    resume_steps: int = 1000  # resume_1000: completed checkpoints before the wait
    resume_repeats: int = 3
    fan_width: int = 1000  # concurrent_1000_async: gathered async checkpoints
    fan_repeats: int = 3


QUICK = Params(
    seq_steps=100,
    seq_repeats=1,
    mb_steps=10,
    mb_repeats=1,
    empty_runs=20,
    empty_warmup=3,
    import_repeats=3,
    wait_runs=5,
    resume_steps=100,
    resume_repeats=1,
    fan_width=100,
    fan_repeats=1,
)

MIB = 1 << 20


def params_for(quick: bool) -> Params:
    return QUICK if quick else Params()


# --- the stdout protocol -------------------------------------------------------------------

_REAL_STDOUT_FD: int | None = None


def protect_stdout() -> None:
    """Send everything written to fd 1 (libraries' logs, prints) to stderr.

    The real stdout is kept aside for the single JSON object ``emit`` writes at the end.
    """
    global _REAL_STDOUT_FD
    if _REAL_STDOUT_FD is not None:
        return
    sys.stdout.flush()
    _REAL_STDOUT_FD = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr


def emit(obj: dict[str, Any]) -> None:
    data = (json.dumps(obj, sort_keys=False) + "\n").encode()
    fd = _REAL_STDOUT_FD if _REAL_STDOUT_FD is not None else 1
    os.write(fd, data)


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


# --- timing helpers --------------------------------------------------------------------------

now = time.perf_counter


def ms(seconds: float) -> float:
    return seconds * 1000.0


def median(values: list[float]) -> float:
    return statistics.median(values)


def time_call(fn: Callable[[], Any]) -> float:
    """Seconds taken by one call of ``fn``."""
    t0 = now()
    fn()
    return now() - t0


def plain_step(i: int) -> int:
    """The undecorated body every system's trivial step runs."""
    return i + 1


async def plain_astep(i: int) -> int:
    return i + 1


def plain_loop_seconds(n: int, repeats: int = 5) -> float:
    """Time of ``n`` plain calls of the same step body (best of ``repeats``)."""

    def loop() -> int:
        t = 0
        for i in range(n):
            t = plain_step(i)
        return t

    return min(time_call(loop) for _ in range(repeats))


async def plain_gather_seconds(n: int, repeats: int = 5) -> float:
    """Time of gathering ``n`` plain coroutines (best of ``repeats``), in the running loop."""
    import asyncio

    best = float("inf")
    for _ in range(repeats):
        t0 = now()
        await asyncio.gather(*[plain_astep(i) for i in range(n)])
        best = min(best, now() - t0)
    return best


def fresh_payloads(count: int) -> list[bytes]:
    """``count`` distinct 1 MiB payloads, built before a flow starts.

    Distinct so that a content-addressed store cannot write one blob and share it for all
    steps (or across repeated flows): each step must really persist 1 MiB.
    """
    return [os.urandom(MIB) for _ in range(count)]


# --- a timestamp a resumed flow can leave behind ----------------------------------------------

MARKS: list[float] = []


def record_mark() -> float:
    t = now()
    MARKS.append(t)
    return t


def take_mark() -> float | None:
    t = MARKS[-1] if MARKS else None
    MARKS.clear()
    return t


# --- process-level measures --------------------------------------------------------------------

_IMPORT_SNIPPET = (
    "import time, sys\n"
    "t0 = time.perf_counter()\n"
    "{imports}\n"
    "t1 = time.perf_counter()\n"
    "sys.stdout.write(repr((t1 - t0) * 1000.0))\n"
)


def warm_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for process-level measures: bytecode caching allowed.

    Some machines export PYTHONDONTWRITEBYTECODE=1, which makes every fresh interpreter
    compile every imported module from source; that would measure the compiler, not the
    import. Each process measure does one untimed warm-up run that writes the caches.
    """
    env = dict(os.environ if env is None else env)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def import_ms(python: str, imports: str, repeats: int, env: dict[str, str] | None = None) -> float:
    """Median in-process wall time (ms) of ``imports`` in ``repeats`` fresh interpreters,
    after one untimed warm-up interpreter."""
    code = _IMPORT_SNIPPET.format(imports=imports)
    env = warm_env(env)
    values = []
    for i in range(repeats + 1):
        out = subprocess.run(
            [python, "-c", code],
            capture_output=True,
            text=True,
            env=env,
            check=False,
            timeout=120,
        )
        if out.returncode != 0:
            raise RuntimeError(f"import failed: {out.stderr.strip()[-2000:]}")
        if i > 0:
            values.append(float(out.stdout.strip().splitlines()[-1]))
    return median(values)


def process_ms(argv: list[str], repeats: int, env: dict[str, str] | None = None) -> float:
    """Median wall time (ms) of running ``argv`` to completion, ``repeats`` times, after one
    untimed warm-up run."""
    env = warm_env(env)
    values = []
    for i in range(repeats + 1):
        t0 = now()
        out = subprocess.run(argv, capture_output=True, env=env, check=False, timeout=120)
        dt = now() - t0
        if out.returncode != 0:
            raise RuntimeError(
                f"{argv!r} exited {out.returncode}: {out.stderr.decode(errors='replace')[-2000:]}"
            )
        if i > 0:
            values.append(ms(dt))
    return median(values)


# --- the driver ---------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    p.add_argument("--quick", action="store_true", help="small workload sizes (smoke run)")
    p.add_argument(
        "--measures",
        default="",
        help="comma-separated subset of measure keys to run (default: all)",
    )
    return p.parse_args(argv)


def run_measures(
    peer: str,
    version: str | None,
    measures: dict[str, Callable[[Params], float | None]],
    argv: list[str] | None = None,
    notes: dict[str, str] | None = None,
) -> int:
    """Run each measure (a failing one reports null plus a note), then emit the JSON object."""
    args = parse_args(argv)
    params = params_for(args.quick)
    wanted = [m.strip() for m in args.measures.split(",") if m.strip()] or list(MEASURES)
    results: dict[str, float | None] = {}
    notes = dict(notes or {})
    errors: dict[str, str] = {}
    for key in MEASURES:
        fn = measures.get(key)
        if key not in wanted or fn is None:
            results[key] = None
            continue
        log(f"{peer}: {key} ...")
        t0 = now()
        try:
            value = fn(params)
        except Exception as exc:
            traceback.print_exc(file=sys.stderr)
            value = None
            errors[key] = f"{type(exc).__name__}: {exc}"[:500]
        results[key] = None if value is None else round(float(value), 4)
        log(f"{peer}: {key} = {results[key]} ({now() - t0:.1f} s)")
    emit(
        {
            "peer": peer,
            "version": version,
            "quick": args.quick,
            "params": asdict(params),
            "python": sys.version.split()[0],
            "results": results,
            "notes": notes,
            "errors": errors,
        }
    )
    return 0
