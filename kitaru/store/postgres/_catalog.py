"""The PostgreSQL state store's catalog: the checkpoint cache and artifacts by tag."""

from __future__ import annotations

import time
from typing import Any

from kitaru.store import ArtifactRecord, CacheEntry
from kitaru.store.postgres._connection import _Attempt, _Connection
from kitaru.store.postgres._statements import _ARTIFACT_COLUMNS, _artifact_from_row

_CACHE_COLUMNS = "key, flow, checkpoint, artifact_id, exec_id, call_id, created_at"


def _entry_from_row(row: Any) -> CacheEntry:
    return CacheEntry(*row)


class _Catalog(_Connection):
    """Cache entries and tagged artifacts."""

    async def get_cache_entry(self, key: str) -> CacheEntry | None:
        rows = await self._read(f"SELECT {_CACHE_COLUMNS} FROM kitaru.cache_entries WHERE key = $1", key)
        return _entry_from_row(rows[0]) if rows else None

    async def put_cache_entry(self, entry: CacheEntry) -> CacheEntry:
        async def body(conn: Any, attempt: _Attempt) -> CacheEntry:
            await conn.execute(
                "INSERT INTO kitaru.commits (token, at) VALUES ($1, $2)", attempt.token, time.time()
            )
            # The first writer wins (see the SQLite store); a retried insert finds its own row.
            await conn.execute(
                f"INSERT INTO kitaru.cache_entries ({_CACHE_COLUMNS}) VALUES ($1,$2,$3,$4,$5,$6,$7) "
                "ON CONFLICT (key) DO NOTHING",
                entry.key,
                entry.flow,
                entry.checkpoint,
                entry.artifact_id,
                entry.exec_id,
                entry.call_id,
                entry.created_at,
            )
            row = await conn.fetchrow(
                f"SELECT {_CACHE_COLUMNS} FROM kitaru.cache_entries WHERE key = $1", entry.key
            )
            return _entry_from_row(row)

        return await self._write(body, f"caching the output of {entry.checkpoint!r}")

    async def clear_cache(self, flow: str | None = None) -> int:
        async def body(conn: Any, attempt: _Attempt) -> int:
            await conn.execute(
                "INSERT INTO kitaru.commits (token, at) VALUES ($1, $2)", attempt.token, time.time()
            )
            if flow is None:
                status = await conn.execute("DELETE FROM kitaru.cache_entries")
            else:
                status = await conn.execute("DELETE FROM kitaru.cache_entries WHERE flow = $1", flow)
            return int(str(status).rpartition(" ")[2] or 0)

        return await self._write(body, "clearing the checkpoint cache")

    async def list_cache_entries(self, flow: str | None = None) -> list[CacheEntry]:
        sql, params = f"SELECT {_CACHE_COLUMNS} FROM kitaru.cache_entries", []
        if flow is not None:
            sql, params = sql + " WHERE flow = $1", [flow]
        return [_entry_from_row(r) for r in await self._read(sql + " ORDER BY created_at, key", *params)]

    async def find_artifacts(self, *, tag: str, limit: int = 100) -> list[ArtifactRecord]:
        rows = await self._read(
            f"SELECT {_ARTIFACT_COLUMNS} FROM kitaru.artifacts WHERE tags IS NOT NULL "
            "AND tags::jsonb ? $1 ORDER BY created_at DESC, id DESC LIMIT $2",
            tag,
            limit,
        )
        return [_artifact_from_row(r) for r in rows]
