"""Code shipping: a content-addressed archive of a flow's source root, for remote workers.

A remote job (a Kubernetes Job, a cloud job) runs ``kitaru worker run <exec_id>`` in an image that
may not hold the flow's code. The submitting side archives the flow's source root (the import
root the execution recorded, ``sys_path``, or a script's directory), uploads it to the stack's
artifact store under its SHA-256 (once per content: the same tree gives the same bytes), and the
worker downloads it, checks the hash, and unpacks it into a cache keyed by that hash.

What goes in: every file under the root except what ``.gitignore`` excludes (``git ls-files``
when the root is inside a git work tree, else our own reading of the ``.gitignore`` files), VCS
folders, virtualenvs and caches. A manifest inside (``.kitaru/manifest.json``) records the
environment the archive was built with (the lock or requirements file found in the root with its
SHA-256, the Python version, the installed distributions) so a worker can *report* a mismatch
with :func:`environment_differences` instead of failing in a way nobody can explain.

Determinism: entries sorted, mtimes, owners and modes fixed, gzip header without name or time.
The same files and environment give the same SHA-256 on one machine (zlib versions may compress
differently, which only costs an extra upload).

Trust: the archive comes back from an artifact store; :func:`unpack` checks its SHA-256 against
the key before reading it, and refuses members that are not plain files or directories, or whose
path leaves the target (absolute paths, ``..``).

No store or engine imports at module level: this module is imported by the CLI's submit path and
the worker only.
"""

from __future__ import annotations

import fnmatch
import gzip
import hashlib
import io
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import uuid
from collections.abc import AsyncIterable, AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Any, Protocol

from kitaru.errors import KitaruConfigError, KitaruStoreError

__all__ = [
    "DEFAULT_LIMIT",
    "MANIFEST",
    "CodeArchive",
    "EnvironmentDifference",
    "archive_key",
    "build_archive",
    "collect_files",
    "current_environment",
    "environment_differences",
    "fetch",
    "read_manifest",
    "unpack",
    "upload",
]

#: Default limit on the files' total size (``KITARU_CODE_ARCHIVE_LIMIT`` overrides it).
DEFAULT_LIMIT = 50 * 1024 * 1024
LIMIT_ENV = "KITARU_CODE_ARCHIVE_LIMIT"
#: Where the manifest lives inside the archive (and the unpacked tree).
MANIFEST = ".kitaru/manifest.json"
KEY_PREFIX = "code/"
_FORMAT = 1
_MTIME = 0
_CHUNK = 1 << 20

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
LOCK_PATTERNS = ("uv.lock", "pylock.toml", "pylock.*.toml", "poetry.lock", "requirements*.txt")


# -- which files -------------------------------------------------------------------------------------


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


# -- the environment --------------------------------------------------------------------------------


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


# -- building ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CodeArchive:
    """A built archive: the ``.tar.gz`` file, its SHA-256, its manifest."""

    path: Path
    sha256: str
    size: int
    manifest: dict[str, Any]

    @property
    def key(self) -> str:
        return archive_key(self.sha256)


def archive_key(sha256: str) -> str:
    """The artifact store key of the archive with this hash."""
    return f"{KEY_PREFIX}{sha256}.tar.gz"


def _limit() -> int:
    raw = os.environ.get(LIMIT_ENV, "").strip()
    if not raw:
        return DEFAULT_LIMIT
    match = re.fullmatch(r"(\d+)\s*([KMG]i?B?)?", raw, re.IGNORECASE)
    if match is None:
        raise KitaruConfigError(
            f"{LIMIT_ENV}={raw!r} is not a size: give bytes, or a number with KiB, MiB or GiB "
            f"(e.g. `export {LIMIT_ENV}=200MiB`)."
        )
    unit = (match[2] or "").upper()[:1]
    return int(match[1]) * {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}[unit]


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB"


