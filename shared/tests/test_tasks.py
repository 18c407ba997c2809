"""The task base's policy, run on the real PostgreSQL, MongoDB (GridFS and results) and Redis.

The delivery is a recording stand-in for FastStream's RabbitMessage (the `Delivery` protocol); the worker's
tests settle real deliveries on the real broker.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import signal
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from pydantic import BaseModel, SecretStr
from pymongo.errors import ConnectionFailure as MongoConnectionFailure
from redis.asyncio import Redis
from redis.exceptions import ReadOnlyError
from sqlalchemy import select, text, update
from sqlalchemy.engine import make_url

from medialens_shared import jobstore, tasks
from medialens_shared.contracts import (
    AudioProbeResult,
    JobMessage,
    ProbeFormat,
    ProbeVideoStream,
    VideoProbeResult,
)
from medialens_shared.db import DatabaseManager
from medialens_shared.envelope import utc_now
from medialens_shared.errors import InputNotFound, JobCancelled, MediaDecodeError, TransientJobError
from medialens_shared.filestore import FileStore, StoredFile
from medialens_shared.outbox import DELAY_TIERS_S
from medialens_shared.settings import Settings
from medialens_shared.signals import JobSignals
from medialens_shared.tables import files, jobs, outbox, webhook_deliveries
from medialens_shared.tasks import RESULT_WRITES, Handler, JobContext, JobRunner
from tests.fixtures.disk import small_disk
from tests.fixtures.proxy import TcpProxy
from tests.fixtures.servers import unreachable
from tests.fixtures.stack import RecordedDelivery

pytestmark = pytest.mark.integration

PROBE = VideoProbeResult(
    format=ProbeFormat(name="mov,mp4", duration_s=2.5, size_bytes=1234, bit_rate=800_000),
    video=ProbeVideoStream(codec="h264", width=320, height=240, fps=25.0, frame_count=62, pix_fmt="yuv420p"),
    audio=[],
)


@pytest.fixture
def scratch_root(tmp_path: Path) -> Path:
    root = tmp_path / "scratch"
    root.mkdir()
    return root


@pytest.fixture
def make_runner(
    settings: Settings,
    db: DatabaseManager,
    store: FileStore,
    signals: JobSignals,
    scratch_root: Path,
    tmp_path: Path,
) -> Callable[..., JobRunner]:
    def make(
        handlers: dict[str, Handler], *, database: DatabaseManager | None = None, **worker: Any
    ) -> JobRunner:
        places = {"scratch_dir": str(scratch_root), "input_cache_dir": str(tmp_path)}
        worker_settings = settings.worker.model_copy(update={**places, **worker})
        return JobRunner(
            service="video",
            handlers=handlers,
            settings=settings.model_copy(update={"worker": worker_settings}),
            db=database or db,
            store=store,
            signals=signals,
        )

    return make


class Calls:
    """A handler that records each context it is given and then does `action`."""

    def __init__(self, action: Callable[[JobContext], Any] | None = None) -> None:
        self.contexts: list[JobContext] = []
        self.action = action

    async def __call__(self, ctx: JobContext) -> BaseModel:
        self.contexts.append(ctx)
        if self.action is not None:
            outcome = self.action(ctx)
            if asyncio.iscoroutine(outcome):
                outcome = await outcome
            if isinstance(outcome, BaseModel):
                return outcome
        return PROBE


async def deliver(runner: JobRunner, body: Any) -> list[str]:
    """Hand `body` to the runner as one delivery; how the delivery was settled."""
    delivery = RecordedDelivery()
    await runner.handle(body, delivery)
    return delivery.settled


def body_of(job_id: str, tenant_id: str, *, job_type: str = "video.probe", file_id: str | None = None,
            params: dict[str, Any] | None = None) -> dict[str, Any]:  # fmt: skip
    message = JobMessage(
        job_id=job_id, type=job_type, tenant_id=tenant_id, file_id=file_id, params=params or {}
    )
    return message.model_dump(mode="json")


def entries(directory: Path) -> list[Path]:
    return list(directory.iterdir())


def tree(root: Path) -> list[str]:
    """Every file and directory under `root` (the scratch directory and the input cache's), relative."""
    return sorted(str(path.relative_to(root)) for path in root.rglob("*"))


def kept_inputs(tmp_path: Path) -> list[str]:
    """The input cache's kept files, as `<sha256>/<name>` (its directory is made by its first fetch)."""
    kept = []
    for cache in tmp_path.glob("medialens-inputs-*"):
        kept += [str(path.relative_to(cache)) for path in cache.rglob("*") if path.is_file()]
    return sorted(kept)


def sha256_of(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


async def row_of(db: DatabaseManager, job_id: str) -> jobstore.JobRow:
    async with db.session() as session:
        row = await jobstore.get(session, job_id=job_id)
    assert row is not None
    return row


def raiser(error: BaseException) -> Callable[[JobContext], None]:
    def act(_ctx: JobContext) -> None:
        raise error

    return act


async def test_success_stores_the_result_and_marks_succeeded(
    make_runner, new_job, new_file, tenant_id: str, db: DatabaseManager, scratch_root: Path
) -> None:
    """A handler's result is upserted in `results` by job id, and the job ends succeeded at progress 1.0."""
    content = b"\x00\x00\x00\x20ftypisom" + bytes(range(256)) * 40
    file_id = await new_file(content, filename="clip.mp4")
    job_id = await new_job(file_id=file_id)
    seen: dict[str, Any] = {}

    def act(ctx: JobContext) -> None:
        seen["input"] = ctx.require_input().read_bytes()
        seen["suffix"] = ctx.require_input().suffix
        seen["scratch"] = ctx.scratch
        seen["attempt"] = ctx.attempt
        seen["params"] = ctx.params.model_dump()
        assert ctx.settings.worker.scratch_dir == str(scratch_root)

    handler = Calls(act)
    runner = make_runner({"video.probe": handler})
    before = utc_now()
    assert await deliver(runner, body_of(job_id, tenant_id, file_id=file_id)) == ["ack"]

    assert seen == {
        "input": content,
        "suffix": ".mp4",
        "scratch": seen["scratch"],
        "attempt": 1,
        "params": {},
    }
    assert seen["scratch"] not in entries(seen["scratch"].parent)
    assert entries(scratch_root) == []
    row = await row_of(db, job_id)
    assert (row["status"], row["progress"], row["message"], row["attempts"]) == ("succeeded", 1.0, "done", 1)
    assert row["error_code"] is None
    assert row["started_at"] is not None
    assert row["finished_at"] >= row["started_at"]
    document = await db.collection("results").find_one({"_id": job_id})
    assert document is not None
    assert (document["job_id"], document["type"], document["input_file_id"]) == (
        job_id,
        "video.probe",
        file_id,
    )
    assert document["tenant_id"] == tenant_id
    assert document["format"] == PROBE.model_dump(mode="json")["format"]
    assert document["video"]["width"] == 320
    assert document["audio"] == []
    assert document["created_at"] >= before.replace(microsecond=0)


async def test_a_rerun_of_a_job_whose_result_was_stored_finishes_it_without_running_it_again(
    make_runner, new_job, tenant_id: str, db: DatabaseManager
) -> None:
    """A worker killed between storing the result and marking the job succeeded: the job's next attempt
    finds the result, finishes the job, and neither runs the handler nor writes the result again."""
    job_id = await new_job(attempts=1, message="requeued: its worker's lease expired")
    earlier = {"_id": job_id, "tenant_id": tenant_id, "type": "video.probe", "format": {"name": "x"}}
    await db.collection("results").insert_one(earlier | {RESULT_WRITES: 1})
    handler = Calls()
    runner = make_runner({"video.probe": handler})
    assert await deliver(runner, body_of(job_id, tenant_id)) == ["ack"]
    assert handler.contexts == []
    async with db.session() as session:
        row = await jobstore.get(session, job_id=job_id)
    assert row is not None
    assert (row["status"], row["attempts"]) == ("succeeded", 2)
    stored = await db.collection("results").find_one({"_id": job_id})
    assert stored is not None
    assert (stored[RESULT_WRITES], stored["format"]) == (1, {"name": "x"})


async def test_a_first_attempt_never_looks_for_an_earlier_result(
    make_runner, new_job, tenant_id: str, db: DatabaseManager
) -> None:
    """Only a rerun may skip its handler: a first attempt runs it (a stray document changes nothing)."""
    job_id = await new_job()
    await db.collection("results").insert_one({"_id": job_id, "tenant_id": tenant_id, RESULT_WRITES: 1})
    handler = Calls()
    runner = make_runner({"video.probe": handler})
    assert await deliver(runner, body_of(job_id, tenant_id)) == ["ack"]
    assert len(handler.contexts) == 1


async def test_a_duplicate_delivery_of_a_finished_job_changes_nothing(
    make_runner, new_job, tenant_id: str, db: DatabaseManager
) -> None:
    """Delivering the same message again acks it, leaves row and result untouched, skips the handler."""
    job_id = await new_job()
    handler = Calls()
    runner = make_runner({"video.probe": handler})
    body = body_of(job_id, tenant_id)
    assert await deliver(runner, body) == ["ack"]
    row = await row_of(db, job_id)
    document = await db.collection("results").find_one({"_id": job_id})

    for _ in range(2):
        assert await deliver(runner, body) == ["ack"]
    again = await row_of(db, job_id)
    assert len(handler.contexts) == 1
    assert (again["status"], again["attempts"], again["finished_at"], again["updated_at"]) == (
        "succeeded", 1, row["finished_at"], row["updated_at"],
    )  # fmt: skip
    assert await db.collection("results").find_one({"_id": job_id}) == document


async def test_an_unknown_job_is_acked_and_skipped(make_runner, tenant_id: str) -> None:
    """A message for a job id with no row is acked without running the handler."""
    handler = Calls()
    runner = make_runner({"video.probe": handler})
    assert await deliver(runner, body_of("job-that-never-was", tenant_id)) == ["ack"]
    assert handler.contexts == []


async def test_a_permanent_error_fails_the_job_with_its_code(
    make_runner, new_job, tenant_id: str, db: DatabaseManager
) -> None:
    """MediaDecodeError fails the job at once with MEDIA_DECODE_ERROR and the error's message."""
    job_id = await new_job()
    runner = make_runner({"video.probe": Calls(raiser(MediaDecodeError("the video stream is damaged")))})
    assert await deliver(runner, body_of(job_id, tenant_id)) == ["ack"]
    row = await row_of(db, job_id)
    assert (row["status"], row["error_code"], row["error_message"]) == (
        "failed", "MEDIA_DECODE_ERROR", "the video stream is damaged",
    )  # fmt: skip
    assert row["attempts"] == 1
    assert row["finished_at"] is not None
    assert await db.collection("results").find_one({"_id": job_id}) is None


async def test_a_transient_error_requeues_until_attempts_run_out(
    make_runner, new_job, tenant_id: str, db: DatabaseManager
) -> None:
    """A passing fault sends the job back to queued with a delayed outbox entry, and after max_attempts
    fails it RETRIES_EXHAUSTED."""
    job_id = await new_job()
    handler = Calls(raiser(TransientJobError("mongo blinked")))
    runner = make_runner({"video.probe": handler}, max_attempts=3)
    body = body_of(job_id, tenant_id)
    for attempt in (1, 2):
        assert await deliver(runner, body) == ["ack"]
        row = await row_of(db, job_id)
        assert (row["status"], row["attempts"], row["finished_at"], row["worker"]) == (
            "queued",
            attempt,
            None,
            None,
        )
        assert row["message"].endswith("after: mongo blinked")
        assert row["message"].startswith("retrying in ")
    async with db.session() as session:
        entries = (await session.execute(select(outbox).where(outbox.c.job_id == job_id))).mappings().all()
    assert len(entries) == 2
    assert all(entry["delay_s"] in DELAY_TIERS_S and not entry["dead"] for entry in entries)
    assert all(entry["routing_key"] == "video.probe" and entry["payload"] == body for entry in entries)
    assert await deliver(runner, body) == ["ack"]
    row = await row_of(db, job_id)
    assert (row["status"], row["attempts"], row["error_code"]) == ("failed", 3, "RETRIES_EXHAUSTED")
    assert row["error_message"] == "gave up after 3 attempts; last error: mongo blinked"
    assert [ctx.attempt for ctx in handler.contexts] == [1, 2, 3]


async def test_an_unexpected_exception_is_an_internal_error(
    make_runner, new_job, tenant_id: str, db: DatabaseManager
) -> None:
    """A bug in a handler fails the job with INTERNAL_ERROR naming the exception type, not its text."""
    job_id = await new_job()
    runner = make_runner({"video.probe": Calls(raiser(KeyError("secret detail")))})
    assert await deliver(runner, body_of(job_id, tenant_id)) == ["ack"]
    row = await row_of(db, job_id)
    assert (row["status"], row["error_code"]) == ("failed", "INTERNAL_ERROR")
    assert "KeyError" in row["error_message"]
    assert "secret detail" not in row["error_message"]


async def test_a_wrong_result_model_is_an_internal_error(
    make_runner, new_job, tenant_id: str, db: DatabaseManager
) -> None:
    """A handler returning a model that does not fit its job type's result fails with INTERNAL_ERROR."""
    job_id = await new_job()
    wrong = AudioProbeResult(codec="aac", sample_rate=48000, channels=2, duration_s=1.0, bit_rate=None)
    runner = make_runner({"video.probe": Calls(lambda _ctx: wrong)})
    assert await deliver(runner, body_of(job_id, tenant_id)) == ["ack"]
    row = await row_of(db, job_id)
    assert (row["status"], row["error_code"]) == ("failed", "INTERNAL_ERROR")
    assert "ValidationError" in row["error_message"]


async def cancelled_while_looping(
    make_runner, body: dict[str, Any], db: DatabaseManager, signals: JobSignals, report: float | None = None
) -> jobstore.JobRow:
    """Run the job of `body` with a handler that loops on check_cancelled (after reporting `report`, if
    given), cancel it once it runs, and return its row after the handler stopped within 1.5 s, acked."""
    started = asyncio.Event()

    async def loop(ctx: JobContext) -> None:
        if report is not None:
            await ctx.progress(report, "decoding 40/100 frames", force=True)
        started.set()
        while True:
            ctx.check_cancelled()
            await asyncio.sleep(0.02)

    runner = make_runner({"video.probe": Calls(loop)})
    delivery = RecordedDelivery()
    task = asyncio.create_task(runner.handle(body, delivery))
    await asyncio.wait_for(started.wait(), 5)
    job_id = body["job_id"]
    assert (await row_of(db, job_id))["status"] == "running"
    await signals.request_cancel(job_id)
    await asyncio.wait_for(task, 1.5)
    assert delivery.settled == ["ack"]
    return await row_of(db, job_id)


async def test_a_requested_cancel_reaches_a_looping_handler(
    make_runner, new_job, tenant_id: str, db: DatabaseManager, signals: JobSignals
) -> None:
    """A handler looping on check_cancelled stops within about a second of request_cancel: cancelled, its
    progress the last it reported (it read 0: a running job's progress lives in Redis, not its row)."""
    job_id = await new_job()
    row = await cancelled_while_looping(make_runner, body_of(job_id, tenant_id), db, signals, report=0.4)
    assert (row["status"], row["message"], row["error_code"]) == ("cancelled", "cancelled", None)
    assert row["progress"] == 0.4
    assert row["finished_at"] is not None


async def test_a_rerun_cancelled_before_its_first_report_does_not_claim_its_dead_attempts_progress(
    make_runner, new_job, tenant_id: str, db: DatabaseManager, signals: JobSignals
) -> None:
    """A rerun (attempt 2) cancelled before it reports any progress ends with its row's progress, not the
    70 % its first attempt (whose worker died) last reported: that was how far the other attempt got."""
    job_id = await new_job(attempts=1)
    await signals.set_progress({"id": job_id, "attempts": 1, "progress": 0.7, "message": "decoding"})
    row = await cancelled_while_looping(make_runner, body_of(job_id, tenant_id), db, signals)
    assert row["attempts"] == 2
    assert (row["status"], row["progress"]) == ("cancelled", 0.0)


async def test_a_cancel_is_visible_to_a_worker_thread(
    make_runner, new_job, tenant_id: str, db: DatabaseManager, signals: JobSignals
) -> None:
    """ctx.cancelled, read by CPU work in run_cpu's thread, turns True after request_cancel."""
    job_id = await new_job()

    def spin(ctx: JobContext) -> int:
        import time

        deadline = time.monotonic() + 5
        while not ctx.cancelled and time.monotonic() < deadline:
            time.sleep(0.01)
        return 1 if ctx.cancelled else 0

    async def act(ctx: JobContext) -> None:
        await signals.request_cancel(job_id)
        assert await ctx.run_cpu(spin, ctx) == 1
        ctx.check_cancelled()

    runner = make_runner({"video.probe": Calls(act)})
    assert await deliver(runner, body_of(job_id, tenant_id)) == ["ack"]
    assert (await row_of(db, job_id))["status"] == "cancelled"


@pytest.mark.parametrize(
    "body",
    [
        {"nope": 1},
        "not json at all",
        None,
        {"job_id": "j", "type": "video.probe", "tenant_id": "t", "file_id": None, "x": 1},
    ],
    ids=["missing-fields", "string", "none", "extra-field"],
)
async def test_an_unreadable_body_is_rejected(make_runner, body: Any) -> None:
    """A body that is not a JobMessage is rejected, to be dead-lettered."""
    handler = Calls()
    assert await deliver(make_runner({"video.probe": handler}), body) == ["reject"]
    assert handler.contexts == []


async def test_a_delivery_of_a_job_running_elsewhere_is_skipped(
    make_runner, new_job, tenant_id: str, db: DatabaseManager
) -> None:
    """A message for a job another worker holds is acked and skipped: the lease, not the runner, decides."""
    job_id = await new_job(status="running", attempts=1, started_at=utc_now(), worker="video-elsewhere")
    handler = Calls()
    runner = make_runner({"video.probe": handler})
    assert await deliver(runner, body_of(job_id, tenant_id)) == ["ack"]
    assert handler.contexts == []
    row = await row_of(db, job_id)
    assert (row["status"], row["attempts"], row["worker"]) == ("running", 1, "video-elsewhere")


async def test_a_claim_holds_this_workers_lease(
    make_runner, new_job, tenant_id: str, db: DatabaseManager
) -> None:
    """While a job runs its row names this worker with a lease in the future; the end clears both."""
    job_id = await new_job()
    seen: list[jobstore.JobRow] = []

    async def act(_ctx: JobContext) -> None:
        seen.append(await row_of(db, job_id))

    runner = make_runner({"video.probe": Calls(act)}, lease_s=30)
    assert await deliver(runner, body_of(job_id, tenant_id)) == ["ack"]
    assert seen[0]["worker"] == runner.worker_id
    assert seen[0]["lease_expires_at"] > utc_now()
    row = await row_of(db, job_id)
    assert (row["status"], row["worker"], row["lease_expires_at"]) == ("succeeded", None, None)


async def test_a_claimed_job_runs_under_its_claims_row(
    make_runner, new_job, tenant_id: str, db: DatabaseManager
) -> None:
    """While its handler runs, a claimed job's row says running, "started", its attempt, this worker, a
    lease in the future and started_at; the context carries the same attempt."""
    job_id = await new_job(attempts=1, message="requeued: its worker's lease expired")
    seen: list[jobstore.JobRow] = []

    async def act(ctx: JobContext) -> None:
        assert ctx.attempt == 2
        seen.append(await row_of(db, job_id))

    runner = make_runner({"video.probe": Calls(act)}, lease_s=30)
    before = utc_now()
    assert await deliver(runner, body_of(job_id, tenant_id)) == ["ack"]
    row = seen[0]
    assert (row["status"], row["message"], row["attempts"], row["worker"]) == (
        "running", "started", 2, runner.worker_id,
    )  # fmt: skip
    assert row["started_at"] >= before - timedelta(seconds=1)
    assert timedelta(seconds=25) < row["lease_expires_at"] - row["started_at"] <= timedelta(seconds=31)
    assert (await row_of(db, job_id))["status"] == "succeeded"


async def test_a_part_run_by_the_runner_moves_its_composite_job(
    make_runner, new_job, tenant_id: str, db: DatabaseManager
) -> None:
    """The claim of a part moves its composite job to running, and the part's end moves it on: a parent
    of two parts is half done after the first, succeeded after the second."""
    parent = await new_job(job_type="media.analyze")
    first, second = await new_job(parent_id=parent), await new_job(parent_id=parent)
    seen: list[str] = []

    async def act(_ctx: JobContext) -> None:
        seen.append((await row_of(db, parent))["status"])

    runner = make_runner({"video.probe": Calls(act)})
    assert await deliver(runner, body_of(first, tenant_id)) == ["ack"]
    halfway = await row_of(db, parent)
    assert (halfway["status"], halfway["progress"], halfway["message"]) == ("running", 0.5, "1/2 parts done")
    assert await deliver(runner, body_of(second, tenant_id)) == ["ack"]
    done = await row_of(db, parent)
    assert seen == ["running", "running"]
    assert (done["status"], done["progress"]) == ("succeeded", 1.0)
    assert [(await row_of(db, part))["status"] for part in (first, second)] == ["succeeded", "succeeded"]


async def test_a_composite_job_whose_part_failed_reads_as_failed_not_done(
    make_runner, new_job, tenant_id: str, db: DatabaseManager
) -> None:
    """A parent of two parts, one succeeded and one failed, fails with the part's code, its progress the
    share of parts that succeeded and its message saying so (it read "2/2 parts done", progress 1.0)."""
    parent = await new_job(job_type="media.analyze")
    first, second = await new_job(parent_id=parent), await new_job(parent_id=parent)
    calls = 0

    async def act(_ctx: JobContext) -> None:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise MediaDecodeError("not a video")

    runner = make_runner({"video.probe": Calls(act)})
    for part in (first, second):
        assert await deliver(runner, body_of(part, tenant_id)) == ["ack"]
    done = await row_of(db, parent)
    assert (done["status"], done["progress"], done["message"]) == ("failed", 0.5, "failed; 1/2 parts done")
    assert done["error_code"] == "MEDIA_DECODE_ERROR"
    assert done["error_message"] == "video.probe failed: not a video"


async def test_a_composite_jobs_progress_never_goes_back(
    make_runner, new_job, tenant_id: str, db: DatabaseManager
) -> None:
    """Parts that end without a result (failed, cancelled) do not count as progress while the others run:
    a parent read "2/3 parts done" (0.67) after a part failed, then "failed; 1/3 parts done" (0.33), as a
    cancelled media.analyze read 0.8 then 0.6."""
    parent = await new_job(job_type="media.analyze")
    parts = [await new_job(parent_id=parent) for _ in range(3)]
    calls = 0

    async def act(_ctx: JobContext) -> None:
        nonlocal calls
        calls += 1
        if calls > 1:
            raise MediaDecodeError("not a video")

    runner = make_runner({"video.probe": Calls(act)})
    seen = []
    for part in parts:
        assert await deliver(runner, body_of(part, tenant_id)) == ["ack"]
        row = await row_of(db, parent)
        seen.append((row["status"], round(row["progress"], 3), row["message"]))
    assert seen == [
        ("running", 0.333, "1/3 parts done"),
        ("running", 0.333, "1/3 parts done, 1 ended without a result"),
        ("failed", 0.333, "failed; 1/3 parts done"),
    ]


@pytest.mark.parametrize("outcome", ["succeeded", "failed"])
async def test_a_job_with_a_callback_url_owes_its_webhook_when_the_runner_ends_it(
    make_runner, db_without_relay: DatabaseManager, tenant_with_jobs, outcome: str
) -> None:
    """A job with a callback_url, ended by the runner, has one pending webhook delivery of its final job
    object, stored with its status."""
    db, job_id = db_without_relay, f"job-{uuid.uuid4().hex[:12]}"
    tenant_id = await tenant_with_jobs(
        db, {"id": job_id, "status": "queued", "callback_url": "https://example.com/hook"}
    )
    action = None if outcome == "succeeded" else raiser(MediaDecodeError("not a video"))
    runner = make_runner({"video.probe": Calls(action)}, database=db)
    assert await deliver(runner, body_of(job_id, tenant_id)) == ["ack"]
    assert (await row_of(db, job_id))["status"] == outcome
    async with db.session() as session:
        deliveries = (
            (await session.execute(select(webhook_deliveries).where(webhook_deliveries.c.job_id == job_id)))
            .mappings()
            .all()
        )
    assert [(d["url"], d["status"], d["payload"]["status"]) for d in deliveries] == [
        ("https://example.com/hook", "pending", outcome)
    ]


async def test_a_lost_lease_stops_the_job_and_keeps_the_new_owner(
    make_runner, new_job, tenant_id: str, db: DatabaseManager
) -> None:
    """When the job is given to another worker, the heartbeat notices, the handler is cancelled and the
    new owner's row is left as it is."""
    job_id = await new_job()

    async def act(ctx: JobContext) -> None:
        async with db.session() as session:
            await session.execute(update(jobs).where(jobs.c.id == job_id).values(worker="video-newowner"))
            await session.commit()
        while True:
            ctx.check_cancelled()
            await asyncio.sleep(0.02)

    runner = make_runner({"video.probe": Calls(act)}, lease_s=1)
    assert await asyncio.wait_for(deliver(runner, body_of(job_id, tenant_id)), 5) == ["ack"]
    row = await row_of(db, job_id)
    assert (row["status"], row["worker"]) == ("running", "video-newowner")


async def test_a_job_claimed_again_by_the_same_worker_belongs_to_its_new_attempt(
    make_runner, new_job, tenant_id: str, db: DatabaseManager
) -> None:
    """A job is owned per claim, not per process: when its lease ran out and the reaper requeued it, the
    same worker may claim it again from the new message. The first attempt, still running, then stops as
    if another worker had taken the job and can neither end it nor send it back (here: its passing fault
    would requeue it under the second attempt); the second attempt's outcome is the job's."""
    job_id = await new_job()
    body = body_of(job_id, tenant_id)
    first_stopped = asyncio.Event()
    second: list[asyncio.Task[list[str]]] = []

    async def act(ctx: JobContext) -> None:
        if ctx.attempt == 2:
            await asyncio.wait_for(first_stopped.wait(), 5)
            return
        async with db.session() as session:  # the lease ran out and the reaper requeued the job
            await session.execute(
                update(jobs)
                .where(jobs.c.id == job_id)
                .values(status="queued", worker=None, lease_expires_at=None, message="requeued")
            )
            await session.commit()
        second.append(asyncio.create_task(deliver(runner, body)))  # this worker claims it again
        try:
            for _ in range(150):  # 3 s: nine heartbeats of a 1 s lease
                ctx.check_cancelled()
                await asyncio.sleep(0.02)
            raise TransientJobError("the first attempt was never stopped")
        finally:
            first_stopped.set()

    calls = Calls(act)
    runner = make_runner({"video.probe": calls}, lease_s=1)
    assert await asyncio.wait_for(deliver(runner, body), 10) == ["ack"]
    assert await asyncio.wait_for(second[0], 10) == ["ack"]
    assert [ctx.attempt for ctx in calls.contexts] == [1, 2]
    assert calls.contexts[0].cancelled  # stopped by its heartbeat, not by running out its 3 s
    row = await row_of(db, job_id)
    assert (row["status"], row["attempts"], row["worker"]) == ("succeeded", 2, None)


async def test_a_claim_without_the_database_is_requeued(
    settings: Settings,
    store: FileStore,
    signals: JobSignals,
    new_job,
    tenant_id: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """If PostgreSQL cannot be reached while claiming, after its tries the delivery is requeued, not acked
    or lost."""

    monkeypatch.setattr(tasks, "CLAIM_RETRY_PAUSES_S", (0.05, 0.05))
    manager = DatabaseManager(unreachable(settings, "postgres"), name="nopg")
    try:
        runner = JobRunner(
            service="video", handlers={"video.probe": Calls()}, settings=settings, db=manager, store=store,
            signals=signals,
        )  # fmt: skip
        assert await deliver(runner, body_of(await new_job(), tenant_id)) == ["requeue"]
    finally:
        await manager.close_all()


async def test_a_claim_waits_out_a_short_database_outage(
    settings: Settings,
    store: FileStore,
    signals: JobSignals,
    new_job,
    tenant_id: str,
    db: DatabaseManager,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """PostgreSQL away for a second while a delivery is claimed: the claim is tried again with the delivery
    held, and once the database is back the job runs on its first attempt, its delivery acked. Requeued at
    once instead, each try spent one of the queue's five deliveries in milliseconds, and a database restart
    dead-lettered the queue's backlog (its jobs failed RETRIES_EXHAUSTED without having run)."""
    monkeypatch.setattr(tasks, "CLAIM_RETRY_PAUSES_S", (0.2,) * 50)
    url = make_url(settings.postgres.url.get_secret_value())
    proxy = TcpProxy(url.host or "127.0.0.1", url.port or 5432)
    await proxy.start()
    through = SecretStr(url.set(port=proxy.port).render_as_string(hide_password=False))
    proxied = settings.postgres.model_copy(update={"url": through, "connect_timeout": 1.0})
    manager = DatabaseManager(settings.model_copy(update={"postgres": proxied}), name="pgproxy")
    job_id = await new_job()
    await proxy.cut()
    try:
        runner = JobRunner(
            service="video", handlers={"video.probe": Calls()}, settings=settings, db=manager, store=store,
            signals=signals,
        )  # fmt: skip
        delivered = asyncio.create_task(deliver(runner, body_of(job_id, tenant_id)))
        await asyncio.sleep(1.5)
        assert not delivered.done()  # held while the claim is tried again, neither acked nor requeued
        await proxy.restore()
        assert await asyncio.wait_for(delivered, 20) == ["ack"]
    finally:
        await manager.close_all()
        await proxy.cut()
    row = await row_of(db, job_id)
    assert (row["status"], row["attempts"]) == ("succeeded", 1)


async def test_release_unfinished_hands_running_jobs_back(
    make_runner, db_without_relay: DatabaseManager, tenant_with_jobs
) -> None:
    """At shutdown this worker's running jobs go back to queued with a fresh outbox entry; others stay.
    (On a database of its own: the session's stack, once started, would publish the job handed back, and
    a service claim it, before it is read here.)"""
    db = db_without_relay
    runner = make_runner({"video.probe": Calls()}, database=db)
    mine, theirs = f"job-{uuid.uuid4().hex[:12]}", f"job-{uuid.uuid4().hex[:12]}"
    tenant_id = await tenant_with_jobs(
        db,
        {"id": mine, "status": "running", "attempts": 1, "worker": runner.worker_id},
        {"id": theirs, "status": "running", "attempts": 1, "worker": "video-someone-else"},
    )
    await runner.release_unfinished()
    row = await row_of(db, mine)
    assert (row["status"], row["worker"], row["message"]) == ("queued", None, "requeued: its worker stopped")
    assert (await row_of(db, theirs))["status"] == "running"
    async with db.session() as session:
        entries = (
            (await session.execute(select(outbox).where(outbox.c.job_id.in_([mine, theirs]))))
            .mappings()
            .all()
        )
    assert [(entry["job_id"], entry["delay_s"]) for entry in entries] == [(mine, 0)]
    assert entries[0]["payload"]["tenant_id"] == tenant_id


async def test_a_stopping_worker_ends_its_jobs_a_cancel_was_asked_of_cancelled(
    make_runner, db_without_relay: DatabaseManager, tenant_with_jobs, signals: JobSignals
) -> None:
    """At shutdown a running job a cancel was asked of ends cancelled, with its callback owed, at its last
    attempt (it failed RETRIES_EXHAUSTED) or before it (it was handed back to run again); one without a
    cancel is handed back as before."""
    db = db_without_relay
    runner = make_runner({"video.probe": Calls()}, database=db)
    last = runner.settings.worker.max_attempts
    spent, young, plain = (f"job-{uuid.uuid4().hex[:12]}" for _ in range(3))
    await tenant_with_jobs(
        db,
        *(
            {
                "id": job_id,
                "status": "running",
                "attempts": attempts,
                "worker": runner.worker_id,
                "callback_url": "https://example.com/hook",
            }
            for job_id, attempts in ((spent, last), (young, 1), (plain, 1))
        ),
    )
    await signals.request_cancel(spent)
    await signals.request_cancel(young)
    await runner.release_unfinished()
    for job_id in (spent, young):
        row = await row_of(db, job_id)
        assert (row["status"], row["error_code"], row["worker"]) == ("cancelled", None, None), job_id
    assert (await row_of(db, plain))["status"] == "queued"
    async with db.session() as session:
        queued = (
            await session.execute(select(outbox.c.job_id).where(outbox.c.job_id.in_([spent, young, plain])))
        ).all()
        owed = (await session.execute(select(webhook_deliveries.c.job_id))).scalars().all()
    assert [job_id for (job_id,) in queued] == [plain]
    assert sorted(owed) == sorted([spent, young])


async def test_a_job_handed_back_at_its_last_attempt_fails_instead(
    make_runner, new_job, db: DatabaseManager
) -> None:
    """The bound on attempts holds for jobs a stopping worker hands back: one at its last attempt fails
    RETRIES_EXHAUSTED (with no outbox entry), where it was queued again whatever its count, so a job whose
    runs kept getting their worker stopped (evicted for its memory) ran again without end."""
    runner = make_runner({"video.probe": Calls()})
    last = runner.settings.worker.max_attempts
    spent = await new_job(status="running", attempts=last, worker=runner.worker_id)
    young = await new_job(status="running", attempts=last - 1, worker=runner.worker_id)
    await runner.release_unfinished()
    row = await row_of(db, spent)
    assert (row["status"], row["error_code"], row["worker"]) == ("failed", "RETRIES_EXHAUSTED", None)
    assert row["error_message"].startswith(f"gave up after {last} attempts, the last cut short by its worker")
    # Handed back: no longer this worker's (the stack's relay may have published it, and a service claimed
    # it, by now), with an outbox entry of its own below.
    assert (await row_of(db, young))["worker"] != runner.worker_id
    async with db.session() as session:
        queued = (
            await session.execute(select(outbox.c.job_id).where(outbox.c.job_id.in_([spent, young])))
        ).all()
    assert [job_id for (job_id,) in queued] == [young]


async def test_jobs_a_stopping_worker_ends_leave_no_files(
    make_runner,
    db_without_relay: DatabaseManager,
    tenant_with_jobs,
    signals: JobSignals,
    store: FileStore,
    tmp_path: Path,
) -> None:
    """At shutdown a job ended rather than handed back (at its last attempt, or a cancel asked of it) has no
    rerun to delete the files its attempts saved (one stopped between its handler's end and its own left
    them): they are deleted, as the relay's reaper deletes those of a job it ends so; a job handed back keeps
    them for its rerun to delete. They stayed the tenant's for ever."""
    db = db_without_relay
    runner = make_runner({"video.probe": Calls()}, database=db)
    spent, asked, young = (f"job-{uuid.uuid4().hex[:12]}" for _ in range(3))
    last = runner.settings.worker.max_attempts
    tenant_id = await tenant_with_jobs(
        db,
        *(
            {"id": job_id, "status": "running", "attempts": attempts, "worker": runner.worker_id}
            for job_id, attempts in ((spent, last), (asked, 1), (young, 1))
        ),
    )
    saved = [
        (
            await runner.save_artifact(
                b"thumb", tenant_id=tenant_id, job_id=job_id, filename="t0.jpg", content_type="image/jpeg"
            )
        )[0]
        for job_id in (spent, asked, young)
    ]
    await signals.request_cancel(asked)
    await runner.release_unfinished()
    assert [(await row_of(db, job_id))["status"] for job_id in (spent, asked, young)] == [
        "failed",
        "cancelled",
        "queued",
    ]
    assert await file_states(db, store, saved, tmp_path) == ["deleted", "deleted", "kept"]


async def test_a_stopping_worker_ends_a_job_whose_result_is_stored_succeeded_at_its_last_attempt(
    make_runner,
    db_without_relay: DatabaseManager,
    tenant_with_jobs,
    store: FileStore,
    tmp_path: Path,
) -> None:
    """At shutdown a job at its last attempt whose result is stored (its attempt stopped between the
    result's write and its success's commit) ends succeeded, its callback owed and the files its result names
    kept, as its rerun would have finished it; it failed RETRIES_EXHAUSTED and they were deleted, its result
    left stored. One at its last attempt with no result stored still fails."""
    db = db_without_relay
    runner = make_runner({"video.probe": Calls()}, database=db)
    last = runner.settings.worker.max_attempts
    done, spent = (f"job-{uuid.uuid4().hex[:12]}" for _ in range(2))
    tenant_id = await tenant_with_jobs(
        db,
        *(
            {
                "id": job_id,
                "status": "running",
                "attempts": last,
                "worker": runner.worker_id,
                "callback_url": "https://example.com/hook",
            }
            for job_id in (done, spent)
        ),
    )
    saved = [
        (
            await runner.save_artifact(
                b"thumb", tenant_id=tenant_id, job_id=job_id, filename="t0.jpg", content_type="image/jpeg"
            )
        )[0]
        for job_id in (done, spent)
    ]
    stored = {"_id": done, "tenant_id": tenant_id, "type": "video.probe", "thumbnail_file_id": saved[0]}
    await db.collection("results").insert_one(stored | {RESULT_WRITES: 1})
    await runner.release_unfinished()
    row = await row_of(db, done)
    assert (row["status"], row["error_code"], row["message"]) == ("succeeded", None, "done")
    assert (row["progress"], row["worker"], row["lease_expires_at"]) == (1.0, None, None)
    row = await row_of(db, spent)
    assert (row["status"], row["error_code"]) == ("failed", "RETRIES_EXHAUSTED")
    assert await file_states(db, store, saved, tmp_path) == ["kept", "deleted"]
    async with db.session() as session:
        owed = (await session.execute(select(webhook_deliveries.c.job_id))).scalars().all()
        queued = (await session.execute(select(outbox.c.job_id))).scalars().all()
    assert sorted(owed) == sorted([done, spent])
    assert queued == []


async def test_artifacts_are_stored_as_files_of_the_tenant(
    make_runner, new_job, tenant_id: str, db: DatabaseManager, store: FileStore, tmp_path: Path
) -> None:
    """save_artifact stores bytes and a streamed path in GridFS with a file row of the job's tenant."""
    job_id = await new_job()
    table = tmp_path / "out.csv"
    table.write_bytes(b"a,b\n" + b"1,2\n" * 50_000)
    ids: list[str] = []

    async def act(ctx: JobContext) -> None:
        ids.append(
            await ctx.save_artifact(b"\x89PNG\r\n\x1a\nthumb", filename="t.png", content_type="image/png")
        )
        ids.append(await ctx.save_artifact(table, filename="out.csv", content_type="text/csv"))

    runner = make_runner({"video.probe": Calls(act)})
    assert await deliver(runner, body_of(job_id, tenant_id)) == ["ack"]
    async with db.session() as session:
        rows = {
            r["id"]: r for r in (await session.execute(select(files).where(files.c.id.in_(ids)))).mappings()
        }
    thumb, csv_row = rows[ids[0]], rows[ids[1]]
    assert (thumb["tenant_id"], thumb["job_id"], thumb["kind"], thumb["size_bytes"]) == (
        tenant_id,
        job_id,
        "unknown",
        13,
    )
    assert (csv_row["kind"], csv_row["size_bytes"]) == ("table", table.stat().st_size)
    copy = tmp_path / "copy.csv"
    await store.copy_to(csv_row["storage_id"], copy)
    assert copy.read_bytes() == table.read_bytes()
    assert (thumb["deleted_at"], csv_row["deleted_at"]) == (None, None)  # the job succeeded: they stay


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (MediaDecodeError("damaged halfway"), "failed"),
        (JobCancelled("cancelled on request"), "cancelled"),
        (TransientJobError("a blip"), "queued"),  # retried: the next attempt saves its own
    ],
    ids=["failed", "cancelled", "retried"],
)
async def test_an_attempt_that_does_not_succeed_leaves_no_files(
    make_runner,
    new_job,
    tenant_id: str,
    db: DatabaseManager,
    store: FileStore,
    tmp_path: Path,
    error: Exception,
    status: str,
) -> None:
    """The files an attempt saved before it failed, was cancelled or was sent back to retry are deleted
    (the row marked, the bytes dropped), as `DELETE /v1/files` does: a cancelled thumbnails job left its
    first thumbnails, a retried one two sets, for ever without a retention."""
    job_id = await new_job()
    ids: list[str] = []

    async def act(ctx: JobContext) -> None:
        for name in ("t0.jpg", "t1.jpg"):
            file_id = await ctx.save_artifact(b"thumb", filename=name, content_type="image/jpeg")
            ids.append(file_id)
        raise error

    runner = make_runner({"video.probe": Calls(act)})
    assert await deliver(runner, body_of(job_id, tenant_id)) == ["ack"]
    assert (await row_of(db, job_id))["status"] == status
    async with db.session() as session:
        rows = (await session.execute(select(files).where(files.c.id.in_(ids)))).mappings().all()
    assert len(rows) == 2
    assert all(row["deleted_at"] is not None for row in rows)
    for row in rows:
        with pytest.raises(InputNotFound):
            await store.copy_to(row["storage_id"], tmp_path / "gone")


async def test_a_result_too_large_to_store_fails_its_job_with_a_reason_and_leaves_no_files(
    make_runner, new_job, tenant_id: str, db: DatabaseManager
) -> None:
    """A result past MongoDB's 16 MB for one document fails INVALID_PARAMS saying its size (the same input
    and parameters would make it again), and the files its attempt saved are deleted. (It failed
    INTERNAL_ERROR at the write, "the team has the log", its thumbnails kept.)"""
    job_id = await new_job()
    ids: list[str] = []

    async def act(ctx: JobContext) -> BaseModel:
        ids.append(await ctx.save_artifact(b"thumb", filename="t.jpg", content_type="image/jpeg"))
        huge = PROBE.format.model_copy(update={"name": "x" * (17 * 1024 * 1024)})
        return PROBE.model_copy(update={"format": huge})

    runner = make_runner({"video.probe": Calls(act)})
    assert await deliver(runner, body_of(job_id, tenant_id)) == ["ack"]
    row = await row_of(db, job_id)
    assert (row["status"], row["error_code"]) == ("failed", "INVALID_PARAMS"), row
    assert "would take 17.0 MB, past the 16 MB one result can hold" in row["error_message"]
    assert await db.collection("results").find_one({"_id": job_id}) is None
    async with db.session() as session:
        (file_row,) = (await session.execute(select(files).where(files.c.id.in_(ids)))).mappings().all()
    assert file_row["deleted_at"] is not None


async def test_a_full_disk_is_a_passing_fault_not_a_bug(
    make_runner, new_job, new_file, tenant_id: str, db: DatabaseManager, tmp_path: Path
) -> None:
    """A worker whose disk has no room for the job's input (its input cache on a real 1 MB disk, the input
    2 MB) sends the job back to retry, saying why, instead of failing it INTERNAL_ERROR as a bug; once the
    disk has room, the retry succeeds: the job is not lost."""
    content = b"\x00\x00\x00\x20ftypisom" + os.urandom(2 * 1024 * 1024)
    file_id = await new_file(content, filename="clip.mp4")
    job_id = await new_job(file_id=file_id)
    seen: list[int] = []
    with small_disk(tmp_path / "disk", 1024 * 1024) as disk:
        runner = make_runner(
            {"video.probe": Calls(lambda ctx: seen.append(ctx.require_input().stat().st_size))},
            input_cache_dir=str(disk.path),
        )
        assert await deliver(runner, body_of(job_id, tenant_id, file_id=file_id)) == ["ack"]
        row = await row_of(db, job_id)
        assert (row["status"], row["error_code"], row["attempts"]) == ("queued", None, 1), row
        assert "no space left on the worker's disk" in row["message"], row["message"]
        assert seen == []
        assert shutil.disk_usage(disk.path).used < 64 * 1024  # the part copied is not left filling it
        disk.resize(8 * 1024 * 1024)
        assert await deliver(runner, body_of(job_id, tenant_id, file_id=file_id)) == ["ack"]
        assert (await row_of(db, job_id))["status"] == "succeeded"
        assert seen == [len(content)]


async def test_an_attempt_past_its_time_limit_leaves_no_files(
    make_runner, new_job, tenant_id: str, db: DatabaseManager
) -> None:
    """A job that saved a file and then ran past `job_timeout_s` fails TIMEOUT with its file deleted."""
    job_id = await new_job()
    ids: list[str] = []

    async def act(ctx: JobContext) -> None:
        ids.append(await ctx.save_artifact(b"thumb", filename="t.jpg", content_type="image/jpeg"))
        await asyncio.sleep(30)

    runner = make_runner({"video.probe": Calls(act)}, job_timeout_s=0.5)
    assert await deliver(runner, body_of(job_id, tenant_id)) == ["ack"]
    assert (await row_of(db, job_id))["error_code"] == "TIMEOUT"
    async with db.session() as session:
        (row,) = (await session.execute(select(files).where(files.c.id.in_(ids)))).mappings().all()
    assert row["deleted_at"] is not None


async def file_states(db: DatabaseManager, store: FileStore, ids: list[str], tmp_path: Path) -> list[str]:
    """Each file's state, in `ids`'s order: "kept" (its row live, its bytes readable) or "deleted" (its row
    marked, its bytes gone); anything between fails the test."""
    async with db.session() as session:
        rows = {
            r["id"]: r for r in (await session.execute(select(files).where(files.c.id.in_(ids)))).mappings()
        }
    states = []
    for file_id in ids:
        row = rows[file_id]
        try:
            await store.copy_to(row["storage_id"], tmp_path / "probe")
            readable = True
        except InputNotFound:
            readable = False
        assert readable is (row["deleted_at"] is None), row
        states.append("kept" if readable else "deleted")
    return states


async def test_a_rerun_deletes_the_files_of_an_attempt_whose_worker_died(
    make_runner, new_job, tenant_id: str, db: DatabaseManager, store: FileStore, tmp_path: Path
) -> None:
    """The files saved by an attempt whose worker died (no result names them) are deleted when the job runs
    again; the rerun's own stay. They stayed until the job's retention, beside the rerun's (a thumbnails
    job killed twice kept three sets)."""
    job_id = await new_job(attempts=1, message="requeued: its worker's lease expired")
    runner = make_runner({})
    earlier = [
        (
            await runner.save_artifact(
                b"old", tenant_id=tenant_id, job_id=job_id, filename=name, content_type="image/jpeg"
            )
        )[0]
        for name in ("t0.jpg", "t1.jpg")
    ]
    other_job = await new_job()
    elsewhere, _ = await runner.save_artifact(
        b"other", tenant_id=tenant_id, job_id=other_job, filename="o.jpg", content_type="image/jpeg"
    )
    ids: list[str] = []

    async def act(ctx: JobContext) -> None:
        ids.append(await ctx.save_artifact(b"new", filename="t0.jpg", content_type="image/jpeg"))

    runner = make_runner({"video.probe": Calls(act)})
    assert await deliver(runner, body_of(job_id, tenant_id)) == ["ack"]
    assert (await row_of(db, job_id))["status"] == "succeeded"
    states = await file_states(db, store, [*earlier, *ids, elsewhere], tmp_path)
    assert states == ["deleted", "deleted", "kept", "kept"]


async def test_a_rerun_that_finds_the_result_stored_keeps_the_files_it_names(
    make_runner, new_job, tenant_id: str, db: DatabaseManager, store: FileStore, tmp_path: Path
) -> None:
    """An attempt that stored its result and died: the rerun finishes the job and keeps its files, which the
    result names."""
    job_id = await new_job(attempts=1, message="requeued: its worker's lease expired")
    runner = make_runner({"video.probe": Calls()})
    thumb, _ = await runner.save_artifact(
        b"thumb", tenant_id=tenant_id, job_id=job_id, filename="t.jpg", content_type="image/jpeg"
    )
    stored = {"_id": job_id, "tenant_id": tenant_id, "type": "video.probe", "thumbnail_file_id": thumb}
    await db.collection("results").insert_one(stored | {RESULT_WRITES: 1})
    assert await deliver(runner, body_of(job_id, tenant_id)) == ["ack"]
    assert (await row_of(db, job_id))["status"] == "succeeded"
    assert await file_states(db, store, [thumb], tmp_path) == ["kept"]


async def test_a_success_that_finds_its_job_taken_deletes_its_files(
    make_runner, new_job, tenant_id: str, db: DatabaseManager, store: FileStore, tmp_path: Path
) -> None:
    """An attempt that succeeded after its job was given to another worker stores no result, so no result
    names the files it saved: they are deleted (they stayed until the job's retention)."""
    job_id = await new_job()
    ids: list[str] = []

    async def act(ctx: JobContext) -> None:
        ids.append(await ctx.save_artifact(b"thumb", filename="t.jpg", content_type="image/jpeg"))
        async with db.session() as session:
            await session.execute(update(jobs).where(jobs.c.id == job_id).values(worker="video-newowner"))
            await session.commit()

    runner = make_runner({"video.probe": Calls(act)}, lease_s=60)
    assert await deliver(runner, body_of(job_id, tenant_id)) == ["ack"]
    assert (await row_of(db, job_id))["worker"] == "video-newowner"
    assert await file_states(db, store, ids, tmp_path) == ["deleted"]


async def test_a_success_whose_commit_answer_was_lost_keeps_its_files(
    make_runner, new_job, tenant_id: str, db: DatabaseManager, store: FileStore, tmp_path: Path
) -> None:
    """A success whose commit went through but whose answer was lost (the connection reset then) finds on
    its retry the job no longer running, as if taken: its result is stored and names its files, which stay
    (the review found them deleted, the job succeeded with its thumbnails gone)."""
    job_id = await new_job()
    ids: list[str] = []

    async def act(ctx: JobContext) -> None:
        ids.append(await ctx.save_artifact(b"thumb", filename="t.jpg", content_type="image/jpeg"))

    runner = make_runner({"video.probe": Calls(act)}, lease_s=60)
    submit = runner.successes.submit
    lost: list[bool] = []

    async def answer_lost_once(success: Any) -> Any:
        done = await submit(success)  # committed: the job succeeded, its result stored
        if not lost:
            lost.append(True)
            raise ConnectionResetError("the connection reset before the COMMIT's answer came")
        return done

    runner.successes.submit = answer_lost_once
    assert await deliver(runner, body_of(job_id, tenant_id)) == ["ack"]
    assert lost == [True]
    assert (await row_of(db, job_id))["status"] == "succeeded"
    assert await db.collection("results").find_one({"_id": job_id}) is not None
    assert await file_states(db, store, ids, tmp_path) == ["kept"]


async def test_report_from_a_thread_publishes_progress(
    make_runner, new_job, tenant_id: str, signals: JobSignals
) -> None:
    """ctx.report, called from run_cpu's thread, reaches Redis without blocking the thread."""
    job_id = await new_job()
    live: list[dict[str, str] | None] = []

    def work(ctx: JobContext) -> None:
        import time

        time.sleep(1.05)
        ctx.report(0.25, "a quarter")
        ctx.report(0.3, "throttled")

    async def act(ctx: JobContext) -> None:
        await ctx.run_cpu(work, ctx)
        await asyncio.sleep(0.1)
        live.append(await signals.live(job_id))

    # A whole second between writes: a loaded CI machine still calls twice within it.
    runner = make_runner({"video.probe": Calls(act)}, progress_interval_s=1.0)
    assert await deliver(runner, body_of(job_id, tenant_id)) == ["ack"]
    assert live == [{"progress": "0.2500", "message": "a quarter", "attempt": "1"}]


async def test_published_progress_is_rounded_as_the_job_reads(
    make_runner, new_job, tenant_id: str, signals: JobSignals
) -> None:
    """An event's progress is the job's as a read gives it, to 4 decimals (events said 0.3333333333333333
    where the job read 0.3333)."""
    job_id = await new_job()
    pubsub = signals.redis.pubsub()
    await pubsub.subscribe(signals.channel(job_id))
    events: list[dict[str, object]] = []

    async def act(ctx: JobContext) -> None:
        await ctx.progress(1 / 3, "a third", force=True)
        deadline = asyncio.get_running_loop().time() + 5
        while not events and asyncio.get_running_loop().time() < deadline:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.5)
            if message is not None and (event := json.loads(message["data"]))["message"] == "a third":
                events.append(event)

    runner = make_runner({"video.probe": Calls(act)})
    try:
        assert await deliver(runner, body_of(job_id, tenant_id)) == ["ack"]
    finally:
        await pubsub.aclose()
    assert [(event["progress"], event["message"]) for event in events] == [(0.3333, "a third")]


async def test_a_deleted_input_fails_input_not_found(
    make_runner,
    new_job,
    new_file,
    tenant_id: str,
    db: DatabaseManager,
    store: FileStore,
    scratch_root: Path,
    tmp_path: Path,
) -> None:
    """A file row marked deleted, or whose bytes are gone from GridFS, fails the job INPUT_NOT_FOUND."""
    deleted_row = await new_file(b"\x1a\x45\xdf\xa3 mkv", filename="a.mkv", deleted_at=utc_now())
    gone_bytes = await new_file(b"\x1a\x45\xdf\xa3 mkv", filename="b.mkv")
    async with db.session() as session:
        storage_id = (
            (await session.execute(files.select().where(files.c.id == gone_bytes)))
            .mappings()
            .one()["storage_id"]
        )
    await store.delete(storage_id)
    handler = Calls()
    runner = make_runner({"video.probe": handler})
    for file_id, message in (
        (deleted_row, "was deleted before the job ran"),
        (gone_bytes, "no longer stored"),
    ):
        job_id = await new_job(file_id=file_id)
        assert await deliver(runner, body_of(job_id, tenant_id, file_id=file_id)) == ["ack"]
        row = await row_of(db, job_id)
        assert (row["status"], row["error_code"]) == ("failed", "INPUT_NOT_FOUND")
        assert message in row["error_message"]
    assert handler.contexts == []
    assert entries(scratch_root) == []
    assert kept_inputs(tmp_path) == []  # the part fetched of the gone bytes went with it


async def test_a_second_job_of_a_file_reads_it_from_the_cache_until_the_file_is_deleted(
    make_runner, new_job, new_file, tenant_id: str, db: DatabaseManager, store: FileStore
) -> None:
    """A second job of the same file gets its bytes without GridFS (here gone from it); once the file is
    deleted, a third job fails INPUT_NOT_FOUND though its bytes are still kept."""
    content = b"\x1a\x45\xdf\xa3 cached mkv"
    file_id = await new_file(content, filename="a.mkv")
    seen: list[bytes] = []
    runner = make_runner({"video.probe": Calls(lambda ctx: seen.append(ctx.require_input().read_bytes()))})
    first = await new_job(file_id=file_id)
    assert await deliver(runner, body_of(first, tenant_id, file_id=file_id)) == ["ack"]
    async with db.session() as session:
        storage_id = await session.scalar(select(files.c.storage_id).where(files.c.id == file_id))
    assert storage_id is not None
    await store.delete(storage_id)
    second = await new_job(file_id=file_id)
    assert await deliver(runner, body_of(second, tenant_id, file_id=file_id)) == ["ack"]
    assert seen == [content, content]
    async with db.session() as session:
        await session.execute(update(files).where(files.c.id == file_id).values(deleted_at=utc_now()))
        await session.commit()
    third = await new_job(file_id=file_id)
    assert await deliver(runner, body_of(third, tenant_id, file_id=file_id)) == ["ack"]
    assert [(await row_of(db, job))["status"] for job in (first, second)] == ["succeeded", "succeeded"]
    assert (await row_of(db, third))["error_code"] == "INPUT_NOT_FOUND"
    assert len(seen) == 2


async def test_require_input_without_a_file_fails(
    make_runner, new_job, tenant_id: str, db: DatabaseManager
) -> None:
    """A handler that needs an input on a job without one fails the job INPUT_NOT_FOUND."""
    job_id = await new_job()
    runner = make_runner({"video.probe": Calls(lambda ctx: ctx.require_input())})
    assert await deliver(runner, body_of(job_id, tenant_id)) == ["ack"]
    row = await row_of(db, job_id)
    assert (row["error_code"], row["error_message"]) == (
        "INPUT_NOT_FOUND",
        "video.probe needs an input file, and this job has none",
    )


async def test_progress_is_throttled_stored_and_published(
    make_runner, new_job, tenant_id: str, db: DatabaseManager, signals: JobSignals
) -> None:
    """Progress calls closer than progress_interval_s are dropped; the others reach Redis and the channel."""
    job_id = await new_job()
    live_seen: list[dict[str, str] | None] = []

    async def act(ctx: JobContext) -> None:
        await ctx.progress(0.3, "too soon")  # right after the claim's "started": dropped
        live_seen.append(await signals.live(job_id))
        await asyncio.sleep(1.05)
        await ctx.progress(0.5, "half")
        await ctx.progress(0.6, "dropped")
        live_seen.append(await signals.live(job_id))
        await ctx.progress(7.0, "clamped", force=True)
        live_seen.append(await signals.live(job_id))

    pubsub = db.redis.pubsub()
    await pubsub.subscribe(signals.channel(job_id))
    try:
        # A whole second between writes: a loaded CI machine still calls twice within it.
        runner = make_runner({"video.probe": Calls(act)}, progress_interval_s=1.0)
        assert await deliver(runner, body_of(job_id, tenant_id)) == ["ack"]
        events: list[dict[str, Any]] = []
        for _ in range(40):  # a None may just be the subscribe confirmation
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.1)
            if message is not None:
                events.append(json.loads(message["data"]))
            if events and events[-1]["status"] == "succeeded":
                break
    finally:
        await pubsub.aclose()
    assert live_seen == [
        None,
        {"progress": "0.5000", "message": "half", "attempt": "1"},
        {"progress": "1.0000", "message": "clamped", "attempt": "1"},
    ]
    assert [(event["status"], event["progress"], event["message"]) for event in events] == [
        ("running", 0.0, "started"),
        ("running", 0.5, "half"),
        ("running", 1.0, "clamped"),
        ("succeeded", 1.0, "done"),
    ]
    assert all(event["id"] == job_id for event in events)


