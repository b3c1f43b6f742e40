"""Output and logging records from inside flows are kept per call, in order."""

from __future__ import annotations

import asyncio
import logging
import sys

import pytest

import kitaru
from kitaru import KitaruClient, checkpoint, flow
from kitaru._engine.runtime import Runtime

log = logging.getLogger("agent")


@checkpoint
def chatty(n: int) -> int:
    print(f"working on {n}")
    print("to stderr", file=sys.stderr)
    log.warning("careful with %d", n)
    return n


@flow
def talker() -> int:
    print("flow starts")
    total = chatty(1) + chatty(2)
    kitaru.wait(name="go")
    print("flow ends")
    return total


@checkpoint
async def interleaved(i: int) -> int:
    for line in range(3):
        print(f"task {i} line {line}")
        await asyncio.sleep(0.001 * (5 - i))
    return i


@flow
async def concurrent() -> list[int]:
    return list(await asyncio.gather(*[interleaved(i) for i in range(5)]))


ATTEMPTS = {"n": 0}


@checkpoint(retries=1, retry_delay=0)
def flaky() -> str:
    ATTEMPTS["n"] += 1
    print(f"attempt {ATTEMPTS['n']}")
    if ATTEMPTS["n"] == 1:
        raise RuntimeError("first try fails")
    return "ok"


@flow
def retrying() -> str:
    return flaky()


class TestLogs:
    def test_output_and_logging_land_under_their_call(
        self, runtime: Runtime, capsys: pytest.CaptureFixture[str]
    ) -> None:
        handle = talker.run()
        KitaruClient().executions.input(handle.exec_id, None)
        entries = KitaruClient().executions.logs(handle.exec_id)
        by_call = [(e.call_id, e.stream, e.text) for e in entries]
        assert by_call == [
            (None, "stdout", "flow starts\n"),
            ("chatty", "stdout", "working on 1\n"),
            ("chatty", "stderr", "to stderr\n"),
            ("chatty", "log", "WARNING agent: careful with 1\n"),
            ("chatty:2", "stdout", "working on 2\n"),
            ("chatty:2", "stderr", "to stderr\n"),
            ("chatty:2", "log", "WARNING agent: careful with 2\n"),
            (None, "stdout", "flow ends\n"),  # once: the resumed run replays, not reprints
        ]
        # Output still reaches the terminal.
        assert "working on 1" in capsys.readouterr().out
        only = KitaruClient().executions.logs(handle.exec_id, checkpoint="chatty:2")
        assert {e.call_id for e in only} == {"chatty:2"}
        # A bare name is every call of that checkpoint; `name:1` the first call alone.
        both = KitaruClient().executions.logs(handle.exec_id, checkpoint="chatty")
        assert [e.call_id for e in both] == ["chatty"] * 3 + ["chatty:2"] * 3
        first = KitaruClient().executions.logs(handle.exec_id, checkpoint="chatty:1")
        assert [e.call_id for e in first] == ["chatty"] * 3

    def test_concurrent_checkpoints_keep_their_own_lines_in_order(self, runtime: Runtime) -> None:
        async def main() -> str:
            handle = await concurrent.start()
            await handle.result(timeout=60)
            return handle.exec_id

        exec_id = asyncio.run(main())
        client = KitaruClient()
        for i in range(5):
            call_id = f"interleaved:{i + 1}"
            text = "".join(e.text for e in client.executions.logs(exec_id, checkpoint=call_id))
            assert text == "".join(f"task {i} line {n}\n" for n in range(3))

    def test_failed_attempts_keep_their_output(self, runtime: Runtime) -> None:
        ATTEMPTS["n"] = 0
        handle = retrying.run()
        assert handle.wait(timeout=60) == "ok"
        texts = [e.text for e in KitaruClient().executions.logs(handle.exec_id)]
        assert texts == ["attempt 1\n", "attempt 2\n"]

    def test_nothing_is_captured_outside_flows(self, runtime: Runtime) -> None:
        import sys as _sys

        before = _sys.stdout
        talker.run()
        assert _sys.stdout is before  # the tee is gone once no flow runs
