"""The SQLite state store's secrets (``kitaru secrets``): ciphertext only, by name."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from kitaru.store import SecretRecord
from kitaru.store.sqlite._connection import _Connection

_COLUMNS = "name, ciphertext, created_at, updated_at"


def _secret_from_row(row: Sequence[Any]) -> SecretRecord:
    return SecretRecord(name=row[0], ciphertext=bytes(row[1]), created_at=row[2], updated_at=row[3])


class _Secrets(_Connection):
    async def put_secret(self, name: str, ciphertext: bytes) -> SecretRecord:
        now = time.time()
        with self._write() as cur:
            # An upsert keeps the first `created_at`: replacing a value is not creating a secret.
            cur.execute(
                "INSERT INTO secrets (name, ciphertext, created_at, updated_at) VALUES (?,?,?,?) "
                "ON CONFLICT (name) DO UPDATE SET ciphertext = excluded.ciphertext, "
                "updated_at = excluded.updated_at",
                (name, ciphertext, now, now),
            )
            row = cur.execute(f"SELECT {_COLUMNS} FROM secrets WHERE name = ?", (name,)).fetchone()
        return _secret_from_row(row)

    async def get_secret(self, name: str) -> SecretRecord | None:
        rows = self._read(f"SELECT {_COLUMNS} FROM secrets WHERE name = ?", (name,))
        return _secret_from_row(rows[0]) if rows else None

    async def list_secrets(self) -> list[SecretRecord]:
        return [_secret_from_row(r) for r in self._read(f"SELECT {_COLUMNS} FROM secrets ORDER BY name")]

    async def delete_secret(self, name: str) -> bool:
        with self._write() as cur:
            cur.execute("DELETE FROM secrets WHERE name = ?", (name,))
            return cur.rowcount > 0