async def test_cleanups_run_and_scratch_is_removed_after_a_failure(
    make_runner, new_job, tenant_id: str, scratch_root: Path
) -> None:
    """Registered cleanups run and the scratch directory is gone even when the handler fails."""
    job_id = await new_job()
    cleaned: list[str] = []

    async def act(ctx: JobContext) -> None:
        (ctx.scratch / "partial.bin").write_bytes(b"x" * 100)

        async def cleanup() -> None:
            cleaned.append(ctx.job_id)

        ctx.add_cleanup(cleanup)
        raise MediaDecodeError("bad frame")

    runner = make_runner({"video.probe": Calls(act)})
    assert await deliver(runner, body_of(job_id, tenant_id)) == ["ack"]
    assert cleaned == [job_id]
    assert entries(scratch_root) == []


async def test_a_job_that_never_asks_for_scratch_gets_its_input_and_no_scratch_directory(
    make_runner, new_job, new_file, tenant_id: str, scratch_root: Path, tmp_path: Path
) -> None:
    """The job reads its input where the input cache keeps it, `<cache dir>/<sha256>/<upload name made
    safe>`; nothing is made under the scratch directory unless the handler asks for scratch, and what the
    job had there is gone afterwards, while the kept copy stays for the next job."""
    content = b"RIFF\x24\x00\x00\x00WAVEfmt "
    file_id = await new_file(content, filename="take 1.wav")
    job_id = await new_job(file_id=file_id)
    seen: dict[str, Any] = {}

    def act(ctx: JobContext) -> None:
        seen["input"] = ctx.require_input()
        seen["scratch during"] = tree(scratch_root)

    runner = make_runner({"video.probe": Calls(act)})
    assert await deliver(runner, body_of(job_id, tenant_id, file_id=file_id)) == ["ack"]
    assert seen["input"].name == "take_1.wav"
    assert seen["input"].parent.name == sha256_of(content)
    assert seen["input"].parent.parent.parent == tmp_path
    assert seen["scratch during"] == []
    assert entries(scratch_root) == []
    assert kept_inputs(tmp_path) == [f"{sha256_of(content)}/take_1.wav"]
    assert seen["input"].read_bytes() == content


