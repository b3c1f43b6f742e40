"""The rules every state store applies, written once so the backends cannot drift apart.

A store locks an execution's row (or takes its lock), reads what it needs, and asks these functions
whether the change may happen; each raises the error the user sees, with the same words whatever
the backend. The rules:

- **Final statuses.** ``completed`` and ``cancelled`` are never left: no commit, suspension, lease
  or answer moves an execution out of them. A cancelled execution does not run again (a *replay*
  runs it anew, as another execution); a completed one keeps its result.
- **Lease takeover.** A lease is free when nobody holds it, it expired, or its holder is a process
  on this host that no longer exists (a holder elsewhere is trusted until its lease expires).
- **Answers.** A wait takes one answer, only while it is open, in an execution that has not
  finished.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterable

from kitaru.errors import KitaruConflictError, KitaruLeaseError, KitaruNotFoundError, KitaruStateError

__all__ = [
    "FINAL_STATUSES",
    "HOST",
    "check_acquirable",
    "check_answerable",
    "check_cancellable",
    "check_status_change",
    "check_takeover",
    "check_wait_open",
    "final_error",
    "key_exists",
    "lease_free",
    "lease_holder_alive",
    "no_such_key",
    "refused_from",
]

#: Statuses an execution never leaves.
FINAL_STATUSES: frozenset[str] = frozenset({"completed", "cancelled"})
_TERMINAL: frozenset[str] = frozenset({"completed", "failed", "cancelled"})

HOST = socket.gethostname()


def final_error(exec_id: str, status: str, action: str) -> KitaruStateError:
    """The error for an operation (``action``: what it would have made the execution do) on an
    execution in a final status."""
    if status == "cancelled":
        return KitaruStateError(
            f"execution {exec_id} is cancelled, so it cannot {action}: a cancelled execution does "
            f"not run again. To run it anew, replay it: `kitaru executions replay {exec_id} --from "
            "CHECKPOINT`."
        )
    return KitaruStateError(
        f"execution {exec_id} is {status}, so it cannot {action}: its result is final. See it "
        f"with `kitaru executions get {exec_id}`; to run it anew, `kitaru executions replay "
        f"{exec_id} --from CHECKPOINT`."
    )


def refused_from(new: str) -> list[str]:
    """The statuses an execution may not move to ``new`` from (for stores that check in SQL)."""
    return sorted(s for s in FINAL_STATUSES if s != new)


def check_status_change(exec_id: str, current: str, new: str) -> None:
    """Refuse moving an execution from ``current`` to ``new`` when ``current`` is final."""
    if current in FINAL_STATUSES and new != current:
        action = {"waiting": "wait for input", "running": "run again"}.get(new, f"become {new}")
        raise final_error(exec_id, current, action)


def check_acquirable(exec_id: str, current: str, allowed: Iterable[str]) -> None:
    """Refuse taking the lease of an execution in a final status, or in one the caller did not
    allow."""
    allowed = set(allowed)
    if current in FINAL_STATUSES:
        raise final_error(exec_id, current, "run again")
    if current not in allowed:
        raise KitaruStateError(
            f"execution {exec_id} is {current}; this needs it to be {' or '.join(sorted(allowed))}."
        )


def check_answerable(exec_id: str, current: str) -> None:
    """Refuse an answer to a wait of an execution that finished."""
    if current == "cancelled":
        raise final_error(exec_id, current, "take an answer")
    if current in _TERMINAL:
        raise KitaruStateError(f"execution {exec_id} is {current}: its waits are closed and take no answers.")


def check_wait_open(exec_id: str, call_id: str | None, kinds: Iterable[str]) -> None:
    """Refuse an answer to a wait that was never opened, or was answered or timed out already
    (``kinds``: the journal record kinds stored for that wait)."""
    kinds = set(kinds)
    if "wait_opened" not in kinds:
        raise KitaruNotFoundError(f"execution {exec_id} has no wait {call_id!r}")
    if "wait_answered" in kinds or "wait_timed_out" in kinds:
        raise KitaruStateError(
            f"wait {call_id!r} of execution {exec_id} is already "
            f"{'answered' if 'wait_answered' in kinds else 'timed out'}; it takes no other answer. "
            f"See it with `kitaru executions get {exec_id}`."
        )


def check_cancellable(exec_id: str, current: str) -> None:
    """Refuse cancelling an execution that finished."""
    if current in _TERMINAL:
        raise KitaruStateError(
            f"execution {exec_id} is already {current}; only running or waiting executions can be cancelled."
        )


def lease_holder_alive(owner: str) -> bool:
    """Whether the process named in a lease owner (``host:pid:token``) may still be running.

    Only a holder on this host can be proven dead; a remote holder is trusted until its lease expires.
    """
    host, _, rest = owner.partition(":")
    pid_text = rest.partition(":")[0]
    if host != HOST or not pid_text.isdigit():
        return True
    pid = int(pid_text)
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie has exited but still answers kill(0); treat it as dead.
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return fh.read().split(b") ", 1)[1][:1] != b"Z"
    except OSError:
        return True


def lease_free(holder: str | None, expires: float | None, now: float) -> bool:
    """Whether nobody drives the execution: no holder, an expired lease, or a dead local holder."""
    return holder is None or (expires or 0) <= now or not lease_holder_alive(holder)


def check_takeover(exec_id: str, holder: str | None, expires: float | None, owner: str, now: float) -> None:
    """Refuse taking a lease that another live runner holds."""
    if holder is not None and holder != owner and not lease_free(holder, expires, now):
        raise KitaruLeaseError(
            f"execution {exec_id} is being driven by {holder} (lease until "
            f"{time.strftime('%H:%M:%S', time.localtime(expires))}). It will finish there; if that "
            "runner is gone, retry after the lease expires."
        )


def key_exists(name: str) -> KitaruConflictError:
    """The error for a second API key of the same name."""
    return KitaruConflictError(
        f"an API key named {name!r} exists already (names stay taken after a revoke, so logs keep "
        "meaning one key). Choose another name; `kitaru server keys list` shows the names in use."
    )


def no_such_key(name: str) -> KitaruNotFoundError:
    """The error for revoking a key that was never created."""
    return KitaruNotFoundError(f"no API key named {name!r}. `kitaru server keys list` shows them.")
