"""Give the memory a service has freed back to the system, a while after its jobs end (glibc's malloc_trim).

Why: in a soak of 20,000 light jobs the audio service's resident memory grew by 10% while its Python heap
did not (a tracemalloc snapshot diff over 2,400 jobs: +28 KB). The growth was memory already freed but
kept by the C allocator: the decoders run in worker threads, glibc gives each thread its own arena, and an
arena only returns the free space at its top, never the pages between live chunks. One `malloc_trim(0)`
after 8,500 jobs gave back nearly all of it (147 MB after the first 500 jobs, 155 after 8,500, 148 after
the trim). `malloc_trim(0)` walks every arena and releases the free pages in the middle of each too.
Dask's workers do the same for the same reason (distributed's "trim memory"). Lowering
`MALLOC_ARENA_MAX` instead made the growth worse (+19.9%), and a trim after every job would cost a few
milliseconds of arena locking per job; so `MemoryTrimmer` trims at most once per interval, and only when a
job has ended since the last trim (an idle service costs nothing).

Elsewhere than glibc (musl, macOS) there is no malloc_trim and this does nothing.

`frozen_startup_heap` is the Python heap's side: what a process built at start-up (modules, schemas,
routes, pools) lives as long as it does, so the cyclic garbage collector's full passes need not walk it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import gc
import logging
import os
from collections.abc import Callable, Iterator
from functools import cache
from pathlib import Path

from medialens_shared.aio import wait_set
from medialens_shared.metrics import MEMORY_TRIMMED_BYTES, MEMORY_TRIMS

log = logging.getLogger(__name__)

_STATM = Path("/proc/self/statm")


@cache
def _libc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    try:
        trim: Callable[[int], int] = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):  # not glibc: no malloc_trim
        return None
    return trim


def resident_bytes() -> int:
    """This process's resident memory, from /proc (0 where there is none)."""
    try:
        return int(_STATM.read_bytes().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0


def trim() -> int:
    """Release the C allocator's free memory to the system; the resident bytes that gave back (≥ 0)."""
    malloc_trim = _libc_trim()
    if malloc_trim is None:
        return 0
    before = resident_bytes()
    malloc_trim(0)
    released = max(0, before - resident_bytes())
    MEMORY_TRIMS.inc()
    MEMORY_TRIMMED_BYTES.inc(released)
    return released


class MemoryTrimmer:
    """Trims every `interval_s` (0: never) while jobs end: `ended()` counts the jobs ended so far."""

    def __init__(self, ended: Callable[[], int], *, interval_s: float) -> None:
        self.ended = ended
        self.interval_s = interval_s
        self._seen = ended()
        #: The trims this trimmer did (`medialens_memory_trims_total` counts every trim in the process).
        self.trims = 0

    async def run(self, stop: asyncio.Event) -> None:
        """Until `stop` is set. The trim runs in a thread: it holds the allocator's locks for a few ms."""
        if self.interval_s <= 0 or _libc_trim() is None:
            return
        while not await wait_set(stop, self.interval_s):
            ended = self.ended()
            if ended != self._seen:
                self._seen = ended
                released = await asyncio.to_thread(trim)
                self.trims += 1
                log.debug("memory trimmed: %.1f MB given back", released / 2**20)


@contextlib.contextmanager
def frozen_startup_heap() -> Iterator[int]:
    """Freeze (`gc.freeze`) every object alive now, for the block; how many were frozen.

    Enter it once start-up is done. A full collection walks every tracked object, and each process holds
    100,000-160,000 from start-up alone (FastAPI, pydantic, SQLAlchemy, PyAV and their schemas and caches),
    none of which ever becomes garbage: those passes stopped the relay and the services for 80-280 ms each,
    every few seconds under load (measured with `gc.callbacks` during bench.platform's runs), and under
    load cost the gateway about as much CPU as its requests (its saturation throughput went 1.9x with the
    freeze). Frozen objects move to a permanent generation the collector skips; later ones are collected
    as before. Instagram's recipe for their Django workers, and what the `gc` docs advise before a fork.
    """
    gc.collect()
    gc.freeze()
    try:
        yield gc.get_freeze_count()
    finally:
        gc.unfreeze()
