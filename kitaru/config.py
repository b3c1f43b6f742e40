"""Where kitaru keeps its state, and the few settings the core reads from the environment."""

from __future__ import annotations

import os
from pathlib import Path

from kitaru.errors import KitaruConfigError

__all__ = ["home", "private_dir"]


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
