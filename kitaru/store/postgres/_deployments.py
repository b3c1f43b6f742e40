"""The PostgreSQL state store's deployments, tags and the team server's API keys."""

from __future__ import annotations

import dataclasses
import json
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
from kitaru.store.postgres._connection import _Attempt, _Connection

_DEPLOYMENT_COLUMNS = (
    "flow, version, target, archive_key, archive_sha256, created_by, created_at, image, stack, "
    "message, requirements"
)
_MOVE_COLUMNS = "flow, tag, version, previous, weight, action, who, ts, id"
#: Namespaces the per-flow advisory lock of tag moves (the two-key form keeps it apart from
#: `_MIGRATION_LOCK` and from other applications' one-key locks).
_DEPLOY_LOCK_SPACE = 0x6B69

_KEY_COLUMNS = "id, name, key_hash, scopes, created_at, revoked_at"


def _key_from_row(row: Any) -> ApiKeyRecord:
    return ApiKeyRecord(row[0], row[1], row[2], json.loads(row[3]), row[4], row[5])


class _Deployments(_Connection):
    """Deployments and their tags (moves serialize on a per-flow advisory lock), and API keys."""

    # -- deployments ----------------------------------------------------------------------------

    @staticmethod
    async def _move(
        conn: Any, attempt: _Attempt, flow: str, requests: Sequence[TagRequest], who: str, action: str | None
    ) -> list[TagMove]:
        """Plan and write tag moves in the caller's transaction, which holds the flow's lock."""
        versions = [
            r[0] for r in await conn.fetch("SELECT version FROM kitaru.deployments WHERE flow = $1", flow)
        ]
        tags = {
            r[0]: (r[1], r[2])
            for r in await conn.fetch("SELECT tag, version, weight FROM kitaru.tags WHERE flow = $1", flow)
        }
        histories: dict[str, list[int | None]] = {}
        for req in requests:
            if req.action == "rollback" and req.version is None:
                rows = await conn.fetch(
                    "SELECT version FROM kitaru.tag_moves WHERE flow = $1 AND tag = $2 ORDER BY id",
                    flow,
                    req.tag,
                )
                histories[req.tag] = [r[0] for r in rows]
        moves = _rules.plan_tag_moves(
            flow,
            requests,
            versions,
            tags,
            lambda tag: histories.get(tag, []),
            who=who,
            now=time.time(),
            action=action,
        )
        for m in moves:
            if m.version is None:
                await conn.execute("DELETE FROM kitaru.tags WHERE flow = $1 AND tag = $2", flow, m.tag)
            else:
                await conn.execute(
                    "INSERT INTO kitaru.tags (flow, tag, version, weight, updated_at) "
                    "VALUES ($1,$2,$3,$4,$5) "
                    "ON CONFLICT (flow, tag) DO UPDATE SET version = EXCLUDED.version, "
                    "weight = EXCLUDED.weight, updated_at = EXCLUDED.updated_at",
                    flow,
                    m.tag,
                    m.version,
                    m.weight,
                    m.ts,
                )
            m.id = await conn.fetchval(
                "INSERT INTO kitaru.tag_moves (flow, tag, version, previous, weight, action, who, ts) "
                "VALUES ($1,$2,$3,$4,$5,$6,$7,$8) RETURNING id",
                flow,
                m.tag,
                m.version,
                m.previous,
                m.weight,
                m.action,
                m.who,
                m.ts,
            )
        return moves

    @staticmethod
    async def _lock_flow(conn: Any, attempt: _Attempt, flow: str) -> None:
        """Take the flow's deployment lock for this transaction and record its token."""
        await conn.execute("SELECT pg_advisory_xact_lock($1, hashtext($2))", _DEPLOY_LOCK_SPACE, flow)
        await conn.execute(
            "INSERT INTO kitaru.commits (token, at) VALUES ($1, $2)", attempt.token, time.time()
        )

    async def create_deployment(
        self, record: DeploymentRecord, *, tag: str | None = None, weight: int | None = None
    ) -> tuple[DeploymentRecord, list[TagMove]]:
        d = record

        async def body(conn: Any, attempt: _Attempt) -> tuple[DeploymentRecord, list[TagMove]]:
            await self._lock_flow(conn, attempt, d.flow)
            version = (
                await conn.fetchval("SELECT MAX(version) FROM kitaru.deployments WHERE flow = $1", d.flow)
                or 0
            ) + 1
            await conn.execute(
                f"INSERT INTO kitaru.deployments ({_DEPLOYMENT_COLUMNS}) "
                "VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11)",
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
            )
            requests = _rules.deploy_requests(tag, weight, version, version == 1)
            moves = await self._move(conn, attempt, d.flow, requests, d.created_by, "deploy")
            return dataclasses.replace(d, version=version), moves

        return await self._write(body, f"deploying flow {d.flow}")

    async def get_deployment(self, flow: str, version: int) -> DeploymentRecord | None:
        rows = await self._read(
            f"SELECT {_DEPLOYMENT_COLUMNS} FROM kitaru.deployments WHERE flow = $1 AND version = $2",
            flow,
            version,
        )
        return _deployment_from_row(rows[0]) if rows else None

    async def list_deployments(self, flow: str | None = None) -> list[DeploymentRecord]:
        where, params = ("WHERE flow = $1", [flow]) if flow is not None else ("", [])
        rows = await self._read(
            f"SELECT {_DEPLOYMENT_COLUMNS} FROM kitaru.deployments {where} ORDER BY flow, version", *params
        )
        return [_deployment_from_row(r) for r in rows]

    async def list_tags(self, flow: str | None = None) -> list[TagRecord]:
        where, params = ("WHERE flow = $1", [flow]) if flow is not None else ("", [])
        rows = await self._read(
            f"SELECT flow, tag, version, weight, updated_at FROM kitaru.tags {where} ORDER BY flow, tag",
            *params,
        )
        return [TagRecord(*r) for r in rows]

    async def move_tags(self, flow: str, requests: Sequence[TagRequest], *, who: str) -> list[TagMove]:
        async def body(conn: Any, attempt: _Attempt) -> list[TagMove]:
            await self._lock_flow(conn, attempt, flow)
            return await self._move(conn, attempt, flow, requests, who, None)

        return await self._write(body, f"moving tags of flow {flow}")

    async def tag_history(self, flow: str, tag: str | None = None) -> list[TagMove]:
        sql = f"SELECT {_MOVE_COLUMNS} FROM kitaru.tag_moves WHERE flow = $1"
        params: list[Any] = [flow]
        if tag is not None:
            sql += " AND tag = $2"
            params.append(tag)
        return [TagMove(*r) for r in await self._read(sql + " ORDER BY id", *params)]

    # -- API keys of the team server ----------------------------------------------------------

    async def create_api_key(self, key: ApiKeyRecord) -> None:
        async def body(conn: Any, attempt: _Attempt) -> None:
            await conn.execute(
                "INSERT INTO kitaru.commits (token, at) VALUES ($1, $2)", attempt.token, time.time()
            )
            inserted = await conn.fetchval(
                "INSERT INTO kitaru.api_keys (id, name, key_hash, scopes, created_at, revoked_at) "
                "VALUES ($1,$2,$3,$4,$5,$6) ON CONFLICT DO NOTHING RETURNING 1",
                key.id,
                key.name,
                key.key_hash,
                json.dumps(key.scopes),
                key.created_at,
                key.revoked_at,
            )
            if not inserted:
                raise _rules.key_exists(key.name)

        await self._write(body, f"creating API key {key.name!r}")

    async def get_api_key(self, key_id: str) -> ApiKeyRecord | None:
        rows = await self._read(f"SELECT {_KEY_COLUMNS} FROM kitaru.api_keys WHERE id = $1", key_id)
        return _key_from_row(rows[0]) if rows else None

    async def list_api_keys(self) -> list[ApiKeyRecord]:
        rows = await self._read(f"SELECT {_KEY_COLUMNS} FROM kitaru.api_keys ORDER BY created_at, id")
        return [_key_from_row(r) for r in rows]

    async def revoke_api_key(self, name: str) -> ApiKeyRecord:
        async def body(conn: Any, attempt: _Attempt) -> ApiKeyRecord:
            await conn.execute(
                "INSERT INTO kitaru.commits (token, at) VALUES ($1, $2)", attempt.token, time.time()
            )
            await conn.execute(
                "UPDATE kitaru.api_keys SET revoked_at = $1 WHERE name = $2 AND revoked_at IS NULL",
                time.time(),
                name,
            )
            row = await conn.fetchrow(f"SELECT {_KEY_COLUMNS} FROM kitaru.api_keys WHERE name = $1", name)
            if row is None:
                raise _rules.no_such_key(name)
            return _key_from_row(row)

        return await self._write(body, f"revoking API key {name!r}")

    # -- ended sessions (logouts), shared by every server replica ---------------------------

    async def end_session(self, nonce: str, expires_at: float) -> None:
        # One idempotent statement (a retry after a lost answer inserts nothing more), so it
        # needs no commit token. Stamped with the database's clock: replicas compare stamps
        # with one another, and their own clocks may disagree.
        async def body(conn: Any, attempt: _Attempt) -> None:
            await conn.execute(
                "INSERT INTO kitaru.ended_sessions (nonce, expires_at, ended_at) "
                "VALUES ($1, $2, extract(epoch FROM clock_timestamp())) ON CONFLICT DO NOTHING",
                nonce,
                expires_at,
            )

        await self._write(body, "recording a logout", single=True)

    async def ended_sessions(self, since: float) -> list[EndedSession]:
        rows = await self._read(
            "SELECT nonce, expires_at, ended_at FROM kitaru.ended_sessions WHERE ended_at >= $1 "
            "ORDER BY ended_at, nonce",
            since,
        )
        return [EndedSession(*r) for r in rows]

    async def prune_ended_sessions(self, before: float) -> int:
        async def body(conn: Any, attempt: _Attempt) -> int:
            status = await conn.execute("DELETE FROM kitaru.ended_sessions WHERE expires_at < $1", before)
            return int(status.split()[-1])

        return await self._write(body, "forgetting expired logouts", single=True)


def _deployment_from_row(row: Any) -> DeploymentRecord:
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
