"""Live progress, cancellation and job events in the real Redis."""

from __future__ import annotations

import asyncio
import json
import uuid

import pytest

from medialens_shared.db import DatabaseManager
from medialens_shared.signals import LIVE_TTL_S, JobSignals

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
