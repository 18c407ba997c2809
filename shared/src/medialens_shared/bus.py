"""The message bus on RabbitMQ, through FastStream's RabbitBroker (aio-pika underneath).

Topology, declared by whoever connects first (all declarations are idempotent):

    exchange  <prefix>            topic, durable   jobs, routed by "<service>.<job type>"
    queue     <prefix>.<service>  quorum, durable  bound to "<service>.#", with x-delivery-limit; its dead
                                                   letters go to the DLX as "<service>.dead"
    exchange  <prefix>.dlx        topic, durable
    queue     <prefix>.dead       quorum, durable  bound to "#": every dead letter, for an operator to read
    queue     <prefix>.dead.watch quorum, durable  bound to "#": the same letters, for the relay to mark their
                                                   jobs failed
    exchange  <prefix>.delay.<N>s fanout, durable  one per delay tier (outbox.DELAY_TIERS_S)
    queue     <prefix>.delay.<N>s classic, durable x-message-ttl N s, dead-letters to <prefix>: a retry waits
                                                   here, then reaches its service with its routing key kept

Messages are persistent, published with publisher confirms and `mandatory`, with `on_return_raises`
so an unroutable message is an error, never a silent drop, and every publish has a timeout. Without
tracing, a job's publish goes from the broker's channel straight to aiormq (`_publish_direct` says why).

Two FastStream details shape this module (both checked against RabbitMQ 3.10): its `ping()` only looks at
the client's connection flag, so health checks and consumer counts use a passive declare, on a channel of
their own (`_probe_channel` says why); and a subscriber binds one routing key, which the "<service>.#"
pattern makes enough.

The relay and the services connect through `Connector`, which tells a broker that is away (waited out) from
one that refuses the process's login or virtual host (`refusal`), which no wait mends.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import unquote, urlsplit

import aiormq
from aio_pika.exceptions import CONNECTION_EXCEPTIONS
from faststream.rabbit import Channel, ExchangeType, QueueType, RabbitBroker, RabbitExchange, RabbitQueue
from faststream.rabbit.opentelemetry import RabbitTelemetryMiddleware

from medialens_shared.aio import answered
from medialens_shared.contracts import JOB_TYPES
from medialens_shared.outbox import DELAY_TIERS_S
from medialens_shared.settings import Settings
from medialens_shared.telemetry import tracing_on

if TYPE_CHECKING:
    from faststream.rabbit.utils import RabbitClientProperties

log = logging.getLogger(__name__)

#: AMQP's delivery mode of a message the broker writes to disk.
PERSISTENT = 2
#: Seconds between two attempts to connect (or reconnect) to RabbitMQ.
RECONNECT_S = 1.0
#: Seconds an attempt to connect (TCP, TLS and AMQP's handshake) may take: a broker that accepts the
#: connection and then falls silent fails the attempt, which is tried again, rather than holding it for ever.
CONNECT_TIMEOUT_S = 10.0
#: Seconds a process's broker may take to close at its stop (`close_broker`) when it runs no jobs (the
#: relay, the gateway): enough for a broker that answers, a bound for one fallen silent.
BROKER_CLOSE_S = 5.0
#: The exit code of a process that RabbitMQ kept refusing (its login or its virtual host): sysexits'
#: EX_CONFIG, a cause its settings or the broker's users and vhosts must mend, not a restart alone.
EXIT_REFUSED = 78


@dataclass(frozen=True, slots=True)
class QueueStats:
    messages: int
    consumers: int


class Topology:
    """Names and declarations of the exchanges and queues, derived from the settings."""

    def __init__(self, settings: Settings) -> None:
        rabbit = settings.rabbitmq
        self.delivery_limit = rabbit.delivery_limit
        self.jobs = RabbitExchange(rabbit.exchange, type=ExchangeType.TOPIC, durable=True)
        self.dlx = RabbitExchange(f"{rabbit.exchange}.dlx", type=ExchangeType.TOPIC, durable=True)
        self.dead = RabbitQueue(
            f"{rabbit.exchange}.dead", queue_type=QueueType.QUORUM, durable=True, routing_key="#"
        )
        self.dead_watch = RabbitQueue(
            f"{rabbit.exchange}.dead.watch", queue_type=QueueType.QUORUM, durable=True, routing_key="#"
        )

    def delay_exchange(self, delay_s: int) -> RabbitExchange:
        return RabbitExchange(f"{self.jobs.name}.delay.{delay_s}s", type=ExchangeType.FANOUT, durable=True)

    def delay_queue(self, delay_s: int) -> RabbitQueue:
        return RabbitQueue(
            f"{self.jobs.name}.delay.{delay_s}s",
            durable=True,
            arguments={"x-message-ttl": delay_s * 1000, "x-dead-letter-exchange": self.jobs.name},
        )

    def work_queue(self, service: str) -> RabbitQueue:
        return RabbitQueue(
            f"{self.jobs.name}.{service}",
            queue_type=QueueType.QUORUM,
            durable=True,
            routing_key=f"{service}.#",
            arguments={
                "x-delivery-limit": self.delivery_limit,
                "x-dead-letter-exchange": self.dlx.name,
                "x-dead-letter-routing-key": f"{service}.dead",
            },
        )

    @staticmethod
    def routing_key(job_type: str) -> str:
        """The routing key of a job type: its service's name first, so one binding per queue suffices."""
        return f"{JOB_TYPES[job_type].service}.{job_type}"


