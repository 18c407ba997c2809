"""At-least-once delivery, exactly-once effect: a second delivery of a job message that can no longer run
is acked and skipped (ARCHITECTURE.md, guarantee 2)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from faststream.rabbit import RabbitBroker
from sqlalchemy import text

from medialens_shared.bus import Topology, make_broker, publish_job, queue_stats
from medialens_shared.contracts import JobMessage
from medialens_shared.db import DatabaseManager
from medialens_shared.settings import Settings
from scripts.samples import make_video
from tests.fixtures.stack import Stack, run_job, submit, upload, wait_for

pytestmark = pytest.mark.integration

#: After the queue is empty, how long a consumer gets to finish (and settle) what it took.
GRACE_S = 2.0


@pytest.fixture
async def raw_broker(settings: Settings) -> AsyncIterator[RabbitBroker]:
    """A broker straight to RabbitMQ (not through the relay's proxy), as a second publisher would be."""
    broker = make_broker(settings, name="e2e")
    await broker.connect()
    yield broker
    await broker.stop()


async def job_row(db: DatabaseManager, job_id: str) -> dict[str, Any]:
    async with db.session() as session:
        query = text("select status, attempts, started_at, finished_at from jobs where id = :job_id")
        return dict((await session.execute(query, {"job_id": job_id})).one()._mapping)


async def job_message(db: DatabaseManager, job_id: str) -> JobMessage:
    """The job's message exactly as the gateway stored it in the outbox."""
    async with db.session() as session:
        query = text("select payload from outbox where job_id = :job_id")
        payload = (await session.execute(query, {"job_id": job_id})).scalar_one()
    return JobMessage.model_validate(payload)


async def deliver_again(broker: RabbitBroker, settings: Settings, message: JobMessage, service: str) -> None:
    """Publish `message` once more and wait until `service`'s queue has handed it out and settled."""
    topology = Topology(settings)
    await publish_job(
        broker,
        topology,
        job_type=message.type,
        payload=message.model_dump(mode="json"),
        message_id="dup",
        timeout=5,
    )
    queue = topology.work_queue(service).name
    deadline = time.monotonic() + 30
    while (await queue_stats(broker, queue)).messages:
        assert time.monotonic() < deadline, f"{queue} was not drained within 30 s"
        await asyncio.sleep(0.1)
    await asyncio.sleep(GRACE_S)


async def test_duplicate_delivery_of_a_finished_job_changes_nothing(
    stack: Stack,
    api: httpx.AsyncClient,
    db: DatabaseManager,
    settings: Settings,
    raw_broker: RabbitBroker,
    tmp_path: Path,
) -> None:
    """Publishing a succeeded job's message again leaves its row and its result document untouched."""
    path = tmp_path / "clip.mp4"
    make_video(path, duration_s=1.0, fps=10, width=160, height=120)
    job = await run_job(api, "video.probe", path)
    assert job["status"] == "succeeded", job
    results = db.collection("results")
    row_before = await job_row(db, job["id"])
    result_before = await results.find_one({"_id": job["id"]})
    assert result_before is not None

    await deliver_again(raw_broker, settings, await job_message(db, job["id"]), "video")

    assert await job_row(db, job["id"]) == row_before
    assert row_before["attempts"] == 1
    result_after = await results.find_one({"_id": job["id"]})
    assert result_after == result_before
    assert await results.count_documents({"job_id": job["id"]}) == 1
    response = await api.get(f"/v1/jobs/{job['id']}")
    assert response.json()["data"]["status"] == "succeeded"


async def test_redelivered_message_of_a_cancelled_job_does_not_run(
    stack: Stack,
    api: httpx.AsyncClient,
    db: DatabaseManager,
    settings: Settings,
    raw_broker: RabbitBroker,
    tmp_path: Path,
) -> None:
    """A job cancelled while queued stays cancelled, never started and without a result, however often its
    message is delivered."""
    path = tmp_path / "clip.mp4"
    make_video(path, duration_s=1.0, fps=10, width=160, height=120)
    file_id = await upload(api, path)
    await stack.rabbit_proxy.cut()  # keep the relay from publishing it before the cancel lands
    try:
        job = await submit(api, "video.probe", file_id)
        response = await api.post(f"/v1/jobs/{job['id']}/cancel")
        assert response.status_code == 202, response.text
        cancelled = await wait_for(api, job["id"], timeout=10)
        assert cancelled["status"] == "cancelled", cancelled
        row_before = await job_row(db, job["id"])
        # The very same message, straight to the broker while the relay is cut off: a duplicate.
        await deliver_again(raw_broker, settings, await job_message(db, job["id"]), "video")
    finally:
        await stack.rabbit_proxy.restore()

    # The relay now publishes the outbox entry too: a second delivery, also skipped.
    deadline = time.monotonic() + 30
    async with db.session() as session:
        query = text("select sent_at from outbox where job_id = :job_id")
        while (await session.execute(query, {"job_id": job["id"]})).scalar_one() is None:
            assert time.monotonic() < deadline, "the relay never published the cancelled job's entry"
            await session.commit()  # a fresh snapshot for the next look
            await asyncio.sleep(0.1)
    queue = Topology(settings).work_queue("video").name
    while (await queue_stats(raw_broker, queue)).messages:
        assert time.monotonic() < deadline, f"{queue} was not drained"
        await asyncio.sleep(0.1)
    await asyncio.sleep(GRACE_S)

    row = await job_row(db, job["id"])
    assert row == row_before
    assert (row["status"], row["attempts"], row["started_at"]) == ("cancelled", 0, None)
    assert await db.collection("results").find_one({"_id": job["id"]}) is None
    response = await api.get(f"/v1/jobs/{job['id']}/result")
    assert response.status_code == 409, response.text
    assert response.json()["error_code"] == "JOB_NOT_FINISHED"
