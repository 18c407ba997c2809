"""Live progress, cancellation and job events in the real Redis."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from typing import Any

import pytest
from redis.asyncio import Redis

from medialens_shared.db import DatabaseManager
from medialens_shared.settings import Settings
from medialens_shared.signals import LIVE_TTL_S, JobSignals, follow

pytestmark = pytest.mark.integration


async def test_progress_is_stored_published_and_read_back(signals: JobSignals, db: DatabaseManager) -> None:
    """set_progress stores the job's fraction (4 decimals) and message, with a day's expiry, and publishes
    the job object on its channel; live reads them."""
    job_id = uuid.uuid4().hex
    assert await signals.live(job_id) is None
    job = {"id": job_id, "status": "running", "progress": 0.123456, "message": "decoding"}
    pubsub = db.redis.pubsub()
    try:
        await pubsub.subscribe(signals.channel(job_id))
        await signals.set_progress(job)
        published = None
        for _ in range(20):
            published = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.5)
            if published is not None:
                break
    finally:
        await pubsub.aclose()
    assert await signals.live(job_id) == {"progress": "0.1235", "message": "decoding"}
    assert published is not None
    assert json.loads(published["data"]) == job
    ttl = await db.redis.ttl(f"{signals.prefix}:job:{job_id}:live")
    assert LIVE_TTL_S - 5 <= ttl <= LIVE_TTL_S


async def test_cancel_is_requested_once_asked(signals: JobSignals) -> None:
    """cancel_requested is False until request_cancel is called, then True."""
    job_id = uuid.uuid4().hex
    assert await signals.cancel_requested(job_id) is False
    await signals.request_cancel(job_id)
    assert await signals.cancel_requested(job_id) is True


async def test_announce_reaches_a_subscriber(signals: JobSignals, db: DatabaseManager) -> None:
    """A job object announced is delivered as JSON to a subscriber of the job's channel and the pattern."""
    job_id = uuid.uuid4().hex
    pubsub = db.redis.pubsub()
    try:
        await pubsub.subscribe(signals.channel(job_id))
        await pubsub.psubscribe(signals.all_channels)
        await signals.announce({"id": job_id, "status": "running", "progress": 0.5})
        received = []
        for _ in range(20):
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.5)
            if message is not None:
                received.append(message)
            if len(received) == 2:
                break
    finally:
        await pubsub.aclose()
    assert len(received) == 2
    for message in received:
        channel = message["channel"].decode()
        assert channel == signals.channel(job_id)
        assert signals.job_id_of(channel) == job_id
        assert json.loads(message["data"]) == {"id": job_id, "status": "running", "progress": 0.5}
    assert {message["type"] for message in received} == {"message", "pmessage"}


async def test_concurrent_announcements_go_together_and_arrive_in_order(
    signals: JobSignals, db: DatabaseManager
) -> None:
    """Announcements made at once (a worker's concurrent jobs) share round trips and reach each job's
    follower in the order they were made."""
    job_ids = [uuid.uuid4().hex for _ in range(4)]
    states = ("queued", "running", "succeeded")
    pubsub = db.redis.pubsub()
    flushes_before = signals.announcements.flushes
    try:
        await pubsub.psubscribe(signals.all_channels)
        await asyncio.gather(
            *(signals.announce({"id": job_id, "status": state}) for state in states for job_id in job_ids)
        )
        received: dict[str, list[str]] = {job_id: [] for job_id in job_ids}
        for _ in range(100):
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.5)
            if message is not None:
                job = json.loads(message["data"])
                received.setdefault(job["id"], []).append(job["status"])
            if all(len(states_of) == len(states) for states_of in received.values()):
                break
    finally:
        await pubsub.aclose()
    assert received == {job_id: list(states) for job_id in job_ids}
    assert signals.announcements.flushes - flushes_before < len(job_ids) * len(states)


