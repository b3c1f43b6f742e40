"""What a hostile or careless client sends, against the app in this process: ids that are not
theirs or not ids, bodies that are too large, too deep or not JSON, tampered cursors and
positions, stale sessions. Every refusal has one JSON shape and a message naming the fix, never
the value sent and never a trace; a stream whose client went away ends."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from kitaru.server._auth import new_key

#: What a client must never get back, whatever it sent.
SECRET = "kitaru_0badc0ffee_hunter2-never-echo-me"


class Harness:
    """The server's app with a key per scope and a waiting and a running execution."""

    def __init__(
        self, app: Any, store: Any, keys: dict[str, str], waiting: str, running: str, owner: str
    ) -> None:
        self.app = app
        self.store = store
        self.keys = keys
        self.waiting = waiting
        self.running = running
        self.owner = owner  # the running execution's lease holder

    def client(self, scope: str | None = "admin", *, raise_errors: bool = True) -> httpx.AsyncClient:
        headers = {"Authorization": f"Bearer {self.keys[scope]}"} if scope else {}
        transport = httpx.ASGITransport(app=self.app, raise_app_exceptions=raise_errors)
        return httpx.AsyncClient(transport=transport, base_url="http://test", headers=headers, timeout=30)


def run(kitaru_home: Path, test: Callable[[Harness], Awaitable[None]], state: str | None = None) -> None:
    """Run ``test`` against a fresh app over ``state`` (default: a SQLite store in ``kitaru_home``)."""
    from kitaru.server import create_app
    from kitaru.store.conformance import _leased, _live_owner, _waiting

    app = create_app(state=state or f"sqlite:///{kitaru_home / 'kitaru.db'}", tick=3600)

    async def main() -> None:
        async with app.router.lifespan_context(app):
            from kitaru._engine.runtime import get_runtime

            store: Any = get_runtime().astate
            keys = {}
            for scope in ("read", "answer", "admin"):
                key, record = new_key(f"{scope}-key", [scope])
                await store.create_api_key(record)
                keys[scope] = key
            waiting = await _waiting(store, "approve")
            owner = _live_owner()
            running = (await _leased(store, owner)).id
            with anyio.fail_after(120):
                await test(Harness(app, store, keys, waiting, running, owner))

    anyio.run(main)


