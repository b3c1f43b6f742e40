"""The server state store: PostgreSQL through asyncpg, for teams and remote runners.

Every call runs on the caller's event loop: no private loop, no thread hop. An asyncpg pool belongs
to the loop it was made on, and a process may use one store from several loops (kitaru's portal loop
for sync callers, an application's own loop), so the store keeps one pool per running loop, opened
on that loop's first call (the schema is checked once per store, on the first pool); ``aclose()``
closes every pool, each on its own loop, and a loop that shuts down first closes its pool itself
(:mod:`kitaru.store._perloop`).

Concurrency is PostgreSQL's: every write that reads before it writes (commit with a lease check,
lease takeover, suspend, answering a wait, cancel) locks the execution's row with
``SELECT ... FOR UPDATE`` first, so concurrent runners in any number of processes queue on that row
instead of racing. The once-only rule is a partial unique index, as in SQLite.

Connection trouble (the server restarting, a dropped socket) is retried with backoff a bounded
number of times when that is safe: reads always; writes whose transaction never reached COMMIT; and
a write whose connection died after its COMMIT (or its one autocommitted statement) was sent only
once the server shows whether it landed. Every write transaction also inserts a random token into
``kitaru.commits``; after making sure the old connection's backend has ended (so its transaction is
over), the token's presence says "committed". Transaction ids cannot settle this: after a crash the
server may hand an id whose WAL was lost to another transaction.
"""

from __future__ import annotations

from typing import ClassVar

from kitaru.store.postgres._catalog import _Catalog
from kitaru.store.postgres._deployments import _Deployments
from kitaru.store.postgres._executions import _Executions
from kitaru.store.postgres._secrets import _Secrets

__all__ = ["PostgresStateStore"]


class PostgresStateStore(_Executions, _Deployments, _Catalog, _Secrets):
    """A :class:`~kitaru.store.StateStore` in a PostgreSQL database (``postgresql://`` URI).

    Not ``inline``: its calls await the network. Opening it connects to nothing; each event loop's
    first call opens that loop's pool, so a wrong address or password surfaces there.

    ``min_size``/``max_size`` bound the connection pool. Transient connection errors are retried
    ``retries`` times with exponential backoff starting at ``backoff`` seconds (capped at 5 s);
    ``command_timeout`` bounds each statement.
    """

    inline: ClassVar[bool] = False
