"""``kitaru worker``: the command remote jobs run (see :mod:`kitaru.worker`)."""

from __future__ import annotations

import sys

import click

__all__ = ["worker"]


@click.group()
def worker() -> None:
    """Run executions inside remote jobs (a Kubernetes Job's pod runs `kitaru worker run ID`)."""


@worker.command("run")
@click.argument("exec_id")
def run_worker(exec_id: str) -> None:
    """Drive execution EXEC_ID here until it completes or waits.

    The stack comes from the environment (KITARU_STACK, KITARU_STACK__<KEY>). Exit codes: 0 done
    or waiting, 10 the flow failed (do not retry), 11 infrastructure trouble (retry), 12 this job
    can never run it (fix the image or the stack)."""
    import logging

    from kitaru.worker import run

    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
    sys.exit(run(exec_id))


@worker.command("call")
@click.argument("exec_id")
@click.argument("call_id")
def run_call(exec_id: str, call_id: str) -> None:
    """Run isolated checkpoint call CALL_ID of execution EXEC_ID here and record its outcome
    (what `@checkpoint(runtime="isolated")` starts; exit codes as `worker run`)."""
    import logging

    from kitaru.worker import run_call as _run_call

    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
    sys.exit(_run_call(exec_id, call_id))


def print_pod_logs(exec_id: str, follow: bool) -> None:
    """Print the log of the execution's latest pod, through its stack's orchestrator (what
    ``kitaru executions logs ID --pod`` does)."""
    from kitaru._engine.handles import blocking
    from kitaru.errors import KitaruUsageError
    from kitaru.stack import load_stack, orchestrator_of

    stack = load_stack()
    orchestrator = orchestrator_of(stack)
    stream = getattr(orchestrator, "pod_logs", None)
    if stream is None:
        raise KitaruUsageError(
            f"stack {stack.name!r} runs executions in the calling process: they have no pod. "
            f"`kitaru executions logs {exec_id}` shows what they printed."
        )

    async def echo() -> None:
        async for line in stream(exec_id, follow=follow):
            click.echo(line)

    blocking(echo)
