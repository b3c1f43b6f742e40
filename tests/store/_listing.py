"""What the SQL stores' listing tests share: the filter combinations and the indexes that may
serve each in time order, and a SQLite database as schema version 5 (before listing by time)
left it."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any

#: Each filter combination of list_executions, with the indexes that may serve it in order.
LISTINGS: list[tuple[dict[str, Any], set[str]]] = [
    ({}, {"executions_created"}),
    ({"flow": "flow7"}, {"executions_flow"}),
    ({"status": "waiting"}, {"executions_status"}),
    ({"version": 3}, {"executions_version"}),
    ({"flow": "flow7", "status": "failed"}, {"executions_flow", "executions_status"}),
    ({"flow": "flow8", "version": 3}, {"executions_flow", "executions_version"}),
    ({"status": "running", "version": 3}, {"executions_status", "executions_version"}),
]

#: The executions of :func:`version_5_database`, newest first: a chosen id between generated ones.
VERSION_5_NEWEST_FIRST = ["01BBBB", "order-42", "01AAAA"]


def version_5_database(path: Path) -> None:
    """A SQLite state database at schema version 5, holding three completed executions of flow
    ``f`` created one second apart (:data:`VERSION_5_NEWEST_FIRST`, reversed)."""
    from kitaru.store.sqlite._schema import _MIGRATIONS

    with closing(sqlite3.connect(path)) as conn, conn:
        for script in _MIGRATIONS[:5]:
            conn.executescript(script)
        conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT)")
        conn.execute("INSERT INTO meta VALUES ('schema_version', '5')")
        for exec_id, created in (("01AAAA", 1.0), ("order-42", 2.0), ("01BBBB", 3.0)):
            conn.execute(
                "INSERT INTO executions (id, flow, target, status, created_at, updated_at) "
                "VALUES (?, 'f', 'm:f', 'completed', ?, ?)",
                (exec_id, created, created),
            )
