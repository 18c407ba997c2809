"""A service's consumer end to end on the real broker and databases: consume, settle, stop."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sys
import time
import uuid
from asyncio.subprocess import DEVNULL
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aio_pika
import httpx
import pytest
from faststream import AckPolicy
from faststream.rabbit import RabbitBroker
from faststream.rabbit.annotations import RabbitMessage
from prometheus_client import REGISTRY
from pydantic import SecretStr
from sqlalchemy import insert, select

from medialens_shared import jobstore
from medialens_shared.bus import (
    EXIT_REFUSED,
    RECONNECT_S,
    QueueStats,
    Topology,
    declare,
    make_broker,
    publish_job,
    queue_stats,
)
from medialens_shared.contracts import JobMessage, ProbeFormat, ProbeVideoStream, VideoProbeResult
from medialens_shared.db import DatabaseManager
from medialens_shared.devmongo import free_port
from medialens_shared.filestore import FileStore
from medialens_shared.logs import configure_logging
from medialens_shared.settings import LogSettings, Settings
from medialens_shared.signals import JobSignals
from medialens_shared.tables import jobs, outbox, tenants
from medialens_shared.tasks import Handler, JobContext, JobRunner
from medialens_shared.worker import EXIT_CONSUMER_LOST, ConsumerWatch, _hand_back, prepare_directories, run
from tests.fixtures.proxy import TcpProxy
from tests.fixtures.servers import RABBIT_HOST, settings_env, unreachable

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


async def status_of(db: DatabaseManager, job_id: str) -> str | None:
    """The job's status in the table (None: no such job)."""
    async with db.session() as session:
        row = await jobstore.get(session, job_id=job_id)
    return None if row is None else str(row["status"])


def trims() -> float:
    return REGISTRY.get_sample_value("medialens_memory_trims_total") or 0.0


def isolated(settings: Settings, *, url: str | None = None, **worker: object) -> Settings:
    """The settings with an exchange (hence queues) of this test's own, and `worker` overrides."""
    rabbit: dict[str, object] = {"exchange": f"workertest-{uuid.uuid4().hex[:10]}"}
    if url is not None:
        rabbit["url"] = SecretStr(url)
    return settings.model_copy(
        update={
            "rabbitmq": settings.rabbitmq.model_copy(update=rabbit),
            "worker": settings.worker.model_copy(update=worker),
        }
    )


async def watch_problem(watch: ConsumerWatch) -> str | None:
    """What the watch's check finds wrong, or None when the broker confirms the consumer."""
    try:
        await watch.check()
    except ConnectionError as exc:
        return str(exc)
    return None


@dataclass
class Running:
    """A service run by `run()` in this process, and a broker connection to feed its queue."""

    service: asyncio.Task[int]
    publisher: RabbitBroker
    topology: Topology
    #: Set to stop the service (the block's end sets it too).
    stop: asyncio.Event

    async def publish(self, job_id: str, tenant_id: str) -> None:
        message = JobMessage(job_id=job_id, type="video.probe", tenant_id=tenant_id, file_id=None)
        await publish_job(
            self.publisher, self.topology, job_type="video.probe", payload=message.model_dump(mode="json"),
            message_id=job_id, timeout=5.0,
        )  # fmt: skip


@contextlib.asynccontextmanager
async def running(settings: Settings, handlers: dict[str, Handler]) -> AsyncIterator[Running]:
    """Run the video service with `handlers` until the block ends (then stop it and check it exited 0),
    once the broker counts its consumer."""
    topology = Topology(settings)
    stop = asyncio.Event()
    service = asyncio.create_task(run("video", handlers, settings=settings, stop=stop))
    publisher = make_broker(settings, name="worker-tests")
    await publisher.connect()
    try:
        await declare(publisher, topology, services=("video",))

        async def consuming() -> bool:
            assert not service.done(), service
            return (await stats(publisher, topology.work_queue("video").name)).consumers == 1

        await eventually(consuming)
        yield Running(service, publisher, topology, stop)
    finally:
        stop.set()
        await asyncio.wait_for(service, 30)
        await publisher.stop()
    assert service.result() == 0


