"""A flow whose every checkpoint output goes to S3 (each is over the 64 KiB inline limit), for the
S3 chaos test. Each run of a checkpoint appends its number to $COUNT_FILE, outside kitaru. The first
time checkpoint $PAUSE_AT runs, it marks $MARK_DIR/paused and waits for $MARK_DIR/go before
returning, so the test can take the S3 server down exactly while that output is being written."""

from __future__ import annotations

import hashlib
import os
import sys
import time
from pathlib import Path

from kitaru import checkpoint, flow


def payload(i: int) -> bytes:
    return hashlib.sha256(str(i).encode()).digest() * 2500  # 80 KB


@checkpoint
def step(i: int) -> bytes:
    with open(os.environ["COUNT_FILE"], "a") as fh:
        fh.write(f"{i}\n")
    marks = Path(os.environ["MARK_DIR"])
    if i == int(os.environ.get("PAUSE_AT", "0")) and not (marks / "paused").exists():
        (marks / "paused").write_text("")
        deadline = time.monotonic() + 60
        while not (marks / "go").exists() and time.monotonic() < deadline:
            time.sleep(0.01)
    return payload(i)


@flow
def s3_chaos(n: int) -> str:
    total = hashlib.sha256()
    for i in range(1, n + 1):
        total.update(step(i))
    return total.hexdigest()


if __name__ == "__main__":
    handle = s3_chaos.run(int(sys.argv[1]))
    try:
        handle.wait(timeout=60)
    except Exception as exc:
        print(f"flow error: {exc}", file=sys.stderr, flush=True)
    print(handle.exec_id, handle.status, flush=True)
