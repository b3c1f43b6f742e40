"""``kitaru worker run <exec_id>``: the command every remote job runs (a Kubernetes Job's pod, a
cloud job).

It reads its stack from the environment the job was given (``KITARU_STACK`` and the
``KITARU_STACK__<KEY>`` keys), fetches the execution's code archive from the stack's artifact
store (its key was recorded in the execution's metadata when it was submitted) unless the stack
says the image holds the code, unpacks it into a cache keyed by its hash, reports how this
environment differs from the one the archive was built in, takes the execution's lease and drives
it through the Runner to completion or suspension.

The exit code tells the platform whether running the job again can help:

====  =====================  ==========================================================================
code  name                   meaning
====  =====================  ==========================================================================
0     ``EXIT_DONE``          the execution completed, waits for an answer, was cancelled, or is not
                             this job's to drive any more (another runner took it, it finished)
10    ``EXIT_FLOW_FAILED``   the flow raised: the execution is ``failed``; running it again gives
                             the same failure (``kitaru executions retry`` after fixing the cause)
11    ``EXIT_RETRY``         infrastructure trouble: the state or artifact store is unreachable, the
                             code could not be fetched, or a live runner still holds the lease;
                             worth retrying (the journal makes a retry resume, not restart)
12    ``EXIT_CANNOT_RUN``    this job can never drive it: the stack is misconfigured, the execution
                             does not exist, or its code cannot be imported in this image (fix the
                             image or the stack, then ``kitaru executions resume``)
====  =====================  ==========================================================================

A Kubernetes Job's pod failure policy keys on these codes: 10 and 12 fail the Job at once, every
other failure (11, a crash, an OOM kill, a lost node) is retried by Kubernetes up to its backoff
limit. Cloud Run jobs retry every non-zero exit alike: their orchestrator sets
``KITARU_WORKER_FLOW_FAILED_EXIT=0`` (:data:`FLOW_FAILED_EXIT_ENV`), so a flow's failure, already
recorded in the state store, ends the task without a retry. Codes 10 to 12 were chosen apart
from the CLI's error exit codes (1 to 8) and from signals
(128 + N).
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kitaru.errors import (
    KitaruConfigError,
    KitaruError,
    KitaruLeaseError,
    KitaruNotFoundError,
    KitaruStateError,
    KitaruStoreError,
    KitaruUsageError,
)

if TYPE_CHECKING:
    from kitaru._engine.runner import Outcome
    from kitaru._engine.runtime import Runtime
    from kitaru.store import ExecutionRecord

__all__ = [
    "CODE_CACHE_ENV",
    "CODE_METADATA",
    "DEPLOYMENT_METADATA",
    "EXIT_CANNOT_RUN",
    "EXIT_DONE",
    "EXIT_FLOW_FAILED",
    "EXIT_RETRY",
    "FLOW_FAILED_EXIT_ENV",
    "run",
    "run_call",
]

EXIT_DONE = 0
EXIT_FLOW_FAILED = 10
EXIT_RETRY = 11
EXIT_CANNOT_RUN = 12

#: The execution metadata key under which a submitter records the code archive it shipped:
#: ``{"key": "code/<sha256>.tar.gz", "root": "<the source root it was built from>"}``.
CODE_METADATA = "code"
#: The execution metadata key under which an execution of a deployed version records it
#: (:func:`kitaru.deployments.summary`: flow, version, archive key and hash, target, image).
DEPLOYMENT_METADATA = "deployment"
#: Where unpacked archives are kept, by the worker and by any process loading a deployed version
#: (default: ``code/`` under kitaru's home).
CODE_CACHE_ENV = "KITARU_CODE_CACHE"
#: Set by an orchestrator whose platform retries every non-zero exit alike (Cloud Run jobs have no
#: per-exit-code policy): the code to exit with when the flow failed (``0`` there). The failure is
#: in the state store either way; the platform only has to not run the flow again.
FLOW_FAILED_EXIT_ENV = "KITARU_WORKER_FLOW_FAILED_EXIT"

logger = logging.getLogger("kitaru.worker")


class _Retry(Exception):
    """Infrastructure trouble the job should be retried for (exit ``EXIT_RETRY``)."""


def run(exec_id: str) -> int:
    """Drive execution ``exec_id`` here to its end or next suspension; return the exit code."""
    from kitaru._engine.handles import blocking
    from kitaru._engine.runtime import get_runtime

    try:
        runtime = get_runtime()
    except KitaruStoreError as exc:
        return _say(EXIT_RETRY, f"the stack's stores cannot be opened: {exc}")
    except KitaruError as exc:
        return _say(EXIT_CANNOT_RUN, f"the stack cannot be built from this job's environment: {exc}")
    try:
        return blocking(_work, runtime, exec_id)
    except _Retry as exc:
        return _say(EXIT_RETRY, str(exc))
    except KitaruLeaseError as exc:
        return _say(EXIT_RETRY, str(exc))
    except KitaruStoreError as exc:
        return _say(EXIT_RETRY, f"a store failed: {exc}")
    except OSError as exc:  # a connection refused or reset below a store's client
        return _say(EXIT_RETRY, f"{type(exc).__name__}: {exc}")
    except KitaruError as exc:
        return _say(EXIT_CANNOT_RUN, str(exc))


def run_call(exec_id: str, call_id: str) -> int:
    """Run isolated call ``call_id`` of execution ``exec_id`` here (``@checkpoint(runtime=
    "isolated")``) and commit its outcome; the same exit codes as :func:`run` (10: its last
    attempt failed, recorded)."""
    from kitaru._engine.handles import blocking
    from kitaru._engine.runtime import get_runtime

    try:
        runtime = get_runtime()
    except KitaruStoreError as exc:
        return _say(EXIT_RETRY, f"the stack's stores cannot be opened: {exc}")
    except KitaruError as exc:
        return _say(EXIT_CANNOT_RUN, f"the stack cannot be built from this job's environment: {exc}")
    try:
        return blocking(_work_call, runtime, exec_id, call_id)
    except _Retry as exc:
        return _say(EXIT_RETRY, str(exc))
    except KitaruStoreError as exc:
        return _say(EXIT_RETRY, f"a store failed: {exc}")
    except OSError as exc:
        return _say(EXIT_RETRY, f"{type(exc).__name__}: {exc}")
    except KitaruError as exc:
        return _say(EXIT_CANNOT_RUN, str(exc))


async def _work_call(runtime: Runtime, exec_id: str, call_id: str) -> int:
    from kitaru._engine.isolated import arun_call

    record = await runtime.astate.get_execution(exec_id)
    if record is None:
        raise KitaruNotFoundError(
            f"no execution {exec_id!r} in the state store of stack {runtime.stack_name!r}: the job "
            "and the stack it was given do not match. Check the stack's `state` key."
        )
    _apply_image_settings(record)
    await _prepare_code(runtime, record)
    if await arun_call(runtime, record, call_id) == "failed":
        code = os.environ.get(FLOW_FAILED_EXIT_ENV, "").strip()
        return _say(int(code) if code.isdigit() else EXIT_FLOW_FAILED, f"isolated call {call_id} failed")
    return _say(EXIT_DONE, f"isolated call {call_id} of execution {exec_id} is done")


def _say(code: int, message: str) -> int:
    print(f"kitaru worker: {message} (exit {code})", file=sys.stderr, flush=True)
    return code


async def _work(runtime: Runtime, exec_id: str) -> int:
    from kitaru._engine.runner import Runner
    from kitaru.store import _rules

    record = await runtime.astate.get_execution(exec_id)
    if record is None:
        raise KitaruNotFoundError(
            f"no execution {exec_id!r} in the state store of stack {runtime.stack_name!r}: the job "
            "and the stack it was given do not match. Check the stack's `state` key."
        )
    if record.status in _rules.FINAL_STATUSES:
        return _say(EXIT_DONE, f"execution {exec_id} is {record.status}: nothing to do")
    _apply_image_settings(record)
    await _prepare_code(runtime, record)
    runner = Runner(runtime)
    outcome = await _drive(runner, record)
    if outcome is None:
        return _say(EXIT_DONE, f"execution {exec_id} moved on meanwhile: nothing to do")
    return _exit_code(exec_id, outcome)


async def _drive(runner: Any, record: ExecutionRecord) -> Outcome | None:
    """Take the lease and drive. A lease still held is waited for once, up to its expiry: a pod
    restarted by the platform on another node finds its predecessor's lease until it expires
    (nobody renews it any more); a holder that keeps renewing it is alive, and the job retries."""
    import anyio

    from kitaru._engine.runner import DRIVABLE

    deadline: float | None = None
    while True:
        try:
            outcome: Outcome = await runner.submit(record.id, DRIVABLE)
            return outcome
        except KitaruStateError:
            return None  # completed, cancelled or waiting-then-finished by someone else
        except KitaruLeaseError:
            now = time.time()
            if deadline is None:
                current = await runner.runtime.astate.get_execution(record.id)
                expires = (current.lease_expires_at if current else None) or now
                deadline = min(expires, now + runner.runtime.lease_ttl) + 1.0
            if now >= deadline:
                raise
            await anyio.sleep(min(1.0, max(0.05, deadline - now)))


def _exit_code(exec_id: str, outcome: Outcome) -> int:
    if outcome.status == "failed":
        code = os.environ.get(FLOW_FAILED_EXIT_ENV, "").strip()
        return _say(
            int(code) if code.isdigit() else EXIT_FLOW_FAILED, f"execution {exec_id} failed: {outcome.error}"
        )
    if outcome.status == "interrupted":
        raise _Retry(f"execution {exec_id} was interrupted ({outcome.error!r}); it stays resumable")
    return _say(EXIT_DONE, f"execution {exec_id} is {outcome.status}")


# -- the execution's image settings ------------------------------------------------------------


def _apply_image_settings(record: ExecutionRecord) -> None:
    """Honour the execution's :class:`kitaru.ImageSettings` in this job, before its code is
    imported: ``environment`` and the secrets of ``secret_environment_from`` are exported, and
    each of ``requirements`` must be installed here (a missing one is ``EXIT_CANNOT_RUN``: no
    retry of this job can install it)."""
    from kitaru._engine.runtime import OPTIONS_METADATA

    image = (record.metadata.get(OPTIONS_METADATA) or {}).get("image") or {}
    os.environ.update({str(k): str(v) for k, v in (image.get("environment") or {}).items()})
    for name in image.get("secret_environment_from") or ():
        os.environ.update(secret_environment(str(name)))
    missing = unmet_requirements(image.get("requirements") or ())
    if missing:
        raise KitaruConfigError(
            f"execution {record.id} needs {', '.join(missing)} (its image settings' requirements), "
            "and this job's image does not have it: kitaru installs nothing into a job. Add them "
            "to the image (or its base_image), then `kitaru executions resume "
            f"{record.id}`."
        )


def secret_environment(name: str) -> dict[str, str]:
    """The variables kitaru secret ``name`` exports: each key of a JSON object, else the
    secret's value under its own name."""
    import json

    from kitaru.secrets import get_secret

    value = get_secret(name)
    try:
        parsed = json.loads(value)
    except ValueError:
        parsed = None
    if isinstance(parsed, dict) and parsed:
        return {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in parsed.items()}
    return {name: value}


