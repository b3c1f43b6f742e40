"""The 200 MB round trip every object store makes with bounded memory, measured in a child process.

The child writes a 200 MiB blob with ``put_stream`` from 1 MiB chunks it makes on the fly, reads it
back with ``open`` while hashing it, and reports its peak resident set (``VmHWM``, else
``getrusage``), so the figure covers everything the SDK holds, not only Python objects.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

__all__ = ["assert_round_trip_in_bounded_memory"]

MiB = 1 << 20
_ROOT = Path(__file__).resolve().parents[2]

_CHILD = r"""
import hashlib, json, resource, sys, time
from kitaru.stack import artifact_store_for_uri
from kitaru.store import sync_view

uri, options, total_mib = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3])
def rss():
    # VmHWM: this process image's peak RSS. getrusage's ru_maxrss would do elsewhere, but Linux
    # carries the forking parent's peak into it across exec (here: the whole pytest process).
    try:
        with open("/proc/self/status") as fh:
            return next(int(l.split()[1]) for l in fh if l.startswith("VmHWM:")) * 1024
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
store = sync_view(artifact_store_for_uri(uri, **options))
store.put("warm-up", b"x")  # the SDK imported and its connections open: the baseline
assert store.get("warm-up") == b"x"
baseline = rss()
written = hashlib.sha256()
def chunks():
    for i in range(total_mib):
        chunk = i.to_bytes(4, "big") * (1 << 18)
        written.update(chunk)
        yield chunk
t0 = time.perf_counter()
store.put_stream("blob", chunks())
t1 = time.perf_counter()
after_write = rss()
read, size = hashlib.sha256(), 0
for chunk in store.open("blob", chunk_size=1 << 20):
    assert len(chunk) <= 1 << 20
    read.update(chunk)
    size += len(chunk)
t2 = time.perf_counter()
print(json.dumps({
    "baseline": baseline, "after_write": after_write, "peak": rss(), "size": size,
    "same": read.hexdigest() == written.hexdigest(), "write_s": t1 - t0, "read_s": t2 - t1,
}))
"""


def assert_round_trip_in_bounded_memory(
    uri: str, options: dict[str, Any], *, part_size: int, report_as: str, total_mib: int = 200
) -> dict[str, Any]:
    """Round-trip ``total_mib`` MiB through the store at ``uri``; assert the child's peak RSS stays
    under 2 * ``part_size`` + 100 MiB, and print the figures (shown with ``pytest -s`` / ``-rA``)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(_ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, uri, json.dumps({**options, "part_size": part_size}), str(total_mib)],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    figures: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    assert figures["size"] == total_mib * MiB and figures["same"]
    limit = 2 * part_size + 100 * MiB
    print(
        f"\n{report_as}: {total_mib} MiB round trip, part {part_size // MiB} MiB: peak RSS "
        f"{figures['peak'] / MiB:.0f} MiB (baseline {figures['baseline'] / MiB:.0f} MiB, limit "
        f"{limit / MiB:.0f} MiB); write {figures['write_s']:.1f} s, read {figures['read_s']:.1f} s"
    )
    assert figures["peak"] < limit, figures
    return figures
