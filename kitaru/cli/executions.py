"""``kitaru executions``: list, inspect and steer executions (the engine is imported only when a
command runs)."""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import click

from kitaru.cli._common import OUTPUT as _OUTPUT
from kitaru.cli._common import client as _client
from kitaru.cli._common import complete_execution_ids as _complete_ids
from kitaru.cli._common import echo_json as _echo_json
from kitaru.cli._common import first_line as _first_line
from kitaru.cli._common import reports_errors as _reports_errors
from kitaru.cli._common import table as _table
from kitaru.cli._common import when as _when

__all__ = ["executions"]


@click.group()
def executions() -> None:
    """List, inspect and steer executions."""


@executions.command("list")
@click.option("--flow", "flow_name", help="Only executions of this flow.")
@click.option(
    "--status",
    type=click.Choice(["running", "waiting", "completed", "failed", "cancelled"]),
    help="Only executions in this state.",
)
@click.option("--limit", default=50, show_default=True, help="At most this many, newest first.")
@click.option("--version", "version", type=int, help="Only executions of this deployed version.")
@_OUTPUT
@_reports_errors
def list_executions(
    flow_name: str | None, status: str | None, limit: int, version: int | None, output: str
) -> None:
    """List executions, newest first."""
    found = _client(read_only=True).executions.list(
        flow=flow_name, status=status, limit=limit, version=version
    )
    if output == "json":
        _echo_json([e.to_dict() for e in found])
        return
    if not found:
        if flow_name or status or version is not None:
            filters = [f"flow {flow_name!r}" if flow_name else "", f"status {status}" if status else ""]
            filters.append(f"version {version}" if version is not None else "")
            shown = " and ".join(f for f in filters if f)
            click.echo(f"no executions match {shown}; `kitaru executions list` shows them all.")
        else:
            click.echo("no executions yet: run a flow, e.g. `python examples/quickstart.py`.")
        return
    click.echo(
        _table(
            ["ID", "FLOW", "STATUS", "STARTED", "UPDATED"],
            [(e.id, e.flow, e.status, _when(e.created_at), _when(e.updated_at)) for e in found],
        )
    )


def _checkpoint_row(c: Any) -> tuple[Any, ...]:
    if c.reused_from:
        # A replay reused this call's recorded output: it did not run here, so it took no time.
        status, took = "reused", None
        notes = f"from {c.reused_from}" + (", output overridden" if c.overridden else "")
    elif c.cached_from:
        # A checkpoint cache hit: the output of an earlier execution's call, not run here.
        status, took, notes = "cached", None, f"from {c.cached_from}"
    else:
        status = c.status
        took = f"{(c.ended_at - c.started_at) * 1000:.1f} ms" if c.ended_at and c.started_at else None
        notes = None
    return (c.call_id, c.function, status, c.attempts, took, c.output_artifact, _notes(c, notes))


def _describe(execution: Any, client: Any) -> str:
    lines = [
        f"execution  {execution.id}",
        f"flow       {execution.flow}  ({execution.target})",
        f"status     {execution.status}",
        f"started    {_when(execution.created_at)}",
        f"updated    {_when(execution.updated_at)}",
    ]
    if execution.status == "completed" and execution.result_artifact:
        lines.append(f"result     {client.artifacts.preview(execution.result_artifact)}")
    if execution.error:
        lines.append(f"error      {execution.error}")
    if execution.metadata:
        lines.append(f"metadata   {json.dumps(execution.metadata, default=str)}")
    if execution.checkpoints:
        lines += ["", "checkpoints"]
        rows = [_checkpoint_row(c) for c in execution.checkpoints]
        lines.append(_table(["CALL", "FUNCTION", "STATUS", "ATTEMPTS", "TOOK", "OUTPUT", "NOTES"], rows))
    if execution.waits:
        lines += ["", "waits"]
        lines.append(
            _table(["WAIT", "STATUS", "EXPECTS"], [(w.name, w.status, w.schema) for w in execution.waits])
        )
        # Questions in full: the question is often the very text a person must read to answer.
        for w in execution.waits:
            if w.question:
                question = [("  " + line).rstrip() for line in w.question.splitlines()]
                lines += ["", f"{w.name} asks:", *question]
    for w in execution.open_waits:
        lines.append(f"\nanswer with: kitaru executions input {execution.id} --wait {w.name} --value JSON")
    return "\n".join(lines)


