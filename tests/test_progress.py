"""Progress on a terminal: long commands redraw one line on stderr when it is a terminal (a real
pseudo-terminal here), print nothing extra in a pipe, and drop colour under NO_COLOR."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest

import kitaru

pytestmark = pytest.mark.e2e

TIMEOUT = 120
BIG = 3 << 20  # above the 1 MiB below which transfers show nothing


def _on_terminal(
    command: list[str],
    env: dict[str, str],
    cwd: Path | None = None,
    on_shown: tuple[str, Callable[[], None]] | None = None,
) -> tuple[int, str, str]:
    """Run ``command`` with a pseudo-terminal as its stderr; returns (exit code, stdout, what the
    terminal showed). ``on_shown``: call this once the terminal has shown that text."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=slave, env=env, cwd=cwd)
    os.close(slave)
    shown = bytearray()
    deadline = time.monotonic() + TIMEOUT
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.2)
            if not ready:
                if proc.poll() is not None:
                    break
                continue
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the child and everything it started closed the terminal
                break
            if not data:
                break
            shown += data
            if on_shown is not None and on_shown[0] in shown.decode(errors="replace"):
                on_shown[1]()
                on_shown = None
        else:
            proc.kill()
            raise AssertionError(f"{command} did not finish within {TIMEOUT} s: {bytes(shown)!r}")
        out, _ = proc.communicate(timeout=TIMEOUT)
        return proc.returncode, out.decode(), shown.decode()
    finally:
        os.close(master)
        if proc.stdout is not None:
            proc.stdout.close()


@kitaru.checkpoint
def produce(n: int) -> bytes:
    return b"x" * n


@kitaru.flow
def big(n: int) -> bytes:
    return produce(n)


def _artifact(n: int) -> str:
    handle = big.run(n)
    record = kitaru.KitaruClient().executions.get(handle.exec_id).checkpoints[0]
    assert record.output_artifact is not None
    return record.output_artifact


def test_artifact_download_shows_a_bar_on_a_terminal(
    tmp_path: Path, subprocess_env: dict[str, str], kitaru_cli: list[str]
) -> None:
    artifact_id = _artifact(BIG)
    out = tmp_path / "out.bin"
    env = {k: v for k, v in subprocess_env.items() if k != "NO_COLOR"} | {"TERM": "xterm"}
    code, stdout, shown = _on_terminal([*kitaru_cli, "artifacts", "get", artifact_id, "--out", str(out)], env)
    assert code == 0, (stdout, shown)
    assert out.read_bytes() == b"x" * BIG
    assert f"wrote {BIG} bytes" in stdout  # the result still goes to stdout, unchanged
    assert "\r" in shown and "100%" in shown and "3.0 MiB/3.0 MiB" in shown and "/s" in shown, shown
    assert "\x1b[32m" in shown  # coloured bar


def test_no_color_keeps_the_bar_without_colour(
    tmp_path: Path, subprocess_env: dict[str, str], kitaru_cli: list[str]
) -> None:
    artifact_id = _artifact(BIG)
    env = subprocess_env | {"NO_COLOR": "1", "TERM": "xterm"}
    command = [*kitaru_cli, "artifacts", "get", artifact_id, "--out", str(tmp_path / "out.bin")]
    code, stdout, shown = _on_terminal(command, env)
    assert code == 0, (stdout, shown)
    assert "100%" in shown and "#" * 24 in shown, shown
    assert "\x1b[" not in shown, repr(shown)


