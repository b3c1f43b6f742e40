"""The filesystem artifact store runs the shared conformance suite, plus its path handling."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from kitaru.errors import KitaruStoreError
from kitaru.store import sync_view
from kitaru.store.conformance import ArtifactStoreConformance
from kitaru.store.filesystem import FilesystemArtifactStore


@pytest.fixture
def artifact_store(tmp_path: Path) -> FilesystemArtifactStore:
    return FilesystemArtifactStore(tmp_path / "artifacts")


class TestFilesystemArtifactStore(ArtifactStoreConformance):
    pass


def _files(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


class TestPaths:
    @pytest.mark.parametrize("key", ["../escape", "a/../../escape", "/etc/passwd", "", ".", "a/.."])
    def test_keys_outside_the_root_are_rejected(self, tmp_path: Path, key: str) -> None:
        store = sync_view(FilesystemArtifactStore(tmp_path / "root"))
        for call in (
            lambda: store.put(key, b"x"),
            lambda: store.put_stream(key, iter([b"x"])),
            lambda: store.get(key),
            lambda: store.exists(key),
            lambda: store.delete(key),
            lambda: list(store.open(key)),
        ):
            with pytest.raises(KitaruStoreError):
                call()
        assert _files(tmp_path) == []

    def test_symlink_out_of_the_root_is_rejected(self, tmp_path: Path) -> None:
        outside = tmp_path / "outside"
        outside.mkdir()
        root = tmp_path / "root"
        root.mkdir()
        (root / "link").symlink_to(outside, target_is_directory=True)
        store = sync_view(FilesystemArtifactStore(root))
        with pytest.raises(KitaruStoreError):
            store.put("link/blob", b"x")
        assert list(outside.iterdir()) == []

    def test_blobs_live_at_their_key(self, tmp_path: Path) -> None:
        store = sync_view(FilesystemArtifactStore(tmp_path / "root"))
        store.put("ab/cdef", b"bytes")
        assert (tmp_path / "root" / "ab" / "cdef").read_bytes() == b"bytes"
        assert store.uri_for("ab/cdef") == (tmp_path / "root" / "ab" / "cdef").resolve().as_uri()

    def test_uri_round_trip_with_spaces(self, tmp_path: Path) -> None:
        store = sync_view(FilesystemArtifactStore(tmp_path / "with space" / "ärtifacts"))
        assert FilesystemArtifactStore.from_uri(store.uri).root == store.root

    def test_list_on_a_missing_root_is_empty(self, tmp_path: Path) -> None:
        assert list(sync_view(FilesystemArtifactStore(tmp_path / "never-created")).list()) == []


class TestNoPartialFiles:
    def test_temp_file_is_not_listed_while_writing(self, tmp_path: Path) -> None:
        root = tmp_path / "root"
        store = sync_view(FilesystemArtifactStore(root))
        during: list[tuple[list[str], list[str]]] = []

        def produce() -> Iterator[bytes]:
            yield b"a" * 1000
            during.append((_files(root), list(store.list())))
            yield b"b" * 1000

        store.put_stream("dir/blob", produce())

        on_disk, listed = during[0]
        assert len(on_disk) == 1 and os.path.basename(on_disk[0]).startswith(".tmp-")
        assert listed == []
        assert _files(root) == ["dir/blob"]
        assert list(store.list()) == ["dir/blob"]

    def test_stray_temp_file_is_not_listed(self, tmp_path: Path) -> None:
        # What a crash mid-write leaves behind.
        root = tmp_path / "root"
        (root / "dir").mkdir(parents=True)
        (root / "dir" / ".tmp-abc123").write_bytes(b"half")
        store = sync_view(FilesystemArtifactStore(root))
        store.put("dir/blob", b"whole")
        assert list(store.list()) == ["dir/blob"]

    def test_failed_write_removes_its_temp_file(self, tmp_path: Path) -> None:
        root = tmp_path / "root"
        store = sync_view(FilesystemArtifactStore(root))

        def produce() -> Iterator[bytes]:
            yield b"half"
            raise ValueError("producer failed")

        with pytest.raises(ValueError, match="producer failed"):
            store.put_stream("dir/blob", produce())
        assert _files(root) == []

    def test_conflicting_write_removes_its_temp_file(self, tmp_path: Path) -> None:
        root = tmp_path / "root"
        store = sync_view(FilesystemArtifactStore(root))
        store.put("blob", b"first")
        with pytest.raises(KitaruStoreError):
            store.put("blob", b"second")
        assert _files(root) == ["blob"]
        assert store.get("blob") == b"first"
