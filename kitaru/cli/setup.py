"""``kitaru info`` (what this machine would use, and whether it answers) and ``kitaru init`` (a
commented ``kitaru.toml`` for a project)."""

from __future__ import annotations

import platform
import re
import sys
from pathlib import Path
from typing import Any

import click

from kitaru.cli._common import OUTPUT as _OUTPUT
from kitaru.cli._common import echo_json as _echo_json
from kitaru.cli._common import reports_errors as _reports_errors

__all__ = ["info", "init", "local_status"]


@click.command()
@_OUTPUT
@_reports_errors
def info(output: str) -> None:
    """Version, the active stack and where that choice came from, the server logged in to, and
    whether the stack's state and artifact stores answer (exit code 4 when one does not)."""
    import kitaru
    from kitaru.config import home
    from kitaru.secrets import KEY_ENV

    report: dict[str, Any] = {
        "version": kitaru.__version__,
        "python": platform.python_version(),
        "home": str(home()),
        "secrets_key": "set" if _env_set(KEY_ENV) else "not set",
    }
    report["stack"] = _stack_report()
    report["server"] = _server_report()
    report["stores"] = _stores_report(report["stack"].get("name"))
    reachable = all(s.get("reachable") for s in report["stores"].values()) if report["stores"] else False
    if output == "json":
        _echo_json(report)
    else:
        _print_info(report)
    if not reachable:
        sys.exit(4)


_SECRET_NAME = re.compile(r"KEY|TOKEN|SECRET|PASSWORD|CREDENTIAL", re.IGNORECASE)
_URL_PASSWORD = re.compile(r"(://[^:/@]+:)[^@/]+@")


def environment() -> dict[str, str]:
    """The ``KITARU_*`` variables set in this environment, as ``kitaru status`` shows them: the
    value of one whose name says it is a key, token, secret or password is masked, and so is a
    password inside a URL (a state store DSN)."""
    import os

    shown = {}
    for name in sorted(os.environ):
        if not name.startswith("KITARU_"):
            continue
        value = os.environ[name]
        shown[name] = "****" if _SECRET_NAME.search(name) and value else _URL_PASSWORD.sub(r"\1****@", value)
    return shown


def local_status() -> tuple[dict[str, Any], str]:
    """What ``kitaru status`` says when no server is logged in to (what Kitaru 0.18's showed
    locally): version, connection, the active stack and where its state and artifacts live, the
    home directory, and the ``KITARU_*`` environment in effect."""
    import kitaru
    from kitaru.config import home

    stack = _stack_report()
    report: dict[str, Any] = {
        "server": None,
        "stack": stack["name"],
        "version": kitaru.__version__,
        "connection": "local",
        "stack_type": stack.get("type"),
        "stack_source": stack.get("source"),
        "home": str(home()),
        "state": None,
        "artifacts": None,
        "environment": environment(),
    }
    if stack.get("error"):
        report["stack_error"] = stack["error"]
    else:
        try:
            from kitaru.stack import load_stack

            loaded = load_stack(stack["name"])
            report["state"] = (
                _URL_PASSWORD.sub(r"\1****@", str(getattr(loaded, "state_uri", "") or "")) or None
            )
            report["artifacts"] = str(getattr(loaded, "artifacts_uri", "") or "") or None
        except Exception as exc:  # a broken stack is part of the report, not a crash
            report["stack_error"] = str(exc)
    rows = [
        ("kitaru", report["version"]),
        (
            "connection",
            "local: not logged in; commands use the stack directly (`kitaru login URL` for a server)",
        ),
        (
            "stack",
            f"{report['stack']}"
            + (f" ({report['stack_type']})" if report["stack_type"] else "")
            + (f", active from {report['stack_source']}" if report["stack_source"] else ""),
        ),
        ("home", report["home"]),
    ]
    if report["state"]:
        rows.append(("state", report["state"]))
    if report["artifacts"]:
        rows.append(("artifacts", report["artifacts"]))
    if report.get("stack_error"):
        rows.append(("error", report["stack_error"]))
    lines = [f"{label + ':':<12}{value}" for label, value in rows]
    if report["environment"]:
        lines.append("environment:")
        lines += [f"  {name}={value}" for name, value in report["environment"].items()]
    return report, "\n".join(lines)


def _env_set(name: str) -> bool:
    import os

    return bool(os.environ.get(name, "").strip())


def _stack_report() -> dict[str, Any]:
    from kitaru.errors import KitaruError
    from kitaru.stack_config import load_settings, resolve_stack

    settings = load_settings()
    out: dict[str, Any] = {"name": settings.active_stack, "source": settings.active_source}
    try:
        config = resolve_stack()
    except KitaruError as exc:
        out["error"] = str(exc)
        return out
    out.update(type=config.type, declared_in=config.declared_in)
    return out


def _server_report() -> dict[str, Any] | None:
    from kitaru.remote._login import current_login

    login = current_login()
    if login is None:
        return None
    from kitaru.remote.client import server_session

    try:
        who = server_session(login.url, login.key)
    except Exception as exc:
        return {"url": login.url, "source": login.source, "reachable": False, "error": str(exc)}
    return {"url": login.url, "source": login.source, "reachable": True, "as": who.get("name")}