def _notes(call: Any, reused: str | None = None) -> str | None:
    notes = [f"interrupted x{call.interrupted} (its runner died)"] if call.interrupted else []
    notes.append(json.dumps(call.metadata) if call.metadata else (call.error or ""))
    notes.append(reused or "")
    return "; ".join(n for n in notes if n) or None


@executions.command("get")
@click.argument("exec_id", shell_complete=_complete_ids)
@click.option(
    "--watch", "-w", is_flag=True, help="Stay and print checkpoints as they complete, until it stops."
)
@click.option(
    "--interval",
    default=0.5,
    show_default=True,
    type=click.FloatRange(min=0, min_open=True),
    help="Seconds between looks with --watch (a positive number).",
)
@_OUTPUT
@_reports_errors
def get_execution(exec_id: str, watch: bool, interval: float, output: str) -> None:
    """Show one execution: status, checkpoints, waits and metadata."""
    client = _client(read_only=True)
    execution = client.executions.get(exec_id)
    if output == "json" and not watch:
        _echo_json(execution.to_dict())
        return
    if not watch:
        click.echo(_describe(execution, client))
        return
    _watch(client, execution, interval, output)


def _watch(client: Any, execution: Any, interval: float, output: str) -> None:
    """Print the execution, then one line per change (a checkpoint finishing, a status change)
    until it is no longer running. Lines, not a redrawn screen: it works in pipes and logs too."""
    from kitaru._progress import Progress

    seen: dict[str, str] = {}
    status = None
    # On a terminal, a line on stderr says it is still watching (blanked before each printed line).
    bar = Progress(f"execution {execution.id} running: checkpoints", unit="items")
    try:
        _watch_loop(client, execution, interval, output, seen, status, bar)
    finally:
        bar.discard()


def _watch_loop(
    client: Any, execution: Any, interval: float, output: str, seen: dict[str, str], status: Any, bar: Any
) -> None:
    started = time.monotonic()
    cursor = 0  # the last event printed (its journal record id)
    latest = ""  # the running checkpoint's last progress, shown on the terminal line
    if execution.status == "running":
        # Say it is running before the lines of what it has done so far; an execution that has
        # already stopped gets its status after them, as its last line.
        status = execution.status
        if output == "json":
            click.echo(json.dumps({"event": "status", "status": status}))
        else:
            click.echo(f"{_when(execution.updated_at)}  execution {execution.id} is {status}")
    while True:
        bar.clear()
        cursor, latest = _print_events(client, execution.id, cursor, output, latest)
        for call in execution.checkpoints:
            if seen.get(call.call_id) == call.status:
                continue
            seen[call.call_id] = call.status
            took = (
                f" in {(call.ended_at - call.started_at) * 1000:.1f} ms"
                if call.ended_at and call.started_at
                else ""
            )
            event = {"call_id": call.call_id, "status": call.status, "attempts": call.attempts}
            if output == "json":
                click.echo(json.dumps({"event": "checkpoint", **event}))
            else:
                click.echo(f"{_when(call.ended_at)}  {call.call_id:<24} {call.status}{took}")
        if execution.status != status:
            status = execution.status
            if output == "json":
                click.echo(json.dumps({"event": "status", "status": status}))
            else:
                click.echo(f"{_when(execution.updated_at)}  execution {execution.id} is {status}")
        if status != "running":
            for w in execution.open_waits:
                click.echo(f"waiting on {w.name!r}: kitaru executions input {execution.id} --value JSON")
            return
        if client.executions.runner_gone(execution.id):
            from kitaru.errors import KitaruStateError

            raise KitaruStateError(
                f"execution {execution.id} is running, but its runner is gone (its process exited or "
                "its lease expired), so it will not move on by itself. Continue it with `kitaru "
                f"executions recover` (or `kitaru executions resume {execution.id}`)."
            )
        done = sum(1 for c in execution.checkpoints if c.status == "completed")
        bar.update(done, note=f"{time.monotonic() - started:.0f}s" + (f"  {latest}" if latest else ""))
        time.sleep(interval)
        execution = client.executions.get(execution.id)


