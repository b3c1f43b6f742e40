"""A real kitaru server in a child process (``kitaru server start``), and keys for it."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

FLOWS = Path(__file__).parent / "server_flows.py"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerProcess:
    """One ``kitaru server start`` process; its output goes to a file the tests can read."""

    def __init__(
        self,
        cli: list[str],
        env: dict[str, str],
        state: str,
        log: Path,
        tick: float = 0.5,
        workers: int = 1,
        args: tuple[str, ...] = (),
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.state = state
        self.log = log
        self._out = open(log, "wb")
        self.proc = subprocess.Popen(
            [
                *cli,
                "server",
                "start",
                "--port",
                str(self.port),
                "--state",
                state,
                "--workers",
                str(workers),
                *args,
            ],
            env={**env, "KITARU_SERVER_TICK": str(tick)},
            stdout=self._out,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 60
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"the server exited ({self.proc.returncode}): {log.read_text()}")
            try:
                if httpx.get(self.url + "/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"the server did not answer within 60 s: {log.read_text()}")
            time.sleep(0.1)

    def client(self, key: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(30)
        self._out.close()


def create_key(cli: list[str], env: dict[str, str], state: str, name: str, *scopes: str) -> str:
    """A key made by `kitaru server keys create` (what an operator runs)."""
    args = [arg for scope in scopes for arg in ("--scope", scope)]
    out = subprocess.run(
        [*cli, "server", "keys", "create", name, *args, "--state", state, "-o", "json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return str(json.loads(out.stdout)["key"])


def wait_until(check: Any, timeout: float = 60, what: str = "the condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not hold within {timeout} s")
        time.sleep(0.1)


@pytest.fixture
def server_env(subprocess_env: dict[str, str], tmp_path: Path) -> dict[str, str]:
    env = {
        **subprocess_env,
        "COUNT_FILE": str(tmp_path / "count"),
        "MARK_FILE": str(tmp_path / "mark"),
        "XDG_CONFIG_HOME": str(tmp_path / "config"),
        "KITARU_LEASE_TTL": "3",
    }
    env.pop("KITARU_SERVER", None)
    env.pop("KITARU_API_KEY", None)
    return env


@pytest.fixture
def sqlite_state(kitaru_home: Path) -> str:
    return f"sqlite:///{kitaru_home / 'kitaru.db'}"


@pytest.fixture
def server(
    kitaru_cli: list[str], server_env: dict[str, str], sqlite_state: str, tmp_path: Path
) -> Iterator[ServerProcess]:
    # Request lines in the log: a failing test shows what was asked, and the key test checks them.
    process = ServerProcess(
        kitaru_cli, server_env, sqlite_state, tmp_path / "server.log", args=("--access-log",)
    )
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture
def keys(kitaru_cli: list[str], server_env: dict[str, str], sqlite_state: str) -> dict[str, str]:
    """One key per scope, by scope name."""
    return {
        scope: create_key(kitaru_cli, server_env, sqlite_state, f"{scope}-key", scope)
        for scope in ("read", "answer", "invoke", "runner", "admin")
    }


def run_flow(env: dict[str, str], *args: str, timeout: float = 120) -> str:
    """Run a flow of server_flows.py in its own process (a runner); returns the execution id."""
    out = subprocess.run(
        [sys.executable, str(FLOWS), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.strip().splitlines()[-1]
