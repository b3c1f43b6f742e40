"""The PostgreSQL state store's secrets (``kitaru secrets``): ciphertext only, by name."""

from __future__ import annotations

import time
from typing import Any

from kitaru.store import SecretRecord
from kitaru.store.postgres._connection import _Attempt, _Connection

_COLUMNS = "name, ciphertext, created_at, updated_at"


def _secret_from_row(row: Any) -> SecretRecord:
    return SecretRecord(name=row[0], ciphertext=bytes(row[1]), created_at=row[2], updated_at=row[3])


class _Secrets(_Connection):
    async def put_secret(self, name: str, ciphertext: bytes) -> SecretRecord:
        async def body(conn: Any, attempt: _Attempt) -> SecretRecord:
            now = time.time()
            await conn.execute("INSERT INTO kitaru.commits (token, at) VALUES ($1, $2)", attempt.token, now)
            # An upsert keeps the first `created_at`: replacing a value is not creating a secret.
            row = await conn.fetchrow(
                "INSERT INTO kitaru.secrets (name, ciphertext, created_at, updated_at) "
                "VALUES ($1, $2, $3, $3) ON CONFLICT (name) DO UPDATE SET "
                f"ciphertext = EXCLUDED.ciphertext, updated_at = EXCLUDED.updated_at RETURNING {_COLUMNS}",
                name,
                ciphertext,
                now,
            )
            return _secret_from_row(row)

        return await self._write(body, f"storing secret {name!r}")

    async def get_secret(self, name: str) -> SecretRecord | None:
        rows = await self._read(f"SELECT {_COLUMNS} FROM kitaru.secrets WHERE name = $1", name)
        return _secret_from_row(rows[0]) if rows else None

    async def list_secrets(self) -> list[SecretRecord]:
        rows = await self._read(f"SELECT {_COLUMNS} FROM kitaru.secrets ORDER BY name")
        return [_secret_from_row(r) for r in rows]

    async def delete_secret(self, name: str) -> bool:
        async def body(conn: Any, attempt: _Attempt) -> bool:
            await conn.execute(
                "INSERT INTO kitaru.commits (token, at) VALUES ($1, $2)", attempt.token, time.time()
            )
            deleted = await conn.fetchval("DELETE FROM kitaru.secrets WHERE name = $1 RETURNING 1", name)
            return bool(deleted)

        return await self._write(body, f"deleting secret {name!r}")
