"""A 202 is durable: jobs accepted while the relay cannot reach RabbitMQ wait in the outbox and run once it
is back (ARCHITECTURE.md, guarantee 1)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from medialens_shared.db import DatabaseManager
from medialens_shared.tasks import RESULT_WRITES
from scripts.samples import make_video
from tests.fixtures.stack import Stack, result_of, submit, upload, wait_for

pytestmark = pytest.mark.integration

#: How long the broker stays unreachable while the test watches the job wait.
OUTAGE_S = 3.0


async def outbox_rows(db: DatabaseManager, job_id: str) -> list[Any]:
    async with db.session() as session:
        query = text("select sent_at, attempts from outbox where job_id = :job_id order by id")
        return list((await session.execute(query, {"job_id": job_id})).all())


async def job_row(db: DatabaseManager, job_id: str) -> Any:
    async with db.session() as session:
        query = text("select status, attempts from jobs where id = :job_id")
        return (await session.execute(query, {"job_id": job_id})).one()


async def watch_outage(api: httpx.AsyncClient, db: DatabaseManager, job_ids: list[str]) -> None:
    """For `OUTAGE_S`, every job stays `queued` and its one outbox entry stays unsent."""
    deadline = time.monotonic() + OUTAGE_S
    while time.monotonic() < deadline:
        for job_id in job_ids:
            response = await api.get(f"/v1/jobs/{job_id}")
            assert response.status_code == 200, response.text
            job = response.json()["data"]
            assert job["status"] == "queued", job
            assert job["attempts"] == 0, job
            rows = await outbox_rows(db, job_id)
            assert len(rows) == 1, rows
            assert rows[0].sent_at is None, rows
        await asyncio.sleep(0.25)


async def wait_sent(db: DatabaseManager, job_id: str, *, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        rows = await outbox_rows(db, job_id)
        if rows and rows[0].sent_at is not None:
            return rows
        assert time.monotonic() < deadline, f"outbox entry of {job_id} never marked sent: {rows}"
        await asyncio.sleep(0.1)


async def test_job_accepted_while_broker_unreachable_runs_once_it_returns(
    stack: Stack, api: httpx.AsyncClient, db: DatabaseManager, tmp_path: Path
) -> None:
    """A video.probe job accepted while the relay cannot reach RabbitMQ stays queued and unsent, then runs
    with a correct result once the broker is reachable again."""
    path = tmp_path / "clip.mp4"
    make_video(path, duration_s=1.0, fps=10, width=160, height=120)
    file_id = await upload(api, path)

    await stack.rabbit_proxy.cut()
    try:
        job = await submit(api, "video.probe", file_id)
        assert job["status"] == "queued"
        await watch_outage(api, db, [job["id"]])
    finally:
        await stack.rabbit_proxy.restore()

    done = await wait_for(api, job["id"], timeout=90)
    assert done["status"] == "succeeded", done
    assert done["attempts"] == 1, done
    result = await result_of(api, job["id"])
    assert (result["video"]["width"], result["video"]["height"]) == (160, 120)
    assert result["video"]["frame_count"] == 10
    assert result["video"]["fps"] == pytest.approx(10.0)
    assert result["format"]["size_bytes"] == path.stat().st_size
    rows = await wait_sent(db, job["id"])
    assert len(rows) == 1, rows


async def test_jobs_accepted_during_an_outage_each_run_exactly_once(
    stack: Stack, api: httpx.AsyncClient, db: DatabaseManager, tmp_path: Path
) -> None:
    """Several jobs accepted while the broker is unreachable all succeed after it returns, each on its
    first and only attempt, each published from a single outbox entry."""
    path = tmp_path / "clip.mp4"
    make_video(path, duration_s=0.8, fps=10, width=128, height=96)
    file_id = await upload(api, path)

    await stack.rabbit_proxy.cut()
    try:
        jobs = [await submit(api, "video.probe", file_id, labels={"n": str(n)}) for n in range(5)]
        ids = [job["id"] for job in jobs]
        assert len(set(ids)) == 5
        await watch_outage(api, db, ids)
    finally:
        await stack.rabbit_proxy.restore()

    for job_id in ids:
        done = await wait_for(api, job_id, timeout=90)
        assert done["status"] == "succeeded", done
        assert done["attempts"] == 1, done
        result = await result_of(api, job_id)
        assert result["video"]["frame_count"] == 8
        rows = await wait_sent(db, job_id)
        assert len(rows) == 1, rows
    # A little later each result has still been written once: a job run a second time (a duplicate
    # message whose delivery was not skipped) would have written its result again (`writes` counts them;
    # the row's attempts would not show it, since a terminal job never changes).
    await asyncio.sleep(1.0)
    for job_id in ids:
        row = await job_row(db, job_id)
        assert (row.status, row.attempts) == ("succeeded", 1), row
        stored = await db.collection("results").find_one({"_id": job_id})
        assert stored is not None
        assert stored[RESULT_WRITES] == 1, stored
