"""``kitaru stack``: round trips through the user file in an isolated config dir."""

from __future__ import annotations

import json
import tomllib
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner

from kitaru.cli import main
from kitaru.stack_config import user_config_path

Writer = Callable[[str], Path]


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.stdout, result.stderr


def as_json(*args: str) -> object:
    code, out, err = run(*args, "-o", "json")
    assert code == 0, err
    return json.loads(out)


@pytest.fixture(autouse=True)
def in_empty_project(project_dir: Path) -> Path:
    return project_dir


class TestRoundTrip:
    def test_create_set_show_list_delete(self, tmp_path: Path) -> None:
        listed = as_json("stack", "list")
        assert isinstance(listed, dict)
        assert listed["active_stack"] == "local"
        assert [s["name"] for s in listed["stacks"]] == ["local"]

        db = tmp_path / "dev.db"
        code, out, err = run("stack", "create", "dev", "--type", "local", "--state", f"sqlite:///{db}")
        assert code == 0, err
        assert "created stack dev (local)" in out and "kitaru stack set dev" in out
        data = tomllib.loads(user_config_path().read_text())
        assert data == {"stacks": {"dev": {"type": "local", "state": f"sqlite:///{db}"}}}

        code, out, err = run("stack", "set", "dev")
        assert (code, err) == (0, "")
        assert "active stack is now dev" in out
        assert tomllib.loads(user_config_path().read_text())["active_stack"] == "dev"

        shown = as_json("stack", "show")
        assert isinstance(shown, dict)
        assert (shown["name"], shown["type"], shown["active"]) == ("dev", "local", True)
        assert shown["keys"]["state"] == {
            "value": f"sqlite:///{db}",
            "source": f"{user_config_path()}, line 5",
        }
        assert shown["keys"]["artifacts"]["source"] == "default"

        code, out, _ = run("stack", "list")
        assert code == 0
        assert [line.split()[:3] for line in out.splitlines() if line.startswith("*")] == [
            ["*", "dev", "local"]
        ]
        assert "active stack: dev" in out

        code, _, err = run("stack", "delete", "dev")
        assert code == 3 and "is the active stack" in err
        assert run("stack", "set", "local")[0] == 0
        deleted = as_json("stack", "delete", "dev")
        assert deleted == {"deleted": "dev", "file": str(user_config_path()), "comments_kept": True}
        assert tomllib.loads(user_config_path().read_text()) == {"active_stack": "local"}

    def test_create_with_keys_of_several_forms(self) -> None:
        code, out, err = run(
            "stack", "create", "k8s", "--type", "kubernetes", "--namespace=agents", "--image", "img:1",
            "--activate", "-o", "json",
        )  # fmt: skip
        assert code == 0, err
        created = json.loads(out)
        assert created["keys"] == {"namespace": "agents", "image": "img:1"} and created["active"] is True
        assert as_json("stack", "show", "k8s")["keys"]["namespace"]["value"] == "agents"  # type: ignore[index]

    def test_comments_are_kept(self, user_file: Writer) -> None:
        original = (
            "# my kitaru stacks\n"
            "\n"
            "# the dev box\n"
            "[stacks.dev]\n"
            'type = "local"  # embedded\n'
            "\n"
            "# production, one day\n"
            "[stacks.prod]\n"
            'type = "local"\n'
        )
        path = user_file(original)
        assert run("stack", "set", "dev")[0] == 0
        text = path.read_text()
        assert text.startswith('# my kitaru stacks\n\nactive_stack = "dev"\n\n# the dev box\n[stacks.dev]')
        assert 'type = "local"  # embedded' in text
        assert run("stack", "create", "extra", "--type", "local")[0] == 0
        assert run("stack", "delete", "prod")[0] == 0
        text = path.read_text()
        assert "# production, one day" not in text and "[stacks.prod]" not in text
        assert "# the dev box" in text and "# embedded" in text
        assert tomllib.loads(text) == {
            "active_stack": "dev",
            "stacks": {"dev": {"type": "local"}, "extra": {"type": "local"}},
        }
        assert run("stack", "set", "extra")[0] == 0
        assert path.read_text().count("active_stack") == 1

    def test_an_inline_layout_is_edited_in_place(self, user_file: Writer) -> None:
        path = user_file('# inline\nstacks = { dev = { type = "local" }, old = { type = "local" } }\n')
        code, _, err = run("stack", "delete", "old")
        assert (code, err) == (0, "")
        assert path.read_text().startswith("# inline\n")
        assert tomllib.loads(path.read_text()) == {"stacks": {"dev": {"type": "local"}}}
        assert run("stack", "create", "new", "--type", "local")[0] == 0
        assert path.read_text().startswith("# inline\n")
        assert tomllib.loads(path.read_text()) == {
            "stacks": {"dev": {"type": "local"}, "new": {"type": "local"}}
        }

    def test_an_unusual_layout_is_rewritten_with_a_note(self, user_file: Writer) -> None:
        # tomlkit would put a new [stacks.NAME] table between these dotted keys and change what
        # the second one means: the editor notices, and writes the file afresh from its data.
        path = user_file('# dotted\nstacks.dev.type = "local"\nstacks.old.type = "local"\n')
        code, _, err = run("stack", "create", "new", "--type", "local")
        assert code == 0 and "rewritten without its comments" in err
        assert tomllib.loads(path.read_text()) == {
            "stacks": {"dev": {"type": "local"}, "old": {"type": "local"}, "new": {"type": "local"}}
        }


