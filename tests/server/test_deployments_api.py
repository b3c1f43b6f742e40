"""Deployments through the team server: ``/api/v1/deployments`` against a real server process
(versions deployed in the test with ``flow.deploy()`` on the server's own stores), its keys and
scopes, and ``kitaru deployments ...`` after ``kitaru login`` in a process with another home."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from kitaru.server._auth import IMPLIES
from tests.server.conftest import ServerProcess, wait_until

pytestmark = pytest.mark.e2e

AGENT = """
import kitaru


@kitaru.checkpoint
def draft(topic: str) -> str:
    return "{draft}(" + topic + ")"


@kitaru.flow
def review(topic: str) -> str:
    return draft(topic)
"""

#: The deployment endpoints, each with the scope it needs.
ENDPOINTS = [
    ("GET", "/api/v1/deployments", "read", None),
    ("GET", "/api/v1/deployments/review/versions/1", "read", None),
    ("GET", "/api/v1/deployments/review/tags/default", "read", None),
    ("GET", "/api/v1/deployments/review/history", "read", None),
    ("PUT", "/api/v1/deployments/review/tags/canary", "admin", {"version": 2}),
    ("DELETE", "/api/v1/deployments/review/tags/canary", "admin", None),
    ("POST", "/api/v1/deployments/review/promote", "admin", {"tag": "canary"}),
    ("POST", "/api/v1/deployments/review/rollback", "admin", {}),
    ("POST", "/api/v1/deployments/review/invoke", "invoke", {"args": {"topic": "t"}}),
]


class Project:
    """A flow module in a directory of its own, imported under a name no other test uses;
    :meth:`deploy` rewrites its file and freezes it as the flow's next version."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True)
        self.name = f"agent_{uuid.uuid4().hex[:10]}"
        self.module: ModuleType | None = None

    def deploy(self, draft: str, **options: Any) -> int:
        (self.root / f"{self.name}.py").write_text(AGENT.replace("{draft}", draft))
        if self.module is None:
            sys.path.insert(0, str(self.root))
            self.module = importlib.import_module(self.name)
        return int(self.module.review.deploy(**options).version)

    def close(self) -> None:
        if str(self.root) in sys.path:
            sys.path.remove(str(self.root))
        sys.modules.pop(self.name, None)


@pytest.fixture
def project(tmp_path: Path, kitaru_home: Path) -> Iterator[Project]:
    """Deploys on the default stack of ``kitaru_home``: the server's state store and artifacts."""
    made = Project(tmp_path / "project")
    try:
        yield made
    finally:
        made.close()


def deploy_two(project: Project) -> None:
    assert project.deploy("v1", message="first") == 1
    assert project.deploy("v2", tag="canary", weight=10) == 2


def history(server: ServerProcess, key: str) -> list[dict[str, Any]]:
    with server.client(key) as c:
        items: list[dict[str, Any]] = c.get("/api/v1/deployments/review/history").json()["items"]
        return items


def test_deployment_endpoints_are_in_the_openapi_schema(server: ServerProcess) -> None:
    with server.client() as c:
        schema = c.get("/openapi.json").json()
    paths = {(m.upper(), p) for p, ops in schema["paths"].items() for m in ops}
    for method, path, _, _ in ENDPOINTS:
        template = (
            path.replace("review", "{flow}")
            .replace("versions/1", "versions/{version}")
            .replace("tags/default", "tags/{tag}")
            .replace("tags/canary", "tags/{tag}")
        )
        assert (method, template) in paths, (method, template)


def test_every_deployment_endpoint_needs_a_key_and_its_scope(
    server: ServerProcess, keys: dict[str, str], project: Project
) -> None:
    deploy_two(project)
    before = history(server, keys["read"])
    for method, path, scope, body in ENDPOINTS:
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
    # Nothing refused moved a tag or started an execution.
    assert history(server, keys["read"]) == before
    with server.client(keys["read"]) as c:
        assert c.get("/api/v1/executions").json()["items"] == []


