"""``kitaru server start`` and ``kitaru server keys``; ``kitaru login``, ``logout`` and ``status``.

Nothing heavy is imported until a command runs (FastAPI and uvicorn only by ``server start``)."""

from __future__ import annotations

from typing import Any

import click

from kitaru.cli._common import OUTPUT, echo_json, reports_errors, table, when

__all__ = ["login", "logout", "server", "status"]

_SCOPES = ("read", "answer", "invoke", "runner", "admin")


@click.group()
def server() -> None:
    """Run the team server and manage its API keys."""


@server.command("start")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8270, show_default=True, type=int, help="Port to listen on.")
@click.option("--stack", "stack_name", help="Stack whose executions it serves (default: the active one).")
@click.option(
    "--state", "state_uri", help="State store URI (postgresql://... for a team; sqlite:///... for one user)."
)
@click.option("--workers", default=1, show_default=True, type=click.IntRange(1), help="Server processes.")
@click.option(
    "--access-log/--no-access-log",
    default=False,
    show_default=True,
    help="Log one line per HTTP request (method, path, status). Off by default: a proxy in front "
    "usually logs requests, and the line costs a busy server a fifth of an answer's time.",
)
@reports_errors
def start(
    host: str, port: int, stack_name: str | None, state_uri: str | None, workers: int, access_log: bool
) -> None:
    """Serve the HTTP API (OpenAPI docs at /docs) until interrupted."""
    from kitaru.server import serve

    serve(host, port, stack=stack_name, state=state_uri, workers=workers, access_log=access_log)


def _key_store(stack_name: str | None, state_uri: str | None) -> Any:
    from kitaru.errors import KitaruConfigError
    from kitaru.stack import load_stack
    from kitaru.store import KeyStore

    loaded = load_stack(stack_name, **({"state": state_uri} if state_uri else {}))
    store = loaded.state_store()
    if not isinstance(store, KeyStore):
        raise KitaruConfigError(
            f"the state store {type(store).__name__} keeps no API keys; manage keys with --state "
            "pointing at the server's own database."
        )
    return store


_STATE = click.option(
    "--state", "state_uri", help="The server's state store URI (default: the active stack's)."
)
_STACK = click.option("--stack", "stack_name", help="Stack whose state store holds the keys.")


@server.group()
def keys() -> None:
    """Create, list and revoke API keys (kept hashed in the state store)."""


@keys.command("create")
@click.argument("name")
@click.option(
    "--scope",
    "scopes",
    multiple=True,
    required=True,
    type=click.Choice(_SCOPES),
    help="What the key may do (repeat for several): read, answer, invoke, runner, admin.",
)
@_STACK
@_STATE
@OUTPUT
@reports_errors
def create_key(
    name: str, scopes: tuple[str, ...], stack_name: str | None, state_uri: str | None, output: str
) -> None:
    """Create a key; it is shown once, here, and never again."""
    from kitaru.server._auth import new_key
    from kitaru.store import sync_view

    key, record = new_key(name, sorted(set(scopes)))
    store = sync_view(_key_store(stack_name, state_uri))
    try:
        store.create_api_key(record)
    finally:
        store.close()
    if output == "json":
        echo_json({"name": name, "id": record.id, "scopes": record.scopes, "key": key})
        return
    click.echo(key)
    click.echo(
        f"API key {name!r} ({', '.join(record.scopes)}). It is shown only now: store it, e.g. "
        f"`kitaru login URL --key {key[:14]}...`.",
        err=True,
    )


@keys.command("list")
@_STACK
@_STATE
@OUTPUT
@reports_errors
def list_keys(stack_name: str | None, state_uri: str | None, output: str) -> None:
    """Every key's name, scopes and state (never the key)."""
    from kitaru.store import sync_view

    store = sync_view(_key_store(stack_name, state_uri))
    try:
        found = store.list_api_keys()
    finally:
        store.close()
    rows = [
        {
            "name": k.name,
            "id": k.id,
            "scopes": k.scopes,
            "created_at": k.created_at,
            "revoked_at": k.revoked_at,
        }
        for k in found
    ]
    if output == "json":
        echo_json(rows)
        return
    if not rows:
        click.echo("no API keys yet: `kitaru server keys create NAME --scope read`.")
        return
    click.echo(
        table(
            ["NAME", "ID", "SCOPES", "CREATED", "REVOKED"],
            [
                (r["name"], r["id"], ",".join(r["scopes"]), when(r["created_at"]), when(r["revoked_at"]))
                for r in rows
            ],
        )
    )


@keys.command("revoke")
@click.argument("name")
@_STACK
@_STATE
@OUTPUT
@reports_errors
def revoke_key(name: str, stack_name: str | None, state_uri: str | None, output: str) -> None:
    """Revoke a key: requests and sessions made with it are refused from now on."""
    from kitaru.store import sync_view

    store = sync_view(_key_store(stack_name, state_uri))
    try:
        store.revoke_api_key(name)
    finally:
        store.close()
    if output == "json":
        echo_json({"revoked": name})
        return
    click.echo(f"API key {name!r} revoked.")


@click.command()
@click.argument("url")
@click.option("--key", required=True, help="An API key (from `kitaru server keys create`).")
@OUTPUT
@reports_errors
def login(url: str, key: str, output: str) -> None:
    """Make the CLI and KitaruClient() talk to the server at URL (saved 0600 in kitaru's config dir)."""
    from kitaru.remote._login import save_login
    from kitaru.remote.client import server_session

    who = server_session(url, key)
    path = save_login(url, key)
    if output == "json":
        # The shape `kitaru status -o json` reports once logged in, plus where the login was saved.
        echo_json(
            {"server": url.rstrip("/"), "name": who["name"], "scopes": who["scopes"], "saved_in": str(path)}
        )
        return
    click.echo(
        f"logged in to {url.rstrip('/')} as {who['name']} ({', '.join(who['scopes'])}); saved in {path}."
    )


@click.command()
@OUTPUT
@reports_errors
def logout(output: str) -> None:
    """Forget the saved server login: commands use the active stack again."""
    from kitaru.remote._login import forget_login

    forgot = forget_login()
    if output == "json":
        echo_json({"logged_out": forgot})
        return
    click.echo("logged out." if forgot else "not logged in.")


@click.command()
@OUTPUT
@reports_errors
def status(output: str) -> None:
    """Where commands go: the server logged in to (and whether it answers), or the active stack
    with its stores, the home directory and the KITARU_* environment (secrets masked)."""
    from kitaru.remote._login import current_login

    current = current_login()
    if current is None:
        from kitaru.cli.setup import local_status

        info, text = local_status()
    else:
        from kitaru.remote.client import server_session

        try:
            who = server_session(current.url, current.key)
            info = {"server": current.url, "name": who["name"], "scopes": who["scopes"], "reachable": True}
            scopes = ", ".join(who["scopes"])
            text = f"logged in to {current.url} as {who['name']} ({scopes}); from {current.source}."
        except Exception as exc:
            info = {"server": current.url, "reachable": False, "error": str(exc)}
            text = f"logged in to {current.url} (from {current.source}), but it does not answer: {exc}"
    if output == "json":
        echo_json(info)
    else:
        click.echo(text)
