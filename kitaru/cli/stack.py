"""``kitaru stack``: list, show, switch, create and delete the stacks declared in TOML.

``set``, ``create`` and ``delete`` write the user file (``$KITARU_CONFIG``, else
``$XDG_CONFIG_HOME/kitaru/config.toml``, else ``~/.config/kitaru/config.toml``), keeping its comments.
The configuration code is imported when a command runs, so ``kitaru --help`` stays fast.
"""

from __future__ import annotations

import re
from typing import Any

import click

from kitaru.cli._common import OUTPUT as _OUTPUT
from kitaru.cli._common import complete_stack_names as _complete_stacks
from kitaru.cli._common import echo_json as _echo_json
from kitaru.cli._common import reports_errors as _reports_errors
from kitaru.cli._common import table as _table

__all__ = ["stack"]

#: Keys whose values are shown masked.
_SECRET = re.compile(r"secret|password|token|account_key|connection_string|credentials_json", re.IGNORECASE)
_URI_PASSWORD = re.compile(r"^([a-z][a-z0-9+.-]*://[^/:@]*:)([^/@]*)(@)", re.IGNORECASE)


def _mask(key: str, value: Any) -> Any:
    if not isinstance(value, str):
        return value
    if _SECRET.search(key) and value and value != "default":
        return "***"
    return _URI_PASSWORD.sub(r"\1***\3", value)


@click.group()
def stack() -> None:
    """List, inspect and switch stacks (where flows run, state and artifacts live).

    Stacks are declared in TOML: the user file (see `kitaru stack list`) and an optional
    kitaru.toml in the project. KITARU_STACK=NAME overrides the active stack, and
    KITARU_STACK__<KEY>=VALUE one of its keys. stacks.example.toml documents every key.
    """


@stack.command("list")
@_OUTPUT
@_reports_errors
def list_stacks(output: str) -> None:
    """List the known stacks; the active one is marked with *, and a stack whose keys do not fit
    its type is marked invalid (`kitaru stack show NAME` says why)."""
    from kitaru.errors import KitaruConfigError
    from kitaru.stack_config import list_stacks as known
    from kitaru.stack_config import resolve_stack, user_config_path

    settings, rows = known()
    problems: dict[str, str] = {}
    for name, _type, _where in rows:
        try:
            resolve_stack(name)
        except KitaruConfigError as exc:
            problems[name] = str(exc)
    if output == "json":
        _echo_json(
            {
                "active_stack": settings.active_stack,
                "active_source": settings.active_source,
                "user_file": str(user_config_path()),
                "files": [str(c.path) for c in settings.files],
                "stacks": [
                    {
                        "name": n,
                        "type": t,
                        "active": n == settings.active_stack,
                        "declared_in": w,
                        "error": problems.get(n),
                    }
                    for n, t, w in rows
                ],
            }
        )
        return
    click.echo(
        _table(
            ["ACTIVE", "NAME", "TYPE", "DECLARED IN", "STATUS"],
            [
                ("*" if n == settings.active_stack else "", n, t, w, "invalid" if n in problems else "ok")
                for n, t, w in rows
            ],
        )
    )
    for name in problems:
        click.echo(f"stack {name} is invalid; see `kitaru stack show {name}`", err=True)
    click.echo(f"\nactive stack: {settings.active_stack} (from {settings.active_source})")
    if not settings.files:
        click.echo(f"no config file yet; `kitaru stack create` writes {user_config_path()}")


@stack.command("show")
@click.argument("name", required=False, shell_complete=_complete_stacks)
@_OUTPUT
@_reports_errors
def show_stack(name: str | None, output: str) -> None:
    """Show a stack's type and keys, and where each came from (default: the active stack)."""
    from kitaru.stack import load_stack
    from kitaru.stack_config import resolve_stack

    config = resolve_stack(name)
    keys: dict[str, dict[str, Any]] = {
        key: {"value": _mask(key, value), "source": config.sources[key]}
        for key, value in config.options.items()
    }
    built = load_stack(config.name)
    for key, attribute in (("state", "state_uri"), ("artifacts", "artifacts_uri")):
        if key not in keys and hasattr(built, attribute):
            keys[key] = {"value": _mask(key, getattr(built, attribute)), "source": "default"}
    if output == "json":
        _echo_json(
            {
                "name": config.name,
                "type": config.type,
                "active": config.active,
                "declared_in": config.declared_in,
                "keys": keys,
            }
        )
        return
    click.echo(f"stack     {config.name}{'  (active)' if config.active else ''}")
    click.echo(f"type      {config.type}  ({config.sources['type']})")
    click.echo(f"declared  {config.declared_in}")
    if keys:
        click.echo("")
        click.echo(_table(["KEY", "VALUE", "FROM"], [(k, v["value"], v["source"]) for k, v in keys.items()]))


