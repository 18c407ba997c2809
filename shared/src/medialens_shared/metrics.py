"""The Prometheus metric families of every MediaLens process, all named `medialens_*`.

Every process serves the default registry (the gateway on `/metrics`, the services and the relay on their
operations port), which also holds prometheus-client's `process_*` (resident memory, open fds) and
`python_gc_*` families. Which process moves which family:

    gateway   medialens_http_requests_total, medialens_http_request_duration_seconds (by route; gateway's
              metrics.py), medialens_jobs_submitted_total
    services  medialens_jobs_{started,succeeded,failed,cancelled,retried}_total,
              medialens_job_duration_seconds, medialens_job_queue_wait_seconds, medialens_jobs_in_progress,
              medialens_memory_trims_total, medialens_memory_trimmed_bytes_total (`memtrim`)
    relay     medialens_jobs_dead_lettered_total, medialens_jobs_reaped_total, medialens_jobs_expired_total,
              medialens_jobs_failed_total (the jobs it fails: a reaped job at its last attempt, a
              dead-lettered one), medialens_jobs_republished_total, medialens_queue_messages,
              medialens_queue_consumers, medialens_outbox_lag_seconds, medialens_outbox_pending,
              medialens_jobs_lease_expired (sampled every reap round by `sample_backlog`)
    all       medialens_db_pool_connections{process,pool,state} (read at scrape time from every live
              database manager), medialens_process_memory_limit_bytes (the cgroup's limit, when there is one),
              medialens_gc_frozen_objects (the start-up heap `memtrim.frozen_startup_heap` keeps out of the
              collector's passes: 0 until start-up is done)
"""

from __future__ import annotations

import contextlib
import gc
import logging
import time
import weakref
from collections.abc import Iterable, Iterator
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import aiormq
from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import func, select

from medialens_shared.aio import answered
from medialens_shared.contracts import JobStatus
from medialens_shared.tables import jobs, outbox

if TYPE_CHECKING:
    from faststream.rabbit import RabbitBroker

    from medialens_shared.bus import Topology
    from medialens_shared.db import DatabaseManager

log = logging.getLogger(__name__)

_JOB_SECONDS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
_WAIT_SECONDS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)

JOBS_SUBMITTED = Counter("medialens_jobs_submitted", "Jobs accepted by the gateway (202)", ["type"])
JOBS_STARTED = Counter("medialens_jobs_started", "Job attempts claimed by a worker", ["type"])
JOBS_SUCCEEDED = Counter("medialens_jobs_succeeded", "Jobs that ended succeeded", ["type"])
JOBS_FAILED = Counter(
    "medialens_jobs_failed", "Jobs that ended failed, by error code", ["type", "error_code"]
)
JOBS_CANCELLED = Counter("medialens_jobs_cancelled", "Jobs that ended cancelled while running", ["type"])
JOBS_RETRIED = Counter(
    "medialens_jobs_retried", "Attempts sent back to the queue after a passing fault", ["type"]
)
JOBS_DEAD_LETTERED = Counter(
    "medialens_jobs_dead_lettered", "Job messages that reached the dead-letter queue", ["type"]
)
JOBS_REAPED = Counter(
    "medialens_jobs_reaped",
    "Running jobs whose worker stopped heart-beating, requeued or failed by the relay",
    ["type", "outcome"],
)
JOBS_EXPIRED = Counter(
    "medialens_jobs_expired",
    "Finished jobs deleted by the relay `relay.job_retention_s` after they finished, with their results",
    ["type"],
)
JOBS_REPUBLISHED = Counter(
    "medialens_jobs_republished",
    "Jobs still queued `relay.republish_after_s` after they were queued, published again by the relay",
    ["type"],
)
JOB_DURATION = Histogram(
    "medialens_job_duration_seconds",
    "Time of one attempt, claim to terminal status",
    ["type"],
    buckets=_JOB_SECONDS,
)
JOB_QUEUE_WAIT = Histogram(
    "medialens_job_queue_wait_seconds",
    "Time from submission to the first start (started_at - created_at)",
    ["type"],
    buckets=_WAIT_SECONDS,
)
MEMORY_TRIMS = Counter("medialens_memory_trims", "Times this process gave freed memory back to the system")
MEMORY_TRIMMED_BYTES = Counter(
    "medialens_memory_trimmed_bytes", "Resident memory given back to the system by those trims"
)
GC_FROZEN_OBJECTS = Gauge(
    "medialens_gc_frozen_objects", "Objects frozen out of the garbage collector's passes (the start-up heap)"
)
GC_FROZEN_OBJECTS.set_function(gc.get_freeze_count)
JOBS_IN_PROGRESS = Gauge("medialens_jobs_in_progress", "Jobs this process runs now", ["type"])
QUEUE_MESSAGES = Gauge(
    "medialens_queue_messages", "Ready messages in a queue, as the broker counts", ["queue"]
)
QUEUE_CONSUMERS = Gauge("medialens_queue_consumers", "Consumers of a queue, as the broker counts", ["queue"])
#: The relay's figures of the outbox and the leases: registered by its first sample (`sample_backlog`), so
#: that a process that samples nothing exports none. Registered at import like the others, every process
#: exported them as 0, and alerts on their `max` could not tell that no relay ran.
OUTBOX_LAG = Gauge(
    "medialens_outbox_lag_seconds", "Age of the oldest unsent outbox entry (0: none)", registry=None
)
OUTBOX_PENDING = Gauge("medialens_outbox_pending", "Unsent outbox entries", registry=None)
JOBS_LEASE_EXPIRED = Gauge(
    "medialens_jobs_lease_expired",
    "Running jobs whose lease ran out (no heartbeat), not yet reaped",
    registry=None,
)


