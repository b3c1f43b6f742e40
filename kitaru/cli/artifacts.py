"""``kitaru artifacts``: list an execution's artifacts and fetch one (the engine is imported only
when a command runs)."""

from __future__ import annotations

import json
import os

import click

from kitaru.cli._common import OUTPUT as _OUTPUT
from kitaru.cli._common import client as _client
from kitaru.cli._common import complete_execution_ids as _complete_ids
from kitaru.cli._common import echo_json as _echo_json
from kitaru.cli._common import reports_errors as _reports_errors
from kitaru.cli._common import table as _table

__all__ = ["artifacts"]


@click.group()
def artifacts() -> None:
    """List and fetch artifacts."""


@artifacts.command("list")
@click.argument("exec_id", required=False, shell_complete=_complete_ids)
@click.option("--name", help="Only artifacts with this name.")
@click.option("--type", "type_", help="Only artifacts of this type (output, input, result...).")
@click.option("--tag", help="Artifacts saved with this tag (kitaru.save(..., tags=[...])), any execution.")
@_OUTPUT
@_reports_errors
def list_artifacts(
    exec_id: str | None, name: str | None, type_: str | None, tag: str | None, output: str
) -> None:
    """List an execution's artifacts, or with --tag those of every execution carrying the tag."""
    if exec_id is None and tag is None:
        raise click.UsageError("name an execution (kitaru artifacts list EXEC_ID) or a --tag.")
    found = _client(read_only=True).artifacts.list(exec_id, name=name, type=type_, tag=tag)
    if output == "json":
        _echo_json([a.to_dict() for a in found])
        return
    click.echo(
        _table(
            ["ID", "EXECUTION", "NAME", "VERSION", "TYPE", "DATA TYPE", "SIZE", "TAGS", "HASH"],
            [
                (
                    a.id,
                    a.exec_id,
                    a.name,
                    a.version,
                    a.type,
                    a.data_type,
                    a.size,
                    ",".join(a.tags),
                    a.content_hash[:19],
                )
                for a in found
            ],
        )
    )


@artifacts.command("get")
@click.argument("artifact_id")
@click.option(
    "--out",
    type=click.Path(dir_okay=False),
    help="Write the stored bytes here, verified against their recorded hash.",
)
@click.option(
    "--load",
    is_flag=True,
    help="Load the value with its serializer and show it. Pickled values are unpickled.",
)
@_OUTPUT
@_reports_errors
def get_artifact(artifact_id: str, out: str | None, load: bool, output: str) -> None:
    """Show an artifact, or write its bytes to a file with --out.

    Nothing is unpickled unless you ask with --load: JSON, pydantic and dataclass artifacts show
    as JSON, others are described (serializer, type, size, hash). Bytes are always checked
    against the hash the state store recorded.
    """
    from kitaru.errors import KitaruUsageError

    if out and load:
        raise KitaruUsageError("--out writes the stored bytes and --load shows the value: use one of them.")
    artifact = _client(read_only=True).artifacts.get(artifact_id)
    if out:
        from kitaru._progress import Progress

        # A bar on a terminal for big downloads; small ones finish before it could be read.
        with Progress(f"{artifact.name} v{artifact.version}", total=artifact.size, min_total=1 << 20) as bar:
            size = artifact.write_to(out, progress=bar.advance)
        target = os.path.abspath(out)
        if output == "json":
            _echo_json({**artifact.to_dict(), "written_to": target})
        else:
            click.echo(f"wrote {size} bytes to {target}")
        return
    header = (
        f"{artifact.name} v{artifact.version} ({artifact.type}, {artifact.data_type}, "
        f"{artifact.size} bytes, {artifact.content_hash})"
    )
    if load:
        value = artifact.load()
        if output == "json":
            _echo_json({**artifact.to_dict(), "view": "loaded", "value": value})
        else:
            click.echo(header)
            click.echo(value if isinstance(value, str) else repr(value))
        return
    if artifact.is_json:
        value = artifact.as_json()
        if output == "json":
            _echo_json({**artifact.to_dict(), "view": "json", "value": value})
        else:
            click.echo(header)
            click.echo(json.dumps(value, indent=2, ensure_ascii=False))
        return
    # Not JSON: describe it from the state store's record alone. Loading could unpickle, which
    # runs whatever code the bytes name, so it waits until the user asks.
    how = "bytes" if artifact.serializer == "bytes" else f"a {artifact.data_type} value"
    hint = (
        f"write the bytes with `kitaru artifacts get {artifact.id} --out FILE`"
        if artifact.serializer == "bytes"
        else f"show the value with `kitaru artifacts get {artifact.id} --load`"
        + (" (this unpickles it)" if artifact.serializer == "cloudpickle" else "")
        + ", or write the stored bytes with `--out FILE`"
    )
    if output == "json":
        _echo_json({**artifact.to_dict(), "view": "none", "value": None, "hint": hint})
        return
    click.echo(header)
    click.echo(f"{how}, stored by the {artifact.serializer!r} serializer; not shown: {hint}.")
