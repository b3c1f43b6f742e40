"""``kitaru artifacts get``: never unpickles unless asked, verifies bytes, writes files safely."""

from __future__ import annotations

import json
import pickle
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from click.testing import CliRunner
from pydantic import BaseModel

import kitaru
from kitaru._engine.runtime import get_runtime
from kitaru.cli import main

MARKER_ENV = "KITARU_TEST_MARKER"


class Doc(BaseModel):
    title: str


@dataclass
class Point:
    x: int
    y: int


class Loud:
    """Pickled with cloudpickle; unpickling it creates the file named by KITARU_TEST_MARKER."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __setstate__(self, state: dict[str, Any]) -> None:
        import os

        Path(os.environ[MARKER_ENV]).touch()
        self.__dict__.update(state)

    def __repr__(self) -> str:
        return f"Loud({self.text[:5]!r}...)"


class Touch:
    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (Path(self.path),))


@kitaru.checkpoint
def make(kind: str, n: int) -> Any:
    if kind == "json":
        return {"a": [1, 2], "b": "x" * n}
    if kind == "pydantic":
        return Doc(title="t" * n)
    if kind == "dataclass":
        return Point(1, n)
    if kind == "bytes":
        return b"\x00\x01" * n
    return Loud("l" * n)


@kitaru.flow
def one(kind: str, n: int) -> int:
    make(kind, n)
    return n


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.stdout, result.stderr


def artifact_of(kind: str, n: int = 3) -> Any:
    handle = one.run(kind, n)
    [artifact] = kitaru.KitaruClient().artifacts.list(handle.exec_id, name="make")
    return artifact


def blob_key(artifact: Any) -> str:
    assert artifact.uri is not None
    return "blobs/" + artifact.uri.rpartition("/blobs/")[2]


class TestDefaultViewRunsNoCode:
    def test_json_pydantic_and_dataclass_show_as_json(self) -> None:
        for kind, expected in [
            ("json", {"a": [1, 2], "b": "xxx"}),
            ("pydantic", {"title": "ttt"}),
            ("dataclass", {"x": 1, "y": 3}),
        ]:
            artifact = artifact_of(kind)
            code, out, err = run("artifacts", "get", artifact.id, "-o", "json")
            assert code == 0, err
            data = json.loads(out)
            assert data["value"] == expected and data["view"] == "json", kind
            code, out, _ = run("artifacts", "get", artifact.id)
            assert code == 0 and json.loads(out.split("\n", 1)[1]) == expected, kind

    def test_pickled_value_is_described_not_unpickled(self, tmp_path: Path, monkeypatch: Any) -> None:
        marker = tmp_path / "unpickled"
        monkeypatch.setenv(MARKER_ENV, str(marker))
        artifact = artifact_of("pickle")
        assert artifact.serializer == "cloudpickle"
        code, out, err = run("artifacts", "get", artifact.id)
        assert code == 0, err
        assert "cloudpickle" in out and "Loud" in out and artifact.content_hash in out
        assert f"{artifact.size} bytes" in out and "--load" in out
        code, out, _ = run("artifacts", "get", artifact.id, "-o", "json")
        data = json.loads(out)
        assert code == 0 and data["view"] == "none" and data["value"] is None and "--load" in data["hint"]
        assert not marker.exists()

        # Asked for: --load unpickles (the bytes matched their hash).
        code, out, err = run("artifacts", "get", artifact.id, "--load")
        assert code == 0 and "Loud('lll'...)" in out, err
        assert marker.exists()

    def test_bytes_are_described_and_written_raw_with_out(self, tmp_path: Path) -> None:
        artifact = artifact_of("bytes")
        code, out, _ = run("artifacts", "get", artifact.id)
        assert code == 0 and "--out" in out and "\x00" not in out
        target = tmp_path / "raw.bin"
        code, out, err = run("artifacts", "get", artifact.id, "--out", str(target))
        assert code == 0, err
        assert target.read_bytes() == b"\x00\x01" * 3
        assert f"wrote 6 bytes to {target}" in out


class TestTamperedBytes:
    def test_replaced_pickle_never_runs_from_the_cli(self, tmp_path: Path, monkeypatch: Any) -> None:
        monkeypatch.setenv(MARKER_ENV, str(tmp_path / "unused"))
        artifact = artifact_of("pickle", 100_000)
        store = get_runtime().artifacts
        pwned = tmp_path / "pwned"
        store.delete(blob_key(artifact))
        store.put(blob_key(artifact), pickle.dumps(Touch(pwned)))

        for args in [(), ("--load",), ("-o", "json", "--load")]:
            code, out, err = run("artifacts", "get", artifact.id, *args)
            if not args:
                # The description comes from the state store alone: nothing read, nothing run.
                assert code == 0 and "cloudpickle" in out
                continue
            assert code == 4 and artifact.id in err and "restore" in err.lower(), (args, err)
        assert not pwned.exists()

    def test_out_writes_nothing_when_the_blob_does_not_match(self, tmp_path: Path) -> None:
        artifact = artifact_of("json", 100_000)
        store = get_runtime().artifacts
        original = store.get(blob_key(artifact))
        store.delete(blob_key(artifact))
        store.put(blob_key(artifact), original[:1000])
        target = tmp_path / "out" / "value.json"
        target.parent.mkdir()
        code, _out, err = run("artifacts", "get", artifact.id, "--out", str(target))
        assert code == 4 and f"expected {artifact.size} bytes" in err and "found 1000 bytes" in err
        assert list(target.parent.iterdir()) == []
        code, _, err = run("artifacts", "get", artifact.id)
        assert code == 4 and artifact.id in err


class TestEdges:
    def test_out_into_a_missing_directory_is_a_clear_error(self, tmp_path: Path) -> None:
        artifact = artifact_of("json")
        target = tmp_path / "missing" / "dir" / "f"
        code, _out, err = run("artifacts", "get", artifact.id, "--out", str(target))
        assert code == 2 and "Traceback" not in err
        assert f"{target.parent} does not exist" in err and "mkdir -p" in err
        assert not (tmp_path / "missing").exists()

    def test_kitaru_home_pointing_at_a_file(
        self, tmp_path: Path, kitaru_cli: list[str], subprocess_env: dict[str, str]
    ) -> None:
        a_file = tmp_path / "not-a-dir"
        a_file.write_text("x")
        for home in (a_file, a_file / "below"):
            done = subprocess.run(
                [*kitaru_cli, "executions", "list"],
                env={**subprocess_env, "KITARU_HOME": str(home)},
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert done.returncode == 3, done.stderr
            assert "Traceback" not in done.stderr and "KITARU_HOME" in done.stderr
            assert str(a_file) in done.stderr and "//" not in done.stderr
        assert a_file.read_text() == "x"

    def test_paths_in_messages_have_one_leading_slash(self, tmp_path: Path, kitaru_home: Path) -> None:
        kitaru_home.mkdir()
        (kitaru_home / "kitaru.db").mkdir()  # unopenable: the error names the database's path
        code, _, err = run("executions", "list")
        assert code != 0 and f" {kitaru_home / 'kitaru.db'}" in err and "//" not in err
