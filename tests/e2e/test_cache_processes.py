"""The checkpoint cache across real processes: a code hash stable between interpreters (string
hashing is randomized per process), a changed body misses, `kitaru cache clear` empties it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

SCRIPT = """
import sys
from pathlib import Path

from kitaru import checkpoint, flow

RUNS = Path(sys.argv[1])


@checkpoint(cache=True)
def expensive(x: int) -> int:
    with RUNS.open("a") as f:
        f.write("ran\\n")
    if x in {"a", "b", 3}:  # a frozenset constant: its repr follows the per-process hash seed
        return x * BODY
    return -1


@flow
def cached_script(x: int) -> int:
    return expensive(x)


if __name__ == "__main__":
    print(cached_script.run(3).wait(timeout=60))
"""


def _run(script: Path, runs: Path, env: dict[str, str], seed: str) -> str:
    done = subprocess.run(
        [sys.executable, str(script), str(runs)],
        env={**env, "PYTHONHASHSEED": seed},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_cache_hits_across_processes_and_a_changed_body_misses(
    tmp_path: Path, subprocess_env: dict[str, str], kitaru_cli: list[str]
) -> None:
    script, runs = tmp_path / "cached_script.py", tmp_path / "runs.txt"
    script.write_text(SCRIPT.replace("BODY", "10"))

    assert _run(script, runs, subprocess_env, "1") == "30"
    assert _run(script, runs, subprocess_env, "2") == "30"
    assert runs.read_text().count("ran") == 1

    script.write_text(SCRIPT.replace("BODY", "20"))  # the body changed: a miss
    assert _run(script, runs, subprocess_env, "3") == "60"
    assert runs.read_text().count("ran") == 2

    cleared = subprocess.run(
        [*kitaru_cli, "cache", "clear", "--flow", "cached_script"],
        env=subprocess_env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert cleared.returncode == 0, cleared.stderr
    assert "2 cache entries" in cleared.stdout
    assert _run(script, runs, subprocess_env, "4") == "60"
    assert runs.read_text().count("ran") == 3
