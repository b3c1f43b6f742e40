"""The ``kitaru`` command line. Subcommands import the engine only when they run, so that
``kitaru --help`` stays fast."""

from __future__ import annotations

import click

from kitaru.cli.artifacts import artifacts as _artifacts_group
from kitaru.cli.cache import cache as _cache_group
from kitaru.cli.deployments import deployments as _deployments_group

# `kitaru deployments invoke` reports the execution it started as `executions` commands do.
from kitaru.cli.executions import _report_handle as _report_handle
from kitaru.cli.executions import executions as _executions_group
from kitaru.cli.mcp import mcp as _mcp
from kitaru.cli.model import model as _model_group
from kitaru.cli.secrets import secrets as _secrets_group
from kitaru.cli.server import login as _login
from kitaru.cli.server import logout as _logout
from kitaru.cli.server import server as _server_group
from kitaru.cli.server import status as _status
from kitaru.cli.setup import info as _info
from kitaru.cli.setup import init as _init
from kitaru.cli.stack import stack as _stack_group
from kitaru.cli.worker import worker as _worker_group

__all__ = ["main"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="kitaru")
def main() -> None:
    """kitaru: durable execution for Python agents.

    Inspect executions, answer their waits, resume, retry and cancel them.
    State lives in the active stack (default: SQLite and files under KITARU_HOME).
    """


@main.command()
@click.argument("shell", type=click.Choice(["bash", "zsh", "fish"]))
def completion(shell: str) -> None:
    """Print the shell completion script: eval "$(kitaru completion bash)"."""
    from click.shell_completion import get_completion_class

    cls = get_completion_class(shell)
    assert cls is not None
    click.echo(cls(main, {}, "kitaru", "_KITARU_COMPLETE").source())


main.add_command(_executions_group)
main.add_command(_artifacts_group)
main.add_command(_cache_group)
main.add_command(_deployments_group)
main.add_command(_model_group)
main.add_command(_stack_group)
main.add_command(_secrets_group)
main.add_command(_worker_group)
main.add_command(_server_group)
main.add_command(_login)
main.add_command(_logout)
main.add_command(_status)
main.add_command(_info)
main.add_command(_init)
main.add_command(_mcp)
