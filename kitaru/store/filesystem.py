"""The embedded artifact store: files under a directory, written atomically, never overwritten."""

from __future__ import annotations

import os
import tempfile
from collections.abc import AsyncIterable, AsyncIterator, Iterable
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import unquote, urlparse

from kitaru.config import private_dir
from kitaru.errors import KitaruConflictError, KitaruNotFoundError, KitaruStoreError

__all__ = ["FilesystemArtifactStore"]


class FilesystemArtifactStore:
    """An :class:`~kitaru.store.ArtifactStore` rooted at a local directory.

    A blob is written to a temporary file in its final directory and renamed into place, so a reader
    never sees half a blob and a crash leaves at most a stray temporary file. ``KITARU_FSYNC=1`` adds
    an fsync before the rename for power-loss durability.

    Artifacts hold inputs, prompts and answers: the directories it creates are 0700 and its blobs
    0600 (``mkstemp``'s mode, kept by the link into place), whatever the umask.
    """

    inline: ClassVar[bool] = False

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).resolve()
        self.uri = self.root.as_uri()
        self._fsync = os.environ.get("KITARU_FSYNC", "0") == "1"

    @classmethod
    def from_uri(cls, uri: str) -> FilesystemArtifactStore:
        return cls(unquote(urlparse(uri).path))

    def uri_for(self, key: str) -> str:
        return f"{self.uri}/{key}"

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if self.root not in path.parents:
            raise KitaruStoreError(f"artifact key {key!r} points outside the store at {self.root}")
        return path

    # Every method does its file I/O in a worker thread (``anyio.to_thread``): a blob is written or
    # read only for values over 64 KiB, where a thread hop is noise next to the I/O, and the event
    # loop never waits on a disk. ``open`` and ``put_stream`` hop once per chunk.

    async def put(self, key: str, data: bytes) -> None:
        import anyio.to_thread

        await anyio.to_thread.run_sync(self._put_chunks, key, (data,))

    async def put_stream(self, key: str, chunks: AsyncIterable[bytes]) -> None:
        import anyio.to_thread

        path = self._path(key)
        if await anyio.to_thread.run_sync(path.exists):
            # Content-addressed keys make equal bytes the common case; compare only when asked to
            # write under a key that exists, which is rare.
            await self._check_same_async(path, chunks)
            return
        fd, tmp = await anyio.to_thread.run_sync(self._temporary, path)
        try:
            with os.fdopen(fd, "wb") as fh:
                async for chunk in chunks:
                    await anyio.to_thread.run_sync(fh.write, chunk)
                if self._fsync:
                    await anyio.to_thread.run_sync(_flush_and_sync, fh)
            await anyio.to_thread.run_sync(self._link, key, path, tmp)
        except OSError as exc:
            raise self._unwritable(exc, key) from exc
        finally:
            await anyio.to_thread.run_sync(_unlink_quietly, tmp)

    def _put_chunks(self, key: str, chunks: Iterable[bytes]) -> None:
        """A whole write in one worker thread (``put``: the bytes are all here already)."""
        path = self._path(key)
        if path.exists():
            self._check_same(path, chunks)
            return
        fd, tmp = self._temporary(path)
        try:
            with os.fdopen(fd, "wb") as fh:
                for chunk in chunks:
                    fh.write(chunk)
                if self._fsync:
                    _flush_and_sync(fh)
            self._link(key, path, tmp)
        except OSError as exc:
            raise self._unwritable(exc, key) from exc
        finally:
            _unlink_quietly(tmp)

    def _temporary(self, path: Path) -> tuple[int, str]:
        try:
            private_dir(path.parent)
            return tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        except OSError as exc:
            raise self._unwritable(exc) from exc

    def _unwritable(self, exc: OSError, key: str | None = None) -> KitaruStoreError:
        """A failed write (full disk, read-only directory): what to fix and how to go on. The
        temporary file is removed and nothing refers to the key yet, so the journal is whole."""
        what = f"artifact {key!r} under {self.root}" if key else f"artifacts under {self.root}"
        return KitaruStoreError(
            f"cannot write {what}: {exc}. Make room or make the directory writable (or set "
            "KITARU_HOME elsewhere); an execution that failed on it continues from its journal "
            "with `kitaru executions retry <exec_id>`."
        )

    def _link(self, key: str, path: Path, tmp: str) -> None:
        # link() fails if the key appeared meanwhile, unlike rename(): create-only even against a
        # concurrent writer.
        try:
            os.link(tmp, path)
        except FileExistsError:
            with open(tmp, "rb") as fh:
                self._check_same(path, iter(lambda: fh.read(1 << 20), b""))

    def _check_same(self, path: Path, chunks: Iterable[bytes]) -> None:
        with open(path, "rb") as fh:
            for chunk in chunks:
                if fh.read(len(chunk)) != chunk:
                    break
            else:
                if not fh.read(1):
                    return
        raise self._conflict(path)

    async def _check_same_async(self, path: Path, chunks: AsyncIterable[bytes]) -> None:
        import anyio.to_thread

        fh = await anyio.to_thread.run_sync(open, path, "rb")
        try:
            async for chunk in chunks:
                if await anyio.to_thread.run_sync(fh.read, len(chunk)) != chunk:
                    break
            else:
                if not await anyio.to_thread.run_sync(fh.read, 1):
                    return
        finally:
            await anyio.to_thread.run_sync(fh.close)
        raise self._conflict(path)

    @staticmethod
    def _conflict(path: Path) -> KitaruConflictError:
        return KitaruConflictError(
            f"artifact {path} already holds different bytes; artifacts are written once."
        )

    async def get(self, key: str) -> bytes:
        import anyio.to_thread

        try:
            return await anyio.to_thread.run_sync(self._path(key).read_bytes)
        except FileNotFoundError as exc:
            raise KitaruNotFoundError(f"no artifact blob {key!r} under {self.root}") from exc

    async def open(self, key: str, chunk_size: int = 1 << 20) -> AsyncIterator[bytes]:
        import anyio.to_thread

        try:
            fh = await anyio.to_thread.run_sync(open, self._path(key), "rb")
        except FileNotFoundError as exc:
            raise KitaruNotFoundError(f"no artifact blob {key!r} under {self.root}") from exc
        try:
            while chunk := await anyio.to_thread.run_sync(fh.read, chunk_size):
                yield chunk
        finally:
            fh.close()

    async def exists(self, key: str) -> bool:
        import anyio.to_thread

        return await anyio.to_thread.run_sync(self._path(key).is_file)

    async def list(self, prefix: str = "") -> AsyncIterator[str]:
        import anyio.to_thread

        for key in await anyio.to_thread.run_sync(_walk_keys, self.root, prefix):
            yield key

    async def delete(self, key: str) -> None:
        import anyio.to_thread

        def unlink() -> None:
            try:
                self._path(key).unlink()
            except FileNotFoundError:
                pass

        await anyio.to_thread.run_sync(unlink)

    async def aclose(self) -> None:
        pass  # nothing held between calls


def _walk_keys(root: Path, prefix: str) -> list[str]:
    if not root.exists():
        return []
    keys = []
    for dirpath, _dirs, files in os.walk(root):
        for name in sorted(files):
            if name.startswith(".tmp-"):
                continue
            key = Path(dirpath, name).relative_to(root).as_posix()
            if key.startswith(prefix):
                keys.append(key)
    return keys


def _flush_and_sync(fh: Any) -> None:
    fh.flush()
    os.fsync(fh.fileno())


def _unlink_quietly(path: str | Path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