def _relay_gauges(*, shown: bool) -> None:
    """Put the relay's gauges in the registry (a sample of the database succeeded), or take them out (one
    failed: no figure rather than the last one standing); either is a no-op when already so."""
    for gauge in (OUTBOX_LAG, OUTBOX_PENDING, JOBS_LEASE_EXPIRED):
        if shown:
            with contextlib.suppress(ValueError):  # registered already
                REGISTRY.register(gauge)
        else:
            with contextlib.suppress(KeyError):  # not registered
                REGISTRY.unregister(gauge)


# --- job hooks of the task base ------------------------------------------------------------------------


def job_started(job_type: str, *, created_at: datetime, started_at: datetime | None, attempt: int) -> None:
    JOBS_STARTED.labels(job_type).inc()
    if attempt == 1 and started_at is not None:
        JOB_QUEUE_WAIT.labels(job_type).observe(max((started_at - created_at).total_seconds(), 0.0))


@contextlib.contextmanager
def job_running(job_type: str) -> Iterator[None]:
    """Counts the job as in progress and times it, whatever its end."""
    start = time.perf_counter()
    JOBS_IN_PROGRESS.labels(job_type).inc()
    try:
        yield
    finally:
        JOBS_IN_PROGRESS.labels(job_type).dec()
        JOB_DURATION.labels(job_type).observe(time.perf_counter() - start)


def job_finished(job_type: str, status: JobStatus, *, error_code: str | None = None) -> None:
    if status is JobStatus.SUCCEEDED:
        JOBS_SUCCEEDED.labels(job_type).inc()
    elif status is JobStatus.FAILED:
        JOBS_FAILED.labels(job_type, error_code or "UNKNOWN").inc()
    elif status is JobStatus.CANCELLED:
        JOBS_CANCELLED.labels(job_type).inc()


# --- the relay's view of the backlog -------------------------------------------------------------------


#: Seconds the broker has to tell every queue's depth in a sample.
QUEUE_SAMPLE_TIMEOUT_S = 2.0


