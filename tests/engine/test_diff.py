"""``executions.diff``: what a person comparing two runs relies on, item by item.

Written to kill the mutants of kitaru/diff.py that survived the replay tests (``nox -s mutate --
kitaru/diff.py``): entries for unchanged items, items only one side has, wait answers, exact text
and JSON diffs, model and dataclass values, bytes and values that no longer load."""

from __future__ import annotations

import dataclasses
import datetime
from typing import Any

import pytest
from pydantic import BaseModel

import kitaru
from kitaru import KitaruClient, checkpoint, flow
from kitaru._engine.runtime import Runtime
from kitaru.diff import DiffEntry


class Point(BaseModel):
    x: int
    label: str


class Stamped(BaseModel):
    at: datetime.datetime


@dataclasses.dataclass
class Box:
    width: int
    name: str


@checkpoint
def echo(value: Any) -> Any:
    return value


@checkpoint
def extra(n: int) -> int:
    return n * 2


@flow
def compare_me(value: Any, with_extra: bool) -> Any:
    out = echo(value)
    if with_extra:
        extra(3)
    answer = kitaru.wait(name="approve", schema=bool)
    return [out, answer]


def _run(value: Any, *, with_extra: bool = False, answer: bool = True) -> str:
    handle = compare_me.run(value, with_extra)
    KitaruClient().executions.input(handle.exec_id, answer)
    return handle.exec_id


def _hashes(exec_id: str) -> dict[tuple[str, str], str]:
    """(kind, name) -> content hash of what the diff compares, read independently of it."""
    client = KitaruClient()
    execution = client.executions.get(exec_id)
    hashes = {("input", a.name): a.content_hash for a in client.artifacts.list(exec_id, type="input")}
    for c in execution.checkpoints:
        hashes[("checkpoint", c.call_id)] = client.artifacts.get(c.output_artifact or "").content_hash
    for w in execution.waits:
        hashes[("wait", w.name)] = client.artifacts.get(w.answer_artifact or "").content_hash
    hashes[("result", "result")] = client.artifacts.get(execution.result_artifact or "").content_hash
    return hashes


def _entry(a: str, b: str, kind: str, name: str) -> DiffEntry:
    found = [e for e in KitaruClient().executions.diff(a, b).entries if (e.kind, e.name) == (kind, name)]
    assert len(found) == 1, found
    return found[0]