async def test_a_second_job_of_the_same_file_and_name_makes_nothing_on_disk(
    make_runner, new_job, new_file, tenant_id: str, db: DatabaseManager, tmp_path: Path
) -> None:
    """A second job of a kept file under the same name is given the very file the first one read: not a
    file or directory more under the scratch directory or the cache's while it runs, or after."""
    content = b"RIFF\x24\x00\x00\x00WAVEfmt second"
    file_id = await new_file(content, filename="take.wav")
    seen: list[tuple[Path, int, list[str]]] = []

    def act(ctx: JobContext) -> None:
        path = ctx.require_input()
        seen.append((path, path.stat().st_ino, tree(tmp_path)))

    runner = make_runner({"video.probe": Calls(act)})
    for _ in range(2):
        job_id = await new_job(file_id=file_id)
        assert await deliver(runner, body_of(job_id, tenant_id, file_id=file_id)) == ["ack"]
        assert (await row_of(db, job_id))["status"] == "succeeded"
    (first, first_inode, first_disk), (second, second_inode, second_disk) = seen
    assert (second, second_inode) == (first, first_inode)
    assert second_disk == first_disk
    assert tree(tmp_path) == first_disk
    assert kept_inputs(tmp_path) == [f"{sha256_of(content)}/take.wav"]


