"""The SQLite state store's deployments, tags and the team server's API keys."""

from __future__ import annotations

import dataclasses
import json
import sqlite3
import time
from collections.abc import Sequence
from typing import Any

from kitaru.store import (
    ApiKeyRecord,
    DeploymentRecord,
    EndedSession,
    TagMove,
    TagRecord,
    TagRequest,
    _rules,
)
from kitaru.store.sqlite._connection import _Connection

_DEPLOYMENT_COLUMNS = (
    "flow, version, target, archive_key, archive_sha256, created_by, created_at, image, stack, "
    "message, requirements"
)
_MOVE_COLUMNS = "flow, tag, version, previous, weight, action, who, ts, id"


def _deployment_from_row(row: Sequence[Any]) -> DeploymentRecord:
    return DeploymentRecord(
        flow=row[0],
        version=row[1],
        target=row[2],
        archive_key=row[3],
        archive_sha256=row[4],
        created_by=row[5],
        created_at=row[6],
        image=row[7],
        stack=row[8],
        message=row[9],
        requirements=json.loads(row[10]),
    )


def _move_from_row(row: Sequence[Any]) -> TagMove:
    return TagMove(*row)


_KEY_COLUMNS = "id, name, key_hash, scopes, created_at, revoked_at"


def _key_from_row(row: Sequence[Any]) -> ApiKeyRecord:
    return ApiKeyRecord(row[0], row[1], row[2], json.loads(row[3]), row[4], row[5])


