"""The quickstart, unchanged, once per stack: local, aws (S3 on moto), gcp (GCS on fake-gcs-server)
and azure (Blob on Azurite), each with its state in PostgreSQL (SQLite where no PostgreSQL server
is installed), each chosen by its own config file. It suspends on its wait, the process exits, an
answer from another process resumes it, and it completes. Its values are small, so they live inline
in the state store; a second flow returns a value over the inline limit, which must land in the
emulator's bucket as ``<prefix>/blobs/<2 hex>/<sha256>`` and be read back from there on resume."""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from kitaru.stack import artifact_store_for_uri
from kitaru.store import sync_view
from kitaru.store.open import open_state_store
from tests._services.azure import azurite
from tests._services.gcs import gcs_server
from tests._services.postgres import find_bindir
from tests._services.s3 import s3_server

__all__ = ["azurite", "gcs_server", "s3_server"]

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
FLOWS = Path(__file__).parent / "flows"
LARGE = 200_000  # bytes: over the 64 KiB inline limit


def _toml(value: Any) -> str:
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def _stack(request: pytest.FixtureRequest, kind: str, tmp_path: Path) -> tuple[str, dict[str, Any]]:
    """The stack's artifacts URI and its store options, with a fresh bucket on the emulator."""
    if kind == "local":
        return (tmp_path / "artifacts").as_uri(), {}
    if kind == "aws":
        server = request.getfixturevalue("s3_server")
        return f"s3://{server.create_bucket()}/kitaru", server.options()
    if kind == "gcp":
        server = request.getfixturevalue("gcs_server")
        return f"gs://{server.create_bucket()}/kitaru", server.options()
    server = request.getfixturevalue("azurite")
    return f"az://{server.create_container()}/kitaru", server.options()


def _run(argv: list[str], env: dict[str, str], cwd: Path) -> str:
    done = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"{argv} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.mark.parametrize("kind", ["local", "aws", "gcp", "azure"])
def test_quickstart_unchanged_on_each_stack(
    kind: str,
    request: pytest.FixtureRequest,
    tmp_path: Path,
    subprocess_env: dict[str, str],
    kitaru_cli: list[str],
    kitaru_home: Path,
) -> None:
    state = (
        request.getfixturevalue("postgres_dsn")
        if find_bindir() is not None
        else f"sqlite:///{tmp_path / 'state.db'}"
    )
    artifacts, options = _stack(request, kind, tmp_path)
    config = tmp_path / "config.toml"
    keys = "\n".join(
        f"{k} = {_toml(v)}" for k, v in {"state": state, "artifacts": artifacts, **options}.items()
    )
    config.write_text(f'active_stack = "e2e"\n\n[stacks.e2e]\ntype = "{kind}"\n{keys}\n')
    env = {**subprocess_env, "KITARU_CONFIG": str(config)}
    shown = _run([*kitaru_cli, "stack", "show"], env, tmp_path)
    assert kind in shown and artifacts in shown

    # The quickstart, as it is in examples/: waits, exits, is answered from another process.
    out = _run([sys.executable, str(ROOT / "examples" / "quickstart.py"), "durable agents"], env, tmp_path)
    match = re.search(r"execution (\w+) is waiting for approval", out)
    assert match, out
    exec_id = match.group(1)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    _run([*kitaru_cli, "executions", "input", exec_id, "--value", "true"], env, elsewhere)

    # A value over the inline limit, from the same stack.
    out = _run([sys.executable, str(FLOWS / "large_output.py"), str(LARGE)], env, tmp_path)
    large_id, status = out.split()
    assert status == "waiting"
    _run([*kitaru_cli, "executions", "input", large_id, "--value", "true"], env, elsewhere)

    store = sync_view(open_state_store(state))
    blobs = sync_view(artifact_store_for_uri(artifacts, **options))
    try:
        execution = store.get_execution(exec_id)
        assert execution is not None and execution.status == "completed", execution
        journal = store.read_journal(exec_id)
        completed = Counter(r.call_id for r in journal if r.kind == "checkpoint_completed")
        assert completed == {"research": 1, "draft": 1, "publish": 1}
        artifacts_of = store.list_artifacts(exec_id)
        assert {a.name for a in artifacts_of} >= {"research", "draft", "draft_preview", "publish"}
        # Small values stay inline in the state store: nothing of this execution in the bucket.
        assert all(a.inline is not None and a.uri is None for a in artifacts_of), artifacts_of
        result = store.get_artifact(execution.result_artifact or "")
        assert result is not None and result.inline is not None and b"published" in result.inline

        large = store.get_execution(large_id)
        assert large is not None and large.status == "completed", large
        [output] = store.list_artifacts(large_id, name="big", type="output")
        digest = output.content_hash.removeprefix("sha256:")
        key = f"blobs/{digest[:2]}/{digest}"
        assert output.inline is None and output.uri == f"{artifacts}/{key}"
        assert output.size == LARGE  # bytes are stored as they are
        assert key in set(blobs.list("blobs/"))
        assert hashlib.sha256(blobs.get(key)).hexdigest() == digest
        # The resume, in another process, read the blob back from the bucket to finish.
        final = store.get_artifact(large.result_artifact or "")
        assert final is not None and final.inline is not None
        assert final.inline.decode().strip('"').startswith(f"{LARGE}:")
    finally:
        store.close()
        close = getattr(blobs, "close", None)
        if close is not None:
            close()
