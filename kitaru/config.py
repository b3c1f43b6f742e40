"""Where kitaru keeps its state, the few settings the core reads from the environment, the
process defaults ``kitaru.configure()`` sets, and the stacks from Python (``kitaru.list_stacks``,
``current_stack``, ``use_stack``, ``create_stack``, ``delete_stack``: the same functions as
``kitaru stack ...``, from :mod:`kitaru.stack_config`)."""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kitaru.errors import KitaruConfigError, KitaruUsageError

__all__ = [
    "StackInfo",
    "configure",
    "configured",
    "create_stack",
    "current_stack",
    "delete_stack",
    "home",
    "list_stacks",
    "private_dir",
    "use_stack",
]


def home() -> Path:
    """kitaru's home directory: ``$KITARU_HOME``, else ``$XDG_DATA_HOME/kitaru``, else
    ``~/.local/share/kitaru``. The embedded stack keeps ``kitaru.db`` and ``artifacts/`` here.

    Raises :class:`~kitaru.errors.KitaruConfigError` naming the variable when the path is a file,
    or lies below one, rather than failing later inside a store."""
    explicit = os.environ.get("KITARU_HOME")
    if explicit:
        return _checked(Path(explicit).expanduser(), "KITARU_HOME")
    xdg = os.environ.get("XDG_DATA_HOME")
    if xdg:
        return _checked(Path(xdg).expanduser() / "kitaru", "XDG_DATA_HOME")
    return _checked(Path.home() / ".local" / "share" / "kitaru", "HOME")


def _checked(path: Path, variable: str) -> Path:
    # The nearest existing ancestor must be a directory, or nothing can ever be created there.
    probe = path.absolute()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        fix = f"Point {variable} at a directory" if variable == "KITARU_HOME" else "Set KITARU_HOME"
        where = "is a file" if probe == path.absolute() else f"lies below the file {probe}"
        raise KitaruConfigError(
            f"kitaru's home {path.absolute()} (from ${variable}) {where}; kitaru keeps its database "
            f"and artifacts in a directory there. {fix}, e.g. `export KITARU_HOME=~/kitaru-home`."
        )
    return path


def private_dir(path: Path) -> None:
    """Create ``path`` and any missing parents as directories only their owner can enter (0700),
    whatever the umask. Existing directories keep their mode: a home the user chose to share
    stays shared. Raises OSError like ``mkdir``."""
    missing: list[Path] = []
    probe = path
    while not probe.is_dir() and probe != probe.parent:
        missing.append(probe)
        probe = probe.parent
    for directory in reversed(missing):
        try:
            directory.mkdir(mode=0o700)
        except FileExistsError:
            if not directory.is_dir():
                raise
            continue  # another process made it meanwhile (and sets its mode)
        # mkdir's mode passes through the umask, which may also drop the owner's bits.
        os.chmod(directory, 0o700)


def env_float(name: str, default: float) -> float:
    """A float setting from the environment, ignoring values that do not parse."""
    try:
        return float(os.environ[name])
    except (KeyError, ValueError):
        return default


# -- process defaults (kitaru.configure) ------------------------------------------------------

_UNSET: Any = object()
_configured: dict[str, Any] = {}
_configure_lock = threading.Lock()