def _print_events(client: Any, exec_id: str, cursor: int, output: str, latest: str) -> tuple[int, str]:
    """Print the events (``kitaru.progress``, ``kitaru.events.publish``, and each checkpoint
    attempt's start) published since ``cursor``; return the new cursor and the last progress
    line. A checkpoint's end is not printed from its event: its own line says it, with timing."""
    from kitaru.events import (
        CHECKPOINT_FAILED_KIND,
        CHECKPOINT_PROGRESS_KIND,
        CHECKPOINT_RETURNED_KIND,
        CHECKPOINT_STARTED_KIND,
        recorded,
    )

    for event in recorded(client.executions._state.read_journal(exec_id), exec_id, cursor):
        cursor = max(cursor, int(event.cursor))
        if event.kind in (CHECKPOINT_RETURNED_KIND, CHECKPOINT_FAILED_KIND):
            continue
        if event.kind == CHECKPOINT_STARTED_KIND:
            if output == "json":
                click.echo(json.dumps({"event": "started", **event.to_dict()}, default=str))
            else:
                click.echo(f"{_when(event.ts)}  {event.checkpoint_id or '-':<24} started")
            continue
        progress = event.kind == CHECKPOINT_PROGRESS_KIND
        if output == "json":
            line = {"event": "progress" if progress else "custom", **event.to_dict()}
            click.echo(json.dumps(line, default=str))
            continue
        data = event.payload.get("data")
        if progress:
            pct = f"{event.percent * 100:3.0f}% " if event.percent is not None else ""
            latest = f"{event.checkpoint_id}: {pct}{event.message or ''}".strip()
            text = f"progress {pct}{event.message or ''}"
        else:
            text = f"event {event.kind}" + (f": {event.message}" if event.message else "")
            if data:
                text += f" {json.dumps(data, default=str)}"
        click.echo(f"{_when(event.ts)}  {event.checkpoint_id or '-':<24} {text}")
    return cursor, latest


@executions.command("input")
@click.argument("exec_id", required=False, shell_complete=_complete_ids)
@click.option("--value", help="The answer, as JSON: true, 42, '\"text\"', '{...}'.")
@click.option(
    "--interactive",
    "-i",
    is_flag=True,
    help="Show each open wait (of EXEC_ID, or of every waiting execution) with its question and "
    "schema, and ask what to do: answer it (prompting for the value), abort it, or skip it.",
)
@click.option(
    "--abort",
    is_flag=True,
    help="Abort the wait instead of answering: the flow's wait() raises KitaruWaitAborted "
    "(uncaught, the execution fails and this exits with code 9).",
)
@click.option("--reason", help="With --abort: why, passed to the flow on the KitaruWaitAborted.")
@click.option("--wait", "wait_name", help="Which wait to answer, when several are open.")
@click.option(
    "--resume/--no-resume",
    default=True,
    show_default=True,
    help="Continue the flow in this process after recording the answer.",
)
@_OUTPUT
@_reports_errors
def input_execution(
    exec_id: str | None,
    value: str | None,
    interactive: bool,
    abort: bool,
    reason: str | None,
    wait_name: str | None,
    resume: bool,
    output: str,
) -> None:
    """Answer (or --abort) a waiting execution's wait, then resume it here.

    With --interactive, go through the open waits one by one (EXEC_ID's, or every waiting
    execution's) and answer, abort or skip each; the value is asked for, as JSON.
    """
    if interactive:
        for option, given in (("--value", value is not None), ("--abort", abort), ("--reason", reason)):
            if given:
                raise click.UsageError(f"{option} cannot be used with --interactive (it asks instead).")
        if output == "json":
            raise click.UsageError("--output json cannot be used with --interactive.")
        sys.exit(_interactive_input(_client(), exec_id, wait_name, resume))
    if exec_id is None:
        raise click.UsageError("give the EXEC_ID whose wait to answer (or --interactive to go through them).")
    if abort == (value is not None):
        raise click.UsageError("give the answer with --value JSON, or --abort (one of them).")
    if reason is not None and not abort:
        raise click.UsageError("--reason goes with --abort.")
    client = _client()
    if abort:
        handle = client.executions.abort_wait(exec_id, wait=wait_name, reason=reason, resume=resume)
        if handle.status == "failed":
            # The flow did not catch the abort: report it as the abort it is (exit code 9, the
            # reason), not as any failure; `wait()` raises the flow's KitaruWaitAborted.
            handle.wait()
    else:
        parsed = _parse_json(value or "", "--value")
        handle = client.executions.input(exec_id, parsed, wait=wait_name, resume=resume)
    _report_handle(client, handle.exec_id, output)
    if not resume and output == "text" and client.executions.get(handle.exec_id).status == "waiting":
        click.echo(
            f"the answer is recorded; the flow continues with `kitaru executions resume {handle.exec_id}`."
        )