def test_list_show_move_tags_and_history(
    server: ServerProcess, keys: dict[str, str], project: Project
) -> None:
    deploy_two(project)
    admin = server.client(keys["admin"])
    listed = admin.get("/api/v1/deployments", params={"flow": "review"}).json()
    assert [(v["version"], v["tags"], v["message"]) for v in listed["versions"]] == [
        (1, ["default"], "first"),
        (2, ["canary"], None),
    ]
    assert {(t["tag"], t["version"], t["weight"]) for t in listed["tags"]} == {
        ("default", 1, None),
        ("canary", 2, 10),
    }
    assert admin.get("/api/v1/deployments/review/versions/2").json()["target"].endswith(":review")
    assert admin.get("/api/v1/deployments/review/tags/canary").json()["version"] == 2

    moved = admin.put("/api/v1/deployments/review/tags/beta", json={"version": 1, "weight": 5}).json()
    assert (moved["tag"], moved["version"], moved["weight"], moved["action"]) == ("beta", 1, 5, "tag")
    assert "admin-key" in moved["who"]
    assert admin.delete("/api/v1/deployments/review/tags/beta").json()["action"] == "untag"
    promoted = admin.post("/api/v1/deployments/review/promote", json={"tag": "canary"}).json()
    assert (promoted["version"], promoted["previous"], promoted["action"]) == (2, 1, "promote")
    back = admin.post("/api/v1/deployments/review/rollback", json={}).json()
    assert (back["version"], back["previous"], back["action"]) == (1, 2, "rollback")
    assert admin.post("/api/v1/deployments/review/rollback", json={"to": 2}).json()["version"] == 2
    moves = admin.get("/api/v1/deployments/review/history").json()["items"]
    assert [(m["tag"], m["version"], m["action"]) for m in moves] == [
        ("default", 1, "deploy"),
        ("canary", 2, "deploy"),
        ("beta", 1, "tag"),
        ("beta", None, "untag"),
        ("default", 2, "promote"),
        ("default", 1, "rollback"),
        ("default", 2, "rollback"),
    ]
    only = admin.get("/api/v1/deployments/review/history", params={"tag": "canary"}).json()["items"]
    assert [m["action"] for m in only] == ["deploy"]
    admin.close()


def test_bad_input_gets_the_clients_message_and_changes_nothing(
    server: ServerProcess, keys: dict[str, str], project: Project
) -> None:
    deploy_two(project)
    before = history(server, keys["read"])
    admin = server.client(keys["admin"])
    cases = [
        ("PUT", "/api/v1/deployments/review/tags/canary", {"version": 7}, 404, "has no version 7"),
        ("PUT", "/api/v1/deployments/review/tags/canary", {"version": 1, "weight": 101}, 400, "0"),
        ("POST", "/api/v1/deployments/review/promote", {"tag": "nope"}, 404, "no tag 'nope'"),
        ("DELETE", "/api/v1/deployments/review/tags/default", None, 400, "default"),
        ("POST", "/api/v1/deployments/nobody/promote", {"tag": "canary"}, 404, "no deployed versions"),
        ("GET", "/api/v1/deployments/review/versions/9", None, 404, "has no version 9"),
        ("GET", "/api/v1/deployments/review/tags/nope", None, 404, "no tag 'nope'"),
        ("GET", "/api/v1/deployments/nobody/history", None, 404, "no deployed versions"),
        ("POST", "/api/v1/deployments/review/invoke", {"tag": "beta", "args": {}}, 404, "no tag 'beta'"),
        ("POST", "/api/v1/deployments/nobody/invoke", {"args": {}}, 404, "no deployed versions"),
        ("POST", "/api/v1/deployments/review/invoke", {"args": {}}, 400, "missing a required argument"),
        ("POST", "/api/v1/deployments/review/invoke", {"args": {"topic": "t", "nope": 1}}, 400, "nope"),
    ]
    for method, path, body, status, message in cases:
        response = admin.request(method, path, json=body)
        assert response.status_code == status, (path, body, response.text)
        assert message in response.json()["error"]["message"], (path, response.text)
    assert history(server, keys["read"]) == before
    assert admin.get("/api/v1/executions").json()["items"] == []
    admin.close()


