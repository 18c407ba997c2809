"""The gateway's view of the bus: it never publishes (the relay does), but it reports whether RabbitMQ is
reachable, so readiness says so when it is not.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from medialens_shared import bus
from medialens_shared.contracts import SERVICES
from medialens_shared.settings import Settings

log = logging.getLogger(__name__)

#: How long startup waits for a first connection before serving without one.
CONNECT_WAIT_S = 5.0


class GatewayBus:
    def __init__(self, settings: Settings) -> None:
        self.broker = bus.make_broker(settings, name="gateway")
        self.topology = bus.Topology(settings)
        self._connecting: asyncio.Task[None] | None = None

    async def connect(self) -> None:
        """Connect if RabbitMQ answers soon; if not, readiness reports it and the client keeps retrying.

        The broker retries a refused connection forever (`fail_fast=False`), so the connection is made in a
        task: awaiting it would hold the gateway's startup for as long as RabbitMQ is away.
        """
        self._connecting = asyncio.create_task(self._connect(), name="gateway-bus-connect")
        _, pending = await asyncio.wait({self._connecting}, timeout=CONNECT_WAIT_S)
        if pending:
            log.warning("RabbitMQ not reachable at start; accepted jobs wait in the outbox meanwhile")

    async def _connect(self) -> None:
        try:
            await self.broker.connect()
            # Declared here too (idempotent), so readiness does not wait for the relay's first round.
            await bus.declare(self.broker, self.topology, services=SERVICES)
        except Exception as exc:
            log.warning("RabbitMQ connection failed (%s); readiness reports it", exc)

    async def ping(self) -> None:
        await bus.ping(self.broker, self.topology)

    async def close(self) -> None:
        if self._connecting is not None and not self._connecting.done():
            self._connecting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._connecting
        await bus.close_broker(self.broker)