def _stores_report(stack: str | None) -> dict[str, Any]:
    """Open the stack's stores read-only and make one cheap read of each."""
    from kitaru._engine.runtime import read_only_runtime
    from kitaru.errors import KitaruError

    try:
        runtime = read_only_runtime(stack)
    except (KitaruError, OSError) as exc:
        return {"state": {"reachable": False, "error": str(exc)}}
    stores: dict[str, Any] = {}
    state_name = type(runtime.astate).__name__
    try:
        runtime.state.list_executions(limit=1)
        stores["state"] = {"kind": state_name, "reachable": True}
    except Exception as exc:  # any failure to answer is the report, not a crash
        stores["state"] = {"kind": state_name, "reachable": False, "error": str(exc)}
    artifacts = runtime.artifacts
    try:
        artifacts.exists("kitaru-info-probe")
        stores["artifacts"] = {"uri": runtime.aartifacts.uri, "reachable": True}
    except Exception as exc:
        stores["artifacts"] = {"uri": runtime.aartifacts.uri, "reachable": False, "error": str(exc)}
    return stores


def _print_info(report: dict[str, Any]) -> None:
    stack = report["stack"]

    def row(label: str, text: str) -> str:
        # One column for every value: "artifacts:" is the longest label.
        return f"{label + ':':<11}{text}"

    lines = [
        f"kitaru {report['version']} (Python {report['python']})",
        row("home", report["home"]),
        row("stack", stack["name"])
        + (f" ({stack['type']})" if stack.get("type") else "")
        + f", active from {stack['source']}"
        + (
            f"; declared in {stack['declared_in']}"
            if stack.get("declared_in") not in (None, "default")
            else ""
        ),
    ]
    if stack.get("error"):
        lines.append(" " * 11 + f"error: {stack['error']}")
    server = report["server"]
    if server is None:
        lines.append(row("server", "not logged in (`kitaru login URL` uses a team server)"))
    else:
        state = "answers" if server["reachable"] else f"does not answer: {server.get('error')}"
        lines.append(row("server", f"{server['url']} (from {server['source']}), {state}"))
    for name, store in report["stores"].items():
        where = store.get("uri") or store.get("kind") or ""
        state = "reachable" if store.get("reachable") else f"NOT reachable: {store.get('error')}"
        lines.append(row(name, f"{where} {state}".strip()))
    lines.append(row("secrets", f"KITARU_SECRETS_KEY {report['secrets_key']}"))
    click.echo("\n".join(lines))


_TEMPLATE = """\
# kitaru project configuration: read by kitaru in this directory and below it.
# Settings here override the user file ({user_file});
# KITARU_STACK and KITARU_STACK__<KEY> in the environment override both, and
# kitaru.configure(stack=...) in code overrides all of them.
# Every key of every stack type: stacks.example.toml in kitaru's repository.

# The stack flows run on when nothing else says.
active_stack = "{stack}"

# The embedded stack: SQLite and files under kitaru's home ($KITARU_HOME) by default.
[stacks.{stack}]
type = "local"
# To keep this project's executions apart, give it its own database and artifacts:
# state = "sqlite:///{root}/.kitaru/kitaru.db"
# artifacts = "{root_uri}/.kitaru/artifacts"

# A shared stack: PostgreSQL for state, S3 for artifacts, each execution a Kubernetes Job.
# [stacks.prod]
# type = "kubernetes"
# state = "postgresql://kitaru@db.internal/kitaru"
# artifacts = "s3://acme-agents/kitaru"
# image = "registry.example.com/agents:1.0"
# # Secrets the Job reads from Kubernetes Secrets, never copied in plain text:
# secret_env = {{ KITARU_SECRETS_KEY = "kitaru-secrets:key", KITARU_STACK__STATE = "kitaru-db:dsn" }}
"""


@click.command()
@click.argument("directory", required=False, type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--stack", "stack_name", default="project", show_default=True, help="Name of the stack it declares."
)
@_OUTPUT
@_reports_errors
def init(directory: Path | None, stack_name: str, output: str) -> None:
    """Make DIRECTORY (default: the current one) a kitaru project: write a commented kitaru.toml
    there (never over an existing one). The directory must exist."""
    from kitaru.errors import KitaruConfigError
    from kitaru.stack_config import PROJECT_FILE, user_config_path

    root = (directory or Path.cwd()).resolve()
    if not root.is_dir():
        raise KitaruConfigError(f"{root} is not a directory; create it first, or give an existing one.")
    path = root / PROJECT_FILE
    if path.exists():
        raise KitaruConfigError(
            f"{path} exists already; kitaru init does not overwrite it. Edit it, or remove it and "
            "run `kitaru init` again."
        )
    import re

    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]*", stack_name):
        raise KitaruConfigError(f"invalid stack name {stack_name!r}: use letters, digits, '-' and '_'.")
    text = _TEMPLATE.format(
        stack=stack_name, user_file=user_config_path(), root=path.parent, root_uri=path.parent.as_uri()
    )
    try:
        with path.open("x", encoding="utf-8") as f:  # "x": a file made meanwhile is not overwritten
            f.write(text)
    except FileExistsError:
        raise KitaruConfigError(f"{path} exists already; kitaru init does not overwrite it.") from None
    if output == "json":
        _echo_json({"path": str(root), "file": str(path), "stack": stack_name})
        return
    click.echo(f"wrote {path}: stack {stack_name!r} is active in {root} and below it.")
    click.echo("check it with: kitaru status")
