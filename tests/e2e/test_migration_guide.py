"""docs/migrating-from-kitaru.md: its Python blocks run as written (a fragment says why it is
not run, with the README's marker), and the README points to it."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
GUIDE = ROOT / "docs" / "migrating-from-kitaru.md"
NOT_RUN = re.compile(r"<!-- not-run: fragment \((?P<why>[^)]+)\) -->\n$")


def python_blocks() -> list[tuple[int, str, str | None]]:
    text = GUIDE.read_text()
    found = []
    for match in re.finditer(r"```(?:python|py)\n(.*?)```", text, flags=re.S):
        before = text[: match.start()]
        marker = NOT_RUN.search(before[before.rstrip("\n").rfind("\n") + 1 :])
        found.append((before.count("\n") + 1, match.group(1), marker.group("why") if marker else None))
    return found


def test_the_guide_is_linked_and_its_blocks_parse() -> None:
    assert "docs/migrating-from-kitaru.md" in (ROOT / "README.md").read_text()
    blocks = python_blocks()
    assert any(why is None for _, _, why in blocks)
    for line, code, _why in blocks:
        try:
            ast.parse(code)
        except SyntaxError as exc:
            raise AssertionError(f"{GUIDE.name} line {line}: {exc}") from None


@pytest.mark.parametrize(
    ("line", "code"),
    [pytest.param(line, code, id=f"line{line}") for line, code, why in python_blocks() if why is None],
)
def test_every_guide_python_block_runs(
    line: int, code: str, tmp_path: Path, subprocess_env: dict[str, str]
) -> None:
    script = tmp_path / f"guide_line_{line}.py"
    script.write_text(code)
    env = {**subprocess_env, "KITARU_HOME": str(tmp_path / "home")}
    done = subprocess.run(
        [sys.executable, str(script)], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, f"{GUIDE.name} line {line}:\n{done.stderr}"