def assert_refusal(response: httpx.Response, status: int, *words: str) -> dict[str, Any]:
    """``response`` is the API's error shape with ``status``, names the ``words``, and repeats
    neither the secret nor a trace."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json"), response.headers
    body = response.json()
    assert set(body) == {"error"}, body
    error = body["error"]
    assert isinstance(error["type"], str) and error["type"], body
    for word in words:
        assert word in error["message"], (word, error["message"])
    assert SECRET not in response.text and "hunter2" not in response.text
    assert "Traceback" not in response.text and 'File "' not in response.text
    return dict(error)


def test_the_frameworks_refusals_have_the_apis_shape_and_never_repeat_the_value(
    kitaru_home: Path,
) -> None:
    async def test(h: Harness) -> None:
        async with h.client() as c:
            assert_refusal(await c.get("/api/v1/no-such-thing"), 404, "/docs")
            assert_refusal(await c.delete("/api/v1/executions"), 405, "DELETE", "GET")
            assert_refusal(await c.get("/api/v1/executions", params={"limit": -1}), 422, "'limit'")
            assert_refusal(await c.get("/api/v1/executions", params={"limit": 10**30}), 422, "'limit'")
            assert_refusal(await c.get("/api/v1/deployments/f/versions/abc"), 422, "'version'")
            tag = await c.put("/api/v1/deployments/f/tags/t", json={"version": 10**30})
            assert_refusal(tag, 422, "'version'")
            assert_refusal(await c.post("/api/v1/deployments/f/rollback", json={"to": 10**30}), 422, "'to'")
            invoke = await c.post("/api/v1/deployments/f/invoke", json={"args": SECRET})
            error = assert_refusal(invoke, 422, "'args'", "dictionary")
            assert error["detail"] == [{"loc": ["body", "args"], "msg": error["detail"][0]["msg"],
                                        "type": "dict_type"}]  # fmt: skip
            secret = await c.put("/api/v1/secrets/token", json={"ciphertext": [SECRET]})
            assert_refusal(secret, 422, "'ciphertext'")
            replay = f"/api/v1/executions/{h.waiting}/replay"
            assert_refusal(
                await c.post(replay, content=b"{not json", headers={"Content-Type": "application/json"}),
                422,
                "not valid JSON",
            )
            text = {"Content-Type": "text/plain"}
            plain = await c.post(replay, content=json.dumps({"from": "x"}), headers=text)
            assert_refusal(plain, 422, "Content-Type: application/json")
            login = await c.post("/login", json={"key": SECRET})
            assert_refusal(login, 422, "'key'", "/docs")
        async with h.client(None) as browser:
            await browser.post("/login", data={"key": h.keys["admin"]})
            # A session's change is read as a form for its CSRF token: a form that is not one.
            form = await browser.post(
                f"/api/v1/executions/{h.waiting}/cancel",
                content=b"garbage",
                headers={"Content-Type": "multipart/form-data; boundary=zz"},
            )
            assert_refusal(form, 400, "could not be read")

    run(kitaru_home, test)


def test_an_unexpected_failure_is_a_json_500_without_a_trace(
    kitaru_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def test(h: Harness) -> None:
        async def broken(*args: Any, **kwargs: Any) -> Any:
            raise RuntimeError(f"database said {SECRET}")

        monkeypatch.setattr(h.store, "list_executions", broken)
        monkeypatch.setattr(h.store, "answer_wait", broken)
        async with h.client(raise_errors=False) as c:
            assert_refusal(await c.get("/api/v1/executions"), 500, "its log has the details")
            # The answer the front handles itself fails the same way.
            answer = await c.post(f"/api/v1/executions/{h.waiting}/waits/approve", json={"value": True})
            assert_refusal(answer, 500, "its log has the details")

    run(kitaru_home, test)


@pytest.mark.parametrize("how", ["bearer answer", "session answer", "route"])
def test_a_body_over_the_limit_is_413_on_every_path(
    kitaru_home: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    """One limit for the answers the front handles and for every FastAPI route, checked as the
    body arrives (a body sent in chunks, without a Content-Length, is cut off too)."""
    monkeypatch.setenv("KITARU_SERVER_MAX_BODY", "4096")

    async def chunks(total: int) -> AsyncIterator[bytes]:
        yield b'{"value": "'
        for _ in range(total // 1024):
            yield b"x" * 1024
        yield b'"}'

    async def test(h: Harness) -> None:
        path = f"/api/v1/executions/{h.waiting}/waits/nope"  # judged, then refused: no such wait
        if how == "route":
            path = f"/api/v1/executions/{h.waiting}/replay"
        async with h.client(None if how == "session answer" else "admin") as c:
            if how == "session answer":
                login = await c.post("/login", data={"key": h.keys["admin"]})
                c.headers["X-CSRF-Token"] = login.json()["csrf_token"]
            headers = {"Content-Type": "application/json"}
            small = await c.post(path, content=b'{"value": "' + b"x" * 3000 + b'"}', headers=headers)
            assert small.status_code != 413, small.text  # under the limit: judged on its merits
            for body in (b'{"value": "' + b"x" * 5000 + b'"}', chunks(64 * 1024)):
                refused = await c.post(path, content=body, headers=headers)
                assert_refusal(refused, 413, "4096 bytes", "KITARU_SERVER_MAX_BODY")
            view = (await c.get(f"/api/v1/executions/{h.waiting}")).json()
            assert view["status"] == "waiting" and view["waits"][0]["status"] == "open"

    run(kitaru_home, test)


def test_a_limit_that_is_not_a_positive_number_is_refused(
    kitaru_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kitaru.errors import KitaruConfigError
    from kitaru.server import create_app

    for bad in ("0", "-5", "16M", "\uff11\uff12"):  # the last: digits, but not ASCII ones
        monkeypatch.setenv("KITARU_SERVER_MAX_BODY", bad)
        with pytest.raises(KitaruConfigError, match=r"KITARU_SERVER_MAX_BODY=.* is not a positive whole"):
            create_app(state=f"sqlite:///{kitaru_home / 'kitaru.db'}")


def test_deeply_nested_bodies_are_refused_not_crashed(kitaru_home: Path) -> None:
    deep = b"[" * 100_000 + b"]" * 100_000
    headers = {"Content-Type": "application/json"}

    async def test(h: Harness) -> None:
        async with h.client() as c:
            answer = f"/api/v1/executions/{h.waiting}/waits/approve"
            refused = await c.post(answer, content=b'{"value": ' + deep + b"}", headers=headers)
            assert_refusal(refused, 422, "nested too deeply")
            # Deep, yet within the parser's reach: the wait's own check refuses it.
            nested = b'{"value": ' + b"[" * 500 + b"]" * 500 + b"}"
            assert_refusal(await c.post(answer, content=nested, headers=headers), 422, "levels deep")
            replay = f"/api/v1/executions/{h.waiting}/replay"
            body = b'{"from": "x", "overrides": {"a": ' + deep + b"}}"
            assert_refusal(await c.post(replay, content=body, headers=headers), 400, "nested")
            view = (await c.get(f"/api/v1/executions/{h.waiting}")).json()
            assert view["waits"][0]["status"] == "open"

    run(kitaru_home, test)


def test_store_operations_refuse_arguments_the_contract_does_not_take(kitaru_home: Path) -> None:
    """A worker's call with a wrong argument is a 400 naming the parameter, before the store sees
    it (it was a 500, or a 503 naming the server's database file)."""

    async def test(h: Harness) -> None:
        async with h.client() as c:
            for operation, arguments, words in [
                ("get_execution", {"exec_id": h.waiting, "bogus": SECRET}, ("takes no 'bogus'",)),
                ("get_execution", {}, ("needs 'exec_id'",)),
                ("get_execution", {"exec_id": [SECRET]}, ("'exec_id' must be str",)),
                ("read_journal", {"exec_id": {"a": SECRET}}, ("'exec_id' must be str",)),
                ("list_executions", {"limit": SECRET}, ("'limit' must be int",)),
                ("list_executions", {"before": [1]}, ("'before' must be str | None",)),
                ("renew_leases", {"owner": "o", "exec_ids": "a", "ttl": 1}, ("'exec_ids' must be list",)),
            ]:
                response = await c.post(f"/api/v1/store/{operation}", json=arguments)
                error = assert_refusal(response, 400, operation, *words)
                assert "kitaru.db" not in error["message"]
            # What the HTTP state store sends still goes through (a whole number for a float too).
            ok = await c.post("/api/v1/store/get_execution", json={"exec_id": h.waiting})
            assert ok.status_code == 200 and ok.json()["result"]["id"] == h.waiting
            renewed = await c.post(
                "/api/v1/store/renew_leases", json={"owner": "o", "exec_ids": [], "ttl": 3}
            )
            assert renewed.status_code == 200, renewed.text

    run(kitaru_home, test)


def test_filters_and_positions_that_are_not_theirs(kitaru_home: Path) -> None:
    async def test(h: Harness) -> None:
        async with h.client("read") as c:
            assert_refusal(
                await c.get("/api/v1/executions", params={"status": "wating"}), 400, "running, waiting"
            )
            assert (await c.get("/api/v1/executions", params={"status": "WAITING"})).json()["items"]
            # Versions are 32-bit in every store: a larger one is refused, not a failed query.
            huge = 10**30
            assert_refusal(await c.get("/api/v1/executions", params={"version": huge}), 422, "'version'")
            assert_refusal(await c.get(f"/api/v1/deployments/f/versions/{huge}"), 422, "'version'")
            # A cursor is the id of an execution to page after: any other text is refused by name
            # (never a failed query), and a huge one is not repeated whole.
            for cursor in ("zzzz'--", "\u202e" * 50, "x" * 5000):
                page = await c.get("/api/v1/executions", params={"cursor": cursor})
                error = assert_refusal(page, 400, "next_cursor")
                assert "x" * 121 not in error["message"]
            logs = f"/api/v1/executions/{h.waiting}/logs"
            for bad in (b"\xb2", b"9" * 5000, b"-1", b"1e3"):  # b"\xb2" is "\u00b2": str.isdigit holds
                refused = await c.get(logs, headers=[(b"Last-Event-ID", bad)])
                assert_refusal(refused, 400, "Last-Event-ID", "position")
            ok = await c.get(logs, headers={"Last-Event-ID": "12"})
            assert ok.status_code == 200 and "event: end" in ok.text
            for path in (
                "/api/v1/executions/%2e%2e",
                "/api/v1/executions/..%2F..%2Fetc%2Fpasswd",
                "/api/v1/executions/%2e%2e/logs",
                f"/api/v1/executions/{h.waiting}/artifacts/%2e%2e%2f%2e%2e/content",
                f"/api/v1/executions/{'x' * 20_000}",
                "/api/v1/executions/nope/logs?follow=true",
                "/ui/data/executions/%2e%2e/graph",
                f"/ui/static/{'x' * 20_000}.js",
            ):
                error = assert_refusal(await c.get(path), 404)
                assert len(error["message"]) < 400  # a huge id is not repeated whole

    run(kitaru_home, test)


def test_a_session_ends_at_logout_and_a_revoked_key_within_a_second(kitaru_home: Path) -> None:
    async def test(h: Harness) -> None:
        async with h.client(None) as browser:
            await browser.post("/login", data={"key": h.keys["read"]})
            cookie = browser.cookies["kitaru_session"]
            assert (await browser.get("/api/v1/session")).status_code == 200
            assert (await browser.post("/logout")).status_code == 200
            # A copy of the cookie (another tab, or someone who took it) is refused too.
            browser.cookies.set("kitaru_session", cookie)
            assert_refusal(await browser.get("/api/v1/session"), 401, "log in at /login")

            # A CSRF token of an earlier session of the same key does not carry over.
            browser.cookies.clear()
            stale = (await browser.post("/login", data={"key": h.keys["answer"]})).json()["csrf_token"]
            browser.cookies.clear()
            fresh = (await browser.post("/login", data={"key": h.keys["answer"]})).json()["csrf_token"]
            abort = f"/api/v1/executions/{h.waiting}/waits/approve/abort"
            for refused in (
                await browser.post(abort, json={}, headers={"X-CSRF-Token": stale}),
                await browser.post(abort, data={"csrf_token": stale}),
                await browser.post(abort, data={"csrf_token": ""}),
            ):
                assert_refusal(refused, 403, "CSRF", "Reload the page")
            assert fresh != stale
            assert (await browser.get(f"/api/v1/executions/{h.waiting}")).json()["waits"][0][
                "status"
            ] == "open"

            browser.cookies.clear()
            await browser.post("/login", data={"key": h.keys["admin"]})
            async with h.client("admin") as bearer:
                assert (await bearer.get("/api/v1/session")).status_code == 200  # both cached now
                assert (await browser.get("/api/v1/session")).status_code == 200
                await h.store.revoke_api_key("admin-key")
                revoked = anyio.current_time()
                statuses = []
                while anyio.current_time() - revoked < 2:  # the key cache's second, and a margin
                    statuses.append((await bearer.get("/api/v1/session")).status_code)
                    if statuses[-1] == 401:
                        break
                    await anyio.sleep(0.05)  # polling the server is the point
                assert statuses[-1] == 401, statuses
                assert_refusal(await browser.get("/api/v1/session"), 401)

    run(kitaru_home, test)


def test_a_logout_the_store_cannot_record_fails_instead_of_seeming_done(kitaru_home: Path) -> None:
    from kitaru.errors import KitaruStoreError

    async def test(h: Harness) -> None:
        async def store_down(nonce: str, expires_at: float) -> None:
            raise KitaruStoreError("PostgreSQL db.internal:5432 (kitaru as admin) is unreachable")

        async with h.client(None) as browser:
            await browser.post("/login", data={"key": h.keys["read"]})
            cookie = browser.cookies["kitaru_session"]
            h.store.end_session = store_down
            # Other processes would still take the cookie: the logout says it did not happen,
            # without naming the database, and the browser keeps its cookie to try again.
            error = assert_refusal(await browser.post("/logout"), 503, "state store failed", "Retry")
            assert "db.internal" not in error["message"]
            assert browser.cookies.get("kitaru_session") == cookie
            del h.store.end_session
            assert (await browser.post("/logout")).status_code == 200
            (ended,) = [s for s in await h.store.ended_sessions(0.0) if s.nonce == cookie.split(".")[2]]
            assert ended.expires_at == float(cookie.split(".")[1])

    run(kitaru_home, test)


def test_ui_pages_and_artifact_bytes_carry_their_security_headers(kitaru_home: Path) -> None:
    from kitaru.store.conformance import _artifact, _completed

    page_script = b"<html><script>parent.stolen = document.cookie</script></html>"

    async def test(h: Harness) -> None:
        artifact = _artifact(h.running, "page", call_id="render", data=page_script)
        artifact.content_hash = "sha256:" + artifact.content_hash  # as the runtime records it
        await h.store.commit(h.running, [_completed("render", artifact)], [artifact], owner=h.owner)
        async with h.client("read") as c:
            for path in ("/ui/", "/ui/login", "/ui/executions/%3Cscript%3E", "/ui/static/app.js"):
                page = await c.get(path)
                assert page.status_code == 200, path
                assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
                assert "script-src 'self'" in page.headers["content-security-policy"]
                assert page.headers["x-frame-options"] == "DENY"
                assert page.headers["x-content-type-options"] == "nosniff"
                assert b"<script>" not in page.content.replace(b'<script src="/ui/static/app.js" defer>', b"")
            content = await c.get(f"/api/v1/executions/{h.running}/artifacts/{artifact.id}/content")
            assert content.status_code == 200 and content.content == page_script
            assert content.headers["content-type"] == "application/octet-stream"
            assert content.headers["content-disposition"] == "attachment"
            assert content.headers["x-content-type-options"] == "nosniff"
            assert "sandbox" in content.headers["content-security-policy"]

    run(kitaru_home, test)


def log_stream_scope(path: str, headers: list[tuple[bytes, bytes]], spec: str = "2.3") -> dict[str, Any]:
    """The ASGI scope of ``GET path?follow=true`` as a server sends it to the app."""
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": spec},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"follow=true",
        "root_path": "",
        "headers": [(b"host", b"test"), *headers],
        "client": ("127.0.0.1", 50000),
        "server": ("test", 80),
    }


