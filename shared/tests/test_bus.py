"""The RabbitMQ topology, confirmed publishing and pings, on this run's real vhost."""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import aio_pika
import aiormq
import pytest
from faststream.rabbit import RabbitBroker
from pydantic import SecretStr

from medialens_shared import bus, metrics
from medialens_shared.bus import (
    BrokerRefused,
    Connector,
    QueueStats,
    Topology,
    declare,
    make_broker,
    ping,
    publish_job,
    queue_stats,
    refusal,
)
from medialens_shared.db import DatabaseManager
from medialens_shared.settings import Settings
from medialens_shared.telemetry import tracing_on
from tests.fixtures.proxy import TcpProxy
from tests.fixtures.servers import SERVERS, unreachable

pytestmark = pytest.mark.integration


def isolated(settings: Settings, **rabbit: object) -> Settings:
    """The settings with an exchange (hence queues) of this test's own, so nothing else consumes them."""
    update = {"exchange": f"bustest-{uuid.uuid4().hex[:10]}", **rabbit}
    return settings.model_copy(update={"rabbitmq": settings.rabbitmq.model_copy(update=update)})


@pytest.fixture
def bus_settings(settings: Settings) -> Settings:
    return isolated(settings)


@pytest.fixture
async def broker(bus_settings: Settings) -> AsyncIterator[RabbitBroker]:
    broker = make_broker(bus_settings, name="bus-tests")
    await broker.connect()
    yield broker
    await broker.stop()


async def wait_for_messages(broker: RabbitBroker, queue: str, count: int, timeout: float = 5.0) -> QueueStats:
    deadline = time.monotonic() + timeout
    stats = await queue_stats(broker, queue)
    while stats.messages != count and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
        stats = await queue_stats(broker, queue)
    return stats


async def test_declare_creates_quorum_queues_with_delivery_limit_and_dlx(
    broker: RabbitBroker, bus_settings: Settings, rabbit_vhost: str
) -> None:
    """declare makes a quorum work queue with x-delivery-limit and a DLX, plus a quorum dead queue."""
    topology = Topology(bus_settings)
    await declare(broker, topology, services=("video", "data"))
    await declare(broker, topology, services=("video",))  # idempotent
    exchange = bus_settings.rabbitmq.exchange
    queues = await asyncio.to_thread(SERVERS.admin.queues, rabbit_vhost)
    kind, arguments = queues[f"{exchange}.video"]
    assert kind == "quorum"
    assert arguments["x-delivery-limit"] == bus_settings.rabbitmq.delivery_limit
    assert arguments["x-dead-letter-exchange"] == f"{exchange}.dlx"
    assert arguments["x-dead-letter-routing-key"] == "video.dead"
    assert queues[f"{exchange}.data"][0] == "quorum"
    assert queues[f"{exchange}.dead"][0] == "quorum"
    assert f"{exchange}.audio" not in queues
    assert await queue_stats(broker, f"{exchange}.video") == QueueStats(messages=0, consumers=0)


async def test_a_look_at_what_is_not_declared_yet_leaves_the_brokers_channel_working(
    broker: RabbitBroker, bus_settings: Settings
) -> None:
    """RabbitMQ answers a passive declare of a queue or exchange that does not exist (a service not started
    yet, the relay before its declarations) by closing the channel it was asked on. The broker's own
    channel stays open through such looks: declaring and publishing on it still work (they failed, "channel
    closed", and a relay started before the services stopped at its start)."""
    topology = Topology(bus_settings)
    with pytest.raises(aiormq.exceptions.ChannelNotFoundEntity):
        await queue_stats(broker, f"{bus_settings.rabbitmq.exchange}.video")
    with pytest.raises(aiormq.exceptions.ChannelNotFoundEntity):
        await ping(broker, topology)
    await declare(broker, topology, services=("video",))
    await publish_job(
        broker, topology, job_type="video.probe", payload={"job_id": "after"}, message_id="after", timeout=5.0
    )
    await ping(broker, topology)
    stats = await wait_for_messages(broker, f"{bus_settings.rabbitmq.exchange}.video", 1)
    assert stats == QueueStats(messages=1, consumers=0)


