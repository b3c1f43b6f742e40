"""Code shipping: the archive a remote worker runs a flow from (kitaru/_shipping/)."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from collections.abc import AsyncIterable, AsyncIterator
from pathlib import Path

import pytest

from kitaru import _shipping
from kitaru._shipping import (
    MANIFEST,
    EnvironmentDifference,
    build_archive,
    collect_files,
    environment_differences,
    fetch,
    read_manifest,
    unpack,
    upload,
)
from kitaru.errors import KitaruConfigError, KitaruConflictError, KitaruNotFoundError, KitaruStoreError

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def project(root: Path) -> Path:
    """A flow project with everything a real one drags along."""
    write(
        root,
        {
            "flows/agent.py": "from kitaru import flow\n",
            "flows/__init__.py": "",
            "uv.lock": "version = 1\n",
            "requirements-dev.txt": "pytest\n",
            "run.sh": "#!/bin/sh\n",
            ".gitignore": "*.log\n!keep.log\n/build/\ndata/\ndocs/**/*.tmp\n\\#literal\n",
            "app.log": "noise",
            "keep.log": "kept",
            "build/out.txt": "built",
            "sub/build/inner.txt": "not anchored: kept",
            "data/big.bin": "x",
            "sub/data/also.bin": "x",
            "docs/a/b/c.tmp": "x",
            "docs/a/readme.md": "doc",
            "#literal": "x",
            "nested/.gitignore": "secret.txt\n",
            "nested/secret.txt": "x",
            "nested/public.txt": "ok",
            "flows/__pycache__/agent.cpython-311.pyc": "x",
            "stray.pyc": "x",
            ".venv/lib/site.py": "x",
            "venv/lib/site.py": "x",
            "myenv/pyvenv.cfg": "home = /usr\n",
            "myenv/lib/x.py": "x",
            ".git/config": "x",
            ".hg/x": "x",
            ".mypy_cache/x": "x",
            ".pytest_cache/x": "x",
            ".ruff_cache/x": "x",
            "node_modules/x/index.js": "x",
            ".tox/x": "x",
            ".nox/x": "x",
        },
    )
    (root / "run.sh").chmod(0o755)
    return root


EXPECTED = [
    ".gitignore",
    "docs/a/readme.md",
    "flows/__init__.py",
    "flows/agent.py",
    "keep.log",
    "nested/.gitignore",
    "nested/public.txt",
    "requirements-dev.txt",
    "run.sh",
    "sub/build/inner.txt",
    "uv.lock",
]


class TestWhichFiles:
    def test_the_gitignore_reader_excludes_what_git_would(self, tmp_path: Path) -> None:
        assert collect_files(project(tmp_path / "p"), use_git=False) == EXPECTED

    @pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
    def test_inside_a_git_work_tree_git_decides(self, tmp_path: Path) -> None:
        root = project(tmp_path / "p")
        shutil.rmtree(root / ".git")
        subprocess.run(["git", "init", "-q", str(root)], check=True)
        assert collect_files(root) == EXPECTED
        # A tracked file is shipped even when a pattern matches it (git's rule, not ours).
        subprocess.run(["git", "-C", str(root), "add", "-f", "app.log"], check=True)
        assert "app.log" in collect_files(root)

    def test_links_ship_inside_files_only(self, tmp_path: Path) -> None:
        root = tmp_path / "p"
        write(root, {"a.py": "a", "inner/b.py": "b"})
        write(tmp_path, {"outside.txt": "secret"})
        (root / "to_inside.py").symlink_to(root / "a.py")
        (root / "to_outside.txt").symlink_to(tmp_path / "outside.txt")
        (root / "dir_link").symlink_to(root / "inner")
        assert collect_files(root, use_git=False) == ["a.py", "inner/b.py", "to_inside.py"]


class TestArchive:
    def test_the_same_tree_gives_the_same_hash_and_a_change_a_new_one(self, tmp_path: Path) -> None:
        root = project(tmp_path / "p")
        first = build_archive(root, tmp_path / "out1", use_git=False)
        for path in root.rglob("*"):
            os.utime(path, (1_000_000, 1_000_000))  # touched, not changed
        second = build_archive(root, tmp_path / "out2", use_git=False)
        assert first.sha256 == second.sha256
        assert first.path.read_bytes() == second.path.read_bytes()
        assert first.path.name == f"{first.sha256}.tar.gz" and first.key == f"code/{first.sha256}.tar.gz"
        (root / "flows/agent.py").write_text("changed\n")
        assert build_archive(root, tmp_path / "out3", use_git=False).sha256 != first.sha256

    def test_entries_are_sorted_with_fixed_owners_and_times(self, tmp_path: Path) -> None:
        built = build_archive(project(tmp_path / "p"), tmp_path / "out", use_git=False)
        with tarfile.open(built.path) as tar:
            members = tar.getmembers()
        assert [m.name for m in members] == [MANIFEST, *EXPECTED]
        assert {(m.mtime, m.uid, m.gid, m.uname, m.gname) for m in members} == {(0, 0, 0, "", "")}
        modes = {m.name: m.mode for m in members}
        assert modes["run.sh"] == 0o755 and modes["uv.lock"] == 0o644

    def test_over_the_limit_names_the_biggest_files_and_the_ways_out(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        root = tmp_path / "p"
        write(root, {"flow.py": "x", "model.bin": "m" * 3000, "dataset.csv": "d" * 2000})
        monkeypatch.setenv("KITARU_CODE_ARCHIVE_LIMIT", "4KiB")
        with pytest.raises(KitaruConfigError) as raised:
            build_archive(root, tmp_path / "out", use_git=False)
        message = str(raised.value)
        assert message.index("model.bin") < message.index("dataset.csv")
        assert (
            ".gitignore" in message and "KITARU_CODE_ARCHIVE_LIMIT" in message and 'code = "image"' in message
        )
        assert not list((tmp_path / "out").glob("*"))  # nothing half-built left behind
        monkeypatch.setenv("KITARU_CODE_ARCHIVE_LIMIT", "8KiB")
        assert build_archive(root, tmp_path / "out", use_git=False).manifest["bytes"] == 5001
        monkeypatch.setenv("KITARU_CODE_ARCHIVE_LIMIT", "lots")
        with pytest.raises(KitaruConfigError, match="not a size"):
            build_archive(root, tmp_path / "out", use_git=False)


class TestManifest:
    def test_it_records_the_lock_python_and_distributions(self, tmp_path: Path) -> None:
        root = project(tmp_path / "p")
        built = build_archive(root, tmp_path / "out", use_git=False)
        manifest = read_manifest(unpack(built.path, tmp_path / "cache", built.sha256))
        assert manifest == built.manifest
        import hashlib

        assert manifest["lock"] == {"path": "uv.lock", "sha256": hashlib.sha256(b"version = 1\n").hexdigest()}
        env = manifest["environment"]
        assert env["python"] == ".".join(map(str, sys.version_info[:3]))
        assert any(d.startswith("kitaru==") for d in env["distributions"])
        assert any(d.startswith("pydantic==") for d in env["distributions"])
        (root / "uv.lock").unlink()
        again = build_archive(root, tmp_path / "out", use_git=False).manifest
        assert again["lock"]["path"] == "requirements-dev.txt"

    def test_the_same_environment_has_no_differences_and_a_changed_one_says_what(self) -> None:
        here = _shipping.current_environment()
        manifest = {"environment": here}
        assert environment_differences(manifest) == []
        older = {
            "python": "3.10.1",
            "distributions": [
                *[d for d in here["distributions"] if not d.startswith("pydantic==")],
                "pydantic==1.0.0",
                "left-behind==2.0",
            ],
        }
        diffs = environment_differences({"environment": older})
        pydantic_now = next(d for d in here["distributions"] if d.startswith("pydantic=="))
        assert diffs == [
            EnvironmentDifference("python", "3.10.1", here["python"]),
            EnvironmentDifference("pydantic", "1.0.0", pydantic_now.split("==")[1]),
            EnvironmentDifference("left-behind", "2.0", None),
        ]
        assert (
            str(diffs[2]) == "left-behind: the code was archived with 2.0, this worker has not installed here"
        )


def evil_archive(tmp_path: Path, member: tarfile.TarInfo, data: bytes = b"x") -> tuple[Path, str]:
    path = tmp_path / "evil.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        tar.addfile(member, io.BytesIO(data) if member.isfile() else None)
    import hashlib

    return path, hashlib.sha256(path.read_bytes()).hexdigest()


class TestUnpack:
    def test_it_unpacks_into_the_cache_by_hash(self, tmp_path: Path) -> None:
        built = build_archive(project(tmp_path / "p"), tmp_path / "out", use_git=False)
        target = unpack(built.path, tmp_path / "cache", built.sha256)
        assert target == tmp_path / "cache" / built.sha256
        assert (target / "flows/agent.py").read_text() == "from kitaru import flow\n"
        assert os.access(target / "run.sh", os.X_OK)
        assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [built.sha256]

    def test_bytes_that_do_not_match_the_hash_are_refused(self, tmp_path: Path) -> None:
        built = build_archive(project(tmp_path / "p"), tmp_path / "out", use_git=False)
        other = "0" * 64
        with pytest.raises(KitaruStoreError, match="its bytes changed"):
            unpack(built.path, tmp_path / "cache", other)
        assert not (tmp_path / "cache" / other).exists()

    @pytest.mark.parametrize("name", ["../escape.py", "/etc/kitaru-evil", "a/../../escape.py"])
    def test_paths_leaving_the_directory_are_refused(self, tmp_path: Path, name: str) -> None:
        member = tarfile.TarInfo(name)
        member.size = 1
        archive, sha = evil_archive(tmp_path, member)
        with pytest.raises(KitaruStoreError, match="outside its directory"):
            unpack(archive, tmp_path / "cache", sha)
        assert not (tmp_path / "escape.py").exists()
        assert list((tmp_path / "cache").iterdir()) == []  # the temporary directory is gone too

    @pytest.mark.parametrize("kind", [tarfile.SYMTYPE, tarfile.LNKTYPE])
    def test_links_are_refused(self, tmp_path: Path, kind: bytes) -> None:
        member = tarfile.TarInfo("innocent.py")
        member.type = kind
        member.linkname = "/etc/passwd"
        archive, sha = evil_archive(tmp_path, member)
        with pytest.raises(KitaruStoreError, match="not a plain file"):
            unpack(archive, tmp_path / "cache", sha)

    def test_concurrent_unpackers_of_one_hash_all_get_the_tree(self, tmp_path: Path) -> None:
        root = project(tmp_path / "p")
        write(root, {f"pkg/m{i}.py": f"x = {i}\n" * 200 for i in range(200)})
        built = build_archive(root, tmp_path / "out", use_git=False)
        cache = tmp_path / "cache"
        script = (
            "import sys; from pathlib import Path; from kitaru._shipping import unpack\n"
            "t = unpack(Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3])\n"
            "assert (t / 'pkg/m199.py').read_text() == 'x = 199\\n' * 200\n"
            "print(t)\n"
        )
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", script, str(built.path), str(cache), built.sha256],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(4)
        ]
        results = [p.communicate(timeout=120) for p in procs]
        assert [p.returncode for p in procs] == [0] * 4, results
        assert {out.strip() for out, _ in results} == {str(cache / built.sha256)}
        assert sorted(p.name for p in cache.iterdir()) == [built.sha256]  # no temporary left over


class TinyStore:
    """An in-memory async artifact store with the contract's create-only writes."""

    inline = False

    def __init__(self) -> None:
        self.blobs: dict[str, bytes] = {}
        self.puts = 0
        self.opens = 0

    async def put(self, key: str, data: bytes) -> None:
        if key in self.blobs and self.blobs[key] != data:
            raise KitaruConflictError(f"{key} holds different bytes")
        self.puts += 1
        self.blobs[key] = data

    async def put_stream(self, key: str, chunks: AsyncIterable[bytes]) -> None:
        await self.put(key, b"".join([c async for c in chunks]))

    async def exists(self, key: str) -> bool:
        return key in self.blobs

    async def open(self, key: str, chunk_size: int = 1 << 20) -> AsyncIterator[bytes]:
        if key not in self.blobs:
            raise KitaruNotFoundError(key)
        self.opens += 1
        data = self.blobs[key]
        for i in range(0, len(data), chunk_size):
            yield data[i : i + chunk_size]


