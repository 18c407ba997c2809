"""The task base's lease policy on the real servers: the claim is acked at once and guarded by a
heartbeat-extended lease; a passing fault sends the job back through a delay queue; a worker that stops
hands its job back; a worker that loses its lease stops working on it."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis
from sqlalchemy import func, select, update

from medialens_shared.contracts import JobMessage, VideoProbeResult
from medialens_shared.db import DatabaseManager
from medialens_shared.errors import TransientJobError
from medialens_shared.filestore import FileStore
from medialens_shared.settings import Settings
from medialens_shared.signals import JobSignals
from medialens_shared.tables import jobs, outbox
from medialens_shared.tasks import Handler, JobContext, JobRunner
from medialens_video.probe import probe_video
from scripts.samples import make_video
from tests.fixtures.stack import RecordedDelivery, Stack, upload, wait_for


def runner_for(stack: Stack, db: DatabaseManager, handler: Handler, **worker: Any) -> JobRunner:
    settings: Settings = stack.settings
    if worker:
        settings = settings.model_copy(update={"worker": settings.worker.model_copy(update=worker)})
    return JobRunner(
        service="video",
        handlers={"video.probe": handler},
        settings=settings,
        db=db,
        store=FileStore(db.gridfs, db.gridfs_chunks),
        signals=JobSignals(db.redis, prefix=settings.redis.prefix),
    )


@pytest.fixture
async def held_job(stack: Stack, api: httpx.AsyncClient, db: DatabaseManager, tmp_path: Path) -> JobMessage:
    """A queued video.probe job whose own message is never published: only the test's runner sees it."""
    path = tmp_path / "clip.mp4"
    make_video(path, duration_s=1.0, fps=10, width=160, height=120)
    return await stack.held_job(api, "video.probe", await upload(api, path))


async def _row(db: DatabaseManager, job_id: str) -> Any:
    async with db.session() as session:
        return (await session.execute(select(jobs).where(jobs.c.id == job_id))).mappings().one()


async def test_a_passing_fault_retries_the_job_through_a_delay_queue(
    stack: Stack, api: httpx.AsyncClient, db: DatabaseManager, held_job: JobMessage
) -> None:
    """A TransientJobError acks the claim, requeues the job after a backoff delay, and the retry succeeds."""

    async def flaky(ctx: JobContext) -> VideoProbeResult:
        raise TransientJobError("the database blinked")

    delivery = RecordedDelivery()
    started = time.monotonic()
    await runner_for(stack, db, flaky).handle(held_job.model_dump(mode="json"), delivery)
    assert delivery.settled == ["ack"]
    row = await _row(db, held_job.job_id)
    assert row["status"] == "queued"
    assert "retrying in" in row["message"]
    async with db.session() as session:
        delays = (
            await session.scalars(select(outbox.c.delay_s).where(outbox.c.job_id == held_job.job_id))
        ).all()
    assert sorted(delays)[-1] in {1, 5}
    done = await wait_for(api, held_job.job_id, timeout=40)
    assert done["status"] == "succeeded", done
    assert done["attempts"] == 2
    assert time.monotonic() - started >= max(delays) - 0.5  # it waited in the delay queue


async def _lease_ahead(db: DatabaseManager, job_id: str) -> bool:
    """Whether the job's lease still runs past the database's clock (the reaper's view)."""
    async with db.session() as session:
        ahead = await session.scalar(select(jobs.c.lease_expires_at > func.now()).where(jobs.c.id == job_id))
    return bool(ahead)


@pytest.mark.parametrize("redis", ["up", "away"])
async def test_the_heartbeat_keeps_the_lease_of_a_long_job_ahead(
    stack: Stack, db: DatabaseManager, held_job: JobMessage, redis: str
) -> None:
    """While a job runs for several leases, every look at its row finds the lease still ahead of the
    database's clock, so the reaper never takes it; also with Redis unreachable throughout (the heartbeat's
    look for a cancel failed first and skipped the beat: with Redis away every running job lost its lease
    and was rerun beside itself)."""
    ahead: list[bool] = []

    async def slow(ctx: JobContext) -> VideoProbeResult:
        for _ in range(8):
            await asyncio.sleep(0.4)
            ahead.append(await _lease_ahead(db, ctx.job_id))
        return await ctx.run_cpu(probe_video, ctx.require_input())

    runner = runner_for(stack, db, slow, lease_s=1.2)
    away = Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2, socket_timeout=0.2)
    if redis == "away":
        runner.signals = JobSignals(away, prefix=stack.settings.redis.prefix)
    try:
        await runner.handle(held_job.model_dump(mode="json"), RecordedDelivery())
    finally:
        await away.aclose()
    row = await _row(db, held_job.job_id)
    assert (row["status"], row["attempts"]) == ("succeeded", 1)
    assert row["lease_expires_at"] is None
    assert ahead == [True] * 8


