"""Stack configuration: which stacks exist, which one is active, and the keys of each.

Stacks are declared in TOML (``stacks.example.toml`` at the repository root documents every key of
every stack type)::

    active_stack = "prod"

    [stacks.prod]
    type = "aws"
    state = "postgresql://kitaru@db.internal/kitaru"
    artifacts = "s3://acme-agents/kitaru"
    region = "eu-west-1"

Where a setting comes from, highest precedence first:

1. a call argument: ``flow.run(..., stack="prod")``, ``KitaruClient(stack="prod")``,
   ``load_stack("prod", region=...)``;
2. the environment: ``KITARU_STACK=<name>`` picks the active stack, and ``KITARU_STACK__<KEY>=<value>``
   overrides key ``<key>`` (lower-cased) of the active stack, e.g. ``KITARU_STACK__REGION=us-east-1``
   or ``KITARU_STACK__STATE=sqlite:////tmp/k.db`` (empty values are ignored). These overrides apply
   to the stack the environment or a file makes active, not to another stack a call argument names;
3. the project file: ``kitaru.toml`` in the current directory or the nearest parent that has one;
4. the user file: ``$KITARU_CONFIG``, else ``$XDG_CONFIG_HOME/kitaru/config.toml``, else
   ``~/.config/kitaru/config.toml``;
5. the default: a stack named ``local`` of type ``local`` with default keys (kitaru's home).

A ``[stacks.NAME]`` table in the project file adds to, and overrides keys of, a table of the same name
in the user file. Files are read with pydantic-settings (``kitaru._settings``), which is imported only
when there is a file or an override to read: the zero-configuration path stays light.

Mistakes are :class:`~kitaru.errors.KitaruConfigError` naming the file, the line and the key.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kitaru._install import install_hint
from kitaru.errors import KitaruConfigError

__all__ = [
    "DEFAULT_STACK",
    "ENV_OVERRIDE_PREFIX",
    "EXTRAS",
    "PROJECT_FILE",
    "ConfigFile",
    "Settings",
    "StackConfig",
    "create_stack",
    "delete_stack",
    "list_stacks",
    "load_settings",
    "project_config_path",
    "read_config_file",
    "resolve_stack",
    "set_active_stack",
    "stack_type",
    "user_config_path",
    "validate_stack_keys",
]

DEFAULT_STACK = "local"
PROJECT_FILE = "kitaru.toml"
ENV_OVERRIDE_PREFIX = "KITARU_STACK__"
TOP_LEVEL_KEYS = ("active_stack", "stacks")
#: Stack types that ship as extras of the ``kitaru`` distribution.
EXTRAS = ("aws", "gcp", "azure", "kubernetes")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")


# -- where the files are ----------------------------------------------------------------------------


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


# -- reading one file -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ConfigFile:
    """One configuration file, parsed and checked for shape (not yet against stack types)."""

    path: Path
    text: str = field(repr=False)
    data: dict[str, Any] = field(repr=False)

    def where(self, *key: str) -> str:
        """``path, line N`` for a dotted key of this file (the line is found by searching)."""
        line = find_line(self.text, key)
        return f"{self.path}, line {line}" if line else str(self.path)


def read_config_file(path: Path) -> ConfigFile | None:
    """Parse ``path`` (None if it does not exist) and check its shape: TOML syntax, known top-level
    keys, ``active_stack`` a string, every ``[stacks.NAME]`` a table whose ``type`` is a string."""
    import tomllib

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


_BARE = re.compile(r"[A-Za-z0-9_-]+")


def _parse_key(text: str) -> tuple[list[str], str] | None:
    """Parse a dotted TOML key at the start of ``text``: its parts and the rest of the text."""
    parts: list[str] = []
    rest = text.lstrip()
    while True:
        if rest.startswith('"'):
            match = re.match(r'"((?:[^"\\]|\\.)*)"', rest)
            if not match:
                return None
            try:
                parts.append(json.loads(match.group(0)))
            except ValueError:
                parts.append(match.group(1))
        elif rest.startswith("'"):
            match = re.match(r"'([^']*)'", rest)
            if not match:
                return None
            parts.append(match.group(1))
        else:
            match = _BARE.match(rest)
            if not match:
                return None
            parts.append(match.group(0))
        rest = rest[match.end() :].lstrip()
        if not rest.startswith("."):
            return parts, rest
        rest = rest[1:].lstrip()


def _header(line: str) -> list[str] | None:
    """The table a ``[a.b]`` or ``[[a.b]]`` header line opens, else None."""
    stripped = line.strip()
    if not stripped.startswith("["):
        return None
    inner = stripped[2:] if stripped.startswith("[[") else stripped[1:]
    parsed = _parse_key(inner)
    if parsed is None or not parsed[1].startswith("]"):
        return None
    return parsed[0]


def _table_lines(text: str) -> Iterable[tuple[int, list[str], bool]]:
    """Each line that names a key: (1-based line number, full dotted path, whether a header)."""
    table: list[str] = []
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        header = _header(stripped)
        if header is not None:
            table = header
            yield number, table, True
            continue
        parsed = _parse_key(stripped)
        if parsed is not None and parsed[1].startswith("="):
            yield number, table + parsed[0], False


def find_line(text: str, key: Iterable[str]) -> int | None:
    """The line of a TOML document where the dotted ``key`` is set or its table opens, found by
    searching (TOML parsers report lines only for syntax errors). None if it cannot be found."""
    path = list(key)
    # Else the line that comes closest: the innermost table or inline table holding the key.
    best, best_depth = None, 0
    for number, full, _is_header in _table_lines(text):
        if full == path:
            return number
        if full[: len(path)] == path or path[: len(full)] == full:
            depth = min(len(full), len(path))
            if depth > best_depth:
                best, best_depth = number, depth
    return best


# -- merged settings --------------------------------------------------------------------------------


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


def _env_overrides() -> dict[str, Any]:
    return {
        key[len(ENV_OVERRIDE_PREFIX) :].lower(): value
        for key, value in os.environ.items()
        if key.upper().startswith(ENV_OVERRIDE_PREFIX) and len(key) > len(ENV_OVERRIDE_PREFIX) and value
    }


def load_settings() -> Settings:
    """Read the environment, the project file and the user file, and merge them.

    With no file and no ``KITARU_STACK__*`` override there is nothing to merge, and pydantic-settings
    is not even imported; otherwise :class:`kitaru._settings.KitaruSettings` merges the sources.
    """
    project = project_config_path()
    user = user_config_path()
    files = tuple(
        c for c in (read_config_file(project) if project else None, read_config_file(user)) if c is not None
    )
    env_name = os.environ.get("KITARU_STACK", "").strip()
    overrides = _env_overrides()
    if not files and not overrides:
        return Settings(
            active_stack=env_name or DEFAULT_STACK,
            active_source="KITARU_STACK" if env_name else "default",
            stacks={},
            overrides={},
        )
    from kitaru._settings import KitaruSettings

    merged = KitaruSettings()
    if env_name:
        source = "KITARU_STACK"
    else:
        source = next((str(c.path) for c in files if "active_stack" in c.data), "default")
    declared: dict[str, tuple[ConfigFile, ...]] = {}
    for config in files:
        for name in config.data.get("stacks", {}):
            declared[name] = (*declared.get(name, ()), config)
    return Settings(
        active_stack=merged.active_stack or DEFAULT_STACK,
        active_source=source,
        stacks={name: dict(table) for name, table in merged.stacks.items()},
        overrides=dict(merged.overrides),
        files=files,
        declared_in=declared,
    )


# -- stack types and their keys -----------------------------------------------------------------------


def _installed(namespace: str) -> list[str]:
    from importlib.metadata import entry_points

    return sorted({ep.name for ep in entry_points(group=namespace)})


def _install_hint(type_name: str) -> str:
    if type_name in EXTRAS:
        return f"install it with `{install_hint(type_name)}`"
    extras = ", ".join(f"[{e}]" for e in EXTRAS)
    return (
        f"stack types ship as extras of kitaru ({extras}) or as plugins registering a "
        "`kitaru.stacks` entry point"
    )


def stack_type(type_name: str, *, where: str | None = None) -> type[Any]:
    """The class registered for stack type ``type_name`` under the ``kitaru.stacks`` entry points
    (loaded with stevedore, not instantiated)."""
    from stevedore import driver
    from stevedore.exception import NoMatches

    from kitaru.stack import STACK_NAMESPACE

    try:
        manager: Any = driver.DriverManager(namespace=STACK_NAMESPACE, name=type_name, invoke_on_load=False)
    except NoMatches:
        installed = ", ".join(_installed(STACK_NAMESPACE)) or "none"
        prefix = f"{where}: " if where else ""
        raise KitaruConfigError(
            f"{prefix}unknown stack type {type_name!r}; installed stack types: {installed}. "
            f"{_install_hint(type_name).capitalize()}."
        ) from None
    cls: type[Any] = manager.driver
    return cls


def _artifact_store_keys(uri: str | None) -> Mapping[str, Any] | None:
    """The keys the artifact store for ``uri`` declares (its factory's ``keys``), or None when it
    declares none or is not installed (then any key is let through to it)."""
    from kitaru.stack import ARTIFACT_STORE_NAMESPACE

    scheme = (uri or "file://").partition("://")[0]
    from importlib.metadata import entry_points

    for ep in entry_points(group=ARTIFACT_STORE_NAMESPACE, name=scheme):
        try:
            factory = ep.load()
        except Exception:
            return None
        keys = getattr(factory, "keys", None)
        return keys if isinstance(keys, Mapping) else None
    return None


_ADAPTERS: dict[Any, Any] = {}


def _check_value(annotation: Any, value: Any) -> tuple[Any, str | None]:
    """Validate ``value`` against ``annotation`` (pydantic, lax: "3" is an int, 3 is not a str)."""
    from pydantic import TypeAdapter, ValidationError

    try:
        adapter = _ADAPTERS[annotation]
    except (KeyError, TypeError):
        adapter = TypeAdapter(annotation)
        try:
            _ADAPTERS[annotation] = adapter
        except TypeError:
            pass
    try:
        return adapter.validate_python(value), None
    except ValidationError as exc:
        return value, "; ".join(e["msg"] for e in exc.errors())


def validate_stack_keys(
    cls: type[Any],
    options: Mapping[str, Any],
    *,
    stack_name: str = "?",
    source_of: Any = None,
) -> dict[str, Any]:
    """Check a stack's keys against its type: each key the type declares (``cls.keys``) must have a
    value of the declared type; other keys go to the artifact store, which may declare its own
    (its factory's ``keys``); a type that sets ``other_keys = False`` accepts no other key.

    Returns the validated values (``"3"`` from the environment becomes 3 for an ``int`` key).
    ``source_of(key)`` says where a key came from, for the error message.
    """
    declared: Mapping[str, Any] | None = getattr(cls, "keys", None)
    type_name = getattr(cls, "type", cls.__name__)
    if declared is None or not isinstance(declared, Mapping):
        return dict(options)
    store_keys = None
    store_open = bool(getattr(cls, "other_keys", True))
    if store_open:
        store_keys = _artifact_store_keys(options.get("artifacts"))
    out: dict[str, Any] = {}
    for key, value in options.items():
        where = source_of(key) if source_of else f"stack {stack_name!r}"
        annotation = declared.get(key)
        if annotation is None and store_keys is not None:
            annotation = store_keys.get(key)
        if annotation is None:
            if store_open and store_keys is None:
                out[key] = value  # an artifact store that declares nothing takes any key
                continue
            accepted = sorted({*declared, *(store_keys or {})})
            raise KitaruConfigError(
                f"{where}: unknown key {key!r} for stack {stack_name!r} of type {type_name!r}; it "
                f"accepts: type, {', '.join(accepted)}. See stacks.example.toml for every key."
            )
        checked, error = _check_value(annotation, value)
        if error:
            raise KitaruConfigError(
                f"{where}: key {key!r} of stack {stack_name!r} has a wrong value {value!r}: {error}."
            )
        if key == "state" and isinstance(checked, str):
            _check_state_uri(cls, checked, where, stack_name)
        out[key] = checked
    return out


def _check_state_uri(cls: type[Any], uri: str, where: str, stack_name: str) -> None:
    """A ``state`` URI must name a state store kitaru can open (a stack type may widen the list
    with a ``state_schemes`` attribute), so a typo fails when the stack is declared, not when a
    flow first runs on it."""
    from kitaru.store.open import STATE_STORE_SCHEMES

    schemes: tuple[str, ...] = tuple(getattr(cls, "state_schemes", STATE_STORE_SCHEMES))
    scheme, sep, _ = uri.partition("://")
    if sep and scheme.lower() in schemes:
        return
    shown = f"{scheme}://..." if sep and "@" in uri else uri  # the URI may hold a password
    raise KitaruConfigError(
        f"{where}: key 'state' of stack {stack_name!r} is {shown!r}, which is no state store "
        f"kitaru supports; supported: {', '.join(s + '://' for s in schemes)} (e.g. "
        "sqlite:////abs/path/kitaru.db or postgresql://user:password@host:5432/db)."
    )


# -- resolving a stack --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StackConfig:
    """A stack as configured: its name, type, keys, and where each came from."""

    name: str
    type: str
    options: dict[str, Any]
    """The stack's keys, minus ``type``, validated against the stack type."""
    sources: dict[str, str]
    """Key (``type`` included) to where its value came from."""
    declared_in: str
    """The file (and line) declaring the stack, or ``default``."""
    active: bool


def _unknown_stack(name: str, settings: Settings, via: str) -> KitaruConfigError:
    files = (
        ", ".join(str(c.path) for c in settings.files) or f"none yet (the user file is {user_config_path()})"
    )
    return KitaruConfigError(
        f"unknown stack {name!r} ({via}); known stacks: {', '.join(settings.known())}. Declare it in a "
        f"config file (files read: {files}) or with `kitaru stack create {name} --type TYPE`."
    )


def resolve_stack(name: str | None = None, /, **options: Any) -> StackConfig:
    """The configuration of stack ``name`` (default: the active stack), merged from every source
    and validated against its stack type; ``options`` (call arguments) override its keys."""
    settings = load_settings()
    chosen = name or settings.active_stack
    via = "call argument" if name else f"active stack, from {settings.active_source}"
    table = settings.stacks.get(chosen)
    if table is None:
        if chosen != DEFAULT_STACK:
            raise _unknown_stack(chosen, settings, via)
        table = {"type": DEFAULT_STACK}
    merged = dict(table)
    active = chosen == settings.active_stack
    if active:
        merged.update(settings.overrides)
    merged.update(options)

    def source_of(key: str) -> str:
        if key in options:
            return "call argument"
        return settings.source_of(chosen, key)

    type_name = merged.pop("type", None)
    if not isinstance(type_name, str) or not type_name:
        raise KitaruConfigError(
            f"{settings.where(chosen)}: stack {chosen!r} has no 'type' key; add e.g. type = \"local\" "
            f"(installed stack types: {', '.join(_installed('kitaru.stacks')) or 'none'})."
        )
    cls = stack_type(type_name, where=f"{source_of('type')}: stack {chosen!r}")
    checked = validate_stack_keys(cls, merged, stack_name=chosen, source_of=source_of)
    return StackConfig(
        name=chosen,
        type=type_name,
        options=checked,
        sources={key: source_of(key) for key in ("type", *checked)},
        declared_in=settings.where(chosen),
        active=active,
    )


def list_stacks() -> tuple[Settings, list[tuple[str, str | None, str]]]:
    """The merged settings and each known stack as (name, type, where declared), sorted by name."""
    settings = load_settings()
    rows: list[tuple[str, str | None, str]] = []
    for name in settings.known():
        table = settings.stacks.get(name)
        if table is None:
            rows.append((name, DEFAULT_STACK, "default"))
        else:
            type_name = table.get("type")
            if name == settings.active_stack and "type" in settings.overrides:
                type_name = settings.overrides["type"]
            rows.append((name, type_name, settings.where(name)))
    return settings, rows


# -- writing the user file ----------------------------------------------------------------------------


def _toml_key(key: str) -> str:
    return key if _BARE.fullmatch(key) else json.dumps(key)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a TOML basic string
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items()) + "}"
    raise KitaruConfigError(f"cannot write {value!r} ({type(value).__name__}) to a TOML file.")


def _table_text(name: str, table: Mapping[str, Any]) -> str:
    lines = [f"[stacks.{_toml_key(name)}]"]
    lines += [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in table.items()]
    return "\n".join(lines) + "\n"


def _dump(data: Mapping[str, Any]) -> str:
    """A whole config file from data (used when an in-place edit cannot keep the file's layout)."""
    out = []
    if "active_stack" in data:
        out.append(f"active_stack = {_toml_value(data['active_stack'])}\n")
    for name, table in data.get("stacks", {}).items():
        out.append(("\n" if out else "") + _table_text(name, table))
    return "".join(out)


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temp.write_text(text, encoding="utf-8")
    os.replace(temp, path)


def _set_top_level(text: str, key: str, value: Any) -> str:
    lines = text.splitlines(keepends=True)
    assignment = f"{key} = {_toml_value(value)}\n"
    first_header = None
    for number, full, is_header in _table_lines(text):
        if is_header:
            first_header = number - 1
            break
        if full == [key]:
            lines[number - 1] = assignment
            return "".join(lines)
    if first_header is None:
        if lines and not lines[-1].endswith("\n"):
            lines[-1] += "\n"
        return "".join([*lines, assignment])
    # Before the first table, above the comment block that introduces it.
    at = first_header
    while at > 0 and lines[at - 1].lstrip().startswith("#"):
        at -= 1
    before = "\n" if at and lines[at - 1].strip() else ""
    return "".join([*lines[:at], before, assignment, "\n", *lines[at:]])


def _remove_top_level(text: str, key: str) -> str:
    lines = text.splitlines(keepends=True)
    for number, full, is_header in _table_lines(text):
        if is_header:
            break
        if full == [key]:
            del lines[number - 1]
            break
    return "".join(lines)


def _remove_table(text: str, path: list[str]) -> str:
    """Remove the table ``[a.b]`` (and its sub-tables), with the comment block right above it."""
    lines = text.splitlines(keepends=True)
    headers = [(n - 1, full) for n, full, is_header in _table_lines(text) if is_header]
    drop: set[int] = set()
    for i, (start, full) in enumerate(headers):
        if full[: len(path)] != path:
            continue
        end = headers[i + 1][0] if i + 1 < len(headers) else len(lines)
        drop.update(range(start, end))
        above = start - 1
        while above >= 0 and lines[above].lstrip().startswith("#") and above not in drop:
            drop.add(above)
            above -= 1
    kept = [line for i, line in enumerate(lines) if i not in drop]
    while len(kept) >= 2 and not kept[-1].strip() and not kept[-2].strip():
        kept.pop()
    return "".join(kept)


def _edit_user_file(expected: dict[str, Any], edit: Any) -> tuple[Path, bool]:
    """Apply ``edit(text) -> text`` to the user file, keeping its comments; if the result does not
    parse to ``expected`` (an unusual layout, e.g. inline tables), rewrite the file from data.
    Returns the path and whether the layout (and comments) had to be dropped."""
    import tomllib

    path = user_config_path()
    current = read_config_file(path)
    text = current.text if current else ""
    new_text = edit(text)
    kept = True
    try:
        kept = tomllib.loads(new_text) == expected
    except tomllib.TOMLDecodeError:
        kept = False
    if not kept:
        new_text = _dump(expected)
    _write_atomic(path, new_text)
    return path, not kept


def _user_data() -> dict[str, Any]:
    current = read_config_file(user_config_path())
    return json.loads(json.dumps(current.data)) if current else {}


def set_active_stack(name: str) -> tuple[Path, bool]:
    """Make ``name`` the active stack in the user file. It must be a known stack."""
    settings = load_settings()
    if name not in settings.known():
        raise _unknown_stack(name, settings, "kitaru stack set")
    data = _user_data()
    data["active_stack"] = name
    return _edit_user_file(data, lambda text: _set_top_level(text, "active_stack", name))


def create_stack(
    name: str, type_name: str, options: Mapping[str, Any], *, activate: bool = False
) -> StackConfig:
    """Declare stack ``name`` of type ``type_name`` in the user file, after checking the type is
    installed and accepts ``options``; ``activate`` also makes it the active stack."""
    if not _NAME.match(name):
        raise KitaruConfigError(
            f"invalid stack name {name!r}: use letters, digits, '-' and '_', starting with a letter "
            "or a digit."
        )
    settings = load_settings()
    if name in settings.stacks:
        raise KitaruConfigError(
            f"stack {name!r} already exists ({settings.where(name)}); delete it first with "
            f"`kitaru stack delete {name}`, or pick another name."
        )
    cls = stack_type(type_name)
    checked = validate_stack_keys(
        cls, dict(options), stack_name=name, source_of=lambda key: f"--{key.replace('_', '-')}"
    )
    data = _user_data()
    table = {"type": type_name, **checked}
    data.setdefault("stacks", {})[name] = table
    if activate:
        data["active_stack"] = name

    def edit(text: str) -> str:
        if text and not text.endswith("\n"):
            text += "\n"
        text = text + ("\n" if text.strip() else "") + _table_text(name, table)
        return _set_top_level(text, "active_stack", name) if activate else text

    _edit_user_file(data, edit)
    return resolve_stack(name)


def delete_stack(name: str) -> tuple[Path, bool]:
    """Remove stack ``name`` from the user file. The active stack cannot be deleted."""
    settings = load_settings()
    data = _user_data()
    path = user_config_path()
    if name not in data.get("stacks", {}):
        if name == DEFAULT_STACK and name not in settings.stacks:
            raise KitaruConfigError(
                f"the built-in {DEFAULT_STACK!r} stack cannot be deleted: it is kitaru's default "
                "(state and artifacts under KITARU_HOME) and is there when no other stack is. "
                "Use another one with `kitaru stack set NAME`."
            )
        if name in settings.stacks:
            raise KitaruConfigError(
                f"stack {name!r} is declared in {settings.where(name)}, not in the user file {path}: "
                "edit that file to remove it."
            )
        raise KitaruConfigError(
            f"unknown stack {name!r}; stacks in the user file {path}: "
            f"{', '.join(sorted(data.get('stacks', {}))) or 'none'}."
        )
    if name == settings.active_stack:
        raise KitaruConfigError(
            f"stack {name!r} is the active stack (from {settings.active_source}); switch first, "
            f"e.g. `kitaru stack set {DEFAULT_STACK}`, then delete it."
        )
    del data["stacks"][name]
    if not data["stacks"]:
        del data["stacks"]
    stale_active = data.get("active_stack") == name
    if stale_active:
        del data["active_stack"]

    def edit(text: str) -> str:
        text = _remove_table(text, ["stacks", name])
        return _remove_top_level(text, "active_stack") if stale_active else text

    return _edit_user_file(data, edit)