def make_broker(settings: Settings, *, name: str, fail_fast: bool = False) -> RabbitBroker:
    """A broker whose publishes are confirmed and whose unroutable messages raise.

    Its connect waits for RabbitMQ however long it is away, unless `fail_fast`: then a first connect that
    fails raises, for `Connector` to try again knowing why. Once connected, the client restores a lost
    connection by itself either way.
    """
    return RabbitBroker(
        settings.rabbitmq.url.get_secret_value(),
        default_channel=Channel(publisher_confirms=True, on_return_raises=True),
        # aio-pika passes every client property on; FastStream's TypedDict only lists a few of them.
        client_properties=cast("RabbitClientProperties", {"connection_name": f"medialens-{name}"}),
        reconnect_interval=RECONNECT_S,
        timeout=CONNECT_TIMEOUT_S,
        graceful_timeout=settings.worker.shutdown_grace_s,
        app_id=f"medialens-{name}",
        fail_fast=fail_fast,
        # A span per publish and per consume, the W3C trace context in the headers; only when tracing is
        # configured (otherwise its per-message work yields nothing).
        middlewares=(RabbitTelemetryMiddleware(),) if tracing_on() else (),
        # FastStream's own lines go through the process's logging (JSON lines in production), not the
        # coloured text handler of its default logger; its "Received"/"Processed" per message are debug
        # lines, as every job's start and end are logged with its id already.
        logger=log,
        log_level=logging.DEBUG,
    )


class BrokerRefused(ConnectionError):
    """RabbitMQ refuses this process's login or virtual host; the message (`refusal`'s) says which."""


def refusal(exc: BaseException, *, url: str) -> str | None:
    """One sentence saying how RabbitMQ refused to let `url`'s user in, naming the user and the virtual host
    (never the password), when `exc` is such a refusal; None for any other failure (the broker away...).

    What the client raises (aiormq 7.2 against RabbitMQ 3.10): for a wrong password or an unknown user,
    `ProbableAuthenticationError` ("ACCESS_REFUSED - Login was refused using authentication mechanism
    PLAIN...", the broker's 403, which names no user); for a virtual host that does not exist, or that the
    user has no permissions on, `InvalidFrameError` ("Expected one of ['Connection.OpenOk'], got
    <Connection.Close object at 0x...>"): the broker answers the handshake's `Connection.Open` with a close
    (530 NOT_ALLOWED), whose code and text, which tell the two apart, aiormq drops. Hence one sentence for
    both; the broker's log says which. The same close comes for a vhost's connection limit reached or a
    vhost that is recovering (541), which a wait mends: the sentence says so too.
    """
    parts = urlsplit(url)
    user = unquote(parts.username or "") or "guest"  # the client's login when the URL names none
    if isinstance(exc, aiormq.exceptions.ProbableAuthenticationError):
        return (
            f"RabbitMQ refused the login of user {user!r}: a wrong password or no such user "
            "(check MEDIALENS_RABBITMQ_URL)"
        )
    text = str(exc)
    opened = "Connection.OpenOk" in text and "Connection.Close" in text
    if isinstance(exc, aiormq.exceptions.InvalidFrameError) and opened:
        vhost = unquote(parts.path[1:]) or "/"
        return (
            f"RabbitMQ refused to open virtual host {vhost!r} for user {user!r}: it does not exist or "
            "the user has no permissions on it (create it or grant them, or fix MEDIALENS_RABBITMQ_URL), "
            "unless the broker's log says it refuses connections to it for now (a connection limit, the "
            "vhost recovering)"
        )
    return None