async def test_a_backlog_sample_leaves_out_the_queues_not_declared_yet(
    broker: RabbitBroker, bus_settings: Settings, db: DatabaseManager
) -> None:
    """The relay's sample of the queues gives the depth of those declared and no series for one whose
    service has not started yet (the whole sample failed, every queue's series dropped)."""
    topology = Topology(bus_settings)
    await declare(broker, topology, services=("video",))
    await metrics.sample_backlog(broker=broker, topology=topology, db=db, services=("video", "audio"))
    exchange = bus_settings.rabbitmq.exchange
    exported = {
        sample.labels["queue"]: sample.value
        for sample in metrics.QUEUE_MESSAGES.collect()[0].samples
        if sample.labels["queue"].startswith(f"{exchange}.")
    }
    assert exported == {f"{exchange}.video": 0.0, f"{exchange}.dead": 0.0}


async def test_a_message_requeued_past_the_delivery_limit_is_dead_lettered(
    broker: RabbitBroker, bus_settings: Settings
) -> None:
    """On the real broker: a message that every consumer hands back (nack, requeue) is delivered at most
    `delivery_limit` + 1 times, then goes to the dead letters, and its work queue is empty: "nothing loops
    forever" is the queue's arguments at work, not only their presence."""
    topology = Topology(bus_settings)
    await declare(broker, topology, services=("video",))
    limit = bus_settings.rabbitmq.delivery_limit
    work, dead = f"{bus_settings.rabbitmq.exchange}.video", topology.dead.name
    await publish_job(
        broker, topology, job_type="video.probe", payload={"job_id": "loops"}, message_id="loops", timeout=5.0
    )
    url = bus_settings.rabbitmq.url.get_secret_value()
    connection = await aio_pika.connect(url)
    deliveries = 0
    try:
        channel = await connection.channel()
        queue = await channel.get_queue(work, ensure=False)
        deadline = time.monotonic() + 30
        while (await queue_stats(broker, dead)).messages == 0:
            assert time.monotonic() < deadline, f"not dead-lettered after {deliveries} deliveries"
            message = await queue.get(no_ack=False, fail=False, timeout=5)
            if message is None:
                await asyncio.sleep(0.05)
                continue
            deliveries += 1
            await message.nack(requeue=True)
    finally:
        await connection.close()
    assert deliveries == limit + 1
    assert (await queue_stats(broker, work)).messages == 0


async def test_publish_job_lands_in_the_service_queue(broker: RabbitBroker, bus_settings: Settings) -> None:
    """A confirmed publish of a video job is counted in the video queue and nowhere else."""
    topology = Topology(bus_settings)
    await declare(broker, topology, services=("video", "audio"))
    for number in range(3):
        await publish_job(
            broker, topology, job_type="video.probe", payload={"job_id": f"j{number}"},
            message_id=f"j{number}", timeout=5.0, headers={"attempt": 1},
        )  # fmt: skip
    exchange = bus_settings.rabbitmq.exchange
    assert (await wait_for_messages(broker, f"{exchange}.video", 3)).messages == 3
    assert (await queue_stats(broker, f"{exchange}.audio")).messages == 0
    assert Topology.routing_key("audio.probe") == "audio.audio.probe"


async def test_an_unroutable_job_raises_instead_of_vanishing(
    broker: RabbitBroker, bus_settings: Settings
) -> None:
    """Publishing a job type whose service has no bound queue raises rather than dropping the message."""
    topology = Topology(bus_settings)
    await declare(broker, topology, services=("video",))
    with pytest.raises(Exception, match=r"(?i)NO_ROUTE|unroutable|returned") as caught:
        await publish_job(
            broker,
            topology,
            job_type="data.profile",
            payload={"job_id": "lost"},
            message_id="lost",
            timeout=5.0,
        )
    assert not isinstance(caught.value, TimeoutError)


async def test_a_job_message_carries_its_body_and_properties(
    broker: RabbitBroker, bus_settings: Settings
) -> None:
    """What a consumer reads of a published job: the payload as JSON, persistent, with its message id,
    headers, content type and the publishing program's app id."""
    topology = Topology(bus_settings)
    await declare(broker, topology, services=("audio",))
    payload = {"job_id": "j1", "type": "audio.probe", "params": {"channels": [1, 2]}, "note": "é"}
    await publish_job(
        broker, topology, job_type="audio.probe", payload=payload, message_id="outbox-7",
        timeout=5.0, headers={"attempt": 2, "traceparent": "00-ab-cd-01"},
    )  # fmt: skip
    channel = await broker.config.channel_manager.get_channel()
    queue = await channel.get_queue(f"{bus_settings.rabbitmq.exchange}.audio", ensure=False)
    message = await queue.get(timeout=5.0)
    await message.ack()
    assert json.loads(message.body) == payload
    assert message.content_type == "application/json"
    assert message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
    assert message.message_id == "outbox-7"
    assert message.app_id == "medialens-bus-tests"
    # (and the quorum queue's own x-delivery-count)
    assert message.headers["attempt"] == 2
    # The trace context as given, or, once this test process traces (the stack's tests configure tracing
    # for the session, so it depends on the order the tests run in), the publish span's own.
    assert message.headers["traceparent"] == "00-ab-cd-01" or tracing_on()
    assert str(message.headers["traceparent"]).startswith("00-")
    assert message.routing_key == "audio.audio.probe"


