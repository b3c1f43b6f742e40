"""Replay promises the older replay tests left unpinned (mutants of kitaru/_engine/replay.py that
survived them, from ``nox -s mutate -- kitaru/_engine/replay.py``): saves are not boundaries, wait
answers can be overridden (validated first), a reused checkpoint keeps what it logged, saved and
loaded, a running execution is not replayed, and a replay says what it replays."""

from __future__ import annotations

import threading
from collections import Counter
from typing import Annotated, Any

import pytest
from pydantic import AfterValidator

import kitaru
from kitaru import KitaruClient, checkpoint, flow
from kitaru._engine.runtime import Runtime

RAN: Counter[str] = Counter()


@pytest.fixture(autouse=True)
def _reset() -> None:
    RAN.clear()


@flow
def source() -> None:
    kitaru.save("facts", "cats purr")


@checkpoint
def gather(source_id: str) -> str:
    RAN["gather"] += 1
    print("gathering")
    kitaru.log(tokens=12)
    kitaru.save("draft", "a draft")
    return kitaru.load(source_id, "facts")


@checkpoint
def untyped(text):  # type: ignore[no-untyped-def]  # no return annotation: overrides take anything
    RAN["untyped"] += 1
    return text.upper()


@checkpoint
def finish(facts: str, approved: int, shout: Any) -> str:
    RAN["finish"] += 1
    return f"{facts}/{approved}/{shout}"


@flow
def reviewed(source_id: str) -> str:
    facts = gather(source_id)
    kitaru.save("notes", "flow-scope note")
    shout = untyped(facts)
    approved = kitaru.wait(name="score", schema=int)
    return finish(facts, approved, shout)


def _original() -> tuple[str, str]:
    source_id = source.run().exec_id
    handle = reviewed.run(source_id)
    KitaruClient().executions.input(handle.exec_id, 3)
    assert handle.wait(timeout=60) == "cats purr/3/CATS PURR"
    return source_id, handle.exec_id


class TestReplayPlan:
    def test_a_flow_scope_save_is_not_a_boundary(self, runtime: Runtime) -> None:
        _, original = _original()
        with pytest.raises(
            kitaru.KitaruUsageError, match="Boundaries it has, in call order: gather, untyped, score"
        ):
            KitaruClient().executions.replay(original, "save.notes")
        with pytest.raises(kitaru.KitaruUsageError, match=r"no checkpoint or wait called 'save\.notes'"):
            KitaruClient().executions.replay(original, "finish", overrides={"save.notes": "x"})

    def test_a_wait_answer_is_overridden_after_validation(self, runtime: Runtime) -> None:
        _, original = _original()
        client = KitaruClient()
        for bad in ("not a number", "7"):  # answers are strict: a string is not an int
            with pytest.raises(kitaru.KitaruWaitValidationError, match="override of wait 'score'"):
                client.executions.replay(original, "finish", overrides={"score": bad})
        assert len(client.executions.list()) == 2  # the source and the original: nothing written
        replayed = client.executions.replay(original, "finish", overrides={"score": 7})
        assert replayed.status == "completed"
        assert replayed.wait(timeout=60) == "cats purr/7/CATS PURR"
        assert RAN == {"gather": 1, "untyped": 1, "finish": 2}
        changed = {(e.kind, e.name) for e in client.executions.diff(original, replayed.exec_id).changed}
        assert changed == {("wait", "score"), ("checkpoint", "finish"), ("result", "result")}

    def test_an_unannotated_checkpoint_output_is_overridden_by_any_value(self, runtime: Runtime) -> None:
        _, original = _original()
        replayed = KitaruClient().executions.replay(original, "finish", overrides={"untyped": [1, 2]})
        assert replayed.status == "completed"  # driven here: a replay that waited would say so
        assert replayed.wait(timeout=60) == "cats purr/3/[1, 2]"

    def test_a_reused_checkpoint_keeps_its_logs_saves_and_loads(self, runtime: Runtime) -> None:
        source_id, original = _original()
        client = KitaruClient()
        replayed = client.executions.replay(original, "finish")
        assert replayed.status == "completed"
        assert replayed.wait(timeout=60) == "cats purr/3/CATS PURR" and RAN["gather"] == 1
        [call] = [c for c in client.executions.get(replayed.exec_id).checkpoints if c.call_id == "gather"]
        assert call.metadata == {"tokens": 12}
        names = {(a.name, a.type) for a in client.artifacts.list(replayed.exec_id)}
        assert {("draft", "save"), ("notes", "save"), ("gather", "output")} <= names
        graph = client.executions.graph(replayed.exec_id)
        loaded = [e for e in graph.edges if e.name == "facts"]
        assert loaded and all(e.source.startswith(source_id) or source_id in e.source for e in loaded), loaded

    def test_a_replay_records_what_it_replays(self, runtime: Runtime) -> None:
        _, original = _original()
        replayed = KitaruClient().executions.replay(original, "untyped")
        execution = KitaruClient().executions.get(replayed.exec_id)
        assert execution.original_exec_id == original
        assert execution.metadata["replay"] == {"of": original, "from": "untyped"}

    def test_a_running_execution_is_not_replayed(self, runtime: Runtime) -> None:
        started, release = threading.Event(), threading.Event()
        BLOCK["started"], BLOCK["release"] = started, release
        handles: list[Any] = []
        runner = threading.Thread(target=lambda: handles.append(blocked.run()))
        runner.start()
        try:
            assert started.wait(timeout=60)
            [running] = KitaruClient().executions.list(status="running")
            with pytest.raises(kitaru.KitaruStateError, match=f"execution {running.id} is running"):
                KitaruClient().executions.replay(running.id, "hold")
            assert len(KitaruClient().executions.list()) == 1
        finally:
            release.set()
            runner.join(timeout=60)
        assert handles[0].wait(timeout=60) == "held"


