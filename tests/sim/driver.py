"""Driving a generated flow to its end through crashes and faults, and the invariants checked after.

:func:`run_to_end` plays operator and processes: it starts the flow with a fixed execution id
(an idempotent start, so a process that died before the start landed can simply start it again),
answers waits, and after each crash or failure opens a new process that recovers the execution the
way a person or a worker would (``flow.run`` with the same id, ``executions resume``, ``retry``,
``input``).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from kitaru import KitaruClient
from kitaru._engine.flow import Flow
from kitaru._engine.runtime import use_runtime
from kitaru._ids import new_id
from kitaru.errors import KitaruError
from kitaru.store import ONCE_ONLY_KINDS

from .flows import answer_for
from .harness import SIM, Env, Plan, SimulatedCrash


def run_to_end(
    env: Env, flow: Flow[Any, Any], program: list[list[Any]], plan: Plan | None, *, resume_by_run: bool
) -> tuple[str, list[str]]:
    """Drive one execution of ``flow(program)`` to ``completed``; returns its id and a trace of what
    each process did (shown when an invariant breaks)."""
    source = env.source_execution()
    exec_id = new_id()
    trace: list[str] = []
    SIM.plan = plan
    budget = 2 * len(program) + (plan.budget if plan else 0) + 6
    try:
        for _ in range(budget):
            runtime = env.process(plan)
            client = KitaruClient(runtime)
            try:
                with use_runtime(runtime):
                    record = runtime.state.get_execution(exec_id)
                    status = record.status if record else "absent"
                    if status == "completed":
                        runtime.close()
                        return exec_id, trace
                    if status == "absent" or (status == "running" and resume_by_run):
                        trace.append(f"{status}: run")
                        flow.run(program, source, execution_id=exec_id)
                    elif status == "running":
                        trace.append("running: resume")
                        client.executions.resume(exec_id)
                    elif status == "failed":
                        trace.append(f"failed ({record and record.error}): retry")
                        client.executions.retry(exec_id)
                    elif status == "waiting":
                        waits = client.executions.get(exec_id).open_waits
                        if waits:
                            trace.append(f"waiting: answer {waits[0].name}")
                            client.executions.input(exec_id, answer_for(waits[0].name))
                        else:
                            trace.append("waiting, nothing open: resume")
                            client.executions.resume(exec_id)
                    else:
                        raise AssertionError(f"execution {exec_id} ended {status}: {trace}")
            except SimulatedCrash:
                trace.append(f"  crashed {getattr(runtime.astate, 'cause', '')}")
                env.bury(runtime)
                continue
            except KitaruError as exc:
                # A store fault surfaced to the caller: the process reports it and exits.
                trace.append(f"  error {type(exc).__name__}: {exc}")
            runtime.close()
        raise AssertionError(f"execution {exec_id} did not complete: {trace}")
    finally:
        SIM.plan = None


def check_journal(env: Env, exec_id: str) -> None:
    """The journal is well formed: ids increase, once-only kinds are once, every call keeps one
    position and every position one call, positions are 1..N, every artifact referenced exists."""
    runtime = env.process(None)
    try:
        state = runtime.state
        journal = state.read_journal(exec_id)
        ids = [r.id for r in journal]
        assert ids == sorted(ids) and len(set(ids)) == len(ids), ids
        once = Counter((r.kind, r.call_id) for r in journal if r.kind in ONCE_ONLY_KINDS)
        assert all(n == 1 for n in once.values()), [k for k, n in once.items() if n > 1]
        ends = [r.kind for r in journal if r.kind in ("flow_completed", "flow_failed", "flow_cancelled")]
        assert ends[-1:] == ["flow_completed"] and ends.count("flow_completed") == 1, ends
        call_at: dict[int, tuple[str | None, str | None]] = {}
        seq_of: dict[str | None, int] = {}
        for r in journal:
            if r.seq is None:
                continue
            assert call_at.setdefault(r.seq, (r.call_id, r.name)) == (r.call_id, r.name), r
            assert seq_of.setdefault(r.call_id, r.seq) == r.seq, r
        assert sorted(call_at) == list(range(1, len(call_at) + 1)), sorted(call_at)
        for r in journal:
            if r.artifact_id:
                assert state.get_artifact(r.artifact_id) is not None, r
        execution = state.get_execution(exec_id)
        assert execution is not None and execution.status == "completed"
        assert execution.lease_owner is None, execution
        assert state.get_artifact(execution.result_artifact or "") is not None
    finally:
        runtime.close()


def artifacts_of(env: Env, exec_id: str) -> list[tuple[Any, ...]]:
    """An execution's artifacts as comparable facts (ids and times differ between runs)."""
    runtime = env.process(None)
    try:
        return sorted(
            (a.name, a.version, a.type, a.call_id or "", a.content_hash, a.size)
            for a in runtime.state.list_artifacts(exec_id)
        )
    finally:
        runtime.close()


def observed(env: Env, exec_id: str) -> dict[str, Any]:
    """What a user sees of a finished execution: result, metadata, checkpoint outcomes."""
    runtime = env.process(None)
    try:
        client = KitaruClient(runtime)
        execution = client.executions.get(exec_id)
        artifact = client.artifacts.get(execution.result_artifact or "")
        return {
            "result": artifact.load(),
            "metadata": execution.metadata,
            "checkpoints": {c.call_id: (c.status, c.metadata) for c in execution.checkpoints},
            "waits": sorted((w.name, w.status) for w in execution.waits),
        }
    finally:
        runtime.close()


def diff_changes(env: Env, a: str, b: str) -> list[Any]:
    runtime = env.process(None)
    try:
        return list(KitaruClient(runtime).executions.diff(a, b).changed)
    finally:
        runtime.close()