def test_invoke_hands_the_execution_over_and_runs_the_versions_code(
    server: ServerProcess, keys: dict[str, str], project: Project
) -> None:
    deploy_two(project)
    api = server.client(keys["invoke"])
    made = api.post(
        "/api/v1/deployments/review/invoke",
        json={"tag": "canary", "args": {"topic": "t"}, "execution_id": "inv-1"},
    )
    assert made.status_code == 202, made.text
    assert made.json()["id"] == "inv-1" and made.json()["created"] is True
    assert made.json()["deployment"]["version"] == 2

    def finished() -> dict[str, Any] | None:
        e: dict[str, Any] = api.get("/api/v1/executions/inv-1").json()
        return e if e["status"] != "running" else None

    execution = wait_until(finished, what="the invoked execution finishing")
    assert execution["status"] == "completed", execution
    assert execution["metadata"]["deployment"]["version"] == 2
    result = execution["result_artifact"]
    preview = api.get(f"/api/v1/executions/inv-1/artifacts/{result}/preview").json()
    assert preview["value"] == "v2(t)"  # the version's frozen code, not this process's v1

    # The same id again is the same invocation: nothing new is created.
    again = api.post(
        "/api/v1/deployments/review/invoke", json={"args": {"topic": "t"}, "execution_id": "inv-1"}
    )
    assert again.status_code == 202 and again.json()["created"] is False
    assert [e["id"] for e in api.get("/api/v1/executions").json()["items"]] == ["inv-1"]
    api.close()


def test_cli_deployments_after_login(
    server: ServerProcess,
    keys: dict[str, str],
    server_env: dict[str, str],
    kitaru_cli: list[str],
    project: Project,
    tmp_path: Path,
) -> None:
    """Another home (no access to the server's database or artifacts): every `kitaru deployments`
    command goes through the API."""
    deploy_two(project)
    elsewhere = {
        **server_env,
        "KITARU_HOME": str(tmp_path / "other-home"),
        "XDG_CONFIG_HOME": str(tmp_path / "cfg"),
    }

    def cli(*args: str, code: int = 0) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [*kitaru_cli, *args], env=elsewhere, capture_output=True, text=True, timeout=120, check=False
        )
        assert done.returncode == code, (args, done.stdout, done.stderr)
        return done

    cli("login", server.url, "--key", keys["read"])
    listed = json.loads(cli("deployments", "list", "review", "-o", "json").stdout)
    assert [(v["version"], v["tags"]) for v in listed["versions"]] == [(1, ["default"]), (2, ["canary"])]
    assert "canary (10%)" in cli("deployments", "list").stdout
    assert json.loads(cli("deployments", "show", "review@canary", "-o", "json").stdout)["version"] == 2
    assert json.loads(cli("deployments", "show", "review:1", "-o", "json").stdout)["message"] == "first"
    assert "version    1" in cli("deployments", "show", "review").stdout
    assert "no tag 'nope'" in cli("deployments", "show", "review@nope", code=5).stderr
    # A read key may look but not move a tag.
    refused = cli("deployments", "promote", "review", "canary", code=2)
    assert "'admin' scope" in refused.stderr

    cli("login", server.url, "--key", keys["admin"])
    moved = json.loads(cli("deployments", "tag", "review", "beta", "1", "--weight", "5", "-o", "json").stdout)
    assert (moved["tag"], moved["version"], moved["weight"]) == ("beta", 1, 5)
    assert "removed" in cli("deployments", "untag", "review", "beta").stdout
    assert "review@default -> version 2 (was 1)" in cli("deployments", "promote", "review", "canary").stdout
    assert "has no version 7" in cli("deployments", "tag", "review", "x", "7", code=5).stderr
    back = json.loads(cli("deployments", "rollback", "review", "-o", "json").stdout)
    assert (back["version"], back["previous"]) == (1, 2)
    moves = json.loads(cli("deployments", "history", "review", "-o", "json").stdout)
    assert [(m["tag"], m["version"], m["action"]) for m in moves] == [
        ("default", 1, "deploy"),
        ("canary", 2, "deploy"),
        ("beta", 1, "tag"),
        ("beta", None, "untag"),
        ("default", 2, "promote"),
        ("default", 1, "rollback"),
    ]
    assert "rollback" in cli("deployments", "history", "review", "default").stdout

    invoked = cli("deployments", "invoke", "review@canary", "--args", '{"topic": "x"}', "--id", "cli-1")
    assert "execution cli-1" in invoked.stdout and "version 2 of review" in invoked.stdout
    assert "no tag 'beta'" in cli("deployments", "invoke", "review@beta", "--args", "{}", code=5).stderr

    def completed() -> bool:
        out = cli("executions", "get", "cli-1", "-o", "json").stdout
        return bool(json.loads(out)["status"] == "completed")

    wait_until(completed, what="the invoked execution completing")
