"""The Prometheus families every process exports, with values that follow real jobs."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from medialens_shared import outbox
from medialens_shared.contracts import JobMessage
from medialens_shared.db import DatabaseManager
from medialens_shared.errors import MediaDecodeError, TransientJobError
from medialens_shared.filestore import FileStore
from medialens_shared.metrics import memory_limit_bytes
from medialens_shared.settings import Settings
from medialens_shared.signals import JobSignals
from medialens_shared.tasks import JobContext, JobRunner
from scripts.samples import make_video
from tests.fixtures.stack import RecordedDelivery, Stack, run_job

pytestmark = pytest.mark.integration

Labels = dict[str, str]


def sample(name: str, **labels: str) -> float:
    """The value of the sample `name` whose labels include `labels` (0 when there is none)."""
    for family in text_string_to_metric_families(generate_latest().decode()):
        for found in family.samples:
            if found.name == name and labels.items() <= found.labels.items():
                return float(found.value)
    return 0.0


def samples(name: str) -> list[tuple[Labels, float]]:
    return [
        (found.labels, float(found.value))
        for family in text_string_to_metric_families(generate_latest().decode())
        for found in family.samples
        if found.name == name
    ]


async def eventually(check: Callable[[], bool], *, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "the metric did not get there in time"
        await asyncio.sleep(0.1)


async def test_a_job_through_the_stack_moves_every_job_family(stack: Stack, tmp_path: Path) -> None:
    """Submitted, started, succeeded, duration, queue wait and HTTP counts each grow by one job."""
    kind = {"type": "video.probe"}
    before = {
        name: sample(name, **kind)
        for name in (
            "medialens_jobs_submitted_total",
            "medialens_jobs_started_total",
            "medialens_jobs_succeeded_total",
            "medialens_job_duration_seconds_count",
            "medialens_job_queue_wait_seconds_count",
        )
    }
    posts = sample("medialens_http_requests_total", method="POST", route="/v1/jobs", status="202")
    path = tmp_path / "clip.mp4"
    make_video(path, duration_s=1.0, fps=10, width=64, height=48)
    job = await run_job(stack.client(), "video.probe", path)
    assert job["status"] == "succeeded"

    # The worker records its families one after the other as the job ends: wait until all have moved.
    await eventually(lambda: all(sample(name, **kind) > value for name, value in before.items()))
    for name, value in before.items():
        assert sample(name, **kind) == value + 1, name
    assert sample("medialens_http_requests_total", method="POST", route="/v1/jobs", status="202") == posts + 1
    assert sample("medialens_job_duration_seconds_sum", **kind) > 0
    assert sample("medialens_jobs_in_progress", **kind) == 0


async def test_the_relay_exports_the_queues_of_the_running_stack(stack: Stack, settings: Settings) -> None:
    """Each work queue and the dead-letter queue have depth and consumer gauges, the services counted as the
    consumers of their queues. (The values of every backlog gauge against a known backlog: test_relay.)"""
    prefix = settings.rabbitmq.exchange
    queues = {f"{prefix}.{service}" for service in ("video", "audio", "data")} | {f"{prefix}.dead"}

    def sampled() -> bool:
        return queues <= {labels["queue"] for labels, _ in samples("medialens_queue_consumers")}

    await eventually(sampled)
    consumers = {labels["queue"]: value for labels, value in samples("medialens_queue_consumers")}
    depth = {labels["queue"]: value for labels, value in samples("medialens_queue_messages")}
    for service in ("video", "audio", "data"):
        assert consumers[f"{prefix}.{service}"] >= 1  # the in-process service consumes it
    assert queues <= depth.keys()
    assert consumers[f"{prefix}.dead"] == 0  # operators read the dead letters; the relay watches its copy


async def test_a_dead_letter_is_counted_by_type(stack: Stack, db: DatabaseManager) -> None:
    """A message sent to the dead letters is counted once by the relay, under its job type."""
    before = sample("medialens_jobs_dead_lettered_total", type="audio.probe")
    message = JobMessage(job_id="dead-letter-metric", type="audio.probe", tenant_id="nobody", file_id=None)
    async with db.session() as session:
        await outbox.enqueue(session, message, dead=True)
        await session.commit()
    await eventually(lambda: sample("medialens_jobs_dead_lettered_total", type="audio.probe") == before + 1)


async def test_failures_and_retries_are_counted_by_type_and_error_code(
    settings: Settings, db: DatabaseManager, new_job: Any, tenant_id: str, tmp_path: Path
) -> None:
    """A permanent failure counts under its error_code; a passing fault counts as a retry."""

    def runner(error: BaseException) -> JobRunner:
        async def handler(_ctx: JobContext) -> Any:
            raise error

        worker = settings.worker.model_copy(update={"scratch_dir": str(tmp_path)})
        return JobRunner(
            service="video",
            handlers={"video.probe": handler},
            settings=settings.model_copy(update={"worker": worker}),
            db=db,
            store=FileStore(db.gridfs, db.gridfs_chunks),
            signals=JobSignals(db.redis, prefix=settings.redis.prefix),
        )

    failed = sample("medialens_jobs_failed_total", type="video.probe", error_code="MEDIA_DECODE_ERROR")
    retried = sample("medialens_jobs_retried_total", type="video.probe")
    for error in (MediaDecodeError("damaged"), TransientJobError("blinked")):
        job_id = await new_job()
        body = JobMessage(job_id=job_id, type="video.probe", tenant_id=tenant_id, file_id=None).model_dump(
            mode="json"
        )
        await runner(error).handle(body, RecordedDelivery())
    assert (
        sample("medialens_jobs_failed_total", type="video.probe", error_code="MEDIA_DECODE_ERROR")
        == failed + 1
    )
    assert sample("medialens_jobs_retried_total", type="video.probe") == retried + 1


async def test_every_process_exports_its_pools_and_its_memory(stack: Stack, settings: Settings) -> None:
    """Pool figures of each live database manager (with its capacity), resident memory and open fds."""
    pools = {
        (labels["process"], labels["pool"], labels["state"]): value
        for labels, value in samples("medialens_db_pool_connections")
    }
    size, overflow = settings.postgres.pool_for("gateway")
    assert pools[("gateway", "postgres", "capacity")] == size + overflow
    assert pools[("gateway", "postgres", "size")] == size
    for process in ("gateway", "relay", "video", "audio", "data"):
        assert 0 <= pools[(process, "postgres", "checked_out")] <= pools[(process, "postgres", "capacity")]
        assert pools[(process, "redis", "max")] == settings.redis.max_connections
    assert sample("process_resident_memory_bytes") > 10 * 1024 * 1024
    assert sample("process_open_fds") > 0
    limit = memory_limit_bytes()
    assert sample("medialens_process_memory_limit_bytes") == (limit or 0)


def test_a_process_that_samples_no_backlog_exports_no_outbox_figures() -> None:
    """Only the relay, which samples them, exports the outbox and lease gauges: a process that exported
    them as 0 made an alert on their `max` unable to tell that no relay ran."""
    exported = subprocess.run(
        [
            sys.executable,
            "-c",
            "import medialens_shared.metrics\n"
            "from prometheus_client import REGISTRY\n"
            "print(sorted(m.name for m in REGISTRY.collect() if m.name.startswith('medialens_')))",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "medialens_jobs_started" in exported  # the families every process exports are there
    for name in ("medialens_outbox_lag_seconds", "medialens_outbox_pending", "medialens_jobs_lease_expired"):
        assert name not in exported
