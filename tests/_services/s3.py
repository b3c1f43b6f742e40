"""S3 for tests: moto in server mode, a real HTTP server on a free port of 127.0.0.1.

:class:`MotoServer` runs ``moto_server`` as a child process (one per test session, shared by the
tests through the ``s3_server`` fixture; each test makes its own bucket). :class:`RestartableMoto`
runs moto's threaded server in this process instead: its data lives in this process, so it can be
stopped and started again on the same port with the buckets intact (the chaos tests). Neither has
pytest in it, so ``benchmarks/run.py`` starts the same server.
"""

from __future__ import annotations

import importlib.util
import itertools
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests._services import missing

__all__ = [
    "INSTALL",
    "MotoServer",
    "RestartableMoto",
    "free_port",
    "moto_installed",
    "s3_server",
    "wait_ready",
]

INSTALL = "uv sync  (moto[server] is in the dev dependency group)"
#: Credentials moto accepts (it does not check them unless told to).
CREDENTIALS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing", "region": "us-east-1"}
_buckets = itertools.count(1)


def moto_installed() -> bool:
    return all(importlib.util.find_spec(m) is not None for m in ("moto", "flask", "werkzeug"))


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def end_process(proc: subprocess.Popen[Any]) -> None:
    """Stop a server process: politely, then for sure."""
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def wait_ready(url: str, timeout: float, alive: Any = None) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except urllib.error.HTTPError:
            return  # any HTTP answer means it listens
        except OSError:
            if time.monotonic() > deadline or (alive is not None and not alive()):
                raise RuntimeError(f"S3 emulator at {url} did not come up within {timeout} s") from None
            time.sleep(0.05)


class _Buckets:
    endpoint_url: str

    def options(self) -> dict[str, Any]:
        """The artifact store options (stack config keys) that reach this server."""
        return {"endpoint_url": self.endpoint_url, **CREDENTIALS}

    def create_bucket(self, name: str | None = None) -> str:
        """Create a bucket (a fresh name unless given) and return its name."""
        name = name or f"kitaru-test-{os.getpid()}-{next(_buckets)}"
        request = urllib.request.Request(f"{self.endpoint_url}/{name}", method="PUT")
        with urllib.request.urlopen(request, timeout=30):
            pass
        return name


class MotoServer(_Buckets):
    """``moto_server`` in a child process on a free port."""

    def __init__(self) -> None:
        self.port = free_port()
        self.endpoint_url = f"http://127.0.0.1:{self.port}"
        self.workdir = Path(tempfile.mkdtemp(prefix="kitaru-moto-"))
        self.log = self.workdir / "moto.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> MotoServer:
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
            )
        proc = self.proc
        try:
            wait_ready(self.endpoint_url, 60, alive=lambda: proc.poll() is None)
        except RuntimeError:
            self.stop()
            raise RuntimeError(f"moto_server did not start: {self.log.read_text()[-2000:]}") from None
        return self

    def stop(self) -> None:
        if self.proc is not None:
            end_process(self.proc)
            self.proc = None
        shutil.rmtree(self.workdir, ignore_errors=True)


class RestartableMoto(_Buckets):
    """moto's threaded server in this process; ``stop()`` then ``start()`` keeps the buckets
    (moto's backends live in this process) and the port."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.endpoint_url = f"http://127.0.0.1:{self.port}"
        self._server: Any = None

    def start(self) -> RestartableMoto:
        from moto.moto_server.werkzeug_app import MotoRequestHandler
        from moto.server import ThreadedMotoServer

        # One connection per request (HTTP/1.0): a kept-alive connection would outlive stop(),
        # served by its handler thread, and the outage would not reach a client already connected.
        MotoRequestHandler.protocol_version = "HTTP/1.0"
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self._server.start()
        wait_ready(self.endpoint_url, 30)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            # ThreadedMotoServer.stop() leaves the socket listening: clients would hang on a
            # backlog nobody accepts instead of being refused, as with a server that is down.
            self._server._server.server_close()
            self._server = None


@pytest.fixture(scope="session")
def s3_server() -> Iterator[MotoServer]:
    """One moto server for the session."""
    if not moto_installed():
        missing("moto[server] (the S3 emulator)", INSTALL)
    server = MotoServer().start()
    yield server
    server.stop()