def configure(*, stack: Any = _UNSET, model: Any = _UNSET, allow_pickle: Any = _UNSET) -> dict[str, Any]:
    """Set defaults for this process; each argument given replaces its default, ``None`` removes it.

    - ``stack``: the stack flows run on and clients read when no call names one; above
      ``KITARU_STACK`` and the config files' ``active_stack`` (code that says which stack it wants
      is more specific than the environment), below a call's own ``stack=``. It must be a known
      stack. Runtimes already opened on another stack stay open for the handles using them.
    - ``model``: the model ``kitaru.llm()`` uses when a call names none; above ``KITARU_MODEL``
      and the models file's default.
    - ``allow_pickle``: whether values may be pickled and unpickled; above ``KITARU_ALLOW_PICKLE``.

    Returns the defaults now set. Nothing is written anywhere: the next process starts without
    them (``kitaru stack set`` and ``kitaru model register --default`` persist)."""
    with _configure_lock:
        if stack is not _UNSET:
            if stack is not None:
                if not isinstance(stack, str) or not stack:
                    raise KitaruUsageError(f"configure(stack=...) takes a stack name, got {stack!r}.")
                from kitaru.stack_config import load_settings
                from kitaru.stack_config._resolve import unknown_stack

                settings = load_settings()
                if stack not in settings.known() and stack != settings.active_stack:
                    raise unknown_stack(stack, settings, "kitaru.configure()")
            _set("stack", stack)
            from kitaru._engine.runtime import release_default_runtime

            release_default_runtime()
        if model is not _UNSET:
            if model is not None and (not isinstance(model, str) or not model):
                raise KitaruUsageError(
                    f"configure(model=...) takes an alias or provider/model, got {model!r}."
                )
            _set("model", model)
        if allow_pickle is not _UNSET:
            if allow_pickle is not None and not isinstance(allow_pickle, bool):
                raise KitaruUsageError(
                    f"configure(allow_pickle=...) takes True or False, got {allow_pickle!r}."
                )
            _set("allow_pickle", allow_pickle)
        return dict(_configured)


def configured(key: str) -> Any:
    """The value ``configure()`` set for ``key`` (``stack``, ``model``, ``allow_pickle``), or None."""
    return _configured.get(key)


def _set(key: str, value: Any) -> None:
    if value is None:
        _configured.pop(key, None)
    else:
        _configured[key] = value


# -- stacks from Python -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StackInfo:
    """A configured stack: its name, type, where it is declared, and whether it is active."""

    name: str
    type: str | None
    declared_in: str
    active: bool
    active_source: str | None = None
    """For the active stack: where that choice came from (``kitaru.configure()``,
    ``KITARU_STACK``, a config file's path, or ``default``)."""


def list_stacks() -> list[StackInfo]:
    """Every known stack (the built-in ``local`` and each declared one), by name."""
    from kitaru.stack_config import list_stacks as _list

    settings, rows = _list()
    return [
        StackInfo(
            name,
            type_name,
            where,
            name == settings.active_stack,
            settings.active_source if name == settings.active_stack else None,
        )
        for name, type_name, where in rows
    ]


def current_stack() -> StackInfo:
    """The active stack: the one flows run on when no call names one."""
    from kitaru.stack_config import resolve_stack

    config = resolve_stack()
    from kitaru.stack_config import load_settings

    return StackInfo(config.name, config.type, config.declared_in, True, load_settings().active_source)


def use_stack(name: str) -> StackInfo:
    """Make ``name`` the active stack in the user file, as ``kitaru stack set NAME`` does (every
    later process uses it, unless ``KITARU_STACK`` or ``kitaru.configure(stack=)`` says otherwise);
    this process switches too."""
    from kitaru._engine.runtime import release_default_runtime
    from kitaru.stack_config import set_active_stack

    set_active_stack(name)
    release_default_runtime()
    return current_stack()


def create_stack(name: str, type: str, *, activate: bool = False, **keys: Any) -> StackInfo:
    """Declare stack ``name`` of stack type ``type`` with its ``keys`` in the user file, checked
    against the type, as ``kitaru stack create`` does; ``activate`` also makes it active."""
    from kitaru.stack_config import create_stack as _create

    config, _rewritten = _create(name, type, keys, activate=activate)
    if activate:
        from kitaru._engine.runtime import release_default_runtime

        release_default_runtime()
    return StackInfo(config.name, config.type, config.declared_in, config.active)


def delete_stack(name: str) -> None:
    """Remove stack ``name`` from the user file, as ``kitaru stack delete`` does (not the active
    stack; its state and artifacts are left alone)."""
    from kitaru.stack_config import delete_stack as _delete

    _delete(name)