def _interactive_input(client: Any, exec_id: str | None, wait_name: str | None, resume: bool) -> int:
    """Go through the open waits, asking what to do with each; 1 if one could not be resolved."""
    from kitaru._client_views import pending_wait_of
    from kitaru.errors import KitaruError

    if exec_id is not None:
        execution = client.executions.get(exec_id)
        found = [(execution.id, execution.flow, pending_wait_of(execution, w)) for w in execution.open_waits]
    else:
        found = [(w.exec_id, w.flow, w) for w in client.executions.pending_waits()]
    found = [(e, f, w) for e, f, w in found if wait_name is None or w.name == wait_name]
    if not found:
        click.echo(f"nothing is waiting on an answer{f' in execution {exec_id}' if exec_id else ''}.")
        return 0
    failures = 0
    for n, (eid, flow_name, w) in enumerate(found, 1):
        click.echo(f"\n[{n}/{len(found)}] execution {eid} (flow {flow_name}) waits on {w.name!r}")
        click.echo(f"  question: {w.question or '(none)'}")
        click.echo(f"  expects:  {w.expects}")
        if w.schema:
            click.echo("  JSON Schema:")
            click.echo("\n".join("    " + line for line in json.dumps(w.schema, indent=2).splitlines()))
        action = click.prompt(
            "  answer, abort, skip or quit",
            type=click.Choice(["answer", "abort", "skip", "quit", "a", "s", "q"]),
            default="answer",
            show_choices=False,
        )
        if action in ("quit", "q"):
            break
        if action in ("skip", "s"):
            continue
        try:
            if action == "abort":
                reason = click.prompt("  reason (empty for none)", default="", show_default=False)
                # Returns even when the flow does not catch the abort (it then failed).
                client.executions.abort_wait(eid, wait=w.name, reason=reason or None, resume=resume)
            else:
                _ask_and_answer(client, eid, w.name, resume)
            click.echo(f"  execution {eid} is {client.executions.get(eid).status}")
        except KitaruError as exc:
            click.echo(f"  error: {exc}", err=True)
            failures += 1
    return 1 if failures else 0


def _ask_and_answer(client: Any, exec_id: str, wait: str, resume: bool) -> Any:
    """Ask for the value until it parses as JSON and matches the wait's schema."""
    from kitaru.errors import KitaruWaitValidationError

    while True:
        text = click.prompt("  value, as JSON (empty for null)", default="", show_default=False)
        try:
            value = json.loads(text) if text.strip() else None
        except ValueError as exc:
            click.echo(f"  not JSON ({exc}); try again.", err=True)
            continue
        try:
            return client.executions.input(exec_id, value, wait=wait, resume=resume)
        except KitaruWaitValidationError as exc:
            click.echo(f"  {exc}", err=True)