class _Deployments(_Connection):
    """Deployments and their tags, and API keys."""

    # -- deployments ------------------------------------------------------------------------

    @staticmethod
    def _move(
        cur: sqlite3.Cursor, flow: str, requests: Sequence[TagRequest], who: str, action: str | None
    ) -> list[TagMove]:
        """Plan and write tag moves inside the caller's write transaction (which holds SQLite's
        one write lock, so nothing read here changes before the writes)."""
        versions = [r[0] for r in cur.execute("SELECT version FROM deployments WHERE flow = ?", (flow,))]
        tags = {
            r[0]: (r[1], r[2])
            for r in cur.execute("SELECT tag, version, weight FROM tags WHERE flow = ?", (flow,))
        }

        def history(tag: str) -> list[int | None]:
            rows = cur.execute(
                "SELECT version FROM tag_moves WHERE flow = ? AND tag = ? ORDER BY id", (flow, tag)
            ).fetchall()
            return [r[0] for r in rows]

        moves = _rules.plan_tag_moves(
            flow, requests, versions, tags, history, who=who, now=time.time(), action=action
        )
        for m in moves:
            if m.version is None:
                cur.execute("DELETE FROM tags WHERE flow = ? AND tag = ?", (flow, m.tag))
            else:
                cur.execute(
                    "INSERT OR REPLACE INTO tags (flow, tag, version, weight, updated_at) VALUES (?,?,?,?,?)",
                    (flow, m.tag, m.version, m.weight, m.ts),
                )
            cur.execute(
                "INSERT INTO tag_moves (flow, tag, version, previous, weight, action, who, ts) "
                "VALUES (?,?,?,?,?,?,?,?)",
                (flow, m.tag, m.version, m.previous, m.weight, m.action, m.who, m.ts),
            )
            m.id = cur.lastrowid
        return moves

    async def create_deployment(
        self, record: DeploymentRecord, *, tag: str | None = None, weight: int | None = None
    ) -> tuple[DeploymentRecord, list[TagMove]]:
        d = record
        with self._write() as cur:
            row = cur.execute("SELECT MAX(version) FROM deployments WHERE flow = ?", (d.flow,)).fetchone()
            version = (row[0] or 0) + 1
            cur.execute(
                f"INSERT INTO deployments ({_DEPLOYMENT_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                (
                    d.flow,
                    version,
                    d.target,
                    d.archive_key,
                    d.archive_sha256,
                    d.created_by,
                    d.created_at,
                    d.image,
                    d.stack,
                    d.message,
                    json.dumps(d.requirements),
                ),
            )
            requests = _rules.deploy_requests(tag, weight, version, version == 1)
            moves = self._move(cur, d.flow, requests, d.created_by, "deploy")
        return dataclasses.replace(d, version=version), moves

    async def get_deployment(self, flow: str, version: int) -> DeploymentRecord | None:
        rows = self._read(
            f"SELECT {_DEPLOYMENT_COLUMNS} FROM deployments WHERE flow = ? AND version = ?", (flow, version)
        )
        return _deployment_from_row(rows[0]) if rows else None

    async def list_deployments(self, flow: str | None = None) -> list[DeploymentRecord]:
        where, params = ("WHERE flow = ?", (flow,)) if flow is not None else ("", ())
        rows = self._read(
            f"SELECT {_DEPLOYMENT_COLUMNS} FROM deployments {where} ORDER BY flow, version", params
        )
        return [_deployment_from_row(r) for r in rows]

    async def list_tags(self, flow: str | None = None) -> list[TagRecord]:
        where, params = ("WHERE flow = ?", (flow,)) if flow is not None else ("", ())
        rows = self._read(
            f"SELECT flow, tag, version, weight, updated_at FROM tags {where} ORDER BY flow, tag", params
        )
        return [TagRecord(*r) for r in rows]

    async def move_tags(self, flow: str, requests: Sequence[TagRequest], *, who: str) -> list[TagMove]:
        with self._write() as cur:
            return self._move(cur, flow, requests, who, None)

    async def tag_history(self, flow: str, tag: str | None = None) -> list[TagMove]:
        sql = f"SELECT {_MOVE_COLUMNS} FROM tag_moves WHERE flow = ?"
        params: tuple[Any, ...] = (flow,)
        if tag is not None:
            sql, params = sql + " AND tag = ?", (flow, tag)
        return [_move_from_row(r) for r in self._read(sql + " ORDER BY id", params)]

    # -- API keys of the team server ----------------------------------------------------------

    async def create_api_key(self, key: ApiKeyRecord) -> None:
        with self._write() as cur:
            try:
                cur.execute(
                    "INSERT INTO api_keys (id, name, key_hash, scopes, created_at, revoked_at) "
                    "VALUES (?,?,?,?,?,?)",
                    (key.id, key.name, key.key_hash, json.dumps(key.scopes), key.created_at, key.revoked_at),
                )
            except sqlite3.IntegrityError:
                raise _rules.key_exists(key.name) from None

    async def get_api_key(self, key_id: str) -> ApiKeyRecord | None:
        rows = self._read(f"SELECT {_KEY_COLUMNS} FROM api_keys WHERE id = ?", (key_id,))
        return _key_from_row(rows[0]) if rows else None

    async def list_api_keys(self) -> list[ApiKeyRecord]:
        rows = self._read(f"SELECT {_KEY_COLUMNS} FROM api_keys ORDER BY created_at, id")
        return [_key_from_row(r) for r in rows]

    async def revoke_api_key(self, name: str) -> ApiKeyRecord:
        with self._write() as cur:
            cur.execute(
                "UPDATE api_keys SET revoked_at = ? WHERE name = ? AND revoked_at IS NULL",
                (time.time(), name),
            )
            row = cur.execute(f"SELECT {_KEY_COLUMNS} FROM api_keys WHERE name = ?", (name,)).fetchone()
        if row is None:
            raise _rules.no_such_key(name)
        return _key_from_row(row)

    # -- ended sessions (logouts), shared by every server process on this database ------------

    async def end_session(self, nonce: str, expires_at: float) -> None:
        with self._write() as cur:
            cur.execute(
                "INSERT OR IGNORE INTO ended_sessions (nonce, expires_at, ended_at) VALUES (?,?,?)",
                (nonce, expires_at, time.time()),
            )

    async def ended_sessions(self, since: float) -> list[EndedSession]:
        rows = self._read(
            "SELECT nonce, expires_at, ended_at FROM ended_sessions WHERE ended_at >= ? "
            "ORDER BY ended_at, nonce",
            (since,),
        )
        return [EndedSession(*r) for r in rows]

    async def prune_ended_sessions(self, before: float) -> int:
        with self._write() as cur:
            cur.execute("DELETE FROM ended_sessions WHERE expires_at < ?", (before,))
            return int(cur.rowcount)
