"""Compare two executions call by call: inputs, checkpoint outputs, wait answers, result."""

from __future__ import annotations

import difflib
import json
from dataclasses import asdict, dataclass, field
from typing import Any

from kitaru.store import ArtifactRecord, JournalRecord

__all__ = ["DiffEntry", "ExecutionDiff"]

_PREVIEW = 200


@dataclass(frozen=True, slots=True)
class DiffEntry:
    """One compared item: an input, a checkpoint call, a wait or the result."""

    kind: str
    """``input``, ``checkpoint``, ``wait`` or ``result``."""
    name: str
    status: str
    """``same``, ``changed``, ``only_a`` or ``only_b``."""
    a_hash: str | None = None
    b_hash: str | None = None
    detail: str | None = None
    """For ``changed``: a unified diff of text and JSON-like values, a summary for others."""


@dataclass(frozen=True, slots=True)
class ExecutionDiff:
    """The comparison of execution ``a`` with execution ``b``."""

    a: str
    b: str
    entries: list[DiffEntry] = field(default_factory=list)

    @property
    def changed(self) -> list[DiffEntry]:
        """Entries that are not the same on both sides."""
        return [e for e in self.entries if e.status != "same"]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _items(journal: list[JournalRecord], execution_result: str | None) -> dict[tuple[str, str], str]:
    """(kind, name) -> artifact id, for everything worth comparing, in journal order."""
    items: dict[tuple[str, str], str] = {}
    for r in journal:
        if not r.artifact_id or not r.call_id:
            continue
        if r.kind == "input":
            items[("input", r.call_id or "")] = r.artifact_id
        elif r.kind == "checkpoint_completed":
            items[("checkpoint", r.call_id or "")] = r.artifact_id
        elif r.kind == "wait_answered":
            items[("wait", r.call_id or "")] = r.artifact_id
    if execution_result:
        items[("result", "result")] = execution_result
    return items


def _comparable(value: Any) -> Any:
    dump = getattr(value, "model_dump", None)
    if callable(dump):
        return dump(mode="json")
    import dataclasses

    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    return value


def _as_lines(value: Any) -> list[str] | None:
    value = _comparable(value)
    if isinstance(value, str):
        return value.splitlines(keepends=False)
    try:
        return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False).splitlines()
    except (TypeError, ValueError):
        return None


def describe_change(a: Any, b: Any, a_record: ArtifactRecord, b_record: ArtifactRecord) -> str:
    """A readable account of how ``a`` became ``b``."""
    if isinstance(a, bytes | bytearray) or isinstance(b, bytes | bytearray):
        return _summary(a_record, b_record)
    a_lines, b_lines = _as_lines(a), _as_lines(b)
    if a_lines is None or b_lines is None:
        return _summary(a_record, b_record)
    lines = list(difflib.unified_diff(a_lines, b_lines, "a", "b", lineterm="", n=2))
    return "\n".join(lines) if lines else _summary(a_record, b_record)


def _summary(a: ArtifactRecord, b: ArtifactRecord) -> str:
    return (
        f"{a.data_type}, {a.size} bytes, {a.content_hash[:19]} -> "
        f"{b.data_type}, {b.size} bytes, {b.content_hash[:19]}"
    )


def diff_executions(runtime: Any, a_id: str, b_id: str) -> ExecutionDiff:
    """Compare executions ``a_id`` and ``b_id`` (both must exist) item by item."""
    state = runtime.state
    a_exec, b_exec = state.get_execution(a_id), state.get_execution(b_id)
    a_items = _items(state.read_journal(a_id), a_exec.result_artifact)
    b_items = _items(state.read_journal(b_id), b_exec.result_artifact)
    entries: list[DiffEntry] = []
    for key in [*a_items, *(k for k in b_items if k not in a_items)]:
        kind, name = key
        a_art = state.get_artifact(a_items[key]) if key in a_items else None
        b_art = state.get_artifact(b_items[key]) if key in b_items else None
        if a_art is None or b_art is None:
            status = "only_a" if b_art is None else "only_b"
            entries.append(
                DiffEntry(
                    kind,
                    name,
                    status,
                    a_art.content_hash if a_art else None,
                    b_art.content_hash if b_art else None,
                )
            )
            continue
        if a_art.content_hash == b_art.content_hash:
            entries.append(DiffEntry(kind, name, "same", a_art.content_hash, b_art.content_hash))
            continue
        try:
            detail = describe_change(runtime.load_artifact(a_art), runtime.load_artifact(b_art), a_art, b_art)
        except Exception as exc:  # a value that no longer loads still has a summary
            detail = f"{_summary(a_art, b_art)} (values not loadable here: {exc})"
        entries.append(DiffEntry(kind, name, "changed", a_art.content_hash, b_art.content_hash, detail))
    return ExecutionDiff(a_id, b_id, entries)
