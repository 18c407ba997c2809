"""The Redis side of jobs: live progress, job events for listeners, and cancellation requests.

PostgreSQL keeps the truth about a job; Redis carries what changes many times a second or must reach a
listener at once. Keys live under the stack's prefix: `<prefix>:job:<id>:live` (a hash of progress,
message and the attempt that reported them), `<prefix>:job:<id>:cancel` (present once a cancel was asked
for) and the pub/sub channel `<prefix>:job:<id>:events`, on which every change of the job object is
published as JSON. The channel `<prefix>:outbox` wakes the relays when a submission has written an outbox
entry (`outbox_written`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable
from contextvars import Context
from typing import Any

from redis.asyncio import Redis
from redis.typing import EncodableT, FieldT

from medialens_shared.batching import Batcher

log = logging.getLogger(__name__)

#: How long the processes that end jobs whose worker is gone or going (the relay's reaper, a stopping
#: worker) wait for Redis to say which were asked to stop; their rows stay locked meanwhile.
CANCEL_FLAGS_TIMEOUT_S = 1.0

#: Live data outlives a job by a day: long enough for late readers, short enough not to pile up.
LIVE_TTL_S = 24 * 3600

#: How long a reader of jobs (the gateway) waits for their live progress before it shows the progress
#: their rows keep.
LIVE_READ_TIMEOUT_S = 0.5


class JobSignals:
    def __init__(self, redis: Redis, *, prefix: str, nudge_interval_s: float = 0.02) -> None:
        self.redis = redis
        self.prefix = prefix
        #: Announcements (channel, text) made while others are on their way go together in one round trip.
        self.announcements: Batcher[tuple[str, str], None] = Batcher(self._publish_all, max_items=100)
        self.nudge_interval_s = nudge_interval_s
        self._nudging: asyncio.Task[None] | None = None
        self._nudge_again = False

    @property
    def outbox_channel(self) -> str:
        """Where the relays hear of new outbox entries."""
        return f"{self.prefix}:outbox"

    def outbox_written(self) -> None:
        """Tell the relays that a committed outbox entry waits, so that one pausing between its looks
        publishes it now rather than at its next poll (up to `relay.poll_interval_s` later). The caller does
        not wait: the message goes out in the background. While one is on its way, or within
        `nudge_interval_s` after it, further calls make a single one more, after that: at most one round
        trip a nudge interval, however many submissions. A lost nudge costs only time: the relays poll."""
        nudging = self._nudging
        if nudging is None or nudging.done() or nudging.get_loop() is not asyncio.get_running_loop():
            # A context of its own: with tracing on, the PUBLISH is no part of the request that caused it.
            self._nudging = asyncio.create_task(self._nudge(), name="outbox-nudge", context=Context())
        else:
            self._nudge_again = True

    async def aclose(self) -> None:
        """Stop a nudge on its way or waiting for its interval (at shutdown, before the pools close)."""
        if self._nudging is not None and not self._nudging.done():
            self._nudging.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._nudging

    async def _nudge(self) -> None:
        while True:
            self._nudge_again = False
            try:
                await self.redis.publish(self.outbox_channel, b"")
            except Exception as exc:
                log.debug("outbox nudge not sent (%s); the relays' polls find the entry", exc)
                return
            await asyncio.sleep(self.nudge_interval_s)
            if not self._nudge_again:
                return

    def _key(self, job_id: str, what: str) -> str:
        return f"{self.prefix}:job:{job_id}:{what}"

    def channel(self, job_id: str) -> str:
        return self._key(job_id, "events")

    @property
    def all_channels(self) -> str:
        """The pattern matching every job's events channel (one subscription per gateway process)."""
        return self._key("*", "events")

    def job_id_of(self, channel: str) -> str:
        return channel.removeprefix(f"{self.prefix}:job:").removesuffix(":events")

    async def set_progress(self, job: dict[str, Any]) -> None:
        """Store the live progress and message of the job object `job` and publish it, in one round trip.
        The attempt they are of is stored with them (`attempt`, when the job object says): a rerun's row
        shows them only once its own attempt reported (`jobstore.job_view`)."""
        key = self._key(job["id"], "live")
        live: dict[FieldT, EncodableT] = {"progress": f"{job['progress']:.4f}", "message": job["message"]}
        if job.get("attempts") is not None:
            live["attempt"] = str(job["attempts"])
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hset(key, mapping=live)
            pipe.expire(key, LIVE_TTL_S)
            pipe.publish(self.channel(job["id"]), json.dumps(job))
            await pipe.execute()

    async def live(self, job_id: str) -> dict[str, str] | None:
        return _live_of(await self.redis.hgetall(self._key(job_id, "live")))

    async def lives(self, job_ids: list[str]) -> dict[str, dict[str, str]]:
        """The live progress of those of `job_ids` that have one, in one round trip; none when Redis does
        not answer within `LIVE_READ_TIMEOUT_S`: the progress is an overlay on the jobs' rows, which keep
        the truth, so a reader shows theirs (a running job read 503 with Redis away, and its event stream
        broke off without a word)."""
        if not job_ids:
            return {}
        try:
            async with asyncio.timeout(LIVE_READ_TIMEOUT_S):
                async with self.redis.pipeline(transaction=False) as pipe:
                    for job_id in job_ids:
                        pipe.hgetall(self._key(job_id, "live"))
                    found = await pipe.execute()
        except Exception as exc:
            log.warning("could not read the live progress of %d jobs (%s)", len(job_ids), exc)
            return {}
        return {job_id: live for job_id, raw in zip(job_ids, found, strict=True) if (live := _live_of(raw))}

    async def announce(self, job: dict[str, Any]) -> None:
        """Publish the job object to whoever follows this job (SSE streams), once it is published.

        A worker's concurrent jobs announce their starts and ends at about the same time; those made
        while another is on its way are published together, in order, in one pipeline (`batching`).
        """
        await self.announcements.submit((self.channel(job["id"]), json.dumps(job)))

    async def _publish_all(self, messages: list[tuple[str, str]]) -> list[None]:
        if len(messages) == 1:
            await self.redis.publish(*messages[0])
        else:
            async with self.redis.pipeline(transaction=False) as pipe:
                for channel, text in messages:
                    pipe.publish(channel, text)
                await pipe.execute()
        return [None] * len(messages)

    async def request_cancel(self, job_id: str) -> None:
        await self.redis.set(self._key(job_id, "cancel"), b"1", ex=LIVE_TTL_S)

    async def cancel_requested(self, job_id: str) -> bool:
        return bool(await self.redis.exists(self._key(job_id, "cancel")))

    async def cancels_requested(self, job_ids: list[str]) -> set[str]:
        """Which of `job_ids` a cancel was asked of, in one round trip."""
        if not job_ids:
            return set()
        async with self.redis.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                pipe.exists(self._key(job_id, "cancel"))
            found = await pipe.execute()
        return {job_id for job_id, exists in zip(job_ids, found, strict=True) if exists}

    async def cancels_asked(self, job_ids: list[str]) -> set[str]:
        """`cancels_requested` within `CANCEL_FLAGS_TIMEOUT_S`; none when Redis does not answer in time (the
        jobs are then handed back or requeued as if none was asked, and a rerun still hears its cancel)."""
        try:
            async with asyncio.timeout(CANCEL_FLAGS_TIMEOUT_S):
                return await self.cancels_requested(job_ids)
        except Exception as exc:
            log.warning("could not read the cancel flags of %d jobs (%s)", len(job_ids), exc)
            return set()


