"""The embedded artifact store: files under a directory, written atomically, never overwritten."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
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

    def put(self, key: str, data: bytes) -> None:
        self.put_stream(key, (data,))

    def put_stream(self, key: str, chunks: Iterable[bytes]) -> None:
        path = self._path(key)
        if path.exists():
            # Content-addressed keys make equal bytes the common case; compare only when asked to
            # write under a key that exists, which is rare.
            self._check_same(path, chunks)
            return
        try:
            private_dir(path.parent)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        except OSError as exc:
            raise KitaruStoreError(
                f"cannot write artifacts under {self.root}: {exc}. Check the directory is "
                "writable and has space, or set KITARU_HOME."
            ) from exc
        try:
            with os.fdopen(fd, "wb") as fh:
                for chunk in chunks:
                    fh.write(chunk)
                if self._fsync:
                    fh.flush()
                    os.fsync(fh.fileno())
            # link() fails if the key appeared meanwhile, unlike rename(): create-only even
            # against a concurrent writer.
            try:
                os.link(tmp, path)
            except FileExistsError:
                with open(tmp, "rb") as fh:
                    self._check_same(path, iter(lambda: fh.read(1 << 20), b""))
        except OSError as exc:
            raise KitaruStoreError(f"cannot write artifact {key!r} under {self.root}: {exc}") from exc
        finally:
            try:
                os.unlink(tmp)
            except OSError:
                pass

    def _check_same(self, path: Path, chunks: Iterable[bytes]) -> None:
        with open(path, "rb") as fh:
            for chunk in chunks:
                if fh.read(len(chunk)) != chunk:
                    break
            else:
                if not fh.read(1):
                    return
        raise KitaruConflictError(
            f"artifact {path} already holds different bytes; artifacts are written once."
        )

    def get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError as exc:
            raise KitaruNotFoundError(f"no artifact blob {key!r} under {self.root}") from exc

    def open(self, key: str, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        try:
            fh = open(self._path(key), "rb")
        except FileNotFoundError as exc:
            raise KitaruNotFoundError(f"no artifact blob {key!r} under {self.root}") from exc
        with fh:
            while chunk := fh.read(chunk_size):
                yield chunk

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def list(self, prefix: str = "") -> Iterator[str]:
        if not self.root.exists():
            return
        for dirpath, _dirs, files in os.walk(self.root):
            for name in sorted(files):
                if name.startswith(".tmp-"):
                    continue
                key = Path(dirpath, name).relative_to(self.root).as_posix()
                if key.startswith(prefix):
                    yield key

    def delete(self, key: str) -> None:
        try:
            self._path(key).unlink()
        except FileNotFoundError:
            pass
