"""A 16-checkpoint flow for the kill-and-resume test.

Every checkpoint run appends its number to $COUNT_FILE, outside kitaru, so the test can count
real executions. Checkpoint 12 announces itself in $MARK_FILE and then sleeps, so the test can
SIGKILL the process in the middle of it (only while $SLOW_AT is 12).
"""

from __future__ import annotations

import os
import sys
import time

from kitaru import checkpoint, flow


@checkpoint
def step(i: int, acc: int) -> int:
    with open(os.environ["COUNT_FILE"], "a") as fh:
        fh.write(f"{i}\n")
    if i == int(os.environ.get("SLOW_AT", "0")):
        with open(os.environ["MARK_FILE"], "w") as fh:
            fh.write("in")
        time.sleep(60)
    return acc + i


@flow
def sixteen(start: int) -> int:
    acc = start
    for i in range(1, 17):
        acc = step(i, acc)
    return acc


if __name__ == "__main__":
    handle = sixteen.run(int(sys.argv[1]))
    print(handle.exec_id, handle.status, flush=True)
