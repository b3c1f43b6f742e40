"""A process that forks after using kitaru (``multiprocessing`` with the fork start method, a
pre-forking server) can use kitaru in the child: the child does not inherit a dead event loop."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

SCRIPT = """
import multiprocessing

from kitaru import checkpoint, flow


@checkpoint
def double(x: int) -> int:
    return 2 * x


@flow
def doubled(x: int) -> int:
    return double(x)


def child(x: int) -> None:
    print("child", doubled.run(x).wait(timeout=60), flush=True)


if __name__ == "__main__":
    print("parent", doubled.run(2).wait(timeout=60), flush=True)
    worker = multiprocessing.get_context("fork").Process(target=child, args=(3,))
    worker.start()
    worker.join(timeout=60)
    if worker.is_alive():  # hung on an event loop it inherited but does not have
        worker.kill()
        worker.join(timeout=30)
    print("child exit", worker.exitcode, flush=True)
"""


def test_a_forked_child_runs_flows_after_its_parent_did(
    tmp_path: Path, subprocess_env: dict[str, str]
) -> None:
    script = tmp_path / "forks.py"
    script.write_text(SCRIPT)
    done = subprocess.run(
        [sys.executable, str(script)], env=subprocess_env, capture_output=True, text=True, timeout=150
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["parent 4", "child 6", "child exit 0"], (done.stdout, done.stderr)
