"""A chain of checkpoints on a PostgreSQL state store, for the server-restart (chaos) test.

    python pg_chain.py run N          start the flow with N checkpoints; prints "<id> <status>"
    python pg_chain.py resume ID      drive ID on (resume if running, retry if failed); prints status

The state store is ``$KITARU_PG_DSN`` (retrying ``$PG_RETRIES`` times), artifacts live under
``$KITARU_HOME``. Every checkpoint run appends its number to ``$COUNT_FILE``, outside kitaru, and
touches ``$MARK_DIR/<n>`` once it has run, so the test can count real executions and stop the server
at known points.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from kitaru import KitaruClient, checkpoint, flow


@checkpoint
def step(i: int, acc: int) -> int:
    with open(os.environ["COUNT_FILE"], "a") as fh:
        fh.write(f"{i}\n")
    time.sleep(float(os.environ.get("STEP_SLEEP", "0.02")))
    (Path(os.environ["MARK_DIR"]) / str(i)).touch()
    return acc + i


@flow
def chain(n: int) -> int:
    acc = 0
    for i in range(1, n + 1):
        acc = step(i, acc)
    return acc


def main(argv: list[str]) -> int:
    from kitaru._engine.runtime import Runtime, set_runtime
    from kitaru.config import home
    from kitaru.store import sync_view
    from kitaru.store.filesystem import FilesystemArtifactStore
    from kitaru.store.postgres import PostgresStateStore

    state = PostgresStateStore(
        os.environ["KITARU_PG_DSN"], retries=int(os.environ.get("PG_RETRIES", "8")), backoff=0.05
    )
    set_runtime(Runtime(state, FilesystemArtifactStore(home() / "artifacts"), heartbeat_interval=0.2))
    if argv[0] == "run":
        handle = chain.run(int(argv[1]))
        print(handle.exec_id, handle.status, flush=True)
        return 0
    executions = KitaruClient().executions
    record = sync_view(state).get_execution(argv[1])
    assert record is not None, argv[1]
    handle = executions.retry(record.id) if record.status == "failed" else executions.resume(record.id)
    print(handle.exec_id, handle.wait(timeout=60), handle.status, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
