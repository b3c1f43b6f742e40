"""The issue-14 features through a team server: after `kitaru login` the CLI's secrets, pending
waits, aborts, stats, `latest` and `artifacts list --tag` use the server (a process with another
home, no access to the server's database); a worker-style process holding only a `runner` key
(`state = "http://..."`) reads a secret and hits the checkpoint cache; the server only ever sees
ciphertext."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from kitaru.secrets import new_key
from tests.server.conftest import FLOWS, ServerProcess, run_flow, wait_until

pytestmark = pytest.mark.e2e

SECRET_VALUE = "sk-live-7f3a9c1e5b2d4680"


def _cli(kitaru_cli: list[str], env: dict[str, str]) -> Any:
    def cli(*args: str, check: bool = True, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [*kitaru_cli, *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            input=stdin,
            check=False,
        )
        assert done.returncode == 0 or not check, (args, done.stdout, done.stderr)
        return done

    return cli


def _elsewhere(server_env: dict[str, str], tmp_path: Path, name: str) -> dict[str, str]:
    return {
        **server_env,
        "KITARU_HOME": str(tmp_path / f"{name}-home"),
        "XDG_CONFIG_HOME": str(tmp_path / f"{name}-cfg"),
    }


def test_secrets_through_the_server_after_login(
    server: ServerProcess,
    keys: dict[str, str],
    server_env: dict[str, str],
    kitaru_cli: list[str],
    tmp_path: Path,
) -> None:
    secrets_key = new_key()
    admin_env = {**_elsewhere(server_env, tmp_path, "admin"), "KITARU_SECRETS_KEY": secrets_key}
    cli = _cli(kitaru_cli, admin_env)
    cli("login", server.url, "--key", keys["admin"])

    cli("secrets", "set", "API_TOKEN", stdin=SECRET_VALUE + "\n")
    assert [s["name"] for s in json.loads(cli("secrets", "list", "-o", "json").stdout)] == ["API_TOKEN"]
    assert SECRET_VALUE not in cli("secrets", "get", "API_TOKEN").stdout
    assert cli("secrets", "get", "API_TOKEN", "--reveal").stdout.strip() == SECRET_VALUE

    # The server holds it (its own store, not this process's home) and only as ciphertext.
    with server.client(keys["admin"]) as http:
        stored = http.get("/api/v1/secrets/API_TOKEN").json()
    assert SECRET_VALUE not in json.dumps(stored) and stored["ciphertext"]
    assert not (tmp_path / "admin-home" / "kitaru.db").exists()

    # A `read` key sees names only, even with the encryption key at hand.
    reader = _cli(
        kitaru_cli, {**_elsewhere(server_env, tmp_path, "reader"), "KITARU_SECRETS_KEY": secrets_key}
    )
    reader("login", server.url, "--key", keys["read"])
    assert [s["name"] for s in json.loads(reader("secrets", "list", "-o", "json").stdout)] == ["API_TOKEN"]
    refused = reader("secrets", "get", "API_TOKEN", "--reveal", check=False)
    assert refused.returncode != 0 and "lacks the 'admin' scope" in refused.stderr
    refused = reader("secrets", "set", "API_TOKEN", "--value", "other", check=False)
    assert refused.returncode != 0 and "lacks the 'admin' scope" in refused.stderr

    assert "deleted secret API_TOKEN" in cli("secrets", "delete", "API_TOKEN").stdout
    missing = cli("secrets", "get", "API_TOKEN", check=False)
    assert missing.returncode != 0 and "no secret 'API_TOKEN'" in missing.stderr
    assert SECRET_VALUE not in server.log.read_text()


def test_a_logged_in_process_reuses_one_connection_for_its_secrets_and_closes_it_at_exit(
    server: ServerProcess, keys: dict[str, str], server_env: dict[str, str], tmp_path: Path
) -> None:
    """``kitaru.secrets`` after a login: every call goes through one client of the process (one
    connection, not one per call), and that client is closed when the process exits (no socket
    left for the garbage collector to warn about)."""
    code = (
        "import socket\n"
        "opened = []\n"
        "connect = socket.create_connection\n"
        "def counting(*args, **kwargs):\n"
        "    opened.append(args[0])\n"
        "    return connect(*args, **kwargs)\n"
        "socket.create_connection = counting\n"
        "from kitaru import secrets\n"
        f"secrets.set_secret('API_TOKEN', {SECRET_VALUE!r})\n"
        "for _ in range(5):\n"
        f"    assert secrets.get_secret('API_TOKEN') == {SECRET_VALUE!r}\n"
        "assert [s.name for s in secrets.list_secrets()] == ['API_TOKEN']\n"
        "secrets.delete_secret('API_TOKEN')\n"
        "print(len(opened))\n"
    )
    env = {
        **_elsewhere(server_env, tmp_path, "script"),
        "KITARU_SERVER": server.url,
        "KITARU_API_KEY": keys["admin"],
        "KITARU_SECRETS_KEY": new_key(),
    }
    done = subprocess.run(
        [sys.executable, "-W", "always::ResourceWarning", "-c", code],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["1"], done.stdout  # 8 calls, one connection
    assert "ResourceWarning" not in done.stderr, done.stderr


def test_the_checkpoint_cache_through_the_server_after_login(
    server: ServerProcess,
    keys: dict[str, str],
    server_env: dict[str, str],
    kitaru_cli: list[str],
    tmp_path: Path,
) -> None:
    """`kitaru cache list|clear` after a login show and clear the server's cache (the one its
    workers fill), not the local home's: listing needs `read`, clearing `admin`."""
    secrets_key = new_key()
    admin = _cli(kitaru_cli, {**_elsewhere(server_env, tmp_path, "admin"), "KITARU_SECRETS_KEY": secrets_key})
    admin("login", server.url, "--key", keys["admin"])
    admin("secrets", "set", "API_TOKEN", "--value", SECRET_VALUE)
    worker_env = {
        **_elsewhere(server_env, tmp_path, "worker"),
        "KITARU_STACK": "job",
        "KITARU_STACK__TYPE": "local",
        "KITARU_STACK__STATE": server.url,
        "KITARU_API_KEY": keys["runner"],
        "KITARU_SECRETS_KEY": secrets_key,
    }

    def run() -> None:
        done = subprocess.run(
            [sys.executable, str(FLOWS), "uses_secret", "/v1/search"],
            env=worker_env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr

    run()
    reader = _cli(kitaru_cli, _elsewhere(server_env, tmp_path, "reader"))
    reader("login", server.url, "--key", keys["read"])
    (entry,) = json.loads(reader("cache", "list", "-o", "json").stdout)
    assert (entry["flow"], entry["checkpoint"]) == ("uses_secret", "call_api")
    assert "call_api" in reader("cache", "list").stdout
    assert json.loads(reader("cache", "list", "--flow", "other", "-o", "json").stdout) == []
    refused = reader("cache", "clear", check=False)
    assert refused.returncode != 0 and "lacks the 'admin' scope" in refused.stderr

    assert "removed 1 cache entries" in admin("cache", "clear").stdout
    assert json.loads(reader("cache", "list", "-o", "json").stdout) == []
    # Cleared on the server: the next execution runs the checkpoint again.
    run()
    assert Path(server_env["COUNT_FILE"]).read_text().splitlines() == ["call_api", "call_api"]


def test_waits_abort_latest_stats_and_tags_through_the_server(
    server: ServerProcess,
    keys: dict[str, str],
    server_env: dict[str, str],
    kitaru_cli: list[str],
    tmp_path: Path,
) -> None:
    first = run_flow(server_env, "approve")
    tagged = run_flow(server_env, "tagged")
    env = _elsewhere(server_env, tmp_path, "answerer")
    cli = _cli(kitaru_cli, env)
    cli("login", server.url, "--key", keys["answer"])

    waits = json.loads(cli("executions", "waits", "-o", "json").stdout)
    assert [(w["exec_id"], w["name"]) for w in waits] == [(first, "approve"), (tagged, "approve")]
    assert waits[1]["question"] == "Ship the report?" and waits[1]["schema"] == {"type": "boolean"}
    assert "Ship the report?" in cli("executions", "waits", "--flow", "tagged").stdout

    found = json.loads(cli("artifacts", "list", "--tag", "weekly", "-o", "json").stdout)
    assert [(a["name"], a["exec_id"], a["tags"]) for a in found] == [("report", tagged, ["weekly"])]
    assert json.loads(cli("artifacts", "list", "--tag", "monthly", "-o", "json").stdout) == []

    cli("executions", "input", first, "--abort", "--reason", "not this week")
    wait_until(
        lambda: json.loads(cli("executions", "get", first, "-o", "json").stdout)["status"] == "failed",
        what="the aborted execution to fail",
    )
    assert "not this week" in json.loads(cli("executions", "get", first, "-o", "json").stdout)["error"]
    again = cli("executions", "input", first, "--value", "true", check=False)
    assert again.returncode != 0
    assert [w["exec_id"] for w in json.loads(cli("executions", "waits", "-o", "json").stdout)] == [tagged]

    stats = json.loads(cli("executions", "stats", "-o", "json").stdout)
    by_flow = {f["flow"]: f for f in stats["flows"]}
    assert by_flow["approve"]["by_status"] == {"failed": 1} and by_flow["tagged"]["by_status"] == {
        "waiting": 1
    }
    assert (
        json.loads(cli("executions", "stats", "--flow", "tagged", "-o", "json").stdout)["flows"][0][
            "executions"
        ]
        == 1
    )

    code = (
        "from kitaru.client import KitaruClient\n"
        "c = KitaruClient()\n"
        "print(c.executions.latest().id, c.executions.latest(flow='approve').id)\n"
        "try:\n    c.executions.latest(flow='nothing')\nexcept Exception as e:\n    print(type(e).__name__)\n"
        # The original Kitaru's spelling: one execution's pending waits.
        f"print(len(c.executions.pending_waits({tagged!r})), len(c.executions.pending_waits({first!r})))"
    )
    py = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert py.stdout.split() == [tagged, first, "KitaruNotFoundError", "1", "0"], py.stderr


def test_a_worker_with_a_runner_key_reads_secrets_and_uses_the_cache(
    server: ServerProcess,
    keys: dict[str, str],
    server_env: dict[str, str],
    kitaru_cli: list[str],
    tmp_path: Path,
) -> None:
    secrets_key = new_key()
    admin = _cli(kitaru_cli, {**_elsewhere(server_env, tmp_path, "admin"), "KITARU_SECRETS_KEY": secrets_key})
    admin("login", server.url, "--key", keys["admin"])
    admin("secrets", "set", "API_TOKEN", "--value", SECRET_VALUE)

    # A job's environment: its stack from the environment alone, the state store the server.
    worker_env = {
        **_elsewhere(server_env, tmp_path, "worker"),
        "KITARU_STACK": "job",
        "KITARU_STACK__TYPE": "local",
        "KITARU_STACK__STATE": server.url,
        "KITARU_API_KEY": keys["runner"],
        "KITARU_SECRETS_KEY": secrets_key,
    }

    def run() -> tuple[str, str]:
        done = subprocess.run(
            [sys.executable, str(FLOWS), "uses_secret", "/v1/search"],
            env=worker_env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        result, exec_id = done.stdout.strip().splitlines()[-2:]
        return result, exec_id

    first_result, first_id = run()
    assert (
        first_result == f"/v1/search: token of {len(SECRET_VALUE)} chars, ends 80 / live {len(SECRET_VALUE)}"
    )
    second_result, second_id = run()
    assert second_result == first_result and second_id != first_id
    # The checkpoint ran once: the second execution took its output from the cache.
    assert Path(server_env["COUNT_FILE"]).read_text().splitlines() == ["call_api"]
    with server.client(keys["read"]) as http:
        second = http.get(f"/api/v1/executions/{second_id}").json()
    assert [c.get("cached") for c in second["checkpoints"]] == [True]

    # Without the encryption key the worker cannot open the secret (the server cannot either).
    no_key = {k: v for k, v in worker_env.items() if k != "KITARU_SECRETS_KEY"}
    admin("cache", "clear")
    done = subprocess.run(
        [sys.executable, str(FLOWS), "uses_secret", "/v2/other"],
        env=no_key,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode != 0 and "KITARU_SECRETS_KEY is not set" in done.stderr
    assert SECRET_VALUE not in server.log.read_text()


NEW_ENDPOINTS = [
    ("GET", "/api/v1/secrets", None, "read"),
    ("GET", "/api/v1/secrets/API_TOKEN", None, "admin"),
    ("PUT", "/api/v1/secrets/API_TOKEN", {"ciphertext": "AAAA"}, "admin"),
    ("DELETE", "/api/v1/secrets/API_TOKEN", None, "admin"),
    ("GET", "/api/v1/waits", None, "read"),
    ("GET", "/api/v1/stats", None, "read"),
    ("GET", "/api/v1/artifacts?tag=weekly", None, "read"),
    ("GET", "/api/v1/cache", None, "read"),
    ("DELETE", "/api/v1/cache?flow=none", None, "admin"),
    ("POST", "/api/v1/executions/0/waits/approve/abort", {"reason": "x"}, "answer"),
    ("POST", "/api/v1/store/get_secret", {"name": "API_TOKEN"}, "runner"),
    ("POST", "/api/v1/store/get_cache_entry", {"key": "k"}, "runner"),
    ("POST", "/api/v1/store/find_artifacts", {"tag": "weekly"}, "runner"),
]

#: A key that lacks each endpoint's scope.
_LACKING = {"read": "runner", "admin": "answer", "answer": "read", "runner": "read"}


def test_the_new_endpoints_refuse_a_missing_key_and_a_key_without_their_scope(
    server: ServerProcess, keys: dict[str, str]
) -> None:
    for method, path, body, scope in NEW_ENDPOINTS:
        anonymous = httpx.request(method, server.url + path, json=body, timeout=30)
        assert anonymous.status_code == 401, (method, path, anonymous.text)
        with server.client(keys[_LACKING[scope]]) as http:
            lacking = http.request(method, path, json=body)
        assert lacking.status_code == 403, (method, path, lacking.text)
        assert f"lacks the {scope!r} scope" in lacking.json()["error"]["message"]
        with server.client(keys[scope]) as http:
            allowed = http.request(method, path, json=body)
        assert allowed.status_code not in (401, 403), (method, path, allowed.text)
    # A runner key reads secrets for its flows but cannot change them.
    with server.client(keys["runner"]) as http:
        put = http.post("/api/v1/store/put_secret", json={"name": "API_TOKEN", "ciphertext": "AAAA"})
    assert put.status_code == 403 and "'admin' scope" in put.json()["error"]["message"]
