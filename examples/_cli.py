"""How the examples spell the ``kitaru`` command in the next step they print.

After ``uv run examples/quickstart.py`` the ``kitaru`` command lives in the project's environment,
which ``uv run`` put on the PATH of this process only, not of the user's shell: the printed command
then names it by its full path, so it works as written from any directory. When the user's own PATH
leads to this environment's ``kitaru`` (an activated environment, a pip install), it is just ``kitaru``.
"""

from __future__ import annotations

import os
import shlex
import shutil
import sys
from pathlib import Path


def kitaru_cli() -> str:
    ours = Path(sys.executable).parent / "kitaru"
    if not ours.exists():
        return "kitaru"
    on_path = shutil.which("kitaru")
    if os.environ.get("UV_RUN_RECURSION_DEPTH"):
        on_path = None  # uv run's PATH, not the shell's
    if on_path is not None and Path(on_path).resolve() == ours.resolve():
        return "kitaru"
    return shlex.quote(str(ours))
