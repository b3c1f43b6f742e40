"""`executions.stats()` / `kitaru executions stats`: counts by status, duration percentiles, and
model tokens and cost per flow, from the usage kitaru.llm records (fake provider: 12 tokens in,
5 out per call)."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from click.testing import CliRunner

import kitaru
from kitaru import _models
from kitaru._engine.runtime import Runtime
from kitaru.cli import main


@kitaru.flow
def two_calls(topic: str) -> str:
    brief = kitaru.llm(f"research {topic}", model="openai/gpt-4o-mini")
    return kitaru.llm(f"draft {brief}", model="cheap")


@kitaru.checkpoint
def inner(topic: str) -> str:
    return kitaru.llm(f"inside {topic}", model="openai/mystery-model", name="ask")


@kitaru.flow
def nested(topic: str) -> str:
    return inner(topic)


@kitaru.flow
def fails() -> None:
    raise ValueError("boom")


def stats_of(flow: str, **kw: Any) -> Any:
    [found] = [f for f in kitaru.KitaruClient().executions.stats(**kw).flows if f.flow == flow]
    return found


def test_tokens_and_cost_per_flow(runtime: Runtime, openai_env: Any) -> None:
    # An alias with its own prices: its calls cost what it says, not the table's price.
    _models.register("cheap", "openai/gpt-4o", input_cost=1.0, output_cost=2.0)
    two_calls.run("a").wait(timeout=60)
    two_calls.run("b").wait(timeout=60)
    table = (12 * 0.15 + 5 * 0.60) / 1e6  # gpt-4o-mini from the price table
    alias = (12 * 1.0 + 5 * 2.0) / 1e6
    s = stats_of("two_calls")
    assert (s.executions, s.by_status, s.llm_calls) == (2, {"completed": 2}, 4)
    assert (s.tokens_in, s.tokens_out) == (48, 20)
    assert s.cost_usd == pytest.approx(2 * (table + alias))
    assert s.unpriced_calls == 0
    assert s.duration_p50 is not None and s.duration_p95 is not None
    assert 0 <= s.duration_p50 <= s.duration_p95


def test_a_model_priced_later_by_an_alias_is_costed(runtime: Runtime, openai_env: Any) -> None:
    nested.run("x").wait(timeout=60)
    s = stats_of("nested")
    assert (s.llm_calls, s.tokens_in, s.unpriced_calls, s.cost_usd) == (1, 12, 1, 0.0)
    # The override per alias reaches calls recorded before it existed.
    _models.register("mystery", "openai/mystery-model", input_cost=10.0, output_cost=10.0)
    s = stats_of("nested")
    assert s.unpriced_calls == 0 and s.cost_usd == pytest.approx(17 * 10.0 / 1e6)


def test_counts_by_status_and_filters(runtime: Runtime, openai_env: Any) -> None:
    for _ in range(2):
        with pytest.raises(kitaru.KitaruExecutionError):
            fails.run().wait(timeout=60)
    s = stats_of("fails")
    assert s.by_status == {"failed": 2} and s.llm_calls == 0 and s.cost_usd == 0
    assert [f.flow for f in kitaru.KitaruClient().executions.stats(flow="fails").flows] == ["fails"]
    assert kitaru.KitaruClient().executions.stats(since=time.time() + 60).flows == ()


def test_a_replay_does_not_count_reused_calls_again(runtime: Runtime, openai_env: Any) -> None:
    _models.register("cheap", "openai/gpt-4o", input_cost=1.0, output_cost=2.0)
    exec_id = two_calls.run("a").exec_id
    client = kitaru.KitaruClient()
    client.executions.replay(exec_id, "llm:2").wait(timeout=60)
    s = stats_of("two_calls")
    assert s.executions == 2 and s.llm_calls == 3  # the replay paid for its second call only


def test_cli(runtime: Runtime, openai_env: Any) -> None:
    _models.register("cheap", "openai/gpt-4o", input_cost=1.0, output_cost=2.0)
    two_calls.run("a").wait(timeout=60)
    result = CliRunner().invoke(main, ["executions", "stats", "--since", "1h", "-o", "json"])
    assert result.exit_code == 0, result.stderr
    [row] = json.loads(result.stdout)["flows"]
    assert row["flow"] == "two_calls" and row["tokens_in"] == 24 and row["by_status"] == {"completed": 1}
    result = CliRunner().invoke(main, ["executions", "stats", "--flow", "two_calls"])
    assert result.exit_code == 0 and "two_calls" in result.stdout and "24/10" in result.stdout
    result = CliRunner().invoke(main, ["executions", "stats", "--since", "yesterday-ish"])
    assert result.exit_code == 2 and "--since" in result.stderr
