"""Run one analysis service: its pools, its queue's consumer, and a clean stop on SIGTERM or SIGINT.

Every service's entry point is `serve("<name>", handlers)`. The consumer hands each delivery to the task
base (`medialens_shared.tasks`), which settles it by its policy, with manual acknowledgement: a delivery
is acked once its job's claim is stored, never before.

The client's view of a consumer is not enough: the process may believe it consumes while the broker has
dropped its channel or cancelled its consumer. `ConsumerWatch` asks the broker, on the consumer's own
channel, every `consumer_check_s`; readiness fails while it cannot confirm, and a process whose consumer
stays gone for `consumer_lost_s` (aio-pika's own recovery did not bring it back) stops like on SIGTERM and
exits with `EXIT_CONSUMER_LOST`, so that its orchestrator starts a fresh one (crash-only: a restart is the
one recovery that needs no knowledge of what went wrong). When what kept it from consuming was RabbitMQ
refusing its login or virtual host as it started (`bus.refusal`, `bus.Connector`), its last line names that
cause and it exits with `bus.EXIT_REFUSED` (78) instead: a restart alone will not mend it. (A refusal once
connected, when the client's own reconnecting meets it, reads as the broker away.)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import aiormq
import svcs
from faststream import AckPolicy
from faststream.rabbit import Channel, RabbitBroker, RabbitQueue
from faststream.rabbit.annotations import RabbitMessage
from faststream.rabbit.subscriber.usecase import RabbitSubscriber

from medialens_shared.aio import unawaited, wait_set
from medialens_shared.bus import (
    EXIT_REFUSED,
    BrokerRefused,
    Connector,
    Topology,
    close_broker,
    declare,
    make_broker,
)
from medialens_shared.db import Check, DatabaseManager, timed_check
from medialens_shared.filestore import FileStore
from medialens_shared.logs import configure_logging
from medialens_shared.memtrim import MemoryTrimmer, frozen_startup_heap
from medialens_shared.opsserver import ops_app, serving
from medialens_shared.registry import register_core
from medialens_shared.settings import Settings, load_settings
from medialens_shared.signals import JobSignals
from medialens_shared.tasks import Handler, JobRunner
from medialens_shared.telemetry import configure_tracing

log = logging.getLogger(__name__)

#: The exit code of a service whose consumer was lost and did not come back (EX_TEMPFAIL: start again).
EXIT_CONSUMER_LOST = 75
#: Seconds, beyond the shutdown grace, that closing the broker connection may take before it is left.
BROKER_STOP_MARGIN_S = 10.0


class ConsumerWatch:
    """Whether this process's consumer is attached to its queue as the broker sees it.

    `check` proves three things: the subscriber holds a consumer tag, a channel of the live connection
    carries that tag (aiormq drops it when the broker sends basic.cancel, and the client restores it with
    the same tag on a new channel after a reconnect), and that very channel answers a round trip (a passive
    declare of the queue, which also yields the broker's consumer count). A channel the broker closed or a
    connection that silently died fails the round trip. The broker's count alone would not do: with
    several replicas, another process's consumer keeps it above zero.
    """

    def __init__(
        self,
        broker: RabbitBroker,
        subscriber: RabbitSubscriber,
        queue: str,
        *,
        timeout_s: float,
        connector: Connector | None = None,
    ) -> None:
        self.broker = broker
        self.subscriber = subscriber
        self.queue = queue
        self.timeout_s = timeout_s
        #: What connects the broker: while RabbitMQ refuses this process, a check names that cause.
        self.connector = connector
        #: Set when the consumer stayed gone for the allowed time; the process then exits.
        self.lost = False
        #: Set with `lost` when RabbitMQ refusing this process's login or virtual host was why.
        self.refused = False
        self._probe: asyncio.Future[aiormq.spec.Queue.DeclareOk] | None = None

    @property
    def exit_code(self) -> int:
        """The process's exit code: 0 unless this watch stopped it."""
        if self.refused:
            return EXIT_REFUSED
        return EXIT_CONSUMER_LOST if self.lost else 0

    def consuming_channel(self) -> aiormq.Channel:
        """The open channel of the live connection that carries this process's consumer."""
        # FastStream keeps the connection and the consumer tag privately; there is no public accessor.
        tag, connection = self.subscriber._consumer_tag, self.broker._connection
        if tag is None:
            raise ConnectionError("this service has no consumer on its queue")
        transport = connection.transport if connection is not None else None
        if transport is None or transport.connection.is_closed:
            raise ConnectionError("this service is not connected to RabbitMQ")
        for channel in tuple(transport.connection.channels.values()):
            if isinstance(channel, aiormq.Channel) and not channel.is_closed and tag in channel.consumers:
                return channel
        raise ConnectionError("no channel carries this service's consumer (cancelled, or not restored yet)")

    async def check(self) -> None:
        """Raise ConnectionError saying what is missing, unless the broker holds this process's consumer."""
        if self.connector is not None and self.connector.refused is not None:
            raise BrokerRefused(self.connector.refused)
        channel = self.consuming_channel()
        # The round trip is left running when it takes too long, never cancelled: aiormq closes a channel
        # whose call is cancelled, and a slow broker must not cost the consumer its channel.
        if self._probe is None or self._probe.done():
            self._probe = asyncio.ensure_future(channel.queue_declare(self.queue, passive=True))
            unawaited(self._probe)  # a round trip may end after its check gave up
        done, _ = await asyncio.wait({self._probe}, timeout=self.timeout_s)
        if not done:
            raise ConnectionError("the broker does not answer on this service's consumer channel")
        try:
            declared = self._probe.result()
        except aiormq.exceptions.AMQPError as exc:  # e.g. the queue is gone (the channel then reopens)
            raise ConnectionError(f"the broker refused the check on the consumer channel: {exc!r}") from exc
        if (declared.consumer_count or 0) < 1:
            raise ConnectionError(f"the broker counts no consumer on {self.queue}")

    async def watch(self, stop: asyncio.Event, *, every_s: float, lost_after_s: float) -> None:
        """Check every `every_s`; when the consumer stays gone `lost_after_s`, mark it lost and set `stop`."""
        failing_since: float | None = None
        while not stop.is_set():
            try:
                await self.check()
                problem = None
            except Exception as exc:  # any failure to confirm counts as "gone"
                problem = str(exc) or type(exc).__name__
                refused = isinstance(exc, BrokerRefused)
            now = time.monotonic()
            if problem is None:
                if failing_since is not None:
                    log.info("consumer confirmed by the broker again")
                failing_since = None
            elif failing_since is None:
                failing_since = now
                log.warning("consumer not confirmed by the broker: %s", problem)
            elif now - failing_since >= lost_after_s:
                log.error(
                    "consumer gone for %.0f s (%s): stopping, to start afresh", now - failing_since, problem
                )
                self.lost = True
                self.refused = refused
                stop.set()
                return
            # While failing, look every second: a consumer back for a moment between two outages is back,
            # and only one gone the whole time counts as lost.
            await wait_set(stop, every_s if failing_since is None else min(every_s, 1.0))


def prepare_directories(settings: Settings) -> None:
    """Make the scratch and input cache directories the settings name, or stop the start saying which one
    cannot be written (a missing one failed every job, INTERNAL_ERROR, with the service ready)."""
    for variable, directory in (
        ("MEDIALENS_WORKER_SCRATCH_DIR", settings.worker.scratch_dir),
        ("MEDIALENS_WORKER_INPUT_CACHE_DIR", settings.worker.input_cache_dir),
    ):
        if directory is None:
            continue
        try:
            Path(directory).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RuntimeError(f"{variable}={directory} cannot be made: {exc.strerror}") from exc
        if not os.access(directory, os.W_OK | os.X_OK):
            raise RuntimeError(f"{variable}={directory} is not writable by this process")


async def run(service: str, handlers: dict[str, Handler], *, settings: Settings, stop: asyncio.Event) -> int:
    """Consume `service`'s queue until `stop` is set, then finish or hand back the running job and close.

    Shutdown (SIGTERM): stop taking messages, give the running job `shutdown_grace_s` to finish, release
    the lease of what is still running (its job goes back to the queue at once), close every pool.
    Returns the process's exit code: 0, or EXIT_CONSUMER_LOST when the consumer watch stopped it
    (EXIT_REFUSED when RabbitMQ refusing this process's login or virtual host was why).
    """
    prepare_directories(settings)
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
        await runner.release_predecessors()
        broker = make_broker(settings, name=service, fail_fast=True)
        connector = Connector(broker, url=settings.rabbitmq.url.get_secret_value())
        topology = Topology(settings)
        queue = topology.work_queue(service)
        jobs = RunningJobs()
        #: Set once the consumer is cancelled at the broker, at shutdown: the deliveries waiting for a slot
        #: then go back to the queue, for another worker, instead of waiting out the drain.
        released = asyncio.Event()
        subscriber = subscribe(
            broker, topology, queue, runner, settings=settings, stop=stop, jobs=jobs, released=released
        )
        consumer = ConsumerWatch(
            broker, subscriber, queue.name, timeout_s=settings.gateway.health_timeout_s, connector=connector
        )
        declared = False

        async def rabbitmq() -> Check:
            async def check() -> None:
                if not declared:
                    raise ConnectionError(connector.refused or "this service is still declaring its queues")
                await consumer.check()

            return await timed_check(check, timeout=settings.gateway.health_timeout_s + 1)

        async def start() -> None:
            nonlocal declared
            await connector.start()
            await declare(broker, topology)
            declared = True

        worker = settings.worker
        async with serving(
            ops_app(db, {"rabbitmq": rabbitmq}), host=worker.http_host, port=worker.ops_port(service)
        ):
            # Watched from the first moment: a start that hangs (a broker that accepts the connection and
            # then falls silent) counts as a lost consumer too.
            watching = asyncio.create_task(
                consumer.watch(stop, every_s=worker.consumer_check_s, lost_after_s=worker.consumer_lost_s)
            )
            trimmer = MemoryTrimmer(lambda: runner.jobs_ended, interval_s=worker.memory_trim_s)
            trimming = asyncio.create_task(trimmer.run(stop))
            try:
                if await until_stopped(start(), stop):
                    log.info("%s service consuming %s", service, queue.name)
                    with frozen_startup_heap():
                        await stop.wait()
            finally:
                log.info("%s service stopping: finishing the running job", service)
                watching.cancel()
                trimming.cancel()
                await stop_consuming(subscriber)
                released.set()
                await close_broker(broker, timeout_s=worker.shutdown_grace_s + BROKER_STOP_MARGIN_S)
                if jobs:
                    log.info("%d jobs still running after the grace period: stopping them", len(jobs))
                await jobs.cancel()
                await _hand_back(runner)
        return consumer.exit_code


async def _hand_back(runner: JobRunner) -> None:
    """At shutdown: the jobs still running handed back to the queue, the kept inputs removed, whatever
    happens to the first (the database away: the reaper requeues them when their leases run out)."""
    try:
        await runner.release_unfinished()
    except Exception as exc:
        log.warning("running jobs not handed back (%s): the reaper requeues them after their leases", exc)
    finally:
        runner.inputs.clear()


def subscribe(
    broker: RabbitBroker,
    topology: Topology,
    queue: RabbitQueue,
    runner: JobRunner,
    *,
    settings: Settings,
    stop: asyncio.Event,
    jobs: RunningJobs,
    released: asyncio.Event,
) -> RabbitSubscriber:
    """The consumer of `queue`: each delivery goes to `runner`, at most `worker.concurrency` at once, in a
    task of `jobs`.

    A job's delivery is acked once its claim is stored, which frees its prefetch slot while the job still
    runs: the slots, not the prefetch, bound how many jobs run at once. A delivery waiting for a slot stays
    unacked, so the prefetch (by default one per slot) bounds how many wait (and other workers take the
    rest).
    """
    subscriber = broker.subscriber(
        queue,
        topology.jobs,
        ack_policy=AckPolicy.MANUAL,
        channel=Channel(prefetch_count=settings.rabbitmq.prefetch or settings.worker.concurrency),
    )
    slots = asyncio.Semaphore(settings.worker.concurrency)

    context = broker.context

    async def run_job(body: Any, message: RabbitMessage) -> None:
        try:
            # A delivery waiting for a slot gives it up once the consumer is cancelled at shutdown (not as
            # soon as `stop` is set: sent back while the consumer still stood, it would come straight back,
            # each return counted against the queue's delivery limit), and goes back for another worker.
            if await _take_slot(slots, released):
                try:
                    if not stop.is_set():
                        await runner.handle(body, message)
                finally:
                    slots.release()
                if stop.is_set() and not message.committed:
                    # A stopping service starts nothing new: the delivery goes back, once the consumer is
                    # cancelled (sent back before, it came straight back, to go back again: one stop could
                    # spend all five of its deliveries).
                    await released.wait()
        finally:  # whatever happened, the delivery is settled: an unsettled one blocks a prefetch slot
            if not message.committed:
                try:
                    await message.nack(requeue=True)
                except Exception as exc:  # its channel is gone, and the broker requeued it with it
                    log.debug("delivery not nacked (%s); its channel closed", exc)

    @subscriber
    async def on_job(body: Any) -> None:
        # The delivery is read from the broker's context, not declared as a `RabbitMessage` parameter:
        # FastDepends (3.0) resolves such a context parameter by calling its synchronous `use` in a worker
        # thread, a thread hop for every delivery (5-7% of a light job's CPU in a py-spy profile).
        message: RabbitMessage = context.get_local("message")
        # The job runs in a task of its own, which this callback waits for but cannot cancel: the broker
        # client cancels the callbacks of a connection that closes (a RabbitMQ restart, a network cut), and
        # a claimed job answers to its lease, not to its delivery. Cancelled with the callback, it was left
        # running until its lease ran out, then rerun as if its worker had died. At shutdown the broker's
        # stop waits for the callbacks (the grace period), then `RunningJobs.cancel` ends what is left.
        await asyncio.shield(jobs.start(run_job(body, message)))

    return subscriber


class RunningJobs:
    """The jobs a service runs, each in a task of its own (see `subscribe`)."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[None]] = set()

    def start(self, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def __len__(self) -> int:
        return len(self._tasks)

    async def cancel(self) -> None:
        """Cancel the jobs still running (after the grace period) and wait until they have ended."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


async def _take_slot(slots: asyncio.Semaphore, released: asyncio.Event) -> bool:
    """A slot, when one is free at once (the common case: no task is started for it) or frees up before
    `released` is set; whether one was taken."""
    if not slots.locked():
        await slots.acquire()  # free: returns without waiting
        return True
    return await until_stopped(slots.acquire(), released)


async def stop_consuming(subscriber: RabbitSubscriber, *, timeout_s: float = 5.0) -> None:
    """Cancel the subscriber's consumer at the broker (basic.cancel): no delivery comes after, and the ones
    it holds unacked can be sent back to the queue for other workers, while its running jobs go on.

    FastStream cancels the consumer only after its graceful wait for the running handlers, the whole drain
    (600 s for video); this reaches into its subscriber for the queue and tag (as `ConsumerWatch` does),
    and leaves it no tag to cancel again. Never raises: the broker away, the channel's close returns what
    it held.
    """
    queue, tag = subscriber._queue_obj, subscriber._consumer_tag
    if queue is None or tag is None:
        return
    try:
        async with asyncio.timeout(timeout_s):
            await queue.cancel(tag)
    except Exception as exc:
        log.warning("consumer not cancelled at the broker (%s); its deliveries go back when it closes", exc)
    else:
        subscriber._consumer_tag = None


async def until_stopped(work: Coroutine[Any, Any, object], stop: asyncio.Event) -> bool:
    """Run `work` unless `stop` is set first (then cancel it); whether `work` completed."""
    task = asyncio.ensure_future(work)
    stopping = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopping}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopping.cancel()
    if not task.done():
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        return False
    task.result()
    return True


def serve(service: str, handlers: dict[str, Handler]) -> None:
    """Process entry point: run until SIGTERM or SIGINT."""
    settings = load_settings(f"The MediaLens {service} service: runs its jobs from RabbitMQ.")
    configure_logging(settings, service=service)
    configure_tracing(service)

    async def main() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        code = await run(service, handlers, settings=settings, stop=stop)
        if code in (EXIT_CONSUMER_LOST, EXIT_REFUSED):
            # Pools are closed and leases handed back. A start given up amid a connection attempt (to a
            # broker that accepted it and fell silent) leaves aio-pika's connecting task behind, which
            # survives cancellation and would keep asyncio.run from ever returning.
            logging.shutdown()
            os._exit(code)
        return code

    sys.exit(asyncio.run(main()))