async def test_a_publish_the_broker_refuses_raises(broker: RabbitBroker, bus_settings: Settings) -> None:
    """A publish the broker nacks (here a full queue that rejects new messages) raises, so the relay keeps
    its outbox entry for another try."""
    topology = Topology(bus_settings)
    await declare(broker, topology)
    channel = await broker.config.channel_manager.get_channel()
    full = await channel.declare_queue(
        f"{bus_settings.rabbitmq.exchange}.full",
        auto_delete=True,
        arguments={"x-max-length": 0, "x-overflow": "reject-publish"},
    )
    await full.bind(bus_settings.rabbitmq.exchange, routing_key="audio.#")
    with pytest.raises(aiormq.exceptions.DeliveryError):
        await publish_job(
            broker, topology, job_type="audio.probe", payload={"job_id": "j"}, message_id="j", timeout=5.0
        )


async def test_ping_succeeds_on_a_connected_broker(broker: RabbitBroker, bus_settings: Settings) -> None:
    """ping round-trips to the broker once the exchange exists."""
    topology = Topology(bus_settings)
    await declare(broker, topology)
    await ping(broker, topology)


async def test_ping_fails_when_the_exchange_is_missing(broker: RabbitBroker, bus_settings: Settings) -> None:
    """ping is a real round trip: a passive declare of an exchange never declared fails."""
    with pytest.raises(Exception, match="NOT_FOUND"):
        await ping(broker, Topology(bus_settings))


async def test_ping_fails_against_a_closed_port(bus_settings: Settings) -> None:
    """A broker whose URL points at a closed port fails its ping with ConnectionError."""
    settings = unreachable(bus_settings, "rabbitmq")
    broker = make_broker(settings, name="nowhere")
    with pytest.raises(ConnectionError, match="not connected to RabbitMQ"):
        await ping(broker, Topology(settings))


#: A password RabbitMQ refuses, which no log line may show.
WRONG_PASSWORD = "not-the-password"


def refused_url(settings: Settings, refused: str) -> str:
    """This run's broker URL with the wrong password (`refused` "login") or a virtual host that does not
    exist ("vhost")."""
    url = settings.rabbitmq.url.get_secret_value()
    if refused == "login":
        return url.replace("guest:guest@", f"guest:{WRONG_PASSWORD}@")
    return f"{url.rsplit('/', 1)[0]}/no-such-vhost-{uuid.uuid4().hex[:8]}"


async def connect_error(url: str) -> Exception:
    """What the client raises when it connects to `url`."""
    with pytest.raises(Exception) as caught:  # noqa: PT011 - finding out what it raises is the point
        await aio_pika.connect(url, timeout=10)
    assert isinstance(caught.value, Exception)
    return caught.value


async def test_a_refused_login_is_named_with_its_user_and_never_its_password(bus_settings: Settings) -> None:
    """A wrong password is the client's ProbableAuthenticationError (ACCESS_REFUSED); `refusal` makes it a
    sentence that names the user and the setting to check, and not the password."""
    url = refused_url(bus_settings, "login")
    error = await connect_error(url)
    assert isinstance(error, aiormq.exceptions.ProbableAuthenticationError), repr(error)
    why = refusal(error, url=url)
    assert why is not None
    assert "refused the login of user 'guest'" in why
    assert "MEDIALENS_RABBITMQ_URL" in why
    assert WRONG_PASSWORD not in why


async def test_a_missing_vhost_is_named_rather_than_an_unexpected_frame(bus_settings: Settings) -> None:
    """A virtual host that does not exist is the client's InvalidFrameError "Expected ... Connection.OpenOk,
    got <Connection.Close ...>"; `refusal` says which virtual host, for which user, it refused."""
    url = refused_url(bus_settings, "vhost")
    vhost = url.rsplit("/", 1)[1]
    error = await connect_error(url)
    assert isinstance(error, aiormq.exceptions.InvalidFrameError), repr(error)
    assert "Connection.OpenOk" in str(error)
    why = refusal(error, url=url)
    assert why is not None
    assert f"refused to open virtual host '{vhost}' for user 'guest'" in why
    assert "MEDIALENS_RABBITMQ_URL" in why


