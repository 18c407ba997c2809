"""The gateway's view of the bus: it never publishes (the relay does), but it reports whether RabbitMQ is
reachable, so readiness says so when it is not.
"""

from __future__ import annotations

import logging

from medialens_shared import bus
from medialens_shared.settings import Settings

log = logging.getLogger(__name__)


class GatewayBus:
    def __init__(self, settings: Settings) -> None:
        self.broker = bus.make_broker(settings, name="gateway")
        self.topology = bus.Topology(settings)

    async def connect(self) -> None:
        """Connect if RabbitMQ answers; if not, readiness reports it and the client keeps retrying."""
        try:
            await self.broker.connect()
        except Exception as exc:
            log.warning("RabbitMQ not reachable at start (%s); accepted jobs wait in the outbox", exc)

    async def ping(self) -> None:
        await bus.ping(self.broker, self.topology)

    async def close(self) -> None:
        await self.broker.stop()