@executions.command("waits")
@click.option("--flow", "flow_name", help="Only waits of this flow's executions.")
@_OUTPUT
@_reports_errors
def list_waits(flow_name: str | None, output: str) -> None:
    """Everything waiting on a person: open waits, oldest first, with their question and schema."""
    found = _client(read_only=True).executions.pending_waits(flow=flow_name)
    if output == "json":
        _echo_json([w.to_dict() for w in found])
        return
    if not found:
        click.echo("nothing is waiting on an answer.")
        return
    click.echo(
        _table(
            ["EXECUTION", "FLOW", "WAIT", "OPENED", "EXPECTS", "QUESTION"],
            # A question may be a whole draft to approve: its first line keeps the table a table
            # (`kitaru executions get EXEC_ID` shows it whole).
            [
                (w.exec_id, w.flow, w.name, _when(w.opened_at), w.expects, _first_line(w.question))
                for w in found
            ],
        )
    )
    click.echo("answer with: kitaru executions input EXECUTION --wait WAIT --value JSON (or --abort)")


@executions.command("stats")
@click.option("--flow", "flow_name", help="Only this flow.")
@click.option(
    "--since",
    help="Only executions created since: a duration back from now (30m, 24h, 7d, 2w) or a date "
    "(2026-01-31, 2026-01-31T12:00).",
)
@_OUTPUT
@_reports_errors
def execution_stats(flow_name: str | None, since: str | None, output: str) -> None:
    """Per flow: executions by status, duration p50/p95, model tokens and cost."""
    since_ts = _parse_since(since) if since else None
    stats = _client(read_only=True).executions.stats(flow=flow_name, since=since_ts)
    if output == "json":
        _echo_json(stats.to_dict())
        return
    if not stats.flows:
        click.echo("no executions" + (f" since {_when(since_ts)}" if since_ts else "") + ".")
        return

    def seconds(value: float | None) -> str:
        return "-" if value is None else f"{value:.1f}s"

    click.echo(
        _table(
            ["FLOW", "RUNS", "BY STATUS", "P50", "P95", "LLM CALLS", "TOKENS IN/OUT", "COST USD"],
            [
                (
                    f.flow,
                    f.executions,
                    " ".join(f"{k}={v}" for k, v in f.by_status.items()),
                    seconds(f.duration_p50),
                    seconds(f.duration_p95),
                    f.llm_calls,
                    f"{f.tokens_in}/{f.tokens_out}",
                    f"{f.cost_usd:.4f}" + (f" (+{f.unpriced_calls} unpriced)" if f.unpriced_calls else ""),
                )
                for f in stats.flows
            ],
        )
    )


def _parse_since(text: str) -> float:
    import re
    import time
    from datetime import datetime

    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*", text)
    if match:
        unit = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}[match.group(2)]
        return time.time() - float(match.group(1)) * unit
    try:
        return datetime.fromisoformat(text.strip()).timestamp()
    except ValueError:
        raise click.BadParameter(
            f"{text!r} is neither a duration (30m, 24h, 7d, 2w) nor a date (2026-01-31).",
            param_hint="--since",
        ) from None


def _report_handle(client: Any, exec_id: str, output: str) -> None:
    execution = client.executions.get(exec_id)
    if output == "json":
        _echo_json(execution.to_dict())
        return
    click.echo(f"execution {execution.id} is {execution.status}")
    if execution.status == "failed":
        click.echo(f"error: {execution.error}", err=True)
        sys.exit(1)
    for w in execution.open_waits:
        click.echo(
            f"waiting on {w.name!r}"
            + (f": {w.question}" if w.question else "")
            + f" (expects {w.schema}); answer with: kitaru executions input {execution.id} "
            + f"--wait {w.name} --value JSON"
        )


