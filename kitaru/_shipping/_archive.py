"""Building a deterministic code archive, and unpacking one after checking its SHA-256."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import re
import shutil
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Any

from kitaru._shipping._environment import _find_lock, current_environment
from kitaru._shipping._files import collect_files
from kitaru.errors import KitaruConfigError, KitaruStoreError

#: Default limit on the files' total size (``KITARU_CODE_ARCHIVE_LIMIT`` overrides it).
DEFAULT_LIMIT = 50 * 1024 * 1024
LIMIT_ENV = "KITARU_CODE_ARCHIVE_LIMIT"
#: Where the manifest lives inside the archive (and the unpacked tree).
MANIFEST = ".kitaru/manifest.json"
KEY_PREFIX = "code/"
_FORMAT = 1
_MTIME = 0
_CHUNK = 1 << 20


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
