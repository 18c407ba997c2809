"""Small asyncio helpers the services share."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


async def wait_set(event: asyncio.Event, timeout_s: float) -> bool:
    """Wait until `event` is set, at most `timeout_s` seconds (not at all when that is not positive);
    whether it is set. A pause that a stop (or a wake-up) ends early."""
    if timeout_s > 0 and not event.is_set():
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await event.wait()
    return event.is_set()


def unawaited(work: asyncio.Future[Any]) -> None:
    """Mark `work` as one that may end with nobody awaiting it (its caller gave up or was cancelled): its
    outcome is read when it ends, so that asyncio logs no "exception was never retrieved"."""
    work.add_done_callback(_read_outcome)


def _read_outcome(work: asyncio.Future[Any]) -> None:
    if not work.cancelled():
        work.exception()


async def answered(call: Coroutine[Any, Any, T], timeout_s: float) -> T:
    """`call`'s result, or `TimeoutError` when it takes longer than `timeout_s`; `call` itself is never
    cancelled, but left to end on its own (its outcome read then, so asyncio logs nothing).

    For a broker's round trips: aiormq closes a channel whose call is cancelled, so a health check that
    gave up on a slow broker with `asyncio.wait_for` cost the channel its process publishes or consumes on.
    """
    task = asyncio.ensure_future(call)
    unawaited(task)
    finished, _ = await asyncio.wait({task}, timeout=timeout_s)
    if not finished:
        raise TimeoutError(f"no answer within {timeout_s:g} s")
    return task.result()