BLOCK: dict[str, threading.Event] = {}


@checkpoint
def hold() -> str:
    BLOCK["started"].set()
    assert BLOCK["release"].wait(timeout=60)
    return "held"


@flow
def blocked() -> str:
    return hold()


@checkpoint
def tick(i: int) -> int:
    return i


@flow
def many(n: int = 32) -> int:
    return sum(tick(i) for i in range(n))


@flow
def nothing_to_reuse() -> str:
    return "done"


@checkpoint
def flaky() -> str:
    raise ValueError("not today")


@checkpoint
def after(text: str) -> str:
    RAN["after"] += 1
    kitaru.log(**{f"run{RAN['after']}": True})
    return text + "!"


@flow
def tolerant() -> str:
    try:
        flaky()
    except ValueError:
        pass
    try:
        late = kitaru.wait(name="late", expires_in=0.2)
    except kitaru.KitaruWaitTimeoutError:
        late = "no answer"
    return after(str(late))


@flow
def pair(first: str, second: str) -> str:
    return after(first + second)


def _must_be_even(value: int) -> int:
    if value % 2:
        raise ValueError("must be even")
    return value


@flow
def approve_even() -> str:
    even = kitaru.wait(name="even", schema=Annotated[int, AfterValidator(_must_be_even)])
    return after(str(even))


def refused_replay(exec_id: str, from_: str, **kwargs: Any) -> str:
    """The refusal of a replay request, after checking that it wrote nothing."""
    before = KitaruClient().executions.list()
    with pytest.raises(kitaru.KitaruError) as refused:
        KitaruClient().executions.replay(exec_id, from_, **kwargs)
    assert KitaruClient().executions.list() == before
    return str(refused.value)