async def test_another_name_for_the_same_bytes_is_a_second_link_in_their_directory(
    make_runner, new_job, new_file, tenant_id: str, db: DatabaseManager, tmp_path: Path
) -> None:
    """Two uploads of the same bytes under different names: the second job sees its own upload's name, a
    hard link added next to the first in the bytes' directory (the data service names its outputs after
    it), and the bytes are kept once."""
    content = b"region,amount\nnorth,1\n"
    first_file = await new_file(content, filename="sales.csv")
    second_file = await new_file(content, filename="sales copy.csv")
    seen: list[tuple[Path, bytes, int]] = []

    def act(ctx: JobContext) -> None:
        path = ctx.require_input()
        seen.append((path, path.read_bytes(), path.stat().st_nlink))

    runner = make_runner({"video.probe": Calls(act)})
    for file_id in (first_file, second_file):
        job_id = await new_job(file_id=file_id)
        assert await deliver(runner, body_of(job_id, tenant_id, file_id=file_id)) == ["ack"]
        assert (await row_of(db, job_id))["status"] == "succeeded"
    (first, first_bytes, first_links), (second, second_bytes, second_links) = seen
    assert (first.name, second.name) == ("sales.csv", "sales_copy.csv")
    assert second.parent == first.parent
    assert (first_bytes, second_bytes) == (content, content)
    assert (first_links, second_links) == (1, 2)
    assert first.stat().st_ino == second.stat().st_ino
    assert kept_inputs(tmp_path) == [
        f"{sha256_of(content)}/sales.csv",
        f"{sha256_of(content)}/sales_copy.csv",
    ]
    assert runner.inputs.used_bytes == len(content)


