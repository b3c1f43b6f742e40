"""``kitaru mcp``: serve the MCP tools over stdio (the SDK is imported only when it runs)."""

from __future__ import annotations

import click

from kitaru.cli._common import complete_stack_names as _complete_stacks
from kitaru.cli._common import reports_errors as _reports_errors

__all__ = ["mcp"]


@click.command("mcp")
@click.option("--stack", shell_complete=_complete_stacks, help="Serve this stack (default: the active one).")
@click.option(
    "--read-only",
    is_flag=True,
    help="Offer only the tools that look (no answer_wait, no replay_execution).",
)
@_reports_errors
def mcp(stack: str | None, read_only: bool) -> None:
    """Serve kitaru to agent tools over MCP (stdio).

    Tools: list_executions, get_execution, pending_waits, answer_wait, replay_execution,
    list_artifacts, artifact_preview. Answers are checked as `kitaru executions input` checks
    them; artifacts are previewed, never unpickled. Register it with your agent as the command
    `kitaru mcp`.
    """
    from kitaru.mcp import serve

    serve(stack=stack, read_only=read_only)
