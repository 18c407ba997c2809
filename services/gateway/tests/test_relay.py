"""The relay's three duties on the real servers: publishing the outbox, reaping jobs whose worker was
lost, and failing the jobs whose messages were dead-lettered."""

from __future__ import annotations

import asyncio
import secrets
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select, update

from medialens_gateway.relay import Relay
from medialens_shared import migrate
from medialens_shared.bus import Topology, make_broker, queue_stats
from medialens_shared.db import DatabaseManager
from medialens_shared.jobstore import WORKER_DIED_HEADER
from medialens_shared.outbox import DELAY_TIERS_S
from medialens_shared.tables import jobs, outbox
from scripts.samples import make_video
from tests.fixtures.servers import drop_database, make_settings
from tests.fixtures.stack import Stack, result_of, submit, upload, wait_for


@pytest.fixture
async def video_id(api: httpx.AsyncClient, tmp_path: Path) -> str:
    path = tmp_path / "clip.mp4"
    make_video(path, duration_s=1.0, fps=10, width=160, height=120)
    return await upload(api, path)


async def _orphan(db: DatabaseManager, job_id: str, *, attempts: int) -> None:
    """Make the job look claimed by a worker that died: running, its lease run out, its message sent."""
    async with db.session() as session:
        await session.execute(
            update(outbox).where(outbox.c.job_id == job_id).values(sent_at=datetime.now(UTC))
        )
        await session.execute(
            update(jobs)
            .where(jobs.c.id == job_id)
            .values(
                status="running",
                attempts=attempts,
                worker="ghost-worker",
                lease_expires_at=datetime.now(UTC) - timedelta(seconds=1),
                started_at=datetime.now(UTC),
            )
        )
        await session.commit()


async def test_a_job_whose_worker_died_runs_again(
    stack: Stack, api: httpx.AsyncClient, db: DatabaseManager, video_id: str
) -> None:
    """A running job whose lease ran out is requeued by the reaper, at once the first time (its rerun
    decodes in a child process) and then succeeds, its crash counted; a second crash's rerun waits in a
    delay queue (a backoff, so a job that crashes its worker each time cannot loop)."""
    job = await stack.held_job(api, "video.probe", video_id)
    await _orphan(db, job.job_id, attempts=1)
    started = time.monotonic()
    done = await wait_for(api, job.job_id, timeout=30)
    assert done["status"] == "succeeded", done
    assert done["attempts"] == 2
    assert time.monotonic() - started < 30
    assert (await result_of(api, job.job_id))["video"]["width"] == 160
    async with db.session() as session:
        query = select(outbox.c.delay_s, outbox.c.headers).where(outbox.c.job_id == job.job_id)
        sent = (await session.execute(query.order_by(outbox.c.id))).all()
    assert WORKER_DIED_HEADER not in sent[0].headers  # the submit's message
    # The requeue's: marked, so that the rerun's decoding ran in a child process.
    assert sent[1].delay_s == 0
    assert sent[1].headers[WORKER_DIED_HEADER] == "1"

    second = await stack.held_job(api, "video.probe", video_id)
    await _orphan(db, second.job_id, attempts=2)
    assert (await wait_for(api, second.job_id, timeout=60))["status"] == "succeeded"
    async with db.session() as session:
        query = select(outbox.c.delay_s).where(outbox.c.job_id == second.job_id).order_by(outbox.c.id)
        delays = (await session.scalars(query)).all()
    assert delays[1] in DELAY_TIERS_S


async def test_a_job_that_lost_its_worker_too_often_fails(
    stack: Stack, api: httpx.AsyncClient, db: DatabaseManager, video_id: str
) -> None:
    """At max_attempts, a job whose worker is lost again fails (RETRIES_EXHAUSTED) and is dead-lettered."""
    broker = make_broker(stack.settings, name="test-relay")
    await broker.connect()
    dead = Topology(stack.settings).dead.name
    try:
        before = (await queue_stats(broker, dead)).messages
        job = await stack.held_job(api, "video.probe", video_id)
        await _orphan(db, job.job_id, attempts=stack.settings.worker.max_attempts)
        done = await wait_for(api, job.job_id, timeout=30)
        assert done["status"] == "failed"
        assert done["error_code"] == "RETRIES_EXHAUSTED"
        assert "worker stopped" in done["error_message"]
        deadline = time.monotonic() + 10
        while (await queue_stats(broker, dead)).messages <= before:
            assert time.monotonic() < deadline, "the given-up job's message never reached the dead letters"
            await asyncio.sleep(0.1)
    finally:
        await broker.stop()


