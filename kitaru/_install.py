"""How an error message tells the user to install an extra.

kitaru is installed from its repository, not from a package index (a package of the same name there
is a different project), so a hint must never say a bare ``pip install 'kitaru[aws]'``. When this
kitaru runs from a checkout (an editable install, ``uv run``), the hint names that checkout's path;
otherwise it says to run the command from the checkout.
"""

from __future__ import annotations

import functools
import shlex
from pathlib import Path

__all__ = ["install_hint"]


@functools.cache
def _checkout() -> Path | None:
    root = Path(__file__).resolve().parent.parent
    return root if (root / "pyproject.toml").is_file() and (root / "stacks").is_dir() else None


def install_hint(extra: str) -> str:
    """``pip install '<checkout>[extra]'``, as a command to paste."""
    root = _checkout()
    if root is not None:
        return f"pip install {shlex.quote(f'{root}[{extra}]')}"
    return f"pip install '.[{extra}]' (from your kitaru checkout)"
