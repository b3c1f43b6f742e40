"""Leases with real processes: a live runner keeps its execution however short its lease, and a lease
too short to hold is refused."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from kitaru._engine.runtime import MIN_LEASE_TTL, Runtime
from kitaru.errors import KitaruConfigError
from kitaru.store import sync_view
from kitaru.store.memory import MemoryArtifactStore, MemoryStateStore
from kitaru.store.sqlite import SQLiteStateStore
from tests._process import wait_for

pytestmark = pytest.mark.e2e

FLOWS = Path(__file__).parent / "flows"

# Another process trying, again and again, to take the execution over: each try either drives it
# (and runs the held checkpoint a second time) or is refused because a live runner holds it.
_TAKE_OVER = """
import sys, time
from kitaru import KitaruClient
from kitaru.errors import KitaruLeaseError
client = KitaruClient()
end = time.monotonic() + float(sys.argv[2])
refused = 0
while time.monotonic() < end:
    try:
        client.executions.resume(sys.argv[1])
    except KitaruLeaseError:
        refused += 1
        time.sleep(0.1)
        continue
    print("took over", flush=True)
    break
print("refused", refused, flush=True)
"""


def test_a_live_runner_keeps_a_short_lease(
    tmp_path: Path, subprocess_env: dict[str, str], kitaru_home: Path
) -> None:
    count_file, mark_file, release = tmp_path / "count", tmp_path / "mark", tmp_path / "release"
    env = {
        **subprocess_env,
        "COUNT_FILE": str(count_file),
        "MARK_FILE": str(mark_file),
        "RELEASE_FILE": str(release),
        "KITARU_LEASE_TTL": f"{MIN_LEASE_TTL:g}",
        # A heartbeat asked for longer than the lease: renewals must still come within the TTL.
        "KITARU_HEARTBEAT": "30",
    }
    runner = subprocess.Popen(
        [sys.executable, str(FLOWS / "hold_and_count.py"), "held"],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(mark_file, runner)
        store = sync_view(SQLiteStateStore(kitaru_home / "kitaru.db"))
        [execution] = store.list_executions()
        store.close()
        # Try for more than three lease lifetimes while the checkpoint is held.
        window = 3.5 * MIN_LEASE_TTL
        other = subprocess.run(
            [sys.executable, "-c", _TAKE_OVER, execution.id, str(window)],
            env=env,
            capture_output=True,
            text=True,
            timeout=window + 120,
        )
        assert other.returncode == 0, other.stderr
        assert "took over" not in other.stdout
    finally:
        release.touch()
        out, _ = runner.communicate(timeout=120)
    assert runner.returncode == 0 and "completed" in out
    assert Counter(count_file.read_text().split()) == {"first": 1, "second": 1}


@pytest.mark.parametrize("ttl", ["1", "0.5", "0"])
def test_a_lease_too_short_to_hold_is_refused(
    subprocess_env: dict[str, str], kitaru_cli: list[str], ttl: str
) -> None:
    done = subprocess.run(
        [*kitaru_cli, "executions", "list"],
        env={**subprocess_env, "KITARU_LEASE_TTL": ttl},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == KitaruConfigError.exit_code
    assert "KITARU_LEASE_TTL" in done.stderr and f"{MIN_LEASE_TTL:g} or more" in done.stderr
    with pytest.raises(KitaruConfigError, match="KITARU_LEASE_TTL"):
        Runtime(MemoryStateStore(), MemoryArtifactStore(), lease_ttl=float(ttl) or 0.1)


def test_the_heartbeat_is_derived_from_the_lease() -> None:
    runtime = Runtime(MemoryStateStore(), MemoryArtifactStore(), lease_ttl=6.0, heartbeat_interval=30.0)
    assert runtime.lease_ttl == 6.0 and runtime.heartbeat_interval == 2.0
    assert Runtime(MemoryStateStore(), MemoryArtifactStore(), lease_ttl=300.0).heartbeat_interval == 2.0