def unmet_requirements(requirements: Any) -> list[str]:
    """The requirement strings (``httpx``, ``pydantic>=2``) not satisfied in this environment.
    Versions are compared when ``packaging`` is importable; names are always checked."""
    import re
    from importlib.metadata import PackageNotFoundError, version

    missing: list[str] = []
    for text in requirements:
        text = str(text)
        name = re.split(r"[\[<>=!~;@\s]", text, maxsplit=1)[0]
        try:
            installed = version(name)
        except (PackageNotFoundError, ValueError):
            missing.append(text)
            continue
        try:
            from packaging.requirements import InvalidRequirement, Requirement
        except ImportError:
            continue
        try:
            req = Requirement(text)
        except InvalidRequirement:
            continue
        if req.specifier and not req.specifier.contains(installed, prereleases=True):
            missing.append(f"{text} (found {installed})")
    return missing


# -- code ---------------------------------------------------------------------------------------


async def _prepare_code(runtime: Runtime, record: ExecutionRecord) -> None:
    """Make the execution's flow importable here, by one rule:

    1. an execution of a deployed version (``metadata["deployment"]``) runs that version's
       archive, always: it is pinned to it, whatever was deployed since, whatever else its
       metadata says and whatever the stack's ``code`` key is (the version's image is its
       environment, its archive its code, checked against the hash the state store recorded);
    2. else the archive its submitter shipped (``metadata["code"]``), unless the stack's image
       holds the code (``code = "image"``);
    3. else nothing: the image must hold the code (``load_flow`` says if it does not)."""
    from kitaru._engine.loading import aload_version

    deployment = record.metadata.get(DEPLOYMENT_METADATA)
    if isinstance(deployment, dict) and deployment.get("archive_key"):
        key = str(deployment["archive_key"])
        with _fetching(key):
            # Imported now, so a fetch or import failure gets its exit code before the lease
            # is taken; the Runner's own load finds this import.
            await aload_version(runtime, deployment)
            unpacked = await _fetch(runtime, key)
        _report_environment(record, unpacked)
        return
    if getattr(runtime.stack, "code", "archive") == "image":
        return
    shipped = record.metadata.get(CODE_METADATA)
    if not isinstance(shipped, dict) or not shipped.get("key"):
        return  # started without shipping: the image must hold the code (load_flow says if not)
    key = str(shipped["key"])
    with _fetching(key):
        unpacked = await _fetch(runtime, key)
    _report_environment(record, unpacked)
    _load_from(record, Path(str(shipped.get("root") or "")), unpacked)


