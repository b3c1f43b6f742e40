"""The web UI's routes against a real server: the page shell and assets carry no data and a strict
Content-Security-Policy; the one data endpoint the UI adds (the lineage graph) needs a key like
the rest of the API and refuses ids that are not executions."""

from __future__ import annotations

import httpx
import pytest

from tests.server.conftest import ServerProcess, run_flow

pytestmark = pytest.mark.e2e


def test_pages_and_assets_are_served_with_a_strict_policy(server: ServerProcess) -> None:
    root = httpx.get(server.url + "/", timeout=30)
    assert root.status_code == 307 and root.headers["location"] == "/ui/"
    for path in ("/ui/", "/ui/login", "/ui/executions/anything", "/ui/diff"):
        page = httpx.get(server.url + path, timeout=30)
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        assert "script-src 'self'" in page.headers["content-security-policy"]
        assert '<script src="/ui/static/app.js" defer></script>' in page.text
    script = httpx.get(server.url + "/ui/static/app.js", timeout=30)
    assert script.status_code == 200 and script.headers["content-type"].startswith("text/javascript")
    # Only the UI's own files: nothing else of the package (or the disk) is reachable.
    assert httpx.get(server.url + "/ui/static/__init__.py", timeout=30).status_code == 404
    for path in (
        "/ui/static/..%2F__init__.py",
        "/ui/static/%2E%2E/__init__.py",
        "/ui/../kitaru/server/_app.py",
    ):
        response = httpx.get(server.url + path, timeout=30)
        assert "def mount" not in response.text and "def build_app" not in response.text, path
        assert response.status_code == 404 or response.text == page.text, path


def test_lineage_graph_needs_a_key_and_its_scope(
    server: ServerProcess, keys: dict[str, str], server_env: dict[str, str]
) -> None:
    exec_id = run_flow(server_env, "approve")
    path = f"/ui/data/executions/{exec_id}/graph"
    with server.client() as anonymous:
        assert anonymous.get(path).status_code == 401
    with server.client(keys["runner"]) as runner:
        assert runner.get(path).status_code == 403
    with server.client(keys["read"]) as reader:
        graph = reader.get(path).json()
        assert {(n["id"], n["kind"]) for n in graph["nodes"]} >= {
            ("research", "checkpoint"),
            ("wait:approve", "wait"),
        }
        assert any(e["target"] == "research" for e in graph["edges"])
        assert reader.get("/ui/data/executions/no-such-execution/graph").status_code == 404
