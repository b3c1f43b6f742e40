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

import uuid
from collections.abc import AsyncIterable, AsyncIterator
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Protocol

from kitaru._shipping._archive import (
    _CHUNK,
    DEFAULT_LIMIT,
    KEY_PREFIX,
    MANIFEST,
    CodeArchive,
    archive_key,
    build_archive,
    read_manifest,
    unpack,
)
from kitaru._shipping._archive import LIMIT_ENV as LIMIT_ENV
from kitaru._shipping._environment import LOCK_PATTERNS as LOCK_PATTERNS
from kitaru._shipping._environment import EnvironmentDifference, current_environment, environment_differences
from kitaru._shipping._files import EXCLUDED_DIRS as EXCLUDED_DIRS
from kitaru._shipping._files import collect_files
from kitaru._shipping._files import parse_gitignore as parse_gitignore
from kitaru.errors import KitaruStoreError

if TYPE_CHECKING:
    from kitaru._progress import Progress

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


# -- the artifact store -----------------------------------------------------------------------------


class _ArtifactStore(Protocol):
    """The part of the async ArtifactStore contract code shipping uses."""

    async def put_stream(self, key: str, chunks: AsyncIterable[bytes]) -> None: ...

    async def exists(self, key: str) -> bool: ...

    def open(self, key: str, chunk_size: int = ...) -> AsyncIterator[bytes]: ...


async def _chunks(path: Path, progress: Progress | None = None) -> AsyncIterator[bytes]:
    import anyio

    async with await anyio.open_file(path, "rb") as f:
        while block := await f.read(_CHUNK):
            yield block
            if progress is not None:
                progress.advance(len(block))


async def upload(store: _ArtifactStore, archive: CodeArchive) -> str:
    """Put ``archive`` in ``store`` under its content key, unless it is there already; return the
    key. Streams the file (one chunk in memory at a time)."""
    key = archive.key
    if not await store.exists(key):
        from kitaru._progress import Progress

        # Two submitters racing write the same bytes: the store's create-only put accepts that.
        # On a terminal (a deploy, a remote submit from a shell) a bar shows the upload.
        with Progress("uploading code", total=archive.size, min_total=1 << 20) as bar:
            await store.put_stream(key, _chunks(archive.path, bar))
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
    from kitaru._progress import Progress

    try:
        async with await anyio.open_file(download, "wb") as out:
            with Progress("downloading code") as bar:
                async for block in store.open(key):
                    await out.write(block)
                    bar.advance(len(block))
        return await anyio.to_thread.run_sync(unpack, download, cache, sha256)
    finally:
        await anyio.Path(download).unlink(missing_ok=True)