@pytest.mark.parametrize("how", ["revoked", "logged out"])
def test_a_followed_log_stream_ends_when_its_key_is_revoked_or_its_session_ends(
    kitaru_home: Path, how: str
) -> None:
    """A stream stays open as long as the execution runs (hours, maybe): it is closed once the
    key that opened it is revoked or its session logged out, not when the run ends."""

    async def test(h: Harness) -> None:
        async with h.client(None) as browser:
            if how == "revoked":
                headers = [(b"authorization", f"Bearer {h.keys['read']}".encode())]
            else:
                await browser.post("/login", data={"key": h.keys["read"]})
                headers = [(b"cookie", f"kitaru_session={browser.cookies['kitaru_session']}".encode())]
            requested = False
            sent: list[dict[str, Any]] = []
            never = anyio.Event()

            async def receive() -> dict[str, Any]:
                nonlocal requested
                if not requested:
                    requested = True
                    return {"type": "http.request", "body": b"", "more_body": False}
                await never.wait()  # the client stays
                return {"type": "http.disconnect"}

            async def send(message: dict[str, Any]) -> None:
                sent.append(message)

            ended = anyio.Event()

            async def serve() -> None:
                await h.app(log_stream_scope(f"/api/v1/executions/{h.running}/logs", headers), receive, send)
                ended.set()

            async with anyio.create_task_group() as tg:
                tg.start_soon(serve)
                await anyio.sleep(1.2)
                assert sent[0]["status"] == 200 and not ended.is_set()
                if how == "revoked":
                    await h.store.revoke_api_key("read-key")
                else:
                    assert (await browser.post("/logout")).status_code == 200
                with anyio.fail_after(5):  # the key cache's second and a poll or two
                    await ended.wait()
                tg.cancel_scope.cancel()
            assert sent[-1] == {"type": "http.response.body", "body": b"", "more_body": False}

    run(kitaru_home, test)