class Connector:
    """Connects a broker made with `fail_fast=True`, one attempt every `retry_s` for as long as it takes, and
    knows whether RabbitMQ is away or refuses this process (`refused`).

    Why not the client's own patience (`fail_fast=False`): its loop keeps each failure to itself (a warning
    an attempt), so that a process could not tell a broker that is away, which it waits out, from one that
    refuses its login or virtual host, which no wait mends; and a connect abandoned while it loops leaves
    the loop running (it outlives a cancel, and kept `asyncio.run` from returning). Here each attempt ends
    with its failure, which comes back, and the warning is logged once a distinct cause.

    Only the connection a process starts with is made here: once connected, the client restores a lost
    connection by itself, and a refusal then (a password rotated at the broker) reads as the broker away.
    """

    def __init__(self, broker: RabbitBroker, *, url: str, retry_s: float = RECONNECT_S) -> None:
        self.broker = broker
        self.url = url
        self.retry_s = retry_s
        #: `refusal`'s sentence while every attempt since `_refused_since` was refused; else None.
        self.refused: str | None = None
        self._refused_since = 0.0

    async def start(self, *, give_up_after_s: float | None = None) -> None:
        """`connect`, then start the broker (its subscribers)."""
        await self.connect(give_up_after_s=give_up_after_s)
        await self.broker.start()

    async def connect(self, *, give_up_after_s: float | None = None) -> None:
        """Connect, trying again after each failure; with `give_up_after_s`, raise `BrokerRefused` once
        RabbitMQ has refused every attempt for that long (a broker away, or one attempt that got in, starts
        the count again)."""
        cause: str | None = None
        while True:
            try:
                await self._attempt()
            except CONNECTION_EXCEPTIONS as exc:
                why = refusal(exc, url=self.url)
                now = time.monotonic()
                if why != self.refused:
                    self._refused_since = now
                self.refused = why
                # The type for any other failure: an attempt's text may change each time (an address).
                if (why or type(exc).__name__) != cause:
                    cause = why or type(exc).__name__
                    log.warning(
                        "not connected to RabbitMQ: %s; trying again every %.0f s, saying so again only "
                        "if the cause changes",
                        why or exc,
                        self.retry_s,
                    )
                refused_s = now - self._refused_since
                if why is not None and give_up_after_s is not None and refused_s >= give_up_after_s:
                    raise BrokerRefused(why) from exc
                await asyncio.sleep(self.retry_s)
            else:
                self.refused = None
                if cause is not None:
                    log.info("connected to RabbitMQ")
                return

    async def _attempt(self) -> None:
        """One attempt to connect, which a cancel (a stop while it runs) lets end before it passes on.

        The client's attempt runs in a task of its own, which ends the attempt once it has an outcome; a
        cancel of the connect reaches only the future it waits on, and the task then goes on attempting
        every second for ever, with no broker holding the connection to stop it: it kept `asyncio.run` from
        returning and was destroyed pending in the tests. So the attempt is shielded, and a cancel waits for
        its outcome (bounded by `CONNECT_TIMEOUT_S`): a connection it made is the broker's, which its stop
        closes.
        """
        attempt = asyncio.ensure_future(self.broker.connect())
        try:
            await asyncio.shield(attempt)
        except asyncio.CancelledError:
            await asyncio.wait({attempt}, timeout=CONNECT_TIMEOUT_S + RECONNECT_S)
            if attempt.done() and not attempt.cancelled():
                attempt.exception()  # its failure is no news now: retrieved, so that none is reported
            raise