class _HashingWriter(io.RawIOBase):
    """A write-only file that hashes what passes through it on its way to ``target``."""

    def __init__(self, target: IO[bytes]) -> None:
        self.target = target
        self.digest = hashlib.sha256()
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        view = bytes(data)
        self.digest.update(view)
        self.size += len(view)
        self.target.write(view)
        return len(view)


def build_archive(root: Path, dest: Path, *, limit: int | None = None, use_git: bool = True) -> CodeArchive:
    """Archive the files of ``root`` into ``dest/<sha256>.tar.gz``.

    Raises KitaruConfigError when the files together exceed ``limit`` bytes (default:
    ``KITARU_CODE_ARCHIVE_LIMIT``, else 50 MiB), naming the biggest files and how to leave them out.
    """
    root = root.resolve()
    if not root.is_dir():
        raise KitaruConfigError(
            f"The flow's source root {root} is not a directory, so its code cannot be shipped."
        )
    files = collect_files(root, use_git=use_git)
    sizes = {rel: (root / rel).stat().st_size for rel in files}
    cap = _limit() if limit is None else limit
    total = sum(sizes.values())
    if total > cap:
        biggest = sorted(sizes.items(), key=lambda kv: (-kv[1], kv[0]))[:5]
        listing = "\n".join(f"  {_mib(size):>10}  {rel}" for rel, size in biggest)
        raise KitaruConfigError(
            f"The code archive of {root} would hold {_mib(total)} in {len(files)} files, over the "
            f"limit of {_mib(cap)}. The biggest files:\n{listing}\n"
            "Leave data and build outputs out of the source root (list them in its .gitignore), "
            f"raise the limit (`export {LIMIT_ENV}=200MiB`), or build an image that holds the code "
            'and set `code = "image"` on the stack.'
        )
    manifest: dict[str, Any] = {
        "format": _FORMAT,
        "files": len(files),
        "bytes": total,
        "lock": _find_lock(root, files),
        "environment": current_environment(),
    }
    dest.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=".building-", suffix=".tar.gz", dir=dest)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as raw:
            hashing = _HashingWriter(raw)
            # No file name, mtime 0: the gzip header is the same for the same content.
            with (
                gzip.GzipFile(filename="", mode="wb", fileobj=hashing, mtime=_MTIME, compresslevel=6) as gz,
                tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar,
            ):
                data = json.dumps(manifest, indent=1, sort_keys=True).encode()
                tar.addfile(_member(MANIFEST, len(data), executable=False), io.BytesIO(data))
                for rel in files:
                    path = root / rel
                    executable = bool(path.stat().st_mode & 0o100)
                    with open(path, "rb") as f:
                        tar.addfile(_member(rel, sizes[rel], executable), f)
        sha = hashing.digest.hexdigest()
        final = dest / f"{sha}.tar.gz"
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return CodeArchive(final, sha, hashing.size, manifest)


def _member(name: str, size: int, executable: bool) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = _MTIME
    info.mode = 0o755 if executable else 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.type = tarfile.REGTYPE
    return info


# -- unpacking --------------------------------------------------------------------------------------


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def _safe_name(name: str) -> PurePosixPath:
    path = PurePosixPath(name)
    if path.is_absolute() or not path.parts or any(p in ("..", "") for p in path.parts) or "\\" in name:
        raise KitaruStoreError(
            f"The code archive holds the path {name!r}, which would land outside its directory: it "
            "was not built by kitaru, or was altered. Rebuild it by submitting the flow again."
        )
    return path


