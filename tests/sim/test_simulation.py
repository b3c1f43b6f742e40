"""Simulation testing: random flows, run through random crashes and store faults, then recovered,
must end exactly as the same flow run without faults (and as a plain-Python model of it).

Each example generates a program (sync and async checkpoints, concurrent groups, waits, planned
failures with retries, saves, logs, loads of another execution's artifact) and a fault plan
(crashes before or after state-store writes land, crashes inside checkpoint bodies, artifact-store
errors and lost replies, dropped PostgreSQL connections). It runs the program once without faults
and once with them, recovering each crash in a new process, and checks:

- no checkpoint body ran after its completion was committed (body runs counted per call id);
- the result, the artifacts (by content hash), the metadata and the checkpoint and wait outcomes
  equal the fault-free run's, and the result equals the model's;
- the journal is well formed (see :func:`tests.sim.driver.check_journal`);
- ``KitaruClient().executions.diff(faulty, fault_free)`` finds no change.

Profiles: the fast one runs in the normal suite; ``nox -s simulate`` runs the long one
(``KITARU_SIM_EXAMPLES`` examples per store). A failure prints the falsifying example, the trace
of every process, a ``@reproduce_failure`` blob and the seed: ``KITARU_SIM_SEED=<seed>`` replays it.
"""

from __future__ import annotations

import os
import random
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, note, seed, settings
from hypothesis import strategies as st

from tests.sim.driver import artifacts_of, check_journal, diff_changes, observed, run_to_end
from tests.sim.flows import RETRIES, model, sim_async, sim_sync
from tests.sim.harness import SIM, Env, Plan

LONG = os.environ.get("KITARU_SIM_PROFILE") == "long"
EXAMPLES = int(os.environ.get("KITARU_SIM_EXAMPLES") or 300)


def examples(fast: int) -> int:
    """Examples per test: ``fast`` in the normal suite (a few seconds each), EXAMPLES when long."""
    return EXAMPLES if LONG else fast


SEED = int(os.environ.get("KITARU_SIM_SEED") or random.randrange(2**32))

SIMULATION = settings(
    max_examples=examples(20),
    deadline=None,
    print_blob=True,
    database=None,  # the seed, not a local example database, is how a failure is replayed
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)

# -- what gets generated ------------------------------------------------------------------------

_x = st.integers(0, 40)
_fail = st.sampled_from([0, 0, 0, 1, RETRIES, RETRIES + 1])  # none, a retry, the last retry, give up
_ops = st.one_of(
    st.tuples(st.sampled_from(["step", "astep"]), _x, _fail).map(list),
    st.tuples(st.just("group"), st.lists(_x, min_size=1, max_size=4), st.sampled_from([0, 0, 1])).map(list),
    st.just(["wait"]),
    st.just(["save"]),
    st.just(["log"]),
    st.just(["load"]),
    st.tuples(st.just("big"), _x).map(list),
)
programs = st.lists(_ops, min_size=1, max_size=8)


@st.composite
def plans(draw: st.DrawFn, *, postgres: bool = False) -> Plan:
    writes = st.integers(1, 40)
    crashes = draw(st.dictionaries(writes, st.sampled_from(["before", "after"]), max_size=3))
    body_crashes = draw(st.sets(st.integers(1, 15), max_size=1))
    artifact_faults = draw(
        st.dictionaries(st.integers(1, 12), st.sampled_from(["error", "lost_reply"]), max_size=2)
    )
    pg_drops = draw(st.sets(writes, max_size=3)) if postgres else set()
    return Plan(
        crashes=crashes, body_crashes=body_crashes, artifact_faults=artifact_faults, pg_drops=pg_drops
    )


# -- the property ---------------------------------------------------------------------------------


def simulate(env: Env, flow_kind: str, program: list[list[Any]], plan: Plan, resume_by_run: bool) -> None:
    flow = sim_sync if flow_kind == "sync" else sim_async
    if flow_kind == "async" and env.kind == "postgres":
        # Known bug: kitaru.load() from an async flow on a store that is not inline fails when
        # the flow is driven from run() (tests/engine/test_runner.py::TestLoadFromAnAsyncFlow,
        # a strict xfail). Left out here until it is fixed, so the rest keeps being checked.
        program = [op for op in program if op[0] != "load"]
    note(f"seed: KITARU_SIM_SEED={SEED}")
    SIM.violations.clear()
    clean, clean_trace = run_to_end(env, flow, program, None, resume_by_run=resume_by_run)
    note(f"fault-free run {clean}: {clean_trace}")
    plan.drop_connections = env.drop
    faulty, trace = run_to_end(env, flow, program, plan, resume_by_run=resume_by_run)
    note(f"faulty run {faulty}: {trace}")
    # What the faults did (`--hypothesis-show-statistics` tallies them): a suite whose crashes
    # stopped landing would pass without testing anything.
    event("processes crashed", sum(line.startswith("  crashed") for line in trace))
    event("store errors surfaced", sum(line.startswith("  error") for line in trace))
    assert SIM.violations == []
    for exec_id in (clean, faulty):
        check_journal(env, exec_id)
    want = observed(env, clean)
    assert want["result"] == model(program, flow_kind)
    assert observed(env, faulty) == want
    assert artifacts_of(env, faulty) == artifacts_of(env, clean)
    assert diff_changes(env, faulty, clean) == []


@pytest.fixture
def sqlite_env(tmp_path: Path) -> Env:
    return Env("sqlite", tmp_path)


@pytest.fixture
def memory_env(tmp_path: Path) -> Env:
    return Env("memory", tmp_path)


@pytest.fixture
def postgres_env(tmp_path: Path, postgres_cluster: Any) -> Iterator[Env]:
    database = postgres_cluster.create_database("kitaru_sim")

    def drop() -> None:
        # Terminate every connection of the database, from another thread (the caller may be
        # inside an event loop), as a server restart or a network cut would.
        sql = (
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            f"WHERE datname = '{database}' AND pid <> pg_backend_pid()"
        )
        worker = threading.Thread(target=postgres_cluster.execute, args=(sql,))
        worker.start()
        worker.join(timeout=30)

    yield Env("postgres", tmp_path, dsn=postgres_cluster.dsn(database), drop=drop)


@seed(SEED)
@SIMULATION
@given(
    flow_kind=st.sampled_from(["sync", "async"]), program=programs, plan=plans(), resume_by_run=st.booleans()
)
def test_sqlite_flows_survive_crashes_and_faults(
    sqlite_env: Env, flow_kind: str, program: list[list[Any]], plan: Plan, resume_by_run: bool
) -> None:
    simulate(sqlite_env, flow_kind, program, plan, resume_by_run)


@seed(SEED)
@settings(SIMULATION, max_examples=examples(40))
@given(
    flow_kind=st.sampled_from(["sync", "async"]), program=programs, plan=plans(), resume_by_run=st.booleans()
)
def test_memory_flows_survive_crashes_and_faults(
    memory_env: Env, flow_kind: str, program: list[list[Any]], plan: Plan, resume_by_run: bool
) -> None:
    simulate(memory_env, flow_kind, program, plan, resume_by_run)


@seed(SEED)
@settings(SIMULATION, max_examples=examples(6))
@given(
    flow_kind=st.sampled_from(["sync", "async"]),
    program=programs,
    plan=plans(postgres=True),
    resume_by_run=st.booleans(),
)
def test_postgres_flows_survive_crashes_faults_and_dropped_connections(
    postgres_env: Env, flow_kind: str, program: list[list[Any]], plan: Plan, resume_by_run: bool
) -> None:
    simulate(postgres_env, flow_kind, program, plan, resume_by_run)
