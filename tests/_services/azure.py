"""Azure Blob for tests: Azurite (npm), blob service only, on a free port of 127.0.0.1, its data in a
temporary directory.

Azurite is installed project-locally by ``.ci/run`` (``npm ci --prefix .ci``: the version is pinned
in ``.ci/package.json`` and ``.ci/package-lock.json``), never globally. It runs with
``--skipApiVersionCheck`` (current azure-storage-blob speaks a newer API version than Azurite
knows) and ``--loose``. No pytest in :class:`Azurite`: ``benchmarks/run.py`` starts the same server.
"""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests._services import missing
from tests._services.s3 import end_process, free_port, wait_ready

__all__ = ["ACCOUNT", "ACCOUNT_KEY", "INSTALL", "Azurite", "azurite", "azurite_binary"]

ROOT = Path(__file__).resolve().parents[2]
INSTALL = (
    "npm ci --prefix .ci  (Azurite, pinned in .ci/package.json; needs node and npm: apt-get install -y npm)"
)
#: Azurite's well-known development account (public, documented by Microsoft).
ACCOUNT = "devstoreaccount1"
ACCOUNT_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
_containers = itertools.count(1)


def azurite_binary() -> Path | None:
    """``azurite-blob`` from the project-local install, or None."""
    local = ROOT / ".ci" / "node_modules" / ".bin" / "azurite-blob"
    if local.exists() and shutil.which("node"):
        return local
    found = shutil.which("azurite-blob")
    return Path(found) if found else None


class Azurite:
    """Azurite's blob service in a child process."""

    def __init__(self, binary: Path) -> None:
        self.binary = binary
        self.port = free_port()
        self.account_url = f"http://127.0.0.1:{self.port}/{ACCOUNT}"
        self.workdir = Path(tempfile.mkdtemp(prefix="kitaru-azurite-"))
        self.log = self.workdir / "azurite.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def connection_string(self) -> str:
        return (
            f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={ACCOUNT_KEY};"
            f"BlobEndpoint={self.account_url};"
        )

    def start(self) -> Azurite:
        (self.workdir / "data").mkdir()
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [
                    str(self.binary),
                    "--blobHost",
                    "127.0.0.1",
                    "--blobPort",
                    str(self.port),
                    "--location",
                    str(self.workdir / "data"),
                    "--skipApiVersionCheck",
                    "--loose",
                    "--silent",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
            )
        proc = self.proc
        try:
            wait_ready(f"http://127.0.0.1:{self.port}/", 60, alive=lambda: proc.poll() is None)
        except RuntimeError:
            self.stop()
            raise RuntimeError(f"Azurite did not start: {self.log.read_text()[-2000:]}") from None
        return self

    def stop(self) -> None:
        if self.proc is not None:
            end_process(self.proc)
            self.proc = None
        shutil.rmtree(self.workdir, ignore_errors=True)

    def options(self) -> dict[str, Any]:
        """The artifact store options (stack config keys) that reach this server."""
        return {"connection_string": self.connection_string}

    def create_container(self, name: str | None = None) -> str:
        from azure.storage.blob import BlobServiceClient

        name = name or f"kitaru-test-{os.getpid()}-{next(_containers)}"
        with BlobServiceClient.from_connection_string(self.connection_string) as service:
            service.create_container(name)
        return name


@pytest.fixture(scope="session")
def azurite() -> Iterator[Azurite]:
    """One Azurite blob service for the session."""
    binary = azurite_binary()
    if binary is None:
        missing("Azurite (the Azure Blob emulator)", INSTALL)
        raise AssertionError("unreachable")
    server = Azurite(binary).start()
    yield server
    server.stop()
