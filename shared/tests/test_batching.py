"""Natural batching: a lone item goes at once, items arriving during a flush go together in the next."""

from __future__ import annotations

import asyncio

import pytest

from medialens_shared.batching import Batcher


class Recorder:
    """A flush that records its batches and waits until released (to let items pile up meanwhile)."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.release = asyncio.Event()
        self.fail_with: Exception | None = None

    async def flush(self, items: list[int]) -> list[int]:
        self.batches.append(items)
        await self.release.wait()
        if self.fail_with is not None:
            raise self.fail_with
        return [item * 10 for item in items]


async def test_a_lone_item_is_flushed_at_once_and_gets_its_own_result() -> None:
    recorder = Recorder()
    recorder.release.set()
    batcher = Batcher(recorder.flush)
    assert await batcher.submit(7) == 70
    assert recorder.batches == [[7]]


async def test_items_arriving_during_a_flush_go_together_in_the_next() -> None:
    recorder = Recorder()
    batcher = Batcher(recorder.flush)
    first = asyncio.create_task(batcher.submit(1))
    await asyncio.sleep(0)  # the first flush starts, and waits
    later = [asyncio.create_task(batcher.submit(n)) for n in (2, 3, 4)]
    await asyncio.sleep(0)
    assert recorder.batches == [[1]]
    recorder.release.set()
    assert await asyncio.gather(first, *later) == [10, 20, 30, 40]
    assert recorder.batches == [[1], [2, 3, 4]]
    assert (batcher.flushes, batcher.items) == (2, 4)


async def test_a_batch_holds_at_most_max_items() -> None:
    recorder = Recorder()
    batcher = Batcher(recorder.flush, max_items=2)
    waiting = [asyncio.create_task(batcher.submit(n)) for n in range(5)]
    await asyncio.sleep(0)
    recorder.release.set()
    assert await asyncio.gather(*waiting) == [0, 10, 20, 30, 40]
    assert recorder.batches == [[0, 1], [2, 3], [4]]


async def test_a_failed_flush_fails_each_of_its_items_and_the_next_flush_still_runs() -> None:
    recorder = Recorder()
    recorder.fail_with = ConnectionError("database away")
    batcher = Batcher(recorder.flush)
    failing = [asyncio.create_task(batcher.submit(n)) for n in (1, 2)]
    await asyncio.sleep(0)
    recorder.release.set()
    for task in failing:
        with pytest.raises(ConnectionError, match="database away"):
            await task
    recorder.fail_with = None
    assert await batcher.submit(3) == 30


async def test_a_cancelled_caller_leaves_its_item_in_the_flush_and_the_others_unharmed() -> None:
    recorder = Recorder()
    batcher = Batcher(recorder.flush)
    first = asyncio.create_task(batcher.submit(1))
    await asyncio.sleep(0)
    gone, kept = asyncio.create_task(batcher.submit(2)), asyncio.create_task(batcher.submit(3))
    await asyncio.sleep(0)
    gone.cancel()
    recorder.release.set()
    assert await first == 10
    assert await kept == 30
    assert recorder.batches == [[1], [2, 3]]  # the cancelled caller's item was flushed all the same
    with pytest.raises(asyncio.CancelledError):
        await gone


async def test_a_flush_returning_the_wrong_number_of_results_fails_its_items() -> None:
    async def short(items: list[int]) -> list[int]:
        return items[:-1]

    batcher = Batcher(short)
    with pytest.raises(RuntimeError, match="1 results for 2 items"):
        await asyncio.gather(batcher.submit(1), batcher.submit(2))


def test_a_batcher_outlives_the_event_loop_it_first_ran_on() -> None:
    """Used again on a new event loop (a test's, a restarted program's), a batcher whose flush was cut off
    with the old loop starts afresh rather than waiting for a task that will never run again."""
    recorder = Recorder()
    batcher = Batcher(recorder.flush)

    async def cut_off() -> None:
        waiting = asyncio.create_task(batcher.submit(1))
        await asyncio.sleep(0.01)  # the flush started and waits: the loop closes under it
        assert not waiting.done()

    asyncio.run(cut_off())  # which cancels what still runs, the flush too, as the loop closes

    async def again() -> int:
        recorder.release.set()
        return await batcher.submit(2)

    assert asyncio.run(again()) == 20
    assert recorder.batches[-1] == [2]
