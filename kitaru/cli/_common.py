"""What every ``kitaru`` command shares: the output option, error reporting, tables."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Sequence
from functools import wraps
from typing import Any, TypeVar

import click

__all__ = [
    "OUTPUT",
    "client",
    "complete_execution_ids",
    "complete_stack_names",
    "echo_json",
    "first_line",
    "reports_errors",
    "table",
    "when",
]

F = TypeVar("F", bound=Callable[..., Any])

OUTPUT = click.option(
    "-o",
    "--output",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="Output format.",
)


def client(*, read_only: bool = False) -> Any:
    """The client commands use; ``read_only`` for commands that only look (they then work on a
    read-only home or a full disk: nothing is written, not even a migration)."""
    from kitaru.client import KitaruClient

    return KitaruClient(read_only=read_only)


# Shell completion: the store and the config are read only when the shell asks for candidates, and
# a failure (no store yet, a broken config) completes nothing rather than printing a traceback
# into the user's command line.
_COMPLETION_LIMIT = 50


def complete_execution_ids(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[Any]:
    """Execution ids starting with what was typed, newest first, each with its flow and status."""
    from click.shell_completion import CompletionItem

    try:
        state = client()._runtime.state
        if incomplete:
            ids = state.match_execution_ids(incomplete, limit=_COMPLETION_LIMIT)
            records = [r for r in (state.get_execution(i) for i in ids) if r is not None]
            # Prefix matches come in id order, which is not time order for a chosen id.
            records.sort(key=lambda r: (r.created_at, r.id), reverse=True)
        else:
            records = state.list_executions(limit=_COMPLETION_LIMIT)
    except Exception:
        return []
    return [
        CompletionItem(r.id, help=f"{r.flow} ({r.status})") for r in records if r.id.startswith(incomplete)
    ]


def complete_stack_names(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[Any]:
    """Known stack names (the built-in ``local`` and every declared one) starting with what was typed."""
    from click.shell_completion import CompletionItem

    try:
        from kitaru.stack_config import load_settings

        names = load_settings().known()
    except Exception:
        return []
    return [CompletionItem(name) for name in names if name.startswith(incomplete)]


def reports_errors(fn: F) -> F:
    """Turn kitaru errors into a one-line message on stderr and the error's exit code."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from kitaru.errors import KitaruError

        try:
            return fn(*args, **kwargs)
        except KitaruError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(exc.exit_code)

    return wrapper  # type: ignore[return-value]


def when(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if ts else "-"


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [
        [str(c) for c in headers],
        *[[("-" if c is None else str(c)) for c in r] for r in rows],
    ]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def first_line(text: str | None, width: int = 60) -> str | None:
    if not text:
        return None
    line = text.strip().splitlines()[0]
    return line if len(line) <= width and "\n" not in text.strip() else line[:width] + " ..."


def echo_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, default=str))