async def test_a_job_asked_to_cancel_keeps_its_lease_until_it_stops(
    stack: Stack, db: DatabaseManager, held_job: JobMessage
) -> None:
    """A cancel asked while the handler is between checkpoints for longer than its lease: the beats go on,
    and the job ends cancelled at its next checkpoint, on its first attempt. (The heartbeat stopped at the
    cancel: the reaper took the job as a crash and ran it again.)"""
    ahead: list[bool] = []

    async def busy(ctx: JobContext) -> VideoProbeResult:
        await JobSignals(db.redis, prefix=stack.settings.redis.prefix).request_cancel(ctx.job_id)
        for _ in range(10):  # no checkpoint for 4 s, over three leases and a reap interval
            await asyncio.sleep(0.4)
            ahead.append(await _lease_ahead(db, ctx.job_id))
        ctx.check_cancelled()
        raise AssertionError("the cancel was not seen")

    await runner_for(stack, db, busy, lease_s=1.2).handle(
        held_job.model_dump(mode="json"), RecordedDelivery()
    )
    row = await _row(db, held_job.job_id)
    assert (row["status"], row["attempts"]) == ("cancelled", 1)
    assert ahead == [True] * 10


async def test_a_stopping_worker_hands_its_job_back(
    stack: Stack, api: httpx.AsyncClient, db: DatabaseManager, held_job: JobMessage
) -> None:
    """release_unfinished requeues a running job at once, and the job then succeeds on another worker."""
    running = asyncio.Event()

    async def stuck(ctx: JobContext) -> VideoProbeResult:
        running.set()
        await asyncio.sleep(3600)
        raise AssertionError("unreachable")

    runner = runner_for(stack, db, stuck)
    task = asyncio.create_task(runner.handle(held_job.model_dump(mode="json"), RecordedDelivery()))
    await asyncio.wait_for(running.wait(), 10)
    await runner.release_unfinished()
    row = await _row(db, held_job.job_id)
    assert (row["status"], row["worker"], row["message"]) == ("queued", None, "requeued: its worker stopped")
    task.cancel()
    done = await wait_for(api, held_job.job_id, timeout=30)
    assert done["status"] == "succeeded"
    assert done["attempts"] == 2


async def test_a_worker_that_lost_its_lease_stops_and_leaves_the_job_alone(
    stack: Stack, db: DatabaseManager, held_job: JobMessage
) -> None:
    """When another worker owns the job now, the old one's handler is stopped and cannot finish the job."""
    stopped_after: list[float] = []

    async def patient(ctx: JobContext) -> VideoProbeResult:
        async with db.session() as session:  # the reaper gave the job to someone else meanwhile
            await session.execute(update(jobs).where(jobs.c.id == ctx.job_id).values(worker="new-owner"))
            await session.commit()
        started = time.monotonic()
        while True:
            await asyncio.sleep(0.05)
            if ctx.cancelled:
                stopped_after.append(time.monotonic() - started)
                ctx.check_cancelled()

    await runner_for(stack, db, patient, lease_s=1.5).handle(
        held_job.model_dump(mode="json"), RecordedDelivery()
    )
    row = await _row(db, held_job.job_id)
    assert (row["status"], row["worker"]) == ("running", "new-owner")
    assert stopped_after
    assert stopped_after[0] < 2.0


async def test_an_unreadable_message_is_rejected(stack: Stack, db: DatabaseManager) -> None:
    """A body that is not a job message is rejected (dead-lettered), never acked or requeued."""

    async def never(ctx: JobContext) -> VideoProbeResult:
        raise AssertionError("unreachable")

    delivery = RecordedDelivery()
    await runner_for(stack, db, never).handle({"not": "a job"}, delivery)
    assert delivery.settled == ["reject"]