async def close_broker(broker: RabbitBroker, *, timeout_s: float = BROKER_CLOSE_S) -> None:
    """Stop consuming, wait (within `timeout_s`) for the running handlers (a service's jobs), close the
    connection.

    Bounded, and never raising: cancelling a consumer over a dead connection would wait forever or fail,
    and what follows (handing back unfinished jobs, closing the pools) must still happen.
    """
    try:
        async with asyncio.timeout(timeout_s):
            await broker.stop()
    except TimeoutError:
        log.warning("the broker connection did not close in time; closing it without waiting for the broker")
        await _give_up_connection(broker)
    except Exception as exc:  # e.g. an ExceptionGroup of consumers that could not be cancelled
        log.warning("closing the broker connection failed: %s", exc)
        await _give_up_connection(broker)


#: Seconds a connection given up on may take to close (it is not reconnected either way).
GIVE_UP_CLOSE_S = 1.0


async def _give_up_connection(broker: RabbitBroker) -> None:
    """Close the connection of a broker whose stop did not finish, so that its client never reconnects it.

    FastStream's stop closes the connection last, after its subscribers and its channel: when one of those
    hangs (a broker fallen silent) or fails, the connection stays robust, and once the network comes back
    or the socket breaks, aio-pika reconnects it and restores its consumers, in a service that has stopped.
    A process exits after, which ends it; `run()` in another program (the tests) kept it for good. aio-pika
    marks the connection closed and stops its reconnecting before it says goodbye to the broker, which may
    not answer: that wait is bounded.
    """
    connection = broker._connection  # FastStream keeps aio-pika's robust connection there
    if connection is None:
        return
    with contextlib.suppress(Exception):
        async with asyncio.timeout(GIVE_UP_CLOSE_S):
            await connection.close()


async def declare(broker: RabbitBroker, topology: Topology, *, services: tuple[str, ...] = ()) -> None:
    """Declare the exchanges, the dead-letter queue and the work queues of `services` (idempotent)."""
    jobs = await broker.declare_exchange(topology.jobs)
    dlx = await broker.declare_exchange(topology.dlx)
    for letters in (topology.dead, topology.dead_watch):
        queue = await broker.declare_queue(letters)
        await queue.bind(dlx, routing_key="#")
    for delay_s in DELAY_TIERS_S:
        exchange = await broker.declare_exchange(topology.delay_exchange(delay_s))
        queue = await broker.declare_queue(topology.delay_queue(delay_s))
        await queue.bind(exchange)
    for service in services:
        queue = await broker.declare_queue(topology.work_queue(service))
        await queue.bind(jobs, routing_key=f"{service}.#")


async def publish_job(
    broker: RabbitBroker,
    topology: Topology,
    *,
    job_type: str,
    payload: dict[str, Any],
    message_id: str,
    timeout: float,
    headers: dict[str, Any] | None = None,
    delay_s: int = 0,
    dead: bool = False,
) -> None:
    """Publish one job message and wait for the broker's confirm; raises if it is not confirmed.

    With `delay_s` the message goes through that delay queue first; with `dead`, to the dead letters.
    """
    exchange = topology.jobs
    if dead:
        exchange = topology.dlx
    elif delay_s:
        exchange = topology.delay_exchange(delay_s)
    if tracing_on():
        # FastStream's telemetry middleware makes the publish span and carries the trace in the headers.
        await broker.publish(
            payload,
            exchange=exchange,
            routing_key=topology.routing_key(job_type),
            persist=True,
            mandatory=True,
            message_id=message_id,
            headers=headers or {},
            content_type="application/json",
            timeout=timeout,
        )
        return
    await _publish_direct(
        broker,
        exchange=exchange.name,
        routing_key=topology.routing_key(job_type),
        body=json.dumps(payload, separators=(",", ":")).encode(),
        message_id=message_id,
        headers=headers or {},
        timeout=timeout,
    )