async def test_an_input_a_running_job_reads_is_not_evicted_and_goes_once_the_job_ends(
    make_runner, new_job, new_file, tenant_id: str, db: DatabaseManager, tmp_path: Path
) -> None:
    """A job's input stays while the job runs though the cache goes over its bound meanwhile (another
    job's input came in); it goes when its job ends, the cache still over its bound then."""
    older, newer = b"\x01" * 200, b"\x02" * 100  # 300 bytes together, over the bound of 250
    older_file = await new_file(older, filename="older.wav")
    newer_file = await new_file(newer, filename="newer.wav")
    older_has_input, newer_looked, older_ended = asyncio.Event(), asyncio.Event(), asyncio.Event()
    seen: dict[str, Any] = {}

    async def act(ctx: JobContext) -> None:
        path = ctx.require_input()
        if path.name == "older.wav":
            seen["older"] = path
            older_has_input.set()
            await newer_looked.wait()
        else:
            seen["older during"] = seen["older"].read_bytes()
            seen["kept during"] = kept_inputs(tmp_path)
            seen["used during"] = runner.inputs.used_bytes
            newer_looked.set()
            await older_ended.wait()
            seen["older after"] = seen["older"].parent.exists()

    runner = make_runner({"video.probe": Calls(act)}, input_cache_bytes=250)
    older_job = await new_job(file_id=older_file)
    newer_job = await new_job(file_id=newer_file)

    async def run_older() -> None:
        await deliver(runner, body_of(older_job, tenant_id, file_id=older_file))
        older_ended.set()

    async def run_newer() -> None:
        await older_has_input.wait()
        await deliver(runner, body_of(newer_job, tenant_id, file_id=newer_file))

    await asyncio.wait_for(asyncio.gather(run_older(), run_newer()), 20)
    assert seen["older during"] == older
    assert seen["kept during"] == [f"{sha256_of(older)}/older.wav", f"{sha256_of(newer)}/newer.wav"]
    assert seen["used during"] == 300
    assert seen["older after"] is False
    assert kept_inputs(tmp_path) == [f"{sha256_of(newer)}/newer.wav"]
    assert runner.inputs.used_bytes == 100
    assert [(await row_of(db, job))["status"] for job in (older_job, newer_job)] == ["succeeded"] * 2


@pytest.mark.parametrize("ending", ["failed", "timed out"])
async def test_a_job_releases_its_input_however_it_ends(
    make_runner, new_job, new_file, tenant_id: str, db: DatabaseManager, tmp_path: Path, ending: str
) -> None:
    """A job that fails or runs past its limit no longer holds its input: the next job's input, taking
    the cache over its bound, evicts it."""
    first, second = b"\x03" * 200, b"\x04" * 100
    first_file = await new_file(first, filename="first.wav")
    second_file = await new_file(second, filename="second.wav")

    async def act(ctx: JobContext) -> None:
        if ctx.require_input().name == "first.wav":
            if ending == "failed":
                raise MediaDecodeError("bad frame")
            await asyncio.sleep(10)

    runner = make_runner({"video.probe": Calls(act)}, input_cache_bytes=250, job_timeout_s=0.3)
    first_job = await new_job(file_id=first_file)
    delivered = deliver(runner, body_of(first_job, tenant_id, file_id=first_file))
    assert await asyncio.wait_for(delivered, 5) == ["ack"]
    assert (await row_of(db, first_job))["error_code"] == (
        "MEDIA_DECODE_ERROR" if ending == "failed" else "TIMEOUT"
    )
    assert kept_inputs(tmp_path) == [f"{sha256_of(first)}/first.wav"]
    second_job = await new_job(file_id=second_file)
    assert await deliver(runner, body_of(second_job, tenant_id, file_id=second_file)) == ["ack"]
    assert kept_inputs(tmp_path) == [f"{sha256_of(second)}/second.wav"]
    assert runner.inputs.used_bytes == 100


