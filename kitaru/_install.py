"""How an error message tells the user to install an extra.

kitaru is installed from its repository, not from a package index (a package of the same name there
is a different project), so a hint must never say a bare ``pip install 'kitaru[aws]'``. When this
kitaru runs from a checkout (an editable install, ``uv run``), the hint names that checkout's path;
otherwise it says to run the command from the checkout. In the checkout's own environment as
``./uvw`` builds it there is no pip (a ``pip`` on PATH would install into another Python), so
there the hint is the ``./uvw sync`` that adds the extra beside what is installed.
"""

from __future__ import annotations

import functools
import importlib.util
import re
import shlex
import sys
from pathlib import Path

__all__ = ["install_hint"]


@functools.cache
def _checkout() -> Path | None:
    root = Path(__file__).resolve().parent.parent
    return root if (root / "pyproject.toml").is_file() and (root / "stacks").is_dir() else None


def install_hint(extra: str) -> str:
    """The command to paste that installs kitaru's ``extra`` into the running environment."""
    root = _checkout()
    if root is not None:
        if _uv_environment(root):
            return f"cd {shlex.quote(str(root))} && ./uvw sync --locked --inexact --extra {extra}"
        return f"pip install {shlex.quote(f'{root}[{extra}]')}"
    return f"pip install '.[{extra}]' (from your kitaru checkout)"


@functools.cache
def _uv_environment(root: Path) -> bool:
    """This Python is the checkout's own ``.venv`` and has no pip: the environment uv made."""
    try:
        own = Path(sys.prefix).resolve() == (root / ".venv").resolve()
    except OSError:
        return False
    return own and importlib.util.find_spec("pip") is None


def install_hint_pattern(extra: str) -> str:
    """A regular expression matching :func:`install_hint` for ``extra`` in any environment (for
    tests, which run in the checkout's uv environment or in one with pip)."""
    name = re.escape(extra)
    return rf"pip install '\S+\[{name}\]'|\./uvw sync --locked --inexact --extra {name}\b"
