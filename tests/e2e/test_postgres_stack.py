"""The quickstart, unchanged, with its state in PostgreSQL: the stack's ``state`` key is all that
changes (here through ``KITARU_STACK__STATE``). It suspends on its wait, the process exits, an
answer from another process resumes it, and everything it recorded is in the server's database."""

from __future__ import annotations

import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from kitaru.store import sync_view
from kitaru.store.postgres import PostgresStateStore

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]


def test_quickstart_on_postgres_state(
    tmp_path: Path,
    subprocess_env: dict[str, str],
    kitaru_cli: list[str],
    kitaru_home: Path,
    postgres_dsn: str,
) -> None:
    env = {**subprocess_env, "KITARU_STACK__STATE": postgres_dsn}
    started = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "quickstart.py"), "durable agents"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert started.returncode == 0, started.stderr
    match = re.search(r"execution (\w+) is waiting for approval", started.stdout)
    assert match, started.stdout
    exec_id = match.group(1)
    assert not (kitaru_home / "kitaru.db").exists()  # nothing went to the embedded store

    answered = subprocess.run(
        [*kitaru_cli, "executions", "input", exec_id, "--value", "true"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert answered.returncode == 0, answered.stderr

    store = sync_view(PostgresStateStore(postgres_dsn))
    try:
        execution = store.get_execution(exec_id)
        assert execution is not None and execution.status == "completed", execution
        journal = store.read_journal(exec_id)
        completed = Counter(r.call_id for r in journal if r.kind == "checkpoint_completed")
        assert completed == {"research": 1, "draft": 1, "publish": 1}
        assert [r.kind for r in journal].count("wait_answered") == 1
        result = store.get_artifact(execution.result_artifact or "")
        assert result is not None and result.inline is not None
        assert b"published" in result.inline
    finally:
        store.close()
