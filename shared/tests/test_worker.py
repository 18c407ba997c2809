"""A service's consumer end to end on the real broker and databases: consume, settle, stop."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable

import httpx
import pytest
from faststream.rabbit import RabbitBroker

from medialens_shared import jobstore
from medialens_shared.bus import QueueStats, Topology, declare, make_broker, publish_job, queue_stats
from medialens_shared.contracts import JobMessage, ProbeFormat, ProbeVideoStream, VideoProbeResult
from medialens_shared.db import DatabaseManager
from medialens_shared.devmongo import free_port
from medialens_shared.settings import Settings
from medialens_shared.tasks import JobContext
from medialens_shared.worker import run

pytestmark = pytest.mark.integration

PROBE = VideoProbeResult(
    format=ProbeFormat(name="matroska", duration_s=1.0, size_bytes=10, bit_rate=None),
    video=ProbeVideoStream(codec="vp9", width=64, height=48, fps=30.0, frame_count=30, pix_fmt="yuv420p"),
    audio=[],
)


async def eventually(check: Callable[[], Awaitable[bool]], *, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            pytest.fail(f"{check.__name__} did not hold within {timeout} s")
        await asyncio.sleep(0.05)


async def stats(broker: RabbitBroker, queue: str) -> QueueStats:
    return await queue_stats(broker, queue)


async def test_run_consumes_a_published_job_settles_deliveries_and_stops(
    settings: Settings, database: str, db: DatabaseManager, new_job, tenant_id: str
) -> None:
    """run() is ready once it consumes, takes a published job to succeeded (acked), dead-letters an
    unreadable body, and stops on the stop event."""
    rabbit = settings.rabbitmq.model_copy(update={"exchange": f"workertest-{uuid.uuid4().hex[:10]}"})
    port = free_port()
    worker_settings = settings.worker.model_copy(update={"shutdown_grace_s": 2.0, "http_port": port})
    isolated = settings.model_copy(update={"rabbitmq": rabbit, "worker": worker_settings})
    topology = Topology(isolated)
    work, dead, watch = topology.work_queue("video").name, topology.dead.name, topology.dead_watch.name
    handled: list[str] = []

    async def probe(ctx: JobContext) -> VideoProbeResult:
        handled.append(ctx.job_id)
        return PROBE

    stop = asyncio.Event()
    service = asyncio.create_task(run("video", {"video.probe": probe}, settings=isolated, stop=stop))
    publisher = make_broker(isolated, name="worker-tests")
    await publisher.connect()
    try:
        await declare(publisher, topology, services=("video",))

        async def consuming() -> bool:
            assert not service.done(), service
            return (await stats(publisher, work)).consumers == 1

        await eventually(consuming)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            ready = await client.get("/health/ready")
        assert ready.status_code == 200, ready.text
        assert ready.json()["data"]["checks"]["rabbitmq"]["ok"] is True
        job_id = await new_job()
        message = JobMessage(job_id=job_id, type="video.probe", tenant_id=tenant_id, file_id=None)
        await publish_job(
            publisher, topology, job_type="video.probe", payload=message.model_dump(mode="json"),
            message_id=job_id, timeout=5.0,
        )  # fmt: skip

        async def succeeded() -> bool:
            async with db.session() as session:
                row = await jobstore.get(session, job_id=job_id)
            return row is not None and row["status"] == "succeeded"

        await eventually(succeeded)
        assert handled == [job_id]
        assert (await db.collection("results").find_one({"_id": job_id}) or {}).get("format") == {
            "name": "matroska", "duration_s": 1.0, "size_bytes": 10, "bit_rate": None,
        }  # fmt: skip

        await publish_job(
            publisher,
            topology,
            job_type="video.probe",
            payload={"not": "a job"},
            message_id="junk",
            timeout=5.0,
        )

        async def dead_lettered() -> bool:
            return (await stats(publisher, dead)).messages == 1 and (
                await stats(publisher, watch)
            ).messages == 1

        await eventually(dead_lettered)
        assert (await stats(publisher, work)).messages == 0  # the job's delivery was acked
        assert handled == [job_id]
    finally:
        stop.set()
        await asyncio.wait_for(service, 30)
        await publisher.stop()
    assert service.exception() is None
