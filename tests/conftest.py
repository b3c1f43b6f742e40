"""Shared fixtures: every test gets its own kitaru home, and engine tests run on each embedded
state store (SQLite with the filesystem artifact store, and the in-memory pair)."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from kitaru._engine.runtime import Runtime, close_stack_runtimes, set_runtime, use_runtime
from kitaru.store.filesystem import FilesystemArtifactStore
from kitaru.store.memory import MemoryArtifactStore, MemoryStateStore
from kitaru.store.sqlite import SQLiteStateStore

ROOT = Path(__file__).resolve().parent.parent

# The conformance suites live in the package; rewrite their asserts so failures show values. This
# runs before any test module imports them (tests/server and stacks/*/tests do too).
pytest.register_assert_rewrite(
    "kitaru.store.catalog_conformance",
    "kitaru.store.conformance",
    "kitaru.store.deploy_conformance",
    "kitaru.store.objectstore_conformance",
)

# Fixtures that start real backing services (only when a test asks for them).
pytest_plugins = ["tests._services.postgres", "tests._services.kube"]


@pytest.fixture(autouse=True)
def kitaru_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "kitaru-home"
    monkeypatch.setenv("KITARU_HOME", str(home))
    monkeypatch.delenv("KITARU_STACK", raising=False)
    monkeypatch.delenv("KITARU_WAIT_HOLD", raising=False)
    monkeypatch.delenv("KITARU_SECRETS_KEY", raising=False)
    # Stack config: no user file but the test's own, no overrides from the calling shell.
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.delenv("KITARU_CONFIG", raising=False)
    for name in [n for n in os.environ if n.upper().startswith("KITARU_STACK__")]:
        monkeypatch.delenv(name)
    return home


@pytest.fixture(autouse=True)
def fresh_default_runtime() -> Iterator[None]:
    """The process-wide runtime opens from KITARU_HOME on first use: give each test its own (and
    no process defaults from kitaru.configure() of an earlier test)."""
    from kitaru.config import configure

    configure(stack=None, model=None, allow_pickle=None, cache=None, retries=None, image=None)
    set_runtime(None)
    yield
    configure(stack=None, model=None, allow_pickle=None, cache=None, retries=None, image=None)
    previous = set_runtime(None)
    if previous is not None:
        previous.close()
    close_stack_runtimes()


@pytest.fixture(params=["sqlite", "memory", "postgres"])
def runtime(request: pytest.FixtureRequest, kitaru_home: Path) -> Iterator[Runtime]:
    """A runtime on each state store (PostgreSQL: a fresh database on the session's throwaway
    server); ``kitaru.*`` calls in the test use it."""
    if request.param == "postgres":
        from kitaru.store.postgres import PostgresStateStore

        rt = Runtime(
            PostgresStateStore(request.getfixturevalue("postgres_dsn")),
            FilesystemArtifactStore(kitaru_home / "artifacts"),
            heartbeat_interval=0.05,
        )
    elif request.param == "sqlite":
        rt = Runtime(
            SQLiteStateStore(kitaru_home / "kitaru.db"),
            FilesystemArtifactStore(kitaru_home / "artifacts"),
            heartbeat_interval=0.05,
        )
    else:
        rt = Runtime(MemoryStateStore(), MemoryArtifactStore(), heartbeat_interval=0.05)
    with use_runtime(rt):
        yield rt
    rt.close()


@pytest.fixture
def subprocess_env(kitaru_home: Path) -> dict[str, str]:
    """Environment for child processes: same home, the project importable, output unbuffered."""
    env = dict(os.environ)
    env["KITARU_HOME"] = str(kitaru_home)
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


@pytest.fixture
def kitaru_cli() -> list[str]:
    """The ``kitaru`` console script of this environment."""
    script = Path(sys.executable).with_name("kitaru")
    return [str(script)] if script.exists() else [sys.executable, "-m", "kitaru.cli"]