class TestWhatARefusedReplaySays:
    """Each refusal says what is wrong with the request and what to do; nothing is written."""

    def test_an_unknown_boundary_lists_the_ones_it_has(self, runtime: Runtime) -> None:
        _, original = _original()
        assert refused_replay(original, "nope") == (
            f"execution {original} has no checkpoint or wait 'nope' to replay from. Boundaries it "
            "has, in call order: gather, untyped, score, finish. A checkpoint's later calls are "
            "named like 'name:2'."
        )

    def test_a_long_list_of_boundaries_is_cut_after_thirty(self, runtime: Runtime) -> None:
        handle = many.run()
        assert handle.wait(timeout=60) == sum(range(32))
        shown = ", ".join(["tick"] + [f"tick:{n}" for n in range(2, 31)])
        assert f"in call order: {shown} .... A checkpoint's" in refused_replay(handle.exec_id, "nope")
        exactly = many.run(30)
        exactly.wait(timeout=60)
        assert "tick:30. A checkpoint's" in refused_replay(exactly.exec_id, "nope")  # all of them
        one_more = many.run(31)
        one_more.wait(timeout=60)
        assert "tick:30 .... A checkpoint's" in refused_replay(one_more.exec_id, "nope")
        handle = nothing_to_reuse.run()
        assert handle.wait(timeout=60) == "done"
        assert "in call order: none. A checkpoint's" in refused_replay(handle.exec_id, "nope")

    def test_each_bad_override_says_why(self, runtime: Runtime) -> None:
        _, original = _original()
        assert refused_replay(original, "finish", overrides={"nope": 1}) == (
            f"--override nope: execution {original} has no checkpoint or wait called 'nope'. "
            f"Overrides name a call id from `kitaru executions get {original}`, or checkpoint.<name>."
        )
        assert refused_replay(original, "untyped", overrides={"finish": "x"}) == (
            "--override finish: 'finish' is not before --from 'untyped', so it runs again and an "
            "override would be ignored. Replay from a later call, or drop the override."
        )
        assert refused_replay(original, "finish", overrides={"gather": 5}) == (
            f"--override gather: 5 does not fit the return type of checkpoint {gather.qualname} "
            "(<class 'str'>): Input should be a valid string."
        )

    def test_an_override_needs_an_output_to_replace(
        self, runtime: Runtime, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("KITARU_WAIT_HOLD", "5")  # outlasts the deadline: it times out in this run
        handle = tolerant.run()
        assert handle.wait(timeout=60) == "no answer!"
        assert refused_replay(handle.exec_id, "after", overrides={"flaky": "x"}) == (
            f"--override flaky: 'flaky' never completed in execution {handle.exec_id}, so there is "
            "no output to replace."
        )
        assert refused_replay(handle.exec_id, "after", overrides={"late": "x"}) == (
            f"--override late: 'late' never got an answer in execution {handle.exec_id}, so there "
            "is no output to replace."
        )

    def test_unknown_arguments_are_named_with_the_flow_s_parameters(self, runtime: Runtime) -> None:
        _, original = _original()
        assert refused_replay(original, "finish", args={"zz": 1, "nope": 2}) == (
            "--args: flow 'reviewed' has no parameter 'nope', 'zz'; its parameters are source_id."
        )
        handle = nothing_to_reuse.run()
        handle.wait(timeout=60)
        assert refused_replay(handle.exec_id, "x", args={"x": 1}).startswith(
            f"execution {handle.exec_id} has no checkpoint or wait 'x'"
        )
        handle = pair.run("a", "b")
        handle.wait(timeout=60)
        assert refused_replay(handle.exec_id, "after", args={"c": 1}) == (
            "--args: flow 'pair' has no parameter 'c'; its parameters are first, second."
        )

    def test_a_wait_override_is_checked_where_the_wait_did_not_open(
        self, runtime: Runtime, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        _, original = _original()
        # As in a process that did not open the wait: only the wait's record checks the override.
        monkeypatch.setattr("kitaru._engine.waits._LIVE_SCHEMAS", {})
        message = refused_replay(original, "finish", overrides={"score": "7"})
        assert "the override of wait 'score' does not match its schema: expected int" in message
        assert message.endswith("The wait is still open; give a valid answer.")

    def test_a_wait_override_runs_the_flow_s_own_validators(self, runtime: Runtime) -> None:
        handle = approve_even.run()
        KitaruClient().executions.input(handle.exec_id, 2).wait(timeout=60)
        message = refused_replay(handle.exec_id, "after", overrides={"even": 3})
        assert "(value: Value error, must be even)" in message, message


class TestWhatAReplayReuses:
    def test_reused_waits_and_saves_are_the_original_s(self, runtime: Runtime) -> None:
        _, original = _original()
        client = KitaruClient()
        replayed = client.executions.replay(original, "finish")
        assert replayed.status == "completed"
        [wait] = client.executions.get(replayed.exec_id).waits
        assert (wait.name, wait.status, wait.question) == ("score", "answered", None)
        [notes] = [a.id for a in client.artifacts.list(original) if a.name == "notes"]
        assert [a.id for a in client.artifacts.list(replayed.exec_id) if a.name == "notes"] == [notes]

    def test_an_overridden_output_is_still_its_call_s(self, runtime: Runtime) -> None:
        _, original = _original()
        client = KitaruClient()
        replayed = client.executions.replay(original, "finish", overrides={"untyped": "LOUD"})
        assert replayed.status == "completed"
        assert replayed.wait(timeout=60) == "cats purr/3/LOUD"
        graph = client.executions.graph(replayed.exec_id)
        assert sorted(e.source for e in graph.inputs_of("finish")) == ["gather", "untyped"]


class TestWhatAReplayShows:
    def test_each_call_says_whether_it_was_reused_or_overridden(self, runtime: Runtime) -> None:
        _, original = _original()
        client = KitaruClient()
        replayed = client.executions.replay(original, "finish", overrides={"untyped": "LOUD"})
        assert replayed.status == "completed"
        calls = {
            c.call_id: (c.reused_from, c.overridden)
            for c in client.executions.get(replayed.exec_id).checkpoints
        }
        assert calls == {"gather": (original, False), "untyped": (original, True), "finish": (None, False)}

    def test_a_reused_checkpoint_keeps_what_it_printed(self, runtime: Runtime) -> None:
        _, original = _original()
        replayed = KitaruClient().executions.replay(original, "finish")
        assert replayed.status == "completed"
        printed = [(e.call_id, e.text.strip()) for e in KitaruClient().executions.logs(replayed.exec_id)]
        assert ("gather", "gathering") in printed and RAN["gather"] == 1

    def test_a_timed_out_wait_stays_timed_out_and_later_calls_keep_only_their_own_logs(
        self, runtime: Runtime, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("KITARU_WAIT_HOLD", "5")  # outlasts the deadline: it times out in this run
        handle = tolerant.run()
        assert handle.wait(timeout=60) == "no answer!"
        monkeypatch.setenv("KITARU_WAIT_HOLD", "0")
        client = KitaruClient()
        replayed = client.executions.replay(handle.exec_id, "after")
        assert replayed.status == "completed"  # the timeout was reused: no new wait, no suspension
        assert replayed.wait(timeout=60) == "no answer!"
        [after_call] = [
            c for c in client.executions.get(replayed.exec_id).checkpoints if c.call_id == "after"
        ]
        assert after_call.metadata == {"run2": True}
        assert refused_replay(handle.exec_id, "after", args={"x": 1}) == (
            "--args: flow 'tolerant' has no parameter 'x'; its parameters are none."
        )
