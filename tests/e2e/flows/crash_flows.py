"""Flows for the crash tests: each run of a checkpoint body appends ``<name> <i>`` to $COUNT_FILE,
outside kitaru, so the test counts real runs; the slow parts mark themselves in $MARK_DIR and
sleep (only while $SLOW is 1) so the test can SIGKILL the process at a known point.

    python crash_flows.py chain N     N checkpoints with 80 KB outputs (blobs, not inline); slow at $SLOW_AT
    python crash_flows.py fanout      an async flow: 8 concurrent async checkpoints, 4 fast, 4 slow
    python crash_flows.py hold        a checkpoint, a wait (held with KITARU_WAIT_HOLD), a checkpoint
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import sys
import time
from pathlib import Path

import kitaru
from kitaru import checkpoint, flow

MARKS = Path(os.environ.get("MARK_DIR", "."))
SLOW = os.environ.get("SLOW") == "1"


def count(name: str, i: int) -> None:
    with open(os.environ["COUNT_FILE"], "a") as fh:
        fh.write(f"{name} {i}\n")


def payload(i: int) -> bytes:
    return hashlib.sha256(str(i).encode()).digest() * 2500  # 80 KB: over the 64 KiB inline limit


@checkpoint
def big(i: int) -> bytes:
    count("big", i)
    if SLOW and i == int(os.environ.get("SLOW_AT", "0")):
        (MARKS / "slow").write_text(kitaru.current_execution_id())
        time.sleep(120)
    return payload(i)


@flow
def chain(n: int) -> str:
    total = hashlib.sha256()
    for i in range(1, n + 1):
        total.update(big(i))
    return total.hexdigest()


@checkpoint
async def work(i: int) -> int:
    count("work", i)
    if i >= 4:  # the slow half: still running when the process dies
        (MARKS / f"slow-{i}").write_text(kitaru.current_execution_id())
        if SLOW:
            await asyncio.sleep(120)
    return i * i


@flow
async def fanout() -> int:
    return sum(await asyncio.gather(*(work(i) for i in range(8))))


@checkpoint
def before(topic: str) -> str:
    count("before", 1)
    return f"draft on {topic}"


@checkpoint
def after(text: str) -> str:
    count("after", 1)
    return f"published {text}"


@flow
def hold(topic: str) -> str:
    text = before(topic)
    (MARKS / "holding").write_text(kitaru.current_execution_id())
    if not kitaru.wait(name="approve", question="Publish?", schema=bool):
        return "rejected"
    return after(text)


if __name__ == "__main__":
    mode = sys.argv[1]
    if mode == "chain":
        handle = chain.run(int(sys.argv[2]))
    elif mode == "fanout":
        handle = fanout.run()
    else:
        handle = hold.run("crashes")
    print(handle.exec_id, handle.status, flush=True)
