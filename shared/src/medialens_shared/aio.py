"""Small asyncio helpers the services share."""

from __future__ import annotations

import asyncio
import contextlib


async def wait_set(event: asyncio.Event, timeout_s: float) -> bool:
    """Wait until `event` is set, at most `timeout_s` seconds (not at all when that is not positive);
    whether it is set. A pause that a stop (or a wake-up) ends early."""
    if timeout_s > 0 and not event.is_set():
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await event.wait()
    return event.is_set()
