"""The environment an archive was built with (its lock or requirements file, the Python version,
the installed distributions), and how a worker's differs from it."""

from __future__ import annotations

import fnmatch
import hashlib
import platform
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

LOCK_PATTERNS = ("uv.lock", "pylock.toml", "pylock.*.toml", "poetry.lock", "requirements*.txt")


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def current_environment() -> dict[str, Any]:
    """This interpreter and its installed distributions (``pip freeze``-like, first on the path
    wins, names normalized)."""
    from importlib import metadata

    found: dict[str, str] = {}
    for dist in metadata.distributions():
        name = dist.metadata["Name"] if dist.metadata else None
        if name:
            found.setdefault(_normalize(name), dist.version)
    return {
        "python": platform.python_version(),
        "implementation": sys.implementation.name,
        "distributions": [f"{name}=={version}" for name, version in sorted(found.items())],
    }


def _find_lock(root: Path, files: list[str]) -> dict[str, str] | None:
    top = {f for f in files if "/" not in f}
    for pattern in LOCK_PATTERNS:
        for name in sorted(f for f in top if fnmatch.fnmatchcase(f, pattern)):
            return {"path": name, "sha256": hashlib.sha256((root / name).read_bytes()).hexdigest()}
    return None


@dataclass(frozen=True)
class EnvironmentDifference:
    """One way the running environment differs from the archive's: ``built`` and ``running`` are
    versions (None: absent on that side)."""

    name: str
    built: str | None
    running: str | None

    def __str__(self) -> str:
        running = self.running if self.running is not None else "not installed here"
        return f"{self.name}: the code was archived with {self.built}, this worker has {running}"


def environment_differences(
    manifest: dict[str, Any], running: dict[str, Any] | None = None
) -> list[EnvironmentDifference]:
    """How ``running`` (default: this process) differs from the environment ``manifest`` was
    built with: the Python version, then every distribution missing or at another version.
    Distributions only the worker has are not differences: images usually hold more."""
    env = manifest.get("environment") or {}
    here = running if running is not None else current_environment()
    out = []
    if env.get("python") and env.get("python") != here.get("python"):
        out.append(EnvironmentDifference("python", env["python"], here.get("python")))
    ours = dict(item.split("==", 1) for item in here.get("distributions") or [])
    for item in env.get("distributions") or []:
        name, _, version = item.partition("==")
        if ours.get(name) != version:
            out.append(EnvironmentDifference(name, version, ours.get(name)))
    return out
