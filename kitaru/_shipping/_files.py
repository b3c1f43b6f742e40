"""Which files of a flow's source root are shipped: ``git ls-files`` inside a git work tree, else
our own reading of the ``.gitignore`` files; never VCS folders, virtualenvs or caches."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

#: Directories never shipped: VCS data, virtualenvs, caches.
EXCLUDED_DIRS = frozenset(
    {
        ".git",
        ".hg",
        ".svn",
        ".venv",
        "venv",
        "__pycache__",
        ".mypy_cache",
        ".pytest_cache",
        ".ruff_cache",
        "node_modules",
        ".tox",
        ".nox",
    }
)
_EXCLUDED_SUFFIXES = (".pyc", ".pyo")
#: Environment files, in the order the first one found is recorded as *the* lock.


@dataclass(frozen=True)
class _Rule:
    regex: re.Pattern[str]
    negated: bool
    dir_only: bool


def _pattern_regex(pattern: str) -> str:
    """A gitignore glob (``*``, ``?``, ``[...]``, ``**``) as a regex over a slash-separated path."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out += "(?:.*/)?"
            i += 3
        elif pattern.startswith("/**", i) and i + 3 == len(pattern):
            out += "/.*"
            i += 3
        elif pattern.startswith("**", i):
            out += ".*"
            i += 2
        elif pattern[i] == "*":
            out += "[^/]*"
            i += 1
        elif pattern[i] == "?":
            out += "[^/]"
            i += 1
        elif pattern[i] == "[":
            end = pattern.find("]", i + 2)
            if end == -1:
                out += re.escape("[")
                i += 1
            else:
                body = pattern[i + 1 : end]
                if body.startswith("!"):
                    body = "^" + body[1:]
                out += "[" + body.replace("\\", "\\\\") + "]"
                i = end + 1
        elif pattern[i] == "\\" and i + 1 < len(pattern):
            out += re.escape(pattern[i + 1])
            i += 2
        else:
            out += re.escape(pattern[i])
            i += 1
    return out


def parse_gitignore(text: str) -> list[_Rule]:
    """The rules of one ``.gitignore`` (paths relative to its directory): comments, blank lines,
    ``!`` negation, a trailing ``/`` for directories only, anchoring when a ``/`` appears before
    the end (else the pattern matches a name at any depth), ``**``, escapes."""
    rules = []
    for raw in text.splitlines():
        line = raw.rstrip("\r")
        if not line or line.startswith("#"):
            continue
        # Trailing spaces are ignored unless escaped with a backslash.
        stripped = line.rstrip(" ")
        if stripped.endswith("\\") and len(stripped) < len(line):
            stripped += " "
        line = stripped
        negated = line.startswith("!")
        if negated:
            line = line[1:]
        elif line.startswith("\\!") or line.startswith("\\#"):
            line = line[1:]
        dir_only = line.endswith("/")
        line = line.rstrip("/")
        if not line:
            continue
        anchored = "/" in line
        line = line.lstrip("/")
        body = _pattern_regex(line)
        regex = f"^{body}$" if anchored else f"^(?:.*/)?{body}$"
        rules.append(_Rule(re.compile(regex, re.DOTALL), negated, dir_only))
    return rules


def _ignored(rules: list[tuple[str, list[_Rule]]], rel: str, is_dir: bool) -> bool:
    """Whether ``rel`` (relative to the root) is ignored: the last matching rule wins, deeper
    ``.gitignore`` files after shallower ones."""
    verdict = False
    for base, base_rules in rules:
        if base and not rel.startswith(base + "/"):
            continue
        sub = rel[len(base) + 1 :] if base else rel
        for rule in base_rules:
            if rule.dir_only and not is_dir:
                continue
            if rule.regex.match(sub):
                verdict = not rule.negated
    return verdict


def _skip_dir(path: Path) -> bool:
    return path.name in EXCLUDED_DIRS or (path / "pyvenv.cfg").exists()


def _skip_file(name: str) -> bool:
    return name.endswith(_EXCLUDED_SUFFIXES)


def _walk(root: Path) -> Iterator[str]:
    """Files under ``root`` that ``.gitignore`` files do not exclude (our own reading of them)."""
    stack: list[tuple[Path, list[tuple[str, list[_Rule]]]]] = [(root, [])]
    while stack:
        directory, rules = stack.pop()
        rel_dir = directory.relative_to(root).as_posix()
        rel_dir = "" if rel_dir == "." else rel_dir
        ignore = directory / ".gitignore"
        if ignore.is_file():
            rules = [*rules, (rel_dir, parse_gitignore(ignore.read_text(errors="replace")))]
        for entry in sorted(os.scandir(directory), key=lambda e: e.name):
            rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
            path = Path(entry.path)
            if entry.is_dir(follow_symlinks=False):
                if not _skip_dir(path) and not _ignored(rules, rel, True):
                    stack.append((path, rules))
            elif not _skip_file(entry.name) and not _ignored(rules, rel, False):
                yield rel


def _git_files(root: Path) -> list[str] | None:
    """Files git would consider (tracked, plus untracked ones not ignored), or None when the root
    is not inside a git work tree or git is not installed."""
    git = shutil.which("git")
    if git is None:
        return None
    try:
        inside = subprocess.run(
            [git, "-C", str(root), "rev-parse", "--is-inside-work-tree"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        if inside.returncode != 0 or inside.stdout.strip() != "true":
            return None
        listed = subprocess.run(
            [git, "-C", str(root), "ls-files", "-z", "--cached", "--others", "--exclude-standard", "--", "."],
            capture_output=True,
            timeout=120,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if listed.returncode != 0:
        return None
    return sorted({p for p in listed.stdout.decode("utf-8", "surrogateescape").split("\0") if p})


def collect_files(root: Path, *, use_git: bool = True) -> list[str]:
    """The files to ship from ``root``, as sorted POSIX paths relative to it.

    Symbolic links are shipped as the file they point to when that file is inside the root, and
    left out otherwise (a link out of the root would ship, or on unpacking reach, files the user
    never meant to send). Directories behind symbolic links are not followed.
    """
    root = root.resolve()
    listed = _git_files(root) if use_git else None
    candidates = listed if listed is not None else list(_walk(root))
    files = []
    for rel in candidates:
        parts = PurePosixPath(rel).parts
        path = root.joinpath(*parts)
        if _skip_file(parts[-1]) or any(
            _skip_dir(root.joinpath(*parts[: i + 1])) for i in range(len(parts) - 1)
        ):
            continue
        if path.is_symlink():
            target = path.resolve()
            if not target.is_file() or not target.is_relative_to(root):
                continue
        elif not path.is_file():
            continue  # deleted since git listed it, a submodule, a socket
        files.append(rel)
    return sorted(files)
