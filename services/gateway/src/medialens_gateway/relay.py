"""`medialens-relay`: keeps the bus in step with PostgreSQL.

Five duties, each safe to run in several relays at once (and sent outbox entries deleted once past
`relay.sent_retention_s`, finished jobs with their results once past `relay.job_retention_s` when set):
- Outbox: each round takes a batch of unsent entries with `FOR UPDATE SKIP LOCKED`, publishes them with
  publisher confirms (pipelined, then awaited), and marks the confirmed ones sent in the same
  transaction. A crash between a confirm and the commit publishes an entry twice, which the consumers
  absorb (a duplicate of a claimed or finished job is skipped); an entry is never lost. While the broker is
  away the entries wait, and their `attempts` and `last_error` say why.
- Reaper: a running job whose lease ran out (its worker died, hung, or lost its database) is requeued
  through the outbox, its crash counted as an attempt; after `max_attempts` it fails with
  RETRIES_EXHAUSTED and its message goes to the dead letters, unless its result is stored (its worker died
  between the result's write and its success's commit): then it ends succeeded, as its rerun would.
- Backstop: a job still queued `relay.republish_after_s` (an hour) after it was queued is published again,
  in case its message was lost after the broker took it (a queue purged by hand, a dead-letter hop dropped).
- Dead letters: every message the broker dead-letters (past the delivery limit) marks its job failed with
  RETRIES_EXHAUSTED if it is still queued, or running with its lease run out, so nothing stays queued or
  running forever; a job running under a valid lease is left be (its own message was acked at its claim:
  the letter is a duplicate's), as is one that ended. A letter no job can be read from (a body a service
  rejected as unreadable) stays in the dead-letter queue for an operator (`medialens-deadletters list`).
- Webhooks: the deliveries owed to jobs' `callback_url`s are looked for at most once a poll interval and
  sent in the background (see `medialens_gateway.webhooks`).

The outbox is polled, and a gateway's Redis nudge after each submission ends the pause between polls, so
that an idle system publishes a new job within milliseconds. Why not PostgreSQL's LISTEN/NOTIFY: a
transaction that notifies takes a lock of the whole server before its commit and keeps it until after
(`PreCommit_Notify`, so that notifications queue in commit order): every submission's commit, its WAL
flush included, would run one at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from faststream import AckPolicy
from faststream.rabbit import RabbitBroker
from faststream.rabbit.annotations import RabbitMessage
from pydantic import ValidationError
from sqlalchemy import Row, Select, delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from medialens_gateway.webhooks import Dispatcher
from medialens_shared import jobstore, metrics, outbox
from medialens_shared.aio import answered, wait_set
from medialens_shared.bus import (
    EXIT_REFUSED,
    BrokerRefused,
    Connector,
    Topology,
    close_broker,
    declare,
    make_broker,
    ping,
    publish_job,
)
from medialens_shared.contracts import SERVICES, TERMINAL_STATUSES, JobMessage, JobStatus, job_types_of
from medialens_shared.db import Check, DatabaseManager, timed_check
from medialens_shared.errors import RetriesExhausted
from medialens_shared.filestore import FileStore, mark_deleted
from medialens_shared.logs import configure_logging
from medialens_shared.memtrim import frozen_startup_heap
from medialens_shared.opsserver import ops_app, serving
from medialens_shared.settings import Settings, load_settings
from medialens_shared.signals import JobSignals, follow
from medialens_shared.tables import files, jobs, webhook_deliveries
from medialens_shared.tables import outbox as outbox_table
from medialens_shared.tasks import stored_results, succeed_stored
from medialens_shared.telemetry import attached, configure_tracing

log = logging.getLogger(__name__)

#: Seconds before a dead letter whose job could not be failed (the database away) is tried again.
DEAD_LETTER_RETRY_S = 1.0

#: One round's entries: the oldest unsent, locked until the round commits, so that relays side by side take
#: different ones. The outbox round runs on a bare connection, its statements written out for asyncpg: a
#: session's unit of work and SQLAlchemy's compilation of `IN (...)` lists were a sixth of the relay's CPU.
_TAKE = """
SELECT id, routing_key, payload, headers, delay_s, dead FROM outbox
WHERE sent_at IS NULL ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED
"""
_SENT = "UPDATE outbox SET sent_at = now() WHERE id = ANY($1::bigint[])"
#: The entries the broker did not take, each with why.
_NOT_SENT = """
UPDATE outbox SET attempts = attempts + 1, last_error = failed.error
FROM unnest($1::bigint[], $2::text[]) AS failed (id, error) WHERE outbox.id = failed.id
"""

#: The composite job types: the gateway's, whose parts are published, not they.
COMPOSITE_TYPES = sorted(spec.name for spec in job_types_of("gateway"))

#: A finished job's statuses, as `ix_jobs_finished`'s predicate lists them.
FINISHED_STATUSES = sorted(status.value for status in TERMINAL_STATUSES)

#: The statuses of a webhook delivery not done yet: due, or being sent (or claimed by a relay that stopped
#: mid-send, to be sent again). A job owing one is not deleted (`finished_before`).
OWED_DELIVERIES = ("pending", "delivering")

#: Stale queued jobs one reaping round publishes again at most.
REPUBLISH_BATCH = 100

#: Sent outbox entries one reaping round deletes at most: at a few hundred jobs a second and a round every
#: 2 s, enough to keep up, and to catch up after a change of the retention, without one long statement.
PRUNE_BATCH = 5000

#: Finished jobs one reaping round deletes at most (with their parts): 500 a round every 2 s keeps up with
#: 250 jobs finishing a second, and a backlog (a retention just set) drains a batch at a time.
EXPIRE_BATCH = 500


@dataclass(frozen=True, slots=True)
class Published:
    """What one round of the relay did: entries the broker took, and entries it refused (left unsent)."""

    sent: int
    refused: int = 0

    @property
    def failing(self) -> bool:
        """Nothing went out and something was refused: the broker is away or refuses, not the outbox empty."""
        return not self.sent and self.refused > 0


def stale_queued(after_s: float) -> Select[Any]:
    """The ids of the oldest jobs still queued `after_s` after they were queued, locked (skipping those
    another relay holds). Its clauses imply the predicate of `ix_jobs_queued_since` (each composite type
    excluded by itself), so the look reads that index."""
    return (
        select(jobs.c.id)
        .where(
            jobs.c.status == JobStatus.QUEUED.value,
            *(jobs.c.type != name for name in COMPOSITE_TYPES),
            jobs.c.updated_at < func.now() - timedelta(seconds=after_s),
        )
        .order_by(jobs.c.updated_at)
        .limit(REPUBLISH_BATCH)
        .with_for_update(skip_locked=True)
    )


def finished_before(keep_s: float) -> Select[Any]:
    """The ids and types of the oldest jobs finished more than `keep_s` ago that are no part of another and
    owe no webhook still to send, locked (skipping those another relay holds). Its clauses imply the
    predicate of `ix_jobs_finished`, so the look reads that index."""
    owed = select(webhook_deliveries.c.id).where(
        webhook_deliveries.c.job_id == jobs.c.id, webhook_deliveries.c.status.in_(OWED_DELIVERIES)
    )
    return (
        select(jobs.c.id, jobs.c.type)
        .where(
            jobs.c.parent_id.is_(None),
            jobs.c.status.in_(FINISHED_STATUSES),
            jobs.c.finished_at < func.now() - timedelta(seconds=keep_s),
            ~owed.exists(),
        )
        .order_by(jobs.c.finished_at)
        .limit(EXPIRE_BATCH)
        .with_for_update(of=jobs, skip_locked=True)
    )


#: How long the reaper gives Redis to announce the jobs of one reap, all of them.
ANNOUNCE_TIMEOUT_S = 2.0


class Relay:
    def __init__(self, *, settings: Settings, db: DatabaseManager, broker: RabbitBroker) -> None:
        self.settings = settings
        self.db = db
        self.broker = broker
        self.topology = Topology(settings)
        self.signals = JobSignals(db.redis, prefix=settings.redis.prefix)
        self.webhooks = Dispatcher(settings=settings, db=db)
        self.store = FileStore(db.gridfs, db.gridfs_chunks)
        self._declared = False
        #: Why the last round failed, logged once: a broker away fails every round, five a second.
        self._failure: str | None = None

    async def publish_batch(self) -> Published:
        """Publish one batch of unsent entries: how many the broker took and how many it refused."""
        if not self._declared:
            # Work queues exist before any worker starts, so no job is unroutable meanwhile. Bounded as a
            # publish is: a broker fallen silent held the round (its reaping, and a stop) until the
            # connection's heartbeat gave up, minutes later.
            await answered(
                declare(self.broker, self.topology, services=SERVICES), self.settings.rabbitmq.publish_timeout
            )
            self._declared = True
        async with self.db.connection() as conn, conn.transaction():
            rows = await conn.fetch(_TAKE, self.settings.relay.batch_size)
            results = await asyncio.gather(*(self._publish(row) for row in rows), return_exceptions=True)
            sent = [row["id"] for row, failure in zip(rows, results, strict=True) if failure is None]
            failed = [(row["id"], failure) for row, failure in zip(rows, results, strict=True) if failure]
            if sent:
                await conn.execute(_SENT, sent)
            if failed:
                for entry_id, failure in failed:
                    log.warning("outbox entry %s not published (%s); will retry", entry_id, failure)
                await conn.execute(
                    _NOT_SENT, [entry_id for entry_id, _ in failed], [str(why)[:500] for _, why in failed]
                )
        return Published(sent=len(sent), refused=len(failed))

    async def prune(self) -> int:
        """Delete up to `PRUNE_BATCH` entries sent longer than `relay.sent_retention_s` ago (none if it is
        0); how many. Sent entries serve only the relay-lag figures and a look back at a job's message, and
        one is written for every job: kept forever, the table would grow with every job ever submitted."""
        keep_s = self.settings.relay.sent_retention_s
        if not keep_s:
            return 0
        expired = (
            select(outbox_table.c.id)
            .where(outbox_table.c.sent_at < func.now() - timedelta(seconds=keep_s))
            .limit(PRUNE_BATCH)
            .with_for_update(skip_locked=True)  # several relays prune side by side without waiting
        )
        async with self.db.session() as session:
            result = await session.execute(delete(outbox_table).where(outbox_table.c.id.in_(expired)))
            await session.commit()
        pruned: int = result.rowcount  # type: ignore[attr-defined]  # a CursorResult for a DELETE
        if pruned:
            log.debug("deleted %d outbox entries sent more than %.0f s ago", pruned, keep_s)
        return pruned

    async def republish_stale(self) -> int:
        """Publish again (through the outbox) up to `REPUBLISH_BATCH` jobs still queued
        `relay.republish_after_s` after they were last queued; how many.

        The outbox makes sure the broker took a job's message; this is the backstop for a message lost after
        that (a queue purged by hand, a delay queue's dead-letter hop the broker dropped, a queue lost with
        its node), which would otherwise leave its job queued for ever. A job waiting in a long backlog is
        published twice instead: its second delivery finds it taken and is skipped, as any duplicate is. The
        job's `updated_at` is set, so it is published again at most once a `republish_after_s`."""
        after_s = self.settings.relay.republish_after_s
        if not after_s:
            return 0
        touch = (
            update(jobs)
            .where(jobs.c.id.in_(stale_queued(after_s)))
            .values(updated_at=func.now())
            .returning(*jobs.c)
        )
        async with self.db.session() as session:
            rows = (await session.execute(touch)).mappings().all()
            if not rows:
                return 0
            for row in rows:
                await outbox.enqueue(session, jobstore.message_of(row))
            await session.commit()
        for row in rows:
            log.warning("job %s still queued %.0f s after it was queued: published again", row["id"], after_s)
            metrics.JOBS_REPUBLISHED.labels(row["type"]).inc()
        return len(rows)

    async def expire_jobs(self) -> int:
        """Delete up to `EXPIRE_BATCH` jobs finished longer than `relay.job_retention_s` ago (none if it is
        0), with their parts, their results and the files they made; how many (parts not counted).

        Job rows, results and made files are written for every job: kept for ever, they grow with every
        job ever run. The job rows stay locked while their results and files are deleted in MongoDB, and go
        last: a round cut short leaves them for the next one, which deletes what is left (a result or a
        file already gone is no error). Made files are found by their rows: the bytes of one whose row a
        dying worker never wrote stay in GridFS. Their idempotency keys and webhook deliveries go with them
        (ON DELETE CASCADE). A made file another job took as its input goes too: that job, if it has not
        run yet, fails with INPUT_NOT_FOUND, as after a `DELETE /v1/files/{id}`."""
        keep_s = self.settings.relay.job_retention_s
        if not keep_s:
            return 0
        async with self.db.session() as session:
            expired = (await session.execute(finished_before(keep_s))).all()
            if not expired:
                return 0
            roots = [job_id for job_id, _ in expired]
            parts = (
                await session.scalars(
                    select(jobs.c.id).where(jobs.c.parent_id.in_(roots)).with_for_update(of=jobs)
                )
            ).all()
            ids = [*roots, *parts]
            made = (
                await session.execute(select(files.c.id, files.c.storage_id).where(files.c.job_id.in_(ids)))
            ).all()
            await self.db.collection("results").delete_many({"_id": {"$in": ids}})
            await self._drop_files(session, made)
            await session.execute(delete(jobs).where(jobs.c.id.in_(ids)))
            await session.commit()
        for _, job_type in expired:
            metrics.JOBS_EXPIRED.labels(job_type).inc()
        log.info(
            "deleted %d jobs finished over %.0f s ago, and %d files they made", len(ids), keep_s, len(made)
        )
        return len(roots)

    async def purge_deleted_files(self) -> int:
        """Remove up to `EXPIRE_BATCH` rows of files deleted (`DELETE /v1/files/{id}`) longer than
        `relay.job_retention_s` ago (none if it is 0); how many. Their bytes, dropped at the delete, are
        dropped again here (no error if gone), for a gateway that stopped between the two. A job that used
        such a file still names it; the file itself answers 404, as it did since its delete."""
        keep_s = self.settings.relay.job_retention_s
        if not keep_s:
            return 0
        old = (
            select(files.c.id, files.c.storage_id)
            .where(files.c.deleted_at < func.now() - timedelta(seconds=keep_s))
            .order_by(files.c.deleted_at)
            .limit(EXPIRE_BATCH)
            .with_for_update(skip_locked=True)
        )
        async with self.db.session() as session:
            gone = (await session.execute(old)).all()
            await self._drop_files(session, gone)
            await session.commit()
        return len(gone)

    async def _drop_files(self, session: AsyncSession, rows: Sequence[Row[Any, Any]]) -> None:
        """The bytes of each (file id, storage id) in `rows` (none an error if gone), then their file rows, in
        `session`'s transaction: a round cut short leaves the rows, which the next round finds again."""
        for _, storage_id in rows:
            await self.store.delete(storage_id)
        if rows:
            await session.execute(delete(files).where(files.c.id.in_([file_id for file_id, _ in rows])))

    async def _publish(self, row: Any) -> None:
        # The publish span joins the trace of the request (or job) that wrote the entry.
        with attached(row["headers"]):
            await publish_job(
                self.broker,
                self.topology,
                job_type=row["routing_key"],
                payload=row["payload"],
                message_id=f"outbox-{row['id']}",
                headers=dict(row["headers"]),
                delay_s=row["delay_s"],
                dead=row["dead"],
                timeout=self.settings.rabbitmq.publish_timeout,
            )

    async def reap(self) -> int:
        """Requeue (or give up on, or finish) running jobs whose lease ran out; how many.

        A job at its last attempt is looked for in the results first (one look for the round's, and only
        when there are such jobs: requeueing needs no MongoDB): one whose result is stored ends succeeded,
        its files kept (see `_reap_one`)."""
        expired = (
            select(jobs.c.id, jobs.c.attempts)
            .where(jobs.c.status == JobStatus.RUNNING.value, jobs.c.lease_expires_at < func.now())
            .limit(100)
            .with_for_update(skip_locked=True)
        )
        announced: list[jobstore.JobRow] = []
        unnamed: list[str] = []
        async with self.db.session() as session:
            reaped = (await session.execute(expired)).all()
            job_ids = [job_id for job_id, _ in reaped]
            asked = await self.signals.cancels_asked(job_ids)
            bound = self.settings.worker.max_attempts
            spent = [job_id for job_id, attempts in reaped if attempts >= bound and job_id not in asked]
            stored = await stored_results(self.db, spent)
            for job_id in job_ids:
                row = await self._reap_one(
                    session, job_id=job_id, cancel_asked=job_id in asked, stored=job_id in stored
                )
                if row is not None:
                    announced.append(row)
                    if row["status"] in (JobStatus.FAILED.value, JobStatus.CANCELLED.value):
                        # Ended with no result: no rerun deletes what its dead attempt saved.
                        unnamed += await mark_deleted(session, files.c.job_id == job_id)
            await session.commit()
            await self._drop_bytes(unnamed)
            for row in announced:
                log.warning("job %s lost its worker; now %s", row["id"], row["status"])
                metrics.JOBS_REAPED.labels(row["type"], row["status"]).inc()
                if row["status"] == JobStatus.FAILED.value:
                    metrics.job_finished(
                        row["type"], JobStatus.FAILED, error_code=RetriesExhausted.error_code
                    )
                elif row["status"] == JobStatus.CANCELLED.value:
                    metrics.job_finished(row["type"], JobStatus.CANCELLED)
                elif row["status"] == JobStatus.SUCCEEDED.value:
                    metrics.job_finished(row["type"], JobStatus.SUCCEEDED)
            await self._announce_reaped(session, announced)
        return len(announced)

    async def _announce_reaped(self, session: Any, rows: list[jobstore.JobRow]) -> None:
        """Tell the reaped jobs' listeners, all within `ANNOUNCE_TIMEOUT_S`. Reaping needs only PostgreSQL:
        with Redis away the changes are stored all the same and only their listeners miss them (the first
        failed announcement ended the reap, the other jobs' counts and the round's pruning and republishing
        with it), and with Redis silent the round must not wait on each of them in turn (some 20 s each, a
        part's twice) while the outbox waits."""
        announced = 0
        try:
            async with asyncio.timeout(ANNOUNCE_TIMEOUT_S):
                for row in rows:
                    with contextlib.suppress(Exception):
                        await jobstore.announce(session, self.signals, row)
                        announced += 1
        except TimeoutError:
            pass
        if announced < len(rows):
            log.warning(
                "%d of %d reaped jobs' changes were not announced (Redis)", len(rows) - announced, len(rows)
            )

    async def _drop_bytes(self, storage_ids: Sequence[str]) -> None:
        """The stored bytes of files marked deleted (`filestore.mark_deleted`) when the reaper or a dead
        letter ended their job with no rerun: the attempt whose worker died could not delete what it saved.
        Best effort: what a failure leaves, the retention's `purge_deleted_files` drops with the rows."""
        for storage_id in storage_ids:
            try:
                await self.store.delete(storage_id)
            except Exception as exc:
                log.warning("the bytes of a deleted file (%s) stay for now (%s)", storage_id, exc)

    async def _reap_one(
        self, session: Any, *, job_id: str, cancel_asked: bool, stored: bool
    ) -> jobstore.JobRow | None:
        """One expired job's end or requeue. At its last attempt a job whose result is `stored` (its worker
        died between the result's write and its success's commit) ends succeeded, as its rerun would have
        ended it (`tasks.succeed_stored`: done, its webhook owed, its composite job moved), with no dead
        letter and its files kept, which its result names: it failed RETRIES_EXHAUSTED and they were deleted,
        its result left in MongoDB. Ended here rather than requeued once more past the bound: no attempt
        runs past it, and none can die in turn. MongoDB away (`stored_results` cannot tell): it fails, as
        before."""
        current = await jobstore.get(session, job_id=job_id)
        if current is None:
            return None
        if cancel_asked:
            # Asked to stop while its worker was gone: a rerun quick enough to finish before its first look
            # at the flag succeeded.
            return await jobstore.cancel_as_asked(session, job_id=job_id)
        if current["attempts"] >= self.settings.worker.max_attempts:
            if stored:
                return await succeed_stored(session, job_id=job_id)
            error = RetriesExhausted(
                f"gave up after {current['attempts']} attempts: its worker stopped each time (crash or hang)"
            )
            row = await jobstore.fail(session, job_id=job_id, error=error)
            await outbox.enqueue(session, jobstore.message_of(current), dead=True)
            return row
        # The rerun decodes in a child process (`worker_died`), so an input that crashes its decoder
        # cannot take down another worker: the first rerun may start at once, and the jobs that died beside
        # a crashing one lose no more time. A job that crashes its worker outside the decoding (the child
        # cannot help there) must not take the workers down in a tight loop: later reruns back off.
        attempts = current["attempts"]
        return await jobstore.requeue(
            session,
            job=current,
            message="requeued: its worker stopped heart-beating",
            delay_s=outbox.backoff_s(attempts) if attempts > 1 else 0,
            worker_died=True,
        )

    async def on_dead_letter(self, body: Any) -> None:
        """A message the broker gave up on: its job fails if it is still queued, or running with its lease
        run out (its worker gone, which the reaper would find too). A job running under a valid lease is
        left be: its worker acked its own message at the claim, so the letter is a duplicate's (the outbox
        publishing twice, the backstop's republish) and the claim, not the delivery, guards the job (such a
        job failed RETRIES_EXHAUSTED, its live worker's success thrown away and its files deleted). A job
        that already ended is left be too. One whose result is stored (its worker died between the result's
        write and its success's commit, and its rerun's message is the one given up on) ends succeeded, as
        that rerun would have ended it (it failed RETRIES_EXHAUSTED, the files its result names deleted);
        MongoDB away (`stored_results` cannot tell), it fails. One whose lease ran out and of which a cancel
        was asked ends cancelled, as the reaper ends it."""
        try:
            message = JobMessage.model_validate(body)
        except ValidationError:
            log.warning("an unreadable message was dead-lettered; it stays in the dead-letter queue")
            metrics.JOBS_DEAD_LETTERED.labels("unknown").inc()
            return
        metrics.JOBS_DEAD_LETTERED.labels(message.type).inc()
        error = RetriesExhausted("its message was dead-lettered after repeated failed deliveries")
        # Checked with the row's lock taken, in one statement (a lease a heartbeat extends meanwhile is
        # read after it commits): nothing can change the job between this check and its failure.
        failing = select(jobs.c.id).where(
            jobs.c.id == message.job_id,
            (jobs.c.status == JobStatus.QUEUED.value)
            | ((jobs.c.status == JobStatus.RUNNING.value) & (jobs.c.lease_expires_at < func.now())),
        )
        # Looked at first without the lock: most letters are a duplicate's, of a job running under its lease
        # or ended, which needs neither of the looks below.
        async with self.db.session() as session:
            if await session.scalar(failing) is None:
                _left_be(message)
                return
        # Both before the row's lock, each bounded (`CANCEL_FLAGS_TIMEOUT_S`, `STORED_LOOK_TIMEOUT_S`).
        asked = message.job_id in await self.signals.cancels_asked([message.job_id])
        stored = message.job_id in await stored_results(self.db, [message.job_id])
        async with self.db.session() as session:
            if await session.scalar(failing.with_for_update()) is None:
                await session.rollback()
                _left_be(message)
                return
            unnamed: list[str] = []
            row = await jobstore.cancel_as_asked(session, job_id=message.job_id) if asked else None
            if row is None and stored:
                row = await succeed_stored(
                    session, job_id=message.job_id, from_statuses=[JobStatus.QUEUED, JobStatus.RUNNING]
                )
            elif row is None:
                row = await jobstore.fail(
                    session,
                    job_id=message.job_id,
                    error=error,
                    from_statuses=[JobStatus.QUEUED, JobStatus.RUNNING],
                )
            if row is not None and row["status"] != JobStatus.SUCCEEDED.value:
                # Its dead attempt's files, if any: no rerun will delete them, and no result names them.
                unnamed = await mark_deleted(session, files.c.job_id == message.job_id)
            await session.commit()
            await self._drop_bytes(unnamed)
            if row is not None:
                status = JobStatus(row["status"])
                log.warning("job %s dead-lettered; marked %s", message.job_id, status.value)
                metrics.job_finished(message.type, status, error_code=row["error_code"])
                await jobstore.announce(session, self.signals, row)

    async def run(self, stop: asyncio.Event) -> None:
        """Rounds until `stop` is set. Between rounds the relay pauses, and a pause ends early when a
        gateway tells of a new outbox entry (`JobSignals.outbox_written`) or at `stop`: a job submitted to
        an idle system is published within milliseconds, not at the next poll."""
        wake = asyncio.Event()
        listening = asyncio.create_task(
            follow(
                self.db.redis,
                channel=self.signals.outbox_channel,
                on_message=lambda _channel, _data: wake.set(),
                what="outbox nudge",
            ),
            name="outbox-nudges",
        )
        stopping = asyncio.create_task(_set_when(stop, wake), name="relay-stop")
        expiring = asyncio.create_task(self._expire_rounds(stop), name="job-retention")
        try:
            await self._rounds(stop, wake)
        finally:
            for task in (listening, stopping, expiring):
                task.cancel()
            await asyncio.gather(listening, stopping, expiring, return_exceptions=True)
        await self.webhooks.drain()

    async def _expire_rounds(self, stop: asyncio.Event) -> None:
        """`expire_jobs` and `purge_deleted_files` once a reaping interval (at once again while a backlog
        lasts), beside the outbox's rounds rather than among them: they wait on MongoDB (results, files),
        which publishing does not need, so a MongoDB slow or away holds up no job's message."""
        relay = self.settings.relay
        if not relay.job_retention_s:
            return
        while not stop.is_set():
            try:
                expired = await self.expire_jobs()
                expired = max(expired, await self.purge_deleted_files())
            except Exception as exc:
                log.warning("deleting what is past its retention failed (%s); retrying", exc)
                expired = 0
            if expired < EXPIRE_BATCH:
                await wait_set(stop, relay.reap_interval_s)

    async def _rounds(self, stop: asyncio.Event, wake: asyncio.Event) -> None:
        relay = self.settings.relay
        next_reap = time.monotonic() + relay.reap_interval_s
        next_webhooks = 0.0
        while not stop.is_set():
            wake.clear()  # a nudge from now on may be for an entry this round does not see: another round
            if time.monotonic() >= next_webhooks:
                # In the background: a slow receiver must not hold up the outbox. At most every poll
                # interval, not every busy round: its look for due deliveries is a transaction of its own.
                next_webhooks = time.monotonic() + relay.poll_interval_s
                self.webhooks.kick()
            started = time.monotonic()
            try:
                published = await self.publish_batch()
                sent, failing = published.sent, published.failing
            except Exception as exc:
                self._round_failed(exc)
                self._declared = False
                sent, failing = 0, True
            else:
                if self._failure is not None:
                    log.info("relay rounds succeed again")
                    self._failure = None
            if time.monotonic() >= next_reap:
                # Whether or not the broker answers: reaping needs only the database, and the outbox lag
                # sampled here is what tells an operator that the broker is away.
                next_reap = time.monotonic() + relay.reap_interval_s
                for upkeep in (self.reap, self.prune, self.republish_stale):  # each whatever the others did
                    try:
                        await upkeep()
                    except Exception as exc:
                        log.warning("relay upkeep (%s) failed (%s); retrying", upkeep.__name__, exc)
                        failing = True
                await metrics.sample_backlog(
                    broker=self.broker, topology=self.topology, db=self.db, services=SERVICES
                )
            if sent >= relay.batch_size:
                continue  # more may be waiting: no pause
            if failing:
                # Nudges do not end this pause: while the broker or the database is away, submissions keep
                # coming, and each would start another failing round.
                await wait_set(stop, relay.poll_interval_s)
                continue
            # A round that published something is likely amid a burst of submissions: the next look comes
            # soon, so that a job waits a short pause for its publish rather than a whole poll interval.
            pause = relay.busy_poll_interval_s if sent else relay.poll_interval_s
            await wait_set(wake, pause)
            if sent:
                # However many gateway processes nudge, rounds that publish start at most once a nudge
                # interval: each is a transaction, and a round for every submission costs the most per job.
                await wait_set(stop, started + relay.nudge_interval_s - time.monotonic())

    def _round_failed(self, exc: Exception) -> None:
        """A warning for a round's failure unless the round before failed the same way (then a debug
        line): while RabbitMQ or PostgreSQL is away, rounds fail every poll interval, and the log said so
        each time."""
        why = str(exc) or type(exc).__name__
        if why == self._failure:
            log.debug("relay round failed (%s); retrying", why)
            return
        self._failure = why
        log.warning("relay round failed (%s); retrying, and saying so again only if the cause changes", why)


