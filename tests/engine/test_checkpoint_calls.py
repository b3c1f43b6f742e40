"""What a checkpoint call promises beyond its output: how it runs outside a flow, how ``.submit()``
and ``.map()`` run it, and what a failed attempt leaves in the journal for `executions get`."""

from __future__ import annotations

import contextvars
import random
from collections.abc import Iterator
from typing import Any, ClassVar

import pytest

import kitaru
from kitaru import KitaruClient, checkpoint, flow
from kitaru._engine.runtime import Runtime, use_runtime
from kitaru.runtime import _get_current_checkpoint
from kitaru.store import JournalRecord
from kitaru.store.memory import MemoryArtifactStore, MemoryStateStore


@checkpoint
def scale(x: int, factor: int = 1) -> int:
    return x * factor


@checkpoint
async def ascale(x: int) -> int:
    return x * 2


class TestOutsideAFlow:
    def test_a_call_runs_the_plain_function(self) -> None:
        assert scale(3, factor=4) == 12

    def test_submit_and_map_run_the_plain_function(self) -> None:
        assert scale.submit(3, factor=4).result(timeout=60) == 12
        assert scale.map([1, 2], [10, 20]) == [10, 40]

    def test_an_async_checkpoint_cannot_be_submitted(self) -> None:
        with pytest.raises(kitaru.KitaruUsageError) as info:
            ascale.submit(1)
        assert str(info.value) == (
            "checkpoint 'ascale' is async: run several at once with asyncio.gather instead of .submit()."
        )


@checkpoint
async def akw(x: int, *, factor: int) -> int:
    return x * factor


REQUEST = contextvars.ContextVar("REQUEST", default="unset")


class TestSubmitAndMap:
    def test_map_zips_to_the_shortest_iterable(self, runtime: Runtime) -> None:
        @flow
        def fan() -> list[int]:
            return scale.map([1, 2, 3], [10, 20])

        assert fan.run().wait(timeout=60) == [10, 40]

    def test_a_submitted_call_sees_the_flow_body_s_context(self, runtime: Runtime) -> None:
        # Context set by the body (a request id, a tracing span) follows the call onto its thread.
        @checkpoint
        def which() -> str:
            return REQUEST.get()

        @flow
        def traced() -> list[str]:
            REQUEST.set("req-42")
            return [which.submit().result(timeout=60), *which.map([])]

        assert traced.run().wait(timeout=60) == ["req-42"]


class TestCalls:
    def test_keyword_arguments_reach_sync_and_async_checkpoints(self, runtime: Runtime) -> None:
        @flow
        async def both() -> list[int]:
            return [scale(2, factor=5), await akw(3, factor=7)]

        assert both.run().wait(timeout=60) == [10, 21]

    def test_product_runs_every_combination_in_order(self, runtime: Runtime) -> None:
        @flow
        def grid() -> list[int]:
            return scale.product([1, 2], [10, 100])

        assert grid.run().wait(timeout=60) == [10, 100, 20, 200]

    def test_each_call_s_output_is_a_new_version_of_its_name(self, runtime: Runtime) -> None:
        # `kitaru.load(exec_id, "scale", version=2)` finds the second call's output.
        @flow
        def twice() -> int:
            return scale(1) + scale(2)

        handle = twice.run()
        assert handle.wait(timeout=60) == 3
        outputs = runtime.state.list_artifacts(handle.exec_id, type="output")
        assert [(a.name, a.version, a.call_id) for a in outputs] == [
            ("scale", 1, "scale"),
            ("scale", 2, "scale:2"),
        ]

    def test_a_checkpoint_called_inside_another_says_they_do_not_nest(self, runtime: Runtime) -> None:
        @checkpoint
        def outer() -> int:
            return scale(1)

        @flow
        def nested() -> int:
            return outer()

        with pytest.raises(kitaru.KitaruUsageError) as info:
            nested.run().wait(timeout=60)
        assert str(info.value) == (
            "checkpoint 'scale' was called inside checkpoint 'outer'; checkpoints do not nest. Call it "
            "from the flow body, or drop @checkpoint from the inner function."
        )


