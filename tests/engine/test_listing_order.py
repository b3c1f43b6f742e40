"""Executions started with the caller's own id (an idempotency key) list at their creation time
among generated ones, on every store: in ``executions.list()``, ``latest()``, ``kitaru executions
list`` and the walks behind ``stats(since=...)``. Before, ids set the order, so ``order-42`` (which
sorts after every generated id) was "the newest" forever."""

from __future__ import annotations

import json
import time
from typing import Any

from click.testing import CliRunner

import kitaru
from kitaru._engine.runtime import Runtime
from kitaru.cli import main


@kitaru.flow
def noted(text: str) -> str:
    return text


def _ids(found: list[Any]) -> list[str]:
    return [e.id for e in found]


def test_a_chosen_id_lists_at_its_creation_time(runtime: Runtime) -> None:
    client = kitaru.KitaruClient()
    first = noted.run("a").exec_id
    keyed = noted.run("b", execution_id="order-42").exec_id
    early = noted.run("c", execution_id="!early").exec_id  # sorts before every generated id
    newest = noted.run("d").exec_id

    assert _ids(client.executions.list()) == [newest, early, keyed, first]
    assert _ids(client.executions.list(limit=1)) == [newest]
    assert client.executions.latest().id == newest
    assert client.executions.latest(flow="noted", status="completed").id == newest

    result = CliRunner().invoke(main, ["executions", "list", "--limit", "1", "-o", "json"])
    assert result.exit_code == 0, result.output
    assert [e["id"] for e in json.loads(result.stdout)] == [newest]


def test_stats_since_counts_what_was_created_since(runtime: Runtime) -> None:
    # The walk behind stats(since=) stops at the first execution created before `since`; a chosen
    # id listed first (by its text) stopped it before the executions created since were seen.
    noted.run("old", execution_id="order-42")
    time.sleep(0.01)
    since = time.time()
    time.sleep(0.01)
    noted.run("new")
    noted.run("newer")
    [flow] = kitaru.KitaruClient().executions.stats(since=since).flows
    assert flow.flow == "noted" and flow.executions == 2


def test_completing_an_id_offers_the_newest_first(runtime: Runtime) -> None:
    from kitaru.cli._common import complete_execution_ids

    made = [noted.run("0").exec_id]
    prefix = made[0][:2]  # generated ids made now share their first characters (the time)
    made += [noted.run("1", execution_id=f"{prefix}-keyed").exec_id, noted.run("2").exec_id]
    offered = [c.value for c in complete_execution_ids(None, None, prefix)]  # type: ignore[arg-type]
    assert offered == made[::-1]
