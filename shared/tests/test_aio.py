"""`aio.wait_set`, the bounded pause the services, the relay and the gateway share, and `aio.answered`."""

from __future__ import annotations

import asyncio
import time

import pytest

from medialens_shared.aio import answered, wait_set


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


async def test_an_answer_in_time_is_returned() -> None:
    async def quick() -> int:
        await asyncio.sleep(0.01)
        return 7

    assert await answered(quick(), 5.0) == 7


async def test_a_late_call_times_out_and_is_left_to_finish_not_cancelled() -> None:
    """Past its timeout the caller gets TimeoutError, and the call runs on to its end (as a broker's round
    trip must: cancelling it would close its channel)."""
    ended = asyncio.Event()

    async def slow() -> None:
        await asyncio.sleep(0.2)
        ended.set()

    with pytest.raises(TimeoutError):
        await answered(slow(), 0.05)
    assert await wait_set(ended, 5.0)


async def test_a_call_that_fails_raises_its_own_error() -> None:
    async def failing() -> None:
        raise ConnectionError("refused")

    with pytest.raises(ConnectionError, match="refused"):
        await answered(failing(), 5.0)