async def test_a_dead_lettered_message_fails_its_job(
    stack: Stack, api: httpx.AsyncClient, db: DatabaseManager, video_id: str
) -> None:
    """A message the broker dead-letters makes its still-queued job fail with RETRIES_EXHAUSTED."""
    job = await stack.held_job(api, "video.probe", video_id)
    await stack.publish_dead(job)
    done = await wait_for(api, job.job_id, timeout=20)
    assert done["status"] == "failed"
    assert done["error_code"] == "RETRIES_EXHAUSTED"
    assert "dead-lettered" in done["error_message"]


async def test_outbox_entries_are_marked_sent_once_confirmed(
    api: httpx.AsyncClient, db: DatabaseManager, video_id: str
) -> None:
    """Every submitted job's outbox entry is published and marked sent, once."""
    job = await submit(api, "video.probe", video_id)
    await wait_for(api, job["id"])
    async with db.session() as session:
        entries = (await session.execute(select(outbox).where(outbox.c.job_id == job["id"]))).mappings().all()
    assert len(entries) == 1
    assert entries[0]["sent_at"] is not None
    assert entries[0]["delay_s"] == 0
    assert not entries[0]["dead"]


async def test_sent_entries_are_deleted_once_past_their_retention(
    stack: Stack, api: httpx.AsyncClient, db: DatabaseManager, video_id: str
) -> None:
    """A relay round deletes the entries sent longer ago than `relay.sent_retention_s`, and only those:
    recently sent and unsent entries stay; with a retention of 0 nothing is deleted."""
    sent = [await stack.held_job(api, "video.probe", video_id) for _ in range(3)]
    ids = [job.job_id for job in sent]
    long_ago, just_now = datetime.now(UTC) - timedelta(hours=2), datetime.now(UTC)
    async with db.session() as session:
        for job_id, sent_at in zip(ids, (long_ago, just_now, None), strict=True):
            await session.execute(update(outbox).where(outbox.c.job_id == job_id).values(sent_at=sent_at))
        await session.commit()

    async def remaining() -> set[str]:
        async with db.session() as session:
            found = await session.scalars(select(outbox.c.job_id).where(outbox.c.job_id.in_(ids)))
            return set(found)

    keep_all = stack.settings.model_copy(
        update={"relay": stack.settings.relay.model_copy(update={"sent_retention_s": 0})}
    )
    hour = stack.settings.model_copy(
        update={"relay": stack.settings.relay.model_copy(update={"sent_retention_s": 3600})}
    )
    broker = make_broker(stack.settings, name="prune-test")
    assert await Relay(settings=keep_all, db=db, broker=broker).prune() == 0
    assert await remaining() == set(ids)
    assert await Relay(settings=hour, db=db, broker=broker).prune() >= 1
    assert await remaining() == {ids[1], ids[2]}


async def test_an_entry_the_broker_does_not_take_waits_with_why_and_the_others_go(
    run_id: str, mongo_url: str, rabbit_vhost: str
) -> None:
    """A round publishes what it can: an entry that cannot be published (here a routing key of no job
    type) stays unsent, its attempts counted and its last error kept round after round, while the entry
    beside it is sent and marked. (On a database of its own, which the stack's relay does not see.)"""
    name = f"{run_id}_outbox"
    settings = make_settings(run_id=name, mongo_url=mongo_url, vhost=rabbit_vhost)
    await asyncio.to_thread(migrate.upgrade, settings.postgres.url.get_secret_value())
    db = DatabaseManager(settings, name="relay")
    broker = make_broker(settings, name="outbox-test")
    try:
        await broker.start()
        missing = secrets.token_hex(8)  # a job the stack's video service does not know: it skips the message
        async with db.session() as session:
            for routing_key in ("no.such-type", "video.probe"):
                message = {"job_id": missing, "type": routing_key, "tenant_id": "t", "params": {}}
                await session.execute(
                    outbox.insert().values(job_id=missing, routing_key=routing_key, payload=message)
                )
            await session.commit()
        relay = Relay(settings=settings, db=db, broker=broker)
        assert await relay.publish_batch() == 1
        assert await relay.publish_batch() == 0
        async with db.session() as session:
            entries = {
                entry["routing_key"]: entry
                for entry in (
                    await session.execute(select(outbox).where(outbox.c.job_id == missing))
                ).mappings()
            }
        assert entries["video.probe"]["sent_at"] is not None
        assert (entries["video.probe"]["attempts"], entries["video.probe"]["last_error"]) == (0, None)
        unsent = entries["no.such-type"]
        assert (unsent["sent_at"], unsent["attempts"]) == (None, 2)
        assert "no.such-type" in unsent["last_error"]
    finally:
        await broker.stop()
        await db.close_all()
        await drop_database(f"medialens_test_{name}")


