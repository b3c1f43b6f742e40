"""Where the configuration comes from: the user file, the project file, the environment's overrides,
and one file read with :mod:`tomllib` and checked for shape.

TOML parsers report a line only for a syntax error, yet every mistake should name the line of its
key; :func:`find_line` asks :mod:`tomllib` itself where a key first appears (the parser is the only
reliable judge of dotted, quoted and inline keys) instead of parsing TOML a second time by hand.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kitaru.errors import KitaruConfigError

__all__ = [
    "ENV_OVERRIDE_PREFIX",
    "PROJECT_FILE",
    "TOP_LEVEL_KEYS",
    "ConfigFile",
    "env_overrides",
    "find_line",
    "project_config_path",
    "read_config_file",
    "user_config_path",
]

PROJECT_FILE = "kitaru.toml"
ENV_OVERRIDE_PREFIX = "KITARU_STACK__"
TOP_LEVEL_KEYS = ("active_stack", "stacks")


def user_config_path() -> Path:
    """The user file: ``$KITARU_CONFIG``, else ``<config dir>/kitaru/config.toml`` with the config
    dir ``$XDG_CONFIG_HOME``, else ``~/.config``. It may not exist yet."""
    explicit = os.environ.get("KITARU_CONFIG", "").strip()
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CONFIG_HOME", "").strip()
    base = Path(xdg).expanduser() if xdg else Path.home() / ".config"
    return base / "kitaru" / "config.toml"


def project_config_path(start: Path | None = None) -> Path | None:
    """The project file: ``kitaru.toml`` in ``start`` (default: the current directory) or the nearest
    parent that has one; None when there is none."""
    here = (start or Path.cwd()).resolve()
    for directory in (here, *here.parents):
        candidate = directory / PROJECT_FILE
        if candidate.is_file():
            return candidate
    return None


def env_overrides() -> dict[str, Any]:
    """``KITARU_STACK__<KEY>=<value>`` as ``{key: value}`` (keys lower-cased; empty values ignored)."""
    return {
        key[len(ENV_OVERRIDE_PREFIX) :].lower(): value
        for key, value in os.environ.items()
        if key.upper().startswith(ENV_OVERRIDE_PREFIX) and len(key) > len(ENV_OVERRIDE_PREFIX) and value
    }


# -- where a key is ---------------------------------------------------------------------------------


def _paths(data: Mapping[str, Any], prefix: tuple[str, ...] = ()) -> Iterable[tuple[str, ...]]:
    for key, value in data.items():
        path = (*prefix, key)
        yield path
        if isinstance(value, Mapping):
            yield from _paths(value, path)


def _line_index(text: str) -> dict[tuple[str, ...], int]:
    """Each dotted key (tables too) of a TOML document to the line where it is set or opened.

    Parses every prefix of the document (a config file has tens of lines): a key belongs to the
    statement that begins right after the last prefix that parsed, which for a multi-line value is
    its first line. Prefixes that cut a statement in half do not parse and are skipped."""
    lines = text.splitlines(keepends=True)
    index: dict[tuple[str, ...], int] = {}
    parsed_up_to = 0
    for end in range(1, len(lines) + 1):
        try:
            data = tomllib.loads("".join(lines[:end]))
        except tomllib.TOMLDecodeError:
            continue
        start = parsed_up_to + 1
        for offset, line in enumerate(lines[parsed_up_to:end]):
            stripped = line.strip()
            if stripped and not stripped.startswith("#"):
                start = parsed_up_to + 1 + offset
                break
        for path in _paths(data):
            index.setdefault(path, start)
        parsed_up_to = end
    return index


def find_line(text: str, key: Iterable[str]) -> int | None:
    """The line of a TOML document where the dotted ``key`` is set or its table opens; if the key
    is absent, the line of the innermost table that would hold it. None if neither is there."""
    index = _line_index(text)
    path = tuple(key)
    while path:
        if path in index:
            return index[path]
        path = path[:-1]
    return None


# -- reading one file -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ConfigFile:
    """One configuration file, parsed and checked for shape (not yet against stack types)."""

    path: Path
    text: str = field(repr=False)
    data: dict[str, Any] = field(repr=False)
    _lines: dict[tuple[str, ...], int] = field(default_factory=dict, repr=False, compare=False)

    def where(self, *key: str) -> str:
        """``path, line N`` for a dotted key of this file (or of the table that would hold it)."""
        if not self._lines and self.text.strip():
            self._lines.update(_line_index(self.text))  # once per file, and only when asked
        path = tuple(key)
        while path and path not in self._lines:
            path = path[:-1]
        return f"{self.path}, line {self._lines[path]}" if path else str(self.path)


def read_config_file(path: Path) -> ConfigFile | None:
    """Parse ``path`` (None if it does not exist) and check its shape: TOML syntax, known top-level
    keys, ``active_stack`` a string, every ``[stacks.NAME]`` a table whose ``type`` is a string."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise KitaruConfigError(f"cannot read the kitaru config file {path}: {exc}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        message = str(exc)
        match = re.search(r"\(at line (\d+), column (\d+)\)", message)
        where = str(path)
        if match:
            line = int(match.group(1))
            where = f"{path}, line {line}"
            lines = text.splitlines()
            if 0 < line <= len(lines):
                message = f"{message}: {lines[line - 1].strip()!r}"
        raise KitaruConfigError(
            f"{where}: invalid TOML: {message}. Fix the file (stacks.example.toml shows the format)."
        ) from None
    config = ConfigFile(path, text, data)
    _check_shape(config)
    return config


def _check_shape(config: ConfigFile) -> None:
    data = config.data
    for key in data:
        if key not in TOP_LEVEL_KEYS:
            raise KitaruConfigError(
                f"{config.where(key)}: unknown key {key!r}; a kitaru config file has "
                f"{' and '.join(TOP_LEVEL_KEYS)} at its top level."
            )
    active = data.get("active_stack")
    if active is not None and not isinstance(active, str):
        raise KitaruConfigError(
            f"{config.where('active_stack')}: key 'active_stack' must be a string (a stack name), "
            f"not {_toml_type(active)}."
        )
    stacks = data.get("stacks", {})
    if not isinstance(stacks, dict):
        raise KitaruConfigError(
            f"{config.where('stacks')}: key 'stacks' must be a table of stacks ([stacks.NAME]), "
            f"not {_toml_type(stacks)}."
        )
    for name, table in stacks.items():
        if not isinstance(table, dict):
            raise KitaruConfigError(
                f"{config.where('stacks', name)}: key 'stacks.{name}' must be a table "
                f"([stacks.{name}] with a type and the type's keys), not {_toml_type(table)}."
            )
        if "type" in table and not isinstance(table["type"], str):
            raise KitaruConfigError(
                f"{config.where('stacks', name, 'type')}: key 'stacks.{name}.type' must be a string "
                f'(a stack type such as "local" or "aws"), not {_toml_type(table["type"])}.'
            )


def _toml_type(value: Any) -> str:
    names = {bool: "a boolean", int: "an integer", float: "a float", str: "a string", list: "an array"}
    if isinstance(value, dict):
        return "a table"
    return names.get(type(value), type(value).__name__)
