"""The outputs index of an execution: outputs remembered by identity, so that passing one on to
the next checkpoint records the lineage edge and fingerprints the input without rehashing it."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any

from kitaru.serialization import _is_json_native
from kitaru.store import ArtifactRecord

from .runtime import INLINE_LIMIT

# Outputs remembered to recognise them when passed on to the next checkpoint (lineage, and input
# fingerprints that need no rehash). Large values are only held while the budget allows.
_INDEX_BUDGET = 256 * 1024 * 1024
_INDEX_ELEMENTS = 1000


class _OutputsIndex:
    """The outputs index and input fingerprints of :class:`~kitaru._engine.context.ExecutionContext`
    (which sets up ``_outputs`` and ``_outputs_bytes``)."""

    _outputs: dict[int, tuple[str, str | None, Any, int]]
    _outputs_bytes: int

    def remember_output(self, value: Any, artifact: ArtifactRecord) -> None:
        """Note ``value`` as ``artifact``, so passing it to a checkpoint records the edge. The
        direct elements of a list, tuple or dict output are noted too: fanning out over them is
        lineage from the whole artifact."""
        if not self._remember(value, artifact.id, artifact.content_hash, artifact.size):
            return
        items = value.values() if type(value) is dict else value if type(value) in (list, tuple) else ()
        for i, item in enumerate(items):
            if i >= _INDEX_ELEMENTS:
                break
            if type(item) is not str or len(item) > 1:  # 1-char strings are shared objects
                self._remember(item, artifact.id, None, 0)

    def _remember(self, value: Any, artifact_id: str, content_hash: str | None, size: int) -> bool:
        if value is None or type(value) in (bool, int, float):
            return False  # small numbers and singletons are shared objects: identity means nothing
        held = size if size > INLINE_LIMIT else 0
        if self._outputs_bytes + held > _INDEX_BUDGET:
            return False
        self._outputs_bytes += held
        self._outputs[id(value)] = (artifact_id, content_hash, value, held)
        return True

    def describe_inputs(self, args: Sequence[Any], kwargs: dict[str, Any]) -> tuple[str, list[str]]:
        """A fingerprint of the call's arguments, and the artifacts among them (lineage)."""
        parts: list[str] = []
        lineage: list[str] = []
        for value in args:
            parts.append(self._describe(value, lineage))
        for key in sorted(kwargs):
            parts.append(f"{key}={self._describe(kwargs[key], lineage)}")
        return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:32], lineage

    def _describe(self, value: Any, lineage: list[str]) -> str:
        known = self._outputs.get(id(value))
        if known is not None and known[2] is value:
            if known[0] not in lineage:
                lineage.append(known[0])
            return known[1] or _fingerprint(value)
        tp = type(value)
        if tp is list or tp is tuple or tp is dict:
            # Fan-in: a container the flow built from earlier outputs.
            for i, item in enumerate(value.values() if tp is dict else value):
                if i >= _INDEX_ELEMENTS:
                    break
                known = self._outputs.get(id(item))
                if known is not None and known[2] is item and known[0] not in lineage:
                    lineage.append(known[0])
        return _fingerprint(value)


def _fingerprint(value: Any) -> str:
    tp = type(value)
    if tp is str:
        return "s" + hashlib.sha256(value.encode()).hexdigest()[:24]
    if tp in (int, float, bool) or value is None:
        return repr(value)
    if tp is bytes:
        return "b" + hashlib.sha256(value).hexdigest()[:24]
    if (tp is list or tp is dict) and _is_json_native(value):
        text = json.dumps(value, sort_keys=True, separators=(",", ":"))
        return "j" + hashlib.sha256(text.encode()).hexdigest()[:24]
    dump = getattr(value, "model_dump_json", None)
    if dump is not None:
        try:
            return "m" + hashlib.sha256(dump().encode()).hexdigest()[:24]
        except Exception:
            pass
    # Opaque values (clients, handles...) are compared by type only: their bytes are not stable.
    return f"t:{tp.__module__}.{tp.__qualname__}"
