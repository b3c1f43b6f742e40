"""``kitaru cache``: the checkpoint cache (``@checkpoint(cache=True)``) of the active stack, or of
the server after ``kitaru login``."""

from __future__ import annotations

import click

from kitaru.cli._common import OUTPUT as _OUTPUT
from kitaru.cli._common import echo_json as _echo_json
from kitaru.cli._common import reports_errors as _reports_errors
from kitaru.cli._common import table as _table

__all__ = ["cache"]


def _catalog() -> object:
    from kitaru._engine.runtime import get_runtime
    from kitaru.errors import KitaruUsageError
    from kitaru.remote._login import current_login
    from kitaru.store import CatalogStore

    # After `kitaru login` the cache is the server's: the one its workers fill and read.
    login = current_login()
    if login is not None:
        from kitaru.remote.client import shared_client

        return shared_client(login.url, login.key).cache
    runtime = get_runtime()
    if not isinstance(runtime.astate, CatalogStore):
        raise KitaruUsageError(
            "this stack's state store keeps no checkpoint cache (its checkpoints run uncached); "
            "nothing to show or clear."
        )
    return runtime.state


@click.group()
def cache() -> None:
    """Show and clear the checkpoint cache."""


@cache.command("list")
@click.option("--flow", help="Only this flow's entries.")
@_OUTPUT
@_reports_errors
def list_entries(flow: str | None, output: str) -> None:
    """List cache entries, oldest first."""
    entries = _catalog().list_cache_entries(flow)  # type: ignore[attr-defined]
    if output == "json":
        from dataclasses import asdict

        _echo_json([asdict(e) for e in entries])
        return
    if not entries:
        click.echo("the checkpoint cache is empty.")
        return
    rows = [(e.flow, e.checkpoint, e.exec_id, e.call_id, e.artifact_id) for e in entries]
    click.echo(_table(["FLOW", "CHECKPOINT", "EXECUTION", "CALL", "ARTIFACT"], rows))


@cache.command("clear")
@click.option("--flow", help="Only this flow's entries (default: every flow's).")
@_OUTPUT
@_reports_errors
def clear(flow: str | None, output: str) -> None:
    """Forget cached checkpoint outputs (the artifacts stay: executions still reference them)."""
    removed = _catalog().clear_cache(flow)  # type: ignore[attr-defined]
    if output == "json":
        _echo_json({"removed": removed, "flow": flow})
        return
    scope = f" of flow {flow!r}" if flow else ""
    click.echo(f"removed {removed} cache entries{scope}.")
