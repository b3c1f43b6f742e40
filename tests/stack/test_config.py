"""Stack configuration: precedence of its sources, and mistakes reported with file, line and key."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path

import pytest

from kitaru.errors import KitaruConfigError
from kitaru.stack import load_stack
from kitaru.stack_config import (
    find_line,
    load_settings,
    project_config_path,
    resolve_stack,
    stack_type,
    user_config_path,
    validate_stack_keys,
)

ROOT = Path(__file__).resolve().parents[2]
Writer = Callable[[str], Path]

USER = """
active_stack = "u"

[stacks.u]
type = "local"
state = "sqlite:////user/u.db"

[stacks.shared]
type = "local"
state = "sqlite:////user/shared.db"
artifacts = "file:///user/artifacts"
"""

PROJECT = """
active_stack = "p"

[stacks.p]
type = "local"
state = "sqlite:////project/p.db"

[stacks.shared]
state = "sqlite:////project/shared.db"
"""


class TestFiles:
    def test_user_file_location(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
        assert user_config_path() == tmp_path / "xdg" / "kitaru" / "config.toml"
        monkeypatch.delenv("XDG_CONFIG_HOME")
        monkeypatch.setenv("HOME", str(tmp_path / "home"))
        assert user_config_path() == tmp_path / "home" / ".config" / "kitaru" / "config.toml"
        monkeypatch.setenv("KITARU_CONFIG", str(tmp_path / "elsewhere.toml"))
        assert user_config_path() == tmp_path / "elsewhere.toml"

    def test_project_file_is_found_in_a_parent(self, project_dir: Path, project_file: Writer) -> None:
        assert project_config_path() is None
        path = project_file("")
        assert project_config_path() == path
        nearer = project_dir / "src" / "kitaru.toml"
        nearer.write_text("")
        assert project_config_path() == nearer

    def test_no_file_means_the_local_default(self, project_dir: Path) -> None:
        config = resolve_stack()
        assert (config.name, config.type, config.options, config.active) == ("local", "local", {}, True)
        assert config.sources == {"type": "default"}


class TestPrecedence:
    """call argument > environment > project file > user file > default, key by key."""

    def test_default(self, project_dir: Path) -> None:
        settings = load_settings()
        assert (settings.active_stack, settings.active_source) == ("local", "default")

    def test_user_file_beats_default(self, project_dir: Path, user_file: Writer) -> None:
        path = user_file(USER)
        settings = load_settings()
        assert (settings.active_stack, settings.active_source) == ("u", str(path))
        assert resolve_stack().options == {"state": "sqlite:////user/u.db"}

    def test_project_file_beats_user_file(
        self, project_dir: Path, user_file: Writer, project_file: Writer
    ) -> None:
        user_file(USER)
        path = project_file(PROJECT)
        settings = load_settings()
        assert (settings.active_stack, settings.active_source) == ("p", str(path))
        # Both files' stacks are known; same-named tables merge key by key, the project's winning.
        assert set(settings.stacks) == {"u", "p", "shared"}
        shared = resolve_stack("shared")
        assert shared.options == {
            "state": "sqlite:////project/shared.db",
            "artifacts": "file:///user/artifacts",
        }
        assert shared.sources["state"] == f"{path}, line 9"
        assert shared.sources["artifacts"].startswith(str(user_config_path()))

    def test_environment_beats_files(
        self, project_dir: Path, user_file: Writer, project_file: Writer, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        user_file(USER)
        project_file(PROJECT)
        monkeypatch.setenv("KITARU_STACK", "shared")
        monkeypatch.setenv("KITARU_STACK__STATE", "sqlite:////env/shared.db")
        settings = load_settings()
        assert (settings.active_stack, settings.active_source) == ("shared", "KITARU_STACK")
        config = resolve_stack()
        assert config.options["state"] == "sqlite:////env/shared.db"
        assert config.sources["state"] == "KITARU_STACK__STATE"
        assert config.options["artifacts"] == "file:///user/artifacts"

    def test_call_argument_beats_environment(
        self, project_dir: Path, user_file: Writer, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        user_file(USER)
        monkeypatch.setenv("KITARU_STACK", "shared")
        monkeypatch.setenv("KITARU_STACK__STATE", "sqlite:////env/shared.db")
        config = resolve_stack("u")
        assert (config.name, config.active) == ("u", False)
        # KITARU_STACK__* overrides belong to the active stack only, not to one a call names.
        assert config.options == {"state": "sqlite:////user/u.db"}
        # Call arguments override keys too, above the environment.
        config = resolve_stack("shared", state="sqlite:////call/shared.db")
        assert config.options["state"] == "sqlite:////call/shared.db"
        assert config.sources["state"] == "call argument"

    def test_env_override_of_the_implicit_local_stack(
        self, project_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("KITARU_STACK__STATE", f"sqlite:///{tmp_path / 'env.db'}")
        monkeypatch.setenv("KITARU_STACK__ARTIFACTS", "")  # empty: ignored
        config = resolve_stack()
        assert config.options == {"state": f"sqlite:///{tmp_path / 'env.db'}"}
        stack = load_stack()
        assert stack.state_uri == f"sqlite:///{tmp_path / 'env.db'}"  # type: ignore[attr-defined]

    def test_env_values_are_validated_and_converted(
        self, project_dir: Path, user_file: Writer, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        user_file('active_stack = "k"\n[stacks.k]\ntype = "kubernetes"\n')
        monkeypatch.setenv("KITARU_STACK__NAMESPACE", "agents")
        assert resolve_stack().options == {"namespace": "agents"}
        monkeypatch.setenv("KITARU_STACK__NAMSPACE", "agents")
        with pytest.raises(KitaruConfigError, match=r"^KITARU_STACK__NAMSPACE: unknown key 'namspace'"):
            resolve_stack()

    @pytest.mark.parametrize(
        ("env", "project", "user", "call", "expected"),
        [
            (None, None, None, None, "local"),
            (None, None, "u", None, "u"),
            (None, "p", "u", None, "p"),
            ("e", "p", "u", None, "e"),
            ("e", "p", "u", "c", "c"),
            (None, None, "u", "c", "c"),
            ("e", None, None, None, "e"),
        ],
    )
    def test_active_stack_name(
        self,
        env: str | None,
        project: str | None,
        user: str | None,
        call: str | None,
        expected: str,
        project_dir: Path,
        user_file: Writer,
        project_file: Writer,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        tables = "".join(f'[stacks.{n}]\ntype = "local"\n' for n in "uepc")
        user_file((f'active_stack = "{user}"\n' if user else "") + tables)
        if project:
            project_file(f'active_stack = "{project}"\n')
        if env:
            monkeypatch.setenv("KITARU_STACK", env)
        assert resolve_stack(call).name == expected

    def test_the_pydantic_settings_model_orders_its_sources(
        self, project_dir: Path, user_file: Writer, project_file: Writer, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        from kitaru.stack_config._model import KitaruSettings

        user_file(USER)
        assert KitaruSettings().active_stack == "u"
        project_file(PROJECT)
        assert KitaruSettings().active_stack == "p"
        monkeypatch.setenv("KITARU_STACK", "shared")
        assert KitaruSettings().active_stack == "shared"
        assert KitaruSettings(active_stack="u").active_stack == "u"
        merged = KitaruSettings().stacks["shared"]
        assert merged == {
            "type": "local",
            "state": "sqlite:////project/shared.db",
            "artifacts": "file:///user/artifacts",
        }

    def test_zero_config_does_not_import_pydantic_settings(self, tmp_path: Path) -> None:
        code = (
            "import sys; from kitaru.stack_config import resolve_stack; c = resolve_stack(); "
            "print(c.name, 'pydantic_settings' in sys.modules)"
        )
        env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "KITARU_HOME": str(tmp_path / "h")}
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, env=env, check=True
        )
        assert out.stdout.split() == ["local", "False"]

    def test_each_module_imports_alone_and_stays_light(self, tmp_path: Path) -> None:
        """No import cycles among the configuration modules (each imports alone in a fresh
        interpreter), and reading the configuration imports neither tomlkit (only the editor uses
        it) nor stevedore's plugins before a stack type is asked for."""
        modules = [
            "kitaru.stack_config._files",
            "kitaru.stack_config._settings",
            "kitaru.stack_config._model",
            "kitaru.stack_config._plugins",
            "kitaru.stack_config._resolve",
            "kitaru.stack_config._editor",
            "kitaru.stack_config",
            "kitaru.stack",
        ]
        code = (
            "import importlib, sys\n"
            "importlib.import_module(sys.argv[1])\n"
            "print(*(m in sys.modules for m in ('tomlkit', 'stevedore')))"
        )
        env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "PYTHONPATH": str(ROOT)}
        for module in modules:
            out = subprocess.run(
                [sys.executable, "-c", code, module], capture_output=True, text=True, env=env, timeout=120
            )
            assert out.returncode == 0, f"{module}: {out.stderr[-2000:]}"
            assert out.stdout.split() == ["False", "False"], module


