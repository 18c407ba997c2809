"""The task base: what a job handler is given (`JobContext`) and the one policy that runs it (`JobRunner`).

A handler is a plain async function `(ctx) -> result model`. The context lets it report progress
(throttled, stored in Redis and published to listeners), check for cancellation (also from a worker
thread), run CPU-heavy work off the event loop that talks to RabbitMQ, log with the job's context, and
register cleanups. Its input file is already on the worker's disk, for reading only: the input cache's
kept copy itself, under the upload's name and pinned while the job runs (a file the cache cannot keep is
copied for the job alone and removed afterwards). A scratch directory is made for it the first time it
asks, and removed afterwards.

`JobRunner.handle` decides everything around the handler in one place:

    body unreadable                       -> delivery rejected (dead-lettered, where it stays for an
                                             operator: no job can be read from it to fail)
    database away while claiming          -> the claim tried again for 30 s (CLAIM_RETRY_PAUSES_S),
                                             then the delivery requeued (the delivery limit bounds it)
    job unknown, finished or claimed      -> delivery acked, nothing else (a duplicate changes nothing)
    claimed: queued -> running (CAS), with this worker's lease; THEN the delivery is acked, and the
    lease, extended by a heartbeat while the job runs, guards it: if the worker dies, the relay's reaper
    requeues the job when the lease runs out (the crash counted as an attempt). Then:
      result                              -> running -> succeeded, and the result upserted by job id while
                                             that change holds the row, before it commits
      PermanentJobError                   -> running -> failed with its error_code (a decoder that crashed
                                             its isolated rerun: MEDIA_DECODE_ERROR, message dead-lettered)
      JobCancelled (asked, or lease lost) -> running -> cancelled
      TransientJobError / a lost database -> running -> queued, and the message back through the outbox
                                             after an exponential backoff with jitter (a delay queue,
                                             never a sleep in the consumer); after max_attempts: failed
                                             with RETRIES_EXHAUSTED
      a full disk (`errors.disk_full`)    -> retried as a passing fault
      any other exception (a bug)         -> failed with INTERNAL_ERROR (a bug does not heal by retrying)

Each terminal change is a compare-and-set on (status running, this claim: this worker and this attempt),
so an attempt whose job was taken from it, by another worker or by this one claiming it again after the
lease ran out, cannot overwrite the new owner's outcome.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import re
import shutil
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, Protocol, TypeVar, cast

import asyncpg
import bson
from pydantic import BaseModel, ValidationError
from pymongo import UpdateOne
from pymongo.errors import ConnectionFailure as MongoConnectionFailure
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError
from sqlalchemy import ColumnElement, func, select, update
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import AsyncSession

from medialens_shared import isolation, jobstore, metrics, outbox
from medialens_shared.aio import unawaited
from medialens_shared.batching import Batcher
from medialens_shared.contracts import JOB_TYPES, JobMessage, JobStatus, ResultBase
from medialens_shared.db import DatabaseManager
from medialens_shared.envelope import utc_now
from medialens_shared.errors import (
    DiskFull,
    InputNotFound,
    InvalidParams,
    JobCancelled,
    JobTimeout,
    PermanentJobError,
    RetriesExhausted,
    TransientJobError,
    disk_full,
)
from medialens_shared.filestore import FileStore, file_row, mark_deleted
from medialens_shared.inputcache import InputCache
from medialens_shared.settings import Settings
from medialens_shared.signals import JobSignals
from medialens_shared.tables import files, jobs
from medialens_shared.telemetry import job_phase, untraced

log = logging.getLogger(__name__)

#: Pauses between tries to store a job's outcome through a database blip (3 s in all, within a lease).
FINISH_RETRY_PAUSES_S = (0.2, 0.4, 0.8, 1.6)

#: The field of a result document counting how often it was written (1, unless a job ran twice).
RESULT_WRITES = "writes"

#: The column of a claimed row that describes its input file (see `_INPUT_FILE`).
INPUT_FILE = "input_file"

#: The largest result document stored: MongoDB's limit on one document (16 MiB, `maxBsonObjectSize`),
#: less room for the fields the write adds (its counter). Analysers bound their own results (waveform
#: points, silences, query rows, profile texts); this catches what they did not foresee with a clear error,
#: before the attempt's files are kept and before a batch of other jobs' results is written with it.
DOCUMENT_MAX_MB = 16
RESULT_MAX_BYTES = DOCUMENT_MAX_MB * 1024 * 1024 - 1024

#: Bytes read from disk per chunk when a job stores a file it made.
ARTIFACT_CHUNK_BYTES = 1024 * 1024

#: Pauses between tries of a claim that meets a passing fault (the database away), the delivery held
#: meanwhile; then it is requeued. Not requeued at once: each requeue counts against the queue's delivery
#: limit, and a database restart of a few seconds dead-lettered the queue's backlog, its jobs failed
#: RETRIES_EXHAUSTED without having run. With these, a delivery outlasts 30 s of outage, five such
#: deliveries (the limit) two and a half minutes.
CLAIM_RETRY_PAUSES_S = (0.5, 1.0, 2.0, 4.0, 8.0, 8.0, 8.0)

#: Seconds between two looks for a cancel asked through the API (the API promises a stop within 2 s).
CANCEL_LOOK_S = 0.5

#: Seconds a job given up (its time limit, a shutdown) waits for its `run_cpu` work to see that and stop:
#: analysers report at least every 2 s of media.
CPU_STOP_S = 5.0
#: The largest input a light job's work (`JobContext.run_cpu(..., light=True)`) runs on the event loop for:
#: counting the packets of 4 MiB of MP3 takes about 20 ms.
LIGHT_INPUT_BYTES = 4 * 1024 * 1024

#: What a job's success sets beside its status (a success with these is batched: see `_end_successes`).
SUCCESS_VALUES: dict[str, Any] = {
    "message": "done",
    "worker": None,
    "lease_expires_at": None,
    "progress": 1.0,
}

T = TypeVar("T")
#: A job's result as stored in MongoDB (`_result_document`).
Document = dict[str, Any]
Handler = Callable[["JobContext"], Awaitable[BaseModel]]

#: Errors of the infrastructure that a later try may not meet: the job is retried, not failed. asyncpg's
#: own are those of the bare-connection statements, which a session would have wrapped in DBAPIError.
PASSING_FAULTS: tuple[type[BaseException], ...] = (
    TransientJobError,
    OperationalError,
    DBAPIError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    PoolTimeout,
    ConnectionError,
    TimeoutError,
    RedisConnectionError,
    RedisTimeoutError,
    MongoConnectionFailure,
)
#: What may keep a note for watchers (progress, an event) from Redis: `PASSING_FAULTS`, and a Redis that
#: refuses writes (at its `maxmemory` with `noeviction`, its default; a replica after a failover, READONLY),
#: which answers with an error. The note is lost; the job goes on.
NOTE_FAULTS: tuple[type[BaseException], ...] = (*PASSING_FAULTS, RedisError)


class Delivery(Protocol):
    """What the runner reads of a delivery and does with it (FastStream's RabbitMessage is one)."""

    @property
    def headers(self) -> Mapping[str, Any]: ...

    async def ack(self) -> None: ...
    async def nack(self, *, requeue: bool = True) -> None: ...
    async def reject(self) -> None: ...


@dataclass(eq=False)
class JobContext:
    """What a handler gets: the job, its input, and the means to report, check and clean up."""

    job_id: str
    job_type: str
    tenant_id: str
    attempt: int
    params: BaseModel
    #: The job's input file, to be read only (see `require_input`).
    input_path: Path | None
    log: logging.LoggerAdapter[logging.Logger]
    _runner: JobRunner
    _row: jobstore.JobRow
    #: The previous attempt died with its worker: `run_cpu` runs in a child process (see `isolation`).
    isolated: bool = False
    #: The claim's "started" counts as the first report: a handler's next one within the interval waits.
    _last_progress: float = field(default_factory=time.monotonic)
    _cancel: threading.Event = field(default_factory=threading.Event)
    _cleanups: contextlib.AsyncExitStack = field(default_factory=contextlib.AsyncExitStack)
    _loop: asyncio.AbstractEventLoop = field(default_factory=asyncio.get_running_loop)
    #: Made on first use (most light jobs never ask), removed with everything in it when the job ends.
    _scratch: Path | None = None
    #: The files this attempt saved (file id, storage id): deleted if it does not succeed.
    _artifacts: list[tuple[str, str]] = field(default_factory=list)

    @property
    def scratch(self) -> Path:
        """A directory of this job's own for what it writes; removed when the job ends."""
        if self._scratch is None:
            self._scratch = Path(
                tempfile.mkdtemp(prefix=f"job-{self.job_id}-", dir=self.settings.worker.scratch_dir)
            )
        return self._scratch

    async def progress(self, fraction: float, message: str, *, force: bool = False) -> None:
        """Report progress (0..1) and a short note; writes at most every `progress_interval_s`."""
        now = time.monotonic()
        if not force and now - self._last_progress < self._runner.settings.worker.progress_interval_s:
            return
        self._last_progress = now
        # Rounded as the live hash and the row keep it, so an event says what a read of the job says.
        fraction = round(min(max(fraction, 0.0), 1.0), 4)
        live = {"progress": fraction, "message": message}
        try:
            await self._runner.signals.set_progress(jobstore.job_view(self._row, live=live))
        except NOTE_FAULTS as exc:  # progress is for watchers: losing one update never fails a job
            self.log.warning("job %s: progress not stored (%s)", self.job_id, exc)

    def report(self, fraction: float, message: str) -> None:
        """`progress` for code running in a worker thread (see `run_cpu`): never blocks the caller.

        Raises `JobCancelled` when a cancel was asked for, so a thread's loop has one call per step.
        """
        self.check_cancelled()
        if time.monotonic() - self._last_progress < self._runner.settings.worker.progress_interval_s:
            return
        asyncio.run_coroutine_threadsafe(self.progress(fraction, message), self._loop)

    @property
    def settings(self) -> Settings:
        return self._runner.settings

    def require_input(self) -> Path:
        """The job's input file on the worker's disk, under its upload's name (made safe).

        Read it; never write, move or delete it: it is the input cache's kept copy, which other jobs of the
        same bytes read too (`medialens_shared.inputcache`). Write what the job makes to `scratch`.
        """
        if self.input_path is None:
            raise InputNotFound(f"{self.job_type} needs an input file, and this job has none")
        return self.input_path

    def _input_bytes(self) -> int:
        """The input's size on disk, 0 for a job without one."""
        return self.input_path.stat().st_size if self.input_path is not None else 0

    @property
    def cancelled(self) -> bool:
        """True once a cancel was asked for; safe to read from a worker thread."""
        return self._cancel.is_set()

    def check_cancelled(self) -> None:
        """Raise `JobCancelled` if a cancel was asked for (call it at least every 2 s of media)."""
        if self._cancel.is_set():
            raise JobCancelled("cancelled on request")

    async def run_cpu(
        self, func: Callable[..., T], /, *args: Any, light: bool = False, memory_cap: int | None = None
    ) -> T:
        """Run CPU-heavy `func` in a thread, so the event loop keeps the broker's heartbeats going.

        `light` is for work that takes a few milliseconds whatever the input (a container's header and
        its first frame: the probes). It runs on the event loop's own thread: the hop to a worker thread
        cost more than such work. Beside a worker's other concurrent jobs, the thread and the loop handed
        the GIL back and forth (some 260 futex calls a probe); the pipeline's probes ran 18% faster
        inline (bench.platform, same run, interleaved). (The soak growth this was once blamed for, the
        decoder's buffers fragmenting the main thread's malloc arena, was a PyAV leak, since mended: see
        `medialens_shared.demux.demuxed`; with probes inline every process now grows ≤ 0.5% over 20,000.)

        A light job's input larger than `LIGHT_INPUT_BYTES` goes to a thread all the same: a probe reads
        more than a header in some files (a raw MP3 or AAC stream, a file written to a pipe, a chained Ogg
        stream state no length, and their packets are counted: about 2 µs each, seconds for hours of
        sound), and the event loop, which keeps the leases and the broker's heartbeats, must not wait that.

        In a child process instead when the job is `isolated` (its previous attempt died with its worker),
        light or not, and whenever a `memory_cap` is given (the bytes the child may hold resident: for work
        whose memory its input can blow past any limit of its library's own, see `isolation`): then `func`
        and `args` must pickle, except for `ctx.report`, which works there too.
        """
        in_child = self.isolated or memory_cap is not None
        if not in_child and light and self._input_bytes() <= LIGHT_INPUT_BYTES:
            return func(*args)
        if in_child:
            call = functools.partial(
                isolation.run_in_child,
                func,
                args,
                report=self.report,
                abandoned=lambda: self.cancelled,
                memory_cap=memory_cap,
            )
        else:
            call = functools.partial(func, *args)
        work = asyncio.ensure_future(asyncio.to_thread(call))
        try:
            return cast(T, await asyncio.shield(work))
        except asyncio.CancelledError:
            # Given up (the job's time limit, a shutdown): a thread cannot be cancelled, so the job counts
            # as cancelled from here, which stops the thread at its next `report` (a child process at its
            # next look), and the job's cleanups (its input unpinned, its scratch removed, its slot freed)
            # wait for that, within `CPU_STOP_S`.
            self._cancel.set()
            unawaited(work)
            if not (await asyncio.wait([work], timeout=CPU_STOP_S))[0]:
                self.log.warning("job %s: its work did not stop within %.0f s", self.job_id, CPU_STOP_S)
            raise

    def add_cleanup(self, callback: Callable[[], Awaitable[None]]) -> None:
        self._cleanups.push_async_callback(callback)

    async def save_artifact(self, content: bytes | Path, *, filename: str, content_type: str) -> str:
        """Store a file this job made (a thumbnail, a converted table) for the job's tenant; its file id.

        A `Path` is streamed from disk in chunks; bytes are for small artifacts made in memory. The file is
        the tenant's at once (a long job's first thumbnails can be read while it runs), and is deleted again
        if the attempt does not succeed: a cancelled, failed or retried attempt leaves none behind.
        """
        file_id, storage_id = await self._runner.save_artifact(
            content,
            tenant_id=self.tenant_id,
            job_id=self.job_id,
            filename=filename,
            content_type=content_type,
        )
        self._artifacts.append((file_id, storage_id))
        return file_id


@dataclass(eq=False, slots=True)
class _Success:
    """A lone job's success waiting for its batch (`JobRunner._end_successes`)."""

    row: jobstore.JobRow
    message: JobMessage
    result: Document
    #: Set once its result is written (before the batch's commit): a retry then changes the status alone.
    stored: bool = False


class JobRunner:
    """Runs the jobs of one service through their handlers, applying the policy above."""

    def __init__(
        self,
        *,
        service: str,
        handlers: dict[str, Handler],
        settings: Settings,
        db: DatabaseManager,
        store: FileStore,
        signals: JobSignals,
    ) -> None:
        unknown = set(handlers) - set(JOB_TYPES)
        if unknown:
            raise ValueError(f"handlers for job types not in the catalogue: {sorted(unknown)}")
        self.service = service
        self.handlers = handlers
        self.settings = settings
        self.db = db
        self.store = store
        self.signals = signals
        #: What this process's claims are stored under; `name_prefix` is shared by all its restarts.
        self.name_prefix = f"{service}-{settings.worker.name or socket.gethostname()}-"
        self.worker_id = f"{self.name_prefix}{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.lease = timedelta(seconds=settings.worker.lease_s)
        self.inputs = InputCache(
            store,
            max_bytes=settings.worker.input_cache_bytes,
            parent_dir=settings.worker.input_cache_dir,
            scratch_dir=settings.worker.scratch_dir,
        )
        #: Jobs this runner claimed and then ended, whatever their outcome.
        self.jobs_ended = 0
        #: The claims of lone jobs, several in one statement (see `_claim_many`).
        self._claiming = jobstore.LoneTransition(
            db.engine.dialect,
            from_statuses=[JobStatus.QUEUED],
            to=JobStatus.RUNNING,
            count_attempt=True,
            returning=[_INPUT_FILE],
            batched=True,
            message="started",
            worker=self.worker_id,
            lease_expires_at=func.now() + self.lease,
        )
        self.claims: Batcher[str, jobstore.JobRow | None] = Batcher(
            self._claim_many, max_items=settings.worker.concurrency
        )
        #: The ends of lone jobs (see `_finish`), by status and the names of the values they set.
        self._endings: dict[tuple[JobStatus, frozenset[str]], jobstore.LoneTransition] = {}
        #: The successes of lone jobs, several in one statement (see `_end_successes`).
        self._succeeding = jobstore.LoneTransition(
            db.engine.dialect,
            from_statuses=[JobStatus.RUNNING],
            to=JobStatus.SUCCEEDED,
            owned=True,
            batched=True,
            **SUCCESS_VALUES,
        )
        self.successes: Batcher[_Success, jobstore.JobRow | None] = Batcher(
            self._end_successes, max_items=settings.worker.concurrency
        )

    async def handle(self, body: Any, delivery: Delivery) -> None:
        """Run the job of one delivery, settling the delivery as soon as the job's claim is stored."""
        try:
            message = JobMessage.model_validate(body)
        except ValidationError:
            log.exception("unreadable job message; dead-lettering it")
            await delivery.reject()
            return
        jlog = logging.LoggerAdapter(log, {"job_id": message.job_id, "job_type": message.type})
        pauses = iter(CLAIM_RETRY_PAUSES_S)
        while True:
            try:
                with job_phase("claim", job_id=message.job_id, job_type=message.type) as span:
                    row = await self._claim(message)
                    span.set_attribute("job.attempt", row["attempts"] if row is not None else 0)
                break
            except PASSING_FAULTS as exc:
                pause = next(pauses, None)
                if pause is None:
                    jlog.warning("job %s not claimable (%s); requeueing its message", message.job_id, exc)
                    await delivery.nack(requeue=True)  # the queue's delivery limit bounds these
                    return
                jlog.warning("job %s not claimable now (%s); again in %g s", message.job_id, exc, pause)
                await asyncio.sleep(pause)
        # The claim is the truth from here on: the lease, not the unacked delivery, guards the job, so a
        # job may outlive the broker's consumer timeout, and a crash is caught by the reaper.
        try:
            await delivery.ack()
        except Exception as exc:
            # Its channel closed since (a broker restart): the broker delivers the message again, and that
            # delivery finds the job taken and is skipped. The job runs on.
            jlog.warning("job %s: delivery not acked (%s); the job runs on", message.job_id, exc)
        if row is None:
            jlog.info("job %s is not claimable (unknown, finished or taken); skipped", message.job_id)
            return
        metrics.job_started(
            message.type, created_at=row["created_at"], started_at=row["started_at"], attempt=row["attempts"]
        )
        isolated = delivery.headers.get(jobstore.WORKER_DIED_HEADER) is not None
        try:
            with metrics.job_running(message.type):
                await self._execute(message, row, jlog, isolated=isolated)
        finally:
            self.jobs_ended += 1

    async def _claim(self, message: JobMessage) -> jobstore.JobRow | None:
        """queued -> running under this worker's lease: on a bare connection for a job that is no part of a
        composite job (most are, and the message cannot tell), with the claims of the worker's other
        deliveries meanwhile (`_claim_many`), else `transition` in a session, where the composite job
        follows its part in the same transaction."""
        row = await self.claims.submit(message.job_id)
        if row is not None:
            return row
        async with self.db.session() as session:  # a part, or a job no longer queued (then: None again)
            row = await self._claiming.in_session(session, job_id=message.job_id)
            await session.commit()
        return row

    async def _claim_many(self, job_ids: list[str]) -> list[jobstore.JobRow | None]:
        """The claims of the deliveries that came at about the same time (see `batching`): one statement,
        committing by itself. Each delivery's claimed row, or None where the statement claimed nothing; a
        job delivered twice in one batch (a duplicate message) is claimed for its first delivery only."""
        async with self.db.connection() as conn:
            claimed = await self._claiming.run_many(conn, job_ids=list(dict.fromkeys(job_ids)))
        rows = {row["id"]: row for row in claimed}
        return [rows.pop(job_id, None) for job_id in job_ids]

    async def _execute(
        self,
        message: JobMessage,
        row: jobstore.JobRow,
        jlog: logging.LoggerAdapter[logging.Logger],
        *,
        isolated: bool = False,
    ) -> None:
        handler = self.handlers.get(message.type)
        jlog.info(
            "job %s started (attempt %d%s)",
            message.job_id,
            row["attempts"],
            ", isolated: its previous attempt died with its worker" if isolated else "",
        )
        try:
            if handler is None:
                raise InvalidParams(f"the {self.service} service does not run {message.type} jobs")
            result: tuple[JobMessage, Document] | None = None
            made: list[tuple[str, str]] = []
            if row["attempts"] > 1 and await self._stored_before(message.job_id):
                # An earlier attempt stored the result and died before it could say so: the job is done,
                # and running it again would be a second effect.
                jlog.info("job %s: an earlier attempt stored its result; finishing it", message.job_id)
            else:
                if row["attempts"] > 1:
                    earlier = files.c.job_id == message.job_id
                    await self._drop_files(
                        earlier, job_id=message.job_id, jlog=jlog, whose="its earlier attempts"
                    )
                document = await self._run(handler, message, row, jlog, isolated=isolated, made=made)
                result = (message, document)
            await self._finish_succeeded(row, jlog, result=result, made=made)
        except JobCancelled:
            progress = await self._progress_so_far(row)
            await self._finish(row, JobStatus.CANCELLED, message="cancelled", progress=progress, jlog=jlog)
        except isolation.DecoderCrashed as exc:  # visible to operators, who may requeue it once mended
            error = (exc.error_code, exc.message)
            await self._finish(row, JobStatus.FAILED, message="failed", error=error, jlog=jlog, dead=message)
        except PermanentJobError as exc:
            error = (exc.error_code, exc.message)
            await self._finish(row, JobStatus.FAILED, message="failed", error=error, jlog=jlog)
        except PASSING_FAULTS as exc:
            await self._retry_or_give_up(row, message, exc, jlog)
        except Exception as exc:
            if disk_full(exc):  # not a bug, and it may pass (it failed INTERNAL_ERROR, the job lost)
                await self._retry_or_give_up(row, message, DiskFull.of(exc), jlog)
                return
            jlog.exception("job %s failed with a bug", message.job_id)
            error = ("INTERNAL_ERROR", f"internal error ({type(exc).__name__}); the team has the log")
            await self._finish(row, JobStatus.FAILED, message="failed", error=error, jlog=jlog)

    async def _progress_so_far(self, row: jobstore.JobRow) -> float | None:
        """The progress this attempt of a job last reported (its live value in Redis, which a running job's
        row does not hold), for a cancelled job to say how far it got rather than 0; None when there is none
        to read (nor any of this attempt: an earlier attempt's is not how far this one got)."""
        with contextlib.suppress(*PASSING_FAULTS, ValueError):
            live = await self.signals.live(row["id"])
            if live and "progress" in live and jobstore.is_this_attempts(live, row):
                return float(live["progress"])
        return None

    async def _announce(self, row: jobstore.JobRow) -> None:
        """Tell the job's listeners of its new state, and a part's composite job's listeners too.

        Never raises a passing fault (`NOTE_FAULTS`): what is announced is already stored, and Redis away or
        refusing writes (or the session a part's composite job needs) must not turn a job that started into
        a retry, nor one that ended into an attempt to end it again. Listeners miss that event; the job
        reads right from the API.
        """
        try:
            if row["parent_id"] is None:  # no session: there is no composite job to read
                await self.signals.announce(jobstore.job_view(row))
                return
            async with self.db.session() as session:
                await jobstore.announce(session, self.signals, row)
        except NOTE_FAULTS as exc:
            log.warning("job %s: listeners not told it is %s (%s)", row["id"], row["status"], exc)

    async def release_predecessors(self) -> int:
        """At start, under a `worker.name`: end the leases of the jobs an earlier process of that name still
        holds (it died: it is this one's predecessor), so the relay's reaper requeues them now, counting the
        crash as an attempt, rather than when their leases run out. How many."""
        if self.settings.worker.name is None:
            return 0
        async with self.db.session() as session:
            ended = (
                await session.scalars(
                    update(jobs)
                    .where(
                        jobs.c.status == JobStatus.RUNNING.value,
                        # The prefix, then a pid and a suffix (as `worker_id`), nothing else: a worker named
                        # "w-2" is no predecessor of one named "w".
                        jobs.c.worker.regexp_match(f"^{re.escape(self.name_prefix)}[0-9]+-[0-9a-f]{{6}}$"),
                        jobs.c.worker != self.worker_id,
                    )
                    .values(lease_expires_at=func.now())
                    .returning(jobs.c.id)
                )
            ).all()
            await session.commit()
        for job_id in ended:
            log.warning("job %s was left running by this worker's predecessor: its lease is ended", job_id)
        return len(ended)

    async def release_unfinished(self) -> None:
        """At shutdown: hand back the jobs this worker still runs, so another worker takes them at once.

        The try counts, as every try does: a job whose runs keep getting their worker stopped (its memory
        gets the pod evicted, it cuts the worker off from the broker) must still meet the bound on attempts,
        so one at its last attempt fails RETRIES_EXHAUSTED instead (it was handed back whatever its count,
        and ran again without end). A job a cancel was asked of ends cancelled, as the relay's reaper ends
        one whose worker died: nothing runs to stop (it failed RETRIES_EXHAUSTED at its last attempt, or
        ran again). A job ended so has no rerun to delete the files its attempts saved: they are deleted
        with its end, as the reaper deletes them. One at its last attempt whose result is stored (its
        attempt stopped between the result's write and its success's commit, a database blip meanwhile)
        ends succeeded instead, its files kept, as its rerun would have ended it (`succeed_stored`): it
        failed RETRIES_EXHAUSTED, its result stored. Ended here rather than handed back once more past the
        bound, so that no job runs past it; MongoDB away (`stored_results` cannot tell), it fails as
        before. The services' drain (`shutdown_grace_s`, 600 s for video and data in Kubernetes) is what
        keeps rollouts from cutting long jobs short.
        """
        mine = (jobs.c.status == JobStatus.RUNNING.value, jobs.c.worker == self.worker_id)
        bound = self.settings.worker.max_attempts
        async with self.db.session() as session:
            running = (
                (await session.execute(select(jobs.c.id).where(*mine).with_for_update())).scalars().all()
            )
            cancelled = [
                row
                for job_id in await self.signals.cancels_asked(list(running))
                if (row := await jobstore.cancel_as_asked(session, job_id=job_id)) is not None
            ]
            released = (
                (
                    await session.execute(
                        update(jobs)
                        .where(*mine, jobs.c.attempts < bound)
                        .values(
                            status=JobStatus.QUEUED.value,
                            worker=None,
                            lease_expires_at=None,
                            message="requeued: its worker stopped",
                            updated_at=func.now(),
                        )
                        .returning(*jobs.c)
                    )
                )
                .mappings()
                .all()
            )
            for row in released:
                await outbox.enqueue(session, jobstore.message_of(row))
            ended: list[jobstore.JobRow] = []
            spent = (await session.execute(select(jobs.c.id, jobs.c.attempts).where(*mine))).all()
            stored = await stored_results(self.db, [job_id for job_id, _ in spent])
            succeeded = [
                row
                for job_id, _ in spent
                if job_id in stored and (row := await succeed_stored(session, job_id=job_id)) is not None
            ]
            for job_id, attempts in spent:
                if job_id in stored:
                    continue
                error = RetriesExhausted(
                    f"gave up after {attempts} attempts, the last cut short by its worker's stop (a "
                    "shutdown, an eviction, the broker lost)"
                )
                if (failed := await jobstore.fail(session, job_id=job_id, error=error)) is not None:
                    ended.append(failed)
            # No rerun will delete what their attempts saved, nor a result name it: an attempt stopped
            # between its handler's end and its own, or before it deleted a dead earlier attempt's, left
            # files (the relay's reaper deletes those of a job it ends so).
            gone = [row["id"] for row in (*cancelled, *ended)]
            unnamed = await mark_deleted(session, files.c.job_id.in_(gone)) if gone else []
            await session.commit()
        try:
            for storage_id in unnamed:
                await self.store.delete(storage_id)
        except Exception as exc:  # what is left, the relay's retention drops with the rows
            log.warning("the bytes of files of jobs ended at shutdown stay for now (%s)", exc)
        for row in released:
            log.warning("job %s handed back at shutdown", row["id"])
            await self._announce(row)  # Redis away at shutdown: listeners miss it, nothing else
        for row in ended:
            log.warning("job %s failed at shutdown: %s", row["id"], row["error_message"])
            metrics.job_finished(row["type"], JobStatus.FAILED, error_code=row["error_code"])
            await self._announce(row)
        for row in succeeded:
            log.info("job %s succeeded at shutdown: its result was stored", row["id"])
            metrics.job_finished(row["type"], JobStatus.SUCCEEDED)
            await self._announce(row)
        for row in cancelled:
            log.info("job %s cancelled at shutdown, as asked", row["id"])
            metrics.job_finished(row["type"], JobStatus.CANCELLED)
            await self._announce(row)

    async def _run(
        self,
        handler: Handler,
        message: JobMessage,
        row: jobstore.JobRow,
        jlog: logging.LoggerAdapter[logging.Logger],
        *,
        isolated: bool,
        made: list[tuple[str, str]],
    ) -> Document:
        """Run the handler; its result checked, as the document to store. `made` gathers the files the attempt
        saves (file id, storage id), which it deletes itself if it does not succeed, and `_finish` if its
        success comes too late."""
        spec = JOB_TYPES[message.type]
        try:
            params = spec.params.model_validate(message.params)
        except ValidationError as exc:
            raise InvalidParams(f"params do not fit {message.type}: {exc.errors()[0]['msg']}") from exc
        ctx = JobContext(
            job_id=message.job_id,
            job_type=message.type,
            tenant_id=message.tenant_id,
            attempt=row["attempts"],
            params=params,
            input_path=None,
            log=jlog,
            _runner=self,
            _row=row,
            isolated=isolated,
            _artifacts=made,
        )
        with untraced():  # the heartbeat's Redis and MongoDB calls every 0.5 s would swamp the trace
            watcher = asyncio.create_task(self._watch(ctx))
        # Once the heartbeat runs: with Redis slow or away an announcement can take seconds, and the lease
        # the claim took must not run out meanwhile.
        await self._announce(row)
        phase = {"job_id": message.job_id, "job_type": message.type, "attempt": row["attempts"]}
        limit = self.settings.worker.job_timeout_s
        deadline = asyncio.timeout(limit)
        try:
            async with ctx._cleanups:
                # The limit counts from the input's fetch on: a slow read of a large input from GridFS
                # (the heartbeat keeping the lease meanwhile) ran as long as it took, the limit unspent.
                async with deadline:
                    if message.file_id is not None:
                        with job_phase("fetch_input", **phase):
                            # Pinned in the cache until the job ends, whichever way it ends.
                            use = self._use_input(message, row)
                            ctx.input_path = await ctx._cleanups.enter_async_context(use)
                    with job_phase("handler", **phase):
                        result = await handler(ctx)
                # Checked here, so a result that does not fit is an attempt that did not succeed.
                checked = spec.result.model_validate(result.model_dump())
                document = _result_document(message, checked)
                _check_size(message, document)
        except TimeoutError as exc:
            await asyncio.shield(self._drop_made(made, job_id=ctx.job_id, jlog=jlog, whose="its attempt"))
            if deadline.expired():
                raise JobTimeout(f"the job ran past its limit of {limit:.0f} s") from exc
            raise
        except BaseException:
            await asyncio.shield(self._drop_made(made, job_id=ctx.job_id, jlog=jlog, whose="its attempt"))
            raise
        finally:
            watcher.cancel()
            if ctx._scratch is not None:
                await asyncio.to_thread(shutil.rmtree, ctx._scratch, True)
        return document

    def _use_input(
        self, message: JobMessage, row: jobstore.JobRow
    ) -> contextlib.AbstractAsyncContextManager[Path]:
        """The job's input from the cache (see `InputCache.use`), under its upload's name, so what a job
        names after its input reads well."""
        stored = row[INPUT_FILE]
        if stored is None:
            raise InputNotFound(f"the input file {message.file_id} was deleted before the job ran")
        return self.inputs.use(
            storage_id=stored["storage_id"],
            sha256=stored["sha256"],
            size_bytes=stored["size_bytes"],
            name=stored["filename"],
            job=f"{message.job_id}-{row['attempts']}",
        )

    async def save_artifact(
        self, content: bytes | Path, *, tenant_id: str, job_id: str, filename: str, content_type: str
    ) -> tuple[str, str]:
        """Store a file for the tenant; its file id and storage id."""
        file_id = uuid.uuid4().hex
        metadata = {"tenant_id": tenant_id, "file_id": file_id, "job_id": job_id}
        if isinstance(content, bytes):
            stored = await self.store.save_bytes(content, filename=filename, metadata=metadata)
        else:
            stored = await self.store.save(
                _file_chunks(content),
                filename=filename,
                max_bytes=(await asyncio.to_thread(content.stat)).st_size,
                metadata=metadata,
            )
        async with self.db.session() as session:
            row = file_row(
                stored,
                file_id=file_id,
                tenant_id=tenant_id,
                filename=filename,
                content_type=content_type,
                job_id=job_id,
            )
            await session.execute(row)
            await session.commit()
        return file_id, stored.storage_id

    async def _drop_made(
        self,
        made: Sequence[tuple[str, str]],
        *,
        job_id: str,
        jlog: logging.LoggerAdapter[logging.Logger],
        whose: str,
    ) -> None:
        """`_drop_files` of the files (file id, storage id) an attempt saved, when there are any."""
        if made:
            where = files.c.id.in_([file_id for file_id, _ in made])
            await self._drop_files(where, job_id=job_id, jlog=jlog, whose=whose)

    async def _drop_files(
        self,
        where: ColumnElement[bool],
        *,
        job_id: str,
        jlog: logging.LoggerAdapter[logging.Logger],
        whose: str,
    ) -> None:
        """Delete the files `where` picks, which no result of the job will name, as `DELETE /v1/files` does
        (`filestore.mark_deleted`, then the bytes dropped): those an attempt that did not succeed saved, or,
        before a rerun, those its earlier attempts saved (one that failed or went back to retry deleted its
        own; one whose worker died could not; a stored result was looked for first). Best effort: a failure
        here must not change how the job ends, and what it leaves is what was left before."""
        try:
            async with self.db.session() as session:
                storage_ids = await mark_deleted(session, where)
                await session.commit()
            for storage_id in storage_ids:
                await self.store.delete(storage_id)
        except Exception as exc:  # the job's own outcome stands
            jlog.warning("job %s: files %s saved were not deleted (%s)", job_id, whose, exc)
        else:
            if storage_ids:
                jlog.info("job %s: deleted the %d files %s saved", job_id, len(storage_ids), whose)

    async def _watch(self, ctx: JobContext) -> None:
        """While the job runs: extend its lease (its heartbeat), and mirror a cancel into the context.

        A cancel asked through the API, or a lease this worker lost (the reaper gave the job to another
        worker), sets the context's thread-safe cancel event, which the handler sees at its next checkpoint.
        The two run side by side: with Redis slow or away a look for a cancel can take seconds, and the
        beats must not wait for it (they did, and every running job lost its lease).
        """
        beat = self.lease.total_seconds() / 3
        first = min(CANCEL_LOOK_S, beat)
        await asyncio.sleep(first)  # most light jobs end within this pause: no task, no look at a server
        listening = asyncio.create_task(self._hear_cancel(ctx))
        try:
            await self._beat(ctx, first_pause_s=beat - first)
        finally:
            listening.cancel()
            await asyncio.gather(listening, return_exceptions=True)

    async def _beat(self, ctx: JobContext, *, first_pause_s: float) -> None:
        """Extend the job's lease every third of it, until the job ends (its end cancels this) or the lease
        is lost. The beats go on after a cancel was asked: a handler between two checkpoints (an input being
        fetched, an artifact being stored) must not lose its lease meanwhile and be rerun as if its worker
        had died."""
        beat = self.lease.total_seconds() / 3
        pause = first_pause_s
        while True:
            await asyncio.sleep(pause)
            pause = min(0.5, beat)  # the database away: the next try comes soon
            with contextlib.suppress(*PASSING_FAULTS):
                if not await self._extend_lease(ctx.job_id, jobstore.Claim.of(ctx._row)):
                    ctx.log.warning("job %s: lease lost; stopping", ctx.job_id)
                    ctx._cancel.set()
                    return
                pause = beat

    async def _hear_cancel(self, ctx: JobContext) -> None:
        """Look for a cancel asked through the API about every half second, until one is seen."""
        while not ctx.cancelled:
            with contextlib.suppress(*PASSING_FAULTS):  # Redis away: no cancel is heard meanwhile
                if await self.signals.cancel_requested(ctx.job_id):
                    ctx._cancel.set()
                    return
            await asyncio.sleep(CANCEL_LOOK_S)

    async def _extend_lease(self, job_id: str, claim: jobstore.Claim) -> bool:
        """Extend the job's lease while `claim` still holds it (not: the job was claimed again, if by this
        worker, its lease having run out)."""
        async with self.db.session() as session:
            extended = await session.scalar(
                update(jobs)
                .where(
                    jobs.c.id == job_id,
                    jobs.c.status == JobStatus.RUNNING.value,
                    *claim.holds(),
                )
                .values(lease_expires_at=func.now() + self.lease)
                .returning(jobs.c.id)
            )
            await session.commit()
        return extended is not None

    async def _stored_before(self, job_id: str) -> bool:
        """Whether a result of this job is stored already (by an attempt that died before finishing). A look
        that fails or takes over `STORED_LOOK_TIMEOUT_S` raises (a passing fault: the job is retried): the
        job's heartbeat does not run yet, and a MongoDB fallen silent must not hold it until its lease runs
        out and the reaper hands it to another worker."""
        return job_id in await _stored_among(self.db, [job_id])

    async def _store_results(self, outcomes: list[tuple[JobMessage, Document]]) -> None:
        """Upsert each job's result by its job id (one write for several), so a second run rewrites and
        never duplicates; `writes` counts the runs that got this far (more than one is a duplicate effect,
        which the chaos suite's ledger counts)."""
        updates = [
            ({"_id": message.job_id}, {"$set": document, "$inc": {RESULT_WRITES: 1}})
            for message, document in outcomes
        ]
        results = self.db.collection("results")
        if len(updates) == 1:
            await results.update_one(*updates[0], upsert=True)
        else:
            await results.bulk_write([UpdateOne(*update, upsert=True) for update in updates], ordered=False)

    async def _finish(
        self,
        row: jobstore.JobRow,
        status: JobStatus,
        *,
        message: str,
        jlog: logging.LoggerAdapter[logging.Logger],
        error: tuple[str, str] | None = None,
        progress: float | None = None,
        result: tuple[JobMessage, Document] | None = None,
        dead: JobMessage | None = None,
        made: Sequence[tuple[str, str]] = (),
    ) -> None:
        """End the job in `status` if it is still running under this worker, and store its `result` (None:
        stored by an earlier attempt) in the same go; `dead` goes to the dead letters with the change.

        The result is written between the status change and its commit, while the change holds the job's
        row: the job cannot be taken from this worker in between (the reaper skips locked rows), so a
        result is stored only by the owner, and the status commits only once the result is stored. A
        failure after the write retries the status change alone. A success that could not be stored (this
        raises) deletes the files its attempt saved (`made`), as a failure of its handler does, unless a
        rerun may finish the job with its result (`_drop_unstored`).

        A lone job (no part of a composite job, no `callback_url`, nothing to dead-letter) ends on a bare
        connection: a success with its result to store together with those of the worker's other jobs
        succeeding meanwhile (`_end_successes`), an end with nothing to store by itself (`_end_lone`); any
        other job, or a lone one that path did not change (taken from this worker, mostly), through
        `transition` in a session.
        """
        values: dict[str, Any] = {"message": message, "worker": None, "lease_expires_at": None}
        if error is not None:
            values["error_code"], values["error_message"] = error
        if progress is not None:
            values["progress"] = progress
        phase = {"job_id": row["id"], "job_type": row["type"], "attempt": row["attempts"]}
        with job_phase("finish", **phase):
            # The outcome is already made (a result may be stored): a database blip here must not leave the
            # job to the reaper, who would run it a second time. So retry while the lease still holds.
            unstored = result

            async def store() -> None:  # once: a failure after the write retries the status change alone
                nonlocal unstored
                if unstored is not None:
                    with job_phase("store_result", **phase):
                        await self._store_results([unstored])
                    unstored = None

            lone = dead is None and row["parent_id"] is None and row["callback_url"] is None
            batched = lone and status is JobStatus.SUCCEEDED and values == SUCCESS_VALUES

            async def end_lone() -> jobstore.JobRow | None:
                """A lone job's end on a bare connection: a success with its result in a batch, an end with
                nothing to store by itself. None: not changed there (nor any other end with a result, which
                the session's path takes)."""
                nonlocal unstored
                if unstored is None:
                    return await self._end_lone(row, status, values)
                if not batched:
                    return None
                success = _Success(row, *unstored)
                try:
                    with job_phase("store_result", **phase):
                        return await self._end_batched(success, jlog)
                finally:
                    unstored = None if success.stored else unstored

            for pause in (*FINISH_RETRY_PAUSES_S, None):
                try:
                    done = await end_lone() if lone else None
                    if done is None:  # not a lone job's end, or (mostly) one taken from this worker
                        async with self.db.session() as session:
                            done = await jobstore.transition(
                                session,
                                job_id=row["id"],
                                from_statuses=[JobStatus.RUNNING],
                                to=status,
                                owner=jobstore.Claim.of(row),
                                **values,
                            )
                            if done is not None:
                                await store()
                            if done is not None and dead is not None:
                                await outbox.enqueue(session, dead, dead=True)
                            await session.commit()
                    break
                except Exception as exc:
                    if pause is None or not isinstance(exc, PASSING_FAULTS):
                        # Given up: no success committed unless its result was stored (each commit follows).
                        await self._drop_unstored(row, made if unstored is not None else (), exc, jlog)
                        raise
                    jlog.warning("job %s: storing its outcome failed (%s); retrying", row["id"], exc)
                    await asyncio.sleep(pause)
        if done is None:
            # Its lease ran out while it ran and the job went to another worker (or it was ended): storing a
            # result too would be a second effect of one job.
            # No result names the files it saved, unless it was stored: a commit whose answer was lost (the
            # job is this attempt's after all), or a rerun that finishes the job with it keeps them.
            await self._left_be(row, jlog, unnamed=made if unstored is not None else ())
            return
        metrics.job_finished(row["type"], status, error_code=values.get("error_code"))
        jlog.info("job %s %s", row["id"], status.value, extra={"error_code": values.get("error_code")})
        await self._announce(done)

    async def _finish_succeeded(
        self,
        row: jobstore.JobRow,
        jlog: logging.LoggerAdapter[logging.Logger],
        *,
        result: tuple[JobMessage, Document] | None = None,
        made: Sequence[tuple[str, str]] = (),
    ) -> None:
        """`_finish` of a success: with this attempt's `result`, or None for one an earlier attempt stored."""
        message, progress = SUCCESS_VALUES["message"], SUCCESS_VALUES["progress"]
        await self._finish(
            row, JobStatus.SUCCEEDED, message=message, progress=progress, jlog=jlog, result=result, made=made
        )

    async def _left_be(
        self,
        row: jobstore.JobRow,
        jlog: logging.LoggerAdapter[logging.Logger],
        *,
        unnamed: Sequence[tuple[str, str]],
    ) -> None:
        """An attempt's end for a job taken from it: said, and the files it saved that no result names
        deleted."""
        jlog.warning("job %s was taken from this worker while it ran; leaving it be", row["id"])
        await self._drop_made(unnamed, job_id=row["id"], jlog=jlog, whose="this attempt")

    async def _drop_unstored(
        self,
        row: jobstore.JobRow,
        made: Sequence[tuple[str, str]],
        exc: Exception,
        jlog: logging.LoggerAdapter[logging.Logger],
    ) -> None:
        """The files (`made`) of an attempt whose success `_finish` could not store (`exc`): the job goes back
        to retry or ends without success (RETRIES_EXHAUSTED; INTERNAL_ERROR for a result MongoDB refuses), no
        result names them, and they are deleted, as a failure of the handler deletes its attempt's (they
        stayed the tenant's, for ever without a retention). Kept only where the job may yet finish with this
        attempt's result: a passing fault may come after MongoDB applied the write (the connection lost
        before its answer), so a result found stored, or a look that cannot tell, leaves them to what comes
        next: with attempts left the rerun, which finishes the job with that result or deletes them before it
        runs; at the last attempt `_retry_or_give_up`, which ends the job succeeded with that result or fails
        it and deletes them (they were deleted there, and the job failed, its result stored). At the last
        attempt this does not look: `_retry_or_give_up` looks next and decides, one look for both (or, its
        end failing too, the reaper's round, which deletes them with a job it fails)."""
        if not made:
            return
        if isinstance(exc, PASSING_FAULTS):
            if row["attempts"] >= self.settings.worker.max_attempts:
                return
            try:
                stored = await self._stored_before(row["id"])
            except Exception:
                stored = True  # cannot tell: what comes next looks again
            if stored:
                jlog.warning("job %s: its result may be stored; its end keeps its files or not", row["id"])
                return
        await self._drop_made(made, job_id=row["id"], jlog=jlog, whose="its attempt")

    async def _end_batched(
        self, success: _Success, jlog: logging.LoggerAdapter[logging.Logger]
    ) -> jobstore.JobRow | None:
        """A lone job's success with those of the worker's other jobs (`_end_successes`). None: the batch
        did not change it, or failed for a reason that does not pass (a result MongoDB cannot take), which
        its write gave every job in it: then this job ends by itself on the session's path, where only the
        job that caused it fails again. (A server-side refusal of one document in the unordered write may
        leave the others written: their second write counts twice in `writes`, the result itself the same.)"""
        try:
            return await self.successes.submit(success)
        except PASSING_FAULTS:
            raise
        except Exception as exc:
            jlog.warning("job %s: its batch's end failed (%r); ending it alone", success.row["id"], exc)
            return None

    async def _end_lone(
        self, row: jobstore.JobRow, status: JobStatus, values: Mapping[str, Any]
    ) -> jobstore.JobRow | None:
        """`_finish`'s change of a lone job with no result to store (see `jobstore.LoneTransition`) on a
        bare connection: the one statement, committing by itself. None: the statement changed nothing."""
        ending = self._ending(status, values)
        async with self.db.connection() as conn:
            return await ending.run(conn, job_id=row["id"], owner=jobstore.Claim.of(row), **values)

    async def _end_successes(self, batch: list[_Success]) -> list[jobstore.JobRow | None]:
        """The successes of lone jobs that ended at about the same time (see `batching`), with their results:
        one statement changes every job still running under this worker, the results of those it changed
        are written in one call while that statement holds their rows (as `_finish` requires), then one
        commit. Each job's new row, or None for one the statement did not change."""
        async with self.db.connection() as conn, conn.transaction():
            # By job and attempt: two attempts of one job may end in one batch (the older one's lease ran out
            # and this worker claimed the job again), and only the one whose claim holds the job owns it.
            ended = {
                (row["id"], row["attempts"]): row
                for row in await self._succeeding.run_many(
                    conn,
                    job_ids=[success.row["id"] for success in batch],
                    owners=[jobstore.Claim.of(success.row) for success in batch],
                    **SUCCESS_VALUES,
                )
            }
            owned = [success for success in batch if _attempt_of(success) in ended]
            if owned:
                await self._store_results([(success.message, success.result) for success in owned])
                for success in owned:
                    success.stored = True
        return [ended.get(_attempt_of(success)) for success in batch]

    def _ending(self, status: JobStatus, values: Mapping[str, Any]) -> jobstore.LoneTransition:
        """The end of a lone job in `status` setting `values` (these as parameters), compiled once."""
        key = (status, frozenset(values))
        ending = self._endings.get(key)
        if ending is None:
            ending = self._endings[key] = jobstore.LoneTransition(
                self.db.engine.dialect, from_statuses=[JobStatus.RUNNING], to=status, owned=True, **values
            )
        return ending

    async def _retry_or_give_up(
        self,
        row: jobstore.JobRow,
        message: JobMessage,
        exc: BaseException,
        jlog: logging.LoggerAdapter[logging.Logger],
    ) -> None:
        """A passing fault: the job goes back to the queue after a backoff, through the outbox; or it ends
        cancelled when a cancel was asked of it meanwhile (a client's cancel of a running job is a flag its
        next checkpoint reads: the fault came first, and a rerun light enough to end before its first
        checkpoint succeeded, or the last attempt failed RETRIES_EXHAUSTED, where the client was told 202),
        as the relay's reaper and `release_unfinished` end such a job whose attempt stopped otherwise.

        At the last attempt the job ends succeeded if its result is stored (`stored_results`): its success's
        commit met the fault after the result's write (a database blip outlasting `FINISH_RETRY_PAUSES_S`),
        or an earlier attempt stored it and the look for it at this one's start met the fault. A rerun would
        finish it so (`_execute`), and at the last attempt none comes: it failed RETRIES_EXHAUSTED, its
        result stored. Ended here, not queued once more past the bound: this attempt still holds the job,
        and its end is `_finish`'s as the rerun's would be (webhook, composite job, listeners), with no
        further attempt that could meet a fault in turn. MongoDB away (the look cannot tell): it fails, as
        before."""
        if await self.signals.cancels_asked([row["id"]]):
            progress = await self._progress_so_far(row)
            await self._finish(row, JobStatus.CANCELLED, message="cancelled", progress=progress, jlog=jlog)
            await self._drop_if_ended(row, JobStatus.CANCELLED, jlog)
            return
        if row["attempts"] >= self.settings.worker.max_attempts:
            if await stored_results(self.db, [row["id"]]):
                jlog.info("job %s: its result is stored; finishing it at its last attempt", row["id"])
                await self._finish_succeeded(row, jlog)
                return
            error = RetriesExhausted(f"gave up after {row['attempts']} attempts; last error: {exc}")
            await self._finish(
                row, JobStatus.FAILED, message="failed", error=(error.error_code, error.message), jlog=jlog
            )
            await self._drop_if_ended(row, JobStatus.FAILED, jlog)
            return
        delay_s = outbox.backoff_s(row["attempts"])
        jlog.warning(
            "job %s attempt %d hit a passing fault (%s); retrying in %d s",
            row["id"],
            row["attempts"],
            exc,
            delay_s,
        )
        async with self.db.session() as session:
            requeued = await jobstore.requeue(
                session,
                job=row,
                owner=jobstore.Claim.of(row),
                message=f"retrying in {delay_s} s after: {exc}",
                delay_s=delay_s,
            )
            await session.commit()
        if requeued is not None:
            metrics.JOBS_RETRIED.labels(message.type).inc()
            await self._announce(requeued)

    async def _drop_if_ended(
        self, row: jobstore.JobRow, status: JobStatus, jlog: logging.LoggerAdapter[logging.Logger]
    ) -> None:
        """Delete the files the job's attempts saved if it ended in `status` (by `_retry_or_give_up`): no
        rerun will delete them, and no result names them. They were kept for one where this attempt's
        result may have been stored (`_drop_unstored`), which a job ended so does not read. Best effort, as
        `_drop_files`: the job's end stands."""
        try:
            async with self.db.session() as session:
                ended = await jobstore.get(session, job_id=row["id"])
        except Exception as exc:
            jlog.warning("job %s: its attempts' files were not deleted (%s)", row["id"], exc)
            return
        if ended is not None and ended["status"] == status.value:
            where = files.c.job_id == row["id"]
            await self._drop_files(where, job_id=row["id"], jlog=jlog, whose="its attempts")


#: Seconds `stored_results` may take: it runs while rows are locked (the reaper's round, a worker's stop, a
#: dead letter), and a MongoDB that takes queries and falls silent has no socket timeout to end it.
STORED_LOOK_TIMEOUT_S = 2.0


async def stored_results(db: DatabaseManager, job_ids: Sequence[str]) -> set[str]:
    """Which of `job_ids` have a result stored (one look at MongoDB for them all), for a job about to be
    given up at its last attempt (`JobRunner._retry_or_give_up`, `JobRunner.release_unfinished`, the relay's
    reaper, a dead letter): one whose result is stored ends succeeded instead (`succeed_stored`), as its
    rerun would have ended it. A look that fails (MongoDB away) or takes over `STORED_LOOK_TIMEOUT_S` finds
    none, said in the log: the job is given up, as it was before anyone looked."""
    if not job_ids:
        return set()
    try:
        return await _stored_among(db, job_ids)
    except Exception as exc:
        log.warning("jobs %s: cannot tell whether their results are stored (%s); giving up", job_ids, exc)
        return set()


async def _stored_among(db: DatabaseManager, job_ids: Sequence[str]) -> set[str]:
    """Which of `job_ids` have a result stored: one look at MongoDB, `TimeoutError` past
    `STORED_LOOK_TIMEOUT_S`, MongoDB's error when it fails."""
    async with asyncio.timeout(STORED_LOOK_TIMEOUT_S):
        found = db.collection("results").find({"_id": {"$in": list(job_ids)}}, {"_id": 1})
        return {document["_id"] async for document in found}


async def succeed_stored(
    session: AsyncSession, *, job_id: str, from_statuses: Sequence[JobStatus] = (JobStatus.RUNNING,)
) -> jobstore.JobRow | None:
    """End a running job (or one in `from_statuses`) whose result is stored (`stored_results`) succeeded,
    as its rerun ends it (`JobRunner._execute`): done, its lease cleared, its progress full; its webhook
    owed and its composite job moved with it (`jobstore.transition`). The new row, or None if it no longer
    runs."""
    return await jobstore.transition(
        session, job_id=job_id, from_statuses=from_statuses, to=JobStatus.SUCCEEDED, **SUCCESS_VALUES
    )


def _attempt_of(success: _Success) -> tuple[str, int]:
    return success.row["id"], success.row["attempts"]


#: The claimed job's input file, read by the claim's own statement: its storage id, hash, size and name, or
#: null when the job has none or it was deleted. Built once: the claim runs for every job.
_INPUT_FILE_OBJECT = func.json_build_object(
    "storage_id", files.c.storage_id, "sha256", files.c.sha256,
    "size_bytes", files.c.size_bytes, "filename", files.c.filename,
)  # fmt: skip
_INPUT_FILE = (
    select(_INPUT_FILE_OBJECT)
    .where(files.c.id == jobs.c.file_id, files.c.tenant_id == jobs.c.tenant_id, files.c.deleted_at.is_(None))
    .correlate(jobs)
    .scalar_subquery()
    .label(INPUT_FILE)
)


def _result_document(message: JobMessage, result: BaseModel) -> Document:
    """The stored fields of a job's result: its job, tenant and input, when it was made, and its own. Made
    once, when the handler's result is checked (`JobRunner._run`): its size checked, then stored as it is."""
    base = ResultBase(
        job_id=message.job_id, type=message.type, input_file_id=message.file_id, created_at=utc_now()
    )
    document = {"tenant_id": message.tenant_id, **base.model_dump(), **result.model_dump(mode="json")}
    document["created_at"] = base.created_at
    return document


def _check_size(message: JobMessage, document: Document) -> None:
    """Refuse a result document too large to store (`RESULT_MAX_BYTES`) as the parameters' doing: the same
    input and parameters make the same result, so a retry would fail again. (It failed INTERNAL_ERROR at the
    write, with `DocumentTooLarge` in the log, the files it saved kept.)"""
    size = len(bson.encode(document))
    if size > RESULT_MAX_BYTES:
        raise InvalidParams(
            f"the result of this {message.type} job would take {size / 1024 / 1024:.1f} MB, past the"
            f" {DOCUMENT_MAX_MB} MB one result can hold; ask for a smaller one"
        )


async def _file_chunks(path: Path) -> AsyncIterator[bytes]:
    with path.open("rb") as handle:
        while chunk := await asyncio.to_thread(handle.read, ARTIFACT_CHUNK_BYTES):
            yield chunk