async def test_a_broker_away_is_no_refusal(bus_settings: Settings) -> None:
    """Nothing listening (connection refused by the host, not by RabbitMQ) is no refusal: it is waited out."""
    url = unreachable(bus_settings, "rabbitmq").rabbitmq.url.get_secret_value()
    assert refusal(await connect_error(url), url=url) is None


@pytest.mark.parametrize("refused", ["login", "vhost"])
async def test_the_connector_gives_up_on_a_broker_that_keeps_refusing(
    bus_settings: Settings, refused: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A broker that refuses every attempt for `give_up_after_s`: `connect` raises BrokerRefused saying why,
    after one warning however many attempts it made."""
    caplog.set_level(logging.INFO, logger="medialens_shared.bus")
    url = refused_url(bus_settings, refused)
    settings = isolated(bus_settings, url=SecretStr(url))
    broker = make_broker(settings, name="refused-tests", fail_fast=True)
    connector = Connector(broker, url=url, retry_s=0.2)
    started = time.monotonic()
    with pytest.raises(BrokerRefused, match="RabbitMQ refused") as refusal_raised:
        await asyncio.wait_for(connector.connect(give_up_after_s=1.0), timeout=10)
    assert 1.0 <= time.monotonic() - started < 5
    assert connector.refused == str(refusal_raised.value)
    warnings = [
        r.getMessage()
        for r in caplog.records
        if r.name == "medialens_shared.bus" and "RabbitMQ" in r.getMessage()
    ]
    assert len(warnings) == 1, warnings
    assert str(refusal_raised.value) in warnings[0]
    assert WRONG_PASSWORD not in caplog.text
    await broker.stop()


async def test_the_connector_waits_out_a_broker_that_is_away(
    bus_settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    """A broker away is no refusal: `connect` keeps trying, past any `give_up_after_s`, with one warning."""
    caplog.set_level(logging.INFO, logger="medialens_shared.bus")
    settings = unreachable(bus_settings, "rabbitmq")
    broker = make_broker(settings, name="away-tests", fail_fast=True)
    connector = Connector(broker, url=settings.rabbitmq.url.get_secret_value(), retry_s=0.1)
    connecting = asyncio.create_task(connector.connect(give_up_after_s=0.2))
    await asyncio.sleep(1.0)
    assert not connecting.done()
    assert connector.refused is None
    connecting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await connecting
    port = str(urlsplit(settings.rabbitmq.url.get_secret_value()).port)
    said = [r.getMessage() for r in caplog.records if r.name == "medialens_shared.bus"]
    assert len([message for message in said if port in message]) == 1, said  # others: the stack's
    await broker.stop()


async def test_a_connect_cancelled_mid_attempt_leaves_nothing_running(
    bus_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stop while an attempt waits on a silent broker (connection open, no byte through): the cancel
    lets the attempt end (its connect timeout) and nothing of it runs on. Before, the client's connecting
    task went on trying every second for ever, no broker holding the connection to stop it (it kept
    `asyncio.run` from returning, and a test failed on it destroyed pending)."""
    monkeypatch.setattr(bus, "CONNECT_TIMEOUT_S", 1.0)
    target = urlsplit(bus_settings.rabbitmq.url.get_secret_value())
    proxy = TcpProxy(target.hostname or "127.0.0.1", target.port or 5672)
    await proxy.start()
    proxy.blackhole()
    url = target._replace(netloc=f"{target.username}:{target.password}@127.0.0.1:{proxy.port}").geturl()
    settings = isolated(bus_settings, url=SecretStr(url))
    broker = make_broker(settings, name="cancelled-tests", fail_fast=True)
    connector = Connector(broker, url=url, retry_s=0.2)
    # Other tests' connections (a session's stack) have theirs, waiting to restore a lost connection.
    others = {task for task in asyncio.all_tasks() if "connection_factory" in repr(task)}
    try:
        connecting = asyncio.create_task(connector.connect())
        await asyncio.sleep(0.3)  # the attempt waits on the silent broker's handshake
        connecting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(connecting, 5)
        await asyncio.sleep(1.5)  # what a left attempt would do: fail at its timeout, and go on
        leftover = [task for task in asyncio.all_tasks() - others if "connection_factory" in repr(task)]
        assert leftover == []
    finally:
        await broker.stop()
        await proxy.restore()
        await proxy.cut()