def _live_of(raw: dict[Any, Any]) -> dict[str, str] | None:
    """A job's live hash as Redis gives it (bytes or text), as text; None when it has none."""
    return {_text(k): _text(v) for k, v in raw.items()} or None


async def follow(
    redis: Redis,
    *,
    channel: str,
    on_message: Callable[[bytes | str, bytes | str], None],
    what: str,
    pattern: bool = False,
    ready: asyncio.Event | None = None,
) -> None:
    """Stay subscribed to `channel` (a pattern with `pattern`) until cancelled, calling `on_message(channel,
    data)` for each message: subscribed again after Redis restarts or the connection drops, backing off
    while Redis is away. `ready` is set once subscribed and cleared when the subscription is lost. A
    message that `on_message` fails on is logged and skipped. One connection of `redis`'s pool is held."""
    delay = 0.2
    kind = "pmessage" if pattern else "message"
    while True:
        pubsub = redis.pubsub()
        try:
            if pattern:
                await pubsub.psubscribe(channel)
            else:
                await pubsub.subscribe(channel)
            if ready is not None:
                ready.set()
            delay = 0.2
            async for message in pubsub.listen():
                if message["type"] != kind:
                    continue
                try:
                    on_message(message["channel"], message["data"])
                except Exception:
                    log.exception("%s message on %r not handled; skipped", what, message["channel"])
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if ready is not None:
                ready.clear()
            log.warning("%s subscription lost (%s); retrying in %.1f s", what, exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
        finally:
            with contextlib.suppress(Exception):
                await pubsub.aclose()  # type: ignore[no-untyped-call]


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
