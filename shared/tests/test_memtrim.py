"""Giving freed memory back to the system: the trim itself, and when a service does it."""

from __future__ import annotations

import asyncio
import gc
import json
import subprocess
import sys
import textwrap

import pytest
from prometheus_client import REGISTRY

from medialens_shared import memtrim

pytestmark = pytest.mark.skipif(memtrim._libc_trim() is None, reason="no malloc_trim (not glibc)")

#: A thread allocates 100 MB in 3 KB blocks (beyond Python's small-object allocator: C's malloc) and keeps
#: every 64th: the rest is freed but kept by the thread's arena, as a decoder's frames are.
FRAGMENT_THEN_TRIM = textwrap.dedent(
    """
    import json, threading
    from medialens_shared import memtrim
    kept = []
    def work():
        blocks = [bytes(3000) + bytes([i % 256]) for i in range(33000)]
        kept.extend(blocks[::64])
    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    before = memtrim.resident_bytes()
    released = memtrim.trim()
    print(json.dumps({"before": before, "after": memtrim.resident_bytes(), "released": released}))
    """
)


def trims() -> float:
    return REGISTRY.get_sample_value("medialens_memory_trims_total") or 0.0


def test_trim_gives_back_memory_a_thread_freed_between_live_blocks() -> None:
    out = subprocess.run(
        [sys.executable, "-c", FRAGMENT_THEN_TRIM], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    figures = json.loads(out)
    # ~98 MB are free but resident before the trim; at least half of them leave.
    assert figures["released"] >= 50 * 2**20, figures
    assert figures["after"] <= figures["before"] - 50 * 2**20, figures


async def test_the_trimmer_trims_once_per_interval_and_only_after_a_job_ended() -> None:
    """Counted by the trimmer: the process's metric also counts the trims of services other tests left
    running in this process (a module's stack), whose jobs end when they will."""
    ended = 0
    trimmer = memtrim.MemoryTrimmer(lambda: ended, interval_s=0.05)
    stop = asyncio.Event()
    before = trims()
    task = asyncio.create_task(trimmer.run(stop))
    await asyncio.sleep(0.4)  # idle: eight intervals, no job ended
    assert trimmer.trims == 0

    ended = 3
    for _ in range(500):  # within 5 s
        if trimmer.trims:
            break
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.4)  # nothing ended since: no second trim
    assert trimmer.trims == 1
    assert trims() >= before + 1  # the metric counts it

    stop.set()
    await asyncio.wait_for(task, 1)


async def test_a_zero_interval_never_trims() -> None:
    trimmer = memtrim.MemoryTrimmer(lambda: 1, interval_s=0)
    await asyncio.wait_for(trimmer.run(asyncio.Event()), 1)  # returns at once


def _collectable(thing: object) -> bool:
    """Whether the collector's passes reach `thing` (frozen objects are in no generation)."""
    return any(candidate is thing for candidate in gc.get_objects())


def test_the_startup_heap_is_frozen_for_the_block_and_thawed_after() -> None:
    """Inside the block the objects alive at its start are out of the collector's reach, those made later
    are not; after it, every object is collectable again."""
    made_before: list[object] = [[]]
    assert _collectable(made_before)
    with memtrim.frozen_startup_heap() as frozen:
        assert frozen > 1000  # this test process's modules, at least
        made_later: list[object] = [[]]
        assert not _collectable(made_before)
        assert _collectable(made_later)
    assert _collectable(made_before)
    assert gc.get_freeze_count() == 0
