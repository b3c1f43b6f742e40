"""The embedded state store: one SQLite file in WAL mode.

WAL with ``synchronous=NORMAL`` survives a killed process (the case kitaru exists for) without an
fsync per commit; ``KITARU_SQLITE_SYNC=FULL`` adds the fsync for power-loss durability. Writes use
``BEGIN IMMEDIATE`` so concurrent processes queue on the write lock instead of failing a lock upgrade.
"""

from __future__ import annotations

from typing import ClassVar

from kitaru.store._rules import lease_holder_alive
from kitaru.store.sqlite._catalog import _Catalog
from kitaru.store.sqlite._deployments import _Deployments
from kitaru.store.sqlite._executions import _Executions
from kitaru.store.sqlite._secrets import _Secrets

__all__ = ["SQLiteStateStore", "lease_holder_alive"]


class SQLiteStateStore(_Executions, _Deployments, _Catalog, _Secrets):
    """A :class:`~kitaru.store.StateStore` in one SQLite database file."""

    inline: ClassVar[bool] = True
