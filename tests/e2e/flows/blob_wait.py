"""A flow whose checkpoint output is a blob in the artifact store, then a wait: run it, tamper with
the blob while it waits, and answer from another process.

Usage: python blob_wait.py N text|pickle  (prints the execution id)."""

from __future__ import annotations

import sys

import kitaru


class Payload:
    """Neither JSON, pydantic nor a dataclass: stored with cloudpickle."""

    def __init__(self, text: str) -> None:
        self.text = text


@kitaru.checkpoint
def produce(n: int, kind: str) -> object:
    print(f"producing {n} {kind}")
    return "x" * n if kind == "text" else Payload("p" * n)


@kitaru.flow
def blob_wait(n: int, kind: str) -> int:
    value = produce(n, kind)
    kitaru.wait(name="go", schema=bool)
    return len(value if isinstance(value, str) else value.text)  # type: ignore[attr-defined]


if __name__ == "__main__":
    handle = blob_wait.run(int(sys.argv[1]), sys.argv[2])
    print(handle.exec_id, handle.status)
