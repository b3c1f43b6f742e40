"""The flows the simulation runs: two interpreters (a sync and an async flow body) of a generated
program, its checkpoints, and a plain-Python model of what a program must return.

A program is a list of operations (JSON, so it is the flow's input and survives a resume):

- ``["step", x, fail]`` a sync checkpoint; ``["astep", x, fail]`` an async one. The body raises
  :class:`PlannedFailure` on its first ``fail`` attempts of a pass; ``fail`` above the retries is a
  permanent failure, which the flow catches and replaces with a fallback value.
- ``["group", [x, ...], fail]`` concurrent checkpoints: ``asyncio.gather`` of async ones in the async
  flow, ``.map()`` or ``.submit()`` of sync ones in the sync flow.
- ``["wait"]`` a wait (answered by the simulation), ``["save"]`` a flow-scope ``kitaru.save``,
  ``["log"]`` a flow-scope ``kitaru.log``, ``["load"]`` ``kitaru.load`` of another execution's
  artifact (in a checkpoint and at flow scope), ``["big", x]`` a checkpoint whose output is a blob
  in the artifact store.

Every body reports to :data:`SIM` first (see :mod:`tests.sim.harness`), which counts body runs per
call and injects crashes inside user code.
"""

from __future__ import annotations

import asyncio
from typing import Any

import kitaru
from kitaru import checkpoint, flow
from kitaru._engine.context import current_call, current_execution

from .harness import SIM

#: Retries of every simulated checkpoint; a ``fail`` above this is a permanent failure.
RETRIES = 2
BIG_SIZE = 70 * 1024  # above the 64 KiB inline limit: the bytes go to the artifact store
SOURCE_DATA = "source-data"


class PlannedFailure(Exception):
    """A failure the generated program asked for."""


def _enter(fail: int) -> None:
    ctx, frame = current_execution(), current_call()
    assert ctx is not None and frame is not None
    attempt = SIM.body_started(ctx, frame.call.call_id)
    if attempt <= fail:
        raise PlannedFailure(f"planned failure {attempt} of {fail}")


@checkpoint(retries=RETRIES, retry_delay=0)
def step(x: int, fail: int, prev: str) -> str:
    _enter(fail)
    kitaru.log(x=x)
    if x % 3 == 0:
        kitaru.save("inner", f"inner{x}")
    return f"{prev[-6:]}>{x}"


@checkpoint(retries=RETRIES, retry_delay=0)
async def astep(x: int, fail: int, prev: str) -> str:
    _enter(fail)
    await asyncio.sleep(0)  # give the other members of a group a turn
    kitaru.log(ax=x)
    return f"{prev[-6:]}~{x}"


@checkpoint
def big(x: int) -> bytes:
    _enter(0)
    return bytes([x % 256]) * BIG_SIZE


@checkpoint
def loader(source: str, prev: str) -> str:
    _enter(0)
    return f"{kitaru.load(source, 'data')}+{prev[-3:]}"


@flow
def source_flow() -> str:
    """The execution whose artifact the simulated flows load."""
    kitaru.save("data", SOURCE_DATA)
    return "ok"


def answer_for(wait_name: str) -> int:
    """What the simulation answers to a wait: a value the flow's result depends on."""
    return int(wait_name.removeprefix("w")) * 7 + 1


@flow
def sim_sync(program: list[list[Any]], source: str) -> list[str]:
    acc = ["start"]
    for i, op in enumerate(program):
        kind = op[0]
        if kind in ("step", "astep"):
            fn = step if kind == "step" else astep
            try:
                acc.append(fn(op[1], op[2], acc[-1]))  # an async checkpoint gives its value here
            except PlannedFailure:
                acc.append(f"fallback{op[1]}")
        elif kind == "group":
            xs, prev = op[1], acc[-1]
            if i % 2:
                acc.extend(step.map(xs, [op[2]] * len(xs), [prev] * len(xs)))
            else:
                futures = [step.submit(x, op[2], prev) for x in xs]
                acc.extend(f.result() for f in futures)
        else:
            _flow_scope(i, op, acc, source)
    return acc


@flow
async def sim_async(program: list[list[Any]], source: str) -> list[str]:
    acc = ["start"]
    for i, op in enumerate(program):
        kind = op[0]
        if kind in ("step", "astep"):
            try:
                acc.append(
                    step(op[1], op[2], acc[-1]) if kind == "step" else await astep(op[1], op[2], acc[-1])
                )
            except PlannedFailure:
                acc.append(f"fallback{op[1]}")
        elif kind == "group":
            prev = acc[-1]
            acc.extend(await asyncio.gather(*(astep(x, op[2], prev) for x in op[1])))
        else:
            _flow_scope(i, op, acc, source)
    return acc


def _flow_scope(i: int, op: list[Any], acc: list[str], source: str) -> None:
    kind = op[0]
    if kind == "wait":
        acc.append(str(kitaru.wait(name=f"w{i}", question=f"answer {i}?", schema=int)))
    elif kind == "save":
        kitaru.save("notes", f"{i}:{acc[-1]}")
    elif kind == "log":
        kitaru.log(**{f"k{i}": acc[-1]})
    elif kind == "load":
        acc.append(loader(source, acc[-1]))
        acc.append(kitaru.load(source, "data")[:6])
    elif kind == "big":
        acc.append(str(len(big(op[1]))))
    else:
        raise AssertionError(f"unknown operation {op!r}")


def model(program: list[list[Any]], flow_kind: str) -> list[str]:
    """What a program returns, computed without kitaru: the oracle of the fault-free run. Groups
    run sync checkpoints (``>``) in the sync flow and async ones (``~``) in the async flow."""
    acc = ["start"]
    group_mark = "~" if flow_kind == "async" else ">"
    for i, op in enumerate(program):
        kind = op[0]
        if kind in ("step", "astep"):
            if op[2] > RETRIES:
                acc.append(f"fallback{op[1]}")
            else:
                acc.append(f"{acc[-1][-6:]}{'>' if kind == 'step' else '~'}{op[1]}")
        elif kind == "group":
            prev = acc[-1]
            acc.extend(f"{prev[-6:]}{group_mark}{x}" for x in op[1])
        elif kind == "wait":
            acc.append(str(answer_for(f"w{i}")))
        elif kind == "load":
            acc.append(f"{SOURCE_DATA}+{acc[-1][-3:]}")
            acc.append(SOURCE_DATA[:6])
        elif kind == "big":
            acc.append(str(BIG_SIZE))
    return acc
