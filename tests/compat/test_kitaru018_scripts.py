"""Scripts written for the original Kitaru (0.18) run here unchanged.

Each file in ``scripts/`` is a program as a 0.18 user wrote it (from that release's documentation),
run as-is in its own process on a fresh kitaru home. Its first lines may say what it must print:

    # expect: <text that must appear in its output>

and a script that must fail says ``# exit: N``. Scripts check their own results with ``assert`` too,
so a surface that is accepted but ignored fails here.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

SCRIPTS = sorted((Path(__file__).parent / "scripts").glob("*.py"))


def expectations(script: Path) -> tuple[list[str], int]:
    head = script.read_text().splitlines()[:20]
    expects = [m.group(1).strip() for line in head if (m := re.match(r"#\s*expect:\s*(.*)", line))]
    exits = [int(m.group(1)) for line in head if (m := re.match(r"#\s*exit:\s*(\d+)", line))]
    return expects, exits[0] if exits else 0


@pytest.mark.parametrize("script", SCRIPTS, ids=[s.stem for s in SCRIPTS])
def test_a_kitaru_018_script_runs_unchanged(
    script: Path, tmp_path: Path, subprocess_env: dict[str, str]
) -> None:
    expects, code = expectations(script)
    done = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        env=subprocess_env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    said = done.stdout + done.stderr
    assert done.returncode == code, said
    for text in expects:
        assert text in said, f"{script.name} did not print {text!r}:\n{said}"