async def test_run_consumes_a_published_job_settles_deliveries_and_stops(
    settings: Settings, database: str, db: DatabaseManager, new_job, tenant_id: str
) -> None:
    """run() is ready once it consumes, takes a published job to succeeded (acked), gives freed memory
    back after it, dead-letters an unreadable body, and stops on the stop event."""
    port = free_port()
    own = isolated(settings, shutdown_grace_s=2.0, http_port=port, memory_trim_s=0.05)
    topology = Topology(own)
    work, dead, watch = topology.work_queue("video").name, topology.dead.name, topology.dead_watch.name
    handled: list[str] = []

    async def probe(ctx: JobContext) -> VideoProbeResult:
        handled.append(ctx.job_id)
        return PROBE

    async with running(own, {"video.probe": probe}) as service:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:

            async def ready() -> bool:  # once its queues are declared too
                return (await client.get("/health/ready")).status_code == 200

            await eventually(ready)
            checks = (await client.get("/health/ready")).json()["data"]["checks"]
        assert checks["rabbitmq"] == {
            "ok": True,
            "latency_ms": checks["rabbitmq"]["latency_ms"],
            "error": None,
        }
        job_id = await new_job()
        await service.publish(job_id, tenant_id)

        async def succeeded() -> bool:
            return await status_of(db, job_id) == "succeeded"

        trims_before = trims()
        await eventually(succeeded)
        assert handled == [job_id]

        async def trimmed() -> bool:
            return trims() > trims_before

        await eventually(trimmed, timeout=5)
        assert (await db.collection("results").find_one({"_id": job_id}) or {}).get("format") == {
            "name": "matroska", "duration_s": 1.0, "size_bytes": 10, "bit_rate": None,
        }  # fmt: skip

        await publish_job(
            service.publisher,
            topology,
            job_type="video.probe",
            payload={"not": "a job"},
            message_id="junk",
            timeout=5.0,
        )

        async def dead_lettered() -> bool:
            return (await stats(service.publisher, dead)).messages == 1 and (
                await stats(service.publisher, watch)
            ).messages == 1

        await eventually(dead_lettered)
        # Nothing ready in the queue: the delivery was not put back (the count leaves out unacked ones; that
        # the claim acks it before the job runs is test_tasks' `..._acked_before_its_handler_runs`).
        assert (await stats(service.publisher, work)).messages == 0
        assert handled == [job_id]


async def test_the_consumer_watch_sees_a_consumer_the_broker_cancelled_and_its_return(
    settings: Settings,
) -> None:
    """Deleting the queue makes the broker cancel the consumer while the connection stays fine: the watch
    stops confirming it at once; the client then restores queue and consumer by itself, and the watch
    confirms the consumer again, as does the broker's count."""
    own = isolated(settings)
    topology = Topology(own)
    queue = topology.work_queue("video")
    broker = make_broker(own, name="watch-tests")
    subscriber = broker.subscriber(queue, topology.jobs, ack_policy=AckPolicy.MANUAL)

    @subscriber
    async def refuse(body: object, message: RabbitMessage) -> None:
        await message.nack(requeue=True)

    admin = make_broker(own, name="watch-admin")
    await admin.connect()
    try:
        await declare(admin, topology, services=("video",))
        await broker.start()
        watch = ConsumerWatch(broker, subscriber, queue.name, timeout_s=2.0)
        assert await watch_problem(watch) is None

        channel = await admin.config.channel_manager.get_channel()
        await (await channel.get_underlay_channel()).queue_delete(queue.name)
        problem = await watch_problem(watch)
        assert problem is not None
        assert "cancelled" in problem or "NOT_FOUND" in problem, problem

        async def restored() -> bool:
            return await watch_problem(watch) is None

        await eventually(restored, timeout=30)
        assert (await stats(admin, queue.name)).consumers == 1
    finally:
        await broker.stop()
        await admin.stop()