async def sample_backlog(
    *, broker: RabbitBroker, topology: Topology, db: DatabaseManager, services: Iterable[str]
) -> None:
    """Queue depths and consumers, outbox lag and expired leases, into their gauges (never raises).

    The database's figures do not wait on the broker's: the outbox lag is what tells that RabbitMQ is away.
    A sample of the queues that fails drops their series rather than leave the last depths standing, as if
    the queues had not moved since the broker stopped answering; so does one of the database, for the
    outbox and lease figures.
    """
    from medialens_shared.bus import queue_stats

    queues = [topology.work_queue(service).name for service in services] + [topology.dead.name]

    async def sample_queues() -> None:
        for queue in queues:
            try:
                stats = await queue_stats(broker, queue)
            except aiormq.exceptions.ChannelNotFoundEntity:  # not declared yet: its service has not started
                for gauge in (QUEUE_MESSAGES, QUEUE_CONSUMERS):
                    with contextlib.suppress(KeyError):
                        gauge.remove(queue)
                continue
            QUEUE_MESSAGES.labels(queue).set(stats.messages)
            QUEUE_CONSUMERS.labels(queue).set(stats.consumers)

    try:
        # Bounded: a broker fallen silent answered nothing, and the relay's rounds (its reaping, its stop)
        # waited here until the connection's heartbeat gave up, minutes later.
        await answered(sample_queues(), QUEUE_SAMPLE_TIMEOUT_S)
    except Exception as exc:
        log.debug("queues not sampled this round (%s)", exc)
        QUEUE_MESSAGES.clear()
        QUEUE_CONSUMERS.clear()
    try:
        async with db.session() as session:
            unsent = (
                await session.execute(
                    select(
                        func.count(),
                        func.coalesce(func.extract("epoch", func.now() - func.min(outbox.c.created_at)), 0),
                    ).where(outbox.c.sent_at.is_(None))
                )
            ).one()
            expired = await session.scalar(
                select(func.count()).where(
                    jobs.c.status == JobStatus.RUNNING.value, jobs.c.lease_expires_at < func.now()
                )
            )
    except Exception as exc:
        log.debug("outbox and leases not sampled this round (%s)", exc)
        _relay_gauges(shown=False)
        return
    _relay_gauges(shown=True)
    OUTBOX_PENDING.set(unsent[0])
    OUTBOX_LAG.set(float(unsent[1]))
    JOBS_LEASE_EXPIRED.set(expired or 0)


# --- collectors read at scrape time -------------------------------------------------------------------


class _Pools(Protocol):
    name: str
    pool_size: int
    max_overflow: int

    def pool_stats(self) -> dict[str, dict[str, int]]: ...


_managers: weakref.WeakSet[_Pools] = weakref.WeakSet()


def track_pools(manager: _Pools) -> None:
    """Export `manager`'s pool figures (`pool_stats()`) for as long as it lives."""
    _managers.add(manager)


class _PoolCollector(Collector):
    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            "medialens_db_pool_connections",
            "Connections of this process's pools by state; 'capacity' is pool_size + max_overflow",
            labels=["process", "pool", "state"],
        )
        for manager in list(_managers):
            stats = manager.pool_stats()
            stats["postgres"]["capacity"] = manager.pool_size + manager.max_overflow
            for pool, figures in stats.items():
                for state, value in figures.items():
                    family.add_metric([manager.name, pool, state], value)
        yield family


_CGROUP_LIMITS = (Path("/sys/fs/cgroup/memory.max"), Path("/sys/fs/cgroup/memory/memory.limit_in_bytes"))


def memory_limit_bytes() -> int | None:
    """This container's memory limit from its cgroup (v2, then v1); None when unlimited or unknown."""
    for path in _CGROUP_LIMITS:
        with contextlib.suppress(OSError, ValueError):
            text = path.read_text().strip()
            if text == "max":
                return None
            limit = int(text)
            return limit if limit < 2**60 else None  # cgroup v1 writes "no limit" as a huge number
    return None


class _MemoryLimitCollector(Collector):
    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            "medialens_process_memory_limit_bytes", "Memory limit of this process's container (cgroup)"
        )
        if (limit := memory_limit_bytes()) is not None:
            family.add_metric([], limit)
        yield family


REGISTRY.register(_PoolCollector())
REGISTRY.register(_MemoryLimitCollector())
