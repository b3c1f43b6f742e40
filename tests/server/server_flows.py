"""Flows the server tests run in their own processes. Each checkpoint run appends its name to
$COUNT_FILE (outside kitaru), so a test counts real runs.

    python server_flows.py approve       prints, then waits on `approve` (a bool), then finishes
    python server_flows.py deadline S    waits on `approve` with a timeout of S seconds
    python server_flows.py slow          a checkpoint, then a slow one that marks $MARK_FILE and sleeps
    python server_flows.py tagged        saves an artifact tagged `weekly`, then waits on `approve`
    python server_flows.py uses_secret   a cached checkpoint that reads the secret API_TOKEN
    python server_flows.py hostile       markup everywhere a page shows text (id, output, log,
                                         question), then waits on `approve`
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import kitaru
from kitaru import checkpoint, flow
from kitaru.errors import KitaruWaitTimeoutError


def count(name: str) -> None:
    with open(os.environ["COUNT_FILE"], "a") as fh:
        fh.write(f"{name}\n")


@checkpoint
def research(topic: str) -> str:
    count("research")
    print(f"researching {topic}")
    return f"brief on {topic}"


@checkpoint
def publish(brief: str, approved: bool) -> str:
    count("publish")
    return f"{brief}: {'approved' if approved else 'rejected'}"


@flow
def approve(topic: str) -> str:
    brief = research(topic)
    ok = kitaru.wait(name="approve", question="Publish it?", schema=bool)
    return publish(brief, ok)


@checkpoint
def on_timeout() -> str:
    count("timed_out")
    return "timed out"


@flow
def deadline(seconds: float) -> str:
    try:
        kitaru.wait(name="approve", question="Approve?", schema=bool, expires_in=seconds)
    except KitaruWaitTimeoutError:
        return on_timeout()
    return "answered"


@checkpoint
def slow_step() -> str:
    count("slow_step")
    mark = Path(os.environ["MARK_FILE"])
    if not mark.exists():  # the first run marks itself and hangs until it is killed
        mark.write_text(kitaru.current_execution_id() or "")
        time.sleep(300)
    return "slow done"


@flow
def slow() -> str:
    first = research("recovery")
    return first + " / " + slow_step()


@flow
def tagged() -> str:
    kitaru.save("report", {"week": 1}, tags=["weekly"])
    ok = kitaru.wait(name="approve", question="Ship the report?", schema=bool)
    return "shipped" if ok else "held"


@checkpoint(cache=True)
def call_api(endpoint: str) -> str:
    count("call_api")
    token = kitaru.secret("API_TOKEN")
    # What a real call would compute with the token; never the token itself.
    return f"{endpoint}: token of {len(token)} chars, ends {token[-2:]}"


@flow
def uses_secret(endpoint: str) -> str:
    return call_api(endpoint) + f" / live {len(kitaru.secret('API_TOKEN'))}"


#: Markup that sets ``window.__xss`` wherever a page would run it instead of showing it.
HOSTILE = '<img src=x onerror="window.__xss=1"><script>window.__xss=2</script>'
#: An execution id a page puts in links and headings (no slash: ids are path segments).
HOSTILE_ID = "x<svg onload=window.__xss=3>"


@checkpoint
def render_markup() -> str:
    print(HOSTILE)
    return HOSTILE


@flow
def hostile() -> str:
    markup = render_markup()
    kitaru.wait(name="approve", question=HOSTILE, schema=bool)
    return markup


if __name__ == "__main__":
    which = sys.argv[1]
    if which == "approve":
        print(approve.run("durable agents").exec_id)
    elif which == "deadline":
        print(deadline.run(float(sys.argv[2])).exec_id)
    elif which == "slow":
        print(slow.run().exec_id)
    elif which == "tagged":
        print(tagged.run().exec_id)
    elif which == "hostile":
        print(hostile.run(execution_id=HOSTILE_ID).exec_id)
    elif which == "uses_secret":
        handle = uses_secret.run(sys.argv[2])
        print(handle.wait())
        print(handle.exec_id)
