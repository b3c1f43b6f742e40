"""What every orchestrator that runs ``kitaru worker run <exec_id>`` in a remote job shares
(Kubernetes Jobs, ECS tasks, Cloud Run jobs, Container Apps jobs): shipping the flow's code in
``prepare``, the checks before a submit, the worker's environment built from the stack, refusing
stores a job cannot reach, and what a worker's exit code means.

Each rule lives here once so the four orchestrators cannot drift apart; each cloud keeps only what
its API makes different. Nothing heavy is imported at module level: the stacks import this module
when they build an orchestrator, never ``import kitaru``.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import tempfile
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from kitaru.errors import (
    KitaruConfigError,
    KitaruError,
    KitaruLeaseError,
    KitaruNotFoundError,
    KitaruStateError,
)

if TYPE_CHECKING:
    from kitaru._engine.flow import Flow
    from kitaru._engine.runtime import Runtime
    from kitaru.stack import BaseStack
    from kitaru.store import ExecutionRecord

__all__ = [
    "CALL_LAUNCH_ENV",
    "CallState",
    "Verdict",
    "call_args",
    "call_key",
    "call_slug",
    "call_submittable",
    "check_submittable",
    "declared_keys",
    "ensure_code",
    "execution_image",
    "exit_verdict",
    "prepare",
    "refuse_local_stores",
    "ship",
    "worker_env",
]

#: What a worker's exit means for its job: ``done`` (0: completed, waiting or cancelled),
#: ``flow_failed`` (10: recorded, never retried), ``cannot_run`` (12: this image or stack can never
#: drive it) or ``infrastructure`` (11, a kill, an OOM, a crash: retried, resumes from the journal).
Verdict = Literal["done", "flow_failed", "cannot_run", "infrastructure"]


#: The variable naming which launch of an isolated call a job runs (``kitaru worker call``): the
#: platforms without job names (Cloud Run, Container Apps) find a call's job by its args and this.
CALL_LAUNCH_ENV = "KITARU_CALL_LAUNCH"


@dataclass(frozen=True)
class CallState:
    """What the job of one launch of an isolated call is doing, as its orchestrator's
    ``call_state`` reads it from the platform: ``missing`` (no such job: not submitted yet, or
    gone), ``running`` (pending or running), ``succeeded`` or ``failed`` (``reason``: the
    platform's own words: a condition, a stop code, an exit code)."""

    phase: Literal["missing", "running", "succeeded", "failed"]
    reason: str = ""


def call_args(exec_id: str, call_id: str) -> list[str]:
    """The worker's arguments in an isolated call's job (after the stack's ``worker_command``)."""
    return ["worker", "call", exec_id, call_id]


def call_key(exec_id: str, call_id: str, launch: int) -> str:
    """A digest of one launch of an isolated call: every parent that reads the same launch record
    derives the same key, so a resumed parent finds the job its predecessor started."""
    return hashlib.sha256(f"{exec_id}\0{call_id}\0{launch}".encode()).hexdigest()


def call_slug(call_id: str, width: int) -> str:
    """A readable part of ``call_id`` for a job's name: lowercase letters, digits and hyphens, at
    most ``width`` characters (the name's hash keeps distinct calls apart)."""
    return re.sub(r"[^a-z0-9]+", "-", call_id.lower()).strip("-")[:width].strip("-") or "call"


async def call_submittable(runtime: Runtime, exec_id: str) -> ExecutionRecord:
    """The execution an isolated call's job is submitted for: it must exist and not be final
    (its runner, the parent, holds its lease: that is who submits)."""
    from kitaru.store import _rules

    record = await runtime.astate.get_execution(exec_id)
    if record is None:
        raise KitaruNotFoundError(f"no execution {exec_id!r}. List them with `kitaru executions list`.")
    if record.status in _rules.FINAL_STATUSES:
        raise _rules.final_error(record.id, record.status, "start a job for an isolated call")
    return record


def exit_verdict(code: int | None) -> Verdict:
    """The meaning of a worker's exit code (``None``: the job ended without one)."""
    from kitaru.worker import EXIT_CANNOT_RUN, EXIT_DONE, EXIT_FLOW_FAILED

    if code == EXIT_DONE:
        return "done"
    if code == EXIT_FLOW_FAILED:
        return "flow_failed"
    if code == EXIT_CANNOT_RUN:
        return "cannot_run"
    return "infrastructure"


def execution_image(metadata: Mapping[str, Any], stack_image: str | None) -> str | None:
    """The image an execution's jobs run on: its deployed version's (``metadata["deployment"]
    ["image"]``: every run of a version keeps the image it was deployed with, whatever the stack
    says now), else its flow's own (``@flow(image=...)``, recorded as ``metadata["image"]``), else
    the stack's ``stack_image``. None when none of them names one."""
    from kitaru.worker import DEPLOYMENT_METADATA

    version = metadata.get(DEPLOYMENT_METADATA)
    for image in (version.get("image") if isinstance(version, Mapping) else None, metadata.get("image")):
        if image:
            return str(image)
    return stack_image or None


def refuse_local_stores(stack: BaseStack, what: str, runners: str = "its jobs") -> None:
    """Refuse stores only this machine reaches: a SQLite state file, or a ``file://`` artifact
    directory. ``what`` names the stack's remote jobs ("Container Apps jobs"), ``runners`` what
    runs the worker ("the Jobs' pods"). Called from ``orchestrator()``, so inspecting a
    misconfigured stack still works."""
    where = f"(`kitaru stack show {stack.name}` shows where it is declared)"
    if stack.state_uri.startswith("sqlite:"):
        raise KitaruConfigError(
            f"stack {stack.name!r} ({stack.type}, {what}) keeps its state in SQLite "
            f"({stack.state_uri}), a file on this machine that {runners} cannot reach. Point `state` "
            f'at a PostgreSQL database every job reaches: `state = "postgresql://USER@HOST/DB"` {where}.'
        )
    if stack.artifacts_uri.startswith("file:"):
        raise KitaruConfigError(
            f"stack {stack.name!r} ({stack.type}, {what}) keeps its artifacts in a local directory "
            f"({stack.artifacts_uri}) that {runners} cannot reach. Point `artifacts` at an object "
            f'store: `artifacts = "s3://BUCKET/PREFIX"` (or gs://, az://) {where}.'
        )


def declared_keys(stack: BaseStack, *, leave_out: Iterable[str] = ()) -> dict[str, Any]:
    """The value of each key the stack's type declares (its ``keys``, but ``state`` and
    ``artifacts``), as the stack holds it: what :func:`worker_env` gives a job, so the worker's
    stack is the submitter's (a worker that starts jobs itself, an isolated call's, starts them
    as the submitter would). ``leave_out``: keys that only mean something on the submitter's
    machine (a kubeconfig path) or that the job's identity supplies."""
    skipped = {"state", "artifacts", *leave_out}
    return {k: getattr(stack, k) for k in type(stack).keys if k not in skipped and hasattr(stack, k)}


def worker_env(
    stack: BaseStack,
    keys: Mapping[str, Any],
    *,
    env: Mapping[str, str] = {},
    leave_out: Iterable[str] = (),
) -> dict[str, str]:
    """The worker's environment: the stack by name and type, each of ``keys`` (plus the stack's
    ``state``, ``artifacts`` and store options) as ``KITARU_STACK__<KEY>``, so the job needs no
    config file; then ``env``. Lists and tables are written as JSON (the stack's loader reads
    them back for keys of those types); unset keys and empty ones are left out, and so are the keys named in
    ``leave_out`` (credentials the job's identity supplies; variables a secret provides), both as
    stack keys and as variable names. Booleans are written ``true``/``false``."""
    skipped = set(leave_out)
    out: dict[str, str] = {"KITARU_STACK": stack.name, "KITARU_STACK__TYPE": str(stack.type)}
    merged: dict[str, Any] = {
        "state": stack.state_uri,
        "artifacts": stack.artifacts_uri,
        **keys,
        **stack.options,
    }
    for key, value in merged.items():
        if value is None or key in skipped:
            continue
        if isinstance(value, dict | list | tuple):
            if not value:
                continue  # an empty list or table says nothing the key's default does not
            text = json.dumps(value, separators=(",", ":"))
        else:
            text = str(value).lower() if isinstance(value, bool) else str(value)
        out[f"KITARU_STACK__{key.upper()}"] = text
    out.update(env)
    return {k: v for k, v in out.items() if k not in skipped}


async def check_submittable(runtime: Runtime, exec_id: str, job: str) -> ExecutionRecord:
    """The execution, when a job may be started for it. KitaruNotFoundError when there is none,
    KitaruStateError when it cannot be driven (completed, cancelled), KitaruLeaseError when a live
    runner drives it already (``job`` says where that runner's job is seen)."""
    from kitaru._engine.runner import DRIVABLE
    from kitaru.store import _rules

    record = await runtime.astate.get_execution(exec_id)
    if record is None:
        raise KitaruNotFoundError(f"no execution {exec_id!r}. List them with `kitaru executions list`.")
    if record.status in _rules.FINAL_STATUSES:
        raise _rules.final_error(record.id, record.status, "run again")
    if record.status not in DRIVABLE:
        raise KitaruStateError(f"execution {exec_id} is {record.status}: it cannot be submitted.")
    if record.status == "running" and not _rules.lease_free(
        record.lease_owner, record.lease_expires_at, time.time()
    ):
        raise KitaruLeaseError(f"execution {exec_id} is being driven by {record.lease_owner}; {job}.")
    return record


async def prepare(runtime: Runtime, code: str, flow: Flow[Any, Any], where: str) -> dict[str, Any]:
    """Ship ``flow``'s code for a new execution (``code = "archive"``): archive its source root,
    upload it once per content, and return the metadata recording its key (``where`` names the
    job it ships to, for the error).

    A deployed version ships nothing: its archive went to the artifact store when it was deployed,
    and the execution records the version (``metadata["deployment"]``), which the worker loads
    whatever the stack's ``code`` says."""
    from kitaru.worker import CODE_METADATA

    if code == "image" or getattr(flow, "deployment", None):
        return {}
    if not flow.sys_path:
        raise KitaruConfigError(
            f"flow {flow.name!r} has no source root on disk to ship to {where} (it was defined "
            'interactively). Define it in a file, or build an image with the code and set `code = "image"`.'
        )
    return {CODE_METADATA: await ship(runtime, Path(flow.sys_path))}


async def ship(runtime: Runtime, root: Path) -> dict[str, str]:
    """Archive ``root``, upload it to the runtime's artifact store (once per content), and return
    the code metadata ``{key, root}`` the worker unpacks it from."""
    import anyio.to_thread

    from kitaru import _shipping

    scratch = Path(tempfile.mkdtemp(prefix="kitaru-archive-"))
    try:
        archive = await anyio.to_thread.run_sync(_shipping.build_archive, root, scratch)
        key = await _shipping.upload(runtime.aartifacts, archive)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return {"key": key, "root": str(root)}


async def ensure_code(runtime: Runtime, code: str, exec_id: str, metadata: Mapping[str, Any]) -> None:
    """An execution started before it ran on this stack (or by an older kitaru) has no code
    recorded: ship it now, if its flow loads here; else the image must hold it."""
    from kitaru.worker import CODE_METADATA, DEPLOYMENT_METADATA

    if code == "image" or CODE_METADATA in metadata or DEPLOYMENT_METADATA in metadata:
        return
    record = await runtime.astate.get_execution(exec_id)
    if record is None or not record.sys_path:
        return
    from kitaru._engine.loading import load_flow

    try:
        load_flow(record.target, record.sys_path)
    except KitaruError:
        return
    shipped = await ship(runtime, Path(record.sys_path))
    await runtime.astate.commit(exec_id, [], metadata={CODE_METADATA: shipped})
