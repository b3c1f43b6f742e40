"""Every example in the README and in examples/ runs as written, in real processes."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from kitaru.store import sync_view
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

    store = sync_view(SQLiteStateStore(kitaru_home / "kitaru.db"))
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
    assert blocks("bash")[4].strip().startswith(quickstart_line)
    for line in blocks("bash")[5].strip().splitlines():
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
    # "The API in one screen", the README's first Python block, prints what it promises.
    code = blocks("python")[0]
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


#: The comment that marks a README Python block as a fragment: parsed, not run. It must say why.
NOT_RUN = re.compile(r"<!-- not-run: fragment \((?P<why>[^)]+)\) -->\n$")


def python_blocks() -> list[tuple[int, str, str | None]]:
    """Every ```python and ```py block: its line, its code, and why it is not run (None: it runs)."""
    found = []
    for match in re.finditer(r"```(?:python|py)\n(.*?)```", README, flags=re.S):
        before = README[: match.start()]
        marker = NOT_RUN.search(before[before.rstrip("\n").rfind("\n") + 1 :])
        found.append((before.count("\n") + 1, match.group(1), marker.group("why") if marker else None))
    return found


def test_readme_marks_its_fragments() -> None:
    blocks_found = python_blocks()
    assert len(blocks_found) >= 3
    # A marker anywhere else (a typo, a marker before a bash block) would skip nothing: refuse it.
    assert README.count("<!-- not-run:") == sum(why is not None for _, _, why in blocks_found)
    import ast

    for line, code, _why in blocks_found:
        try:
            ast.parse(code)  # fragments must at least parse: a renamed argument shows up here
        except SyntaxError as exc:
            raise AssertionError(f"README.md line {line}: {exc}") from None


@pytest.mark.parametrize(
    ("line", "code"),
    [pytest.param(line, code, id=f"line{line}") for line, code, why in python_blocks() if why is None],
)
def test_every_readme_python_block_runs(
    line: int, code: str, tmp_path: Path, subprocess_env: dict[str, str]
) -> None:
    """Offline, in a fresh process, with a home of its own."""
    script = tmp_path / f"readme_line_{line}.py"
    script.write_text(code)
    env = {**subprocess_env, "KITARU_HOME": str(tmp_path / "home")}
    for proxy in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
        env.pop(proxy, None)
    env["NO_PROXY"] = env["no_proxy"] = "*"
    done = subprocess.run(
        [sys.executable, str(script)], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, f"README.md line {line}:\n{done.stderr}"


#: Each agent example, the wait it stops at, and how its result starts once approved.
APPROVALS = [
    ("quickstart.py", [], "approve_draft"),
    ("llm_calls.py", [], "approve"),
    ("pydantic_ai_agent.py", [], "support.approve.refund"),
    ("openai_agents_agent.py", ["per_call"], "triage.approve.refund"),
    ("openai_agents_agent.py", ["runner_call"], "triage_run.approve.refund"),
    # crewai_crew.py needs CrewAI's own environment: tests/adapters/test_crewai_example.py runs it
    # there through its approval.
]


@pytest.mark.parametrize(
    ("example", "args", "wait_name"), APPROVALS, ids=[" ".join([e, *a]) for e, a, _ in APPROVALS]
)
def test_agent_example_stops_at_its_approval_and_completes_once_answered(
    example: str,
    args: list[str],
    wait_name: str,
    tmp_path: Path,
    subprocess_env: dict[str, str],
    kitaru_cli: list[str],
    kitaru_home: Path,
) -> None:
    started = subprocess.run(
        [sys.executable, str(ROOT / "examples" / example), *args],
        env=subprocess_env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert started.returncode == 0, started.stderr
    match = re.search(r"execution (\w+)\b.* waiting for approval", started.stdout)
    assert match, started.stdout
    exec_id = match.group(1)
    assert f"kitaru executions input {exec_id} --value true" in started.stdout

    store = sync_view(SQLiteStateStore(kitaru_home / "kitaru.db"))
    try:
        execution = store.get_execution(exec_id)
        assert execution is not None and execution.status == "waiting"
        journal = store.read_journal(exec_id)
        opened = [r.call_id for r in journal if r.kind == "wait_opened"]
        assert opened == [wait_name]  # stopped at its approval, and nothing else
        done_before = Counter(r.call_id for r in journal if r.kind == "checkpoint_completed")

        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir()
        answered = subprocess.run(
            [*kitaru_cli, "executions", "input", exec_id, "--value", "true"],
            env=subprocess_env,
            cwd=elsewhere,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert answered.returncode == 0, answered.stderr
        assert f"execution {exec_id} is completed" in answered.stdout
        final = store.get_execution(exec_id)
        assert final is not None and final.status == "completed" and final.result_artifact
        after = Counter(r.call_id for r in store.read_journal(exec_id) if r.kind == "checkpoint_completed")
        # Everything completed before the approval was reused, not run again.
        assert all(after[call] == 1 for call in done_before), after
    finally:
        store.close()


@pytest.mark.parametrize(
    ("example", "module", "extra"),
    [
        ("pydantic_ai_agent.py", "pydantic_ai", "pydantic-ai"),
        ("openai_agents_agent.py", "agents", "openai-agents"),
    ],
)
def test_an_agent_example_without_its_framework_says_how_to_install_it(
    example: str, module: str, extra: str, subprocess_env: dict[str, str]
) -> None:
    """Run as written in an environment without the extra: a sentence naming the install command
    from the checkout (never a bare `kitaru[...]`, which a package index resolves to another
    project), not a traceback."""
    probe = (
        "import runpy, sys\n"
        "class Hide:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        f"        if name.split('.')[0] == {module!r}:\n"
        "            raise ModuleNotFoundError(f'No module named {name!r}')\n"
        "sys.meta_path.insert(0, Hide())\n"
        f"sys.argv = [{str(ROOT / 'examples' / example)!r}]\n"
        "runpy.run_path(sys.argv[0], run_name='__main__')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], env=subprocess_env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    assert f"./uvw sync --inexact --extra {extra}" in done.stderr
    assert f"pip install '.[{extra}]'" in done.stderr
    assert "'kitaru[" not in (ROOT / "examples" / example).read_text()