class TestFailedAttempts:
    def test_each_failed_attempt_is_journaled_with_its_error_and_retry(
        self, runtime: Runtime, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        # The jitter is drawn from [0.5, 1.5]; pinned to its top, the delays are exact.
        def top_of(low: float, high: float) -> float:
            assert (low, high) == (0.5, 1.5)
            return high

        monkeypatch.setattr(random, "uniform", top_of)

        @checkpoint(retries=2, retry_delay=0.01, backoff=3, type="tool_call")
        def flaky() -> None:
            kitaru.log(trying=True)
            kitaru.save("partial", "half done")
            print("attempt output")
            raise ValueError("boom")

        @flow
        def f() -> None:
            flaky()

        handle = f.run()
        with pytest.raises(kitaru.KitaruExecutionError):
            handle.wait(timeout=60)
        journal = runtime.state.read_journal(handle.exec_id)
        failed = [r for r in journal if r.kind == "checkpoint_failed"]
        assert [(r.call_id, r.seq, r.attempt) for r in failed] == [
            ("flaky", 1, 1),
            ("flaky", 1, 2),
            ("flaky", 1, 3),
        ]
        assert [((r.data or {})["will_retry"], (r.data or {})["retry_in"]) for r in failed] == [
            (True, pytest.approx(0.015)),
            (True, pytest.approx(0.045)),
            (False, None),
        ]
        for r in failed:
            data = r.data or {}
            assert data["error"] == "ValueError: boom"
            assert data["traceback"].startswith("Traceback (most recent call last):\n  File ")
            assert data["traceback"].endswith("\nValueError: boom\n")
            assert 'raise ValueError("boom")' in data["traceback"]
            # The attempt's start rides along: its type, when it started, its inputs' fingerprint.
            assert data["type"] == "tool_call" and "fp" in data and isinstance(data["started_at"], float)
            assert isinstance(r.ts, float) and r.ts >= data["started_at"]
        # Logs and printed output of failed attempts are kept; their saves are not.
        kinds = [r.kind for r in journal if r.call_id == "flaky"]
        assert kinds.count("log") == 3 and kinds.count("output") >= 3
        assert runtime.state.list_artifacts(handle.exec_id, type="save") == []


class TestDefinition:
    """``@checkpoint``'s checks of its own arguments: a misuse is refused where it is written, with
    a message that says what to change."""

    @pytest.mark.parametrize("name", ["", "a:b", "a/b"])
    def test_a_name_that_would_break_call_ids_is_refused(self, name: str) -> None:
        with pytest.raises(kitaru.KitaruUsageError) as info:
            checkpoint(name=name)(lambda: 1)
        assert str(info.value) == (
            f"checkpoint name {name!r} must be non-empty, without ':' or '/' (they separate call "
            "numbers and saved names)."
        )

    def test_a_given_name_names_the_calls_and_their_outputs(self, runtime: Runtime) -> None:
        @checkpoint(name="fetch_page")
        def fetch() -> str:
            return "page"

        @flow
        def crawl() -> str:
            return fetch() + fetch()

        handle = crawl.run()
        assert handle.wait(timeout=60) == "pagepage"
        outputs = runtime.state.list_artifacts(handle.exec_id, type="output")
        assert [(a.name, a.call_id) for a in outputs] == [
            ("fetch_page", "fetch_page"),
            ("fetch_page", "fetch_page:2"),
        ]
        assert repr(fetch) == f"<checkpoint 'fetch_page' ({fetch.qualname})>"
        assert fetch.__name__ == "fetch"  # the wrapper still looks like the function

    @pytest.mark.parametrize(
        ("options", "shown"),
        [
            ({"retries": -1}, "retries=-1, retry_delay=1.0, backoff=2.0"),
            ({"retry_delay": -0.5}, "retries=0, retry_delay=-0.5, backoff=2.0"),
            ({"backoff": 0.99}, "retries=0, retry_delay=1.0, backoff=0.99"),
        ],
    )
    def test_negative_retries_and_a_shrinking_backoff_are_refused(
        self, options: dict[str, float], shown: str
    ) -> None:
        def step() -> None: ...

        with pytest.raises(kitaru.KitaruUsageError) as info:
            checkpoint(**options)(step)  # type: ignore[call-overload]
        assert str(info.value) == (
            f"@checkpoint on {step.__qualname__!r}: retries and retry_delay must be >= 0 and backoff "
            f">= 1 (got {shown})."
        )

    def test_a_backoff_of_one_retries_at_a_constant_delay(
        self, runtime: Runtime, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr(random, "uniform", lambda low, high: 1.0)
        attempts: list[int] = []

        @checkpoint(retries=2, retry_delay=0.01, backoff=1, retry_on=KeyError)
        def flaky() -> int:
            attempts.append(1)
            if len(attempts) < 3:
                raise KeyError("not yet")
            return len(attempts)

        @flow
        def f() -> int:
            return flaky()

        handle = f.run()
        assert handle.wait(timeout=60) == 3
        failed = [r for r in runtime.state.read_journal(handle.exec_id) if r.kind == "checkpoint_failed"]
        assert [(r.data or {})["retry_in"] for r in failed] == [pytest.approx(0.01), pytest.approx(0.01)]

    def test_only_the_exceptions_named_by_retry_on_are_retried(self, runtime: Runtime) -> None:
        attempts: list[int] = []

        @checkpoint(retries=3, retry_delay=0, retry_on=KeyError)
        def wrong() -> None:
            attempts.append(1)
            raise ValueError("not a KeyError")

        @flow
        def f() -> None:
            wrong()

        with pytest.raises(kitaru.KitaruExecutionError):
            f.run().wait(timeout=60)
        assert attempts == [1]

    def test_a_checkpoint_is_applied_once(self) -> None:
        with pytest.raises(kitaru.KitaruUsageError) as info:
            checkpoint(scale)
        assert str(info.value) == f"{scale.qualname!r} is already a checkpoint; apply @checkpoint once."

    @pytest.mark.parametrize("target", [42, int])
    def test_only_functions_can_be_checkpoints(self, target: object) -> None:
        with pytest.raises(kitaru.KitaruUsageError) as info:
            checkpoint(target)  # type: ignore[call-overload]
        assert str(info.value) == f"@checkpoint needs a function, got {target!r}."

    def test_generators_are_refused(self) -> None:
        def numbers() -> object:
            yield 1

        async def anumbers() -> object:
            yield 1

        for gen in (numbers, anumbers):
            with pytest.raises(kitaru.KitaruUsageError) as info:
                checkpoint(gen)
            assert str(info.value) == (
                f"@checkpoint cannot wrap generator {gen.__qualname__!r}: its output would be "
                "consumed lazily, after the checkpoint is recorded. Return a list instead."
            )

    def test_a_cache_key_must_be_a_string_or_a_function(self) -> None:
        def step() -> None: ...

        with pytest.raises(kitaru.KitaruUsageError) as info:
            checkpoint(cache_key=7)(step)  # type: ignore[call-overload]
        assert str(info.value) == (
            f"@checkpoint on {step.__qualname__!r}: cache_key must be a string or a function of the "
            "checkpoint's arguments returning one, got 7."
        )

    def test_a_cache_key_alone_turns_caching_on_but_not_against_cache_false(self) -> None:
        def step() -> None: ...

        assert checkpoint(cache_key="k")(step).cache is True
        assert checkpoint(cache_key=lambda: "k", cache=False)(step).cache is False
        assert checkpoint(step).cache is None  # the flow's cache= decides

    @pytest.mark.parametrize("label", ["", "   ", 3])
    def test_a_type_must_be_a_non_empty_string(self, label: object) -> None:
        def step() -> None: ...

        with pytest.raises(kitaru.KitaruUsageError) as info:
            checkpoint(type=label)(step)  # type: ignore[call-overload]
        assert str(info.value) == (
            f"@checkpoint on {step.__qualname__!r}: type labels the call (e.g. 'llm_call', "
            f"'tool_call'); it must be a non-empty string, got {label!r}."
        )

    def test_type_and_runtime_are_normalized(self) -> None:
        def step() -> None: ...

        cp = checkpoint(type=" llm_call ", runtime=" Isolated ")(step)
        assert (cp.type, cp.runtime) == ("llm_call", "isolated")
        assert checkpoint(step).runtime == checkpoint(runtime="INLINE")(step).runtime == "inline"

    def test_an_unknown_runtime_is_refused(self) -> None:
        def step() -> None: ...

        with pytest.raises(kitaru.KitaruUsageError) as info:
            checkpoint(runtime="docker")(step)
        assert str(info.value) == (
            f"@checkpoint on {step.__qualname__!r}: unsupported runtime 'docker'; expected 'inline' "
            "(in the flow's process, the default) or 'isolated' (a process, or on a remote stack a "
            "job, of its own)."
        )


@checkpoint
def source(x: int) -> list[int]:
    return [x, x]


CACHED_RUNS: list[int] = []


@checkpoint(cache=True, type="llm_call")
def summarize(values: list[int]) -> int:
    CACHED_RUNS.append(1)
    return sum(values)


@checkpoint(cache=True, type="llm_call")
async def asummarize(values: list[int]) -> int:
    CACHED_RUNS.append(1)
    return sum(values)


@flow
def summarized(x: int) -> int:
    return summarize(source(x))


@flow
async def asummarized(x: int) -> int:
    return await asummarize(source(x))


class TestCacheHitRecord:
    """A cache hit is journaled as a completed call (one attempt) pointing at the first
    execution's output, with where it came from, its key, its label and its inputs' lineage."""

    @pytest.mark.parametrize(
        ("body", "step"), [(summarized, "summarize"), (asummarized, "asummarize")], ids=["sync", "async"]
    )
    def test_the_hit_s_record(self, runtime: Runtime, body: Any, step: str) -> None:
        CACHED_RUNS.clear()
        first, second = body.run(3), body.run(3)
        assert first.wait(timeout=60) == second.wait(timeout=60) == 6
        assert CACHED_RUNS == [1]

        def records(exec_id: str) -> dict[str, JournalRecord]:
            journal = runtime.state.read_journal(exec_id)
            return {r.call_id: r for r in journal if r.kind == "checkpoint_completed"}

        ran, hit = records(first.exec_id)[step], records(second.exec_id)[step]
        [entry] = runtime.state.list_cache_entries()
        assert (hit.name, hit.seq, hit.attempt) == (step, ran.seq, 1)
        assert hit.artifact_id == ran.artifact_id == entry.artifact_id  # the same output, no copy
        data, ran_data = hit.data or {}, ran.data or {}
        assert data["cached_from"] == first.exec_id and "cached_from" not in ran_data
        assert data["cache_key"] == entry.key
        assert data["type"] == ran_data["type"] == "llm_call"
        assert data["fp"] == ran_data["fp"]
        # Its input is this execution's output of `source`, not the first execution's.
        assert data["inputs"] == [records(second.exec_id)["source"].artifact_id]
        assert ran_data["inputs"] == [records(first.exec_id)["source"].artifact_id]
        assert isinstance(data["started_at"], float) and hit.ts == data["started_at"]
        assert entry.exec_id == first.exec_id and entry.call_id == step


class TestAsyncCheckpointRecords:
    def test_an_async_call_records_its_label_and_inputs(self, runtime: Runtime) -> None:
        @checkpoint(type="tool_call")
        async def lookup(values: list[int]) -> int:
            return len(values)

        @flow
        async def f() -> int:
            return await lookup(source(2))

        handle = f.run()
        assert handle.wait(timeout=60) == 2
        journal = runtime.state.read_journal(handle.exec_id)
        done = {r.call_id: r for r in journal if r.kind == "checkpoint_completed"}
        data = done["lookup"].data or {}
        assert data["type"] == "tool_call"
        assert data["inputs"] == [done["source"].artifact_id]
        [out] = [a for a in runtime.state.list_artifacts(handle.exec_id, type="output") if a.name == "lookup"]
        assert out.tags == ["tool_call"]
        call = KitaruClient(runtime).executions.get(handle.exec_id).checkpoints
        assert [c.type for c in call if c.call_id == "lookup"] == ["tool_call"]


class _RemoteLikeStore(MemoryStateStore):
    """The memory store declared not ``inline``, as PostgreSQL's is: its calls are awaited on
    kitaru's loop, and sync code on a running loop cannot block for them."""

    inline: ClassVar[bool] = False


@pytest.fixture
def remote_like() -> Iterator[Runtime]:
    rt = Runtime(_RemoteLikeStore(), MemoryArtifactStore(), heartbeat_interval=0.05)
    with use_runtime(rt):
        yield rt
    rt.close()


class TestOnAStoreThatIsNotInline:
    def test_a_resumed_async_flow_replays_its_async_checkpoint(self, remote_like: Runtime) -> None:
        _replayed_async_output_is_an_input(remote_like)

    def test_a_sync_checkpoint_is_cached_from_a_sync_body_only(self, remote_like: Runtime) -> None:
        # From an async body it would have to block the loop for the store: it runs uncached.
        CACHED_RUNS.clear()

        @flow
        async def from_async(x: int) -> int:
            return summarize([x])

        assert summarized.run(1).wait(timeout=60) == summarized.run(1).wait(timeout=60) == 2
        assert CACHED_RUNS == [1]
        assert from_async.run(4).wait(timeout=60) == from_async.run(4).wait(timeout=60) == 4
        assert CACHED_RUNS == [1, 1, 1]

    def test_on_an_inline_store_an_async_body_s_sync_checkpoint_is_cached(self, runtime: Runtime) -> None:
        CACHED_RUNS.clear()

        @flow
        async def from_async(x: int) -> int:
            return summarize([x])

        assert from_async.run(4).wait(timeout=60) == from_async.run(4).wait(timeout=60) == 4
        assert CACHED_RUNS == ([1, 1] if not runtime.inline else [1])


class TestIsolatedDispatch:
    """The flow's side of ``runtime="isolated"``: which call reaches the launcher, with what, and
    where it waits. The launcher is replaced by one that runs the function here (the child process
    itself is proven by tests/e2e/test_isolated_checkpoints.py)."""

    @pytest.fixture
    def launched(self, monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, tuple[Any, ...], dict[str, Any]]]:
        from kitaru._engine import isolated
        from kitaru._engine.context import running_loop

        seen: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []

        def fake(cp: Any, ctx: Any, call: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
            # Blocking for the child must never happen on the Runner's loop.
            assert running_loop() is None
            assert ctx.exec_id == kitaru.current_execution_id()  # the launch goes to this execution
            seen.append((call.call_id, args, kwargs))
            return cp.fn(*args, **kwargs)

        monkeypatch.setattr(isolated, "run_isolated", fake)
        return seen

    def test_sync_and_async_bodies_and_submit_go_to_the_launcher(
        self, runtime: Runtime, launched: list[tuple[str, tuple[Any, ...], dict[str, Any]]]
    ) -> None:
        @checkpoint(runtime="isolated")
        def apart(x: int, factor: int = 1) -> int:
            return x * factor

        @flow
        def sync_body() -> int:
            return apart(2, factor=3) + apart.submit(1).result(timeout=60)

        @flow
        async def async_body() -> int:
            return await apart(5)  # type: ignore[misc, no-any-return]

        assert sync_body.run().wait(timeout=60) == 7
        assert async_body.run().wait(timeout=60) == 5
        assert launched == [
            ("apart", (2,), {"factor": 3}),
            ("apart:2", (1,), {}),
            ("apart", (5,), {}),
        ]


RETRIED: list[str | None] = []


@checkpoint(retries=2, retry_delay=0.01, backoff=2, type="tool_call", retry_on=KeyError)
def retried() -> int:
    RETRIED.append(_get_current_checkpoint().type)  # type: ignore[union-attr]
    kitaru.progress(f"try {len(RETRIED)}")
    if len(RETRIED) < 3:
        raise KeyError("again")
    return len(RETRIED)


@checkpoint(retries=2, retry_delay=0.01, backoff=2, type="tool_call", retry_on=KeyError)
async def aretried() -> int:
    RETRIED.append(_get_current_checkpoint().type)  # type: ignore[union-attr]
    kitaru.progress(f"try {len(RETRIED)}")
    if len(RETRIED) < 3:
        raise KeyError("again")
    return len(RETRIED)


@flow
def retried_flow() -> int:
    return retried()


@flow
async def aretried_flow() -> int:
    return await aretried()


class TestRetriedAttempts:
    """Each attempt of a retried call (sync or async) is its own: its failure journaled, its
    events numbered after the attempts before it, the call's label visible inside it."""

    @pytest.mark.parametrize(("body", "step"), [(retried_flow, "retried"), (aretried_flow, "aretried")])
    def test_a_call_that_succeeds_on_its_third_attempt(
        self, runtime: Runtime, monkeypatch: pytest.MonkeyPatch, body: Any, step: str
    ) -> None:
        monkeypatch.setattr(random, "uniform", lambda low, high: 1.0)
        RETRIED.clear()
        handle = body.run()
        assert handle.wait(timeout=60) == 3
        assert RETRIED == ["tool_call"] * 3  # kitaru.runtime's view of the running call
        journal = [r for r in runtime.state.read_journal(handle.exec_id) if r.call_id == step]
        outcomes = [(r.kind, r.attempt) for r in journal if r.kind.startswith("checkpoint_")]
        assert outcomes == [("checkpoint_failed", 1), ("checkpoint_failed", 2), ("checkpoint_completed", 3)]
        failed = [r.data or {} for r in journal if r.kind == "checkpoint_failed"]
        assert [(d["error"], d["will_retry"], d["retry_in"]) for d in failed] == [
            ("KeyError: 'again'", True, pytest.approx(0.01)),
            ("KeyError: 'again'", True, pytest.approx(0.02)),
        ]
        [call] = KitaruClient(runtime).executions.get(handle.exec_id).checkpoints
        assert (call.status, call.attempts) == ("completed", 3)
        events = list(KitaruClient(runtime).executions.events(handle.exec_id))
        assert [(e.kind.rpartition(".")[2], e.index, e.message) for e in events] == [
            ("started", 0, None),
            ("progress", 1, "try 1"),
            ("failed", 2, "The checkpoint function raised an exception."),
            ("started", 3, None),
            ("progress", 4, "try 2"),
            ("failed", 5, "The checkpoint function raised an exception."),
            ("started", 6, None),
            ("progress", 7, "try 3"),
            ("returned", 8, None),
        ]
        assert {e.payload["kitaru"]["checkpoint_type"] for e in events if e.kind.endswith("progress")} == {
            "tool_call"
        }


@checkpoint
def consume(value: Any) -> str:
    return repr(value)


@checkpoint(cache=True)
def cached_dict(x: int) -> dict[str, int]:
    CACHED_RUNS.append(1)
    return {"x": x}


@checkpoint(cache=True)
async def acached_dict(x: int) -> dict[str, int]:
    CACHED_RUNS.append(1)
    return {"x": x}


@flow
def cached_then_consumed(x: int) -> str:
    return consume(cached_dict(x))


@flow
async def acached_then_consumed(x: int) -> str:
    return consume(await acached_dict(x))


class TestLineageThroughReuse:
    """An output reused from the cache or the journal is still the input it is: the call that
    consumes it records it (`kitaru executions get`'s lineage)."""

    @pytest.mark.parametrize(
        ("body", "step"), [(cached_then_consumed, "cached_dict"), (acached_then_consumed, "acached_dict")]
    )
    def test_a_cache_hit_s_output_is_the_next_call_s_input(
        self, runtime: Runtime, body: Any, step: str
    ) -> None:
        CACHED_RUNS.clear()
        body.run(1).wait(timeout=60)
        second = body.run(1)
        assert second.wait(timeout=60) == "{'x': 1}"
        assert CACHED_RUNS == [1]
        done = {
            r.call_id: r
            for r in runtime.state.read_journal(second.exec_id)
            if r.kind == "checkpoint_completed"
        }
        assert (done["consume"].data or {})["inputs"] == [done[step].artifact_id]

    @pytest.mark.parametrize(
        ("body", "step"), [(cached_then_consumed, "cached_dict"), (acached_then_consumed, "acached_dict")]
    )
    def test_a_cache_entry_whose_output_is_gone_runs_the_call_again(
        self, runtime: Runtime, body: Any, step: str
    ) -> None:
        # A store restored partially: the entry survived, the execution that made it did not.
        import dataclasses

        CACHED_RUNS.clear()
        body.run(2).wait(timeout=60)
        [entry] = runtime.state.list_cache_entries()
        runtime.state.clear_cache()
        runtime.state.put_cache_entry(dataclasses.replace(entry, artifact_id="gone"))
        assert body.run(2).wait(timeout=60) == "{'x': 2}"
        assert CACHED_RUNS == [1, 1]

    def test_a_replayed_async_output_is_the_next_call_s_input(self, runtime: Runtime) -> None:
        _replayed_async_output_is_an_input(runtime)

    def test_a_replayed_sync_output_is_the_next_call_s_input(self, runtime: Runtime) -> None:
        @checkpoint
        def produce() -> dict[str, int]:
            return {"n": 6}

        @flow
        def waits() -> str:
            value = produce()
            kitaru.wait(name="go", schema=bool)
            return consume(value)

        handle = waits.run()
        assert handle.status == "waiting"
        assert KitaruClient(runtime).executions.input(handle.exec_id, True).wait(timeout=60) == "{'n': 6}"
        assert [r for r in runtime.state.read_journal(handle.exec_id) if r.kind == "input_changed"] == []
        done = {
            r.call_id: r
            for r in runtime.state.read_journal(handle.exec_id)
            if r.kind == "checkpoint_completed"
        }
        assert (done["consume"].data or {})["inputs"] == [done["produce"].artifact_id]


def _replayed_async_output_is_an_input(rt: Runtime) -> None:
    """A resumed async flow replays its async checkpoint, whose output is the next call's input."""
    runs: list[int] = []

    @checkpoint
    async def produce() -> dict[str, int]:
        runs.append(1)
        return {"n": 5}

    @flow
    async def waits() -> str:
        value = await produce()
        await kitaru.wait_async(name="go", schema=bool)
        return consume(value)

    handle = waits.run()
    assert handle.status == "waiting"
    assert KitaruClient(rt).executions.input(handle.exec_id, True).wait(timeout=60) == "{'n': 5}"
    assert runs == [1]
    journal = rt.state.read_journal(handle.exec_id)
    assert [r for r in journal if r.kind == "input_changed"] == []  # same inputs: no warning
    done = {r.call_id: r for r in journal if r.kind == "checkpoint_completed"}
    assert (done["consume"].data or {})["inputs"] == [done["produce"].artifact_id]


def _noted_in_flight(call_id: str, attempt: int, timeout: float = 60) -> dict[str, Any]:
    """The attempts in flight the heartbeat has written, once it lists ``attempt`` of ``call_id``."""
    import time

    state = kitaru._engine.runtime.get_runtime().state
    exec_id = kitaru.current_execution_id()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        record = state.get_execution(exec_id)
        inflight = (record.metadata.get("inflight") or {}) if record is not None else {}
        if inflight.get(call_id, {}).get("attempt") == attempt:
            return dict(inflight)
        time.sleep(0.01)
    raise AssertionError(f"the heartbeat did not note {call_id} ({attempt}) in flight within {timeout} s")


NOTES: list[dict[str, Any]] = []


@checkpoint(retries=1, retry_delay=0, retry_on=KeyError)
def noted_step(x: int) -> int:
    # The first call fails once: its attempts are 1 and 2, the second call's is 1.
    NOTES.append(_noted_in_flight(kitaru.runtime._get_current_checkpoint_id() or "", len(NOTES) % 2 + 1))
    if len(NOTES) == 1:
        raise KeyError("once")
    return x


@checkpoint(retries=1, retry_delay=0, retry_on=KeyError)
async def anoted_step(x: int) -> int:
    import anyio.to_thread

    call_id = kitaru.runtime._get_current_checkpoint_id() or ""
    found = await anyio.to_thread.run_sync(_noted_in_flight, call_id, len(NOTES) % 2 + 1)
    NOTES.append(found)
    if len(NOTES) == 1:
        raise KeyError("once")
    return x


@flow
def noted_flow() -> int:
    return noted_step(1) + noted_step(2)


@flow
async def anoted_flow() -> int:
    return await anoted_step(1) + await anoted_step(2)


class TestAttemptsInFlight:
    """The heartbeat notes each running attempt (its name and number) for the runner that may take
    the execution over, and forgets it once the attempt ended."""

    @pytest.mark.parametrize(("body", "step"), [(noted_flow, "noted_step"), (anoted_flow, "anoted_step")])
    def test_each_attempt_is_noted_while_it_runs(self, runtime: Runtime, body: Any, step: str) -> None:
        NOTES.clear()
        assert body.run().wait(timeout=60) == 3
        summary = [{call_id: (n["name"], n["attempt"]) for call_id, n in note.items()} for note in NOTES]
        # Each snapshot holds the running attempt only: the ones before it ended, and said so.
        assert summary == [
            {step: (step, 1)},
            {step: (step, 2)},
            {f"{step}:2": (step, 1)},
        ]