def unpack(archive: Path, cache: Path, sha256: str) -> Path:
    """Unpack ``archive`` (whose SHA-256 must be ``sha256``) into ``cache/<sha256>``; return that
    directory. Atomic (unpacked into a temporary directory, then renamed), so a reader never sees
    half a tree, and any number of processes may unpack the same hash at once."""
    target = cache / sha256
    if target.is_dir():
        return target
    if not re.fullmatch(r"[0-9a-f]{64}", sha256):
        raise KitaruStoreError(f"{sha256!r} is not a SHA-256 hex digest, so it names no code archive.")
    actual = _file_sha256(archive)
    if actual != sha256:
        raise KitaruStoreError(
            f"The code archive for {sha256} has SHA-256 {actual}: its bytes changed after it was "
            "built (or were altered in the artifact store), so it is not unpacked. Submit the flow "
            "again to upload a fresh archive."
        )
    cache.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".unpacking-{sha256[:12]}-", dir=cache))
    try:
        with tarfile.open(archive, mode="r:gz") as tar:
            for member in tar:
                rel = _safe_name(member.name)
                if member.isdir():
                    (tmp / rel).mkdir(parents=True, exist_ok=True)
                    continue
                if not member.isfile():
                    raise KitaruStoreError(
                        f"The code archive holds {member.name!r}, which is not a plain file (a link "
                        "or a device): kitaru never builds such archives, so it is not unpacked."
                    )
                dest = tmp / rel
                dest.parent.mkdir(parents=True, exist_ok=True)
                source = tar.extractfile(member)
                assert source is not None  # a regular file always has a body
                with source, open(dest, "wb") as out:
                    shutil.copyfileobj(source, out, _CHUNK)
                dest.chmod(0o755 if member.mode & 0o100 else 0o644)
        try:
            os.rename(tmp, target)
        except OSError:
            if not target.is_dir():
                raise
            shutil.rmtree(tmp, ignore_errors=True)  # another process unpacked the same hash first
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def read_manifest(unpacked: Path) -> dict[str, Any]:
    """The manifest of an unpacked archive."""
    return json.loads((unpacked / MANIFEST).read_text())  # type: ignore[no-any-return]


# -- the artifact store -----------------------------------------------------------------------------


class _ArtifactStore(Protocol):
    """The part of the async ArtifactStore contract code shipping uses."""

    async def put_stream(self, key: str, chunks: AsyncIterable[bytes]) -> None: ...

    async def exists(self, key: str) -> bool: ...

    def open(self, key: str, chunk_size: int = ...) -> AsyncIterator[bytes]: ...


async def _chunks(path: Path) -> AsyncIterator[bytes]:
    import anyio

    async with await anyio.open_file(path, "rb") as f:
        while block := await f.read(_CHUNK):
            yield block


async def upload(store: _ArtifactStore, archive: CodeArchive) -> str:
    """Put ``archive`` in ``store`` under its content key, unless it is there already; return the
    key. Streams the file (one chunk in memory at a time)."""
    key = archive.key
    if not await store.exists(key):
        # Two submitters racing write the same bytes: the store's create-only put accepts that.
        await store.put_stream(key, _chunks(archive.path))
    return key


async def fetch(store: _ArtifactStore, key: str, cache: Path) -> Path:
    """The unpacked tree of the archive stored under ``key``: from ``cache`` when it is there,
    else downloaded, checked against its hash and unpacked (see :func:`unpack`)."""
    import anyio

    name = PurePosixPath(key).name
    if not key.startswith(KEY_PREFIX) or not name.endswith(".tar.gz"):
        raise KitaruStoreError(f"{key!r} is not a code archive key (expected {KEY_PREFIX}<sha256>.tar.gz).")
    sha256 = name.removesuffix(".tar.gz")
    target = cache / sha256
    if await anyio.Path(target).is_dir():
        return target
    await anyio.Path(cache).mkdir(parents=True, exist_ok=True)
    download = cache / f".download-{sha256[:12]}-{uuid.uuid4().hex}.tar.gz"
    try:
        async with await anyio.open_file(download, "wb") as out:
            async for block in store.open(key):
                await out.write(block)
        return await anyio.to_thread.run_sync(unpack, download, cache, sha256)
    finally:
        await anyio.Path(download).unlink(missing_ok=True)
