"""Run one analysis service: its pools, its queue's consumer, and a clean stop on SIGTERM or SIGINT.

Every service's entry point is `serve("<name>", handlers)`. The consumer hands each delivery to the task
base (`medialens_shared.tasks`), which settles it by its policy, with manual acknowledgement: a delivery
is acked once its job's claim is stored, never before.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import Any

import svcs
from faststream import AckPolicy
from faststream.rabbit import Channel
from faststream.rabbit.annotations import RabbitMessage

from medialens_shared.bus import Topology, declare, make_broker, queue_stats
from medialens_shared.db import Check, DatabaseManager, timed_check
from medialens_shared.filestore import FileStore
from medialens_shared.logs import configure_logging
from medialens_shared.opsserver import ops_app, serving
from medialens_shared.registry import register_core
from medialens_shared.settings import Settings
from medialens_shared.signals import JobSignals
from medialens_shared.tasks import Handler, JobRunner
from medialens_shared.telemetry import configure_tracing

log = logging.getLogger(__name__)


async def run(service: str, handlers: dict[str, Handler], *, settings: Settings, stop: asyncio.Event) -> None:
    """Consume `service`'s queue until `stop` is set, then finish or hand back the running job and close.

    Shutdown (SIGTERM): stop taking messages, give the running job `shutdown_grace_s` to finish, release
    the lease of what is still running (its job goes back to the queue at once), close every pool.
    """
    async with svcs.Registry() as registry:
        db = DatabaseManager(settings, name=service)
        register_core(registry, settings=settings, db=db)
        await db.initialize_all()
        async with svcs.Container(registry) as services:
            runner = JobRunner(
                service=service,
                handlers=handlers,
                settings=settings,
                db=db,
                store=await services.aget(FileStore),
                signals=await services.aget(JobSignals),
            )
        broker = make_broker(settings, name=service)
        topology = Topology(settings)
        queue = topology.work_queue(service)
        subscriber = broker.subscriber(
            queue,
            topology.jobs,
            ack_policy=AckPolicy.MANUAL,
            channel=Channel(prefetch_count=settings.rabbitmq.prefetch),
        )

        @subscriber
        async def on_job(body: Any, message: RabbitMessage) -> None:
            try:
                await runner.handle(body, message)
            finally:  # whatever happened, the delivery is settled: an unsettled one blocks a prefetch slot
                if not message.committed:
                    await message.nack(requeue=True)

        async def consuming() -> None:
            # FastStream keeps the consumer tag privately; the broker's own count is the other half.
            if not await broker.ping(timeout=1.0):
                raise ConnectionError("this service is not connected to RabbitMQ")
            if subscriber._consumer_tag is None:
                raise ConnectionError("this service has no consumer on its queue")
            if (await queue_stats(broker, queue.name)).consumers < 1:
                raise ConnectionError(f"the broker counts no consumer on {queue.name}")

        async def rabbitmq() -> Check:
            return await timed_check(consuming, timeout=settings.gateway.health_timeout_s)

        worker = settings.worker
        async with serving(
            ops_app(db, {"rabbitmq": rabbitmq}), host=worker.http_host, port=worker.ops_port(service)
        ):
            await broker.start()
            await declare(broker, topology)
            log.info("%s service consuming %s", service, queue.name)
            try:
                await stop.wait()
            finally:
                log.info("%s service stopping: finishing the running job", service)
                await broker.stop()  # stops consuming; waits up to the grace period for the running job
                await runner.release_unfinished()


def serve(service: str, handlers: dict[str, Handler]) -> None:
    """Process entry point: run until SIGTERM or SIGINT."""
    settings = Settings()
    configure_logging(settings, service=service)
    configure_tracing(service)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await run(service, handlers, settings=settings, stop=stop)

    asyncio.run(main())
