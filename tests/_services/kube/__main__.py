"""``python -m tests._services.kube --port N``: run the apiserver double; prints its URL, then
serves until SIGTERM or SIGINT (which also kill every pod's processes)."""

from __future__ import annotations

import argparse
import shutil
import signal
import sys
import tempfile
import threading
from pathlib import Path
from types import FrameType

from tests._services.kube._server import ApiServer


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests._services.kube", description=__doc__)
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0: a free one)")
    parser.add_argument(
        "--workdir", type=Path, help="where pods' logs and working dirs go (default: a temp dir)"
    )
    parser.add_argument(
        "--pod-backoff",
        type=float,
        default=0.2,
        help="seconds before the first replacement pod, doubling per failure (Kubernetes: 10)",
    )
    parser.add_argument("--verbose", action="store_true", help="log every request to stderr")
    args = parser.parse_args(argv)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="kitaru-kube-"))
    server = ApiServer(args.port, workdir, pod_backoff=args.pod_backoff, verbose=args.verbose)
    done = threading.Event()

    def stop(signum: int, frame: FrameType | None) -> None:
        done.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    server.start()
    print(server.url, flush=True)
    try:
        while not done.wait(0.5):
            pass
    finally:
        server.stop()
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    sys.exit(0)


if __name__ == "__main__":
    main()
