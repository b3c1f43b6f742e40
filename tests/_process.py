"""Helpers for tests that drive real processes."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any

__all__ = ["wait_for"]


def wait_for(path: Path, proc: subprocess.Popen[Any] | None = None, timeout: float = 60) -> None:
    """Wait until ``path`` exists (a process marks its progress with files); fail at once, with
    what it printed, if ``proc`` exits first."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc is not None and proc.poll() is not None:
            said = proc.communicate(timeout=30)
            raise AssertionError(f"the process exited ({proc.returncode}) before {path} appeared: {said}")
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} did not appear within {timeout} s")
        time.sleep(0.005)