class TestErrors:
    def test_set_an_unknown_name_lists_the_known(self, user_file: Writer) -> None:
        path = user_file('[stacks.dev]\ntype = "local"\n')
        before = path.read_text()
        code, out, err = run("stack", "set", "prdo")
        assert code == 3 and out == ""
        assert "unknown stack 'prdo'" in err and "known stacks: dev, local" in err
        assert path.read_text() == before

    def test_create_checks_type_keys_and_name(self) -> None:
        code, _, err = run("stack", "create", "x", "--type", "nope")
        assert code == 3 and "unknown stack type 'nope'" in err and "installed stack types:" in err
        code, _, err = run("stack", "create", "x", "--type", "local", "--stat", "sqlite:////x.db")
        assert code == 3 and "--stat: unknown key 'stat'" in err
        code, _, err = run("stack", "create", "x", "--type", "kubernetes", "--namespace")
        assert code == 2 and "--namespace needs a value" in err
        code, _, err = run("stack", "create", "bad.name", "--type", "local")
        assert code == 3 and "invalid stack name" in err
        assert not user_config_path().exists()
        assert run("stack", "create", "x", "--type", "local")[0] == 0
        code, _, err = run("stack", "create", "x", "--type", "local")
        assert code == 3 and "already exists" in err

    def test_delete_unknown_or_project_stack(self, project_file: Writer) -> None:
        project_file('[stacks.team]\ntype = "local"\n')
        code, _, err = run("stack", "delete", "team")
        assert code == 3 and "kitaru.toml" in err and "edit that file" in err
        code, _, err = run("stack", "delete", "ghost")
        assert code == 3 and "unknown stack 'ghost'" in err

    def test_a_typo_in_the_file_is_reported_by_every_command(self, user_file: Writer) -> None:
        path = user_file('[stacks.dev]\ntype = "local"\nstate = 1\n')
        code, _, err = run("stack", "show", "dev")
        assert code == 3 and f"{path}, line 3" in err and "'state'" in err
        code, out, err = run("stack", "list")
        assert code == 0 and "invalid" in out and "kitaru stack show dev" in err
        listed = json.loads(run("stack", "list", "-o", "json")[1])
        assert [s["error"] is not None for s in listed["stacks"]] == [True, False]
        path = user_file("[stacks.dev\n")
        for args in (["list"], ["show"], ["set", "dev"]):
            code, _, err = run("stack", *args)
            assert code == 3 and f"{path}, line 1: invalid TOML" in err, args

    def test_set_warns_when_the_environment_overrides(
        self, user_file: Writer, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        user_file('[stacks.dev]\ntype = "local"\n')
        monkeypatch.setenv("KITARU_STACK", "local")
        code, _, err = run("stack", "set", "dev")
        assert code == 0 and "KITARU_STACK still makes 'local' active" in err


def test_show_masks_secrets(user_file: Writer) -> None:
    user_file(
        '[stacks.db]\ntype = "kubernetes"\nstate = "postgresql://kitaru:hunter2@db:5432/k"\n'
        'artifacts = "file:///tmp/a"\n'
    )
    code, out, _ = run("stack", "show", "db")
    assert code == 0 and "hunter2" not in out and "postgresql://kitaru:***@db:5432/k" in out


def test_help_lists_the_stack_commands() -> None:
    code, out, _ = run("stack", "--help")
    assert code == 0
    for command in ("list", "show", "set", "create", "delete"):
        assert command in out
