"""What the Cloud Run and Container Apps doubles share: a job platform that runs each execution's
container command as local processes, retrying a non-zero exit by itself, and an HTTP server in a
thread of the test process. Each double keeps its own wire (routes, resources, errors); the
executor and what a test uses to look at it (runs of an execution, kill, alive, logs) live here, so
the two platforms' retry and stop behaviour cannot drift apart."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Generic, TypeVar

__all__ = ["JobsDouble", "LocalRun", "now", "signal_group"]

T = TypeVar("T")


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def signal_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    """Signal an attempt's whole process group (the container's processes)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


class LocalRun:
    """One platform execution of a container: ``argv`` run as a local process with ``env``, an attempt
    that exits non-zero (or is killed) retried at once up to ``retries`` times, whatever the exit
    code; an attempt running past ``timeout`` seconds is killed. :meth:`stop` sends SIGTERM to the
    running attempt, SIGKILL after the double's grace, and no retry follows."""

    def __init__(
        self,
        double: JobsDouble[Any],
        name: str,
        argv: list[str],
        env: dict[str, str],
        *,
        retries: int,
        timeout: float,
        log: Path,
        label: str,
    ) -> None:
        self.double = double
        self.name = name
        self.argv, self.env = argv, env
        self.retries, self.timeout = retries, timeout
        self.log_path, self.label = log, label
        self.began: str | None = None
        self.ended: str | None = None
        self.attempts: list[subprocess.Popen[bytes]] = []
        self.exit_codes: list[int] = []
        self.stopping = False
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._run, name=f"executor {name}", daemon=True)

    @property
    def succeeded(self) -> bool:
        return bool(self.exit_codes) and self.exit_codes[-1] == 0

    def start(self) -> None:
        self.thread.start()

    def _run(self) -> None:
        self.began = now()
        for attempt in range(self.retries + 1):
            with self.lock:
                if self.stopping:
                    break
                with open(self.log_path, "ab") as out:
                    out.write(f"--- {self.label} {attempt}: {self.argv}\n".encode())
                    out.flush()
                    proc = subprocess.Popen(
                        self.argv,
                        env=self.env,
                        cwd=self.double.workdir,
                        stdout=out,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                    )
                self.attempts.append(proc)
            try:
                code = proc.wait(self.timeout)
            except subprocess.TimeoutExpired:
                signal_group(proc, signal.SIGKILL)
                code = proc.wait()
            # A process killed by a signal exits 128 + N, as a container's main process would.
            self.exit_codes.append(code if code >= 0 else 128 - code)
            if code == 0 or self.stopping:
                break
        with self.lock:
            self.ended = now()

    def stop(self) -> None:
        with self.lock:
            if self.ended:
                return
            self.stopping = True
            proc = self.attempts[-1] if self.attempts else None
        if proc is not None and proc.poll() is None:
            signal_group(proc, signal.SIGTERM)
            grace = self.double.grace

            def kill_later() -> None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(grace)
                    return
                signal_group(proc, signal.SIGKILL)

            threading.Thread(target=kill_later, daemon=True).start()


R = TypeVar("R", bound=LocalRun)


class JobsDouble(Generic[R]):
    """The double, serving in a thread of this process (``.endpoint`` is its URL); a subclass
    serves its platform's wire in :meth:`_handle` and keeps its runs in :attr:`executions`."""

    methods: tuple[str, ...] = ("GET", "POST")
    label = "jobs double"

    def __init__(self, workdir: Path, *, base_env: dict[str, str] | None = None, grace: float = 10) -> None:
        self.workdir = workdir
        self.base_env = dict(base_env if base_env is not None else os.environ)
        self.grace = grace
        self.executions: dict[str, R] = {}
        self.requests: list[tuple[str, str]] = []
        self.lock = threading.Lock()
        double = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

        for method in self.methods:
            setattr(Handler, f"do_{method}", lambda handler, m=method: double._handle(handler, m))
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, name=self.label, daemon=True)
        self.thread.start()

    def _handle(self, handler: BaseHTTPRequestHandler, method: str) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        self.grace = 0
        for run in list(self.executions.values()):
            run.stop()
        for run in list(self.executions.values()):
            if run.thread.is_alive():
                run.thread.join(30)
        self.server.shutdown()
        self.server.server_close()

    # -- what a test looks at -----------------------------------------------------------------------

    def executions_of(self, exec_id: str) -> list[R]:
        """The platform executions whose container args name kitaru execution ``exec_id``, oldest first."""
        with self.lock:
            found = list(self.executions.values())
        return [r for r in found if exec_id in r.argv]

    def kill_attempt(self, run: R) -> None:
        """SIGKILL the running attempt of the execution (a crash, a lost instance)."""
        signal_group(run.attempts[-1], signal.SIGKILL)

    def alive(self) -> list[str]:
        """Names of executions with a process still running."""
        with self.lock:
            found = list(self.executions.values())
        return [r.name for r in found if r.attempts and r.attempts[-1].poll() is None]

    def wait_for(self, probe: Callable[[], T | None], timeout: float = 60, what: str = "the condition") -> T:
        deadline = time.monotonic() + timeout
        while True:
            value = probe()
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"{what} did not happen within {timeout} s")
            time.sleep(0.05)

    def log(self, run: R) -> str:
        return run.log_path.read_text(errors="replace") if run.log_path.exists() else ""
