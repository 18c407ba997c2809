"""`aio.wait_set`: the bounded pause the services, the relay and the gateway share."""

from __future__ import annotations

import asyncio
import time

from medialens_shared.aio import wait_set


async def test_a_pause_ends_at_its_timeout_when_nothing_sets_the_event() -> None:
    event = asyncio.Event()
    started = time.monotonic()
    assert await wait_set(event, 0.2) is False
    assert 0.19 <= time.monotonic() - started < 2.0


async def test_a_pause_ends_as_soon_as_the_event_is_set() -> None:
    event = asyncio.Event()
    asyncio.get_running_loop().call_later(0.05, event.set)
    started = time.monotonic()
    assert await wait_set(event, 30.0) is True
    assert time.monotonic() - started < 5.0


async def test_no_pause_when_set_already_or_the_timeout_is_not_positive() -> None:
    event = asyncio.Event()
    started = time.monotonic()
    assert await wait_set(event, 0.0) is False
    assert await wait_set(event, -1.0) is False
    event.set()
    assert await wait_set(event, 30.0) is True
    assert time.monotonic() - started < 1.0
