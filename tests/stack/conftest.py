"""Stack-config fixtures: the user file and a project directory, both under the test's tmp dir (the
root conftest already points XDG_CONFIG_HOME there and clears KITARU_STACK*)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from kitaru.stack_config import user_config_path


@pytest.fixture
def user_file() -> Callable[[str], Path]:
    """Write the user file (``$XDG_CONFIG_HOME/kitaru/config.toml``) and return its path."""

    def write(text: str) -> Path:
        path = user_config_path()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return path

    return write


@pytest.fixture
def project_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A project directory with a nested working directory (so ``kitaru.toml`` is found upwards);
    the test runs in ``<project>/src/app``."""
    project = tmp_path / "project"
    cwd = project / "src" / "app"
    cwd.mkdir(parents=True)
    monkeypatch.chdir(cwd)
    return project


@pytest.fixture
def project_file(project_dir: Path) -> Callable[[str], Path]:
    """Write ``kitaru.toml`` at the project's root and return its path."""

    def write(text: str) -> Path:
        path = project_dir / "kitaru.toml"
        path.write_text(text)
        return path

    return write
