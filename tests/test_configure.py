"""Process defaults (kitaru.configure) each take effect, and the stacks from Python are the same
configuration as `kitaru stack ...`."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

import kitaru
from kitaru._models import resolve
from kitaru.cli import main
from kitaru.errors import KitaruConfigError, KitaruSerializationError, KitaruUsageError


class Opaque:
    """Not JSON, not pydantic, not a dataclass: only pickle can store it."""

    def __init__(self, n: int) -> None:
        self.n = n


@kitaru.checkpoint
def make(n: int) -> Opaque:
    return Opaque(n)


@kitaru.flow
def opaque_flow(n: int) -> int:
    return make(n).n


@kitaru.flow
def plain(n: int) -> int:
    return n + 1


def _dev_stack(tmp_path: Path, name: str = "dev") -> Path:
    db = tmp_path / f"{name}.db"
    kitaru.create_stack(
        name, "local", state=f"sqlite:///{db}", artifacts=(tmp_path / f"{name}-artifacts").as_uri()
    )
    return db


class TestConfigure:
    def test_stack_sends_flows_and_clients_to_that_stack(self, tmp_path: Path) -> None:
        plain.run(0).wait(timeout=60)  # opens the default runtime first
        _dev_stack(tmp_path)
        kitaru.configure(stack="dev")
        exec_id = plain.run(1).exec_id
        assert kitaru.current_stack().name == "dev"
        assert kitaru.current_stack().active_source == "kitaru.configure()"
        assert kitaru.KitaruClient().executions.get(exec_id).status == "completed"
        assert [e.id for e in kitaru.KitaruClient(stack="dev").executions.list()] == [exec_id]
        assert exec_id not in [e.id for e in kitaru.KitaruClient(stack="local").executions.list()]
        kitaru.configure(stack=None)
        assert kitaru.current_stack().name == "local"

    def test_stack_beats_the_environment(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        _dev_stack(tmp_path)
        monkeypatch.setenv("KITARU_STACK", "local")
        kitaru.configure(stack="dev")
        assert kitaru.current_stack().name == "dev"

    def test_an_unknown_stack_is_refused_and_nothing_changes(self) -> None:
        with pytest.raises(KitaruConfigError, match="unknown stack 'nope'"):
            kitaru.configure(stack="nope")
        assert kitaru.current_stack().name == "local"

    def test_model_is_the_default_for_llm(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("KITARU_MODEL", "openai/gpt-4o")
        monkeypatch.setenv("OPENAI_API_KEY", "k")
        assert resolve(None).model == "gpt-4o"
        kitaru.configure(model="openai/gpt-4o-mini")
        assert resolve(None).model == "gpt-4o-mini"
        assert resolve("openai/gpt-4.1").model == "gpt-4.1"  # a call's own model still wins
        kitaru.configure(model=None)
        assert resolve(None).model == "gpt-4o"

    def test_allow_pickle_governs_the_serializer(self, monkeypatch: pytest.MonkeyPatch) -> None:
        kitaru.configure(allow_pickle=False)
        with pytest.raises(KitaruSerializationError, match=r"pickle is switched off.*allow_pickle=True"):
            opaque_flow.run(1).wait(timeout=60)
        monkeypatch.setenv("KITARU_ALLOW_PICKLE", "0")
        kitaru.configure(allow_pickle=True)  # beats the environment
        assert opaque_flow.run(2).wait(timeout=60) == 2

    def test_bad_values_are_usage_errors(self) -> None:
        with pytest.raises(KitaruUsageError):
            kitaru.configure(allow_pickle="yes")
        with pytest.raises(KitaruUsageError):
            kitaru.configure(model="")
        assert kitaru.configure() == {}


class TestStacksFromPython:
    def test_create_list_use_current_delete(self, tmp_path: Path) -> None:
        _dev_stack(tmp_path)
        names = {s.name: s for s in kitaru.list_stacks()}
        assert set(names) == {"dev", "local"} and names["local"].active and not names["dev"].active
        assert names["dev"].type == "local"
        # The CLI sees the same configuration.
        result = CliRunner().invoke(main, ["stack", "list"])
        assert result.exit_code == 0 and "dev" in result.stdout
        plain.run(0).wait(timeout=60)
        used = kitaru.use_stack("dev")
        assert used.name == "dev" and kitaru.current_stack().name == "dev"
        exec_id = plain.run(5).exec_id  # this process switched too
        assert [e.id for e in kitaru.KitaruClient(stack="dev").executions.list()] == [exec_id]
        with pytest.raises(KitaruConfigError, match="active stack"):
            kitaru.delete_stack("dev")
        kitaru.use_stack("local")
        kitaru.delete_stack("dev")
        assert [s.name for s in kitaru.list_stacks()] == ["local"]

    def test_create_checks_the_keys_against_the_type(self) -> None:
        with pytest.raises(KitaruConfigError):
            kitaru.create_stack("bad", "local", no_such_key="x")
        assert [s.name for s in kitaru.list_stacks()] == ["local"]