@pytest.mark.parametrize("spec", ["2.3", "2.4"])
def test_a_followed_log_stream_ends_when_its_client_goes_away(kitaru_home: Path, spec: str) -> None:
    """``?follow=true`` on a running execution polls until it stops running; a client that goes
    away ends that loop (uvicorn speaks ASGI 2.3, where Starlette listens for the disconnect; a
    2.4 server leaves it to the stream, which asks between polls)."""

    async def test(h: Harness) -> None:
        path = f"/api/v1/executions/{h.running}/logs"
        gone = anyio.Event()
        requested = False
        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            nonlocal requested
            if not requested:
                requested = True
                return {"type": "http.request", "body": b"", "more_body": False}
            if not gone.is_set():
                await gone.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            if gone.is_set():
                raise OSError("the client went away")
            sent.append(message)

        scope = log_stream_scope(path, [(b"authorization", f"Bearer {h.keys['read']}".encode())], spec)
        ended = anyio.Event()

        async def serve() -> None:
            try:
                await h.app(scope, receive, send)
            except Exception:  # the 2.4 path raises Starlette's ClientDisconnect: fine, it ended
                pass
            ended.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(serve)
            await anyio.sleep(1.2)  # a few polls of a running execution
            assert [m["type"] for m in sent][:1] == ["http.response.start"] and not ended.is_set()
            gone.set()
            with anyio.fail_after(5):
                await ended.wait()

    run(kitaru_home, test)


