"""Replay from any boundary, overrides, and the diff between a replay and its original."""

from __future__ import annotations

from collections import Counter

import pytest

import kitaru
from kitaru import KitaruClient, checkpoint, flow
from kitaru._engine.runtime import Runtime

RAN: Counter[str] = Counter()
VERSION = {"c": 1}
BIG = bytes(range(256)) * 512  # 128 KiB: a blob in the artifact store, not inline


@pytest.fixture(autouse=True)
def _reset() -> None:
    RAN.clear()
    VERSION["c"] = 1


@checkpoint
def step_a(topic: str) -> str:
    RAN["a"] += 1
    return f"a({topic})"


@checkpoint
def step_b(x: str) -> bytes:
    RAN["b"] += 1
    return BIG + x.encode()


@checkpoint
def step_c(blob: bytes) -> str:
    RAN["c"] += 1
    return f"c{VERSION['c']}:{len(blob)}"


@checkpoint
def step_d(text: str) -> int:
    RAN["d"] += 1
    return len(text)  # unchanged when c's version changes: same length


@checkpoint
def step_e(text: str, n: int) -> str:
    RAN["e"] += 1
    return f"{text}!{n}"


@flow
def five(topic: str) -> str:
    a = step_a(topic)
    b = step_b(a)
    c = step_c(b)
    d = step_d(c)
    return step_e(c, d)


@checkpoint
def count_words(text: str) -> int:
    RAN["count"] += 1
    return len(text.split())


@flow
def approve_then_count(text: str) -> int:
    draft = step_a(text)
    if not kitaru.wait(name="approve", schema=bool):
        return -1
    return count_words(draft)


class TestReplay:
    def test_replay_from_the_third_of_five_reuses_the_first_two(self, runtime: Runtime) -> None:
        original = five.run("x")
        assert original.wait(timeout=60) == "c1:131076!9"
        blobs_before = sorted(runtime.artifacts.list("blobs/"))
        VERSION["c"] = 2

        replayed = KitaruClient().executions.replay(original.exec_id, "step_c")

        assert replayed.wait(timeout=60) == "c2:131076!9"
        assert RAN == {"a": 1, "b": 1, "c": 2, "d": 2, "e": 2}  # a, b ran once: reused
        client = KitaruClient()
        new = client.executions.get(replayed.exec_id)
        assert new.original_exec_id == original.exec_id
        old_outputs = {
            c.call_id: c.output_artifact for c in client.executions.get(original.exec_id).checkpoints
        }
        new_outputs = {c.call_id: c.output_artifact for c in new.checkpoints}
        assert new_outputs["step_a"] == old_outputs["step_a"]
        assert new_outputs["step_b"] == old_outputs["step_b"]  # the same artifact, same hash
        assert new_outputs["step_c"] != old_outputs["step_c"]
        assert sorted(runtime.artifacts.list("blobs/")) == blobs_before  # no new blobs

        diff = client.executions.diff(original.exec_id, replayed.exec_id)
        changed = {(e.kind, e.name) for e in diff.changed}
        assert changed == {("checkpoint", "step_c"), ("checkpoint", "step_e"), ("result", "result")}
        [c_entry] = [e for e in diff.entries if e.name == "step_c"]
        assert "-c1:131076" in (c_entry.detail or "") and "+c2:131076" in (c_entry.detail or "")

    def test_override_replaces_a_reused_output_and_flows_downstream(self, runtime: Runtime) -> None:
        original = five.run("x")
        original.wait(timeout=60)

        replayed = KitaruClient().executions.replay(
            original.exec_id, "step_c", overrides={"step_b": b"short"}
        )

        assert replayed.wait(timeout=60) == "c1:5!4"
        assert RAN["b"] == 1  # the override stood in for b; b did not run
        diff = KitaruClient().executions.diff(original.exec_id, replayed.exec_id)
        changed = {e.name for e in diff.changed}
        assert changed == {"step_b", "step_c", "step_d", "step_e", "result"}
        [b_entry] = [e for e in diff.entries if e.name == "step_b"]
        assert "bytes" in (b_entry.detail or "")  # binary values get a summary

    def test_flow_replay_method_and_new_arguments(self, runtime: Runtime) -> None:
        original = five.run("x")
        original.wait(timeout=60)
        replayed = five.replay(original.exec_id, "step_a", args={"topic": "yy"})
        assert replayed.wait(timeout=60) == "c1:131077!9"
        diff = KitaruClient().executions.diff(original.exec_id, replayed.exec_id)
        assert ("input", "topic") in {(e.kind, e.name) for e in diff.changed}

    def test_earlier_waits_reuse_their_answers(self, runtime: Runtime) -> None:
        original = approve_then_count.run("one two three")
        KitaruClient().executions.input(original.exec_id, True)
        replayed = KitaruClient().executions.replay(original.exec_id, "count_words")
        assert replayed.status == "completed"  # no new wait: the answer was reused
        assert replayed.wait(timeout=60) == 3
        assert RAN == {"a": 1, "count": 2}

    def test_replay_from_a_wait_asks_again(self, runtime: Runtime) -> None:
        original = approve_then_count.run("one two")
        KitaruClient().executions.input(original.exec_id, True)
        replayed = KitaruClient().executions.replay(original.exec_id, "approve")
        assert replayed.status == "waiting"
        assert KitaruClient().executions.input(replayed.exec_id, False).wait(timeout=60) == -1
        assert RAN["a"] == 1

    def test_code_changed_above_the_boundary_is_a_divergence(
        self, runtime: Runtime, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        original = five.run("x")
        original.wait(timeout=60)

        @checkpoint
        def step_a_v2(topic: str) -> str:
            return topic

        monkeypatch.setitem(five.fn.__globals__, "step_a", step_a_v2)
        with pytest.raises(kitaru.KitaruDivergenceError, match="step_a_v2"):
            KitaruClient().executions.replay(original.exec_id, "step_c")


class TestBadReplayRequests:
    @pytest.mark.parametrize(
        ("from_", "overrides", "args", "message"),
        [
            ("nope", None, None, "no checkpoint or wait 'nope'"),
            ("step_c", {"nope": 1}, None, "no checkpoint or wait called 'nope'"),
            ("step_c", {"step_d": 1}, None, "not before --from"),
            ("step_c", {"step_a": 42}, None, "does not fit the return type"),
            ("step_c", None, {"nope": 1}, "no parameter 'nope'"),
        ],
    )
    def test_rejected_before_anything_runs(
        self,
        runtime: Runtime,
        from_: str,
        overrides: dict[str, object] | None,
        args: dict[str, object] | None,
        message: str,
    ) -> None:
        original = five.run("x")
        original.wait(timeout=60)
        before = RAN.copy()
        with pytest.raises(kitaru.KitaruUsageError, match=message):
            KitaruClient().executions.replay(original.exec_id, from_, overrides=overrides, args=args)
        assert RAN == before
        assert len(runtime.state.list_executions()) == 1

    def test_boundary_list_names_call_ids(self, runtime: Runtime) -> None:
        original = five.run("x")
        original.wait(timeout=60)
        with pytest.raises(kitaru.KitaruUsageError, match="step_a, step_b, step_c, step_d, step_e"):
            KitaruClient().executions.replay(original.exec_id, "nope")
