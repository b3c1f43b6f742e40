"""Figures across executions: the open waits people owe an answer, and per-flow statistics
(counts by status, duration percentiles, model tokens and cost from ``kitaru.llm``'s usage
records). Read-only walks over a state store; :class:`kitaru.client.KitaruClient` exposes them."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from kitaru._client_views import ExecutionStats, FlowStats, PendingWait, fold_journal
from kitaru.store import TERMINAL_STATUSES, ExecutionRecord, JournalRecord

if TYPE_CHECKING:
    from kitaru.store._sync import SyncStateStore

__all__ = ["execution_stats", "pending_waits", "walk_executions"]

_PAGE = 200


def walk_executions(
    state: SyncStateStore, *, flow: str | None = None, status: str | None = None, since: float | None = None
) -> Iterator[ExecutionRecord]:
    """Executions newest first, page by page, stopping at the first one created before ``since``."""
    before: str | None = None
    while True:
        page = state.list_executions(flow=flow, status=status, limit=_PAGE, before=before)
        for record in page:
            if since is not None and record.created_at < since:
                return
            yield record
        if len(page) < _PAGE:
            return
        before = page[-1].id


def pending_waits(state: SyncStateStore, *, flow: str | None = None) -> list[PendingWait]:
    """Every open wait of every waiting execution, oldest first."""
    found: list[PendingWait] = []
    for record in walk_executions(state, flow=flow, status="waiting"):
        _calls, waits, _meta = fold_journal(state.read_journal(record.id))
        for w in waits:
            if w.status != "open":
                continue
            found.append(
                PendingWait(
                    exec_id=record.id,
                    flow=record.flow,
                    name=w.name,
                    question=w.question,
                    expects=w.schema,
                    schema=w.json_schema,
                    metadata=w.metadata,
                    opened_at=w.opened_at,
                    deadline=w.deadline,
                )
            )
    found.sort(key=lambda p: (p.opened_at or 0.0, p.exec_id, p.name))
    return found


def execution_stats(
    state: SyncStateStore, *, flow: str | None = None, since: float | None = None
) -> ExecutionStats:
    """Per-flow figures over the executions created at or after ``since`` (all when None)."""
    from kitaru._models import price_of

    per_flow: dict[str, dict[str, Any]] = {}
    prices: dict[str, tuple[float, float] | None] = {}
    for record in walk_executions(state, flow=flow, since=since):
        f = per_flow.setdefault(
            record.flow,
            {"by_status": {}, "durations": [], "calls": 0, "in": 0, "out": 0, "cost": 0.0, "unpriced": 0},
        )
        f["by_status"][record.status] = f["by_status"].get(record.status, 0) + 1
        if record.status in TERMINAL_STATUSES:
            f["durations"].append(max(0.0, record.updated_at - record.created_at))
        for usage in _usages(state.read_journal(record.id)):
            f["calls"] += 1
            tokens_in, tokens_out = _int(usage.get("tokens_in")), _int(usage.get("tokens_out"))
            f["in"] += tokens_in or 0
            f["out"] += tokens_out or 0
            cost = usage.get("cost_usd")
            if not isinstance(cost, int | float):
                model = usage.get("model")
                if isinstance(model, str) and model not in prices:
                    prices[model] = price_of(model)
                price = prices.get(model) if isinstance(model, str) else None
                cost = (
                    (tokens_in * price[0] + tokens_out * price[1]) / 1_000_000
                    if price and tokens_in is not None and tokens_out is not None
                    else None
                )
            if cost is None:
                f["unpriced"] += 1
            else:
                f["cost"] += float(cost)
    flows = tuple(
        FlowStats(
            flow=name,
            executions=sum(f["by_status"].values()),
            by_status=dict(sorted(f["by_status"].items())),
            duration_p50=_percentile(f["durations"], 50),
            duration_p95=_percentile(f["durations"], 95),
            llm_calls=f["calls"],
            tokens_in=f["in"],
            tokens_out=f["out"],
            cost_usd=round(f["cost"], 8),
            unpriced_calls=f["unpriced"],
        )
        for name, f in sorted(per_flow.items())
    )
    return ExecutionStats(since=since, flows=flows)


def _usages(journal: list[JournalRecord]) -> Iterator[dict[str, Any]]:
    """The usage of each model call the execution paid for: ``kitaru.llm`` logs ``tokens_in``,
    ``tokens_out``, ``model`` and (priced) ``cost_usd``, prefixed with ``<label>.`` when called
    inside another checkpoint. Calls a replay reused from its original are not counted again."""
    reused = {
        r.call_id
        for r in journal
        if r.kind == "checkpoint_completed" and r.call_id and (r.data or {}).get("replayed_from")
    }
    for r in journal:
        if r.kind != "log" or not r.data:
            continue
        if r.call_id and r.call_id.split("/", 1)[0] in reused:
            continue
        for key in r.data:
            if key == "tokens_in" or key.endswith(".tokens_in"):
                prefix = key[: -len("tokens_in")]
                yield {k: r.data.get(prefix + k) for k in ("tokens_in", "tokens_out", "cost_usd", "model")}


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _percentile(values: list[float], pct: int) -> float | None:
    """Nearest-rank percentile (a value that occurred), None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[max(0, math.ceil(pct / 100 * len(ordered)) - 1)], 3)