@executions.command("resume")
@click.argument("exec_id", shell_complete=_complete_ids)
@_OUTPUT
@_reports_errors
def resume_execution(exec_id: str, output: str) -> None:
    """Continue an interrupted or waiting execution from its journal, in this process.

    Kitaru 0.18 documented `executions input` then `executions resume`; here `input` resumes what
    it answers, so the `resume` that follows finds the execution completed. That is reported as
    it is, with exit code 0: the answer was given and the flow ran on, nothing is left to resume.
    """
    client = _client()
    execution = client.executions.get(exec_id)
    if execution.status == "completed" and any(w.status in ("answered", "aborted") for w in execution.waits):
        if output != "json":
            click.echo(
                f"nothing to resume: execution {execution.id} ran on after its wait was answered.",
                err=True,
            )
        _report_handle(client, execution.id, output)
        return
    handle = client.executions.resume(exec_id)
    _report_handle(client, handle.exec_id, output)


@executions.command("retry")
@click.argument("exec_id", shell_complete=_complete_ids)
@_OUTPUT
@_reports_errors
def retry_execution(exec_id: str, output: str) -> None:
    """Continue a failed execution in place, reusing its completed checkpoints."""
    client = _client()
    handle = client.executions.retry(exec_id)
    _report_handle(client, handle.exec_id, output)


def _parse_json(text: str, option: str) -> Any:
    from kitaru._engine.waits import MAX_ANSWER_DEPTH, json_depth

    too_deep = click.BadParameter(
        f"the JSON nests more than {MAX_ANSWER_DEPTH} levels deep; give a flatter value.",
        param_hint=option,
    )
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        shown = text if len(text) <= 80 else text[:80] + "..."
        raise click.BadParameter(
            f"{shown!r} is not JSON ({exc.msg}). Quote text as JSON: '\"yes\"'; booleans and "
            "numbers go bare: true, 42.",
            param_hint=option,
        ) from None
    except RecursionError:
        # json.loads recurses once per level: thousands of '[' exhaust the interpreter's stack.
        raise too_deep from None
    if json_depth(value) > MAX_ANSWER_DEPTH:
        raise too_deep
    return value


@executions.command("replay")
@click.argument("exec_id", shell_complete=_complete_ids)
@click.option("--from", "from_", required=True, help="Checkpoint or wait to re-run from (name, or name:N).")
@click.option(
    "--override",
    "overrides",
    multiple=True,
    metavar="NAME=JSON",
    help="Replace a reused checkpoint output or wait answer (repeatable).",
)
@click.option(
    "--overrides",
    "overrides_json",
    metavar="JSON",
    help='Overrides as one JSON object, e.g. \'{"checkpoint.research": "Edited notes"}\'.',
)
@click.option("--args", "args_json", help="Replace flow arguments: a JSON object by parameter name.")
@click.option("--version", "version", type=int, help="Run on this deployed version of the flow.")
@_OUTPUT
@_reports_errors
def replay_execution(
    exec_id: str,
    from_: str,
    overrides: tuple[str, ...],
    overrides_json: str | None,
    args_json: str | None,
    version: int | None,
    output: str,
) -> None:
    """Re-run an execution from a checkpoint as a new execution, reusing everything above it."""
    parsed: dict[str, Any] = {}
    if overrides_json is not None:
        given = _parse_json(overrides_json, "--overrides")
        if not isinstance(given, dict):
            raise click.BadParameter(
                'must be a JSON object of call ids, e.g. \'{"checkpoint.research": "notes"}\'.',
                param_hint="--overrides",
            )
        parsed.update(given)
    for item in overrides:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise click.BadParameter(f"{item!r} is not NAME=JSON.", param_hint="--override")
        if name in parsed:
            raise click.BadParameter(
                f"{name!r} is also in --overrides; give it once.", param_hint="--override"
            )
        parsed[name] = _parse_json(value, "--override")
    args = _parse_json(args_json, "--args") if args_json is not None else None
    if args is not None and not isinstance(args, dict):
        raise click.BadParameter(
            'must be a JSON object of parameter names, e.g. \'{"topic": "x"}\'.', param_hint="--args"
        )
    client = _client()
    handle = client.executions.replay(exec_id, from_, overrides=parsed, args=args, version=version)
    if output == "text":
        click.echo(f"replay of {client.executions.resolve(exec_id)} from {from_!r}:")
    _report_handle(client, handle.exec_id, output)


