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
- **Tags.** A tag points at an existing version of its flow; a weight is a whole number 0-100, is
  not given to ``default`` (which takes what weighted tags leave), and a flow's weights add up to
  at most 100. ``promote`` needs its source tag, ``rollback`` a version to go back to. A store
  locks the flow, reads its versions, tags and (for a rollback) history, and asks
  :func:`plan_tag_moves` for the moves: a bad request raises before anything is written.
- **Listing order.** Executions list newest first by ``created_at``, ties by id (both descending):
  a caller may choose an execution's id (an idempotency key), so ids need not sort by time. A
  page's cursor is the id of the previous page's last execution; the next page holds those after
  it in that order (keyset ``(created_at, id) < (its created_at, its id)``), and an id no
  execution has is refused (:func:`unknown_cursor`) rather than read as a bound.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING

from kitaru.errors import (
    KitaruConflictError,
    KitaruLeaseError,
    KitaruNotFoundError,
    KitaruStateError,
    KitaruUsageError,
)

if TYPE_CHECKING:
    from kitaru.store import TagMove, TagRequest

__all__ = [
    "DEFAULT_TAG",
    "FINAL_STATUSES",
    "HOST",
    "check_acquirable",
    "check_answerable",
    "check_cancellable",
    "check_page_size",
    "check_status_change",
    "check_takeover",
    "check_wait_open",
    "check_weight",
    "deploy_requests",
    "final_error",
    "key_exists",
    "lease_free",
    "lease_holder_alive",
    "no_such_key",
    "plan_tag_moves",
    "refused_from",
    "unknown_cursor",
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
            f"execution {exec_id} is cancelled, so it cannot {action}: a cancelled execution stays "
            f"cancelled. To run it anew, replay it: `kitaru executions replay {exec_id} --from "
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
            # The name in parentheses may itself hold ") ": the state follows the last one.
            return fh.read().rsplit(b") ", 1)[1][:1] != b"Z"
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


# -- deployments and tags ---------------------------------------------------------------------------

#: The tag invocations use when none is named; the first version of a flow gets it.
DEFAULT_TAG = "default"


def check_weight(flow: str, tag: str, weight: object) -> None:
    """Refuse a weight that is not a whole number 0-100, or a weight on ``default``."""
    if weight is None:
        return
    if isinstance(weight, bool) or not isinstance(weight, int) or not 0 <= weight <= 100:
        raise KitaruUsageError(
            f"weight {weight!r} for tag {tag!r} of flow {flow!r} is not a whole percentage: give "
            f"0 to 100, e.g. `kitaru deployments tag {flow} {tag} N --weight 10`."
        )
    if tag == DEFAULT_TAG:
        raise KitaruUsageError(
            f"the {DEFAULT_TAG!r} tag of flow {flow!r} takes the executions weighted tags leave, "
            f"so it carries no weight. Weight a canary tag instead: `kitaru deployments tag {flow} "
            "canary N --weight 10`."
        )


def _missing_version(flow: str, version: int, versions: Iterable[int]) -> KitaruNotFoundError:
    known = sorted(versions)
    have = f"its versions are {', '.join(map(str, known))}" if known else "it has no versions yet"
    return KitaruNotFoundError(
        f"flow {flow!r} has no version {version} ({have}); nothing was changed. See them with "
        f"`kitaru deployments list {flow}`."
    )


def deploy_requests(tag: str | None, weight: int | None, version: int, first: bool) -> list[TagRequest]:
    """The tag moves a deploy of ``version`` makes: ``default`` for a flow's first version, and
    ``tag`` (with ``weight``) when given."""
    from kitaru.store import TagRequest

    requests = []
    if first and tag != DEFAULT_TAG:
        requests.append(TagRequest(DEFAULT_TAG, "set", version))
    if tag is not None:
        requests.append(TagRequest(tag, "set", version, weight=weight))
    return requests


def plan_tag_moves(
    flow: str,
    requests: Sequence[TagRequest],
    versions: Iterable[int],
    tags: dict[str, tuple[int, int | None]],
    history: Callable[[str], list[int | None]],
    *,
    who: str,
    now: float,
    action: str | None = None,
) -> list[TagMove]:
    """The moves ``requests`` make, applied in order to ``tags`` (tag -> (version, weight), which
    is updated in place); raises before anything is written when one is refused.

    ``history(tag)`` gives the versions a tag pointed at, oldest first (None: removed), for a
    rollback. ``action`` names the moves in the history (default: each request's own action,
    ``set`` recorded as ``tag``)."""
    from kitaru.store import TagMove

    known = set(versions)
    moves = []
    for req in requests:
        tag = req.tag.strip()
        if not tag or any(c in tag for c in "@: \t\n/"):
            raise KitaruUsageError(
                f"{req.tag!r} is not a tag name: use letters, digits, '-', '_' or '.' "
                "(no '@', ':', '/' or spaces)."
            )
        current = tags.get(tag)
        if req.action == "remove":
            if current is None:
                raise KitaruNotFoundError(
                    f"flow {flow!r} has no tag {tag!r}; nothing was changed. See its tags with "
                    f"`kitaru deployments list {flow}`."
                )
            if tag == DEFAULT_TAG:
                raise KitaruUsageError(
                    f"the {DEFAULT_TAG!r} tag of flow {flow!r} is what invocations use, so it is "
                    f"not removed; move it instead (`kitaru deployments rollback {flow}` or "
                    f"`kitaru deployments tag {flow} {DEFAULT_TAG} N`)."
                )
            version, weight = None, None
        elif req.action == "promote":
            source = tags.get(req.source or "")
            if source is None:
                raise KitaruNotFoundError(
                    f"flow {flow!r} has no tag {req.source!r} to promote; nothing was changed. See "
                    f"its tags with `kitaru deployments list {flow}`."
                )
            version, weight = source[0], None
        elif req.action == "rollback":
            if current is None:
                raise KitaruNotFoundError(
                    f"flow {flow!r} has no tag {tag!r} to roll back; deploy it first with `flow.deploy()`."
                )
            if req.version is not None:
                version = req.version
            else:
                earlier = [v for v in history(tag) if v is not None and v != current[0]]
                if not earlier:
                    raise KitaruStateError(
                        f"tag {tag!r} of flow {flow!r} never pointed at a version other than "
                        f"{current[0]}, so there is nothing to roll back to; nothing was changed. "
                        f"Name one with `kitaru deployments rollback {flow} --to N`."
                    )
                version = earlier[-1]
            weight = current[1]
        else:
            if req.version is None:
                raise KitaruUsageError(f"moving tag {tag!r} of flow {flow!r} needs a version.")
            version, weight = req.version, req.weight
        if version is not None and version not in known:
            raise _missing_version(flow, version, known)
        check_weight(flow, tag, weight)
        if version is None:
            tags.pop(tag, None)
        else:
            tags[tag] = (version, weight)
        total = sum(w or 0 for w in (v[1] for v in tags.values()))
        if total > 100:
            raise KitaruUsageError(
                f"the weights of flow {flow!r}'s tags would add up to {total}%, over 100%; nothing "
                "was changed. Lower or remove another tag's weight first."
            )
        moves.append(
            TagMove(
                flow=flow,
                tag=tag,
                version=version,
                previous=current[0] if current else None,
                weight=weight,
                action=action or {"set": "tag", "remove": "untag"}.get(req.action, req.action),
                who=who,
                ts=now,
            )
        )
    return moves


def key_exists(name: str) -> KitaruConflictError:
    """The error for a second API key of the same name."""
    return KitaruConflictError(
        f"an API key named {name!r} exists already (names stay taken after a revoke, so logs keep "
        "meaning one key). Choose another name; `kitaru server keys list` shows the names in use."
    )


def no_such_key(name: str) -> KitaruNotFoundError:
    """The error for revoking a key that was never created."""
    return KitaruNotFoundError(f"no API key named {name!r}. `kitaru server keys list` shows them.")


def check_page_size(limit: int) -> None:
    """Refuse a ``list_executions`` page size below 1 (SQLite reads ``LIMIT -1`` as "no limit",
    PostgreSQL refuses it, a slice counts from the end: one rule instead of three behaviours)."""
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise KitaruUsageError(f"limit={limit!r}: a page holds at least 1 execution; give a number >= 1.")


def unknown_cursor(before: str) -> KitaruUsageError:
    """The error for a ``list_executions`` cursor that is no execution's id. A page starts after an
    execution's place in time, which an arbitrary string does not have; silently listing from
    where the string would sort (what ids-as-cursor once did) gave a page out of time order."""
    shown = before if len(before) <= 120 else before[:120] + "..."
    return KitaruUsageError(
        f"no execution {shown!r} to list after: the cursor (`before`, the API's `cursor`) must be "
        "the id of the previous page's last execution (the `next_cursor` it came with). Leave it "
        "out to list from the newest."
    )
