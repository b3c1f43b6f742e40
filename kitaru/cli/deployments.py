"""``kitaru deployments``: versions, tags, promote/rollback and invoke (the engine is imported only
when a command runs)."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import click

from kitaru.cli._common import OUTPUT, client, echo_json, reports_errors, table, when

__all__ = ["deployments"]


@click.group()
def deployments() -> None:
    """Deployed versions of flows and the tags that point at them.

    `flow.deploy()` freezes a flow into version N; `invoke FLOW@TAG` runs a version's code.
    """


def _move_dict(move: Any) -> dict[str, Any]:
    return dataclasses.asdict(move)


def _report_move(move: Any, output: str) -> None:
    if output == "json":
        echo_json(_move_dict(move))
        return
    if move.version is None:
        click.echo(f"{move.flow}@{move.tag} removed (was version {move.previous}).")
        return
    weight = f" with weight {move.weight}%" if move.weight is not None else ""
    was = f" (was {move.previous})" if move.previous is not None else ""
    click.echo(f"{move.flow}@{move.tag} -> version {move.version}{weight}{was}.")


@deployments.command("list")
@click.argument("flow", required=False)
@OUTPUT
@reports_errors
def list_deployments(flow: str | None, output: str) -> None:
    """List versions (of FLOW, or of every flow) and their tags."""
    c = client(read_only=True)
    found = c.deployments.list(flow)
    if output == "json":
        tags = c.deployments.tags(flow)
        echo_json({"versions": [d.to_dict() for d in found], "tags": [dataclasses.asdict(t) for t in tags]})
        return
    if not found:
        click.echo(
            f"flow {flow!r} has no deployed versions." if flow else "nothing deployed yet: `flow.deploy()`."
        )
        return
    weights = {(t.flow, t.tag): t.weight for t in c.deployments.tags(flow)}

    def tags_of(d: Any) -> str:
        return ", ".join(
            t + (f" ({weights[(d.flow, t)]}%)" if weights.get((d.flow, t)) is not None else "")
            for t in d.tags
        )

    rows = [
        (d.flow, d.version, tags_of(d) or None, when(d.created_at), d.created_by, d.message) for d in found
    ]
    click.echo(table(["FLOW", "VERSION", "TAGS", "DEPLOYED", "BY", "MESSAGE"], rows))


@deployments.command("show")
@click.argument("ref")
@OUTPUT
@reports_errors
def show_deployment(ref: str, output: str) -> None:
    """Show FLOW (its default version), FLOW@TAG or FLOW:N."""
    d = client(read_only=True).deployments.get(ref)
    if output == "json":
        echo_json(d.to_dict())
        return
    lock = (d.requirements or {}).get("lock") or {}
    lines = [
        f"flow       {d.flow}",
        f"version    {d.version}",
        f"tags       {', '.join(d.tags) or '-'}",
        f"target     {d.target}",
        f"archive    {d.archive_key}",
        f"image      {d.image or '-'}",
        f"stack      {d.stack or '-'}",
        f"lock       {lock.get('path', '-')} {lock.get('sha256', '')}".rstrip(),
        f"python     {(d.requirements or {}).get('python') or '-'}",
        f"deployed   {when(d.created_at)} by {d.created_by}",
    ]
    if d.message:
        lines.append(f"message    {d.message}")
    click.echo("\n".join(lines))


@deployments.command("history")
@click.argument("flow")
@click.argument("tag", required=False)
@OUTPUT
@reports_errors
def tag_history(flow: str, tag: str | None, output: str) -> None:
    """Every move of FLOW's tags (of TAG only, when given), oldest first."""
    moves = client(read_only=True).deployments.history(flow, tag)
    if output == "json":
        echo_json([_move_dict(m) for m in moves])
        return
    rows = [(when(m.ts), m.tag, m.previous, m.version, m.weight, m.action, m.who) for m in moves]
    click.echo(table(["WHEN", "TAG", "FROM", "TO", "WEIGHT", "ACTION", "WHO"], rows))


@deployments.command("tag")
@click.argument("flow")
@click.argument("tag")
@click.argument("version", type=int)
@click.option("--weight", type=int, help="Canary: this % of executions invoked on default go to TAG.")
@OUTPUT
@reports_errors
def tag_version(flow: str, tag: str, version: int, weight: int | None, output: str) -> None:
    """Point TAG of FLOW at VERSION (atomically, recorded in the history)."""
    _report_move(client().deployments.tag(flow, tag, version, weight=weight), output)


@deployments.command("untag")
@click.argument("flow")
@click.argument("tag")
@OUTPUT
@reports_errors
def untag(flow: str, tag: str, output: str) -> None:
    """Remove TAG of FLOW (not default)."""
    _report_move(client().deployments.untag(flow, tag), output)


@deployments.command("promote")
@click.argument("flow")
@click.argument("tag")
@OUTPUT
@reports_errors
def promote(flow: str, tag: str, output: str) -> None:
    """Move FLOW's default tag to TAG's version."""
    _report_move(client().deployments.promote(flow, tag), output)


@deployments.command("rollback")
@click.argument("flow")
@click.option("--to", "to", type=int, help="The version to go back to (default: the one before).")
@OUTPUT
@reports_errors
def rollback(flow: str, to: int | None, output: str) -> None:
    """Move FLOW's default tag back to the version it pointed at before (or --to N)."""
    _report_move(client().deployments.rollback(flow, to=to), output)


@deployments.command("invoke")
@click.argument("ref")
@click.option("--args", "args_json", default="{}", help="The flow's arguments: a JSON object by name.")
@click.option("--id", "execution_id", help="Idempotency key: the execution's id.")
@OUTPUT
@reports_errors
def invoke(ref: str, args_json: str, execution_id: str | None, output: str) -> None:
    """Run the version FLOW@TAG points at (default: FLOW@default, canaries by weight)."""
    from kitaru.cli import _report_handle

    try:
        args = json.loads(args_json)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"not JSON: {exc}", param_hint="--args") from None
    if not isinstance(args, dict):
        raise click.BadParameter(
            'must be a JSON object of parameter names, e.g. \'{"topic": "x"}\'.', param_hint="--args"
        )
    c = client()
    handle = c.deployments.invoke(ref, execution_id=execution_id, **args)
    execution = c.executions.get(handle.exec_id)
    if output == "text":
        # Which version ran comes first: the report below exits non-zero when the execution failed.
        click.echo(f"invoked version {execution.metadata['deployment']['version']} of {execution.flow}")
    _report_handle(c, handle.exec_id, output)
    if output == "text":
        if execution.status == "completed" and execution.result_artifact:
            click.echo(f"result: {c.artifacts.preview(execution.result_artifact)}")
