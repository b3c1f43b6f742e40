"""``kitaru model``: aliases for ``kitaru.llm()`` models (kept in ``models.toml``)."""

from __future__ import annotations

import json

import click

from kitaru.cli._common import OUTPUT as _OUTPUT
from kitaru.cli._common import echo_json as _echo_json
from kitaru.cli._common import reports_errors as _reports_errors

__all__ = ["model"]


@click.group()
def model() -> None:
    """Name the models kitaru.llm() calls: aliases, base URLs, the default.

    A model is an alias or provider/model, with provider one of openai, anthropic, openrouter,
    ollama, vllm. Keys are read from the environment (OPENAI_API_KEY, ANTHROPIC_API_KEY, or an
    alias's --api-key-env) when a call is made.
    """


@model.command("register")
@click.argument("name")
@click.option("--model", "model_name", required=True, help="provider/model, e.g. openai/gpt-4o-mini.")
@click.option("--base-url", help="Endpoint for this alias (Ollama, vLLM, a proxy...).")
@click.option("--api-key-env", help="Environment variable that holds this alias's API key.")
@click.option("--input-cost", type=float, help="USD per million input tokens (for cost logs).")
@click.option("--output-cost", type=float, help="USD per million output tokens (for cost logs).")
@click.option("--default", "make_default", is_flag=True, help="Also make this the default model.")
@click.option(
    "--secret",
    "secret_name",
    help="A kitaru secret holding the API key (`kitaru secrets set NAME`), read when a call is "
    "made and the environment has no key.",
)
@_OUTPUT
@_reports_errors
def register_model(
    name: str,
    model_name: str,
    base_url: str | None,
    api_key_env: str | None,
    input_cost: float | None,
    output_cost: float | None,
    make_default: bool,
    secret_name: str | None,
    output: str,
) -> None:
    """Add or replace alias NAME."""
    from kitaru import _models

    alias = _models.register(
        name,
        model_name,
        base_url=base_url,
        api_key_env=api_key_env,
        input_cost=input_cost,
        output_cost=output_cost,
        default=make_default,
        secret=secret_name,
    )
    if output == "json":
        _echo_json({**alias.to_dict(), "default": make_default, "file": str(_models.models_file())})
        return
    click.echo(
        f"registered {name} -> {model_name}"
        + (" (default)" if make_default else "")
        + (f", key from secret {secret_name!r}" if secret_name else "")
        + f" in {_models.models_file()}"
    )


@model.command("list")
@click.option("-o", "--output", type=click.Choice(["text", "json"]), default="text", show_default=True)
@_reports_errors
def list_models(output: str) -> None:
    """List model aliases; the default is marked with *."""
    from kitaru import _models

    config = _models.load_config()
    rows = [alias.to_dict() | {"default": name == config.default} for name, alias in config.aliases.items()]
    if output == "json":
        click.echo(json.dumps({"default": config.default, "models": rows}, indent=2))
        return
    if not rows:
        click.echo("no model aliases yet: `kitaru model register fast --model openai/gpt-4o-mini --default`.")
        if config.default:
            click.echo(f"default: {config.default}")
        return
    headers = ["", "NAME", "MODEL", "BASE URL", "KEY"]
    cells = [
        [
            "*" if r["default"] else "",
            r["name"],
            r["model"],
            r["base_url"] or "-",
            r["api_key_env"]
            or r["api_key"]
            or (f"secret {r['secret']}" if r["secret"] else "(provider default)"),
        ]
        for r in rows
    ]
    widths = [max(len(str(row[i])) for row in [headers, *cells]) for i in range(len(headers))]
    for row in [headers, *cells]:
        click.echo("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    if config.default and config.default not in config.aliases:
        click.echo(f"default: {config.default}")


@model.command("remove")
@click.argument("name")
@_OUTPUT
@_reports_errors
def remove_model(name: str, output: str) -> None:
    """Remove alias NAME."""
    from kitaru import _models

    _models.remove(name)
    if output == "json":
        _echo_json({"removed": name, "file": str(_models.models_file())})
        return
    click.echo(f"removed {name}")


@model.command("default")
@click.argument("name")
@_OUTPUT
@_reports_errors
def default_model(name: str, output: str) -> None:
    """Make NAME (an alias or provider/model) the model kitaru.llm() uses when given none."""
    from kitaru import _models

    _models.set_default(name)
    if output == "json":
        _echo_json({"default": name, "file": str(_models.models_file())})
        return
    click.echo(f"default model: {name}")
