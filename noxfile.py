"""Developer sessions: tests, lint, typecheck, bench. Environments are built with uv."""

from __future__ import annotations

import nox

nox.options.default_venv_backend = "uv"
nox.options.sessions = ["tests", "lint", "typecheck"]


def _sync(session: nox.Session) -> None:
    # Install the workspace exactly as locked into the session's environment.
    session.run_install(
        "uv",
        "sync",
        "--locked",
        f"--python={session.virtualenv.location}",
        env={"UV_PROJECT_ENVIRONMENT": session.virtualenv.location},
    )


@nox.session
def tests(session: nox.Session) -> None:
    """The whole test suite."""
    _sync(session)
    session.run("pytest", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff: lint rules and formatting."""
    _sync(session)
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy, strict, on the kitaru package."""
    _sync(session)
    session.run("mypy")


@nox.session
def bench(session: nox.Session) -> None:
    """The benchmark suite, with DBOS and LangGraph each in its own environment."""
    _sync(session)
    session.run("python", "benchmarks/run.py", *session.posargs)


@nox.session
def simulate(session: nox.Session) -> None:
    """The simulation suite's long profile: many more generated flows, crashes and store faults.

    ``KITARU_SIM_EXAMPLES`` sets the number of flows per test (default 300 here); a failure prints
    its seed, and ``KITARU_SIM_SEED=<seed> nox -s simulate`` replays it. Add
    ``-- --hypothesis-show-statistics`` for how many processes crashed and store errors surfaced.
    """
    _sync(session)
    env = {"KITARU_SIM_PROFILE": "long"}
    session.run("pytest", "-q", "-p", "no:cacheprovider", "tests/sim", *session.posargs, env=env)


# Mutation testing: each module that carries a promise, with the tests that pin it down. A module's
# run copies the tree into .mutmut/<module>/mutants and runs only these tests against each mutant.
_MUTATE: dict[str, list[str]] = {
    "kitaru/diff.py": [
        "tests/engine/test_replay.py",
        "tests/cli/test_cli_replay.py",
        "tests/engine/test_diff.py",
    ],
    "kitaru/lineage.py": ["tests/engine/test_lineage.py"],
    "kitaru/serialization.py": ["tests/test_serialization.py"],
    "kitaru/store/_rules.py": [
        "tests/store/test_rules.py",
        "tests/store/test_memory_store.py",
        "tests/store/test_final_messages.py",
        "tests/store/test_lease_holder.py",
        "tests/deploy/test_tag_rules.py",
        "tests/deploy/test_deploy.py",
        "tests/deploy/test_routing.py",
        "tests/deploy/test_concurrent_tags.py",
    ],
    "kitaru/_engine/wait_schema.py": ["tests/engine/test_waits.py"],
    "kitaru/_engine/waits.py": [
        "tests/engine/test_waits.py",
        "tests/engine/test_wait_async.py",
        "tests/engine/test_waits_abort_pending.py",
    ],
    "kitaru/_engine/replay.py": [
        "tests/engine/test_replay.py",
        "tests/engine/test_replay_plan.py",
        "tests/cli/test_cli_replay.py",
    ],
    "kitaru/store/memory.py": ["tests/store/test_memory_store.py"],
    # Opening (read-only, private files) has its own tests beside the conformance run.
    "kitaru/store/sqlite/*.py": [
        "tests/store/test_sqlite_store.py",
        "tests/store/test_sqlite_read_only.py",
        "tests/store/test_private_files.py",
    ],
    # A checkpoint's duties reach past flows: the cache, retries and options, its logs, lineage and
    # replay, the heartbeat's note of attempts, cancelling async calls.
    "kitaru/_engine/checkpoint.py": [
        "tests/engine/test_flows.py",
        "tests/engine/test_flow_edges.py",
        "tests/engine/test_checkpoint_calls.py",
        "tests/engine/test_cache.py",
        "tests/engine/test_flow_options.py",
        "tests/test_execution_options.py",
        "tests/engine/test_logs.py",
        "tests/engine/test_lineage.py",
        "tests/engine/test_replay.py",
        "tests/engine/test_heartbeat.py",
        "tests/engine/test_interrupted_attempts.py",
        "tests/engine/test_cancel.py",
        "tests/engine/test_wait_async.py",
    ],
    "kitaru/_engine/*.py": ["tests/engine", "tests/sim"],
}


def _toml_value(value: object) -> str:
    import json

    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return json.dumps(value)  # strings and numbers: JSON's forms are valid TOML


@nox.session
def mutate(session: nox.Session) -> None:
    """mutmut over the modules that carry kitaru's promises, one module at a time.

    ``nox -s mutate -- kitaru/diff.py`` runs one module (a key of ``_MUTATE``); without arguments
    every module runs in turn. Results stay in ``.mutmut/<module>/``: ``mutmut results`` and
    ``mutmut show <name>`` there list and show the survivors. Run it at low priority on a shared
    machine (``nice -n 19 nox -s mutate -- ...``).
    """
    import tomllib
    from pathlib import Path

    _sync(session)
    root = Path(__file__).resolve().parent
    project = tomllib.loads((root / "pyproject.toml").read_text())
    pytest_options = project["tool"]["pytest"]["ini_options"]
    base = project["tool"]["mutmut"]
    modules = session.posargs or list(_MUTATE)
    for module in modules:
        if module not in _MUTATE:
            session.error(f"no mutation profile for {module}; choose one of: {', '.join(_MUTATE)}")
        tests = [t for t in _MUTATE[module] if (root / t).exists()]
        work = root / ".mutmut" / module.replace("/", "_").replace("*", "all").removesuffix(".py")
        work.mkdir(parents=True, exist_ok=True)
        for name in ("kitaru", "tests"):
            link = work / name
            if not link.exists():
                link.symlink_to(root / name)
        settings = {**base, "only_mutate": [module], "pytest_add_cli_args_test_selection": tests}
        lines = ["[tool.pytest.ini_options]"]
        lines += [f"{k} = {_toml_value(v)}" for k, v in pytest_options.items()]
        lines += ["", "[tool.mutmut]"]
        lines += [f"{k} = {_toml_value(v)}" for k, v in settings.items()]
        (work / "pyproject.toml").write_text("\n".join(lines) + "\n")
        with session.chdir(work):
            session.run("mutmut", "run", "--max-children", "1", external=True)
            session.run("mutmut", "results", external=True)