async def test_busy_rounds_look_for_due_webhooks_once_a_poll_interval(
    run_id: str, mongo_url: str, rabbit_vhost: str
) -> None:
    """While the outbox keeps every round full (no pause between rounds), the relay looks for due webhook
    deliveries at most once a poll interval, not once a round: each look is a transaction of its own, which
    a burst of submissions would otherwise pay for on every batch. (On a database of its own; the entries
    are messages for a job no service knows, which the stack's video service skips.)"""
    name = f"{run_id}_webhook_pace"
    base = make_settings(run_id=name, mongo_url=mongo_url, vhost=rabbit_vhost)
    relay_settings = base.relay.model_copy(update={"batch_size": 5, "poll_interval_s": 1.0})
    settings = base.model_copy(update={"relay": relay_settings})
    await asyncio.to_thread(migrate.upgrade, settings.postgres.url.get_secret_value())
    db = DatabaseManager(settings, name="relay")
    broker = make_broker(settings, name="webhook-pace-test")
    entries = 200
    try:
        await broker.start()
        missing = secrets.token_hex(8)
        message = {"job_id": missing, "type": "video.probe", "tenant_id": "t", "params": {}}
        async with db.session() as session:
            await session.execute(
                outbox.insert(),
                [{"job_id": missing, "routing_key": "video.probe", "payload": message}] * entries,
            )
            await session.commit()
        relay = Relay(settings=settings, db=db, broker=broker)
        rounds, looks = 0, 0
        publish_batch, dispatch_once = relay.publish_batch, relay.webhooks.dispatch_once

        async def counted_round() -> int:
            nonlocal rounds
            rounds += 1
            sent = await publish_batch()
            if sent < relay_settings.batch_size:
                stop.set()  # the outbox is empty: the busy stretch is over
            return sent

        async def counted_look() -> int:
            nonlocal looks
            looks += 1
            return await dispatch_once()

        relay.publish_batch = counted_round  # type: ignore[method-assign]
        relay.webhooks.dispatch_once = counted_look  # type: ignore[method-assign]
        stop = asyncio.Event()
        started = time.monotonic()
        await asyncio.wait_for(relay.run(stop), timeout=60)
        elapsed = time.monotonic() - started
        assert rounds >= entries // relay_settings.batch_size
        assert 1 <= looks <= 1 + elapsed / relay_settings.poll_interval_s
        assert looks < rounds / 4
    finally:
        await broker.stop()
        await db.close_all()
        await drop_database(f"medialens_test_{name}")


async def test_a_nudge_ends_the_relays_pause(run_id: str, mongo_url: str, rabbit_vhost: str) -> None:
    """With a poll interval far longer than the test, an entry written without a nudge waits for the next
    poll, while one written with a nudge (as a gateway's submission makes) is published within a second.
    (On a database of its own; the entries are for a job no service knows.)"""
    name = f"{run_id}_nudge"
    base = make_settings(run_id=name, mongo_url=mongo_url, vhost=rabbit_vhost)
    relay_settings = base.relay.model_copy(update={"poll_interval_s": 60.0, "busy_poll_interval_s": 60.0})
    settings = base.model_copy(update={"relay": relay_settings})
    await asyncio.to_thread(migrate.upgrade, settings.postgres.url.get_secret_value())
    db = DatabaseManager(settings, name="relay")
    broker = make_broker(settings, name="nudge-test")
    stop = asyncio.Event()
    running: asyncio.Task[None] | None = None
    try:
        await broker.start()
        relay = Relay(settings=settings, db=db, broker=broker)
        running = asyncio.create_task(relay.run(stop))
        channel = relay.signals.outbox_channel
        for _ in range(100):  # until the relay's subscription is made
            if dict(await db.redis.pubsub_numsub(channel)).get(channel.encode()):
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)  # its first round (the queues' declaration) is over: it pauses

        async def write() -> int:
            missing = secrets.token_hex(8)
            message = {"job_id": missing, "type": "video.probe", "tenant_id": "t", "params": {}}
            async with db.session() as session:
                entry_id: int = await session.scalar(
                    outbox.insert()
                    .values(job_id=missing, routing_key="video.probe", payload=message)
                    .returning(outbox.c.id)
                )
                await session.commit()
            return entry_id

        async def sent(entry_id: int) -> bool:
            async with db.session() as session:
                when = await session.scalar(select(outbox.c.sent_at).where(outbox.c.id == entry_id))
            return when is not None

        quiet = await write()
        await asyncio.sleep(1.0)
        assert not await sent(quiet)  # no nudge: it waits for the next poll, a minute away
        nudged = await write()
        started = time.monotonic()
        relay.signals.outbox_written()
        while not await sent(nudged):
            assert time.monotonic() - started < 1.0, "a nudged entry was not published within a second"
            await asyncio.sleep(0.01)
        assert await sent(quiet)  # the woken round took the older entry too
    finally:
        stop.set()
        if running is not None:
            await asyncio.wait_for(running, timeout=10)  # the stop ends the pause at once
        await broker.stop()
        await db.close_all()
        await drop_database(f"medialens_test_{name}")