async def _fetch(runtime: Runtime, key: str) -> Path:
    from kitaru import _shipping
    from kitaru._engine.loading import code_cache

    return await _shipping.fetch(runtime.aartifacts, key, code_cache())


@contextmanager
def _fetching(key: str) -> Iterator[None]:
    """Classify a failure to fetch code archive ``key``: altered bytes cannot be fixed by a
    retry (``EXIT_CANNOT_RUN``); an unreachable store or a lost download can (``EXIT_RETRY``)."""
    try:
        yield
    except KitaruStoreError as exc:
        if "SHA-256" in str(exc) or "not a code archive" in str(exc) or "outside" in str(exc):
            raise KitaruConfigError(str(exc)) from exc
        raise _Retry(f"the code archive {key} could not be fetched: {exc}") from exc
    except OSError as exc:
        raise _Retry(f"the code archive {key} could not be fetched: {exc!r}") from exc


def _report_environment(record: ExecutionRecord, unpacked: Path) -> None:
    from kitaru import _shipping

    manifest = _shipping.read_manifest(unpacked)
    differences = _shipping.environment_differences(manifest)
    if differences:
        listing = "\n".join(f"  {d}" for d in differences[:20])
        more = f"\n  ... and {len(differences) - 20} more" if len(differences) > 20 else ""
        logger.warning(
            "kitaru worker: this image's environment differs from the one execution %s's code "
            "was archived with:\n%s%s\nIf the flow misbehaves, install the same lock or "
            "requirements in the image.",
            record.id,
            listing,
            more,
        )


def _load_from(record: ExecutionRecord, root: Path, unpacked: Path) -> None:
    """Import the execution's flow from the unpacked tree and register it under the target the
    execution recorded, so the Runner (which loads by that target) finds it."""
    from kitaru._engine import loading

    location, _, qualname = record.target.rpartition(":")
    target = record.target
    if location.endswith(".py"):
        try:
            rel = Path(location).relative_to(root)
        except ValueError:
            raise KitaruUsageError(
                f"execution {record.id}'s script {location} is not under the code root {root} "
                "that was shipped with it. Submit the flow again from its project."
            ) from None
        target = f"{unpacked / rel}:{qualname}"
    flow = loading.load_flow(target, str(unpacked))
    loading._REGISTRY[record.target] = flow
