"""Natural batching: one call for the items that arrive while the previous call runs.

`Batcher(flush).submit(item)` hands `item` to `flush` at once when no flush is running (a lone item waits
for nothing), and otherwise with every other item submitted meanwhile, in the next call: under load the
batches grow by themselves, with no timer and no delay added to any item. It is for the statements a
worker runs for each of its concurrent jobs (a job's end, say), where one round trip and one pass through
the drivers for several jobs cost little more than for one.

Each `submit` returns its item's own result, or raises what `flush` raised (every item of that call gets
the exception). A caller cancelled while it waits does not take its item back: the flush runs to its end
in the batcher's own task, as a statement sent for several jobs cannot be withdrawn for one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

from medialens_shared.aio import unawaited

T = TypeVar("T")
R = TypeVar("R")


class Batcher(Generic[T, R]):
    """Calls `flush(items)` for batches of at most `max_items`; `flush` returns one result per item, in
    order."""

    def __init__(self, flush: Callable[[list[T]], Awaitable[Sequence[R]]], *, max_items: int = 100) -> None:
        if max_items < 1:
            raise ValueError("a batch holds at least one item")
        self._flush = flush
        self.max_items = max_items
        self._waiting: list[tuple[T, asyncio.Future[R]]] = []
        self._draining: asyncio.Task[None] | None = None
        #: Calls of `flush` so far, and the items they took (their ratio is the mean batch size).
        self.flushes = 0
        self.items = 0

    async def submit(self, item: T) -> R:
        """`item`'s result from the `flush` call that takes it."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[R] = loop.create_future()
        unawaited(future)  # its caller may be cancelled meanwhile
        if self._draining is not None and self._draining.get_loop() is not loop:  # that loop was closed
            self._waiting, self._draining = [], None
        self._waiting.append((item, future))
        if self._draining is None or self._draining.done():
            self._draining = loop.create_task(self._drain())
        return await asyncio.shield(future)

    async def _drain(self) -> None:
        while self._waiting:
            batch = self._waiting[: self.max_items]
            del self._waiting[: self.max_items]
            self.flushes += 1
            self.items += len(batch)
            try:
                results = await self._flush([item for item, _ in batch])
                if len(results) != len(batch):
                    raise RuntimeError(f"flush returned {len(results)} results for {len(batch)} items")
            except asyncio.CancelledError:  # the loop is closing: nobody's item is flushed any more
                for _, future in (*batch, *self._waiting):
                    future.cancel()
                self._waiting.clear()
                raise
            except Exception as exc:  # every waiter of this call learns why; the next call still runs
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for (_, future), result in zip(batch, results, strict=True):
                if not future.done():
                    future.set_result(result)