def _left_be(message: JobMessage) -> None:
    log.info(
        "job %s dead-lettered while running under a valid lease or after it ended: "
        "a duplicate's letter, the job left be",
        message.job_id,
    )


async def _set_when(done: asyncio.Event, then: asyncio.Event) -> None:
    await done.wait()
    then.set()


async def run_relay(settings: Settings, stop: asyncio.Event) -> int:
    """Run the relay until `stop` is set; the process's exit code: 0, or EXIT_REFUSED when RabbitMQ kept
    refusing its login or virtual host as it started (once connected, the client reconnects by itself, and
    a refusal then reads as the broker away).

    A broker that is away is waited out, however long: the relay's other duties need only the databases, it
    reconnects by itself, and the outbox-lag alert tells the outage. A broker that refuses the relay (a
    wrong password, a user or virtual host that does not exist or that it may not use) is another matter:
    before, the relay waited for it for ever too, its rounds logging five lines a second and nothing saying
    why. Now it gives up once every attempt for `worker.consumer_lost_s` (60 s) was refused, the window a
    service gives a lost broker before it exits, logs the refusal's cause (`bus.refusal`) and returns
    EX_CONFIG (78): the orchestrator restarts it (with backoff) as it restarts a service, and the exit code
    says that the settings or the broker's users and vhosts need mending, not the network. Not at once: a
    refusal is not always for good (a user or vhost that a provisioning job or operator makes after the
    pods start, a broker still loading its definitions, an authentication backend briefly away), and
    within the window it costs one attempt a second and one log line.
    """
    db = DatabaseManager(settings, name="relay")
    broker = make_broker(settings, name=f"relay-{socket.gethostname()}", fail_fast=True)
    connector = Connector(broker, url=settings.rabbitmq.url.get_secret_value())
    relay = Relay(settings=settings, db=db, broker=broker)
    topology = Topology(settings)

    @broker.subscriber(topology.dead_watch, topology.dlx, ack_policy=AckPolicy.MANUAL)
    async def on_dead_letter(body: Any, message: RabbitMessage) -> None:
        try:
            await relay.on_dead_letter(body)
        except Exception:
            # The database is away: this letter again after a pause (its queue has no delivery limit, so
            # an immediate requeue would come straight back, in a loop, for as long as the outage lasts).
            await asyncio.sleep(DEAD_LETTER_RETRY_S)
            await message.nack(requeue=True)
            raise
        await message.ack()

    async def rabbitmq() -> Check:
        async def check() -> None:
            if connector.refused is not None:
                raise BrokerRefused(connector.refused)
            await ping(broker, topology)

        return await timed_check(check, timeout=settings.gateway.health_timeout_s)

    give_up_after_s = settings.worker.consumer_lost_s

    # The broker starts in a task of its own: it waits for RabbitMQ for as long as it is away, and nothing
    # else here waits on it. The probes answer, the reaper and the retention rounds run (they need only the
    # databases), and publishing rounds fail and retry until the broker connects, as they do when it goes
    # away later. Awaiting the start instead left a relay started during a broker outage without probes
    # (killed by its startup probe, over and over), not reaping, and deaf to SIGTERM.
    # A start that fails (RabbitMQ refusing the relay for `give_up_after_s`, a bad declaration) stops the
    # relay: a refusal then returns EXIT_REFUSED, any other failure is raised, for the orchestrator to
    # restart it.
    starting: asyncio.Task[None] | None = None
    try:
        await db.initialize_all()
        starting = asyncio.create_task(
            connector.start(give_up_after_s=give_up_after_s), name="relay-broker-start"
        )
        starting.add_done_callback(lambda task: _stop_if_failed(task, stop, refused_for_s=give_up_after_s))
        ops = ops_app(db, {"rabbitmq": rabbitmq})
        async with serving(ops, host=settings.worker.http_host, port=settings.worker.ops_port("relay")):
            with frozen_startup_heap():
                await relay.run(stop)
        if starting.done() and not starting.cancelled() and (error := starting.exception()) is not None:
            if isinstance(error, BrokerRefused):
                return EXIT_REFUSED
            raise error
        return 0
    finally:
        if starting is not None and not starting.done():
            starting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await starting
        await close_broker(broker)
        await db.close_all()


def _stop_if_failed(task: asyncio.Task[None], stop: asyncio.Event, *, refused_for_s: float) -> None:
    if task.cancelled() or (error := task.exception()) is None:
        return
    if isinstance(error, BrokerRefused):  # said now: the stop (webhooks drained, pools closed) takes a while
        log.error("%s, for %.0f s: the relay stops (exit code %d)", error, refused_for_s, EXIT_REFUSED)
    stop.set()


def main() -> None:
    settings = load_settings(
        "The MediaLens relay: publishes the outbox, requeues the jobs of dead workers, sends webhooks."
    )
    configure_logging(settings, service="relay")
    configure_tracing("relay")

    async def _main() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        return await run_relay(settings, stop)

    sys.exit(asyncio.run(_main()))


if __name__ == "__main__":
    main()