async def test_a_worker_whose_broker_falls_silent_is_unready_then_exits_to_be_restarted(
    settings: Settings, database: str, db_without_relay: DatabaseManager
) -> None:
    """A partition nobody is told about (the proxy swallows every byte, the socket stays open): readiness
    fails within a check, and once the consumer has been gone for `consumer_lost_s`, run() stops and
    returns EXIT_CONSUMER_LOST, for the orchestrator to start a fresh process. The job it was running is
    handed back, its try counted (a job that keeps cutting its worker off meets the bound on attempts)."""
    proxy = TcpProxy(*RABBIT_HOST)
    await proxy.start()
    port = free_port()
    url = settings.rabbitmq.url.get_secret_value().replace(f":{RABBIT_HOST[1]}/", f":{proxy.port}/")
    own = isolated(
        settings, url=url, http_port=port, shutdown_grace_s=2.0, consumer_check_s=0.2, consumer_lost_s=2.0
    )
    # On a database of its own: the session's stack, when up, would publish the handed-back job's outbox
    # entry and run it again before its row is read.
    own = own.model_copy(
        update={
            "gateway": own.gateway.model_copy(update={"health_timeout_s": 0.5}),
            "postgres": db_without_relay.settings.postgres,
        }
    )
    db = db_without_relay
    tenant_id, job_id = f"tenant-{uuid.uuid4().hex[:8]}", f"job-{uuid.uuid4().hex[:8]}"
    async with db.session() as session:
        await session.execute(insert(tenants).values(id=tenant_id, name=tenant_id, webhook_secret="s"))
        await session.execute(
            insert(jobs).values(id=job_id, tenant_id=tenant_id, type="video.probe", status="queued")
        )
        await session.commit()
    started = asyncio.Event()

    async def probe(_ctx: JobContext) -> VideoProbeResult:
        started.set()
        await asyncio.sleep(60)
        return PROBE

    stop = asyncio.Event()
    service = asyncio.create_task(run("video", {"video.probe": probe}, settings=own, stop=stop))
    publisher = make_broker(settings, name="worker-tests")
    await publisher.connect()
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:

            async def ready() -> bool:
                assert not service.done(), service
                with contextlib.suppress(httpx.TransportError):
                    return (await client.get("/health/ready")).status_code == 200
                return False

            await eventually(ready, timeout=30)
            await Running(service, publisher, Topology(own), stop).publish(job_id, tenant_id)
            await asyncio.wait_for(started.wait(), 15)
            proxy.blackhole()
            unready = await client.get("/health/ready")
            assert unready.status_code == 503, unready.text
            rabbitmq = unready.json()["data"]["checks"]["rabbitmq"]
            assert rabbitmq["ok"] is False
            assert "does not answer" in rabbitmq["error"]
            lost_at = time.monotonic()
            code = await asyncio.wait_for(service, 60)
        assert code == EXIT_CONSUMER_LOST
        assert time.monotonic() - lost_at >= 2.0
        # The client given up on stays given up on: once the partition ends it does not connect again (it
        # did, every second, for as long as the process lived, and consumed again on a restored connection).
        await proxy.cut()
        await proxy.restore()
        accepted = proxy.accepted
        await asyncio.sleep(3 * RECONNECT_S)
        assert proxy.accepted == accepted
        async with db.session() as session:
            row = await jobstore.get(session, job_id=job_id)
        assert row is not None
        assert (row["status"], row["attempts"]) == ("queued", 1)
        assert row["message"] == "requeued: its worker stopped"
    finally:
        stop.set()
        await proxy.cut()
        await publisher.stop()
        if not service.done():
            await asyncio.wait_for(service, 60)


