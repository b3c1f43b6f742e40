"""The SQLite state store's catalog: the checkpoint cache and artifacts by tag."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from kitaru.store import ArtifactRecord, CacheEntry
from kitaru.store.sqlite._connection import _Connection
from kitaru.store.sqlite._executions import _ARTIFACT_COLUMNS, _artifact_from_row

_CACHE_COLUMNS = "key, flow, checkpoint, artifact_id, exec_id, call_id, created_at"


def _entry_from_row(row: Sequence[Any]) -> CacheEntry:
    return CacheEntry(*row)


class _Catalog(_Connection):
    """Cache entries and tagged artifacts."""

    async def get_cache_entry(self, key: str) -> CacheEntry | None:
        rows = self._read(f"SELECT {_CACHE_COLUMNS} FROM cache_entries WHERE key = ?", (key,))
        return _entry_from_row(rows[0]) if rows else None

    async def put_cache_entry(self, entry: CacheEntry) -> CacheEntry:
        with self._write() as cur:
            # The first writer wins: two executions filling the same key at once both hold a
            # valid output, and readers must keep seeing one of them.
            cur.execute(
                f"INSERT OR IGNORE INTO cache_entries ({_CACHE_COLUMNS}) VALUES (?,?,?,?,?,?,?)",
                (
                    entry.key,
                    entry.flow,
                    entry.checkpoint,
                    entry.artifact_id,
                    entry.exec_id,
                    entry.call_id,
                    entry.created_at,
                ),
            )
            row = cur.execute(
                f"SELECT {_CACHE_COLUMNS} FROM cache_entries WHERE key = ?", (entry.key,)
            ).fetchone()
        return _entry_from_row(row)

    async def clear_cache(self, flow: str | None = None) -> int:
        with self._write() as cur:
            if flow is None:
                cur.execute("DELETE FROM cache_entries")
            else:
                cur.execute("DELETE FROM cache_entries WHERE flow = ?", (flow,))
            return cur.rowcount

    async def list_cache_entries(self, flow: str | None = None) -> list[CacheEntry]:
        sql, params = f"SELECT {_CACHE_COLUMNS} FROM cache_entries", ""
        if flow is not None:
            sql, params = sql + " WHERE flow = ?", flow
        rows = self._read(sql + " ORDER BY created_at, key", (params,) if flow is not None else ())
        return [_entry_from_row(r) for r in rows]

    async def find_artifacts(self, *, tag: str, limit: int = 100) -> list[ArtifactRecord]:
        rows = self._read(
            f"SELECT {_ARTIFACT_COLUMNS} FROM artifacts WHERE tags IS NOT NULL AND EXISTS "
            "(SELECT 1 FROM json_each(artifacts.tags) WHERE value = ?) "
            "ORDER BY created_at DESC, id DESC LIMIT ?",
            (tag, limit),
        )
        return [_artifact_from_row(r) for r in rows]
