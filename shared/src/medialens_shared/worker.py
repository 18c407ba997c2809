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

from medialens_shared.bus import Topology, declare, make_broker
from medialens_shared.db import DatabaseManager
from medialens_shared.filestore import FileStore
from medialens_shared.logs import configure_logging
from medialens_shared.registry import register_core
from medialens_shared.settings import Settings
from medialens_shared.signals import JobSignals
from medialens_shared.tasks import Handler, JobRunner

log = logging.getLogger(__name__)


async def run(service: str, handlers: dict[str, Handler], *, settings: Settings, stop: asyncio.Event) -> None:
    """Consume `service`'s queue until `stop` is set, then finish the running job and close everything."""
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
        subscriber = broker.subscriber(
            topology.work_queue(service),
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

        await broker.start()
        await declare(broker, topology)
        log.info("%s service consuming %s", service, topology.work_queue(service).name)
        try:
            await stop.wait()
        finally:
            log.info("%s service stopping: finishing the running job", service)
            await broker.stop()  # stops consuming, waits up to graceful_timeout for the running handler


def serve(service: str, handlers: dict[str, Handler]) -> None:
    """Process entry point: run until SIGTERM or SIGINT."""
    settings = Settings()
    configure_logging(settings, service=service)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await run(service, handlers, settings=settings, stop=stop)

    asyncio.run(main())