async def test_an_input_over_the_cache_bound_sits_in_a_directory_of_the_job_gone_afterwards(
    make_runner, new_job, new_file, tenant_id: str, db: DatabaseManager, scratch_root: Path, tmp_path: Path
) -> None:
    """A file larger than the input cache is copied for its job alone, into a directory of its own under
    the scratch directory (named after the job), and removed with it; the cache keeps nothing of it."""
    content = b"\x1a\x45\xdf\xa3" + b"L" * 400
    file_id = await new_file(content, filename="big one.mkv")
    job_id = await new_job(file_id=file_id)
    seen: dict[str, Any] = {}

    def act(ctx: JobContext) -> None:
        path = ctx.require_input()
        seen["input"], seen["bytes"], seen["scratch during"] = path, path.read_bytes(), tree(scratch_root)

    runner = make_runner({"video.probe": Calls(act)}, input_cache_bytes=250)
    assert await deliver(runner, body_of(job_id, tenant_id, file_id=file_id)) == ["ack"]
    assert (await row_of(db, job_id))["status"] == "succeeded"
    path: Path = seen["input"]
    assert seen["bytes"] == content
    assert path.name == "big_one.mkv"
    assert path.parent.parent == scratch_root
    assert path.parent.name.startswith(f"input-{job_id}-1-")
    assert seen["scratch during"] == [path.parent.name, f"{path.parent.name}/big_one.mkv"]
    assert entries(scratch_root) == []
    assert kept_inputs(tmp_path) == []
    assert runner.inputs.used_bytes == 0


def _thread_and_pid() -> tuple[int, int]:
    return threading.get_ident(), os.getpid()


async def test_light_cpu_work_runs_on_the_loops_thread_unless_isolated(
    make_runner, new_job, tenant_id: str, db: DatabaseManager
) -> None:
    """`run_cpu(light=True)` runs on the event loop's thread, without the hop to a worker thread; heavy
    work goes to a worker thread; a rerun of a job whose worker died runs even light work in a child."""
    seen: dict[str, tuple[tuple[int, int], tuple[int, int]]] = {}

    async def act(ctx: JobContext) -> None:
        light = await ctx.run_cpu(_thread_and_pid, light=True)
        heavy = await ctx.run_cpu(_thread_and_pid)
        seen[ctx.job_id] = light, heavy

    runner = make_runner({"video.probe": Calls(act)})
    plain, rerun = await new_job(), await new_job()
    assert await deliver(runner, body_of(plain, tenant_id)) == ["ack"]
    marked = RecordedDelivery(headers={jobstore.WORKER_DIED_HEADER: "1"})
    await runner.handle(body_of(rerun, tenant_id), marked)
    here = threading.get_ident(), os.getpid()
    light, heavy = seen[plain]
    assert light == here
    assert heavy[0] != here[0]
    assert heavy[1] == here[1]
    assert all(pid != os.getpid() for _, pid in seen[rerun])
    assert {(await row_of(db, job_id))["status"] for job_id in (plain, rerun)} == {"succeeded"}


