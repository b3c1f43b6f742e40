"""Settings merged from every source: the environment, the project file, the user file, the default.

With no file and no ``KITARU_STACK__*`` override there is nothing to merge, and pydantic-settings
(about 100 ms to import) is not imported; otherwise :class:`~kitaru.stack_config._model.KitaruSettings`
merges the sources in their order of precedence.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from kitaru.stack_config._files import (
    ENV_OVERRIDE_PREFIX,
    ConfigFile,
    env_overrides,
    project_config_path,
    read_config_file,
    user_config_path,
)

__all__ = ["DEFAULT_STACK", "Settings", "load_settings"]

DEFAULT_STACK = "local"


@dataclass(frozen=True, slots=True)
class Settings:
    """Settings merged from every source: the active stack's name and the declared stacks."""

    active_stack: str
    """The active stack (before any call argument)."""
    active_source: str
    """Where ``active_stack`` came from: ``KITARU_STACK``, a file's path, or ``default``."""
    stacks: dict[str, dict[str, Any]]
    """Declared stacks, name to table (``type`` plus keys), merged across files."""
    overrides: dict[str, Any]
    """``KITARU_STACK__<KEY>`` overrides for the active stack, key to value."""
    files: tuple[ConfigFile, ...] = ()
    """The files read, highest precedence first (project, then user)."""
    declared_in: dict[str, tuple[ConfigFile, ...]] = field(default_factory=dict)
    """For each declared stack, the files declaring it, highest precedence first."""

    def source_of(self, name: str, key: str) -> str:
        """Where key ``key`` of stack ``name`` came from: ``ENV_VAR``, ``path, line N``, ``default``."""
        if name == self.active_stack and key in self.overrides:
            return ENV_OVERRIDE_PREFIX + key.upper()
        for config in self.declared_in.get(name, ()):
            if key in config.data["stacks"][name]:
                return config.where("stacks", name, key)
        return "default"

    def where(self, name: str) -> str:
        """Where stack ``name`` is declared (the highest-precedence file), or ``default``."""
        files = self.declared_in.get(name)
        return files[0].where("stacks", name) if files else "default"

    def known(self) -> list[str]:
        return sorted({*self.stacks, DEFAULT_STACK})


def load_settings() -> Settings:
    """Read the environment, the project file and the user file, and merge them."""
    project = project_config_path()
    user = user_config_path()
    files = tuple(
        c for c in (read_config_file(project) if project else None, read_config_file(user)) if c is not None
    )
    from kitaru.config import configured

    # `kitaru.configure(stack=...)` in code beats the environment and the files.
    chosen = configured("stack")
    env_name = os.environ.get("KITARU_STACK", "").strip()
    env_source = "kitaru.configure()" if chosen else "KITARU_STACK"
    env_name = chosen or env_name
    overrides = env_overrides()
    if not files and not overrides:
        return Settings(
            active_stack=env_name or DEFAULT_STACK,
            active_source=env_source if env_name else "default",
            stacks={},
            overrides={},
        )
    from kitaru.stack_config._model import KitaruSettings

    merged = KitaruSettings()
    if env_name:
        source = env_source
    else:
        source = next((str(c.path) for c in files if "active_stack" in c.data), "default")
    declared: dict[str, tuple[ConfigFile, ...]] = {}
    for config in files:
        for name in config.data.get("stacks", {}):
            declared[name] = (*declared.get(name, ()), config)
    return Settings(
        active_stack=chosen or merged.active_stack or DEFAULT_STACK,
        active_source=source,
        stacks={name: dict(table) for name, table in merged.stacks.items()},
        overrides=dict(merged.overrides),
        files=files,
        declared_in=declared,
    )
