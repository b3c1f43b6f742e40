"""A flow whose checkpoint returns more than the inline limit (64 KiB), for the stacks test: that
output is a content-addressed blob in the stack's artifact store (``<prefix>/blobs/<2 hex>/<sha256>``),
and a resume in another process reads it back from there."""

from __future__ import annotations

import hashlib
import sys

import kitaru
from kitaru import checkpoint, flow


@checkpoint
def big(size: int) -> bytes:
    block = hashlib.sha256(str(size).encode()).digest()
    return (block * (size // len(block) + 1))[:size]


@flow
def large_output(size: int) -> str:
    data = big(size)
    kitaru.wait(name="go", schema=bool)
    return f"{len(data)}:{hashlib.sha256(data).hexdigest()}"


if __name__ == "__main__":
    handle = large_output.run(int(sys.argv[1]))
    print(handle.exec_id, handle.status, flush=True)
