"""Each test gets its own kitaru home and config dir, and fresh runtimes."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from kitaru._engine.runtime import close_stack_runtimes, set_runtime


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("KITARU_HOME", str(tmp_path / "kitaru-home"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    for name in [n for n in os.environ if n.startswith(("KITARU_STACK", "KITARU_CONFIG"))]:
        monkeypatch.delenv(name)
    set_runtime(None)
    yield
    previous = set_runtime(None)
    if previous is not None:
        previous.close()
    close_stack_runtimes()