async def _publish_direct(
    broker: RabbitBroker,
    *,
    exchange: str,
    routing_key: str,
    body: bytes,
    message_id: str,
    headers: dict[str, Any],
    timeout: float,
) -> None:
    """`publish_job`'s publish without tracing: on the broker's own channel (the same confirms and
    `on_return_raises`), handed straight to aiormq, under aio-pika, with the properties FastStream sets.

    Why not `broker.publish`: its layers (FastStream's publish path and aio-pika's `Message` and
    `Exchange.publish`) cost more CPU than the publish itself; measured on 5,000 confirmed publishes, 100
    at a time: 320-340 µs of CPU each through `broker.publish`, 180-200 µs here, and the relay publishes
    every job's message (`bench.platform`'s pipeline and POST saturation, where it shares the cores
    with the gateway).
    """
    channel = await (await broker.config.channel_manager.get_channel()).get_underlay_channel()
    properties = aiormq.spec.Basic.Properties(
        content_type="application/json",
        delivery_mode=PERSISTENT,
        headers=headers,
        message_id=message_id,
        correlation_id=message_id,
        timestamp=datetime.now(UTC),
        app_id=broker.config.app_id,
    )
    # `wait=False`: the frame is not awaited onto the socket before the confirm is: the confirm says more.
    confirmation = await channel.basic_publish(
        body,
        exchange=exchange,
        routing_key=routing_key,
        properties=properties,
        mandatory=True,  # unroutable: the channel's on_return_raises makes it a PublishError
        timeout=timeout,
        wait=False,
    )
    if not isinstance(confirmation, aiormq.spec.Basic.Ack):
        raise aiormq.exceptions.DeliveryError(None, confirmation)


@contextlib.asynccontextmanager
async def _probe_channel(broker: RabbitBroker) -> AsyncIterator[aiormq.abc.AbstractChannel]:
    """A channel of its own on `broker`'s connection for one passive declare, closed after it.

    Not the broker's channel: RabbitMQ answers a passive declare of what does not exist (a queue no service
    has declared yet, the exchange before the relay declared it) by closing the channel it was asked on,
    and so does a call given up on. On the broker's channel that was the one the relay declares and
    publishes on: a relay that started before the services sampled their queue, the 404 closed its
    channel, and its start, declaring on it, failed and stopped the relay (a first deployment, or a test
    machine slow enough, restarted it over and over)."""
    connection = broker._connection  # FastStream keeps aio-pika's robust connection there
    transport = None if connection is None else connection.transport
    if transport is None:
        raise ConnectionError("not connected to RabbitMQ")
    channel = await transport.connection.channel(publisher_confirms=False)
    try:
        yield channel
    finally:
        if not channel.is_closed:
            await channel.close()


async def queue_stats(broker: RabbitBroker, queue: str) -> QueueStats:
    """Messages and consumers of `queue` as the broker counts them (a passive declare, a round trip);
    `aiormq.exceptions.ChannelNotFoundEntity` when no one has declared it yet."""
    async with _probe_channel(broker) as channel:
        declared = await channel.queue_declare(queue, passive=True)
    return QueueStats(messages=declared.message_count or 0, consumers=declared.consumer_count or 0)


async def ping(broker: RabbitBroker, topology: Topology) -> None:
    """A round trip to the broker: a passive declare of the jobs exchange."""
    if not await broker.ping(timeout=1.0):
        raise ConnectionError("not connected to RabbitMQ")
    async with _probe_channel(broker) as channel:
        # Not `wait_for`: a cancelled call closes its channel (its own, here, all the same).
        await answered(channel.exchange_declare(topology.jobs.name, passive=True), 2.0)
