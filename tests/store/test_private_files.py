"""Files under kitaru's home are private to their owner whatever the umask: the home and artifact
directories 0700, the database (with its -wal and -shm) and artifact blobs 0600."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

import kitaru
from kitaru._engine.runtime import get_runtime


@kitaru.checkpoint
def big() -> str:
    return "s" * 100_000  # a blob in the artifact store


@kitaru.flow
def secret_flow(prompt: str) -> int:
    return len(big()) + len(prompt)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture(params=[0o000, 0o022, 0o002])
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    previous = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(previous)


def test_home_database_and_artifacts_are_private(umask: int, kitaru_home: Path) -> None:
    assert not kitaru_home.exists()
    assert secret_flow.run("my api prompt").wait() == 100_013
    get_runtime()  # the store stays open: -wal and -shm exist now
    assert mode(kitaru_home) == 0o700
    db_files = [kitaru_home / n for n in ("kitaru.db", "kitaru.db-wal", "kitaru.db-shm")]
    assert {p.name: mode(p) for p in db_files} == {p.name: 0o600 for p in db_files}
    artifacts = kitaru_home / "artifacts"
    dirs = [artifacts, *(p for p in artifacts.rglob("*") if p.is_dir())]
    blobs = [p for p in artifacts.rglob("*") if p.is_file()]
    assert len(dirs) >= 3 and blobs
    assert {str(d): mode(d) for d in dirs} == {str(d): 0o700 for d in dirs}
    assert {str(b): mode(b) for b in blobs} == {str(b): 0o600 for b in blobs}


def test_an_existing_shared_home_keeps_its_mode(umask: int, kitaru_home: Path) -> None:
    # A home the user made and shares on purpose is theirs to set; its files are still private.
    kitaru_home.mkdir()
    os.chmod(kitaru_home, 0o750)
    assert secret_flow.run("x").wait() == 100_001
    assert mode(kitaru_home) == 0o750
    assert mode(kitaru_home / "kitaru.db") == 0o600
    assert mode(kitaru_home / "artifacts") == 0o700
