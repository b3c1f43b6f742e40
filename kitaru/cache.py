"""The checkpoint cache: a checkpoint output reused across executions.

``@checkpoint(cache=True)`` (or ``@flow(cache=True)`` for all of a flow's checkpoints) looks a call
up by a key made of the flow's name, the checkpoint's qualified name, a hash of its *code* (its
bytecode, constants and names, recursively through nested functions: stable across processes of
one Python version, and different as soon as the body changes) and either the fingerprints of its
inputs (those the engine records for every call) or the user's ``cache_key``. A hit reuses the
stored output artifact (no copy); the call is journaled as completed with ``cached_from`` naming
the execution that produced it.

The journal comes first: a call the journal already completed is replayed from it; the cache is
consulted only for a call with no journal record. Inputs the engine can only fingerprint by their
type (clients, open files, arbitrary objects) make a call uncacheable unless it has a
``cache_key``: two different such objects would otherwise share an entry.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Sequence
from types import CodeType
from typing import Any

__all__ = ["CacheKey", "cache_key_for", "code_hash"]

logger = logging.getLogger("kitaru")

#: A user's cache key: a string, or a callable of the checkpoint's arguments returning one.
CacheKey = str | Callable[..., Any]

_CODE_HASHES: dict[CodeType, str] = {}


def code_hash(fn: Callable[..., Any]) -> str:
    """A hash of ``fn``'s code that is the same in every process running the same source."""
    code = getattr(fn, "__code__", None)
    if code is None:
        code = getattr(getattr(fn, "__call__", None), "__code__", None)  # noqa: B004
    if code is None:  # a builtin or C function: only its name identifies it
        return hashlib.sha256(f"{fn.__module__}.{fn.__qualname__}".encode()).hexdigest()
    found = _CODE_HASHES.get(code)
    if found is None:
        digest = hashlib.sha256()
        _feed(digest, code)
        found = _CODE_HASHES[code] = digest.hexdigest()
    return found


def _feed(digest: Any, code: CodeType) -> None:
    # Line numbers are left out on purpose: moving a function in its file keeps its entries.
    digest.update(code.co_code)
    digest.update(repr(code.co_names).encode())
    digest.update(repr(code.co_varnames).encode())
    for const in code.co_consts:
        if isinstance(const, CodeType):
            _feed(digest, const)
        else:
            digest.update(_const_repr(const).encode())
            digest.update(b"\x1f")


def _const_repr(value: Any) -> str:
    # A frozenset's repr follows string hashing, which differs per process (PYTHONHASHSEED).
    if isinstance(value, frozenset):
        return "frozenset(" + ",".join(sorted(_const_repr(v) for v in value)) + ")"
    if isinstance(value, tuple):
        return "(" + ",".join(_const_repr(v) for v in value) + ")"
    return repr(value)


def cache_key_for(
    *,
    flow: str,
    qualname: str,
    fn: Callable[..., Any],
    fingerprint: str,
    opaque: Sequence[str],
    user_key: CacheKey | None,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> str | None:
    """The call's cache key, or None when it cannot be cached (opaque inputs, no ``cache_key``)."""
    if user_key is not None:
        part = user_key(*args, **kwargs) if callable(user_key) else user_key
        inputs = "user:" + str(part)
    elif opaque:
        logger.warning(
            "checkpoint %r is not cached: its inputs %s can only be told apart by type. Give it "
            "a cache_key=... (a string, or a function of its arguments) to cache it.",
            qualname,
            ", ".join(opaque),
        )
        return None
    else:
        inputs = "fp:" + fingerprint
    text = "\x1f".join(("kitaru-cache-1", flow, qualname, code_hash(fn), inputs))
    return hashlib.sha256(text.encode()).hexdigest()
