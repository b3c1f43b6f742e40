"""Choosing a stack: the active one from the config, or one named by ``flow.run(stack=...)``,
``await flow.start(stack=...)`` and ``KitaruClient(stack=...)``; each lands in its own stores."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

import kitaru
from kitaru._engine.runtime import get_runtime
from kitaru.errors import KitaruConfigError

Writer = Callable[[str], Path]

CALLS: list[str] = []


@kitaru.checkpoint
def big(n: int) -> bytes:
    CALLS.append("big")
    return b"x" * n  # over the inline limit: lands in the artifact store


@kitaru.flow
def blob_flow(n: int) -> int:
    return len(big(n))


@kitaru.flow
def approve_flow() -> str:
    return "yes" if kitaru.wait(name="ok", schema=bool) else "no"


@kitaru.flow
async def async_flow(n: int) -> int:
    return len(await asyncio.to_thread(lambda: b"y" * n))


def executions_in(db: Path) -> list[str]:
    with sqlite3.connect(db) as conn:
        return [row[0] for row in conn.execute("SELECT id FROM executions ORDER BY id")]


def blobs_in(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


@pytest.fixture
def two_stacks(tmp_path: Path, user_file: Writer, project_dir: Path) -> dict[str, tuple[Path, Path]]:
    """Stacks ``a`` (active) and ``b``, each with its own SQLite file and artifact directory."""
    paths = {name: (tmp_path / f"{name}.db", tmp_path / f"{name}-artifacts") for name in "ab"}
    user_file(
        'active_stack = "a"\n'
        + "".join(
            f'[stacks.{name}]\ntype = "local"\nstate = "sqlite:///{db}"\nartifacts = "{art.as_uri()}"\n'
            for name, (db, art) in paths.items()
        )
    )
    return paths


def test_get_runtime_opens_the_active_stack_from_the_config(
    two_stacks: dict[str, tuple[Path, Path]], kitaru_home: Path
) -> None:
    runtime = get_runtime()
    assert runtime.stack_name == "a"
    handle = blob_flow.run(100_000)
    assert handle.wait(timeout=60) == 100_000
    db_a, art_a = two_stacks["a"]
    assert executions_in(db_a) == [handle.exec_id]
    assert blobs_in(art_a)
    assert not (kitaru_home / "kitaru.db").exists()


def test_flow_run_on_a_named_stack(two_stacks: dict[str, tuple[Path, Path]]) -> None:
    (db_a, art_a), (db_b, art_b) = two_stacks["a"], two_stacks["b"]
    on_a = blob_flow.run(100_000)
    on_b = blob_flow.run(200_000, stack="b")
    assert (on_a.wait(timeout=60), on_b.wait(timeout=60)) == (100_000, 200_000)
    assert executions_in(db_a) == [on_a.exec_id]
    assert executions_in(db_b) == [on_b.exec_id]
    assert [p.stat().st_size for p in blobs_in(art_a)] == [100_000]
    assert [p.stat().st_size for p in blobs_in(art_b)] == [200_000]
    # One runtime per stack name, cached for the process; the active stack's is the default one.
    assert get_runtime("b") is get_runtime("b")
    assert get_runtime("a") is get_runtime()
    assert get_runtime("b").stack_name == "b"


def test_idempotent_start_is_per_stack(two_stacks: dict[str, tuple[Path, Path]]) -> None:
    first = blob_flow.run(10, execution_id="order-1", stack="b")
    again = blob_flow.run(10, execution_id="order-1", stack="b")
    elsewhere = blob_flow.run(10, execution_id="order-1")
    assert first.exec_id == again.exec_id == elsewhere.exec_id == "order-1"
    assert executions_in(two_stacks["b"][0]) == ["order-1"]
    assert executions_in(two_stacks["a"][0]) == ["order-1"]


def test_await_start_on_a_named_stack(two_stacks: dict[str, tuple[Path, Path]]) -> None:
    async def main() -> tuple[str, int]:
        handle = await async_flow.start(7, stack="b")
        return handle.exec_id, await handle.result(timeout=60)

    exec_id, value = asyncio.run(main())
    assert value == 7
    assert executions_in(two_stacks["b"][0]) == [exec_id]
    assert not two_stacks["a"][0].exists() or executions_in(two_stacks["a"][0]) == []


def test_client_on_a_named_stack_answers_and_resumes(two_stacks: dict[str, tuple[Path, Path]]) -> None:
    handle = approve_flow.run(stack="b")
    assert handle.status == "waiting"
    assert kitaru.KitaruClient().executions.list() == []  # the active stack, a, has none
    client = kitaru.KitaruClient(stack="b")
    assert [e.id for e in client.executions.list()] == [handle.exec_id]
    client.executions.input(handle.exec_id, True)
    assert handle.wait(timeout=10) == "yes"


def test_environment_picks_the_stack(
    two_stacks: dict[str, tuple[Path, Path]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KITARU_STACK", "b")
    handle = blob_flow.run(10)
    assert executions_in(two_stacks["b"][0]) == [handle.exec_id]


def test_an_unknown_stack_name_fails_before_anything_runs(two_stacks: dict[str, tuple[Path, Path]]) -> None:
    CALLS.clear()
    with pytest.raises(
        KitaruConfigError, match=r"unknown stack 'c' \(call argument\); known stacks: a, b, local"
    ):
        blob_flow.run(10, stack="c")
    assert CALLS == []