@stack.command("set")
@click.argument("name", shell_complete=_complete_stacks)
@_OUTPUT
@_reports_errors
def set_stack(name: str, output: str) -> None:
    """Make NAME the active stack (written to the user file)."""
    from kitaru.stack_config import load_settings, set_active_stack

    path, rewritten = set_active_stack(name)
    settings = load_settings()
    if output == "json":
        _echo_json(
            {
                "active_stack": settings.active_stack,
                "active_source": settings.active_source,
                "file": str(path),
                "comments_kept": not rewritten,
            }
        )
        return
    click.echo(f"active stack is now {name} (in {path})")
    _note_rewrite(rewritten, path)
    if settings.active_stack != name:
        click.echo(
            f"note: {settings.active_source} still makes {settings.active_stack!r} active here; "
            f"unset it to use {name!r}.",
            err=True,
        )


def _parse_keys(args: tuple[str, ...]) -> dict[str, str]:
    """``--key value`` / ``--key=value`` pairs; dashes in keys become underscores."""
    out: dict[str, str] = {}
    items = list(args)
    while items:
        item = items.pop(0)
        if not item.startswith("--") or len(item) <= 2:
            raise click.UsageError(f"expected --KEY VALUE, got {item!r} (e.g. --region eu-west-1).")
        key, eq, value = item[2:].partition("=")
        if not eq:
            if not items or items[0].startswith("--"):
                raise click.UsageError(f"--{key} needs a value (e.g. --{key} VALUE).")
            value = items.pop(0)
        out[key.replace("-", "_")] = value
    return out


def _note_rewrite(rewritten: bool, path: Any) -> None:
    if rewritten:
        click.echo(
            f"note: {path} had a layout that could not be edited in place; it was rewritten "
            "without its comments.",
            err=True,
        )


@stack.command(
    "create",
    context_settings={"ignore_unknown_options": True, "allow_extra_args": False},
)
@click.argument("name")
@click.option("--type", "type_", required=True, help="The stack type: local, aws, gcp, azure, kubernetes...")
@click.option("--activate", is_flag=True, help="Also make it the active stack.")
@click.argument("keys", nargs=-1, type=click.UNPROCESSED)
@_OUTPUT
@_reports_errors
def create_stack(name: str, type_: str, activate: bool, keys: tuple[str, ...], output: str) -> None:
    """Declare stack NAME of type --type in the user file; further --KEY VALUE options set its keys.

    \b
    kitaru stack create dev --type local --state sqlite:////srv/kitaru/dev.db
    kitaru stack create prod --type aws --artifacts s3://bucket/kitaru --region eu-west-1
    """
    from kitaru.stack_config import create_stack as create
    from kitaru.stack_config import user_config_path

    config, rewritten = create(name, type_, _parse_keys(keys), activate=activate)
    if output == "json":
        _echo_json(
            {
                "name": config.name,
                "type": config.type,
                "keys": {k: _mask(k, v) for k, v in config.options.items()},
                "declared_in": config.declared_in,
                "active": config.active,
                "comments_kept": not rewritten,
            }
        )
        return
    click.echo(f"created stack {config.name} ({config.type}) in {config.declared_in}")
    if activate:
        click.echo(f"active stack is now {config.name}")
    else:
        click.echo(f"make it active with: kitaru stack set {config.name}")
    _note_rewrite(rewritten, user_config_path())


@stack.command("delete")
@click.argument("name", shell_complete=_complete_stacks)
@_OUTPUT
@_reports_errors
def delete_stack(name: str, output: str) -> None:
    """Remove stack NAME from the user file (not the active stack; its data is left alone)."""
    from kitaru.stack_config import delete_stack as delete

    path, rewritten = delete(name)
    if output == "json":
        _echo_json({"deleted": name, "file": str(path), "comments_kept": not rewritten})
        return
    click.echo(f"deleted stack {name} from {path} (its state and artifacts are untouched)")
    _note_rewrite(rewritten, path)
