"""What Kitaru 0.18 code calls from inside flows: ``kitaru.progress`` and ``kitaru.events``,
``kitaru.runtime``'s helpers, ``kitaru.log``'s merging of repeated keys, and the error 0.18 code
gets for calling ``.load()`` on a checkpoint's value."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

import kitaru
from kitaru import KitaruClient, checkpoint, flow
from kitaru._engine.runtime import Runtime
from kitaru.errors import (
    KitaruExecutionError,
    KitaruNotAHandleError,
    KitaruNotInFlowError,
    KitaruUsageError,
)
from kitaru.runtime import (
    _get_current_checkpoint,
    _get_current_checkpoint_id,
    _get_current_checkpoint_name,
    _get_current_execution_id,
    _get_current_flow,
    _is_inside_checkpoint,
    _is_inside_flow,
)

# -- progress and events -------------------------------------------------------------------------

SEEN_LIVE: dict[str, Any] = {}


@checkpoint
def build_report(topic: str) -> str:
    kitaru.progress("Collecting notes", percent=0.25, topic=topic)
    # Committed when published: another reader sees it while this checkpoint still runs.
    exec_id = _get_current_execution_id()
    assert exec_id is not None
    found = threading.Thread(target=_look, args=(exec_id,))
    found.start()
    found.join(timeout=60)
    kitaru.events.publish("training.batch.completed", {"batch": 1, "rows": 10}, message="First batch")
    kitaru.progress("Writing draft", percent=0.75)
    return f"Report: {topic}"


def _look(exec_id: str) -> None:
    SEEN_LIVE["events"] = [e.kind for e in _recorded(exec_id)]


def _recorded(exec_id: str) -> list[Any]:
    from kitaru.events import recorded

    return recorded(KitaruClient().executions._state.read_journal(exec_id), exec_id)


@flow
def report_flow(topic: str) -> str:
    return build_report(topic)


@checkpoint
async def async_step() -> int:
    # Each publish lands at the next await; the journal keeps them in the order published.
    for i in range(10):
        kitaru.progress(f"async work {i}", percent=i / 10)
        await asyncio.sleep(0)
    kitaru.events.publish("async.done", message="done")
    return 1


@flow
async def async_flow() -> int:
    return await async_step()


@flow
def progress_at_flow_scope() -> None:
    kitaru.progress("not in a checkpoint")


class TestEvents:
    def test_progress_and_custom_events_are_journaled_in_order_while_the_checkpoint_runs(
        self, runtime: Runtime
    ) -> None:
        SEEN_LIVE.clear()
        handle = report_flow.run("durable agents")
        assert handle.wait(timeout=60) == "Report: durable agents"
        # The thread inside the checkpoint saw the first event (and the attempt's start, derived
        # from it) before the checkpoint completed.
        assert SEEN_LIVE["events"] == ["kitaru.checkpoint.started", "kitaru.checkpoint.progress"]
        events = list(KitaruClient().executions.events(handle.exec_id))
        # 0.18's automatic events frame the checkpoint's own, in one index sequence.
        assert [(e.kind, e.index, e.message) for e in events] == [
            ("kitaru.checkpoint.started", 0, None),
            ("kitaru.checkpoint.progress", 1, "Collecting notes"),
            ("training.batch.completed", 2, "First batch"),
            ("kitaru.checkpoint.progress", 3, "Writing draft"),
            ("kitaru.checkpoint.returned", 4, None),
        ]
        assert events[0].payload["status"] == "started" and events[-1].payload["status"] == "returned"
        events = events[1:-1]
        first = events[0]
        assert first.payload["data"] == {"topic": "durable agents", "percent": 0.25}
        assert first.percent == 0.25
        assert first.payload["kitaru"] == {
            "execution_id": handle.exec_id,
            "checkpoint_id": "build_report",
            "checkpoint_name": "build_report",
            "checkpoint_type": None,
        }
        assert events[1].payload["data"] == {"batch": 1, "rows": 10}
        assert len({e.correlation_id for e in events}) == 1  # one checkpoint call, one group

    def test_watch_filters_and_resumes_from_a_cursor(self, runtime: Runtime) -> None:
        handle = report_flow.run("x")
        handle.wait(timeout=60)
        client = KitaruClient().executions
        progress = list(client.events(handle.exec_id, kinds=["kitaru.checkpoint.progress"]))
        assert [e.message for e in progress] == ["Collecting notes", "Writing draft"]
        later = list(client.events(handle.exec_id, since=progress[0].cursor))
        assert [e.kind for e in later] == [
            "training.batch.completed",
            "kitaru.checkpoint.progress",
            "kitaru.checkpoint.returned",
        ]
        assert list(client.events(handle.exec_id, checkpoint="other")) == []
        assert len(list(client.events(handle.exec_id, checkpoint="build_report"))) == 5
        assert list(client.events(handle.exec_id, correlation_ids=["nope"])) == []

    def test_async_checkpoints_publish_too(self, runtime: Runtime) -> None:
        async def main() -> str:
            handle = await async_flow.start()
            await handle.result(timeout=60)
            return handle.exec_id

        exec_id = asyncio.run(main())
        events = list(KitaruClient().executions.events(exec_id))
        assert [e.kind for e in events] == [
            "kitaru.checkpoint.started",
            *["kitaru.checkpoint.progress"] * 10,
            "async.done",
            "kitaru.checkpoint.returned",
        ]
        assert [e.index for e in events] == list(range(13))
        assert kitaru.events.flush() is True  # outside a flow nothing is queued

    def test_misuse_raises_at_once(self, runtime: Runtime) -> None:
        with pytest.raises(KitaruNotInFlowError, match="inside a @checkpoint"):
            kitaru.progress("outside")
        with pytest.raises(KitaruNotInFlowError, match="inside a @checkpoint"):
            progress_at_flow_scope.run().wait(timeout=60)

        @checkpoint
        def bad(case: str) -> None:
            if case == "reserved":
                kitaru.events.publish("end")
            elif case == "percent":
                kitaru.progress("x", percent=45)
            elif case == "payload":
                kitaru.events.publish("k", {"f": object()})
            elif case == "index":
                kitaru.events.publish("k", index=-1)

        @flow
        def misuse(case: str) -> None:
            bad(case)

        for case, text in [
            ("reserved", "reserved"),
            ("percent", "fraction from 0 to 1"),
            ("payload", "JSON-serializable"),
            ("index", "non-negative"),
        ]:
            with pytest.raises(KitaruUsageError, match=text):
                misuse.run(case).wait(timeout=60)


# -- kitaru.runtime ------------------------------------------------------------------------------

SCOPES: dict[str, Any] = {}


@checkpoint(type="tool_call")
def where() -> str:
    SCOPES["checkpoint"] = _get_current_checkpoint()
    SCOPES["checkpoint_name"] = _get_current_checkpoint_name()
    SCOPES["inside_checkpoint"] = _is_inside_checkpoint()
    return "ok"


@flow
def where_flow() -> str:
    SCOPES["flow"] = _get_current_flow()
    SCOPES["inside_flow"] = _is_inside_flow()
    SCOPES["flow_checkpoint"] = _get_current_checkpoint_id()
    where()
    return where()


class TestRuntimeHelpers:
    def test_they_describe_the_running_flow_and_checkpoint(self, runtime: Runtime) -> None:
        SCOPES.clear()
        handle = where_flow.run()
        handle.wait(timeout=60)
        flow_scope = SCOPES["flow"]
        assert (flow_scope.name, flow_scope.execution_id) == ("where_flow", handle.exec_id)
        assert flow_scope.flow_id.endswith(":where_flow")
        assert SCOPES["inside_flow"] is True and SCOPES["flow_checkpoint"] is None
        cp = SCOPES["checkpoint"]  # the second call
        assert (cp.name, cp.checkpoint_id, cp.execution_id) == ("where", "where:2", handle.exec_id)
        assert cp.type == "tool_call"
        assert SCOPES["checkpoint_name"] == "where" and SCOPES["inside_checkpoint"] is True

    def test_outside_a_flow_they_answer_none_not_an_error(self) -> None:
        assert _get_current_execution_id() is None
        assert _get_current_flow() is None and _get_current_checkpoint() is None
        assert not _is_inside_flow() and not _is_inside_checkpoint()


# -- kitaru.log merges repeated keys -------------------------------------------------------------


@checkpoint
def tracked() -> str:
    kitaru.log(cost={"usd": 0.001, "detail": {"a": 1}})
    kitaru.log(cost={"tokens": 42, "detail": {"b": 2}})
    kitaru.log(status="draft")
    kitaru.log(status="final")
    return "done"


@flow
def tracked_flow() -> str:
    kitaru.log(metadata={"a": {"x": 1}})
    out = tracked()
    kitaru.log(metadata={"a": {"y": 2}, "b": 3})
    kitaru.log(stage={"n": 1})
    kitaru.log(stage="done")  # a scalar replaces a dict
    return out


class TestLogMerging:
    def test_repeated_dict_keys_merge_and_scalars_take_the_latest(self, runtime: Runtime) -> None:
        handle = tracked_flow.run()
        handle.wait(timeout=60)
        execution = KitaruClient().executions.get(handle.exec_id)
        assert execution.checkpoints[0].metadata == {
            "cost": {"usd": 0.001, "tokens": 42, "detail": {"a": 1, "b": 2}},
            "status": "final",
        }
        assert execution.metadata["metadata"] == {"a": {"x": 1, "y": 2}, "b": 3}
        assert execution.metadata["stage"] == "done"


# -- .load() on a checkpoint's value -------------------------------------------------------------


@checkpoint
def write_draft(topic: str) -> str:
    return f"Draft about {topic}."


@checkpoint
def count() -> int:
    return 3


@flow
def loads_a_value(topic: str) -> str:
    draft: Any = write_draft(topic)
    return str(draft.load())


@flow
def loads_an_int() -> int:
    n: Any = count()
    return int(n.load())


@flow
def other_attribute_error() -> str:
    text: Any = write_draft("x")
    return str(text.no_such_method())


class TestCheckpointValueIsNotAHandle:
    def test_load_on_a_checkpoint_value_says_to_remove_it(self, runtime: Runtime) -> None:
        handle = loads_a_value.run("agents")
        with pytest.raises(KitaruNotAHandleError) as caught:
            handle.wait(timeout=60)
        error = caught.value
        assert isinstance(error, AttributeError)  # code catching the original still catches it
        assert error.checkpoint == "write_draft" and error.name == "load"
        assert "checkpoint 'write_draft' returned its value (a str)" in str(error)
        assert "Remove `.load()`" in str(error)
        assert isinstance(error.__cause__, AttributeError)
        # The recorded failure says the same, for `kitaru executions get`.
        record = KitaruClient().executions.get(handle.exec_id)
        assert record.status == "failed"
        assert "KitaruNotAHandleError" in (record.error or "")
        assert "Remove `.load()`" in (record.error or "")

    def test_a_value_it_cannot_recognise_keeps_its_error_with_a_note(self, runtime: Runtime) -> None:
        # Small ints are shared objects: identity cannot say which checkpoint returned this one.
        with pytest.raises(KitaruExecutionError) as caught:
            loads_an_int.run().wait(timeout=60)
        cause = caught.value.__cause__
        assert isinstance(cause, AttributeError) and not isinstance(cause, KitaruNotAHandleError)
        assert any("remove `.load()`" in note for note in getattr(cause, "__notes__", []))

    def test_other_attribute_errors_are_untouched(self, runtime: Runtime) -> None:
        with pytest.raises(KitaruExecutionError) as caught:
            other_attribute_error.run().wait(timeout=60)
        cause = caught.value.__cause__
        assert isinstance(cause, AttributeError) and not isinstance(cause, KitaruNotAHandleError)
        assert not getattr(cause, "__notes__", None)
