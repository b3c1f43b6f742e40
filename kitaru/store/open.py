"""Open a state store from its URI."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlparse

from kitaru.errors import KitaruConfigError
from kitaru.store import StateStore

__all__ = ["STATE_STORE_SCHEMES", "open_state_store"]

#: URI schemes of the state stores kitaru can open (stack config checks ``state`` against them).
STATE_STORE_SCHEMES = ("sqlite", "postgresql", "postgres", "http", "https")


def open_state_store(uri: str, *, read_only: bool = False) -> StateStore:
    """``sqlite:///abs/path.db`` opens the embedded SQLite store; ``postgresql://`` (or
    ``postgres://``) ``user:password@host:port/database`` the PostgreSQL store.

    ``read_only``: for inspection; the SQLite store then opens without writing anything (no
    migration, no file created), so it works on a read-only home or a full disk."""
    scheme = uri.partition("://")[0].lower()
    if scheme == "sqlite":
        from kitaru.store.sqlite import SQLiteStateStore

        return SQLiteStateStore(Path(unquote(urlparse(uri).path)), read_only=read_only)
    if scheme in {"postgresql", "postgres"}:
        from kitaru.store.postgres import PostgresStateStore

        return PostgresStateStore(uri)
    if scheme in {"http", "https"}:
        # A kitaru team server: the key comes from KITARU_API_KEY (or `kitaru login`).
        from kitaru.remote.store import HttpStateStore

        return HttpStateStore(uri)
    shown = uri.partition("://")[0] + "://..." if "@" in uri else uri  # may hold a password
    raise KitaruConfigError(
        f"unsupported state store URI {shown!r}: use sqlite:///absolute/path.db"
        " or postgresql://user:password@host:port/database, or a kitaru server's https://host:port."
    )
