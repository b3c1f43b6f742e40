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
