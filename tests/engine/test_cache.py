"""The checkpoint cache (``@checkpoint(cache=True)``, ``@flow(cache=True)``) on each store."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import pytest

from kitaru import KitaruClient, checkpoint, flow
from kitaru._engine.runtime import Runtime


def _calls(runtime: Runtime, exec_id: str) -> dict[str, Any]:
    return {c.call_id: c for c in KitaruClient(runtime).executions.get(exec_id).checkpoints}


class TestCheckpointCache:
    def test_a_second_execution_reuses_the_output_without_running(self, runtime: Runtime) -> None:
        ran: Counter[str] = Counter()

        @checkpoint(cache=True)
        def expensive(x: int) -> dict[str, int]:
            ran["expensive"] += 1
            return {"value": x * 10}

        @flow
        def cached_flow(x: int) -> int:
            return expensive(x)["value"]

        first = cached_flow.run(4)
        second = cached_flow.run(4)

        assert first.wait(timeout=60) == second.wait(timeout=60) == 40
        assert ran["expensive"] == 1
        hit = _calls(runtime, second.exec_id)["expensive"]
        miss = _calls(runtime, first.exec_id)["expensive"]
        assert hit.cached and hit.cached_from == first.exec_id
        assert not miss.cached
        # The same artifact, no copy.
        assert hit.output_artifact == miss.output_artifact

    def test_other_inputs_miss(self, runtime: Runtime) -> None:
        ran: Counter[int] = Counter()

        @checkpoint(cache=True)
        def square(x: int) -> int:
            ran[x] += 1
            return x * x

        @flow
        def squares(x: int) -> int:
            return square(x)

        assert squares.run(2).wait(timeout=60) == 4
        assert squares.run(3).wait(timeout=60) == 9
        assert squares.run(2).wait(timeout=60) == 4
        assert ran == {2: 1, 3: 1}

    def test_uncached_checkpoints_run_every_time(self, runtime: Runtime) -> None:
        ran: Counter[str] = Counter()

        @checkpoint
        def plain(x: int) -> int:
            ran["plain"] += 1
            return x

        @flow
        def uncached(x: int) -> int:
            return plain(x)

        uncached.run(1).wait(timeout=60)
        uncached.run(1).wait(timeout=60)
        assert ran["plain"] == 2

    def test_flow_cache_is_the_default_and_a_checkpoint_may_opt_out(self, runtime: Runtime) -> None:
        ran: Counter[str] = Counter()

        @checkpoint
        def follows(x: int) -> int:
            ran["follows"] += 1
            return x + 1

        @checkpoint(cache=False)
        def opts_out(x: int) -> int:
            ran["opts_out"] += 1
            return x + 2

        @flow(cache=True)
        def default_cached(x: int) -> int:
            return follows(x) + opts_out(x)

        default_cached.run(1).wait(timeout=60)
        default_cached.run(1).wait(timeout=60)
        assert ran == {"follows": 1, "opts_out": 2}

    def test_user_cache_key_decides(self, runtime: Runtime) -> None:
        ran: Counter[str] = Counter()

        @checkpoint(cache_key=lambda query, request_id: query.lower())
        def search(query: str, request_id: int) -> str:
            ran["search"] += 1
            return f"results for {query.lower()}"

        @flow
        def searching(query: str, request_id: int) -> str:
            return search(query, request_id)

        assert searching.run("Kitaru", 1).wait(timeout=60) == "results for kitaru"
        assert searching.run("KITARU", 2).wait(timeout=60) == "results for kitaru"
        assert ran["search"] == 1

    def test_async_checkpoints_cache_too(self, runtime: Runtime) -> None:
        ran: Counter[str] = Counter()

        @checkpoint(cache=True)
        async def fetch(x: int) -> int:
            ran["fetch"] += 1
            return x + 100

        @flow
        async def async_cached(x: int) -> int:
            return await fetch(x)

        assert async_cached.run(1).wait(timeout=60) == 101
        second = async_cached.run(1)
        assert second.wait(timeout=60) == 101
        assert ran["fetch"] == 1
        assert _calls(runtime, second.exec_id)["fetch"].cached

    def test_opaque_inputs_are_not_cached(self, runtime: Runtime) -> None:
        ran: Counter[str] = Counter()

        class Client:
            pass

        @checkpoint(cache=True)
        def use(client: Client) -> str:
            ran["use"] += 1
            return "used"

        @flow
        def opaque() -> str:
            return use(Client())

        opaque.run().wait(timeout=60)
        opaque.run().wait(timeout=60)
        assert ran["use"] == 2

    def test_journal_first_the_cache_only_for_calls_without_a_record(self, runtime: Runtime) -> None:
        """A resumed execution replays its own completed call from the journal, even after the
        cache was cleared; the cache never replaces a journal record."""
        import kitaru

        ran: Counter[str] = Counter()

        @checkpoint(cache=True)
        def step(x: int) -> int:
            ran["step"] += 1
            return x * 3

        @flow
        def waits(x: int) -> int:
            y = step(x)
            kitaru.wait(name="go", schema=bool)
            return y

        handle = waits.run(2)
        assert handle.status == "waiting"
        journal_artifact = _calls(runtime, handle.exec_id)["step"].output_artifact
        assert runtime.state.clear_cache() >= 1  # type: ignore[attr-defined]
        KitaruClient(runtime).executions.input(handle.exec_id, True, wait="go")
        assert KitaruClient(runtime).executions.get(handle.exec_id).status == "completed"
        assert ran["step"] == 1
        call = _calls(runtime, handle.exec_id)["step"]
        assert not call.cached and call.output_artifact == journal_artifact

    def test_cached_is_in_the_json_of_executions_get(self, runtime: Runtime) -> None:
        @checkpoint(cache=True)
        def constant() -> str:
            return "c"

        @flow
        def constant_flow() -> str:
            return constant()

        constant_flow.run().wait(timeout=60)
        second = constant_flow.run()
        data = json.loads(json.dumps(KitaruClient(runtime).executions.get(second.exec_id).to_dict()))
        [call] = data["checkpoints"]
        assert call["cached"] is True


def test_cache_key_must_be_a_string_or_callable() -> None:
    from kitaru.errors import KitaruUsageError

    with pytest.raises(KitaruUsageError, match="cache_key"):
        checkpoint(cache_key=3)(lambda: 1)  # type: ignore[call-overload]