class TestDiff:
    def test_identical_runs_list_every_item_as_same_with_its_hash(self, runtime: Runtime) -> None:
        a, b = _run("text"), _run("text")
        diff = KitaruClient().executions.diff(a, b)
        assert (diff.a, diff.b) == (a, b)
        hashes = _hashes(a)
        assert [(e.kind, e.name) for e in diff.entries] == [
            ("input", "value"),
            ("input", "with_extra"),
            ("checkpoint", "echo"),
            ("wait", "approve"),
            ("result", "result"),
        ]
        for e in diff.entries:
            assert e == DiffEntry(e.kind, e.name, "same", hashes[(e.kind, e.name)], hashes[(e.kind, e.name)])
        assert diff.changed == []

    def test_items_only_one_side_has_name_that_side(self, runtime: Runtime) -> None:
        a, b = _run("text", with_extra=True), _run("text")
        a_hash = _hashes(a)[("checkpoint", "extra")]
        assert _entry(a, b, "checkpoint", "extra") == DiffEntry("checkpoint", "extra", "only_a", a_hash, None)
        assert _entry(b, a, "checkpoint", "extra") == DiffEntry("checkpoint", "extra", "only_b", None, a_hash)
        # Items after a one-sided one are still compared.
        assert [(e.kind, e.name, e.status) for e in KitaruClient().executions.diff(a, b).entries][-3:] == [
            ("checkpoint", "extra", "only_a"),
            ("wait", "approve", "same"),
            ("result", "result", "same"),
        ]

    def test_a_changed_wait_answer_is_an_entry(self, runtime: Runtime) -> None:
        a, b = _run("text", answer=True), _run("text", answer=False)
        entry = _entry(a, b, "wait", "approve")
        assert (entry.status, entry.a_hash, entry.b_hash) == (
            "changed",
            _hashes(a)[("wait", "approve")],
            _hashes(b)[("wait", "approve")],
        )
        assert entry.detail == "--- a\n+++ b\n@@ -1 +1 @@\n-true\n+false"

    def test_text_changes_are_a_unified_diff_with_two_lines_of_context(self, runtime: Runtime) -> None:
        before = "\n".join(f"line {i}" for i in range(1, 9))
        after = before.replace("line 5", "line five")
        entry = _entry(_run(before), _run(after), "checkpoint", "echo")
        assert entry.detail == (
            "--- a\n+++ b\n@@ -3,5 +3,5 @@\n line 3\n line 4\n-line 5\n+line five\n line 6\n line 7"
        )

    def test_json_values_diff_with_sorted_keys_and_readable_unicode(self, runtime: Runtime) -> None:
        a = _run({"zeta": 1, "alpha": "café"})
        b = _run({"zeta": 2, "alpha": "café"})
        entry = _entry(a, b, "checkpoint", "echo")
        assert entry.detail == (
            '--- a\n+++ b\n@@ -1,4 +1,4 @@\n {\n   "alpha": "café",\n-  "zeta": 1\n+  "zeta": 2\n }'
        )

    @pytest.mark.parametrize(
        ("old", "new", "changed_line"),
        [
            (Point(x=1, label="p"), Point(x=2, label="p"), ('-  "x": 1', '+  "x": 2')),
            (Box(width=1, name="b"), Box(width=3, name="b"), ('-  "width": 1', '+  "width": 3')),
        ],
    )
    def test_models_and_dataclasses_diff_field_by_field(
        self, runtime: Runtime, old: Any, new: Any, changed_line: tuple[str, str]
    ) -> None:
        entry = _entry(_run(old), _run(new), "checkpoint", "echo")
        assert entry.detail is not None
        lines = entry.detail.splitlines()
        assert changed_line[0] in lines and changed_line[1] in lines, entry.detail

    def test_models_diff_in_json_mode(self, runtime: Runtime) -> None:
        a = _run(Stamped(at=datetime.datetime(2024, 1, 1)))
        b = _run(Stamped(at=datetime.datetime(2024, 1, 2)))
        detail = _entry(a, b, "checkpoint", "echo").detail or ""
        assert '-  "at": "2024-01-01T00:00:00"' in detail.splitlines(), detail

    @pytest.mark.parametrize(("old", "new"), [("text", "text\n"), ("text", {1, 2}), ({1, 2}, "text")])
    def test_changes_without_a_line_diff_are_summarised(self, runtime: Runtime, old: Any, new: Any) -> None:
        a, b = _run(old), _run(new)
        client = KitaruClient()
        ra = client.artifacts.get(client.executions.get(a).checkpoints[0].output_artifact or "")
        rb = client.artifacts.get(client.executions.get(b).checkpoints[0].output_artifact or "")
        assert _entry(a, b, "checkpoint", "echo").detail == (
            f"{ra.data_type}, {ra.size} bytes, {ra.content_hash[:19]} -> "
            f"{rb.data_type}, {rb.size} bytes, {rb.content_hash[:19]}"
        )

    def test_bytes_changes_are_summarised(self, runtime: Runtime) -> None:
        a, b = _run(b"\x00" * 10), _run(b"\x01" * 12)
        ha, hb = _hashes(a)[("checkpoint", "echo")], _hashes(b)[("checkpoint", "echo")]
        entry = _entry(a, b, "checkpoint", "echo")
        assert entry.detail == f"builtins:bytes, 10 bytes, {ha[:19]} -> builtins:bytes, 12 bytes, {hb[:19]}"

    def test_values_that_no_longer_load_still_get_a_summary(
        self, runtime: Runtime, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        a, b = _run("one"), _run("two")
        ha, hb = _hashes(a)[("checkpoint", "echo")], _hashes(b)[("checkpoint", "echo")]

        def broken(record: Any) -> Any:
            raise ImportError("module gone")

        monkeypatch.setattr(runtime, "load_artifact", broken)
        entry = _entry(a, b, "checkpoint", "echo")
        assert entry.detail == (
            f"builtins:str, 5 bytes, {ha[:19]} -> builtins:str, 5 bytes, {hb[:19]} "
            "(values not loadable here: module gone)"
        )
