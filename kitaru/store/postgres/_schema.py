"""The PostgreSQL state store's schema: its migrations, and checking and applying them when a
store opens its first pool."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from kitaru.errors import KitaruStoreError

if TYPE_CHECKING:
    from kitaru.store.postgres._connection import _Target

#: Held (per transaction) while the schema is checked and migrated, so two processes opening a
#: fresh database at once do not both create it. Any constant works; this one spells "kitaru".
_MIGRATION_LOCK = 0x6B6974617275

# Each entry moves the schema one version forward; the applied version lives in `kitaru.meta`.
#
# Everything lives in the `kitaru` schema so the database may be shared with other applications.
# Ids and names sort bytewise (COLLATE "C"): sortable ids must list in the same order as on SQLite
# whatever the database's locale is, and prefix matches must be case-sensitive.
# The journal is ordered by its bigserial id. `once` holds the call id for once-only kinds and NULL
# for the rest (the kinds are decided in Python, like SQLite's); the unique index covers only the
# non-NULL rows, so it stays small. Artifacts are listed per execution through the journal records
# that reference them (a replay's journal points at its original's outputs). `commits` holds one
# random token per write transaction, read only to settle a write whose answer was lost; rows older
# than an hour are deleted now and then (the BRIN index on `at` keeps that cheap, and costs inserts
# almost nothing).
_MIGRATIONS: list[str] = [
    """
    CREATE TABLE kitaru.executions (
        id TEXT COLLATE "C" PRIMARY KEY,
        flow TEXT COLLATE "C" NOT NULL,
        target TEXT NOT NULL,
        sys_path TEXT,
        status TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        updated_at DOUBLE PRECISION NOT NULL,
        error TEXT,
        result_artifact TEXT,
        original_exec_id TEXT,
        lease_owner TEXT,
        lease_expires_at DOUBLE PRECISION,
        metadata TEXT NOT NULL DEFAULT '{}'
    );
    CREATE INDEX executions_flow ON kitaru.executions (flow, id);
    CREATE INDEX executions_status ON kitaru.executions (status, id);
    CREATE TABLE kitaru.journal (
        id BIGSERIAL PRIMARY KEY,
        exec_id TEXT COLLATE "C" NOT NULL,
        kind TEXT NOT NULL,
        call_id TEXT,
        once TEXT,
        seq INTEGER,
        name TEXT,
        attempt INTEGER,
        artifact_id TEXT,
        data TEXT,
        ts DOUBLE PRECISION NOT NULL
    );
    CREATE INDEX journal_exec ON kitaru.journal (exec_id, id);
    CREATE UNIQUE INDEX journal_once ON kitaru.journal (exec_id, kind, once) WHERE once IS NOT NULL;
    CREATE TABLE kitaru.artifacts (
        id TEXT PRIMARY KEY,
        exec_id TEXT NOT NULL,
        name TEXT NOT NULL,
        version INTEGER NOT NULL,
        type TEXT NOT NULL,
        serializer TEXT NOT NULL,
        data_type TEXT NOT NULL,
        content_hash TEXT NOT NULL,
        size BIGINT NOT NULL,
        call_id TEXT,
        created_at DOUBLE PRECISION NOT NULL,
        inline BYTEA,
        uri TEXT
    );
    CREATE TABLE kitaru.commits (
        token UUID PRIMARY KEY,
        at DOUBLE PRECISION NOT NULL
    );
    CREATE INDEX commits_at ON kitaru.commits USING brin (at);
    """,
    # Deployments (issue 11): versions are immutable rows; a tag is one row per (flow, tag); every
    # move is a row of `tag_moves` written in the move's transaction, which holds a transaction
    # advisory lock on the flow (so version numbers and moves of one flow queue, other flows not).
    """
    CREATE TABLE kitaru.deployments (
        flow TEXT COLLATE "C" NOT NULL,
        version INTEGER NOT NULL,
        target TEXT NOT NULL,
        archive_key TEXT NOT NULL,
        archive_sha256 TEXT NOT NULL,
        created_by TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        image TEXT,
        stack TEXT,
        message TEXT,
        requirements TEXT NOT NULL DEFAULT '{}',
        PRIMARY KEY (flow, version)
    );
    CREATE TABLE kitaru.tags (
        flow TEXT COLLATE "C" NOT NULL,
        tag TEXT COLLATE "C" NOT NULL,
        version INTEGER NOT NULL,
        weight INTEGER,
        updated_at DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (flow, tag)
    );
    CREATE TABLE kitaru.tag_moves (
        id BIGSERIAL PRIMARY KEY,
        flow TEXT COLLATE "C" NOT NULL,
        tag TEXT COLLATE "C" NOT NULL,
        version INTEGER,
        previous INTEGER,
        weight INTEGER,
        action TEXT NOT NULL,
        who TEXT NOT NULL,
        ts DOUBLE PRECISION NOT NULL
    );
    CREATE INDEX tag_moves_flow ON kitaru.tag_moves (flow, tag, id);
    """,
    # The team server's API keys (hashes only; `kitaru server keys`).
    """
    CREATE TABLE kitaru.api_keys (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        key_hash TEXT NOT NULL,
        scopes TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        revoked_at DOUBLE PRECISION
    );
    """,
    # The checkpoint cache and artifact tags (issue 14): a cache entry points at the output
    # artifact of the call that filled it (hits reuse it, no copy); tags are a JSON list on the
    # artifact's own row (NULL when it has none).
    """
    CREATE TABLE kitaru.cache_entries (
        key TEXT COLLATE "C" PRIMARY KEY,
        flow TEXT COLLATE "C" NOT NULL,
        checkpoint TEXT NOT NULL,
        artifact_id TEXT NOT NULL,
        exec_id TEXT NOT NULL,
        call_id TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL
    );
    CREATE INDEX cache_entries_flow ON kitaru.cache_entries (flow);
    ALTER TABLE kitaru.artifacts ADD COLUMN tags TEXT;
    """,
    # Secrets (`kitaru secrets`, issue 14): AES-256-GCM ciphertext only; the key never reaches a store.
    """
    CREATE TABLE kitaru.secrets (
        name TEXT COLLATE "C" PRIMARY KEY,
        ciphertext BYTEA NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        updated_at DOUBLE PRECISION NOT NULL
    );
    """,
    # Answering a wait reads only that wait's records and the execution's cancel (read_wait); the
    # cancel had no index but the execution's whole journal. This one holds a row per cancelled
    # execution, and other journal inserts only test its predicate. Built in the migration's
    # transaction: writes to the journal wait while it is built, once.
    """
    CREATE INDEX journal_cancel ON kitaru.journal (exec_id) WHERE kind = 'cancel_requested';
    """,
    # Executions list newest first by creation time, ties by id, because a caller may choose an
    # id (an idempotency key) that sorts anywhere. Each filter `list_executions` takes gets an
    # index ending in (created_at, id), so a page walks one backwards from the cursor and stops
    # after `limit` rows; combined filters walk one of them and test the others per row. Only
    # rows with a deployment version enter the version index. The (flow, id) and (status, id)
    # indexes served the old id order and nothing else. Built in the migration's transaction, like
    # journal_cancel: writes to executions wait while they are built, once.
    """
    DROP INDEX kitaru.executions_flow;
    DROP INDEX kitaru.executions_status;
    CREATE INDEX executions_created ON kitaru.executions (created_at, id);
    CREATE INDEX executions_flow ON kitaru.executions (flow, created_at, id);
    CREATE INDEX executions_status ON kitaru.executions (status, created_at, id);
    CREATE INDEX executions_version ON kitaru.executions
        ((metadata::jsonb -> 'deployment' ->> 'version'), created_at, id)
        WHERE (metadata::jsonb -> 'deployment' ->> 'version') IS NOT NULL;
    """,
    # Sessions ended by a logout, so every server replica refuses the cookie (each reads the new
    # ones every second, by `ended_at`, stamped with the database's clock). Nonces only, never a
    # cookie; the replica holding the background role deletes a row once its cookie has expired.
    """
    CREATE TABLE kitaru.ended_sessions (
        nonce TEXT COLLATE "C" PRIMARY KEY,
        expires_at DOUBLE PRECISION NOT NULL,
        ended_at DOUBLE PRECISION NOT NULL
    );
    CREATE INDEX ended_sessions_at ON kitaru.ended_sessions (ended_at);
    """,
]


async def migrate(pool: Any, target: _Target) -> None:
    async with pool.acquire() as conn:
        # Checked without the lock first: an up-to-date database needs no privilege to create.
        version = check_version(await schema_version(conn), target)
        if version == len(_MIGRATIONS):
            return
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK)
            await conn.execute(
                "CREATE SCHEMA IF NOT EXISTS kitaru; CREATE TABLE IF NOT EXISTS kitaru.meta "
                "(key TEXT PRIMARY KEY, value TEXT NOT NULL)"
            )
            # Another process may have migrated while this one waited for the lock.
            version = check_version(await schema_version(conn), target)
            for script in _MIGRATIONS[version:]:
                await conn.execute(script)
            await conn.execute(
                "INSERT INTO kitaru.meta (key, value) VALUES ('schema_version', $1) "
                "ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
                str(len(_MIGRATIONS)),
            )


def check_version(version: int, target: _Target) -> int:
    if version > len(_MIGRATIONS):
        raise KitaruStoreError(
            f"the state database {target} has schema version {version}, newer than this "
            f"kitaru understands ({len(_MIGRATIONS)}). Upgrade kitaru."
        )
    return version


async def schema_version(conn: Any) -> int:
    if await conn.fetchval("SELECT to_regclass('kitaru.meta') IS NULL"):
        return 0
    value = await conn.fetchval("SELECT value FROM kitaru.meta WHERE key = 'schema_version'")
    return int(value) if value else 0
