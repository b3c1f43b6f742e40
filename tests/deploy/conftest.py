"""A throwaway project with a flow module, for deployment tests: the module is written to a temp
directory and imported under a name no other test uses, so each test's code is its own."""

from __future__ import annotations

import importlib
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

import pytest

AGENT = """
import kitaru


@kitaru.checkpoint
def draft(topic: str) -> str:
    return "{draft}(" + topic + ")"


@kitaru.flow
def review(topic: str) -> str:
    text = draft(topic)
    if {waits}:
        approved = kitaru.wait(name="approve", question="Approve?", schema=bool)
        return text + (" approved by {draft}" if approved else " rejected")
    return text
"""


def agent_source(draft: str = "v1", *, waits: bool = False) -> str:
    return AGENT.replace("{draft}", draft).replace("{waits}", str(waits))


@pytest.fixture
def project(tmp_path: Path) -> Iterator[Callable[..., ModuleType]]:
    """``project(draft="v1", waits=False)`` writes (or rewrites) the flow module and returns it
    imported (the first call) or as this process holds it (later calls only change the file:
    the process keeps the code it imported, as a running app would)."""
    root = tmp_path / "project"
    root.mkdir()
    name = f"agent_{uuid.uuid4().hex[:10]}"
    loaded: list[ModuleType] = []

    def write(draft: str = "v1", *, waits: bool = False) -> ModuleType:
        (root / f"{name}.py").write_text(agent_source(draft, waits=waits))
        if not loaded:
            sys.path.insert(0, str(root))
            loaded.append(importlib.import_module(name))
        return loaded[0]

    yield write
    if str(root) in sys.path:
        sys.path.remove(str(root))
    sys.modules.pop(name, None)
