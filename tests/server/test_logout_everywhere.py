"""A logout with real server processes: a copied session cookie logged out through one replica
(or one `--workers` process) is refused by every other within about a second, as a revoked key
is; it is not only the process that served the logout that forgets it."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from kitaru._ids import new_id
from tests.server.conftest import ServerProcess, create_key

pytestmark = pytest.mark.e2e

#: What a logout may take to reach another process: the one-second pull, and a margin.
BOUND = 2.0


def login(url: str, key: str) -> str:
    response = httpx.post(url + "/login", data={"key": key}, timeout=30)
    assert response.status_code == 200, response.text
    return str(response.cookies["kitaru_session"])


def session_status(url: str, cookie: str) -> int:
    """The status of a session request over a connection of its own (with `--workers`, each new
    connection goes to whichever worker accepts it)."""
    headers = {"Cookie": f"kitaru_session={cookie}"}
    return httpx.get(url + "/api/v1/session", headers=headers, timeout=30).status_code


def logout(url: str, cookie: str) -> None:
    response = httpx.post(url + "/logout", headers={"Cookie": f"kitaru_session={cookie}"}, timeout=30)
    assert response.status_code == 200, response.text


def refused_within(url: str, cookie: str, bound: float, in_a_row: int = 1) -> float:
    """Poll until ``in_a_row`` requests in a row with ``cookie`` are refused; how long it took.
    Fails once ``bound`` seconds pass without that."""
    started, streak, seen = time.monotonic(), 0, []
    while streak < in_a_row:
        status = session_status(url, cookie)
        seen.append(status)
        streak = streak + 1 if status == 401 else 0
        if streak < in_a_row and time.monotonic() - started > bound:
            raise AssertionError(f"the logged-out cookie still worked after {bound} s: {seen}")
    return time.monotonic() - started


def test_a_logout_through_one_replica_is_refused_by_the_other(
    kitaru_cli: list[str], server_env: dict[str, str], postgres_dsn: str, tmp_path: Path
) -> None:
    env = {**server_env, "KITARU_STACK__STATE": postgres_dsn}
    key = create_key(kitaru_cli, env, postgres_dsn, f"browser-{new_id()}", "read")
    # The server's own default tick (1 s), not the tests' faster one.
    replicas = [
        ServerProcess(kitaru_cli, env, postgres_dsn, tmp_path / f"replica{i}.log", tick=1.0) for i in (1, 2)
    ]
    late: ServerProcess | None = None
    try:
        one, other = (r.url for r in replicas)
        cookie = login(one, key)
        kept = login(one, key)  # a second session of the same key, never logged out
        assert session_status(one, cookie) == 200
        assert session_status(other, cookie) == 200  # the copy works on the other replica

        logout(one, cookie)
        assert session_status(one, cookie) == 401  # at once where it was served
        took = refused_within(other, cookie, BOUND)
        assert took < BOUND

        # The logout ended that session only: the key's other session goes on, on both.
        assert session_status(one, kept) == 200 and session_status(other, kept) == 200

        # A replica started after the logout refuses the cookie from its first request.
        late = ServerProcess(kitaru_cli, env, postgres_dsn, tmp_path / "replica3.log", tick=1.0)
        assert session_status(late.url, cookie) == 401
        assert session_status(late.url, kept) == 200
    finally:
        for replica in [*replicas, *([late] if late else [])]:
            replica.stop()


def test_a_logout_reaches_every_worker_of_one_server(
    kitaru_cli: list[str], server_env: dict[str, str], sqlite_state: str, tmp_path: Path
) -> None:
    key = create_key(kitaru_cli, server_env, sqlite_state, "browser", "read")
    server = ServerProcess(kitaru_cli, server_env, sqlite_state, tmp_path / "server.log", tick=1.0, workers=2)
    try:
        cookie = login(server.url, key)
        assert session_status(server.url, cookie) == 200
        logout(server.url, cookie)
        # Each request is a new connection, taken by either worker: before the logout was
        # shared, about half of them still got in for the cookie's 12 hours. Twenty refusals
        # in a row are all but certain to include the worker that did not serve the logout.
        refused_within(server.url, cookie, BOUND, in_a_row=20)
    finally:
        server.stop()