async def test_a_worker_whose_start_hangs_exits_to_be_restarted(settings: Settings, database: str) -> None:
    """A broker that accepts the connection and then says nothing: the start never completes, and after
    `consumer_lost_s` the service process gives it up and exits with EXIT_CONSUMER_LOST instead of waiting
    forever (a process of its own: the abandoned client's reconnect task outlives the event loop's end)."""
    proxy = TcpProxy(*RABBIT_HOST)
    await proxy.start()
    proxy.blackhole()
    url = settings.rabbitmq.url.get_secret_value().replace(f":{RABBIT_HOST[1]}/", f":{proxy.port}/")
    watch = {"consumer_check_s": 0.2, "consumer_lost_s": 2.0}
    own = isolated(settings, url=url, http_port=free_port(), shutdown_grace_s=1.0, **watch)
    code = "from medialens_shared.worker import serve; serve('video', {})"
    started = time.monotonic()
    try:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-c", code, env=settings_env(own), stdout=DEVNULL, stderr=DEVNULL
        )
        assert await asyncio.wait_for(process.wait(), 60) == EXIT_CONSUMER_LOST
    finally:
        await proxy.cut()
    assert time.monotonic() - started >= 2.0


@pytest.mark.parametrize(
    ("refused", "why"),
    [
        ("login", "RabbitMQ refused the login of user 'guest'"),
        ("vhost", "RabbitMQ refused to open virtual host 'no-such-vhost' for user 'guest'"),
    ],
)
async def test_a_worker_that_rabbitmq_refuses_exits_saying_why(
    settings: Settings, database: str, refused: str, why: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A wrong password, or a virtual host that does not exist: after `consumer_lost_s` without a consumer,
    run() returns EXIT_REFUSED (78), not EXIT_CONSUMER_LOST, and its last line names the refusal (never the
    password). Before, it said "this service has no consumer on its queue", as for any lost consumer."""
    caplog.set_level(logging.WARNING)
    url = settings.rabbitmq.url.get_secret_value()
    if refused == "login":
        url = url.replace("guest:guest@", "guest:not-the-password@")
    else:
        url = f"{url.rsplit('/', 1)[0]}/no-such-vhost"
    own = isolated(
        settings,
        url=url,
        http_port=free_port(),
        shutdown_grace_s=1.0,
        consumer_check_s=0.2,
        consumer_lost_s=1.0,
    )
    code = await asyncio.wait_for(run("video", {}, settings=own, stop=asyncio.Event()), 30)
    assert code == EXIT_REFUSED
    errors = [
        record.getMessage()
        for record in caplog.records
        if record.name == "medialens_shared.worker" and record.levelno >= logging.ERROR
    ]
    assert len(errors) == 1, errors
    assert why in errors[0]
    assert "not-the-password" not in caplog.text


async def test_a_running_job_outlives_its_broker_connection(
    settings: Settings, database: str, db: DatabaseManager, new_job, tenant_id: str
) -> None:
    """The worker's connection to RabbitMQ drops while a job runs (a broker restart, a network cut): the
    broker client cancels that connection's consumer callbacks, but the job, claimed and guarded by its
    lease, runs on and succeeds in its first attempt; it is not left running until the reaper reruns it."""
    proxy = TcpProxy(*RABBIT_HOST)
    await proxy.start()
    url = settings.rabbitmq.url.get_secret_value().replace(f":{RABBIT_HOST[1]}/", f":{proxy.port}/")
    port = free_port()
    own = isolated(settings, url=url, shutdown_grace_s=2.0, http_port=port)
    started, release = asyncio.Event(), asyncio.Event()
    cancelled: list[str] = []

    async def probe(ctx: JobContext) -> VideoProbeResult:
        started.set()
        try:
            await asyncio.wait_for(release.wait(), 30)
        except asyncio.CancelledError:
            cancelled.append(ctx.job_id)
            raise
        return PROBE

    try:
        async with running(own, {"video.probe": probe}) as service:

            async def ready() -> bool:  # its start (consuming, then declaring its queues) is over
                async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as client:
                    with contextlib.suppress(httpx.TransportError):
                        return (await client.get("/health/ready")).status_code == 200
                return False

            await eventually(ready, timeout=30)
            job_id = await new_job()
            await service.publish(job_id, tenant_id)
            await asyncio.wait_for(started.wait(), 15)
            await proxy.cut()  # every connection through the proxy closes under the running job
            await asyncio.sleep(1.0)
            await proxy.restore()
            release.set()

            async def succeeded() -> bool:
                return await status_of(db, job_id) == "succeeded"

            await eventually(succeeded, timeout=15)
        async with db.session() as session:
            row = await jobstore.get(session, job_id=job_id)
        assert row is not None
        assert row["attempts"] == 1
        assert cancelled == []
    finally:
        await proxy.cut()


async def test_a_job_running_at_shutdown_finishes_within_the_grace_period(
    settings: Settings, database: str, db: DatabaseManager, new_job, tenant_id: str
) -> None:
    """A stop asked while a job runs: the job, shorter than `shutdown_grace_s`, runs to its end and
    succeeds on its first attempt (not handed back, nor cancelled), and only then does the service stop."""
    own = isolated(settings, shutdown_grace_s=10.0, http_port=free_port())
    started, ended = asyncio.Event(), asyncio.Event()

    async def probe(_ctx: JobContext) -> VideoProbeResult:
        started.set()
        await asyncio.sleep(1.0)
        ended.set()
        return PROBE

    async with running(own, {"video.probe": probe}) as service:
        job_id = await new_job()
        await service.publish(job_id, tenant_id)
        await asyncio.wait_for(started.wait(), 15)
    assert ended.is_set()  # the stop waited for the job
    async with db.session() as session:
        row = await jobstore.get(session, job_id=job_id)
        assert row is not None
        assert (row["status"], row["attempts"]) == ("succeeded", 1), row
        entries = (await session.execute(select(outbox).where(outbox.c.job_id == job_id))).mappings().all()
    assert entries == []  # nothing handed back (the test published to the broker directly)


async def test_a_job_still_running_after_the_grace_period_is_stopped_and_handed_back(
    settings: Settings, database: str, db: DatabaseManager, new_job, tenant_id: str
) -> None:
    """At shutdown a job gets `shutdown_grace_s` to finish; one that runs on is then cancelled (it runs in
    a task of its own, which the broker's stop does not cancel) before it is handed back, so no job runs
    on against closed pools, and the job goes back to the queue at once for another worker."""
    own = isolated(settings, shutdown_grace_s=0.5, http_port=free_port())
    started = asyncio.Event()
    cancelled: list[str] = []

    async def probe(ctx: JobContext) -> VideoProbeResult:
        started.set()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.append(ctx.job_id)
            raise
        return PROBE

    stopping_at = 0.0
    async with running(own, {"video.probe": probe}) as service:
        job_id = await new_job()
        await service.publish(job_id, tenant_id)
        await asyncio.wait_for(started.wait(), 15)
        stopping_at = time.monotonic()
    assert time.monotonic() - stopping_at < 15  # the grace, the broker's stop and the hand-back
    assert cancelled == [job_id]
    # Handed back: queued again with its message in the outbox (the only entry of this job, which the test
    # published directly). A relay running meanwhile (the session's stack, when its tests ran first) may
    # already have sent it on and a service rerun it, so the row's later state is not asserted.
    async with db.session() as session:
        entries = (await session.execute(select(outbox).where(outbox.c.job_id == job_id))).mappings().all()
    assert len(entries) == 1
    assert entries[0]["payload"]["job_id"] == job_id


async def test_a_delivery_waiting_for_a_slot_goes_back_at_once_when_the_service_stops(
    settings: Settings, database: str, db: DatabaseManager, new_job, tenant_id: str
) -> None:
    """With its one slot busy, a service holds the next delivery (unacked) for it; a stop cancels the
    consumer at the broker and sends that delivery back to the queue at once, for another worker, while
    the running job finishes within the drain (the delivery waited out the drain: 600 s for video)."""
    own = isolated(settings, shutdown_grace_s=20.0, http_port=free_port(), concurrency=1)
    started, release = asyncio.Event(), asyncio.Event()

    async def probe(_ctx: JobContext) -> VideoProbeResult:
        started.set()
        await asyncio.wait_for(release.wait(), 30)
        return PROBE

    queue = Topology(own).work_queue("video").name
    async with running(own, {"video.probe": probe}) as service:
        first, second = await new_job(), await new_job()
        await service.publish(first, tenant_id)
        await asyncio.wait_for(started.wait(), 15)
        await service.publish(second, tenant_id)

        async def second_held() -> bool:  # delivered to the service, waiting for the slot
            return (await stats(service.publisher, queue)).messages == 0

        await eventually(second_held)
        service.stop.set()

        async def second_back() -> bool:
            current = await stats(service.publisher, queue)
            return (current.messages, current.consumers) == (1, 0)

        await eventually(second_back, timeout=5)
        await asyncio.sleep(1.0)  # and it stays there: not delivered again to the stopping service
        assert (await stats(service.publisher, queue)).messages == 1
        assert not service.service.done()  # the running job still has its drain
        release.set()
    assert await status_of(db, first) == "succeeded"
    assert await status_of(db, second) == "queued"


@pytest.mark.parametrize("concurrency", [1, 2])
async def test_a_service_runs_at_most_its_concurrency_of_jobs_at_once(
    settings: Settings, database: str, db: DatabaseManager, new_job, tenant_id: str, concurrency: int
) -> None:
    """Deliveries are acked at the claim, so the prefetch alone would let a worker take every queued job:
    with four jobs queued, exactly `concurrency` of them run side by side, and all complete."""
    own = isolated(settings, shutdown_grace_s=2.0, http_port=free_port(), concurrency=concurrency)
    in_flight: list[str] = []
    most = 0
    all_started = asyncio.Event()

    async def probe(ctx: JobContext) -> VideoProbeResult:
        nonlocal most
        in_flight.append(ctx.job_id)
        most = max(most, len(in_flight))
        if len(in_flight) == concurrency:
            all_started.set()
        await asyncio.wait_for(all_started.wait(), 20)
        await asyncio.sleep(0.3)  # time for a further delivery to start, were it allowed to
        in_flight.remove(ctx.job_id)
        return PROBE

    async with running(own, {"video.probe": probe}) as service:
        ids = [await new_job() for _ in range(4)]
        for job_id in ids:
            await service.publish(job_id, tenant_id)

        async def all_succeeded() -> bool:
            async with db.session() as session:
                rows = [await jobstore.get(session, job_id=job_id) for job_id in ids]
            return all(row is not None and row["status"] == "succeeded" for row in rows)

        await eventually(all_succeeded, timeout=30)
    assert most == concurrency


async def test_with_json_logs_a_service_writes_json_lines_only(
    settings: Settings,
    database: str,
    db: DatabaseManager,
    new_job,
    tenant_id: str,
    capfd: pytest.CaptureFixture[str],
) -> None:
    """Everything a service logs while it consumes a job is a JSON line when logs are JSON (the broker
    library's own lines too), and the job's start and end are there under its id."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    configure_logging(settings.model_copy(update={"log": LogSettings(format="json")}), service="video")
    try:
        async with running(isolated(settings, http_port=free_port()), {"video.probe": probe_ok}) as service:
            job_id = await new_job()
            await service.publish(job_id, tenant_id)

            async def succeeded() -> bool:
                return await status_of(db, job_id) == "succeeded"

            await eventually(succeeded)
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
    out, err = capfd.readouterr()
    entries = [json.loads(line) for line in (out + err).splitlines() if line.strip()]
    mine = [entry["message"] for entry in entries if entry.get("job_id") == job_id]
    assert mine == [f"job {job_id} started (attempt 1)", f"job {job_id} succeeded"]


async def probe_ok(_: JobContext) -> VideoProbeResult:
    return PROBE


async def test_a_shutdown_without_the_database_still_removes_the_kept_inputs(
    settings: Settings, tmp_path: Path
) -> None:
    """The hand-back of running jobs at shutdown fails with PostgreSQL away: the failure is logged (the
    reaper requeues those jobs after their leases) and the input cache's directory is removed all the same
    (it was skipped, and stayed on disk)."""
    away = unreachable(settings, "postgres")
    own = away.model_copy(
        update={"worker": away.worker.model_copy(update={"input_cache_dir": str(tmp_path)})}
    )
    db = DatabaseManager(own, name="nopg")
    try:
        runner = JobRunner(
            service="video", handlers={}, settings=own, db=db, store=FileStore(db.gridfs, db.gridfs_chunks),
            signals=JobSignals(db.redis, prefix=own.redis.prefix),
        )  # fmt: skip
        kept = runner.inputs._dir()
        (kept / "input.bin").write_bytes(b"kept")
        await _hand_back(runner)
        assert not kept.exists()
    finally:
        await db.close_all()


def test_the_directories_a_service_writes_are_made_or_refused_at_start(
    settings: Settings, tmp_path: Path
) -> None:
    """A scratch or input cache directory that does not exist is made; one that cannot be is refused at
    start, naming its variable (every job failed INTERNAL_ERROR, the service ready)."""
    scratch, cache = tmp_path / "a" / "scratch", tmp_path / "b" / "cache"
    made = settings.model_copy(
        update={
            "worker": settings.worker.model_copy(
                update={"scratch_dir": str(scratch), "input_cache_dir": str(cache)}
            )
        }
    )
    prepare_directories(made)
    assert scratch.is_dir()
    assert cache.is_dir()
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    refused = settings.model_copy(
        update={"worker": settings.worker.model_copy(update={"input_cache_dir": str(blocker / "cache")})}
    )
    with pytest.raises(RuntimeError, match=r"MEDIALENS_WORKER_INPUT_CACHE_DIR=.* cannot be made"):
        prepare_directories(refused)


async def test_a_stop_sends_a_delivery_back_once(
    settings: Settings, database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A delivery that comes while a service stops goes back to the queue once, after the consumer is
    cancelled: sent back at once while the consumer still stood, it came straight back, to go back again
    (an auditor counted two returns of one message in one stop; each counts against the queue's delivery
    limit of 5). The consumer's cancel is held 1 s here, while messages keep coming."""
    from medialens_shared import worker

    cancel = worker.stop_consuming

    async def held(subscriber: Any, **options: Any) -> None:
        await asyncio.sleep(1.0)
        await cancel(subscriber, **options)

    async def probe(_ctx: JobContext) -> VideoProbeResult:
        return PROBE

    monkeypatch.setattr(worker, "stop_consuming", held)
    own = isolated(settings, shutdown_grace_s=2.0, http_port=free_port(), concurrency=1)
    async with running(own, {"video.probe": probe}) as service:

        async def feed() -> None:  # messages of no job: acked at once while the service runs
            while True:
                message = JobMessage(
                    job_id=f"nojob-{uuid.uuid4().hex}", type="video.probe", tenant_id="t", file_id=None
                )
                await publish_job(
                    service.publisher,
                    service.topology,
                    job_type="video.probe",
                    payload=message.model_dump(mode="json"),
                    message_id=message.job_id,
                    timeout=5,
                )
                await asyncio.sleep(0.01)

        feeding = asyncio.create_task(feed())
        await asyncio.sleep(0.3)
        service.stop.set()
        assert await asyncio.wait_for(service.service, 30) == 0
        feeding.cancel()
        (fed,) = await asyncio.gather(feeding, return_exceptions=True)
        assert isinstance(fed, asyncio.CancelledError), fed  # it fed until cancelled
    connection = await aio_pika.connect(own.rabbitmq.url.get_secret_value())
    try:
        queue = Topology(own).work_queue("video").name
        left = await (await connection.channel()).declare_queue(queue, passive=True)
        counts = []
        while (message := await left.get(no_ack=True, fail=False)) is not None:
            counts.append(int(message.headers.get("x-delivery-count", 0) or 0))
    finally:
        await connection.close()
    assert counts, "no delivery came while the service stopped"
    assert max(counts) <= 1, counts
