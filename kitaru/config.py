"""Where kitaru keeps its state, and the few settings the core reads from the environment."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["home"]


def home() -> Path:
    """kitaru's home directory: ``$KITARU_HOME``, else ``$XDG_DATA_HOME/kitaru``, else
    ``~/.local/share/kitaru``. The embedded stack keeps ``kitaru.db`` and ``artifacts/`` here."""
    explicit = os.environ.get("KITARU_HOME")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_DATA_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".local" / "share"
    return base / "kitaru"


def env_float(name: str, default: float) -> float:
    """A float setting from the environment, ignoring values that do not parse."""
    try:
        return float(os.environ[name])
    except (KeyError, ValueError):
        return default
