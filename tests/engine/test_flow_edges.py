"""Edges of starting flows: ids, and code imported to resume an execution starting nothing."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from kitaru import flow
from kitaru._engine.flow import load_flow
from kitaru._engine.runtime import Runtime
from kitaru.errors import KitaruUsageError


@flow
def plain(x: int) -> int:
    return x + 1


class TestExecutionIds:
    def test_an_empty_execution_id_is_refused_before_anything_runs(self, runtime: Runtime) -> None:
        for empty in ("", "   "):
            with pytest.raises(KitaruUsageError, match=r"execution_id=.* is empty"):
                plain.run(1, execution_id=empty)
        assert runtime.state.list_executions() == []

    async def _start_empty(self) -> None:
        await plain.start(1, execution_id="")

    def test_start_refuses_it_too(self, runtime: Runtime) -> None:
        import asyncio

        with pytest.raises(KitaruUsageError, match="is empty"):
            asyncio.run(self._start_empty())
        assert runtime.state.list_executions() == []


SCRIPT = """
import asyncio

import kitaru


@kitaru.flow
def top_level(x: int) -> int:
    return x * 3


# Unguarded top-level calls: each would start or drive an execution when imported.
ran = top_level.run(1)
started = asyncio.run(top_level.start(2))
replayed = top_level.replay("some-execution", from_="x")
results = (ran.status, ran.wait(), started.status, replayed.status)
"""


class TestLoadingCodeStartsNothing:
    def test_run_start_and_replay_at_top_level_are_skipped_with_one_warning(
        self, runtime: Runtime, tmp_path: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        script = tmp_path / "script_flow.py"
        script.write_text(SCRIPT)
        with caplog.at_level(logging.WARNING, logger="kitaru"):
            loaded = load_flow(f"{script}:top_level", str(tmp_path))
        assert loaded.target == f"{script.resolve()}:top_level"  # the path, not the private module
        assert runtime.state.list_executions() == []
        import sys

        module = sys.modules[loaded.fn.__module__]
        assert module.results == ("skipped", None, "skipped", "skipped")
        warnings = [r for r in caplog.records if "skipped" in r.getMessage()]
        assert len(warnings) == 1
        assert 'if __name__ == "__main__":' in warnings[0].getMessage()
        # Outside the import, the same flow runs for real.
        assert loaded.run(2).wait() == 6
