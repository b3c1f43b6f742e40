"""The signals that unwind a flow body, and the running-loop probe: shared by the execution
context (:mod:`kitaru._engine.context`, which re-exports them) and its group commit."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import asyncio


class _Suspend(BaseException):
    """Unwinds a flow body that waits for input. A BaseException so ``except Exception`` in user
    code cannot swallow it."""


class _Cancelled(BaseException):
    """Unwinds a flow body whose execution was cancelled."""


def running_loop() -> asyncio.AbstractEventLoop | None:
    """The event loop running in this thread, if any (without importing asyncio)."""
    aio = sys.modules.get("asyncio")
    loop: asyncio.AbstractEventLoop | None = None if aio is None else aio._get_running_loop()
    return loop