def test_a_nul_in_an_id_or_a_key_is_refused_before_the_database_sees_it(
    kitaru_home: Path, postgres_dsn: str
) -> None:
    """PostgreSQL cannot hold a NUL in text and fails the query: an id, a filter or a presented
    key with one was a 503 naming the database, for anyone (a key is looked up before it is
    known to be valid). They are refused as the ids or keys they cannot be."""

    async def test(h: Harness) -> None:
        async with h.client(None) as anonymous:
            for headers in (
                {"Authorization": "Bearer kitaru_a\x00b_secret"},
                {"Cookie": "kitaru_session=a\x00b.1.2.3"},
            ):
                response = await anonymous.get("/api/v1/executions", headers=headers)
                assert_refusal(response, 401, "/login" if "Cookie" in headers else "not valid")
            login = await anonymous.post("/login", data={"key": "kitaru_a\x00b_secret"})
            assert_refusal(login, 401, "not valid")
        async with h.client() as c:
            for method, path in [
                ("GET", "/api/v1/executions/a%00b"),
                ("POST", "/api/v1/executions/a%00b/waits/approve"),
                ("POST", f"/api/v1/executions/{h.waiting}/waits/%00"),
                ("GET", f"/api/v1/executions/{h.waiting}/artifacts/%00"),
                ("GET", "/api/v1/deployments/%00/versions/1"),
                ("GET", "/api/v1/secrets/%00"),
            ]:
                response = await c.request(method, path, json={"value": True})
                error = assert_refusal(response, 404, "NUL")
                assert "postgresql://" not in error["message"]
            invoke = await c.post("/api/v1/deployments/f/invoke", json={"execution_id": "a\x00"})
            assert_refusal(invoke, 400, "NUL")
            for query in ({"flow": "\x00"}, {"cursor": "a\x00"}, {"status": "\x00"}):
                assert_refusal(await c.get("/api/v1/executions", params=query), 400, "NUL")
            view = (await c.get(f"/api/v1/executions/{h.waiting}")).json()
            assert view["waits"][0]["status"] == "open"

    run(kitaru_home, test, postgres_dsn)