async def _arrivals(pubsub: Any, *, within_s: float) -> list[float]:
    """When (loop time) each message `pubsub` receives within `within_s` arrived."""
    loop = asyncio.get_running_loop()
    arrivals: list[float] = []
    deadline = loop.time() + within_s
    while (left := deadline - loop.time()) > 0:
        if await pubsub.get_message(ignore_subscribe_messages=True, timeout=left) is not None:
            arrivals.append(loop.time())
    return arrivals


async def test_outbox_nudges_go_at_once_then_once_an_interval(
    db: DatabaseManager, settings: Settings
) -> None:
    """The first submission's nudge goes at once; the hundred made while it is on its way or within the
    nudge interval after it make a single one more, not before the interval is over; nothing more after
    the burst; a nudge long after goes at once again. (Delays on a loaded machine only make arrivals later,
    which the bounds allow.)"""
    interval = 0.5
    signals = JobSignals(db.redis, prefix=settings.redis.prefix, nudge_interval_s=interval)
    loop = asyncio.get_running_loop()
    pubsub = db.redis.pubsub()
    try:
        await pubsub.subscribe(signals.outbox_channel)
        await pubsub.get_message(timeout=1.0)  # the subscription's confirmation
        first_call = loop.time()
        signals.outbox_written()
        (first,) = await _arrivals(pubsub, within_s=interval * 0.6)  # at once, not after the interval
        assert first - first_call < interval * 0.6
        for _ in range(100):
            signals.outbox_written()
            await asyncio.sleep(0)
        (second,) = await _arrivals(pubsub, within_s=interval * 2)  # the hundred's one, and no more
        assert second - first >= interval * 0.8  # (a late read of the first only shortens this gap)
        later_call = loop.time()
        signals.outbox_written()
        arrivals = await _arrivals(pubsub, within_s=interval * 0.6)
        assert len(arrivals) == 1
        assert arrivals[0] - later_call < interval * 0.6
    finally:
        await signals.aclose()
        await pubsub.aclose()


async def test_closing_stops_a_nudge_waiting_for_its_interval(
    db: DatabaseManager, settings: Settings
) -> None:
    """At shutdown `aclose` ends the nudge task (waiting out its interval, a trailing nudge due), so none
    goes out on a pool being closed."""
    signals = JobSignals(db.redis, prefix=settings.redis.prefix, nudge_interval_s=30.0)
    signals.outbox_written()
    signals.outbox_written()
    task = signals._nudging
    assert task is not None
    await asyncio.sleep(0.2)
    assert not task.done()  # sent the first, waiting out the interval for the second
    await asyncio.wait_for(signals.aclose(), timeout=1.0)
    assert task.cancelled()


async def test_following_skips_a_message_its_handler_fails_on(
    db: DatabaseManager, settings: Settings
) -> None:
    """A message the handler raises on is logged and skipped; the subscription goes on with the next."""
    channel = f"{settings.redis.prefix}:follow-test"
    seen: list[bytes | str] = []
    ready = asyncio.Event()

    def handle(_channel: bytes | str, data: bytes | str) -> None:
        if data == b"bad":
            raise ValueError("unreadable")
        seen.append(data)

    task = asyncio.create_task(follow(db.redis, channel=channel, on_message=handle, what="test", ready=ready))
    try:
        await asyncio.wait_for(ready.wait(), timeout=5)
        for data in (b"bad", b"good"):
            await db.redis.publish(channel, data)
        for _ in range(100):
            if seen:
                break
            await asyncio.sleep(0.02)
        assert seen == [b"good"]
        assert ready.is_set()  # still subscribed: not taken for a lost subscription
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_a_nudge_with_redis_away_is_dropped_quietly(settings: Settings) -> None:
    """A nudge that cannot be sent is no error of the submission's (the relays' polls find the entry), and
    the next nudge is tried again."""
    away = Redis.from_url("redis://127.0.0.1:1", socket_connect_timeout=0.5)
    signals = JobSignals(away, prefix=settings.redis.prefix, nudge_interval_s=0.01)
    try:
        signals.outbox_written()
        first = signals._nudging
        assert first is not None
        await first  # ends without raising
        signals.outbox_written()
        assert signals._nudging is not first
        await signals._nudging
    finally:
        await away.aclose()