async def test_light_work_on_a_large_input_runs_in_a_thread(
    make_runner, new_job, new_file, tenant_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Light work stays on the loop's thread only for an input of at most `LIGHT_INPUT_BYTES`: a probe of a
    large file may count its packets (a raw MP3 of hours), which the event loop must not wait for."""
    monkeypatch.setattr(tasks, "LIGHT_INPUT_BYTES", 100)
    seen: dict[str, tuple[int, int]] = {}

    async def act(ctx: JobContext) -> None:
        seen[ctx.job_id] = await ctx.run_cpu(_thread_and_pid, light=True)

    runner = make_runner({"video.probe": Calls(act)})
    small, large = (
        await new_file(b"s" * 100, filename="small.wav"),
        await new_file(b"L" * 101, filename="large.wav"),
    )
    jobs_ = {file_id: await new_job(file_id=file_id) for file_id in (small, large)}
    for file_id, job_id in jobs_.items():
        assert await deliver(runner, body_of(job_id, tenant_id, file_id=file_id)) == ["ack"]
    assert seen[jobs_[small]][0] == threading.get_ident()
    assert seen[jobs_[large]][0] != threading.get_ident()


async def test_a_claimed_delivery_is_acked_before_its_handler_runs(
    make_runner, new_job, tenant_id: str
) -> None:
    """The claim, not the delivery, guards a running job: by the time the handler runs, the delivery is
    already acked (so a job may outlive the broker's consumer timeout and its connection)."""
    job_id = await new_job()
    delivery = RecordedDelivery()
    seen: list[list[str]] = []

    async def act(_ctx: JobContext) -> None:
        seen.append(list(delivery.settled))

    await make_runner({"video.probe": Calls(act)}).handle(body_of(job_id, tenant_id), delivery)
    assert seen == [["ack"]]
    assert delivery.settled == ["ack"]


async def test_redis_away_does_not_change_how_a_job_ends(
    make_runner, new_job, tenant_id: str, db: DatabaseManager, settings: Settings
) -> None:
    """With Redis unreachable for the whole job (its announcements, progress and cancel checks all fail), the
    job still runs once and succeeds: an announcement is not part of the job. Before, the failed "started"
    announcement escaped the job's handling (the claimed job stayed running until its lease ran out, then
    ran again as if its worker had died), and a failed "succeeded" one sent an ended job to be retried."""
    job_id = await new_job()
    runner = make_runner({"video.probe": Calls()})
    away = Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.5, socket_timeout=0.5)
    runner.signals = JobSignals(away, prefix=settings.redis.prefix)
    try:
        assert await asyncio.wait_for(deliver(runner, body_of(job_id, tenant_id)), 20) == ["ack"]
    finally:
        await away.aclose()
    row = await row_of(db, job_id)
    assert (row["status"], row["attempts"], row["error_code"]) == ("succeeded", 1, None)


async def test_a_job_past_its_time_limit_fails_timeout(
    make_runner, new_job, tenant_id: str, db: DatabaseManager
) -> None:
    """A handler running past job_timeout_s is stopped and the job fails with TIMEOUT."""
    job_id = await new_job()
    runner = make_runner({"video.probe": Calls(lambda _ctx: asyncio.sleep(10))}, job_timeout_s=0.2)
    assert await asyncio.wait_for(deliver(runner, body_of(job_id, tenant_id)), 5) == ["ack"]
    row = await row_of(db, job_id)
    assert (row["status"], row["error_code"]) == ("failed", "TIMEOUT")


class CrawlingStore(FileStore):
    """The real file store, whose copies of an input start only after `delay_s` (an input read from a slow
    GridFS, the heartbeat keeping the lease meanwhile)."""

    delay_s = 30.0

    async def copy_to(self, storage_id: str, path: Path) -> StoredFile:
        await asyncio.sleep(self.delay_s)
        return await super().copy_to(storage_id, path)


async def test_a_slow_input_fetch_counts_toward_the_time_limit(
    make_runner, new_job, new_file, tenant_id: str, db: DatabaseManager, store: FileStore
) -> None:
    """The time limit counts from the input's fetch on: a job whose input comes slowly fails TIMEOUT at its
    limit, its handler never run. The limit bound only the handler: the fetch ran as long as it took (an
    auditor's 2 MiB at 60 ms a 16 KiB piece took 8.5 s under a 1 s limit, and then the job succeeded)."""
    file_id = await new_file(b"\x00\x00\x00\x20ftypisom" + bytes(4096), filename="clip.mp4")
    job_id = await new_job(file_id=file_id)
    handler = Calls()
    runner = make_runner({"video.probe": handler}, job_timeout_s=0.3)
    runner.inputs.store = CrawlingStore(store.bucket, store.chunks)
    started = time.monotonic()
    assert await asyncio.wait_for(deliver(runner, body_of(job_id, tenant_id, file_id=file_id)), 10) == ["ack"]
    assert time.monotonic() - started < 5
    row = await row_of(db, job_id)
    assert (row["status"], row["error_code"]) == ("failed", "TIMEOUT")
    assert handler.contexts == []


async def test_cpu_work_past_the_time_limit_stops_before_the_job_ends(
    make_runner, new_job, tenant_id: str, db: DatabaseManager
) -> None:
    """A job given up at its time limit while its `run_cpu` thread works: the thread, which reports as an
    analyser does, stops at its next report, and the job ends (its cleanups run, its slot is freed) only
    after that; without it the thread decoded on, past its job, its input and its scratch directory."""
    job_id = await new_job()
    stopped = threading.Event()
    ended_at: list[float] = []

    def decode(ctx: JobContext) -> None:
        try:
            give_up = time.monotonic() + 5  # bounded: the test ends even if the thread is never stopped
            while time.monotonic() < give_up:  # a long analysis: one report per "frame"
                ctx.report(0.5, "decoding")
                time.sleep(0.01)
        finally:
            ended_at.append(time.monotonic())
            stopped.set()

    async def handler(ctx: JobContext) -> None:
        await ctx.run_cpu(decode, ctx)

    runner = make_runner({"video.probe": Calls(handler)}, job_timeout_s=0.3)
    assert await asyncio.wait_for(deliver(runner, body_of(job_id, tenant_id)), 10) == ["ack"]
    delivered_at = time.monotonic()
    assert stopped.is_set()
    assert ended_at[0] <= delivered_at
    row = await row_of(db, job_id)
    assert (row["status"], row["error_code"]) == ("failed", "TIMEOUT")


async def test_a_timeout_inside_the_handler_is_a_passing_fault(
    make_runner, new_job, tenant_id: str, db: DatabaseManager
) -> None:
    """A TimeoutError of the handler's own (not the job limit) requeues the job."""
    job_id = await new_job()
    runner = make_runner({"video.probe": Calls(raiser(TimeoutError("redis read timed out")))})
    assert await deliver(runner, body_of(job_id, tenant_id)) == ["ack"]
    assert (await row_of(db, job_id))["status"] == "queued"


async def test_bad_params_and_foreign_job_types_fail_invalid_params(
    make_runner, new_job, tenant_id: str, db: DatabaseManager
) -> None:
    """Params that do not fit, and a job type this service does not run, fail INVALID_PARAMS."""
    runner = make_runner({"video.probe": Calls(), "data.profile": Calls()})
    bad_params = await new_job(job_type="data.profile")
    body = body_of(bad_params, tenant_id, job_type="data.profile", params={"format": "xlsx"})
    assert await deliver(runner, body) == ["ack"]
    row = await row_of(db, bad_params)
    assert (row["status"], row["error_code"]) == ("failed", "INVALID_PARAMS")
    assert row["error_message"].startswith("params do not fit data.profile")

    foreign = await new_job(job_type="audio.probe")
    assert await deliver(runner, body_of(foreign, tenant_id, job_type="audio.probe")) == ["ack"]
    row = await row_of(db, foreign)
    assert (row["error_code"], row["error_message"]) == (
        "INVALID_PARAMS",
        "the video service does not run audio.probe jobs",
    )


async def test_a_job_changed_while_running_keeps_that_change(
    make_runner, new_job, tenant_id: str, db: DatabaseManager
) -> None:
    """If the row leaves running while the handler works (cancelled by the API), the runner keeps it."""
    job_id = await new_job()

    async def act(_ctx: JobContext) -> None:
        async with db.session() as session:
            await session.execute(
                update(jobstore.jobs).where(jobstore.jobs.c.id == job_id).values(status="cancelled")
            )
            await session.commit()

    runner = make_runner({"video.probe": Calls(act)})
    assert await deliver(runner, body_of(job_id, tenant_id)) == ["ack"]
    assert (await row_of(db, job_id))["status"] == "cancelled"
    assert await db.collection("results").find_one({"_id": job_id}) is None


async def test_a_short_job_taken_from_its_worker_stores_no_result(
    make_runner, new_job, tenant_id: str, db: DatabaseManager
) -> None:
    """A job given to another worker while its handler ran, well within the lease, ends with no result
    stored by the first worker and the new owner's row untouched: the statement that ends the job checks
    the owner, and holds the row while the result is written."""
    job_id = await new_job()

    async def act(_ctx: JobContext) -> None:
        async with db.session() as session:
            await session.execute(update(jobs).where(jobs.c.id == job_id).values(worker="video-newowner"))
            await session.commit()

    runner = make_runner({"video.probe": Calls(act)}, lease_s=60)
    assert await deliver(runner, body_of(job_id, tenant_id)) == ["ack"]
    row = await row_of(db, job_id)
    assert (row["status"], row["worker"]) == ("running", "video-newowner")
    assert await db.collection("results").find_one({"_id": job_id}) is None


async def test_jobs_that_succeed_together_end_in_one_batch_each_with_its_own_result(
    make_runner, new_job, tenant_id: str, db: DatabaseManager
) -> None:
    """Jobs of one worker that succeed at the same moment end together (one statement, one write of their
    results, one commit), each with its own result, written once; a job given to another worker meanwhile
    is left to it, with no result, while the others of its batch succeed."""
    job_ids = [await new_job() for _ in range(5)]
    taken = job_ids[2]
    release, started = asyncio.Event(), asyncio.Semaphore(0)

    async def act(ctx: JobContext) -> BaseModel:
        started.release()
        await release.wait()
        return PROBE.model_copy(update={"format": PROBE.format.model_copy(update={"name": ctx.job_id})})

    runner = make_runner({"video.probe": Calls(act)}, concurrency=5, lease_s=60)
    running = [asyncio.create_task(deliver(runner, body_of(job_id, tenant_id))) for job_id in job_ids]
    for _ in job_ids:
        await started.acquire()
    async with db.session() as session:
        await session.execute(update(jobs).where(jobs.c.id == taken).values(worker="video-newowner"))
        await session.commit()
    release.set()
    assert await asyncio.gather(*running) == [["ack"]] * 5
    # Released together, they reach their ends within one or two turns of the event loop: the first
    # success goes at once, those that come during its round trip together (here all five go in one).
    assert runner.successes.items == 5
    assert runner.successes.flushes <= 2
    for job_id in job_ids:
        row = await row_of(db, job_id)
        stored = await db.collection("results").find_one({"_id": job_id})
        if job_id == taken:
            assert (row["status"], row["worker"], stored) == ("running", "video-newowner", None)
            continue
        assert (row["status"], row["message"], row["progress"], row["worker"]) == (
            "succeeded",
            "done",
            1.0,
            None,
        )
        assert stored is not None
        assert (stored["format"]["name"], stored[RESULT_WRITES], stored["tenant_id"]) == (
            job_id,
            1,
            tenant_id,
        )


async def test_deliveries_that_arrive_together_are_claimed_in_one_batch_and_a_duplicate_once(
    make_runner, new_job, tenant_id: str, db: DatabaseManager
) -> None:
    """Deliveries that reach a worker at the same moment are claimed together (one statement), each job
    once: a second delivery of a job within the batch (a message published twice) is acked and skipped,
    and the job runs for its first delivery only, attempt 1."""
    job_ids = [await new_job() for _ in range(4)]
    handler = Calls()
    runner = make_runner({"video.probe": handler}, concurrency=5)
    bodies = [body_of(job_id, tenant_id) for job_id in job_ids] + [body_of(job_ids[1], tenant_id)]
    assert await asyncio.gather(*(deliver(runner, body) for body in bodies)) == [["ack"]] * 5
    # Every delivery reaches the batcher before its flush first runs (a task of its own, scheduled after
    # theirs): one statement for the five, the duplicate among them.
    assert (runner.claims.items, runner.claims.flushes) == (5, 1)
    assert sorted(ctx.job_id for ctx in handler.contexts) == sorted(job_ids)
    for job_id in job_ids:
        row = await row_of(db, job_id)
        assert (row["status"], row["attempts"]) == ("succeeded", 1)


async def test_a_batch_whose_results_cannot_be_written_leaves_each_of_its_jobs_to_retry(
    make_runner, new_job, tenant_id: str, db: DatabaseManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failed write of a batch's results rolls back every success of the batch: each job retries its
    end, and with MongoDB still away goes back to the queue unfinished, none with a result."""
    monkeypatch.setattr(tasks, "FINISH_RETRY_PAUSES_S", (0.01,))
    job_ids = [await new_job() for _ in range(3)]
    release, started = asyncio.Event(), asyncio.Semaphore(0)

    async def act(_ctx: JobContext) -> None:
        started.release()
        await release.wait()

    runner = make_runner({"video.probe": Calls(act)}, concurrency=3)
    batches: list[list[str]] = []

    async def fail_to_store(outcomes: list[tuple[JobMessage, tasks.Document]]) -> None:
        batches.append(sorted(message.job_id for message, _ in outcomes))
        raise MongoConnectionFailure("MongoDB is away")

    runner._store_results = fail_to_store  # type: ignore[method-assign]
    running = [asyncio.create_task(deliver(runner, body_of(job_id, tenant_id))) for job_id in job_ids]
    for _ in job_ids:
        await started.acquire()
    release.set()
    await asyncio.gather(*running)
    assert any(len(batch) > 1 for batch in batches)
    assert sorted(job for batch in batches for job in batch) == sorted(job_ids * 2)  # each tried twice
    for job_id in job_ids:
        row = await row_of(db, job_id)
        assert (row["status"], row["finished_at"]) == ("queued", None)
        assert await db.collection("results").find_one({"_id": job_id}) is None


async def test_a_result_that_cannot_be_stored_fails_its_job_alone_not_its_batch(
    make_runner, new_job, tenant_id: str, db: DatabaseManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two jobs succeed at the same moment, one with a result MongoDB cannot take (here an integer past
    BSON's 8 bytes, let past the check that now refuses it before the write, to stand for any refusal of
    one document by the server): the batch's write fails for both, then each ends alone, so that one fails
    and the other succeeds with its result. (Both failed with INTERNAL_ERROR.)"""
    monkeypatch.setattr(tasks, "_check_size", lambda message, result: None)
    good, bad = await new_job(), await new_job()
    release, started = asyncio.Event(), asyncio.Semaphore(0)

    async def act(ctx: JobContext) -> BaseModel:
        started.release()
        await release.wait()
        size = 2**70 if ctx.job_id == bad else 1000
        return PROBE.model_copy(update={"format": PROBE.format.model_copy(update={"size_bytes": size})})

    runner = make_runner({"video.probe": Calls(act)}, concurrency=2, lease_s=60)
    running = [asyncio.create_task(deliver(runner, body_of(job_id, tenant_id))) for job_id in (good, bad)]
    for _ in range(2):
        await started.acquire()
    release.set()
    assert await asyncio.gather(*running) == [["ack"]] * 2
    assert (runner.successes.items, runner.successes.flushes) == (2, 1)  # one batch, which failed
    kept = await row_of(db, good)
    assert kept["status"] == "succeeded", kept
    assert (await db.collection("results").find_one({"_id": good}))["format"]["size_bytes"] == 1000
    failed = await row_of(db, bad)
    assert (failed["status"], failed["error_code"]) == ("failed", "INTERNAL_ERROR")
    assert await db.collection("results").find_one({"_id": bad}) is None


@pytest.mark.parametrize("callback_url", [None, "https://example.com/hook"])
async def test_a_result_is_written_while_the_success_holds_the_row_uncommitted(
    make_runner, new_job, tenant_id: str, db: DatabaseManager, callback_url: str | None
) -> None:
    """While a job's result is written, its row is locked (a reaper skips it) and still reads running
    elsewhere: the success commits only after the write, on the lone path and the session's alike."""
    job_id = await new_job(callback_url=callback_url)
    runner = make_runner({"video.probe": Calls()})
    store, seen = runner._store_results, []

    async def look_then_store(outcomes: list[tuple[JobMessage, tasks.Document]]) -> None:
        # From a session: the lone path holds this process's one bare connection (the tests' pool size).
        async with db.session() as session:
            locked = text("SELECT id FROM jobs WHERE id = :id FOR UPDATE SKIP LOCKED")
            status = text("SELECT status FROM jobs WHERE id = :id")
            seen.append(
                (await session.scalar(locked, {"id": job_id}), await session.scalar(status, {"id": job_id}))
            )
        await store(outcomes)

    runner._store_results = look_then_store  # type: ignore[method-assign]
    assert await deliver(runner, body_of(job_id, tenant_id)) == ["ack"]
    assert seen == [(None, "running")]
    assert (await row_of(db, job_id))["status"] == "succeeded"
    assert await db.collection("results").find_one({"_id": job_id}) is not None


async def test_a_result_that_cannot_be_written_leaves_the_job_unfinished(
    make_runner, new_job, tenant_id: str, db: DatabaseManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When the result write keeps failing, the success never commits: the job goes back to the queue for
    its retry, with no result, and is not succeeded."""
    monkeypatch.setattr(tasks, "FINISH_RETRY_PAUSES_S", (0.01,))
    job_id = await new_job()
    runner = make_runner({"video.probe": Calls()})
    writes: list[str] = []

    async def fail_to_store(outcomes: list[tuple[JobMessage, tasks.Document]]) -> None:
        writes.extend(message.job_id for message, _ in outcomes)
        raise MongoConnectionFailure("MongoDB is away")

    runner._store_results = fail_to_store  # type: ignore[method-assign]
    assert await deliver(runner, body_of(job_id, tenant_id)) == ["ack"]
    row = await row_of(db, job_id)
    assert (row["status"], row["worker"], row["finished_at"]) == ("queued", None, None)
    assert writes == [job_id, job_id]
    assert await db.collection("results").find_one({"_id": job_id}) is None


@pytest.mark.parametrize(
    ("max_attempts", "status", "error_code"),
    [(1, "failed", "RETRIES_EXHAUSTED"), (3, "queued", None)],
    ids=["last-attempt", "attempts-left"],
)
async def test_a_success_whose_result_cannot_be_stored_leaves_no_files(
    make_runner,
    new_job,
    tenant_id: str,
    db: DatabaseManager,
    store: FileStore,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    max_attempts: int,
    status: str,
    error_code: str | None,
) -> None:
    """A success whose result write keeps failing (MongoDB away, nothing written) fails RETRIES_EXHAUSTED at
    the last attempt, or goes back to retry: either way the files its attempt saved are deleted, as a
    failure of the handler deletes them. They stayed the tenant's (a cancel of the queued retry left them
    for ever), as only failures within the handler's run deleted them."""
    monkeypatch.setattr(tasks, "FINISH_RETRY_PAUSES_S", (0.01,))
    job_id = await new_job()
    ids: list[str] = []

    async def act(ctx: JobContext) -> None:
        ids.append(await ctx.save_artifact(b"thumb", filename="t0.jpg", content_type="image/jpeg"))

    runner = make_runner({"video.probe": Calls(act)}, max_attempts=max_attempts)

    async def fail_to_store(outcomes: list[tuple[JobMessage, tasks.Document]]) -> None:
        raise MongoConnectionFailure("MongoDB is away")

    runner._store_results = fail_to_store  # type: ignore[method-assign]
    assert await deliver(runner, body_of(job_id, tenant_id)) == ["ack"]
    row = await row_of(db, job_id)
    assert (row["status"], row["error_code"]) == (status, error_code), row
    assert await file_states(db, store, ids, tmp_path) == ["deleted"]


async def test_a_success_whose_result_was_written_before_a_fault_keeps_its_files_for_its_rerun(
    make_runner,
    new_job,
    tenant_id: str,
    db: DatabaseManager,
    signals: JobSignals,
    store: FileStore,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A passing fault may come after MongoDB applied the result's write (the connection lost before its
    answer): the job goes back to retry with its files kept, and its rerun finishes it with that result,
    which names them, without running it again. At the last attempt no rerun comes: the job ends succeeded
    with that result at once, its files kept (it failed RETRIES_EXHAUSTED and they were deleted, its result
    stored). After a cancel asked meanwhile no one reads that result (the job ends cancelled): its files are
    deleted."""
    monkeypatch.setattr(tasks, "FINISH_RETRY_PAUSES_S", (0.01,))
    ids: list[str] = []

    async def act(ctx: JobContext) -> None:
        ids.append(await ctx.save_artifact(b"thumb", filename="t0.jpg", content_type="image/jpeg"))

    def answer_lost(runner: JobRunner) -> None:
        write = runner._store_results

        async def written_then_lost(outcomes: list[tuple[JobMessage, tasks.Document]]) -> None:
            await write(outcomes)
            raise MongoConnectionFailure("the connection was lost before the write's answer")

        runner._store_results = written_then_lost  # type: ignore[method-assign]

    retried, handler = await new_job(), Calls(act)
    runner = make_runner({"video.probe": handler}, max_attempts=3)
    answer_lost(runner)
    assert await deliver(runner, body_of(retried, tenant_id)) == ["ack"]
    assert (await row_of(db, retried))["status"] == "queued"
    assert await file_states(db, store, ids, tmp_path) == ["kept"]
    assert await deliver(make_runner({"video.probe": handler}), body_of(retried, tenant_id)) == ["ack"]
    assert (await row_of(db, retried))["status"] == "succeeded"
    assert len(handler.contexts) == 1  # finished with the stored result, not run again
    assert await file_states(db, store, ids, tmp_path) == ["kept"]

    last = await new_job()
    runner = make_runner({"video.probe": Calls(act)}, max_attempts=1)
    answer_lost(runner)
    assert await deliver(runner, body_of(last, tenant_id)) == ["ack"]
    assert (await row_of(db, last))["status"] == "succeeded"
    assert await file_states(db, store, ids, tmp_path) == ["kept", "kept"]

    cancelled = await new_job()  # a cancel asked meanwhile: no rerun comes to read that result
    runner = make_runner({"video.probe": Calls(act)}, max_attempts=3)
    answer_lost(runner)
    await signals.request_cancel(cancelled)
    assert await deliver(runner, body_of(cancelled, tenant_id)) == ["ack"]
    assert (await row_of(db, cancelled))["status"] == "cancelled"
    assert await file_states(db, store, ids, tmp_path) == ["kept", "kept", "deleted"]


async def test_a_last_attempts_success_meeting_a_fault_looks_for_its_result_once(
    make_runner, new_job, tenant_id: str, db: DatabaseManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At the last attempt a success whose write met a passing fault is looked for in MongoDB once: by
    `_retry_or_give_up`, which ends the job with what it finds; the files' keeping waits for that look
    rather than asking the same question first (it asked twice)."""
    monkeypatch.setattr(tasks, "FINISH_RETRY_PAUSES_S", (0.01,))
    looks: list[list[str]] = []
    look = tasks._stored_among
    job_id = await new_job()

    async def counted(database: DatabaseManager, job_ids: list[str]) -> set[str]:
        if job_id in job_ids:  # not another job's: the session's stack may run in this process meanwhile
            looks.append(list(job_ids))
        return await look(database, job_ids)

    monkeypatch.setattr(tasks, "_stored_among", counted)

    async def act(ctx: JobContext) -> None:
        await ctx.save_artifact(b"thumb", filename="t0.jpg", content_type="image/jpeg")

    runner = make_runner({"video.probe": Calls(act)}, max_attempts=1)
    write = runner._store_results

    async def written_then_lost(outcomes: list[tuple[JobMessage, tasks.Document]]) -> None:
        await write(outcomes)
        raise MongoConnectionFailure("the connection was lost before the write's answer")

    runner._store_results = written_then_lost  # type: ignore[method-assign]
    assert await deliver(runner, body_of(job_id, tenant_id)) == ["ack"]
    assert (await row_of(db, job_id))["status"] == "succeeded"
    assert looks == [[job_id]]


async def test_a_last_attempts_success_whose_commit_meets_a_blip_ends_succeeded_with_its_result(
    make_runner,
    settings: Settings,
    new_job,
    tenant_id: str,
    db: DatabaseManager,
    store: FileStore,
    tmp_path: Path,
) -> None:
    """At its last attempt a job's success is stored in MongoDB (while its UPDATE holds the row), then
    PostgreSQL goes away (a failover) through the commit and the ~3 s of its retries, and is back when the
    passing fault is handled. The job ends succeeded, its result (written once) served and the files it names
    kept, as a rerun would have finished it: it failed RETRIES_EXHAUSTED, the result left in MongoDB (a
    rerun finishes such a job, and at the last attempt none comes)."""
    url = make_url(settings.postgres.url.get_secret_value())
    proxy = TcpProxy(url.host or "127.0.0.1", url.port or 5432)
    await proxy.start()
    through = SecretStr(url.set(port=proxy.port).render_as_string(hide_password=False))
    proxied = settings.postgres.model_copy(update={"url": through, "connect_timeout": 1.0})
    manager = DatabaseManager(settings.model_copy(update={"postgres": proxied}), name="pgproxy")
    ids: list[str] = []

    async def act(ctx: JobContext) -> None:
        ids.append(await ctx.save_artifact(b"thumb", filename="t0.jpg", content_type="image/jpeg"))

    runner = make_runner({"video.probe": Calls(act)}, database=manager)
    job_id = await new_job(attempts=runner.settings.worker.max_attempts - 1, message="retrying")
    write, give_up = runner._store_results, runner._retry_or_give_up

    async def written_then_cut(outcomes: list[tuple[JobMessage, tasks.Document]]) -> None:
        await write(outcomes)
        await proxy.cut()  # PostgreSQL away right after the result's write, before the commit

    async def back_then_give_up(*args: Any) -> None:
        await proxy.restore()  # back once the success's tries are spent
        await give_up(*args)

    runner._store_results = written_then_cut  # type: ignore[method-assign]
    runner._retry_or_give_up = back_then_give_up  # type: ignore[method-assign]
    try:
        assert await asyncio.wait_for(deliver(runner, body_of(job_id, tenant_id)), 30) == ["ack"]
    finally:
        await manager.close_all()
        await proxy.cut()
    row = await row_of(db, job_id)
    assert (row["status"], row["error_code"], row["message"]) == ("succeeded", None, "done")
    assert (row["progress"], row["worker"], row["lease_expires_at"]) == (1.0, None, None)
    assert row["finished_at"] is not None
    document = await db.collection("results").find_one({"_id": job_id})
    assert document is not None
    assert document[RESULT_WRITES] == 1
    assert await file_states(db, store, ids, tmp_path) == ["kept"]


async def test_a_last_attempt_that_cannot_tell_whether_its_result_is_stored_fails_and_leaves_no_files(
    make_runner,
    settings: Settings,
    new_job,
    tenant_id: str,
    db: DatabaseManager,
    store: FileStore,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """At the last attempt a success's write meets MongoDB away, which then cannot be asked whether a result
    is stored: the job fails RETRIES_EXHAUSTED, as before anyone looked, and the files kept for a result that
    may have been stored are deleted (no rerun reads it, no result of a failed job is served)."""
    monkeypatch.setattr(tasks, "FINISH_RETRY_PAUSES_S", (0.01,))
    away = settings.mongodb.model_copy(update={"url": SecretStr("mongodb://127.0.0.1:9"), "timeout_ms": 200})
    manager = DatabaseManager(settings.model_copy(update={"mongodb": away}), name="nomongo")
    job_id = await new_job()
    ids: list[str] = []

    async def act(ctx: JobContext) -> None:
        ids.append(await ctx.save_artifact(b"thumb", filename="t0.jpg", content_type="image/jpeg"))

    runner = make_runner({"video.probe": Calls(act)}, database=manager, max_attempts=1)
    try:
        assert await deliver(runner, body_of(job_id, tenant_id)) == ["ack"]
    finally:
        await manager.close_all()
    row = await row_of(db, job_id)
    assert (row["status"], row["error_code"]) == ("failed", "RETRIES_EXHAUSTED")
    assert await file_states(db, store, ids, tmp_path) == ["deleted"]


async def test_a_result_mongodb_refuses_fails_its_job_and_leaves_no_files(
    make_runner,
    new_job,
    tenant_id: str,
    db: DatabaseManager,
    store: FileStore,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A result MongoDB refuses (an integer past BSON's 8 bytes, let past the size check, stands for any
    refusal of a document) fails its job INTERNAL_ERROR, and the files its attempt saved are deleted: no
    result names them. They were kept, the tenant's for ever without a retention."""
    monkeypatch.setattr(tasks, "_check_size", lambda message, result: None)
    job_id = await new_job()
    ids: list[str] = []

    async def act(ctx: JobContext) -> BaseModel:
        ids.append(await ctx.save_artifact(b"thumb", filename="t0.jpg", content_type="image/jpeg"))
        return PROBE.model_copy(update={"format": PROBE.format.model_copy(update={"size_bytes": 2**70})})

    runner = make_runner({"video.probe": Calls(act)})
    assert await deliver(runner, body_of(job_id, tenant_id)) == ["ack"]
    row = await row_of(db, job_id)
    assert (row["status"], row["error_code"]) == ("failed", "INTERNAL_ERROR"), row
    assert await db.collection("results").find_one({"_id": job_id}) is None
    assert await file_states(db, store, ids, tmp_path) == ["deleted"]


def test_handlers_must_be_catalogued_job_types(make_runner) -> None:
    """A runner refuses handlers for job types the catalogue does not know."""
    with pytest.raises(ValueError, match="not in the catalogue"):
        make_runner({"video.transcode": Calls()})


async def test_a_named_worker_ends_the_leases_its_dead_predecessor_left(
    make_runner, new_job, db: DatabaseManager
) -> None:
    """A worker started under the name of one that died ends the leases of that one's running jobs (for
    the reaper to requeue them now); other names, other services, its own claims and finished jobs keep
    theirs. An unnamed worker ends none."""
    later = datetime.now(UTC) + timedelta(hours=1)
    runner = make_runner({"video.probe": Calls()}, name="w1")
    left = {
        "predecessor": await new_job(status="running", worker="video-w1-41-aaaaaa", lease_expires_at=later),
        "other name": await new_job(status="running", worker="video-w10-42-bbbbbb", lease_expires_at=later),
        # A name that begins with this one and a dash (a pod "w1-2" beside "w1"): another worker's.
        "longer name": await new_job(status="running", worker="video-w1-2-45-eeeeee", lease_expires_at=later),
        "other service": await new_job(status="running", worker="audio-w1-43-cccccc", lease_expires_at=later),
        "its own": await new_job(status="running", worker=runner.worker_id, lease_expires_at=later),
        "finished": await new_job(status="succeeded", worker="video-w1-44-dddddd", lease_expires_at=later),
    }
    assert await make_runner({"video.probe": Calls()}).release_predecessors() == 0
    assert await runner.release_predecessors() == 1
    async with db.session() as session:
        leases = {
            what: (await jobstore.get(session, job_id=job_id) or {})["lease_expires_at"]
            for what, job_id in left.items()
        }
    assert leases.pop("predecessor") <= datetime.now(UTC)
    assert all(lease == later for lease in leases.values()), leases


def _segfault() -> None:
    os.kill(os.getpid(), signal.SIGSEGV)


def _pid_and_report(report: Callable[[float, str], None]) -> int:
    report(0.5, "half-way, in the child")
    return os.getpid()


async def test_the_rerun_of_a_job_whose_worker_died_runs_its_cpu_part_in_a_child(
    make_runner, new_job, tenant_id: str, db: DatabaseManager, signals: JobSignals
) -> None:
    """A delivery marked by the reaper (its job's worker died) runs `run_cpu` in another process, with
    progress; an unmarked one runs it in this process."""
    pids: dict[str, int] = {}

    async def act(ctx: JobContext) -> None:
        pids[ctx.job_id] = await ctx.run_cpu(_pid_and_report, ctx.report)

    runner = make_runner({"video.probe": Calls(act)}, progress_interval_s=0.0)
    plain, rerun = await new_job(), await new_job()
    assert await deliver(runner, body_of(plain, tenant_id)) == ["ack"]
    marked = RecordedDelivery(headers={jobstore.WORKER_DIED_HEADER: "1"})
    await runner.handle(body_of(rerun, tenant_id), marked)
    assert marked.settled == ["ack"]
    assert pids[plain] == os.getpid()
    assert pids[rerun] != os.getpid()
    assert (await row_of(db, rerun))["status"] == "succeeded"
    assert await signals.live(rerun) == {
        "progress": "0.5000",
        "message": "half-way, in the child",
        "attempt": "1",
    }


async def test_an_input_that_crashes_the_isolated_rerun_fails_it_and_spares_the_worker(
    make_runner, new_job, tenant_id: str, db: DatabaseManager
) -> None:
    """The decoder dies by a signal in the child: the job fails at once with MEDIA_DECODE_ERROR (no further
    attempt) and its message goes to the dead letters; this worker, which would have died with it, runs the
    next job."""

    async def act(ctx: JobContext) -> None:
        await ctx.run_cpu(_segfault)

    runner = make_runner({"video.probe": Calls(act)})
    job_id = await new_job()
    marked = RecordedDelivery(headers={jobstore.WORKER_DIED_HEADER: "1"})
    await runner.handle(body_of(job_id, tenant_id), marked)
    row = await row_of(db, job_id)
    assert (row["status"], row["error_code"]) == ("failed", "MEDIA_DECODE_ERROR")
    assert "SIGSEGV" in row["error_message"]
    async with db.session() as session:
        dead = await session.scalars(select(outbox.c.dead).where(outbox.c.job_id == job_id))
        assert dead.all() == [True]  # its message, to the dead letters: visible, and requeued once mended
    healthy = await new_job()
    runner.handlers["video.probe"] = Calls()
    assert await deliver(runner, body_of(healthy, tenant_id)) == ["ack"]
    assert (await row_of(db, healthy))["status"] == "succeeded"


@pytest.mark.parametrize("max_attempts", [1, 3], ids=["last-attempt", "attempts-left"])
async def test_a_cancel_asked_before_a_passing_fault_ends_the_job_cancelled(
    make_runner, new_job, tenant_id: str, db: DatabaseManager, signals: JobSignals, max_attempts: int
) -> None:
    """A cancel asked of a running job (the gateway answered 202: the flag is read at the next checkpoint),
    then a passing fault before that checkpoint: the job ends cancelled. It was requeued, and a rerun that
    ended before its first checkpoint succeeded; at the last attempt it failed RETRIES_EXHAUSTED."""
    job_id = await new_job()
    runs: list[JobContext] = []

    async def cancelled_then_fault(ctx: JobContext) -> BaseModel:
        runs.append(ctx)
        if len(runs) == 1:
            await ctx.progress(0.3, "decoding 30/100 frames", force=True)
            await signals.request_cancel(job_id)
            raise TransientJobError("MongoDB blinked")
        return PROBE

    runner = make_runner({"video.probe": cancelled_then_fault}, max_attempts=max_attempts)
    assert await deliver(runner, body_of(job_id, tenant_id)) == ["ack"]
    row = await row_of(db, job_id)
    assert (row["status"], row["error_code"], row["progress"]) == ("cancelled", None, 0.3)
    assert await deliver(runner, body_of(job_id, tenant_id)) == ["ack"]  # a retry's message, had one gone
    assert len(runs) == 1
    assert (await row_of(db, job_id))["status"] == "cancelled"


async def test_a_redis_refusing_writes_fails_no_job(
    make_runner, new_job, tenant_id: str, db: DatabaseManager, settings: Settings, read_only_redis: Redis
) -> None:
    """Progress the job's Redis refuses to store (READONLY, or OOM) is lost, as progress Redis cannot be
    reached for is: the job succeeds. It failed INTERNAL_ERROR, and every data job reports progress first."""
    with pytest.raises(ReadOnlyError):
        await read_only_redis.set("probe", "1")
    job_id = await new_job()

    async def reporting(ctx: JobContext) -> BaseModel:
        await ctx.progress(0.5, "halfway", force=True)
        return PROBE

    runner = make_runner({"video.probe": Calls(reporting)})
    runner.signals = JobSignals(read_only_redis, prefix=settings.redis.prefix)
    assert await deliver(runner, body_of(job_id, tenant_id)) == ["ack"]
    row = await row_of(db, job_id)
    assert (row["status"], row["error_code"]) == ("succeeded", None)


async def test_the_look_for_stored_results_is_bounded_when_mongodb_falls_silent(settings: Settings) -> None:
    """The look for stored results, made while rows are locked (a reaper's round, a dead letter, a worker's
    stop), gives up at `STORED_LOOK_TIMEOUT_S` when MongoDB takes the query and falls silent (connections
    open, no byte through: no socket timeout ends it), and finds none: the jobs are given up as before."""
    url = urlsplit(settings.mongodb.url.get_secret_value())
    proxy = TcpProxy(url.hostname or "127.0.0.1", url.port or 27017)
    await proxy.start()
    through = settings.mongodb.model_copy(update={"url": SecretStr(f"mongodb://127.0.0.1:{proxy.port}")})
    manager = DatabaseManager(settings.model_copy(update={"mongodb": through}), name="mongoproxy")
    try:
        assert await tasks.stored_results(manager, ["job-nowhere"]) == set()  # connected, answering
        proxy.blackhole()
        started = time.monotonic()
        assert await tasks.stored_results(manager, ["job-nowhere"]) == set()
        assert time.monotonic() - started < tasks.STORED_LOOK_TIMEOUT_S + 1
    finally:
        await proxy.cut()
        await manager.close_all()
