"""The pydantic-settings model behind :func:`kitaru.stack_config.load_settings` (imported only when
there is a file or an override to read: pydantic-settings costs about 100 ms to import).

Sources, highest precedence first: init arguments, the environment (``KITARU_STACK`` and
``KITARU_STACK__<KEY>``), the project file (``kitaru.toml``), the user file. Tables are deep-merged,
so a project file's ``[stacks.NAME]`` adds keys to the user file's table of the same name.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import Field
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from kitaru.errors import KitaruConfigError
from kitaru.stack_config._files import env_overrides, project_config_path, read_config_file, user_config_path

__all__ = ["KitaruSettings"]


class _ConfigFileSource(TomlConfigSettingsSource):
    """pydantic-settings' TOML source, reading through :func:`read_config_file` so that a mistake
    names the file, the line and the key."""

    def _read_file(self, file_path: Any) -> dict[str, Any]:
        config = read_config_file(Path(file_path))
        return config.data if config else {}


class _EnvSource(PydanticBaseSettingsSource):
    """``KITARU_STACK=<name>`` and ``KITARU_STACK__<KEY>=<value>`` (empty values are ignored)."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return self().get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        name = os.environ.get("KITARU_STACK", "").strip()
        if name:
            out["active_stack"] = name
        overrides = env_overrides()
        if overrides:
            out["overrides"] = overrides
        return out


class KitaruSettings(BaseSettings):
    """kitaru's settings: the active stack, the declared stacks, and the environment's overrides."""

    model_config = SettingsConfigDict(extra="forbid")

    active_stack: str | None = None
    stacks: dict[str, dict[str, Any]] = Field(default_factory=dict)
    overrides: dict[str, Any] = Field(default_factory=dict)
    """Keys that override the active stack's table (``KITARU_STACK__<KEY>``)."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, _EnvSource(settings_cls)]
        project = project_config_path()
        if project is not None:
            sources.append(_ConfigFileSource(settings_cls, toml_file=project))
        sources.append(_ConfigFileSource(settings_cls, toml_file=user_config_path()))
        return tuple(sources)

    def __init__(self, **values: Any) -> None:
        from pydantic import ValidationError

        try:
            super().__init__(**values)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors(include_url=False)
            )
            raise KitaruConfigError(f"invalid kitaru settings: {problems}.") from None
