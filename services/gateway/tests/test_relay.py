"""The relay on the real servers: publishing the outbox (woken by nudges, looking for webhooks at a set
pace), reaping jobs whose worker was lost, and failing the jobs whose messages were dead-lettered."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import secrets
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from faststream.rabbit import RabbitBroker
from gridfs.errors import NoFile
from prometheus_client import REGISTRY
from pydantic import SecretStr, ValidationError
from sqlalchemy import RowMapping, Select, insert, select, text, update
from sqlalchemy.dialects import postgresql

from medialens_gateway import relay as relay_module
from medialens_gateway.auth import ensure_tenant
from medialens_gateway.relay import (
    ANNOUNCE_TIMEOUT_S,
    Published,
    Relay,
    finished_before,
    run_relay,
    stale_queued,
)
from medialens_shared import metrics, migrate
from medialens_shared.bus import (
    BROKER_CLOSE_S,
    EXIT_REFUSED,
    RECONNECT_S,
    Topology,
    close_broker,
    declare,
    make_broker,
    publish_job,
    queue_stats,
)
from medialens_shared.contracts import SERVICES
from medialens_shared.db import DatabaseManager
from medialens_shared.filestore import FileStore
from medialens_shared.jobstore import WORKER_DIED_HEADER
from medialens_shared.outbox import DELAY_TIERS_S
from medialens_shared.settings import RelaySettings, Settings
from medialens_shared.signals import CANCEL_FLAGS_TIMEOUT_S, JobSignals
from medialens_shared.tables import files, jobs, outbox, webhook_deliveries
from medialens_shared.tasks import RESULT_WRITES, JobContext, JobRunner
from medialens_video.handlers import HANDLERS as VIDEO_HANDLERS
from scripts.samples import make_video
from tests.fixtures.proxy import TcpProxy
from tests.fixtures.servers import (
    RABBIT_HOST,
    drop_database,
    free_port,
    make_settings,
    settings_env,
    unreachable,
)
from tests.fixtures.stack import RecordedDelivery, Stack, result_of, submit, upload, wait_for


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


async def test_a_job_asked_to_stop_while_its_worker_was_gone_ends_cancelled(
    stack: Stack, api: httpx.AsyncClient, db: DatabaseManager, video_id: str
) -> None:
    """A cancel asked of a running job whose worker died is not lost to a rerun: the reaper ends the job
    cancelled (it ran again, and ended cancelled only once the rerun looked at the flag, or succeeded)."""
    job = await stack.held_job(api, "video.probe", video_id)
    await _orphan(db, job.job_id, attempts=1)
    response = await api.post(f"/v1/jobs/{job.job_id}/cancel")
    assert response.json()["data"]["status"] == "running"  # asked to stop at its next checkpoint
    done = await wait_for(api, job.job_id, timeout=30)
    assert (done["status"], done["message"], done["attempts"]) == ("cancelled", "cancelled", 1)
    async with db.session() as session:
        row = (await session.execute(select(jobs).where(jobs.c.id == job.job_id))).mappings().one()
    assert (row["worker"], row["lease_expires_at"]) == (None, None)  # ended as every other end leaves a job


async def test_a_job_that_lost_its_worker_too_often_fails(
    stack: Stack, api: httpx.AsyncClient, db: DatabaseManager, video_id: str
) -> None:
    """At max_attempts, a job whose worker is lost again fails (RETRIES_EXHAUSTED) and is dead-lettered."""
    broker = make_broker(stack.settings, name="test-relay")
    await broker.connect()
    dead = Topology(stack.settings).dead.name
    try:
        before = (await queue_stats(broker, dead)).messages
        failed = _failed_count("video.probe", "RETRIES_EXHAUSTED")
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
        # Counted where the success-rate alert looks, though no worker ended it, and once: its dead letter
        # finds it failed already.
        await asyncio.sleep(0.5)
        assert _failed_count("video.probe", "RETRIES_EXHAUSTED") == failed + 1
    finally:
        await broker.stop()


async def test_a_last_attempt_that_died_after_storing_its_result_ends_succeeded(
    stack: Stack, api: httpx.AsyncClient, db: DatabaseManager, video_id: str
) -> None:
    """At max_attempts, a job whose worker died between storing its result and committing its success ends
    succeeded when the reaper finds it, its stored result served: it failed RETRIES_EXHAUSTED ("its worker
    stopped each time"), the result left in MongoDB, as a rerun finishes such a job and at the last attempt
    none comes."""
    job = await stack.held_job(api, "video.probe", video_id)
    probed = {"name": "mov,mp4,m4a,3gp,3g2,mj2", "duration_s": 1.0, "size_bytes": 1, "bit_rate": None}
    result = {"tenant_id": job.tenant_id, "job_id": job.job_id, "type": job.type, "input_file_id": video_id,
              "created_at": datetime.now(UTC), "format": probed, "video": None, "audio": []}  # fmt: skip
    await db.collection("results").update_one(
        {"_id": job.job_id}, {"$set": result, "$inc": {RESULT_WRITES: 1}}, upsert=True
    )
    await _orphan(db, job.job_id, attempts=stack.settings.worker.max_attempts)
    done = await wait_for(api, job.job_id, timeout=30)
    assert (done["status"], done["error_code"], done["message"]) == ("succeeded", None, "done"), done
    assert (done["attempts"], done["progress"]) == (stack.settings.worker.max_attempts, 1.0)
    assert (await result_of(api, job.job_id))["format"]["duration_s"] == 1.0
    stored = await db.collection("results").find_one({"_id": job.job_id})
    assert stored is not None
    assert stored[RESULT_WRITES] == 1  # finished, not run again


async def test_a_dead_lettered_message_fails_its_job(
    stack: Stack, api: httpx.AsyncClient, db: DatabaseManager, video_id: str
) -> None:
    """A message the broker dead-letters makes its still-queued job fail with RETRIES_EXHAUSTED."""
    failed = _failed_count("video.probe", "RETRIES_EXHAUSTED")
    job = await stack.held_job(api, "video.probe", video_id)
    await stack.publish_dead(job)
    done = await wait_for(api, job.job_id, timeout=20)
    assert done["status"] == "failed"
    assert done["error_code"] == "RETRIES_EXHAUSTED"
    assert "dead-lettered" in done["error_message"]
    assert _failed_count("video.probe", "RETRIES_EXHAUSTED") == failed + 1


async def test_a_dead_letter_leaves_be_a_job_its_live_worker_still_runs(
    stack: Stack, api: httpx.AsyncClient, db: DatabaseManager, video_id: str, tmp_path: Path
) -> None:
    """A job claimed and running on a live worker (heart-beating, its lease valid) may have a second
    message: the outbox publishing twice (a relay crash between confirm and commit), or the backstop's
    republish of a job queued over an hour. Returned to its queue five times without a claim (workers
    restarted while it waited in their prefetch, claims meeting the database away), that duplicate is
    dead-lettered (here: put straight in the dead letters, as the broker does). The relay failed the job
    from running (RETRIES_EXHAUSTED), the live worker's success thrown away, its files deleted and a
    `job.failed` webhook sent. The worker acked the job's own message at its claim, and the claim, not
    the delivery, guards a running job: the letter is left unheeded and the job succeeds."""
    job = await stack.held_job(api, "video.probe", video_id)
    gate = asyncio.Event()
    started = asyncio.Event()

    async def slow_probe(ctx: JobContext) -> Any:
        started.set()
        await gate.wait()
        return await VIDEO_HANDLERS["video.probe"](ctx)

    places = {"scratch_dir": str(tmp_path), "input_cache_dir": str(tmp_path)}
    settings = stack.settings.model_copy(update={"worker": stack.settings.worker.model_copy(update=places)})
    runner = JobRunner(
        service="video",
        handlers={"video.probe": slow_probe},
        settings=settings,
        db=db,
        store=FileStore(db.gridfs, db.gridfs_chunks),
        signals=JobSignals(db.redis, prefix=settings.redis.prefix),
    )
    running = asyncio.create_task(runner.handle(job.model_dump(mode="json"), RecordedDelivery()))
    await asyncio.wait_for(started.wait(), 20)
    assert (await wait_for(api, job.job_id, until=lambda j: j["status"] == "running"))["attempts"] == 1
    letters = _dead_lettered_count("video.probe")

    await stack.publish_dead(job)  # the duplicate's letter
    deadline = time.monotonic() + 10
    while _dead_lettered_count("video.probe") == letters:
        assert time.monotonic() < deadline, "the relay never took the letter"
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.5)  # the letter handled meanwhile; the worker still holds its lease
    assert (await api.get(f"/v1/jobs/{job.job_id}")).json()["data"]["status"] == "running"
    gate.set()
    await asyncio.wait_for(running, 30)
    done = await wait_for(api, job.job_id)
    assert done["status"] == "succeeded", done
    assert (await result_of(api, job.job_id))["video"]["width"] == 160


def _failed_count(job_type: str, error_code: str) -> float:
    labels = {"type": job_type, "error_code": error_code}
    return REGISTRY.get_sample_value("medialens_jobs_failed_total", labels) or 0.0


def _dead_lettered_count(job_type: str) -> float:
    return REGISTRY.get_sample_value("medialens_jobs_dead_lettered_total", {"type": job_type}) or 0.0


async def test_a_job_whose_message_was_lost_is_published_again_and_runs(
    stack: Stack, api: httpx.AsyncClient, db: DatabaseManager, video_id: str
) -> None:
    """A queued job whose message the broker lost after taking it (here: never published, its outbox entry
    marked sent) stays queued; once it has been queued longer than `relay.republish_after_s`, the relay
    publishes it again and it runs. Before the backstop, such a job stayed queued for ever."""
    job = await stack.held_job(api, "video.probe", video_id)
    await asyncio.sleep(1.0)
    assert (await api.get(f"/v1/jobs/{job.job_id}")).json()["data"]["status"] == "queued"
    queued_for = timedelta(seconds=stack.settings.relay.republish_after_s + 60)
    async with db.session() as session:
        await session.execute(
            update(jobs).where(jobs.c.id == job.job_id).values(updated_at=datetime.now(UTC) - queued_for)
        )
        await session.commit()
    done = await wait_for(api, job.job_id, timeout=30)
    assert done["status"] == "succeeded", done
    assert done["attempts"] == 1
    async with db.session() as session:
        entries = (await session.scalars(select(outbox.c.id).where(outbox.c.job_id == job.job_id))).all()
    assert len(entries) == 2  # the submission's, and the backstop's


async def test_the_backstop_publishes_only_jobs_queued_too_long_and_each_once_a_period(
    run_id: str, mongo_url: str, rabbit_vhost: str
) -> None:
    """Of the jobs below, only the one queued for longer than `republish_after_s` gets a new outbox entry:
    not one queued recently, not a running one, not a composite job (its parts are published, it is not);
    once published again it waits another period; with the setting at 0 nothing is published again."""
    async with own_relay(run_id, mongo_url, rabbit_vhost, name="backstop") as own:
        long_ago = datetime.now(UTC) - timedelta(seconds=own.settings.relay.republish_after_s + 60)
        await own.add_jobs(
            {"id": "stale", "status": "queued", "updated_at": long_ago},
            {"id": "recent", "status": "queued", "updated_at": datetime.now(UTC)},
            {"id": "running", "status": "running", "updated_at": long_ago},
            {"id": "composite", "type": "media.analyze", "status": "queued", "updated_at": long_ago},
        )

        async def entries() -> list[tuple[str, str, str]]:
            async with own.db.session() as session:
                query = select(outbox.c.job_id, outbox.c.routing_key, outbox.c.payload["job_id"].astext)
                return [
                    tuple(row) for row in (await session.execute(query.where(outbox.c.sent_at.is_(None))))
                ]

        assert await own.relay(republish_after_s=0).republish_stale() == 0
        relay = own.relay()
        counted = {"type": "audio.probe"}
        before = REGISTRY.get_sample_value("medialens_jobs_republished_total", counted) or 0.0
        assert await relay.republish_stale() == 1
        assert await entries() == [("stale", "audio.probe", "stale")]
        assert REGISTRY.get_sample_value("medialens_jobs_republished_total", counted) == before + 1
        assert await relay.republish_stale() == 0  # its updated_at is now: the next period starts

        # The look can read the partial index of queued jobs (its clauses imply the index's predicate).
        plan = await own.plan(stale_queued(own.settings.relay.republish_after_s))
        assert "ix_jobs_queued_since" in plan, plan


async def test_finished_jobs_past_their_retention_go_with_their_parts_results_and_files(
    run_id: str, mongo_url: str, rabbit_vhost: str
) -> None:
    """With `job_retention_s` set, a round deletes the jobs finished longer ago, whatever their outcome,
    with their results, the files they made and a composite job's parts; not a job finished recently, one
    still running, a part whose composite job is recent, one owing a webhook not sent yet (due, or being
    sent), nor an upload.
    At 0 nothing goes."""
    async with own_relay(run_id, mongo_url, rabbit_vhost, name="expire", job_retention_s=3600) as own:
        long_ago, now = datetime.now(UTC) - timedelta(hours=2), datetime.now(UTC)
        hook = "https://example.com/hook"

        def job(job_id: str, status: str, finished_at: datetime | None, **more: Any) -> dict[str, Any]:
            return {"id": job_id, "status": status, "finished_at": finished_at, "callback_url": None,
                    "parent_id": None, "type": "audio.probe"} | more  # fmt: skip

        await own.add_jobs(
            job("old-done", "succeeded", long_ago),
            job("old-failed", "failed", long_ago),
            job("recent", "succeeded", now),
            job("running", "running", None),
            job("composite", "succeeded", long_ago, type="media.analyze"),
            job("recent-composite", "succeeded", now, type="media.analyze"),
            job("owed", "succeeded", long_ago, callback_url=hook),
            job("sending", "succeeded", long_ago, callback_url=hook),
            job("delivered", "succeeded", long_ago, callback_url=hook),
        )
        await own.add_jobs(
            job("part-a", "succeeded", long_ago, parent_id="composite"),
            job("part-b", "cancelled", long_ago, parent_id="composite"),
            job("part-c", "succeeded", long_ago, parent_id="recent-composite"),
        )
        store = FileStore(own.db.gridfs, own.db.gridfs_chunks)
        results = own.db.collection("results")
        await results.insert_many([{"_id": job_id, "v": 1} for job_id in ("old-done", "part-a", "recent")])
        storage = {
            file_id: await own.add_file(file_id, b"\xff\xd8 jpeg", job_id=job_id)
            for file_id, job_id in (("thumb", "old-done"), ("part-thumb", "part-a"), ("kept", "recent"))
        }
        async with own.db.session() as session:
            await session.execute(
                insert(webhook_deliveries),
                [
                    {
                        "id": f"d-{job_id}",
                        "job_id": job_id,
                        "tenant_id": "t",
                        "url": hook,
                        "status": status,
                        "payload": {},
                    }
                    for job_id, status in (
                        ("owed", "pending"),
                        ("sending", "delivering"),
                        ("delivered", "succeeded"),
                    )
                ],
            )
            await session.commit()

        async def remaining() -> set[str]:
            async with own.db.session() as session:
                return set(await session.scalars(select(jobs.c.id)))

        everything = await remaining()
        assert await own.relay(job_retention_s=0).expire_jobs() == 0
        assert await remaining() == everything

        before = REGISTRY.get_sample_value("medialens_jobs_expired_total", {"type": "audio.probe"}) or 0.0
        assert await own.relay().expire_jobs() == 4  # old-done, old-failed, composite, delivered
        assert await remaining() == {"recent", "running", "recent-composite", "part-c", "owed", "sending"}
        after = REGISTRY.get_sample_value("medialens_jobs_expired_total", {"type": "audio.probe"})
        assert after == before + 3
        assert {doc["_id"] async for doc in results.find()} == {"recent"}
        async with own.db.session() as session:
            assert set(await session.scalars(select(files.c.id))) == {"kept"}
            assert set(await session.scalars(select(webhook_deliveries.c.id))) == {"d-owed", "d-sending"}
        for file_id, gone in (("thumb", True), ("part-thumb", True), ("kept", False)):
            if gone:
                with pytest.raises(NoFile):
                    await anext(store.read(storage[file_id]))
            else:
                assert [chunk async for chunk in store.read(storage[file_id])] == [b"\xff\xd8 jpeg"]
        assert await own.relay().expire_jobs() == 0

        # The look can read the partial index of finished jobs (its clauses imply the index's predicate).
        plan = await own.plan(finished_before(3600))
        assert "ix_jobs_finished" in plan, plan


def orphaned(job_id: str, *, attempts: int = 1, **columns: Any) -> dict[str, Any]:
    """The row of a job left running by a worker gone ("ghost") whose lease ran out a second ago."""
    expired = datetime.now(UTC) - timedelta(seconds=1)
    return {"id": job_id, "status": "running", "attempts": attempts, "worker": "ghost",
            "lease_expires_at": expired} | columns  # fmt: skip


async def test_a_job_the_relay_ends_owes_its_webhook_once(
    run_id: str, mongo_url: str, rabbit_vhost: str
) -> None:
    """A job with a callback_url ended by the relay rather than by a worker (given up on by the reaper,
    cancelled by it, failed by its dead letter) owes one webhook delivery of its final job object, as one a
    worker ends does; a job the reaper requeues owes none yet."""
    async with own_relay(run_id, mongo_url, rabbit_vhost, name="hooks") as own:
        max_attempts = own.settings.worker.max_attempts
        hook = "https://example.com/hook"
        await own.add_jobs(
            orphaned("given-up", attempts=max_attempts, callback_url=hook),
            orphaned("cancel-asked", callback_url=hook),
            orphaned("requeued", callback_url=hook),
            orphaned("dead-lettered", callback_url=hook, status="queued", worker=None, lease_expires_at=None),
        )
        relay = own.relay()
        await relay.signals.request_cancel("cancel-asked")
        assert await relay.reap() == 3
        await relay.on_dead_letter(
            {"job_id": "dead-lettered", "type": "audio.probe", "tenant_id": "t", "file_id": None}
        )
        async with own.db.session() as session:
            owed = (
                await session.execute(
                    select(webhook_deliveries.c.job_id, webhook_deliveries.c.payload["status"].astext)
                )
            ).all()
        assert sorted(owed) == [
            ("cancel-asked", "cancelled"),
            ("dead-lettered", "failed"),
            ("given-up", "failed"),
        ]


async def test_a_dead_letter_fails_only_a_queued_job_or_one_whose_lease_ran_out(
    run_id: str, mongo_url: str, rabbit_vhost: str
) -> None:
    """A dead letter fails its job from queued, or from running once its lease ran out (its worker gone);
    a job running under a valid lease is left be, with the files its attempt saved (its worker acked the
    job's own message at its claim: the letter is a duplicate's), as is a job that ended. Every running
    job was failed, a live worker's with it."""
    async with own_relay(run_id, mongo_url, rabbit_vhost, name="deadrun") as own:
        valid = datetime.now(UTC) + timedelta(seconds=60)
        await own.add_jobs(  # each row with the same columns (one INSERT)
            orphaned("lease-ran-out"),
            orphaned("live", worker="live-worker", lease_expires_at=valid),
            orphaned("queued", status="queued", attempts=0, worker=None, lease_expires_at=None),
            orphaned("ended", status="succeeded", worker=None, lease_expires_at=None),
        )
        storage = await own.add_file("live-thumb", b"\xff\xd8 jpeg", job_id="live")
        relay = own.relay()
        for job_id in ("queued", "lease-ran-out", "live", "ended"):
            await relay.on_dead_letter(
                {"job_id": job_id, "type": "audio.probe", "tenant_id": "t", "file_id": None}
            )
        async with own.db.session() as session:
            rows = (await session.execute(select(jobs.c.id, jobs.c.status, jobs.c.worker))).all()
            marked = await session.scalar(select(files.c.deleted_at).where(files.c.id == "live-thumb"))
        assert {row.id: (row.status, row.worker) for row in rows} == {
            "queued": ("failed", None),
            "lease-ran-out": ("failed", None),
            "live": ("running", "live-worker"),
            "ended": ("succeeded", None),
        }
        assert marked is None
        store = FileStore(own.db.gridfs, own.db.gridfs_chunks)
        assert [chunk async for chunk in store.read(storage)] == [b"\xff\xd8 jpeg"]


async def test_a_duplicates_dead_letter_asks_neither_redis_nor_mongodb(
    run_id: str, mongo_url: str, rabbit_vhost: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A letter of a job running under a valid lease or ended (a duplicate's, the usual case) is told so
    by PostgreSQL alone: no look for a cancel flag in Redis nor for a result in MongoDB, which only a job
    the letter ends needs (they were asked for every letter, each bounded at seconds when slow)."""
    async with own_relay(run_id, mongo_url, rabbit_vhost, name="deadlook") as own:
        valid = datetime.now(UTC) + timedelta(seconds=60)
        await own.add_jobs(
            orphaned("live", worker="live-worker", lease_expires_at=valid),
            orphaned("ended", status="succeeded", worker=None, lease_expires_at=None),
            orphaned("queued", status="queued", attempts=0, worker=None, lease_expires_at=None),
        )
        relay = own.relay()
        looked: list[tuple[str, list[str]]] = []
        flags, results = relay.signals.cancels_asked, relay_module.stored_results
        ours = {"live", "ended", "queued"}  # a relay of another test in this process looks for its own

        async def cancels_asked(job_ids: list[str]) -> set[str]:
            if ours & set(job_ids):
                looked.append(("redis", list(job_ids)))
            return await flags(job_ids)

        async def stored_results(db: DatabaseManager, job_ids: list[str]) -> set[str]:
            if ours & set(job_ids):
                looked.append(("mongodb", list(job_ids)))
            return await results(db, job_ids)

        monkeypatch.setattr(relay.signals, "cancels_asked", cancels_asked)
        monkeypatch.setattr(relay_module, "stored_results", stored_results)
        for job_id in ("live", "ended", "queued"):
            await relay.on_dead_letter(
                {"job_id": job_id, "type": "audio.probe", "tenant_id": "t", "file_id": None}
            )
        assert looked == [("redis", ["queued"]), ("mongodb", ["queued"])]
        async with own.db.session() as session:
            rows = dict((await session.execute(select(jobs.c.id, jobs.c.status))).all())
        assert rows == {"live": "running", "ended": "succeeded", "queued": "failed"}


async def test_a_dead_letter_reads_a_lease_a_heartbeat_extends_meanwhile(
    run_id: str, mongo_url: str, rabbit_vhost: str
) -> None:
    """A dead letter handled while the job's worker extends its lease (its heartbeat's transaction holding
    the row, the lease read before it as run out) waits for that heartbeat and reads the lease it wrote:
    the job, live again, is left be (a look at the lease apart from the failure's lock read it run out)."""
    async with own_relay(run_id, mongo_url, rabbit_vhost, name="deadbeat") as own:
        await own.add_jobs(orphaned("beating", worker="live-worker"))
        relay = own.relay()
        async with own.db.session() as heartbeat:
            await heartbeat.execute(
                update(jobs)
                .where(jobs.c.id == "beating")
                .values(lease_expires_at=datetime.now(UTC) + timedelta(seconds=60))
            )
            letter = asyncio.create_task(
                relay.on_dead_letter(
                    {"job_id": "beating", "type": "audio.probe", "tenant_id": "t", "file_id": None}
                )
            )
            await asyncio.sleep(0.5)
            assert not letter.done()  # waiting for the heartbeat's row
            await heartbeat.commit()
        await asyncio.wait_for(letter, 10)
        async with own.db.session() as session:
            status = await session.scalar(select(jobs.c.status).where(jobs.c.id == "beating"))
        assert status == "running"


async def test_a_job_that_ends_without_its_dead_workers_rerun_leaves_no_files(
    run_id: str, mongo_url: str, rabbit_vhost: str
) -> None:
    """The files saved by an attempt whose worker died are deleted (the row marked, the bytes dropped) when
    the job ends with no rerun to delete them: given up on by the reaper, cancelled by it, or failed by its
    dead letter. They stayed until the job's retention, for ever without one. A job the reaper requeues
    keeps them for its rerun to delete (it may find that attempt's stored result, which names them)."""
    async with own_relay(run_id, mongo_url, rabbit_vhost, name="abandon") as own:
        max_attempts = own.settings.worker.max_attempts
        await own.add_jobs(
            orphaned("given-up", attempts=max_attempts, type="video.thumbnails"),
            orphaned("cancel-asked", type="video.thumbnails"),
            orphaned("requeued", type="video.thumbnails"),
            {
                "id": "dead-lettered",
                "status": "queued",
                "attempts": 1,
                "worker": None,
                "lease_expires_at": None,
                "type": "video.thumbnails",
            },
        )
        storage = {job_id: await own.add_file(f"{job_id}-thumb", b"\xff\xd8 jpeg", job_id=job_id)
                   for job_id in ("given-up", "cancel-asked", "requeued", "dead-lettered")}  # fmt: skip
        relay = own.relay()
        await relay.signals.request_cancel("cancel-asked")
        assert await relay.reap() == 3
        message = {"job_id": "dead-lettered", "type": "video.thumbnails", "tenant_id": "t", "file_id": None}
        await relay.on_dead_letter(message)
        async with own.db.session() as session:
            rows = (await session.execute(select(jobs.c.id, jobs.c.status))).all()
            marked = dict((await session.execute(select(files.c.job_id, files.c.deleted_at))).all())
        assert dict(rows) == {
            "given-up": "failed",
            "cancel-asked": "cancelled",
            "requeued": "queued",
            "dead-lettered": "failed",
        }
        store = FileStore(own.db.gridfs, own.db.gridfs_chunks)
        for job_id, storage_id in storage.items():
            kept = job_id == "requeued"
            assert (marked[job_id] is None) is kept, (job_id, marked)
            if kept:
                assert [chunk async for chunk in store.read(storage_id)] == [b"\xff\xd8 jpeg"]
            else:
                with pytest.raises(NoFile):
                    await anext(store.read(storage_id))


async def test_the_reaper_ends_a_job_whose_result_is_stored_succeeded_at_its_last_attempt(
    run_id: str, mongo_url: str, rabbit_vhost: str
) -> None:
    """At its last attempt a job whose dead worker had stored its result ends succeeded, as its rerun would
    have ended it: its webhook owed with that status, no dead letter, and the files its result names kept
    (they were deleted, the job failed RETRIES_EXHAUSTED with its result stored). One with no result stored
    still fails, its files deleted; with MongoDB away (cannot tell) it fails too, as before."""
    async with own_relay(run_id, mongo_url, rabbit_vhost, name="stored") as own:
        max_attempts = own.settings.worker.max_attempts
        hook = "https://example.com/hook"
        await own.add_jobs(
            *(orphaned(job_id, attempts=max_attempts, type="video.thumbnails", callback_url=hook)
              for job_id in ("stored", "given-up"))
        )  # fmt: skip
        storage = {job_id: await own.add_file(f"{job_id}-thumb", b"\xff\xd8 jpeg", job_id=job_id)
                   for job_id in ("stored", "given-up")}  # fmt: skip
        result = {"_id": "stored", "tenant_id": "t", "type": "video.thumbnails", RESULT_WRITES: 1}
        await own.db.collection("results").insert_one(result)
        assert await own.relay().reap() == 2
        async with own.db.session() as session:
            rows = (await session.execute(select(jobs).where(jobs.c.id.in_(storage)))).mappings().all()
            marked = dict((await session.execute(select(files.c.job_id, files.c.deleted_at))).all())
            owed = (
                await session.execute(
                    select(webhook_deliveries.c.job_id, webhook_deliveries.c.payload["status"].astext)
                )
            ).all()
            dead = (await session.scalars(select(outbox.c.job_id).where(outbox.c.dead))).all()
        ended = {row["id"]: (row["status"], row["error_code"], row["message"], row["worker"]) for row in rows}
        assert ended == {
            "stored": ("succeeded", None, "done", None),
            "given-up": ("failed", "RETRIES_EXHAUSTED", "failed", None),
        }
        assert sorted(owed) == [("given-up", "failed"), ("stored", "succeeded")]
        assert dead == ["given-up"]
        assert (marked["stored"], marked["given-up"] is not None) == (None, True)
        store = FileStore(own.db.gridfs, own.db.gridfs_chunks)
        assert [chunk async for chunk in store.read(storage["stored"])] == [b"\xff\xd8 jpeg"]

        # MongoDB away: the look cannot tell, and the job fails as before.
        await own.add_jobs(orphaned("unknown", attempts=max_attempts))
        await own.db.collection("results").insert_one({"_id": "unknown", "tenant_id": "t", RESULT_WRITES: 1})
        away = own.settings.mongodb.model_copy(
            update={"url": SecretStr("mongodb://127.0.0.1:9"), "timeout_ms": 200}
        )
        settings = own.settings.model_copy(update={"mongodb": away})
        db = DatabaseManager(settings, name="relay")
        try:
            assert await Relay(settings=settings, db=db, broker=own.broker).reap() == 1
        finally:
            await db.close_all()
        async with own.db.session() as session:
            status = await session.scalar(select(jobs.c.status).where(jobs.c.id == "unknown"))
        assert status == "failed"


async def test_a_dead_letter_of_a_job_whose_result_is_stored_ends_it_succeeded(
    run_id: str, mongo_url: str, rabbit_vhost: str
) -> None:
    """A dead letter of a job whose result is stored (its worker died between the result's write and its
    success's commit; the rerun's message is the one given up on) ends it succeeded, as the rerun would
    have, the files its result names kept: it failed RETRIES_EXHAUSTED and they were deleted. A job with no
    result stored still fails; one whose lease ran out and of which a cancel was asked ends cancelled, as
    the reaper ends it, result or not, its files deleted."""
    async with own_relay(run_id, mongo_url, rabbit_vhost, name="deadstored") as own:
        queued = {"status": "queued", "worker": None, "lease_expires_at": None}
        await own.add_jobs(*(orphaned(job_id, **queued) for job_id in ("stored", "nothing")))
        await own.add_jobs(orphaned("cancel-asked"))
        storage = {job_id: await own.add_file(f"{job_id}-thumb", b"\xff\xd8 jpeg", job_id=job_id)
                   for job_id in ("stored", "nothing", "cancel-asked")}  # fmt: skip
        for job_id in ("stored", "cancel-asked"):
            result = {"_id": job_id, "tenant_id": "t", "type": "video.thumbnails", RESULT_WRITES: 1}
            await own.db.collection("results").insert_one(result)
        relay = own.relay()
        await relay.signals.request_cancel("cancel-asked")
        for job_id in storage:
            letter = {"job_id": job_id, "type": "video.thumbnails", "tenant_id": "t", "file_id": None}
            await relay.on_dead_letter(letter)
        async with own.db.session() as session:
            rows = (await session.execute(select(jobs).where(jobs.c.id.in_(storage)))).mappings().all()
            marked = dict((await session.execute(select(files.c.job_id, files.c.deleted_at))).all())
        ended = {row["id"]: (row["status"], row["error_code"], row["progress"]) for row in rows}
        assert ended == {
            "stored": ("succeeded", None, 1.0),
            "nothing": ("failed", "RETRIES_EXHAUSTED", 0.0),
            "cancel-asked": ("cancelled", None, 0.0),
        }
        assert {job_id: at is not None for job_id, at in marked.items() if job_id in storage} == {
            "stored": False,
            "nothing": True,
            "cancel-asked": True,
        }


async def test_a_reap_with_redis_silent_requeues_within_the_cancel_flags_bound(
    run_id: str, mongo_url: str, rabbit_vhost: str
) -> None:
    """The reaper reads the cancel flags of the jobs it reaps while it holds their rows; with Redis silent
    (connections open, no byte through) it waits `CANCEL_FLAGS_TIMEOUT_S` for them, not the client's socket
    timeout (5 s, every reaped row locked meanwhile), then requeues the jobs as before, and gives up their
    announcements within `ANNOUNCE_TIMEOUT_S`."""
    async with own_relay(run_id, mongo_url, rabbit_vhost, name="reap_redis") as own:
        target = urlsplit(own.settings.redis.url.get_secret_value())
        proxy = TcpProxy(target.hostname or "127.0.0.1", target.port or 6379)
        await proxy.start()
        proxied = SecretStr(target._replace(netloc=f"127.0.0.1:{proxy.port}").geturl())
        settings = own.settings.model_copy(
            update={"redis": own.settings.redis.model_copy(update={"url": proxied})}
        )
        db = DatabaseManager(settings, name="relay")
        relay = Relay(settings=settings, db=db, broker=own.broker)
        reaping: asyncio.Task[int] | None = None
        try:
            expired = datetime.now(UTC) - timedelta(seconds=1)
            await own.add_jobs({"id": "lost", "status": "running", "attempts": 1, "worker": "ghost",
                                "lease_expires_at": expired})  # fmt: skip
            assert await relay.signals.cancels_requested(["lost"]) == set()  # connected while Redis answers
            proxy.blackhole()
            started = time.monotonic()
            reaping = asyncio.create_task(relay.reap())
            while True:
                async with own.db.session() as session:
                    status = await session.scalar(select(jobs.c.status).where(jobs.c.id == "lost"))
                if status == "queued":
                    break
                assert time.monotonic() - started < CANCEL_FLAGS_TIMEOUT_S + 1.5, "the reap waited on Redis"
                await asyncio.sleep(0.05)
            # Its announcement, to a Redis still silent, is given up within its own bound (it waited on the
            # client's timeouts, some 20 s a job, while the outbox waited for the round).
            assert await asyncio.wait_for(reaping, ANNOUNCE_TIMEOUT_S + 1.0) == 1
        finally:
            await proxy.restore()
            if reaping is not None:
                await asyncio.gather(reaping, return_exceptions=True)  # its announcement may fail
            await db.close_all()
            await proxy.cut()


async def test_a_reap_with_redis_away_ends_every_job_and_counts_it(
    run_id: str, mongo_url: str, rabbit_vhost: str
) -> None:
    """Reaping needs only PostgreSQL: with Redis refusing connections, every expired job is requeued and
    counted, its announcement missed; the first failed announcement ended the reap (and the round's
    pruning and republishing), the other jobs' counts lost."""
    async with own_relay(run_id, mongo_url, rabbit_vhost, name="reap_no_redis") as own:
        away = SecretStr("redis://127.0.0.1:1/0")  # nothing listens: refused at once
        settings = own.settings.model_copy(
            update={"redis": own.settings.redis.model_copy(update={"url": away})}
        )
        db = DatabaseManager(settings, name="relay")
        relay = Relay(settings=settings, db=db, broker=own.broker)
        try:
            await own.add_jobs(orphaned("gone-1"), orphaned("gone-2"))
            before = (
                REGISTRY.get_sample_value(
                    "medialens_jobs_reaped_total", {"type": "audio.probe", "outcome": "queued"}
                )
                or 0.0
            )
            assert await relay.reap() == 2
            async with own.db.session() as session:
                statuses = (
                    await session.scalars(select(jobs.c.status).where(jobs.c.id.in_(["gone-1", "gone-2"])))
                ).all()
            assert statuses == ["queued", "queued"]
            after = REGISTRY.get_sample_value(
                "medialens_jobs_reaped_total", {"type": "audio.probe", "outcome": "queued"}
            )
            assert after == before + 2
        finally:
            await db.close_all()


async def test_deleted_files_leave_their_rows_once_past_the_retention(
    run_id: str, mongo_url: str, rabbit_vhost: str
) -> None:
    """A file deleted through the API keeps its row (jobs still name it); with `job_retention_s` set, a
    round removes the rows deleted longer ago, and their bytes if a stopped gateway left them; not a file
    deleted recently, nor a live one. At 0 nothing goes."""
    async with own_relay(run_id, mongo_url, rabbit_vhost, name="purge", job_retention_s=3600) as own:
        store = FileStore(own.db.gridfs, own.db.gridfs_chunks)
        long_ago, now = datetime.now(UTC) - timedelta(hours=2), datetime.now(UTC)
        storage = {
            file_id: await own.add_file(file_id, b"bytes", deleted_at=deleted_at)
            for file_id, deleted_at in (("old", long_ago), ("recent", now), ("live", None))
        }

        async def rows() -> set[str]:
            async with own.db.session() as session:
                return set(await session.scalars(select(files.c.id)))

        assert await own.relay(job_retention_s=0).purge_deleted_files() == 0
        assert await rows() == {"old", "recent", "live"}
        assert await own.relay().purge_deleted_files() == 1
        assert await rows() == {"recent", "live"}
        with pytest.raises(NoFile):
            await anext(store.read(storage["old"]))
        assert [chunk async for chunk in store.read(storage["recent"])] == [b"bytes"]
        plan = await own.plan(
            select(files.c.id).where(files.c.deleted_at < datetime.now(UTC)).order_by(files.c.deleted_at)
        )
        assert "ix_files_deleted" in plan, plan


async def test_a_silent_mongodb_holds_up_no_publishing_while_jobs_expire(
    run_id: str, mongo_url: str, rabbit_vhost: str
) -> None:
    """Deleting jobs past their retention waits on MongoDB (results, files); the outbox does not need it.
    With MongoDB silent (connections open, no byte through) and an expired job to delete, the running
    relay still publishes a new entry within a poll or two, and the job waits for MongoDB."""
    target = urlsplit(mongo_url)
    proxy = TcpProxy(target.hostname or "127.0.0.1", target.port or 27017)
    await proxy.start()
    proxied = target._replace(netloc=f"127.0.0.1:{proxy.port}").geturl()
    async with own_relay(
        run_id, proxied, rabbit_vhost, name="expire_mongo", job_retention_s=3600, reap_interval_s=0.2
    ) as own:
        long_ago = datetime.now(UTC) - timedelta(hours=2)
        await own.add_jobs({"id": "old", "status": "succeeded", "finished_at": long_ago})
        proxy.blackhole()
        stop = asyncio.Event()
        running = asyncio.create_task(own.relay().run(stop))
        try:
            await asyncio.sleep(1.0)  # the retention's look has found the job and waits on MongoDB
            (entry,) = await own.write("video.probe")
            started = time.monotonic()
            while (await own.entry(entry))["sent_at"] is None:
                assert time.monotonic() - started < 2.0, "publishing waited for MongoDB"
                await asyncio.sleep(0.05)
            async with own.db.session() as session:
                assert await session.scalar(select(jobs.c.id).where(jobs.c.id == "old")) == "old"
        finally:
            stop.set()
            await proxy.restore()
            await asyncio.wait_for(running, 30)
            await proxy.cut()


async def test_an_expired_job_is_gone_from_the_api_with_its_thumbnails_and_its_upload_stays(
    stack: Stack, api: httpx.AsyncClient, db: DatabaseManager, tmp_path: Path
) -> None:
    """A `video.scenes` job run through the stack, finished (as if) ten years ago: a relay with a retention
    of five years deletes it, and the API then answers 404 for the job, its result and each scene's
    thumbnail, while the uploaded video stays. (The long span leaves the other tests' jobs alone.)"""
    path = tmp_path / "cuts.mp4"
    make_video(path, duration_s=2.0, fps=10, width=160, height=120, segments=2)
    upload_id = await upload(api, path)
    job = await submit(api, "video.scenes", upload_id)
    done = await wait_for(api, job["id"])
    assert done["status"] == "succeeded", done
    thumbnails = [scene["thumbnail_file_id"] for scene in (await result_of(api, job["id"]))["scenes"]]
    assert thumbnails
    assert all(thumbnails)
    for file_id in thumbnails:
        assert (await api.get(f"/v1/files/{file_id}")).status_code == 200
    async with db.session() as session:
        await session.execute(
            update(jobs)
            .where(jobs.c.id == job["id"])
            .values(finished_at=datetime.now(UTC) - timedelta(days=3650))
        )
        await session.commit()
    years = stack.settings.relay.model_copy(update={"job_retention_s": 5 * 365 * 86400.0})
    relay = Relay(
        settings=stack.settings.model_copy(update={"relay": years}),
        db=db,
        broker=make_broker(stack.settings, name="expire-test"),
    )
    assert await relay.expire_jobs() == 1
    for path_of_gone in (f"/v1/jobs/{job['id']}", f"/v1/jobs/{job['id']}/result"):
        response = await api.get(path_of_gone)
        assert response.status_code == 404, response.text
    for file_id in thumbnails:
        assert (await api.get(f"/v1/files/{file_id}")).status_code == 404
    assert (await api.get(f"/v1/files/{upload_id}")).status_code == 200


def test_republish_after_must_outlast_the_longest_retry_delay() -> None:
    """A job waiting out its retry's backoff is queued too: a shorter threshold would publish it twice."""
    with pytest.raises(ValidationError, match="longest retry delay"):
        RelaySettings(republish_after_s=DELAY_TIERS_S[-1])
    assert RelaySettings(republish_after_s=0).republish_after_s == 0


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


@dataclass
class OwnRelay:
    """A relay's settings, pools and broker on a database of their own, which the stack's relay does not see
    (the vhost is the stack's: a message for a job no service knows is skipped by its consumer)."""

    settings: Settings
    db: DatabaseManager
    broker: RabbitBroker

    def relay(self, **relay: Any) -> Relay:
        """A relay on these pools, its relay settings these with the `relay` values."""
        settings = self.settings.model_copy(update={"relay": self.settings.relay.model_copy(update=relay)})
        return Relay(settings=settings, db=self.db, broker=self.broker)

    async def write(self, routing_key: str = "video.probe", *, count: int = 1) -> list[int]:
        """`count` outbox entries for a job that does not exist; their ids."""
        missing = secrets.token_hex(8)
        message = {"job_id": missing, "type": routing_key, "tenant_id": "t", "params": {}}
        async with self.db.session() as session:
            ids = await session.scalars(
                outbox.insert().returning(outbox.c.id),
                [{"job_id": missing, "routing_key": routing_key, "payload": message}] * count,
            )
            await session.commit()
        return list(ids)

    async def add_jobs(self, *rows: dict[str, Any]) -> None:
        """Job rows with the given columns, of a tenant "t" (made if new), `audio.probe` unless told."""
        async with self.db.session() as session:
            await ensure_tenant(session, "t")
            await session.execute(
                insert(jobs), [{"tenant_id": "t", "type": "audio.probe"} | row for row in rows]
            )
            await session.commit()

    async def add_file(self, file_id: str, content: bytes, **columns: Any) -> str:
        """`content` stored in GridFS with a file row of tenant "t" (made if new) and the given further
        `columns` (`job_id`, `deleted_at`...); its storage id."""
        stored = await FileStore(self.db.gridfs, self.db.gridfs_chunks).save_bytes(
            content, filename=f"{file_id}.bin"
        )
        async with self.db.session() as session:
            await ensure_tenant(session, "t")
            await session.execute(
                insert(files).values(
                    id=file_id,
                    tenant_id="t",
                    filename=f"{file_id}.bin",
                    content_type="application/octet-stream",
                    size_bytes=stored.size_bytes,
                    sha256=stored.sha256,
                    kind="other",
                    storage_id=stored.storage_id,
                    **columns,
                )
            )
            await session.commit()
        return stored.storage_id

    async def plan(self, query: Select[Any]) -> str:
        """PostgreSQL's plan of `query` with sequential scans discouraged: whether an index can serve it."""
        look = query.compile(dialect=postgresql.dialect(), compile_kwargs={"literal_binds": True})
        async with self.db.session() as session:
            await session.execute(text("SET LOCAL enable_seqscan = off"))
            return "\n".join((await session.scalars(text(f"EXPLAIN {look}"))).all())

    async def entry(self, entry_id: int) -> RowMapping:
        async with self.db.session() as session:
            return (await session.execute(select(outbox).where(outbox.c.id == entry_id))).mappings().one()


@contextlib.asynccontextmanager
async def own_relay(
    run_id: str, mongo_url: str, vhost: str, *, name: str, **relay: Any
) -> AsyncIterator[OwnRelay]:
    """An `OwnRelay` whose relay settings have the `relay` values; its database dropped afterwards."""
    database_run = f"{run_id}_{name}"
    base = make_settings(run_id=database_run, mongo_url=mongo_url, vhost=vhost)
    settings = base.model_copy(update={"relay": base.relay.model_copy(update=relay)})
    await asyncio.to_thread(migrate.upgrade, settings.postgres.url.get_secret_value())
    db = DatabaseManager(settings, name="relay")
    broker = make_broker(settings, name=f"{name}-test")
    try:
        await broker.start()
        yield OwnRelay(settings, db, broker)
    finally:
        await broker.stop()
        await db.close_all()
        await drop_database(f"medialens_test_{database_run}")


async def test_an_entry_the_broker_does_not_take_waits_with_why_and_the_others_go(
    run_id: str, mongo_url: str, rabbit_vhost: str
) -> None:
    """A round publishes what it can: an entry that cannot be published (here a routing key of no job
    type) stays unsent, its attempts counted and its last error kept round after round, while the entry
    beside it is sent and marked."""
    async with own_relay(run_id, mongo_url, rabbit_vhost, name="outbox") as own:
        (refused,) = await own.write("no.such-type")
        (taken,) = await own.write("video.probe")
        relay = own.relay()
        assert await relay.publish_batch() == Published(sent=1, refused=1)
        assert await relay.publish_batch() == Published(sent=0, refused=1)
        sent = await own.entry(taken)
        assert sent["sent_at"] is not None
        assert (sent["attempts"], sent["last_error"]) == (0, None)
        unsent = await own.entry(refused)
        assert (unsent["sent_at"], unsent["attempts"]) == (None, 2)
        assert "no.such-type" in unsent["last_error"]


async def test_busy_rounds_look_for_due_webhooks_once_a_poll_interval(
    run_id: str, mongo_url: str, rabbit_vhost: str
) -> None:
    """While the outbox keeps every round full (no pause between rounds), the relay looks for due webhook
    deliveries at most once a poll interval, not once a round: each look is a transaction of its own, which
    a burst of submissions would otherwise pay for on every batch."""
    batch, entries, poll_s = 5, 200, 1.0
    async with own_relay(
        run_id, mongo_url, rabbit_vhost, name="webhook_pace", batch_size=batch, poll_interval_s=poll_s
    ) as own:
        await own.write(count=entries)
        relay = own.relay()
        rounds, looks = 0, 0
        publish_batch, dispatch_once = relay.publish_batch, relay.webhooks.dispatch_once
        stop = asyncio.Event()

        async def counted_round() -> Published:
            nonlocal rounds
            rounds += 1
            published = await publish_batch()
            if published.sent < batch:
                stop.set()  # the outbox is empty: the busy stretch is over
            return published

        async def counted_look() -> int:
            nonlocal looks
            looks += 1
            return await dispatch_once()

        relay.publish_batch = counted_round  # type: ignore[method-assign]
        relay.webhooks.dispatch_once = counted_look  # type: ignore[method-assign]
        started = time.monotonic()
        await asyncio.wait_for(relay.run(stop), timeout=60)
        elapsed = time.monotonic() - started
        assert rounds >= entries // batch
        assert 1 <= looks <= 1 + elapsed / poll_s
        assert looks < rounds / 4


@dataclass
class Rounds:
    """A relay's rounds, counted: when each started and what it sent."""

    started: list[float] = field(default_factory=list)
    sent: list[int] = field(default_factory=list)
    first: asyncio.Event = field(default_factory=asyncio.Event)


@contextlib.asynccontextmanager
async def running(relay: Relay) -> AsyncIterator[Rounds]:
    """`relay` running, its rounds counted; entered once its nudge subscription is made and its first round
    (the queues' declaration) is over; stopped on leaving, which must end its pause at once."""
    rounds = Rounds()
    publish_batch = relay.publish_batch

    async def counted() -> Published:
        rounds.started.append(time.monotonic())
        try:
            published = await publish_batch()
        finally:
            rounds.first.set()
        rounds.sent.append(published.sent)
        return published

    relay.publish_batch = counted  # type: ignore[method-assign]
    stop = asyncio.Event()
    task = asyncio.create_task(relay.run(stop))
    try:
        channel = relay.signals.outbox_channel
        for _ in range(500):
            if dict(await relay.db.redis.pubsub_numsub(channel)).get(channel.encode()):
                break
            await asyncio.sleep(0.02)
        else:
            raise AssertionError("the relay did not subscribe to nudges within 10 s")
        await asyncio.wait_for(rounds.first.wait(), timeout=10)
        yield rounds
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=5)


async def _sent(own: OwnRelay, entry_id: int) -> bool:
    return (await own.entry(entry_id))["sent_at"] is not None


async def test_a_nudge_ends_the_relays_pause(run_id: str, mongo_url: str, rabbit_vhost: str) -> None:
    """With a poll interval far longer than the test, an entry written without a nudge waits for the next
    poll, while one written with a nudge (as a gateway's submission makes) is published within a second."""
    async with (
        own_relay(
            run_id, mongo_url, rabbit_vhost, name="nudge", poll_interval_s=60.0, busy_poll_interval_s=60.0
        ) as own,
        running(relay := own.relay()),
    ):
        (quiet,) = await own.write()
        await asyncio.sleep(1.0)
        assert not await _sent(own, quiet)  # no nudge: it waits for the next poll, a minute away
        (nudged,) = await own.write()
        started = time.monotonic()
        relay.signals.outbox_written()
        while not await _sent(own, nudged):
            assert time.monotonic() - started < 1.0, "a nudged entry was not published within a second"
            await asyncio.sleep(0.01)
        assert await _sent(own, quiet)  # the woken round took the older entry too


async def test_nudges_do_not_hurry_a_failing_relay(run_id: str, mongo_url: str, rabbit_vhost: str) -> None:
    """A round whose entries the broker all refuses (as while RabbitMQ or PostgreSQL is away) is followed by
    the whole poll interval, nudges or not: submissions go on meanwhile, and each would start another
    failing round."""
    async with own_relay(run_id, mongo_url, rabbit_vhost, name="failing", poll_interval_s=60.0) as own:
        await own.write("no.such-type")
        async with running(relay := own.relay()) as rounds:
            for _ in range(20):
                relay.signals.outbox_written()
                await asyncio.sleep(0.05)
            assert len(rounds.started) == 1


async def test_a_relay_whose_broker_is_away_still_reaps_and_tells_the_outbox_lag(
    run_id: str, mongo_url: str, rabbit_vhost: str
) -> None:
    """While RabbitMQ does not answer, the relay's rounds fail, but its upkeep goes on: it reaps (that needs
    only the database) and samples the unsent entries and their age, which is what the outbox-lag alert
    reads; before, a failed round skipped both, so the alert could not fire in the outage it is for."""
    async with own_relay(run_id, mongo_url, rabbit_vhost, name="away", reap_interval_s=0.05) as own:
        written = await own.write(count=3)
        away = unreachable(own.settings, "rabbitmq")
        relay = Relay(settings=away, db=own.db, broker=make_broker(away, name="away-test"))
        reaps = 0
        reap = relay.reap

        async def counted_reap() -> int:
            nonlocal reaps
            reaps += 1
            return await reap()

        relay.reap = counted_reap  # type: ignore[method-assign]
        # A depth told before the broker went away, of a queue of its own: the relays of stacks other tests
        # left running in this process tell theirs, in the same gauges, so only this one says what this
        # relay did to them.
        told_before = "medialens.jobs.told-before-the-outage"
        metrics.QUEUE_MESSAGES.labels(told_before).set(7)
        metrics.QUEUE_CONSUMERS.labels(told_before).set(1)
        stop = asyncio.Event()
        task = asyncio.create_task(relay.run(stop))
        try:
            deadline = time.monotonic() + 10
            while not (reaps >= 2 and metrics.OUTBOX_PENDING._value.get() == len(written)):
                assert time.monotonic() < deadline, (reaps, metrics.OUTBOX_PENDING._value.get())
                await asyncio.sleep(0.05)
            assert metrics.OUTBOX_LAG._value.get() > 0
            # The queues' depths are not told while the broker does not answer: no last depths left standing.
            for gauge in ("medialens_queue_messages", "medialens_queue_consumers"):
                assert REGISTRY.get_sample_value(gauge, {"queue": told_before}) is None, gauge
        finally:
            stop.set()
            await asyncio.wait_for(task, 10)
        assert not any([await _sent(own, entry) for entry in written])


async def test_rounds_that_publish_start_at_most_once_a_nudge_interval(
    run_id: str, mongo_url: str, rabbit_vhost: str
) -> None:
    """However many nudges come (several gateway processes nudge independently), rounds that publish start
    at most once a nudge interval; the entries still all go."""
    interval = 0.25
    async with own_relay(
        run_id, mongo_url, rabbit_vhost, name="pace", nudge_interval_s=interval, busy_poll_interval_s=0.01
    ) as own:
        async with running(relay := own.relay()) as rounds:
            written: list[int] = []
            for _ in range(40):
                written += await own.write()
                relay.signals.outbox_written()
                relay.signals._nudging = None  # as if each nudge came from another gateway process
                await asyncio.sleep(0.025)
            deadline = time.monotonic() + 5
            while not all([await _sent(own, entry) for entry in written]):
                assert time.monotonic() < deadline, "entries left unsent"
                await asyncio.sleep(0.05)
        busy = [at for at, sent in zip(rounds.started, rounds.sent, strict=False) if sent]
        gaps = [later - earlier for earlier, later in itertools.pairwise(busy)]
        assert len(busy) >= 3
        assert min(gaps) >= interval * 0.95


async def test_the_backlog_gauges_tell_what_waits_in_the_queues_the_outbox_and_the_leases(
    run_id: str, mongo_url: str, rabbit_vhost: str
) -> None:
    """`sample_backlog` (every reap round) sets each gauge to what is really there: messages waiting in each
    work queue and its consumers, the unsent entries and the age of the oldest, the running jobs whose lease
    ran out (and not those whose lease still holds)."""
    async with own_relay(run_id, mongo_url, rabbit_vhost, name="gauges") as own:
        # Exchanges and queues of their own: no service consumes them, so their depths hold still.
        prefix = f"gauges-{secrets.token_hex(4)}"
        mine = own.settings.model_copy(
            update={"rabbitmq": own.settings.rabbitmq.model_copy(update={"exchange": prefix})}
        )
        topology = Topology(mine)
        await declare(own.broker, topology, services=SERVICES)
        for index in range(3):
            await publish_job(
                own.broker,
                topology,
                job_type="audio.probe",
                payload={"job_id": f"waiting-{index}", "type": "audio.probe", "tenant_id": "t"},
                message_id=f"waiting-{index}",
                timeout=5,
            )
        entries = await own.write(count=2)
        async with own.db.session() as session:
            await session.execute(
                update(outbox)
                .where(outbox.c.id == entries[0])
                .values(created_at=datetime.now(UTC) - timedelta(seconds=40))
            )
            await session.commit()
        now = datetime.now(UTC)
        await own.add_jobs(
            *(
                {"id": job_id, "status": "running", "worker": "w", "lease_expires_at": lease}
                for job_id, lease in (
                    ("lost", now - timedelta(seconds=5)),
                    ("lost-long-ago", now - timedelta(hours=1)),
                    ("alive", now + timedelta(seconds=60)),
                )
            )
        )

        await metrics.sample_backlog(broker=own.broker, topology=topology, db=own.db, services=SERVICES)

        def gauge(name: str, **labels: str) -> float:
            value = REGISTRY.get_sample_value(name, labels)
            assert value is not None, (name, labels)
            return value

        for service, waiting in {"audio": 3, "video": 0, "data": 0}.items():
            assert gauge("medialens_queue_messages", queue=f"{prefix}.{service}") == waiting
            assert gauge("medialens_queue_consumers", queue=f"{prefix}.{service}") == 0
        assert gauge("medialens_queue_messages", queue=f"{prefix}.dead") == 0
        assert gauge("medialens_outbox_pending") == 2
        assert 40 <= gauge("medialens_outbox_lag_seconds") < 60
        assert gauge("medialens_jobs_lease_expired") == 2


async def test_a_sample_the_database_does_not_answer_drops_the_outbox_figures(
    run_id: str, mongo_url: str, rabbit_vhost: str
) -> None:
    """With PostgreSQL away the outbox and lease gauges are dropped, not left at their last values (a
    dashboard showed the outbox still empty while nothing could be read), and come back with it."""
    async with own_relay(run_id, mongo_url, rabbit_vhost, name="gauges-down") as own:
        topology = Topology(own.settings)
        await metrics.sample_backlog(broker=own.broker, topology=topology, db=own.db, services=SERVICES)
        assert REGISTRY.get_sample_value("medialens_outbox_pending") is not None
        away = DatabaseManager(unreachable(own.settings, "postgres"), name="gauges-down")
        names = ("medialens_outbox_pending", "medialens_outbox_lag_seconds", "medialens_jobs_lease_expired")
        try:
            await metrics.sample_backlog(broker=own.broker, topology=topology, db=away, services=SERVICES)
            # Read before anything else runs: the relay of a stack another test left running in this
            # process samples into the same gauges.
            left = {name: REGISTRY.get_sample_value(name) for name in names}
        finally:
            await away.close_all()
        assert left == dict.fromkeys(names)
        await metrics.sample_backlog(broker=own.broker, topology=topology, db=own.db, services=SERVICES)
        assert REGISTRY.get_sample_value("medialens_outbox_pending") is not None


async def test_a_relay_started_while_rabbitmq_is_away_serves_probes_reaps_and_stops(
    run_id: str, mongo_url: str, rabbit_vhost: str
) -> None:
    """The relay does not wait for RabbitMQ to start: with the broker away from the start, its probes
    answer (live 200, ready 503 naming rabbitmq), its reaper requeues a job whose lease ran out (that needs
    only PostgreSQL), and a stop ends it at once. Before, it awaited the broker's start, which waits for
    RabbitMQ for ever: no probes (its startup probe killed it), no reaping, and a stop went unheard."""
    async with own_relay(run_id, mongo_url, rabbit_vhost, name="brokerless") as own:
        port = free_port()
        settings = unreachable(own.settings, "rabbitmq")
        settings = settings.model_copy(
            update={
                "worker": settings.worker.model_copy(update={"http_port": port, "http_host": "127.0.0.1"})
            }
        )
        job_id = secrets.token_hex(8)
        past = datetime.now(UTC) - timedelta(minutes=1)
        await own.add_jobs(
            {
                "id": job_id,
                "status": "running",
                "attempts": 1,
                "worker": "gone-1-abcdef",
                "lease_expires_at": past,
            }
        )
        stop = asyncio.Event()
        relay = asyncio.create_task(run_relay(settings, stop))
        try:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
                deadline = time.monotonic() + 15
                while True:
                    assert not relay.done(), relay
                    with contextlib.suppress(httpx.TransportError):
                        live = await client.get("/health/live")
                        break
                    assert time.monotonic() < deadline, "the relay's probes never answered"
                    await asyncio.sleep(0.1)
                ready = await client.get("/health/ready")
            deadline = time.monotonic() + 15
            while (row := await _job(own, job_id))["status"] == "running":
                assert time.monotonic() < deadline, row
                await asyncio.sleep(0.1)
        finally:
            stop.set()
            stopped_at = time.monotonic()
            await asyncio.wait_for(relay, timeout=30)
        assert time.monotonic() - stopped_at < 10
    assert live.status_code == 200
    assert ready.status_code == 503
    assert ready.json()["data"]["checks"]["rabbitmq"]["ok"] is False
    assert (row["status"], row["worker"]) == ("queued", None)


async def test_a_relay_whose_broker_fell_silent_stops_within_a_bound_and_stays_disconnected(
    run_id: str, mongo_url: str, rabbit_vhost: str
) -> None:
    """RabbitMQ falls silent under a running relay (the proxy swallows every byte): it goes on reaping, a
    stop ends it within a publish's timeout and `BROKER_CLOSE_S`, and once the partition is over its client
    does not connect again. Its rounds waited on their declarations and the queues' depths, so nothing was
    reaped, and its stop on the broker's goodbye to its consumer, channel and connection, for as long as
    the socket stayed open (until the heartbeat gave up or the orchestrator's kill)."""
    proxy = TcpProxy(*RABBIT_HOST)
    await proxy.start()
    try:
        async with own_relay(
            run_id, mongo_url, rabbit_vhost, name="silent_broker", reap_interval_s=0.2
        ) as own:
            port = free_port()
            url = own.settings.rabbitmq.url.get_secret_value().replace(
                f":{RABBIT_HOST[1]}/", f":{proxy.port}/"
            )
            rabbitmq = {"url": SecretStr(url), "publish_timeout": 2.0}
            settings = own.settings.model_copy(
                update={
                    "rabbitmq": own.settings.rabbitmq.model_copy(update=rabbitmq),
                    "worker": own.settings.worker.model_copy(
                        update={"http_port": port, "http_host": "127.0.0.1"}
                    ),
                }
            )
            stop = asyncio.Event()
            relay = asyncio.create_task(run_relay(settings, stop))
            try:
                async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
                    deadline = time.monotonic() + 30
                    while True:
                        assert not relay.done(), relay
                        with contextlib.suppress(httpx.TransportError):
                            if (await client.get("/health/ready")).status_code == 200:
                                break
                        assert time.monotonic() < deadline, "the relay never got ready"
                        await asyncio.sleep(0.1)
                proxy.blackhole()
                await asyncio.sleep(1.0)  # a round is under way on the silent broker
                past = datetime.now(UTC) - timedelta(minutes=1)
                await own.add_jobs(
                    {
                        "id": "lost",
                        "status": "running",
                        "attempts": 1,
                        "worker": "gone",
                        "lease_expires_at": past,
                    }
                )
                deadline = time.monotonic() + 15
                while (row := await _job(own, "lost"))["status"] == "running":
                    assert time.monotonic() < deadline, (
                        "the relay stopped reaping while the broker was silent"
                    )
                    await asyncio.sleep(0.2)
                assert row["status"] == "queued"
            finally:
                stop.set()
                stopped_at = time.monotonic()
                assert await asyncio.wait_for(relay, timeout=60) == 0
            # The round under way ends within a publish's timeout, then the broker's close is bounded.
            assert time.monotonic() - stopped_at < 2.0 + BROKER_CLOSE_S + 3
            await proxy.cut()
            await proxy.restore()
            accepted = proxy.accepted
            await asyncio.sleep(3 * RECONNECT_S)
            assert proxy.accepted == accepted
    finally:
        await proxy.cut()


async def test_a_rounds_declarations_on_a_silent_broker_fail_within_a_publishs_timeout(
    run_id: str, mongo_url: str, rabbit_vhost: str
) -> None:
    """A relay's first round declares the queues before it publishes: on a broker fallen silent that fails
    within `publish_timeout`, as a publish does, and the round after tries again. It waited until the
    connection's heartbeat gave up, minutes later."""
    proxy = TcpProxy(*RABBIT_HOST)
    await proxy.start()
    try:
        async with own_relay(run_id, mongo_url, rabbit_vhost, name="silent_declare") as own:
            url = own.settings.rabbitmq.url.get_secret_value().replace(
                f":{RABBIT_HOST[1]}/", f":{proxy.port}/"
            )
            rabbitmq = {"url": SecretStr(url), "publish_timeout": 1.0}
            settings = own.settings.model_copy(
                update={"rabbitmq": own.settings.rabbitmq.model_copy(update=rabbitmq)}
            )
            broker = make_broker(settings, name="silent-declare-test")
            await broker.connect()
            try:
                relay = Relay(settings=settings, db=own.db, broker=broker)
                proxy.blackhole()
                started = time.monotonic()
                with pytest.raises(TimeoutError):
                    await asyncio.wait_for(relay.publish_batch(), 30)
                assert time.monotonic() - started < 1.0 + 2
            finally:
                await close_broker(broker, timeout_s=1.0)
    finally:
        await proxy.cut()


async def _job(own: OwnRelay, job_id: str) -> RowMapping:
    async with own.db.session() as session:
        return (await session.execute(select(jobs).where(jobs.c.id == job_id))).mappings().one()


@pytest.mark.parametrize(
    ("refused", "why"),
    [
        ("login", "RabbitMQ refused the login of user 'guest'"),
        ("vhost", "RabbitMQ refused to open virtual host 'no-such-vhost' for user 'guest'"),
    ],
)
async def test_a_relay_that_rabbitmq_keeps_refusing_stops_saying_why(
    run_id: str, mongo_url: str, rabbit_vhost: str, refused: str, why: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A wrong password, or a virtual host that does not exist: while RabbitMQ refuses it, the relay's
    readiness names the cause, and once it has refused for `worker.consumer_lost_s` the relay stops with
    EXIT_REFUSED (78) and one error line naming the cause (never the password), its log meanwhile one
    warning a cause. Before, it tried for ever, five lines a second saying "You should connect broker
    first.", and a missing vhost read as "Expected Connection.OpenOk"."""
    caplog.set_level(logging.WARNING)
    async with own_relay(run_id, mongo_url, rabbit_vhost, name=f"refused_{refused}") as own:
        url = own.settings.rabbitmq.url.get_secret_value()
        if refused == "login":
            url = url.replace("guest:guest@", "guest:not-the-password@")
        else:
            url = f"{url.rsplit('/', 1)[0]}/no-such-vhost"
        port = free_port()
        window_s = 2.0
        settings = own.settings.model_copy(
            update={
                "rabbitmq": own.settings.rabbitmq.model_copy(update={"url": SecretStr(url)}),
                "worker": own.settings.worker.model_copy(
                    update={"http_port": port, "http_host": "127.0.0.1", "consumer_lost_s": window_s}
                ),
            }
        )
        stop = asyncio.Event()
        started = time.monotonic()
        relay = asyncio.create_task(run_relay(settings, stop))
        try:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
                while True:
                    assert not relay.done(), "the relay stopped before its readiness said why"
                    assert time.monotonic() - started < 15, "the relay's readiness never said why"
                    with contextlib.suppress(httpx.TransportError):
                        ready = await client.get("/health/ready")
                        if why in (ready.json()["data"]["checks"]["rabbitmq"]["error"] or ""):
                            break
                    await asyncio.sleep(0.05)
            code = await asyncio.wait_for(relay, timeout=20)
        finally:
            stop.set()
            if not relay.done():
                relay.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await relay
    assert code == EXIT_REFUSED
    assert window_s <= time.monotonic() - started < 15
    assert ready.status_code == 503
    # This relay's lines about its broker: the session's stack runs in this process too, and logs its own.
    ours = [
        (record.levelno, record.getMessage())
        for record in caplog.records
        if record.name.startswith("medialens")
        and any(text in record.getMessage() for text in ("RabbitMQ", "relay round failed"))
    ]
    errors = [message for level, message in ours if level >= logging.ERROR]
    assert len(errors) == 1, errors
    assert why in errors[0]
    assert "MEDIALENS_RABBITMQ_URL" in errors[0]
    assert f"exit code {EXIT_REFUSED}" in errors[0]
    # One warning from the connector and one from the failing rounds, for the whole window.
    assert len([message for level, message in ours if level == logging.WARNING]) <= 2, caplog.text
    assert "not-the-password" not in caplog.text


async def test_the_relay_process_that_rabbitmq_refuses_exits_78(
    run_id: str, mongo_url: str, rabbit_vhost: str
) -> None:
    """`medialens-relay` itself, its login refused: the process ends (no client task is left to keep the
    event loop from closing) with exit code 78 and the refusal on its stderr, never the password."""
    async with own_relay(run_id, mongo_url, rabbit_vhost, name="refused_process") as own:
        url = own.settings.rabbitmq.url.get_secret_value().replace("guest:guest@", "guest:not-the-password@")
        settings = own.settings.model_copy(
            update={
                "rabbitmq": own.settings.rabbitmq.model_copy(update={"url": SecretStr(url)}),
                "worker": own.settings.worker.model_copy(update={"http_port": 0, "consumer_lost_s": 1.0}),
            }
        )
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            "from medialens_gateway.relay import main; main()",
            env=settings_env(settings),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            _, stderr = await asyncio.wait_for(process.communicate(), timeout=60)
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
    log = stderr.decode()
    assert process.returncode == EXIT_REFUSED, log
    assert "RabbitMQ refused the login of user 'guest'" in log
    assert "not-the-password" not in log
