"""The SQLite state store's schema: one migration per version."""

from __future__ import annotations

# Each entry moves the schema one version forward; the applied version lives in `meta`.
#
# Every b-tree a commit touches costs a WAL page write (~15 us here), and a checkpoint commit is
# the hot path, so the layout keeps them few: the journal's one index serves both lookups by
# execution and the once-only rule (`once` holds the call id for once-only kinds and NULL for the
# rest, and NULLs never collide in a UNIQUE index); artifacts are one clustered b-tree, listed
# per execution through the journal records that reference them.
_MIGRATIONS: list[str] = [
    """
    CREATE TABLE executions (
        id TEXT PRIMARY KEY,
        flow TEXT NOT NULL,
        target TEXT NOT NULL,
        sys_path TEXT,
        status TEXT NOT NULL,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        error TEXT,
        result_artifact TEXT,
        original_exec_id TEXT,
        lease_owner TEXT,
        lease_expires_at REAL,
        metadata TEXT NOT NULL DEFAULT '{}'
    );
    CREATE INDEX executions_flow ON executions (flow, id);
    CREATE INDEX executions_status ON executions (status, id);
    CREATE TABLE journal (
        id INTEGER PRIMARY KEY,
        exec_id TEXT NOT NULL,
        kind TEXT NOT NULL,
        call_id TEXT,
        once TEXT,
        seq INTEGER,
        name TEXT,
        attempt INTEGER,
        artifact_id TEXT,
        data TEXT,
        ts REAL NOT NULL
    );
    CREATE UNIQUE INDEX journal_exec ON journal (exec_id, kind, once);
    CREATE TABLE artifacts (
        id TEXT PRIMARY KEY,
        exec_id TEXT NOT NULL,
        name TEXT NOT NULL,
        version INTEGER NOT NULL,
        type TEXT NOT NULL,
        serializer TEXT NOT NULL,
        data_type TEXT NOT NULL,
        content_hash TEXT NOT NULL,
        size INTEGER NOT NULL,
        call_id TEXT,
        created_at REAL NOT NULL,
        inline BLOB,
        uri TEXT
    ) WITHOUT ROWID;
    """,
    # Deployments (issue 11): versions are immutable rows; a tag is one row per (flow, tag); every
    # move of a tag is a row of `tag_moves`, written in the same transaction as the move.
    """
    CREATE TABLE deployments (
        flow TEXT NOT NULL,
        version INTEGER NOT NULL,
        target TEXT NOT NULL,
        archive_key TEXT NOT NULL,
        archive_sha256 TEXT NOT NULL,
        created_by TEXT NOT NULL,
        created_at REAL NOT NULL,
        image TEXT,
        stack TEXT,
        message TEXT,
        requirements TEXT NOT NULL DEFAULT '{}',
        PRIMARY KEY (flow, version)
    ) WITHOUT ROWID;
    CREATE TABLE tags (
        flow TEXT NOT NULL,
        tag TEXT NOT NULL,
        version INTEGER NOT NULL,
        weight INTEGER,
        updated_at REAL NOT NULL,
        PRIMARY KEY (flow, tag)
    ) WITHOUT ROWID;
    CREATE TABLE tag_moves (
        id INTEGER PRIMARY KEY,
        flow TEXT NOT NULL,
        tag TEXT NOT NULL,
        version INTEGER,
        previous INTEGER,
        weight INTEGER,
        action TEXT NOT NULL,
        who TEXT NOT NULL,
        ts REAL NOT NULL
    );
    CREATE INDEX tag_moves_flow ON tag_moves (flow, tag, id);
    """,
    # The team server's API keys (hashes only; `kitaru server keys`).
    """
    CREATE TABLE api_keys (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        key_hash TEXT NOT NULL,
        scopes TEXT NOT NULL,
        created_at REAL NOT NULL,
        revoked_at REAL
    );
    """,
    # The checkpoint cache and artifact tags (issue 14): a cache entry points at the output
    # artifact of the call that filled it (hits reuse it, no copy); tags are a JSON list on the
    # artifact's own row (NULL when it has none, so untagged commits write nothing more).
    """
    CREATE TABLE cache_entries (
        key TEXT PRIMARY KEY,
        flow TEXT NOT NULL,
        checkpoint TEXT NOT NULL,
        artifact_id TEXT NOT NULL,
        exec_id TEXT NOT NULL,
        call_id TEXT NOT NULL,
        created_at REAL NOT NULL
    ) WITHOUT ROWID;
    CREATE INDEX cache_entries_flow ON cache_entries (flow);
    ALTER TABLE artifacts ADD COLUMN tags TEXT;
    """,
    # Secrets (`kitaru secrets`, issue 14): AES-256-GCM ciphertext only; the key never reaches a store.
    """
    CREATE TABLE secrets (
        name TEXT PRIMARY KEY,
        ciphertext BLOB NOT NULL,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL
    ) WITHOUT ROWID;
    """,
    # Executions list newest first by creation time, ties by id, because a caller may choose an
    # id (an idempotency key) that sorts anywhere. Each filter `list_executions` takes gets an
    # index ending in (created_at, id), so a page walks one index from the cursor and stops after
    # `limit` rows; combined filters walk one of them and test the others per row. Only rows with
    # a deployment version enter the version index (the others would only make it larger).
    # The (flow, id) and (status, id) indexes served the old id order and nothing else.
    """
    DROP INDEX executions_flow;
    DROP INDEX executions_status;
    CREATE INDEX executions_created ON executions (created_at, id);
    CREATE INDEX executions_flow ON executions (flow, created_at, id);
    CREATE INDEX executions_status ON executions (status, created_at, id);
    CREATE INDEX executions_version ON executions
        (json_extract(metadata, '$.deployment.version'), created_at, id)
        WHERE json_extract(metadata, '$.deployment.version') IS NOT NULL;
    """,
    # Sessions ended by a logout, so every server process on the database refuses the cookie
    # (each reads the new ones every second, by `ended_at`). Nonces only, never a cookie; a row
    # goes once its cookie has expired anyway. Only the server reads it, and it opens the store
    # to write (so migrates first): a read-only open of a database without it stays valid.
    """
    CREATE TABLE ended_sessions (
        nonce TEXT PRIMARY KEY,
        expires_at REAL NOT NULL,
        ended_at REAL NOT NULL
    ) WITHOUT ROWID;
    CREATE INDEX ended_sessions_at ON ended_sessions (ended_at);
    """,
]

#: The oldest schema version a read-only store reads without migrating it: the migrations after
#: it only add or replace indexes, so its tables are the ones this kitaru queries (lists are then
#: sorted rather than read in index order). Without this, the first `kitaru executions list` after
#: an upgrade refused to read until some command had written. A migration that changes a table
#: moves it to that migration's version; one that adds a table only a writer reads (migration 7,
#: `ended_sessions`, read by the server alone) does not.
READABLE_FROM = 5