@executions.command("diff")
@click.argument("a", shell_complete=_complete_ids)
@click.argument("b", shell_complete=_complete_ids)
@click.option("--all", "show_all", is_flag=True, help="List unchanged items too.")
@_OUTPUT
@_reports_errors
def diff_executions(a: str, b: str, show_all: bool, output: str) -> None:
    """Compare two executions checkpoint by checkpoint (inputs, outputs, wait answers, result)."""
    diff = _client(read_only=True).executions.diff(a, b)
    if output == "json":
        _echo_json(diff.to_dict())
        return
    click.echo(f"a = {diff.a}\nb = {diff.b}")
    marks = {"same": "=", "changed": "~", "only_a": "-", "only_b": "+"}
    for entry in diff.entries:
        if entry.status == "same" and not show_all:
            continue
        label = {"only_a": "only in a", "only_b": "only in b"}.get(entry.status, entry.status)
        # The result is one of a kind: "result", not "result result".
        what = entry.kind if entry.name == entry.kind else f"{entry.kind} {entry.name}"
        click.echo(f"{marks[entry.status]} {what}: {label}")
        if entry.detail:
            click.echo("    " + entry.detail.replace("\n", "\n    "))
    same = sum(e.status == "same" for e in diff.entries)
    click.echo(f"{len(diff.changed)} differ, {same} the same")


@executions.command("graph")
@click.argument("exec_id", shell_complete=_complete_ids)
@click.option(
    "-o",
    "--output",
    type=click.Choice(["text", "json", "dot"]),
    default="text",
    show_default=True,
    help="Output format (dot: Graphviz source).",
)
@_reports_errors
def execution_graph(exec_id: str, output: str) -> None:
    """Show the lineage graph: which artifacts flowed into each checkpoint."""
    graph = _client(read_only=True).executions.graph(exec_id)
    if output == "json":
        _echo_json(graph.to_dict())
        return
    if output == "dot":
        click.echo(graph.to_dot())
        return
    labels = {n.id: n.label for n in graph.nodes}
    rows = []
    for node in graph.nodes:
        if node.kind in ("input", "external"):
            continue
        feeds = ", ".join(
            f"{labels.get(e.source, e.source)} ({e.data_type.split(':')[-1]}, {e.size} B)"
            for e in graph.inputs_of(node.id)
        )
        rows.append((node.label, node.kind, feeds or None))
    click.echo(_table(["CALL", "KIND", "FED BY"], rows))