@pytest.mark.anyio
async def test_upload_once_per_content_and_fetch_into_the_cache(tmp_path: Path) -> None:
    store = TinyStore()
    built = build_archive(project(tmp_path / "p"), tmp_path / "out", use_git=False)
    key = await upload(store, built)
    assert key == built.key and store.blobs[key] == built.path.read_bytes()
    assert await upload(store, build_archive(tmp_path / "p", tmp_path / "out2", use_git=False)) == key
    assert store.puts == 1  # the same content is not uploaded again

    cache = tmp_path / "worker-cache"
    tree = await fetch(store, key, cache)
    assert (tree / "flows/agent.py").read_text() == "from kitaru import flow\n"
    assert await fetch(store, key, cache) == tree and store.opens == 1  # served from the cache
    assert sorted(p.name for p in cache.iterdir()) == [built.sha256]


@pytest.mark.anyio
async def test_a_tampered_stored_archive_is_refused(tmp_path: Path) -> None:
    store = TinyStore()
    built = build_archive(project(tmp_path / "p"), tmp_path / "out", use_git=False)
    key = await upload(store, built)
    store.blobs[key] = store.blobs[key][:-1] + bytes([store.blobs[key][-1] ^ 1])
    with pytest.raises(KitaruStoreError, match="its bytes changed"):
        await fetch(store, key, tmp_path / "cache")
    assert list((tmp_path / "cache").iterdir()) == []
    with pytest.raises(KitaruStoreError, match="not a code archive key"):
        await fetch(store, "artifacts/x", tmp_path / "cache")


def test_the_manifest_is_json_inside_the_archive(tmp_path: Path) -> None:
    built = build_archive(project(tmp_path / "p"), tmp_path / "out", use_git=False)
    with tarfile.open(built.path) as tar:
        member = tar.extractfile(MANIFEST)
        assert member is not None
        assert json.loads(member.read()) == built.manifest