def test_a_store_failure_names_no_database_except_to_a_worker(
    kitaru_home: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from kitaru.errors import KitaruStoreError

    where = "postgresql://kitaru@db.internal:5432/prod"

    async def test(h: Harness) -> None:
        async def failing(*args: Any, **kwargs: Any) -> Any:
            raise KitaruStoreError(f"reading the state failed on PostgreSQL {where}: connection reset")

        monkeypatch.setattr(h.store, "get_execution", failing)
        monkeypatch.setattr(h.store, "read_wait", failing)
        async with h.client("admin") as c:
            error = assert_refusal(
                await c.get(f"/api/v1/executions/{h.waiting}"), 503, "its log has the details"
            )
            assert error["type"] == "KitaruStoreError" and where not in error["message"]
            # The answer the front handles itself says the same.
            answer = await c.post(f"/api/v1/executions/{h.waiting}/waits/approve", json={"value": True})
            error = assert_refusal(answer, 503, "its log has the details")
            assert where not in error["message"]
            # A worker acts on the store's own message (it holds a runner key, not a person's).
            rpc = await c.post("/api/v1/store/get_execution", json={"exec_id": h.waiting})
            assert rpc.status_code == 503 and where in rpc.json()["error"]["message"]
        assert where in caplog.text  # whoever runs the server sees what failed

    with caplog.at_level("WARNING", logger="kitaru.server"):
        run(kitaru_home, test)


def test_the_session_cookie_is_secure_behind_a_proxy_that_ends_tls(kitaru_home: Path) -> None:
    async def test(h: Harness) -> None:
        async with h.client(None) as browser:
            for headers, secure in [
                ({}, False),
                ({"X-Forwarded-Proto": "https"}, True),
                ({"X-Forwarded-Proto": "https, http"}, True),
                ({"Forwarded": "for=10.0.0.1;proto=https"}, True),
                ({"X-Forwarded-Proto": "http"}, False),
            ]:
                login = await browser.post("/login", data={"key": h.keys["read"]}, headers=headers)
                cookie = login.headers["set-cookie"].lower()
                assert "httponly" in cookie and "samesite=strict" in cookie
                assert ("; secure" in cookie) is secure, (headers, cookie)

    run(kitaru_home, test)


def test_the_docs_page_and_its_files_come_from_this_origin(kitaru_home: Path) -> None:
    async def test(h: Harness) -> None:
        async with h.client(None) as c:
            page = await c.get("/docs")
            assert page.status_code == 200
            assert "script-src 'self';" in page.headers["content-security-policy"]
            assert "//" not in page.text  # no other origin named, and no inline script:
            assert "<script>" not in page.text
            for name in re.findall(r'(?:src|href)="(/docs/static/[^"]+)"', page.text):
                got = await c.get(name)
                assert got.status_code == 200 and got.content, name
                assert got.headers["x-content-type-options"] == "nosniff"
            assert (await c.get("/redoc")).status_code == 404  # its page loaded a CDN's script
            assert_refusal(await c.get("/docs/static/..%2F..%2F__init__.py"), 404)
            assert_refusal(await c.get("/docs/static/swagger-ui.js.map"), 404, "no file")

    run(kitaru_home, test)
