"""The batching behind PostgreSQL's grouped answers and reads, without a database."""

from __future__ import annotations

import asyncio

import pytest

from kitaru.errors import KitaruStoreError
from kitaru.store.postgres._batches import Batches, Call, settle


class Doubler:
    """Answers each number with its double, a batch at a time, recording every batch and how many
    were being processed at once."""

    def __init__(self, fail_on: int | None = None) -> None:
        self.batches: list[list[int]] = []
        self.running = 0
        self.most_at_once = 0
        self.fail_on = fail_on
        self.release = asyncio.Event()

    async def __call__(self, batch: list[Call[int, int]]) -> None:
        self.batches.append([n for n, _ in batch])
        self.running += 1
        self.most_at_once = max(self.most_at_once, self.running)
        try:
            await self.release.wait()
            if self.fail_on is not None and self.fail_on in (n for n, _ in batch):
                raise ValueError(f"batch with {self.fail_on} failed")
            for n, future in batch:
                settle(future, 2 * n)
        finally:
            self.running -= 1


async def _let_run() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def test_a_burst_is_served_a_few_batches_at_a_time_and_each_caller_gets_its_own() -> None:
    async def main() -> None:
        process = Doubler()
        batches = Batches(process, workers=2, size=3, what="double")
        calls = [asyncio.ensure_future(batches(n)) for n in range(10)]
        await _let_run()
        process.release.set()
        assert await asyncio.gather(*calls) == [2 * n for n in range(10)]
        # The first two calls each start a worker; by the time those run, all ten are queued.
        assert process.batches == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9]]
        assert process.most_at_once == 2

    asyncio.run(main())


def test_a_failed_batch_fails_its_callers_only_and_the_next_is_served() -> None:
    async def main() -> None:
        process = Doubler(fail_on=4)
        batches = Batches(process, workers=1, size=3, what="double")
        calls = [asyncio.ensure_future(batches(n)) for n in range(7)]
        await _let_run()
        process.release.set()
        results = await asyncio.gather(*calls, return_exceptions=True)
        assert process.batches == [[0, 1, 2], [3, 4, 5], [6]]
        assert results[:3] == [0, 2, 4]
        assert all(isinstance(r, ValueError) and "batch with 4 failed" in str(r) for r in results[3:6])
        assert results[6] == 12
        # The worker survives its batch's failure: a later call is served.
        assert await batches(8) == 16

    asyncio.run(main())


def test_a_caller_that_goes_away_does_not_disturb_the_others() -> None:
    async def main() -> None:
        process = Doubler()
        batches = Batches(process, workers=1, size=10, what="double")
        calls = [asyncio.ensure_future(batches(n)) for n in range(4)]
        await _let_run()
        calls[2].cancel()
        process.release.set()
        results = await asyncio.gather(*calls, return_exceptions=True)
        assert isinstance(results[2], asyncio.CancelledError)
        assert [results[i] for i in (0, 1, 3)] == [0, 2, 6]

    asyncio.run(main())


def test_calls_queued_behind_a_cancelled_worker_fail_instead_of_hanging() -> None:
    async def main() -> None:
        process = Doubler()
        batches = Batches(process, workers=1, size=2, what="double")
        calls = [asyncio.ensure_future(batches(n)) for n in range(5)]
        await _let_run()
        (worker,) = [t for t in asyncio.all_tasks() if t is not asyncio.current_task() and t not in calls]
        worker.cancel()  # e.g. the loop shutting down under it
        results = await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), 5)
        assert process.batches == [[0, 1]]
        assert all(isinstance(r, asyncio.CancelledError) for r in results[:2])  # being served
        for queued in results[2:]:
            assert isinstance(queued, KitaruStoreError)
            assert str(queued) == "the double was cancelled."

    asyncio.run(main())


def test_each_loop_has_its_own_queue() -> None:
    process_calls: list[list[int]] = []

    async def process(batch: list[Call[int, int]]) -> None:
        process_calls.append([n for n, _ in batch])
        for n, future in batch:
            settle(future, n + 1)

    batches = Batches(process, workers=1, size=10, what="add")
    # A second loop (a worker thread's, a second asyncio.run) is served on its own.
    assert asyncio.run(batches(1)) == 2
    assert asyncio.run(batches(2)) == 3
    assert process_calls == [[1], [2]]


@pytest.mark.parametrize("error", [None, ValueError("x")])
def test_settle_tells_nobody_when_the_caller_is_gone(error: Exception | None) -> None:
    async def main() -> None:
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        future.cancel()
        settle(future, 1, error)  # no InvalidStateError
        assert future.cancelled()

    asyncio.run(main())
