"""A flow that prints in steps the test controls, for ``kitaru executions logs --follow``.

Checkpoint ``first`` writes the execution id to ``$MARK_DIR/id`` and prints a line; ``second``
waits for ``$MARK_DIR/go`` and prints another; ``third`` waits for ``$MARK_DIR/end`` and returns.
Every wait gives up after 120 s, so a broken test cannot leave the process behind for long."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import kitaru
from kitaru import checkpoint, flow

MARKS = Path(os.environ.get("MARK_DIR", "."))


def _await(name: str) -> None:
    deadline = time.monotonic() + 120
    while not (MARKS / name).exists() and time.monotonic() < deadline:
        time.sleep(0.02)


@checkpoint
def first() -> int:
    print("line one")
    (MARKS / "id").write_text(kitaru.current_execution_id())
    return 1


@checkpoint
def second() -> int:
    _await("go")
    print("line two")
    return 2


@checkpoint
def third() -> int:
    _await("end")
    return 3


@flow
def follow_logs() -> int:
    return first() + second() + third()


if __name__ == "__main__":
    handle = follow_logs.run()
    print(handle.exec_id, handle.status, file=sys.stderr, flush=True)
