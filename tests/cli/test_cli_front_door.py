"""What a new user meets first, walking the README: every command that reports something speaks
JSON, tables stay one row per item, labels line up, and the server extra holds what the server
needs to start."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

import kitaru
from kitaru.cli import main

ROOT = Path(__file__).resolve().parents[2]

#: The commands with no ``-o json``, and why: each prints a script, serves, runs, or prints a
#: bare key meant for `$(...)`. The README names them; a new command must take -o or be added here.
NO_JSON = {"completion", "mcp", "server start", "worker run", "worker call", "secrets new-key"}


def run(*args: str, input: str | None = None) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args), input=input)
    return result.exit_code, result.stdout, result.stderr


def leaves(command: click.Command, path: tuple[str, ...] = ()) -> Iterator[tuple[str, click.Command]]:
    if isinstance(command, click.Group):
        ctx = click.Context(command)
        for name in command.list_commands(ctx):
            sub = command.get_command(ctx, name)
            assert sub is not None
            yield from leaves(sub, (*path, name))
    else:
        yield " ".join(path), command


@kitaru.checkpoint(cache=True)
def double(n: int) -> int:
    return 2 * n


@kitaru.flow
def cached_flow(n: int) -> int:
    return double(n)


@kitaru.flow
def long_question_flow() -> bool:
    question = "Publish this draft?\n\n# Title\n\nA whole draft, line after line.\n- and a list"
    return kitaru.wait(name="approve", question=question, schema=bool)


class TestOutputJson:
    def test_every_command_that_reports_takes_it(self) -> None:
        without = {
            path
            for path, command in leaves(main)
            if not any("--output" in getattr(p, "opts", []) for p in command.params)
        }
        assert without == NO_JSON

    def test_the_readme_names_the_commands_without_it(self) -> None:
        readme = " ".join((ROOT / "README.md").read_text().split())
        sentence = re.search(
            r"Every command that reports something takes `-o json` \(all but (.*?)\)", readme
        )
        assert sentence is not None
        named = set(re.findall(r"`([^`]+)`", sentence.group(1)))
        assert named == {c.split()[0] if c.startswith("worker") else c for c in NO_JSON}

    def test_cache_clear(self) -> None:
        cached_flow.run(3).wait(timeout=60)
        code, out, err = run("cache", "clear", "--flow", "cached_flow", "-o", "json")
        assert code == 0, err
        assert json.loads(out) == {"removed": 1, "flow": "cached_flow"}
        code, out, _ = run("cache", "list", "-o", "json")
        assert code == 0 and json.loads(out) == []

    def test_secrets_set_and_delete(self, monkeypatch: pytest.MonkeyPatch) -> None:
        from kitaru.secrets import new_key

        monkeypatch.setenv("KITARU_SECRETS_KEY", new_key())
        code, out, err = run("secrets", "set", "token", "-o", "json", input="s3cret\n")
        assert code == 0, err
        assert json.loads(out) == {"stored": "token", "keys": []}
        assert "s3cret" not in out
        code, out, _ = run("secrets", "get", "token", "--reveal")
        assert code == 0 and out.strip() == "s3cret"
        code, out, err = run("secrets", "delete", "token", "-o", "json")
        assert code == 0, err
        assert json.loads(out) == {"deleted": "token"}
        code, _, _ = run("secrets", "get", "token")
        assert code != 0

    def test_server_keys_revoke(self) -> None:
        code, out, err = run("server", "keys", "create", "ci", "--scope", "read", "-o", "json")
        assert code == 0, err
        code, out, err = run("server", "keys", "revoke", "ci", "-o", "json")
        assert code == 0, err
        assert json.loads(out) == {"revoked": "ci"}
        code, out, _ = run("server", "keys", "list", "-o", "json")
        [key] = json.loads(out)
        assert key["name"] == "ci" and key["revoked_at"] is not None

    def test_logout(self) -> None:
        code, out, err = run("logout", "-o", "json")
        assert code == 0, err
        assert json.loads(out) == {"logged_out": False}


class TestText:
    def test_waits_table_shows_a_long_question_by_its_first_line(self) -> None:
        handle = long_question_flow.run()
        code, out, err = run("executions", "waits")
        assert code == 0, err
        lines = out.splitlines()
        # header, rule, one row per wait, the hint: a multi-line question must not break the rows.
        assert len(lines) == 4, out
        assert lines[2].startswith(handle.exec_id) and lines[2].endswith("Publish this draft? ...")
        assert "A whole draft" not in out
        assert max(len(line) for line in lines) < 160
        # `get` still shows the whole question.
        code, out, _ = run("executions", "get", handle.exec_id)
        assert code == 0 and "A whole draft, line after line." in out

    def test_info_lines_its_values_up(self) -> None:
        code, out, err = run("info")
        assert code == 0, err
        labelled = [line for line in out.splitlines()[1:] if re.match(r"^[a-z]+:", line)]
        assert {line.split(":")[0] for line in labelled} >= {"home", "stack", "server", "state", "artifacts"}
        starts = {len(line) - len(line.split(":", 1)[1].lstrip()) for line in labelled}
        assert len(starts) == 1, out

    def test_input_without_resume_says_how_to_continue(self) -> None:
        handle = long_question_flow.run()
        code, out, err = run("executions", "input", handle.exec_id, "--value", "true", "--no-resume")
        assert code == 0, err
        assert f"`kitaru executions resume {handle.exec_id}`" in out
        assert kitaru.KitaruClient().executions.get(handle.exec_id).status == "waiting"
        code, out, err = run("executions", "resume", handle.exec_id)
        assert code == 0 and "is completed" in out, err


def _closure(extra: str) -> set[str]:
    """Normalised names of the distributions `pip install '.[extra]'` would bring: kitaru's
    requirements with that extra, and theirs, as this environment has them installed."""
    from importlib.metadata import PackageNotFoundError, requires

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    names: set[str] = set()
    visited: set[tuple[str, str | None]] = set()
    todo: list[tuple[str, str | None]] = [("kitaru", extra)]
    while todo:
        name, wanted = todo.pop()
        key = canonicalize_name(name)
        if (key, wanted) in visited:
            continue
        visited.add((key, wanted))
        names.add(key)
        try:
            reqs = requires(name) or []
        except PackageNotFoundError:
            continue
        for text in reqs:
            req = Requirement(text)
            if req.marker is not None and not req.marker.evaluate({"extra": wanted or ""}):
                continue
            todo.append((req.name, None))
            todo.extend((req.name, sub) for sub in req.extras)
    return names


def test_the_server_extra_holds_what_the_server_needs(tmp_path: Path) -> None:
    """`kitaru server start` after installing only kitaru[server]: modules of any other
    distribution are hidden, as they would be missing on a fresh install. (FastAPI refuses to
    build an app with a form route without python-multipart, so it was needed and not listed.)"""
    pytest.importorskip("fastapi")
    allowed = sorted(_closure("server"))
    probe = textwrap.dedent(
        f"""
        import importlib.metadata, sys
        from packaging.utils import canonicalize_name

        allowed = set({allowed!r})
        owners = importlib.metadata.packages_distributions()
        hidden = {{
            top for top, dists in owners.items()
            if top not in sys.stdlib_module_names
            and not any(canonicalize_name(d) in allowed for d in dists)
        }}

        class Hide:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in hidden:
                    raise ModuleNotFoundError(f"No module named {{name!r}} (not in kitaru[server])")
                return None

        sys.meta_path.insert(0, Hide())
        from kitaru.server import create_app

        app = create_app(state="sqlite:///{tmp_path / "server.db"}")
        print("built", len(app.routes) > 0)
        """
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "built True" in done.stdout, done.stderr[-3000:]


def test_the_test_environment_has_what_the_server_extra_installs() -> None:
    """The suite runs in the dev group's environment, not with the extra: a requirement added to
    the `server` extra and not to the group is missing when the tests start the server (the docs
    page's bundle was, once)."""
    import tomllib

    from packaging.requirements import Requirement

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    dev = {Requirement(r).name for r in project["dependency-groups"]["dev"] if isinstance(r, str)}
    server = {Requirement(r).name for r in project["project"]["optional-dependencies"]["server"]}
    assert server <= dev, f"add to [dependency-groups] dev: {sorted(server - dev)}"