def test_nothing_is_printed_when_stderr_is_not_a_terminal(
    tmp_path: Path, subprocess_env: dict[str, str], kitaru_cli: list[str]
) -> None:
    artifact_id = _artifact(BIG)
    ran = subprocess.run(
        [*kitaru_cli, "artifacts", "get", artifact_id, "--out", str(tmp_path / "out.bin")],
        env=subprocess_env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert ran.returncode == 0, ran.stderr
    assert ran.stderr == ""
    assert ran.stdout.strip() == f"wrote {BIG} bytes to {tmp_path / 'out.bin'}"


def test_small_downloads_show_no_bar(
    tmp_path: Path, subprocess_env: dict[str, str], kitaru_cli: list[str]
) -> None:
    artifact_id = _artifact(1000)
    command = [*kitaru_cli, "artifacts", "get", artifact_id, "--out", str(tmp_path / "out.bin")]
    code, stdout, shown = _on_terminal(command, subprocess_env)
    assert code == 0, (stdout, shown)
    assert shown == "", repr(shown)


PATIENT = textwrap.dedent(
    """
    import sys

    import kitaru
    from kitaru.errors import KitaruWaitTimeoutError


    @kitaru.flow
    def patient() -> str:
        try:
            kitaru.wait(name="ok", schema=bool, expires_in=3)
        except KitaruWaitTimeoutError:
            return "timed out"
        return "answered"


    if __name__ == "__main__":
        for _ in range(int(sys.argv[1])):
            print(patient.run().status)
    """
)


def test_recover_counts_executions_on_a_terminal(
    tmp_path: Path, subprocess_env: dict[str, str], kitaru_cli: list[str]
) -> None:
    (tmp_path / "patient.py").write_text(PATIENT)
    started = subprocess.run(
        [sys.executable, "patient.py", "3"],
        cwd=tmp_path,
        env=subprocess_env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert started.stdout.split() == ["waiting"] * 3, started.stderr
    waits = kitaru.KitaruClient().executions.pending_waits()
    deadline = max(w.deadline or 0 for w in waits)
    while time.time() <= deadline:  # until every wait is past its deadline, and so recoverable
        time.sleep(0.1)
    env = subprocess_env | {"NO_COLOR": "1"}
    code, stdout, shown = _on_terminal([*kitaru_cli, "executions", "recover"], env, cwd=tmp_path)
    assert code == 0, (stdout, shown)
    assert stdout.count("completed") == 3, stdout
    assert "recovering" in shown and "3/3" in shown, repr(shown)
    assert "\x1b[" not in shown


SLOW = textwrap.dedent(
    """
    import sys
    import time
    from pathlib import Path

    import kitaru


    @kitaru.checkpoint
    def first() -> int:
        return 1


    @kitaru.checkpoint
    def second(go: str) -> int:
        deadline = time.monotonic() + 120
        while not Path(go).exists():  # until the test has seen the watch's progress line
            if time.monotonic() > deadline:
                raise TimeoutError(go)
            time.sleep(0.05)
        return 2


    @kitaru.flow
    def slow(started: str, go: str) -> int:
        value = first()
        Path(started).touch()
        return value + second(go)


    if __name__ == "__main__":
        print(slow.run(sys.argv[1], sys.argv[2]).status)
    """
)


def test_watch_shows_a_running_line_and_leaves_only_its_own_lines(
    tmp_path: Path, subprocess_env: dict[str, str], kitaru_cli: list[str]
) -> None:
    from tests._process import wait_for

    (tmp_path / "slow.py").write_text(SLOW)
    started, go = tmp_path / "started", tmp_path / "go"
    flow = subprocess.Popen(
        [sys.executable, "slow.py", str(started), str(go)],
        cwd=tmp_path,
        env=subprocess_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        wait_for(started, flow, timeout=TIMEOUT)
        [execution] = kitaru.KitaruClient().executions.list()
        code, stdout, shown = _on_terminal(
            [*kitaru_cli, "executions", "get", execution.id, "--watch", "--interval", "0.1"],
            subprocess_env | {"NO_COLOR": "1"},
            on_shown=("running: checkpoints  1 done", go.touch),
        )
    finally:
        go.touch()  # the flow finishes whatever happened here
        said = flow.communicate(timeout=TIMEOUT)
    assert flow.returncode == 0 and said[0].strip() == b"completed", said
    assert code == 0, (stdout, shown)
    assert f"execution {execution.id} is completed" in stdout, stdout
    assert "second" in stdout
    assert "running: checkpoints  1 done" in shown and "\r" in shown, repr(shown)
    # The line is blanked at the end: nothing of it is left after the last carriage return.
    assert shown.rstrip(" ").endswith("\r"), repr(shown[-200:])