@executions.command("logs")
@click.argument("exec_id", shell_complete=_complete_ids)
@click.option("--checkpoint", help="Only this call (name:N) or every call of this checkpoint.")
@click.option(
    "--source",
    type=click.Choice(["step", "runner"]),
    help="Only what checkpoints wrote (step), or only the flow body's own output (runner).",
)
@click.option("--follow", "-f", is_flag=True, help="Keep printing new output until the execution stops.")
@click.option("--grouped", is_flag=True, help="One section per checkpoint call, in call order.")
@click.option("--verbose", "-v", count=True, help="-v: each line with its time and level; -vv: and its call.")
@click.option("--pod", is_flag=True, help="Print the log of its latest Job's pod (kubernetes stacks).")
@_OUTPUT
@_reports_errors
def execution_logs(
    exec_id: str,
    checkpoint: str | None,
    source: str | None,
    follow: bool,
    grouped: bool,
    verbose: int,
    pod: bool,
    output: str,
) -> None:
    """Print what an execution's flow and checkpoints printed and logged, in order."""
    if grouped and (output == "json" or follow):
        raise click.UsageError("--grouped prints sections for people: not with -o json or --follow.")
    client = _client(read_only=True)
    full = client.executions.resolve(exec_id)
    if pod:
        from kitaru.cli.worker import print_pod_logs

        print_pod_logs(full, follow)
        return
    if grouped:
        sections: dict[str, list[Any]] = {}
        for entry in client.executions.logs(full, checkpoint=checkpoint, source=source):
            sections.setdefault(entry.call_id or "flow", []).append(entry)
        for n, (call, entries) in enumerate(sections.items()):
            click.echo(("\n" if n else "") + f"== {call} ==")
            for entry in entries:
                for line in _log_text(entry, verbose).splitlines():
                    click.echo(_log_prefix(entry, verbose, grouped=True) + line, err=entry.stream == "stderr")
        return
    after = 0
    while True:
        entries = client.executions.logs(full, checkpoint=checkpoint, after=after, source=source)
        for entry in entries:
            if output == "json":
                click.echo(
                    json.dumps(
                        {"call_id": entry.call_id, "stream": entry.stream, "text": entry.text, "ts": entry.ts}
                    )
                )
                continue
            for line in _log_text(entry, verbose).splitlines():
                click.echo(_log_prefix(entry, verbose) + line, err=entry.stream == "stderr")
        after = max([after, *(e.seq for e in entries)])
        if not follow or client.executions.get(full).status not in {"running"}:
            return
        time.sleep(0.5)


def _log_text(entry: Any, verbose: int) -> str:
    """The entry's text; with -v a logging record's level moves into the prefix (not shown twice)."""
    text: str = entry.text
    if verbose and entry.stream == "log" and text.startswith(f"{entry.level} "):
        return text[len(entry.level) + 1 :]
    return text


def _log_prefix(entry: Any, verbose: int, grouped: bool = False) -> str:
    """A log line's prefix: its call (unless grouped under it), and with -v its time and level
    (-vv: both, and the call even when grouped)."""
    call = f"[{entry.call_id or 'flow'}] "
    if verbose == 0:
        return "" if grouped else call
    stamp = f"{_when(entry.ts)} {entry.level:<5} "
    return stamp + (call if verbose > 1 or not grouped else "")


@executions.command("recover")
@click.option("--limit", default=100, show_default=True, help="At most this many executions, oldest first.")
@_OUTPUT
@_reports_errors
def recover_executions(limit: int, output: str) -> None:
    """Resume executions whose runner died, and time out waits past their deadline.

    Safe to run from cron, or from several hosts at once: whoever takes an execution's lease
    drives it, the others skip it. Exits 1 when an execution could not be driven here.
    """
    from kitaru._progress import Progress
    from kitaru.client import KitaruClient

    client = _client()
    with Progress("recovering", unit="items") as bar:
        # A server recovers on its own (its client refuses); locally, a counter per execution.
        hook = {"progress": lambda done, total: bar.update(done, total=total)}
        report = client.executions.recover(limit=limit, **(hook if isinstance(client, KitaruClient) else {}))
        if not report:
            bar.discard()  # nothing was worth a line
    if output == "json":
        _echo_json([r.to_dict() for r in report])
    elif not report:
        click.echo("nothing to recover: no execution is stuck without its runner or past a wait deadline.")
    else:
        click.echo(
            _table(
                ["ID", "FLOW", "REASON", "OUTCOME", "DETAIL"],
                [(r.exec_id, r.flow, r.reason, r.outcome, _first_line(r.detail, 80)) for r in report],
            )
        )
    if any(r.outcome == "error" for r in report):
        sys.exit(1)


@executions.command("cancel")
@click.argument("exec_id", shell_complete=_complete_ids)
@_OUTPUT
@_reports_errors
def cancel_execution(exec_id: str, output: str) -> None:
    """Cancel a running or waiting execution."""
    execution = _client().executions.cancel(exec_id)
    if output == "json":
        _echo_json(execution.to_dict())
    else:
        click.echo(f"execution {execution.id} is cancelled")
