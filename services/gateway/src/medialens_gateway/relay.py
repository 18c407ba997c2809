"""`medialens-relay`: publishes the outbox to RabbitMQ, with confirms, and marks what went out.

Each round takes a batch of unsent entries with `FOR UPDATE SKIP LOCKED` (so several relays share the work
and never publish one entry at the same time), publishes each and waits for the broker's confirm, and marks
the batch sent in the same transaction. A crash between the confirm and the commit publishes an entry
twice, which the consumers absorb (a duplicate of a claimed or finished job is skipped); an entry is never
lost. While the broker is away the entries wait and their `attempts` and `last_error` say why.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal

from faststream.rabbit import RabbitBroker
from sqlalchemy import func, select, update

from medialens_shared.bus import Topology, declare, make_broker, publish_job
from medialens_shared.contracts import SERVICES
from medialens_shared.db import DatabaseManager
from medialens_shared.logs import configure_logging
from medialens_shared.settings import Settings
from medialens_shared.tables import outbox

log = logging.getLogger(__name__)


class Relay:
    def __init__(self, *, settings: Settings, db: DatabaseManager, broker: RabbitBroker) -> None:
        self.settings = settings
        self.db = db
        self.broker = broker
        self.topology = Topology(settings)
        self._declared = False

    async def publish_batch(self) -> int:
        """Publish one batch of unsent entries; how many were sent."""
        if not self._declared:
            # Work queues exist before any worker starts, so no job is unroutable meanwhile.
            await declare(self.broker, self.topology, services=SERVICES)
            self._declared = True
        async with self.db.session() as session:
            rows = (
                await session.execute(
                    select(
                        outbox.c.id, outbox.c.job_id, outbox.c.routing_key, outbox.c.payload, outbox.c.headers
                    )
                    .where(outbox.c.sent_at.is_(None))
                    .order_by(outbox.c.id)
                    .limit(self.settings.relay.batch_size)
                    .with_for_update(skip_locked=True)
                )
            ).all()
            sent: list[int] = []
            for row in rows:
                try:
                    await publish_job(
                        self.broker,
                        self.topology,
                        job_type=row.routing_key,
                        payload=row.payload,
                        message_id=f"outbox-{row.id}",
                        headers=row.headers,
                        timeout=self.settings.rabbitmq.publish_timeout,
                    )
                except Exception as exc:
                    log.warning("outbox entry %s not published (%s); will retry", row.id, exc)
                    await session.execute(
                        update(outbox)
                        .where(outbox.c.id == row.id)
                        .values(attempts=outbox.c.attempts + 1, last_error=str(exc)[:500])
                    )
                    break  # keep order, and do not hammer a broker that just failed
                sent.append(row.id)
            if sent:
                await session.execute(update(outbox).where(outbox.c.id.in_(sent)).values(sent_at=func.now()))
            await session.commit()
        return len(sent)

    async def run(self, stop: asyncio.Event) -> None:
        delay = self.settings.relay.poll_interval_s
        while not stop.is_set():
            try:
                sent = await self.publish_batch()
            except Exception as exc:
                log.warning("relay round failed (%s); retrying", exc)
                self._declared = False
                sent = 0
            if sent >= self.settings.relay.batch_size:
                continue  # more may be waiting: no pause
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=delay)


async def run_relay(settings: Settings, stop: asyncio.Event) -> None:
    db = DatabaseManager(settings, name="relay")
    broker = make_broker(settings, name="relay")
    try:
        await db.initialize_all()
        await broker.connect()
        await Relay(settings=settings, db=db, broker=broker).run(stop)
    finally:
        await broker.stop()
        await db.close_all()


def main() -> None:
    settings = Settings()
    configure_logging(settings, service="relay")

    async def _main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await run_relay(settings, stop)

    asyncio.run(_main())


if __name__ == "__main__":
    main()
