"""Every example in the README and in examples/ runs as written, in real processes."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from kitaru.store.sqlite import SQLiteStateStore

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
RUNNER = "./uvw run "


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.S)


def as_local_command(line: str, kitaru_cli: list[str]) -> list[str] | None:
    """A README command line, run in this test environment: `./uvw run [--flags] X` runs X inside
    the environment uv built, which is this one; `kitaru ...` is this environment's CLI; putting
    that environment on PATH (None) is what `kitaru_cli` already is."""
    line = line.split("#", 1)[0].strip()
    if line.startswith("export PATH="):
        return None
    words = line.removeprefix(RUNNER).split() if line.startswith(RUNNER) else line.split()
    while words and words[0].startswith("--"):
        words.pop(0)
    if words[0] == "kitaru":
        return [*kitaru_cli, *words[1:]]
    if words[0].endswith(".py"):
        return [sys.executable, str(ROOT / words[0]), *[w.strip('"') for w in words[1:]]]
    raise AssertionError(f"README command not covered by this test: {line}")


def test_readme_starts_with_the_two_setup_commands() -> None:
    first, second = blocks("bash")[:2]
    assert first.strip().startswith(RUNNER + "--locked --no-dev examples/quickstart.py")
    assert second.strip() == RUNNER + "--locked pytest"
    ci = (ROOT / ".ci" / "run").read_text()
    assert second.strip() in ci  # CI runs exactly the README's test command


def test_quickstart_commands_from_the_readme(
    tmp_path: Path, subprocess_env: dict[str, str], kitaru_cli: list[str], kitaru_home: Path
) -> None:
    quickstart_line = blocks("bash")[0].strip()
    command = as_local_command(quickstart_line, kitaru_cli)
    assert command is not None
    started = subprocess.run(
        command,
        env=subprocess_env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert started.returncode == 0, started.stderr
    match = re.search(r"execution (\w+) is waiting for approval", started.stdout)
    assert match, started.stdout
    exec_id = match.group(1)
    assert re.search(rf"approve it with:  \S*kitaru executions input {exec_id} --value true", started.stdout)
    # The process is gone: nothing runs this execution while it waits.
    assert not _processes_running("examples/quickstart.py")

    store = SQLiteStateStore(kitaru_home / "kitaru.db")
    before = store.read_journal(exec_id)

    # A bad answer from the CLI is refused and changes nothing.
    bad = subprocess.run(
        [*kitaru_cli, "executions", "input", exec_id, "--value", '"maybe"'],
        env=subprocess_env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode != 0 and "expected bool" in bad.stderr
    assert store.read_journal(exec_id) == before
    assert store.get_execution(exec_id).status == "waiting"  # type: ignore[union-attr]

    # The README's commands, in order, from another directory.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    outputs = []
    assert blocks("bash")[3].strip().startswith(quickstart_line)
    for line in blocks("bash")[4].strip().splitlines():
        command = as_local_command(line.replace("<exec_id>", exec_id), kitaru_cli)
        if command is None:
            continue
        done = subprocess.run(
            command, env=subprocess_env, cwd=elsewhere, capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, (line, done.stderr)
        outputs.append(done.stdout)
    assert exec_id in outputs[0]
    assert "approve_draft" in outputs[1]
    assert "completed" in outputs[2]

    final = store.get_execution(exec_id)
    assert final is not None and final.status == "completed"
    completed = Counter(r.call_id for r in store.read_journal(exec_id) if r.kind == "checkpoint_completed")
    assert completed == {"research": 1, "draft": 1, "publish": 1}
    result = json.loads(store.get_artifact(final.result_artifact or "").inline)  # type: ignore[union-attr]
    assert result.startswith("published ")
    store.close()


def test_readme_python_example_runs(tmp_path: Path, subprocess_env: dict[str, str]) -> None:
    [code] = blocks("python")
    script = tmp_path / "readme_example.py"
    script.write_text(code)
    done = subprocess.run(
        [sys.executable, str(script)], env=subprocess_env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].endswith(" waiting")
    assert lines[1] == "NOTES ON AGENTS"
    assert lines[2] == "['PART 0', 'PART 1', 'PART 2']"


@pytest.mark.parametrize("example", sorted(p.name for p in (ROOT / "examples").glob("[!_]*.py")), ids=str)
def test_every_example_runs(example: str, subprocess_env: dict[str, str]) -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / example)],
        env=subprocess_env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip()


def _processes_running(fragment: str) -> bool:
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if fragment in cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                return True
        except OSError:
            continue
    return False


def test_readme_fragments_are_valid_python() -> None:
    # ```py blocks are fragments of the runnable examples/ files (each run above); they must at
    # least parse, so a renamed argument or a typo shows up here.
    import ast

    fragments = blocks("py")
    assert fragments
    for fragment in fragments:
        ast.parse(fragment)
