"""examples/crewai_crew.py with CrewAI installed: the crew runs once, inside a checkpoint, and an
approval later the stored kickoff result is reused, not recomputed.

CrewAI is not in the dev environment (it pins shared libraries such as pydantic below kitaru's
lock), so this test runs when `crewai` is importable here, or with KITARU_CREWAI_PYTHON pointing at
an interpreter of an environment that has both crewai and kitaru installed; otherwise it skips.
tests/e2e/test_examples.py still runs the example in the dev environment, where it explains how to
install CrewAI and exits cleanly.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "crewai_crew.py"


def crewai_python() -> str | None:
    explicit = os.environ.get("KITARU_CREWAI_PYTHON")
    if explicit:
        return explicit
    return sys.executable if importlib.util.find_spec("crewai") else None


def test_crew_kickoff_is_a_checkpoint_reused_on_resume(
    tmp_path: Path, subprocess_env: dict[str, str]
) -> None:
    python = crewai_python()
    if python is None:
        pytest.skip("crewai is not installed (set KITARU_CREWAI_PYTHON to an environment that has it)")
    count = tmp_path / "kickoffs.txt"
    env = {**subprocess_env, "CREW_COUNT_FILE": str(count)}
    started = subprocess.run(
        [python, str(EXAMPLE)], env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path
    )
    assert started.returncode == 0, started.stderr
    match = re.search(r"execution (\w+) is waiting", started.stdout)
    assert match, started.stdout
    cli = [python, "-c", "from kitaru.cli import main; main()"]
    done = subprocess.run(
        [*cli, "executions", "input", match.group(1), "--value", "true"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "completed" in done.stdout
    assert count.read_text().split() == ["kickoff"]  # the crew ran once; the resume reused it


def test_without_crewai_the_example_explains_itself(subprocess_env: dict[str, str]) -> None:
    if importlib.util.find_spec("crewai"):
        pytest.skip("crewai is installed here")
    done = subprocess.run(
        [sys.executable, str(EXAMPLE)], env=subprocess_env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0 and "pip install crewai" in done.stdout
