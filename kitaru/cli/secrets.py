"""``kitaru secrets``: values for ``kitaru.secret()``, encrypted in the active stack's state store."""

from __future__ import annotations

import sys

import click

from kitaru.cli._common import OUTPUT as _OUTPUT
from kitaru.cli._common import echo_json as _echo_json
from kitaru.cli._common import reports_errors as _reports_errors
from kitaru.cli._common import table as _table
from kitaru.cli._common import when as _when

__all__ = ["secrets"]


@click.group()
def secrets() -> None:
    """Secrets flows read with kitaru.secret(NAME).

    Values are encrypted (AES-256-GCM) with the key in KITARU_SECRETS_KEY before they reach the
    active stack's state store; make a key once with `kitaru secrets new-key`.
    """


@secrets.command("set", context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.argument("name")
@click.option(
    "--value",
    help="The value (visible in your shell's history and process list: prefer stdin).",
)
@_OUTPUT
@click.pass_context
@_reports_errors
def set_secret(ctx: click.Context, name: str, value: str | None, output: str) -> None:
    """Store secret NAME; the value is read from stdin (a prompt on a terminal) unless --value.

    Kitaru 0.18's form works too: `kitaru secrets set openai-creds --OPENAI_API_KEY=sk-...`
    (any number of --KEY=VALUE) stores the JSON object {"OPENAI_API_KEY": "sk-..."}, which a
    model alias's --secret and ImageSettings(secret_environment_from=...) read key by key."""
    import json

    from kitaru.secrets import set_secret as _set

    entries = _key_values(ctx.args)
    if entries:
        if value is not None:
            raise click.UsageError("give --value, or --KEY=VALUE entries (Kitaru 0.18's form), not both.")
        value = json.dumps(entries)
    elif value is None:
        if sys.stdin.isatty():
            value = click.prompt(f"value of {name}", hide_input=True)
        else:
            value = sys.stdin.read()
            value = value[:-1] if value.endswith("\n") else value  # `echo x |` adds one newline
    _set(name, value)
    if output == "json":
        _echo_json({"stored": name, "keys": list(entries)})
        return
    click.echo(f"stored secret {name}" + (f" ({', '.join(entries)})" if entries else ""))


def _key_values(args: list[str]) -> dict[str, str]:
    """``--KEY=VALUE`` (or ``--KEY VALUE``) arguments as a dict, in order; anything else is a
    usage error that shows the form."""
    entries: dict[str, str] = {}
    rest = list(args)
    while rest:
        arg = rest.pop(0)
        key, eq, val = arg[2:].partition("=")
        if not arg.startswith("--") or not key.strip():
            raise click.UsageError(f"unexpected argument {arg!r}: give secret entries as --KEY=VALUE.")
        if not eq:
            if not rest or rest[0].startswith("--"):
                raise click.UsageError(f"{arg} has no value: write {arg}=VALUE.")
            val = rest.pop(0)
        if key in entries:
            raise click.UsageError(f"--{key} is given twice.")
        entries[key] = val
    return entries


@secrets.command("get")
@click.argument("name")
@click.option("--reveal", is_flag=True, help="Print the value itself (otherwise it is masked).")
@_OUTPUT
@_reports_errors
def get_secret(name: str, reveal: bool, output: str) -> None:
    """Show secret NAME: masked unless --reveal (the value is decrypted either way, which checks the key)."""
    from kitaru.secrets import get_secret as _get

    value = _get(name)
    shown = value if reveal else "********"
    if output == "json":
        _echo_json({"name": name, "value": shown, "revealed": reveal})
        return
    click.echo(shown)


@secrets.command("list")
@_OUTPUT
@_reports_errors
def list_secrets(output: str) -> None:
    """List secret names (values stay encrypted; no key is needed)."""
    from kitaru.secrets import list_secrets as _list

    found = _list()
    if output == "json":
        _echo_json([{"name": s.name, "created_at": s.created_at, "updated_at": s.updated_at} for s in found])
        return
    if not found:
        click.echo("no secrets yet: `kitaru secrets set NAME` stores one.")
        return
    click.echo(
        _table(
            ["NAME", "CREATED", "UPDATED"],
            [[s.name, _when(s.created_at), _when(s.updated_at)] for s in found],
        )
    )


@secrets.command("delete")
@click.argument("name")
@_OUTPUT
@_reports_errors
def delete_secret(name: str, output: str) -> None:
    """Remove secret NAME."""
    from kitaru.secrets import delete_secret as _delete

    _delete(name)
    if output == "json":
        _echo_json({"deleted": name})
        return
    click.echo(f"deleted secret {name}")


@secrets.command("new-key")
def new_key() -> None:
    """Print a fresh random key: export KITARU_SECRETS_KEY=$(kitaru secrets new-key)."""
    from kitaru.secrets import new_key as _new_key

    click.echo(_new_key())