class TestMistakes:
    """A typo names the file, the line and the key."""

    def test_invalid_toml(self, project_dir: Path, user_file: Writer) -> None:
        path = user_file('[stacks.dev]\ntype = "local"\nstate = sqlite:///x.db\n')
        with pytest.raises(KitaruConfigError) as info:
            resolve_stack()
        message = str(info.value)
        assert message.startswith(f"{path}, line 3: invalid TOML")
        assert "state = sqlite:///x.db" in message

    def test_unknown_top_level_key(self, project_dir: Path, user_file: Writer) -> None:
        path = user_file('# stacks\n\nactiv_stack = "dev"\n')
        with pytest.raises(KitaruConfigError, match=re.escape(f"{path}, line 3: unknown key 'activ_stack'")):
            resolve_stack()

    def test_unknown_top_level_table(self, project_dir: Path, project_file: Writer) -> None:
        path = project_file('[stack.dev]\ntype = "local"\n')
        with pytest.raises(KitaruConfigError, match=re.escape(f"{path}, line 1: unknown key 'stack'")):
            load_settings()

    def test_stack_without_type(self, project_dir: Path, user_file: Writer) -> None:
        path = user_file('active_stack = "dev"\n\n[stacks.dev]\nstate = "sqlite:////x.db"\n')
        with pytest.raises(KitaruConfigError, match=re.escape(f"{path}, line 3: stack 'dev' has no 'type'")):
            resolve_stack()

    def test_type_in_the_user_file_completes_a_project_table(
        self, project_dir: Path, user_file: Writer, project_file: Writer
    ) -> None:
        user_file('[stacks.dev]\ntype = "local"\n')
        project_file('active_stack = "dev"\n[stacks.dev]\nstate = "sqlite:////p.db"\n')
        assert resolve_stack().options == {"state": "sqlite:////p.db"}

    def test_wrong_value_types(self, project_dir: Path, user_file: Writer) -> None:
        path = user_file("active_stack = 3\n")
        with pytest.raises(KitaruConfigError, match=re.escape(f"{path}, line 1: key 'active_stack' must be")):
            resolve_stack()
        path = user_file('[stacks.dev]\ntype = "local"\nstate = 42\n')
        with pytest.raises(KitaruConfigError) as info:
            resolve_stack("dev")
        assert str(info.value).startswith(f"{path}, line 3: key 'state' of stack 'dev' has a wrong value 42")
        path = user_file("[stacks]\ndev = 1\n")
        with pytest.raises(
            KitaruConfigError, match=re.escape(f"{path}, line 2: key 'stacks.dev' must be a table")
        ):
            resolve_stack()
        path = user_file("[stacks.dev]\ntype = true\n")
        with pytest.raises(
            KitaruConfigError, match=re.escape(f"{path}, line 2: key 'stacks.dev.type' must be")
        ):
            resolve_stack()

    def test_unknown_stack_key(self, project_dir: Path, user_file: Writer) -> None:
        path = user_file('[stacks.dev]\ntype = "local"\n"stat" = "sqlite:////x.db"\n')
        with pytest.raises(KitaruConfigError) as info:
            resolve_stack("dev")
        message = str(info.value)
        assert message.startswith(f"{path}, line 3: unknown key 'stat' for stack 'dev' of type 'local'")
        assert "artifacts, state" in message

    def test_unknown_stack_type_lists_the_installed_ones(self, project_dir: Path, user_file: Writer) -> None:
        path = user_file('[stacks.prod]\ntype = "aws-typo"\n[stacks.k]\ntype = "kubernetes"\n')
        with pytest.raises(KitaruConfigError) as info:
            resolve_stack("prod")
        message = str(info.value)
        assert message.startswith(f"{path}, line 2: stack 'prod': unknown stack type 'aws-typo'")
        assert re.search(r"installed stack types: [a-z, ]*kubernetes, local", message)
        assert "extras of kitaru ([aws]" in message

    def test_a_known_extra_that_is_not_installed(self, monkeypatch: pytest.MonkeyPatch) -> None:
        import stevedore.driver
        from stevedore.exception import NoMatches

        def no_plugin(*args: object, **kwargs: object) -> None:
            raise NoMatches("none")

        monkeypatch.setattr(stevedore.driver, "DriverManager", no_plugin)
        # From a checkout the hint names that checkout, never a bare name that a package index
        # would resolve to an unrelated project: pip into an environment that has it...
        import kitaru._install

        root = Path(__file__).resolve().parents[2]
        monkeypatch.setattr(kitaru._install, "_uv_environment", lambda root: False)
        with pytest.raises(KitaruConfigError, match=re.escape(f"pip install '{root}[azure]'")):
            stack_type("azure")
        # ...and in the checkout's own uv-made environment (no pip: a pip on PATH would install
        # into another Python), the sync that adds the extra.
        monkeypatch.setattr(kitaru._install, "_uv_environment", lambda root: True)
        with pytest.raises(
            KitaruConfigError, match=re.escape(f"`cd {root} && ./uvw sync --locked --inexact --extra azure`.")
        ):
            stack_type("azure")

    def test_the_hint_keeps_the_path_as_spelled(self, monkeypatch: pytest.MonkeyPatch) -> None:
        import stevedore.driver
        from stevedore.exception import NoMatches

        import kitaru._install

        def no_plugin(*args: object, **kwargs: object) -> None:
            raise NoMatches("none")

        monkeypatch.setattr(stevedore.driver, "DriverManager", no_plugin)
        monkeypatch.setattr(kitaru._install, "_checkout", lambda: Path("/Users/Ada/Kitaru"))
        with pytest.raises(KitaruConfigError, match=re.escape("`pip install '/Users/Ada/Kitaru[azure]'`.")):
            stack_type("azure")

    def test_unknown_stack_name_lists_the_known(
        self, project_dir: Path, user_file: Writer, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        user_file('[stacks.dev]\ntype = "local"\n')
        monkeypatch.setenv("KITARU_STACK", "prdo")
        with pytest.raises(
            KitaruConfigError, match=r"unknown stack 'prdo' \(active stack, from KITARU_STACK\); "
        ):
            resolve_stack()
        with pytest.raises(KitaruConfigError, match=r"known stacks: dev, local\."):
            load_stack()

    def test_lines_are_found_for_every_key_form(self) -> None:
        text = (
            "# comment\n"
            "active_stack = 'x'\n"  # 2
            "[stacks.a]\n"  # 3
            "type = 'local'\n"  # 4
            '[stacks."b c"]\n'  # 5
            "  'state' = 'x'\n"  # 6
            "[stacks]\n"  # 7
            "d.type = 'local'\n"  # 8
            "e = { type = 'local' }\n"  # 9
        )
        assert find_line(text, ["active_stack"]) == 2
        assert find_line(text, ["stacks", "a"]) == 3
        assert find_line(text, ["stacks", "a", "type"]) == 4
        assert find_line(text, ["stacks", "b c", "state"]) == 6
        assert find_line(text, ["stacks", "d", "type"]) == 8
        assert find_line(text, ["stacks", "e", "type"]) == 9
        assert find_line(text, ["nowhere"]) is None


class TestExampleFile:
    """stacks.example.toml parses, and every key it shows (also the commented-out alternatives) is
    accepted by the stack type of its table."""

    EXAMPLE = ROOT / "stacks.example.toml"

    def _tables(self) -> dict[str, dict[str, object]]:
        data = tomllib.loads(self.EXAMPLE.read_text())
        assert set(data) <= {"active_stack", "stacks"}
        tables: dict[str, dict[str, object]] = data["stacks"]
        # Commented-out alternatives ("# key = value") count as shown keys of their table.
        table = None
        for line in self.EXAMPLE.read_text().splitlines():
            header = re.match(r"^\[stacks\.([A-Za-z0-9_-]+)\]", line)
            if header:
                table = header.group(1)
                continue
            alternative = re.match(r"^#\s?([a-z_]+ = .+)$", line)
            if table and alternative:
                tables[table].update(tomllib.loads(alternative.group(1)))
        return tables

    def test_it_parses_as_a_config_file(self, project_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("KITARU_CONFIG", str(self.EXAMPLE))
        settings = load_settings()
        assert settings.active_stack == "local"
        assert {"local", "aws", "gcp", "azure", "k8s"} <= set(settings.stacks)
        assert resolve_stack().options["state"] == "sqlite:////var/lib/kitaru/kitaru.db"

    def test_it_shows_every_stack_type(self) -> None:
        types = {str(t["type"]) for t in self._tables().values()}
        assert {"local", "aws", "gcp", "azure", "kubernetes"} <= types

    @pytest.mark.parametrize("table", ["local", "aws", "gcp", "azure", "k8s"])
    def test_every_key_shown_is_accepted(self, table: str) -> None:
        options = dict(self._tables()[table])
        type_name = str(options.pop("type"))
        try:
            cls = stack_type(type_name)
        except KitaruConfigError:
            pytest.skip(f"stack type {type_name!r} is not installed")
        validate_stack_keys(cls, options, stack_name=table)
        declared = getattr(cls, "keys", None)
        assert declared is not None, f"stack type {type_name!r} declares no keys"

    def test_every_declared_key_is_documented(self) -> None:
        """The other direction: each key a stack type declares appears in a table of that type, and
        each key an artifact store declares in a table whose artifacts use that store."""
        from kitaru.stack_config._plugins import artifact_store_keys

        by_type: dict[str, set[str]] = {}
        by_scheme: dict[str, set[str]] = {}
        for table in self._tables().values():
            keys = {k for k in table if k != "type"}
            by_type.setdefault(str(table["type"]), set()).update(keys)
            by_scheme.setdefault(str(table.get("artifacts", "file://")).partition("://")[0], set()).update(
                keys
            )
        for type_name, keys in by_type.items():
            try:
                cls = stack_type(type_name)
            except KitaruConfigError:
                continue
            assert set(getattr(cls, "keys", {}) or {}) <= keys, f"stack type {type_name}: undocumented keys"
        for scheme, keys in by_scheme.items():
            store = artifact_store_keys(f"{scheme}://x")
            assert set(store or {}) <= keys, f"{scheme}:// artifact store: undocumented keys"


def test_the_readme_stack_example_is_valid(project_dir: Path, user_file: Writer) -> None:
    readme = (ROOT / "README.md").read_text()
    [example] = re.findall(r"```toml\n(.*?)```", readme, flags=re.S)
    user_file(example)
    config = resolve_stack()
    assert (config.name, config.type) == ("dev", "local")
    assert config.options == {
        "state": "sqlite:////srv/kitaru/dev.db",
        "artifacts": "file:///srv/kitaru/artifacts",
    }
