"""The team server's API against a real server process: keys and scopes on every endpoint,
sessions and CSRF, answers checked against the wait's JSON Schema, artifacts and logs."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

from kitaru.server._auth import IMPLIES
from tests.server.conftest import ServerProcess, run_flow, wait_until

pytestmark = pytest.mark.e2e

#: Every endpoint (method, path template) and the scope it needs; /healthz needs none.
ENDPOINTS = [
    ("GET", "/api/v1/session", "read"),
    ("GET", "/api/v1/executions", "read"),
    ("GET", "/api/v1/executions/{id}", "read"),
    ("POST", "/api/v1/executions/{id}/cancel", "invoke"),
    ("POST", "/api/v1/executions/{id}/retry", "invoke"),
    ("POST", "/api/v1/executions/{id}/resume", "invoke"),
    ("POST", "/api/v1/executions/{id}/replay", "invoke"),
    ("GET", "/api/v1/executions/{id}/diff/{id}", "read"),
    ("POST", "/api/v1/executions/{id}/waits/approve", "answer"),
    ("GET", "/api/v1/executions/{id}/artifacts", "read"),
    ("GET", "/api/v1/executions/{id}/artifacts/{artifact}", "read"),
    ("GET", "/api/v1/executions/{id}/artifacts/{artifact}/content", "read"),
    ("GET", "/api/v1/executions/{id}/artifacts/{artifact}/preview", "read"),
    ("GET", "/api/v1/executions/{id}/logs", "read"),
    ("POST", "/api/v1/store/get_execution", "runner"),
]


def test_openapi_lists_every_endpoint(server: ServerProcess) -> None:
    # The schema is how the web UI and other clients learn the API; it must be complete.
    schema = httpx.get(server.url + "/openapi.json", timeout=30).json()
    paths = {(m.upper(), p) for p, ops in schema["paths"].items() for m in ops}
    for method, path, _ in ENDPOINTS:
        template = (
            path.replace("{id}/diff/{id}", "{a}/diff/{b}")
            .replace("{id}", "{exec_id}")
            .replace("{artifact}", "{artifact_id}")
            .replace("waits/approve", "waits/{name}")
            .replace("store/get_execution", "store/{operation}")
        )
        assert (method, template) in paths


def test_every_endpoint_needs_a_key_and_its_scope(
    server: ServerProcess, keys: dict[str, str], server_env: dict[str, str]
) -> None:
    exec_id = run_flow(server_env, "approve")
    with server.client(keys["read"]) as c:
        artifact = c.get(f"/api/v1/executions/{exec_id}/artifacts").json()["items"][0]["id"]
    assert httpx.get(server.url + "/healthz", timeout=30).status_code == 200
    for method, template, scope in ENDPOINTS:
        path = template.replace("{id}", exec_id).replace("{artifact}", artifact)
        body = {"value": True} if "waits" in path else {}
        with server.client() as anonymous:
            assert anonymous.request(method, path, json=body).status_code == 401, path
        with server.client("kitaru_0000_not-a-real-key") as wrong:
            assert wrong.request(method, path, json=body).status_code == 401, path
        for other, key in keys.items():
            if scope in IMPLIES[other]:
                continue
            with server.client(key) as c:
                response = c.request(method, path, json=body)
                assert response.status_code == 403, (path, other, response.text)
                assert scope in response.json()["error"]["message"]


def test_keys_never_appear_in_responses_or_logs(
    server: ServerProcess,
    keys: dict[str, str],
    server_env: dict[str, str],
    kitaru_cli: list[str],
    sqlite_state: str,
) -> None:
    import subprocess

    exec_id = run_flow(server_env, "approve")
    bodies = []
    with server.client(keys["admin"]) as c:
        for path in ("/api/v1/session", "/api/v1/executions", f"/api/v1/executions/{exec_id}"):
            bodies.append(c.get(path).text)
        bodies.append(c.post(f"/api/v1/executions/{exec_id}/waits/approve", json={"value": "no"}).text)
        bodies.append(c.post("/login", data={"key": keys["admin"]}).text)
    with server.client("kitaru_abcdef_" + "x" * 43) as c:
        bodies.append(c.get("/api/v1/executions").text)
    listed = subprocess.run(
        [*kitaru_cli, "server", "keys", "list", "--state", sqlite_state, "-o", "json"],
        env=server_env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    server.stop()
    log = server.log.read_text()
    # kitaru_<id>_<secret>: the secret is URL-safe base64 and may hold "_" itself (its last
    # fragment alone can be short enough to turn up in any body by chance).
    secrets = [k.split("_", 2)[2] for k in keys.values()]
    for secret in secrets:
        assert all(secret not in body for body in bodies)
        assert secret not in log
        assert secret not in listed
    assert "/api/v1/executions" in log  # the log is there, and it is the server's


def test_revoked_key_is_refused(
    server: ServerProcess, kitaru_cli: list[str], server_env: dict[str, str], sqlite_state: str
) -> None:
    import subprocess

    from tests.server.conftest import create_key

    key = create_key(kitaru_cli, server_env, sqlite_state, "temp", "read")
    with server.client(key) as c:
        assert c.get("/api/v1/executions").status_code == 200
    subprocess.run(
        [*kitaru_cli, "server", "keys", "revoke", "temp", "--state", sqlite_state],
        env=server_env,
        check=True,
        capture_output=True,
        timeout=120,
    )
    with server.client(key) as c:
        wait_until(lambda: c.get("/api/v1/executions").status_code == 401, 30, "the revoke")


def test_session_cookie_needs_csrf_on_forms(
    server: ServerProcess, keys: dict[str, str], server_env: dict[str, str]
) -> None:
    exec_id = run_flow(server_env, "approve")
    with httpx.Client(base_url=server.url, timeout=30) as browser:
        login = browser.post("/login", data={"key": keys["admin"]})
        assert login.status_code == 200
        cookie = login.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=strict" in cookie
        csrf = login.json()["csrf_token"]
        assert browser.get(f"/api/v1/executions/{exec_id}").status_code == 200  # reading needs none

        path = f"/api/v1/executions/{exec_id}/waits/approve"
        refused = browser.post(path, json={"value": True})
        assert refused.status_code == 403 and "CSRF" in refused.json()["error"]["message"]
        forged = browser.post(path, json={"value": True}, headers={"X-CSRF-Token": "0" * 64})
        assert forged.status_code == 403
        assert browser.get(f"/api/v1/executions/{exec_id}").json()["status"] == "waiting"

        assert browser.get("/api/v1/session").json()["csrf_token"] == csrf
        accepted = browser.post(path, json={"value": True}, headers={"X-CSRF-Token": csrf})
        assert accepted.status_code == 202, accepted.text
        wait_until(lambda: browser.get(f"/api/v1/executions/{exec_id}").json()["status"] == "completed")


def test_answer_is_checked_then_resumes_in_the_background(
    server: ServerProcess, keys: dict[str, str], server_env: dict[str, str]
) -> None:
    exec_id = run_flow(server_env, "approve")
    with server.client(keys["answer"]) as c:
        bad = c.post(f"/api/v1/executions/{exec_id}/waits/approve", json={"value": "yes"})
        assert bad.status_code == 422
        assert "does not match its schema" in bad.json()["error"]["message"]
        missing = c.post(f"/api/v1/executions/{exec_id}/waits/nope", json={"value": True})
        assert missing.status_code == 404
        view = c.get(f"/api/v1/executions/{exec_id}").json()
        assert view["status"] == "waiting" and view["waits"][0]["status"] == "open"

        good = c.post(f"/api/v1/executions/{exec_id}/waits/approve", json={"value": True})
        assert good.status_code == 202
        done = wait_until(
            lambda: (v := c.get(f"/api/v1/executions/{exec_id}").json())["status"] == "completed" and v
        )
        again = c.post(f"/api/v1/executions/{exec_id}/waits/approve", json={"value": False})
        assert again.status_code == 409
    assert [cp["status"] for cp in done["checkpoints"]] == ["completed", "completed"]
    assert Counter(Path(server_env["COUNT_FILE"]).read_text().split()) == {"research": 1, "publish": 1}


def test_artifacts_and_logs_refuse_ids_that_are_not_theirs(
    server: ServerProcess, keys: dict[str, str], server_env: dict[str, str]
) -> None:
    mine = run_flow(server_env, "approve")
    other = run_flow(server_env, "approve")
    with server.client(keys["read"]) as c:
        items = c.get(f"/api/v1/executions/{mine}/artifacts").json()["items"]
        assert items and all(a["inline"] in (True, False) for a in items)  # metadata, no bytes
        theirs = c.get(f"/api/v1/executions/{other}/artifacts").json()["items"][0]["id"]
        for suffix in ("", "/content", "/preview"):
            assert c.get(f"/api/v1/executions/{mine}/artifacts/{theirs}{suffix}").status_code == 404
            assert c.get(f"/api/v1/executions/{other}/artifacts/{theirs}{suffix}").status_code == 200
        assert c.get("/api/v1/executions/nope/logs").status_code == 404
        assert c.get("/api/v1/executions/nope/artifacts").status_code == 404

        output = next(a for a in items if a["type"] == "output")
        preview = c.get(f"/api/v1/executions/{mine}/artifacts/{output['id']}/preview").json()
        assert preview == {**preview, "kind": "json", "value": "brief on durable agents"}
        content = c.get(f"/api/v1/executions/{mine}/artifacts/{output['id']}/content")
        assert content.headers["x-kitaru-content-hash"] == output["content_hash"]

        with c.stream("GET", f"/api/v1/executions/{mine}/logs") as stream:
            text = "".join(stream.iter_text())
        assert "event: log" in text and "researching durable agents" in text and "event: end" in text


def test_list_pages_with_a_cursor(
    server: ServerProcess, keys: dict[str, str], server_env: dict[str, str], kitaru_home: Path
) -> None:
    from kitaru.store import ExecutionRecord, sync_view
    from kitaru.store.sqlite import SQLiteStateStore

    ids = [run_flow(server_env, "approve") for _ in range(2)]
    # An execution started with its own id (an idempotency key) between two generated ones: it
    # sorts after both by its text, and lists in its place in time.
    store = sync_view(SQLiteStateStore(kitaru_home / "kitaru.db"))
    try:
        now = time.time()
        store.create_execution(ExecutionRecord("order-42", "approve", "m:f", None, "completed", now, now), [])
    finally:
        store.close()
    ids += ["order-42", run_flow(server_env, "approve")]
    seen = []
    cursor = None
    with server.client(keys["read"]) as c:
        while True:
            params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
            page = c.get("/api/v1/executions", params=params).json()
            seen += [e["id"] for e in page["items"]]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        # A cursor is the id of the previous page's last execution; another text is refused.
        refused = c.get("/api/v1/executions", params={"cursor": "order-41"})
        assert refused.status_code == 400, refused.text
        assert refused.json()["error"]["type"] == "KitaruUsageError"
        assert "next_cursor" in refused.json()["error"]["message"]
    assert seen == ids[::-1]


def test_connections_of_workers_send_small_responses_at_once() -> None:
    """`--workers N` processes accept on copies of one listening socket, on which asyncio cannot set
    TCP_NODELAY (the copy has no protocol number): without it every keep-alive response waited for
    the client's delayed ACK, 40 ms. The option is set on the listening socket, which Linux copies
    to each connection it accepts."""
    import socket

    import uvicorn

    from kitaru.server import listening_socket

    config = uvicorn.Config("kitaru.server:app_from_env", factory=True, host="127.0.0.1", port=0, workers=2)
    sock = listening_socket(config)
    sock.listen()
    worker_copy = socket.fromfd(sock.fileno(), socket.AF_INET, socket.SOCK_STREAM)
    client = socket.create_connection(sock.getsockname()[:2], timeout=10)
    accepted, _ = worker_copy.accept()
    try:
        assert worker_copy.proto == 0  # what a worker has: asyncio skips its own TCP_NODELAY
        assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
    finally:
        for s in (accepted, client, worker_copy, sock):
            s.close()
