"""Flows for the lease and recovery tests.

Every checkpoint run appends its name to $COUNT_FILE, outside kitaru, so a test counts real runs.
``first`` marks $MARK_FILE, then holds until $RELEASE_FILE exists (a test kills or races it there).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import kitaru
from kitaru import checkpoint, flow


def _count(name: str) -> None:
    with open(os.environ["COUNT_FILE"], "a") as fh:
        fh.write(f"{name}\n")


@checkpoint
def first() -> int:
    _count("first")
    Path(os.environ["MARK_FILE"]).write_text("in")
    release = Path(os.environ["RELEASE_FILE"])
    deadline = time.monotonic() + 120
    while not release.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    return 1


@checkpoint
def second(x: int) -> int:
    _count("second")
    return x + 1


@flow
def held(x: int) -> int:
    return second(first()) + x


@flow
def approval(x: int) -> str:
    second(x)
    timeout = float(os.environ.get("WAIT_TIMEOUT", "3600"))
    try:
        return "approved" if kitaru.wait(name="approve", schema=bool, expires_in=timeout) else "no"
    except kitaru.KitaruWaitTimeoutError:
        return "timed out"


if __name__ == "__main__":
    target = held if sys.argv[1] == "held" else approval
    handle = target.run(0)
    print(handle.exec_id, handle.status, flush=True)
