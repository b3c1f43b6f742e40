"""A lease held by a live process on this host is not taken over, whatever the process calls
itself: its name is read around, not into, when telling a zombie from a running process."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from kitaru.store._rules import HOST, lease_free
from tests._process import wait_for

pytestmark = pytest.mark.skipif(not Path("/proc/self/comm").exists(), reason="needs Linux /proc")

# The process renames itself (as setproctitle or prctl would) to a name with ") Z" in it: the
# kernel's stat line then reads "PID (x) Z) S ...", where only the last ") " ends the name.
RENAMED = """
import sys, time
from pathlib import Path
Path("/proc/self/comm").write_text("x) Z")
Path(sys.argv[1]).write_text("renamed")
time.sleep(120)
"""


def test_a_live_holder_named_like_a_zombie_keeps_its_lease(tmp_path: Path) -> None:
    marker = tmp_path / "renamed"
    proc = subprocess.Popen([sys.executable, "-c", RENAMED, str(marker)])
    try:
        wait_for(marker, proc, timeout=60)
        assert Path(f"/proc/{proc.pid}/comm").read_text().strip() == "x) Z"
        assert not lease_free(f"{HOST}:{proc.pid}:token", expires=1e12, now=0.0)
    finally:
        proc.kill()
        proc.wait(timeout=30)
