"""The operator's dead-letter command against the real broker: it lists the letters and requeues the
chosen ones as new jobs, leaving the others in the queue; an id with no letter, or a queue not declared
yet, is said in a line (not passed over, nor a traceback)."""

from __future__ import annotations

import asyncio
import secrets
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from sqlalchemy import delete, select, update

from medialens_gateway.deadletters import EXIT_KEPT, main_async
from medialens_shared.bus import Topology, make_broker, queue_stats
from medialens_shared.contracts import JobMessage
from medialens_shared.db import DatabaseManager
from medialens_shared.tables import jobs
from scripts.samples import make_video
from tests.fixtures.servers import free_port, settings_env
from tests.fixtures.stack import Stack, submit, upload, wait_for


async def _dead_job(stack: Stack, api: httpx.AsyncClient, db: DatabaseManager, tmp_path: Path) -> str:
    """A job whose only message was dead-lettered (so the relay failed it): its id."""
    path = tmp_path / "clip.mp4"
    make_video(path, duration_s=1.0, fps=10, width=160, height=120)
    job = await stack.held_job(api, "video.probe", await upload(api, path))
    await stack.publish_dead(job)
    failed = await wait_for(api, job.job_id)
    assert failed["error_code"] == "RETRIES_EXHAUSTED"
    return job.job_id


async def _dead_count(stack: Stack) -> int:
    broker = make_broker(stack.settings, name="test-deadletters")
    await broker.connect()
    try:
        return (await queue_stats(broker, Topology(stack.settings).dead.name)).messages
    finally:
        await broker.stop()


@pytest.fixture
async def dead_job(
    stack: Stack, api: httpx.AsyncClient, db: DatabaseManager, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> str:
    """A job whose only message was dead-lettered, with the command's environment pointing at this run."""
    job_id = await _dead_job(stack, api, db, tmp_path)
    for key, value in settings_env(stack.settings).items():
        monkeypatch.setenv(key, value)
    return job_id


async def test_list_shows_each_dead_letter_and_keeps_it(
    stack: Stack, dead_job: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """`list` prints the dead job's id and type, and leaves every letter in the queue."""
    job_id = dead_job
    before = await _dead_count(stack)
    assert await main_async(["list"]) == 0
    out = capsys.readouterr().out
    assert job_id in out
    assert "video.probe" in out
    assert await _dead_count(stack) == before


async def test_requeue_runs_the_job_again_as_a_new_job(
    stack: Stack,
    api: httpx.AsyncClient,
    db: DatabaseManager,
    dead_job: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`requeue ID` submits a copy labelled requeued_from, which succeeds; the letter leaves the queue."""
    job_id = dead_job
    before = await _dead_count(stack)
    assert await main_async(["requeue", job_id]) == 0
    assert f"requeued {job_id} as new job" in capsys.readouterr().out
    async with db.session() as session:
        new_id = await session.scalar(
            select(jobs.c.id).where(jobs.c.labels["requeued_from"].astext == job_id)
        )
    assert new_id is not None
    done = await wait_for(api, new_id)
    assert done["status"] == "succeeded"
    assert done["labels"]["requeued_from"] == job_id
    deadline = time.monotonic() + 5
    while await _dead_count(stack) != before - 1:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.1)
    old = await wait_for(api, job_id)
    assert old["status"] == "failed"  # a terminal job never changes again


async def test_requeue_removes_the_letter_of_a_job_that_no_longer_exists(
    stack: Stack, db: DatabaseManager, dead_job: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A dead job deleted since (`relay.job_retention_s`) cannot run again: `requeue` says so and removes its
    letter, which would otherwise stay in the queue for ever; it makes no job."""
    job_id = dead_job
    async with db.session() as session:
        await session.execute(delete(jobs).where(jobs.c.id == job_id))
        await session.commit()
    before = await _dead_count(stack)
    assert await main_async(["requeue", job_id]) == 0
    assert f"job {job_id} no longer exists" in capsys.readouterr().out
    async with db.session() as session:
        made = await session.scalar(select(jobs.c.id).where(jobs.c.labels["requeued_from"].astext == job_id))
    assert made is None
    deadline = time.monotonic() + 5
    while await _dead_count(stack) != before - 1:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.1)


async def test_requeue_names_the_ids_with_no_letter_and_requeues_the_others(
    stack: Stack, db: DatabaseManager, dead_job: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """An id with no letter in the queue (a typo) is named on stderr with exit 1, where it passed for done
    (exit 0); the id beside it that has one is requeued all the same."""
    job_id = dead_job
    before = await _dead_count(stack)
    assert await main_async(["requeue", "no-such-job"]) == 1
    alone = capsys.readouterr()
    assert alone.err.strip() == "no dead letter for job(s): no-such-job"
    assert alone.out == ""
    assert await _dead_count(stack) == before
    assert await main_async(["requeue", "no-such-job", job_id]) == 1
    mixed = capsys.readouterr()
    assert f"requeued {job_id} as new job" in mixed.out
    assert mixed.err.strip() == "no dead letter for job(s): no-such-job"
    async with db.session() as session:
        made = await session.scalar(select(jobs.c.id).where(jobs.c.labels["requeued_from"].astext == job_id))
    assert made is not None
    deadline = time.monotonic() + 5
    while await _dead_count(stack) != before - 1:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.1)


async def test_a_dead_letter_queue_not_declared_yet_is_said_in_one_line(
    stack: Stack, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """On a broker where nothing declared the queue yet (no relay or service has started), `list` says so
    in one line and lists nothing with exit 0, and `requeue` names its ids as not found (exit 1), where
    both ended in the broker's NOT_FOUND traceback; neither declares the queue."""
    for key, value in settings_env(stack.settings).items():
        monkeypatch.setenv(key, value)
    exchange = f"medialens-undeclared-{secrets.token_hex(4)}"
    monkeypatch.setenv("MEDIALENS_RABBITMQ_EXCHANGE", exchange)
    said = f"no dead-letter queue {exchange}.dead yet: nothing has been dead-lettered"
    assert await main_async(["list"]) == 0
    listed = capsys.readouterr()
    (line,) = listed.out.strip().splitlines()
    assert line.startswith(said)
    assert listed.err == ""
    assert await main_async(["requeue", "some-job"]) == 1
    requeued = capsys.readouterr()
    assert requeued.out.startswith(said)
    assert requeued.err.strip() == "no dead letter for job(s): some-job"
    assert await main_async(["list"]) == 0  # still not there: the command only looks
    assert capsys.readouterr().out.startswith(said)


async def test_requeue_with_postgresql_unreachable_says_so_and_keeps_the_letter(
    stack: Stack, dead_job: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """PostgreSQL unreachable: one line naming where and what to check, exit 3, and the letter stays in the
    queue. It waited 10 s for every server (MongoDB and Redis too, which it does not use) and then ended in
    a traceback."""
    monkeypatch.setenv("MEDIALENS_POSTGRES_URL", f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/x")
    before = await _dead_count(stack)
    started = time.monotonic()
    assert await main_async(["requeue", dead_job]) == 3
    assert time.monotonic() - started < 8
    err = capsys.readouterr().err
    assert "Traceback" not in err
    [line] = [line for line in err.splitlines() if line.startswith("medialens-deadletters: ")]
    assert "cannot be reached" in line
    assert "MEDIALENS_POSTGRES_URL" in line
    assert await _dead_count(stack) == before


async def test_a_job_with_two_letters_is_requeued_once(
    stack: Stack,
    api: httpx.AsyncClient,
    db: DatabaseManager,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A job dead-lettered twice (its decoder's crash, then its delivery limit) is copied once, both letters
    removed, the second named as requeued before; a letter of it that comes later (or stayed behind a run
    that stopped before removing it) is removed the same way. (Each letter made a copy: the job ran twice.)"""
    path = tmp_path / "clip.mp4"
    make_video(path, duration_s=1.0, fps=10, width=160, height=120)
    job = await stack.held_job(api, "video.probe", await upload(api, path))
    await stack.publish_dead(job)
    assert (await wait_for(api, job.job_id))["error_code"] == "RETRIES_EXHAUSTED"
    await stack.publish_dead(job)
    for key, value in settings_env(stack.settings).items():
        monkeypatch.setenv(key, value)
    before = await _dead_count(stack)

    async def copies() -> list[str]:
        async with db.session() as session:
            made = select(jobs.c.id).where(jobs.c.labels["requeued_from"].astext == job.job_id)
            return list(await session.scalars(made))

    assert await main_async(["requeue", job.job_id]) == 0
    (copy,) = await copies()
    out = capsys.readouterr().out.splitlines()
    assert out == [
        f"requeued {job.job_id} as new job {copy}",
        f"job {job.job_id} was requeued before, as job {copy}: this letter removed",
    ]
    deadline = time.monotonic() + 5
    while await _dead_count(stack) != before - 2:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.1)
    await stack.publish_dead(job)
    assert await main_async(["requeue", job.job_id]) == 0
    assert f"job {job.job_id} was requeued before, as job {copy}" in capsys.readouterr().out
    assert await copies() == [copy]
    assert (await wait_for(api, copy))["status"] == "succeeded"


async def _copies(db: DatabaseManager, job_id: str) -> list[str]:
    async with db.session() as session:
        made = select(jobs.c.id).where(jobs.c.labels["requeued_from"].astext == job_id)
        return list(await session.scalars(made))


async def test_requeue_removes_without_a_copy_the_letter_of_a_job_that_succeeded_or_was_cancelled(
    stack: Stack,
    api: httpx.AsyncClient,
    db: DatabaseManager,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A letter can be a duplicate's (the outbox publishing a job twice, the relay's republish of a job
    queued an hour), whose job the relay leaves be: one that succeeded, or one its tenant cancelled while
    queued. `requeue` copied the job whatever its status, so a job that had its result ran again (new
    thumbnails, a second webhook) and cancelled work ran anyway. Only a failed job is copied: these
    letters are removed, nothing to run again, each said so."""
    path = tmp_path / "clip.mp4"
    make_video(path, duration_s=1.0, fps=10, width=160, height=120)
    file_id = await upload(api, path)
    succeeded = await submit(api, "video.probe", file_id)
    assert (await wait_for(api, succeeded["id"]))["status"] == "succeeded"
    cancelled = await stack.held_job(api, "video.probe", file_id)
    assert (await api.post(f"/v1/jobs/{cancelled.job_id}/cancel")).json()["data"]["status"] == "cancelled"
    before = await _dead_count(stack)
    await stack.publish_dead(
        JobMessage(job_id=succeeded["id"], type="video.probe", tenant_id="tenant-a", file_id=file_id)
    )
    await stack.publish_dead(cancelled)
    deadline = time.monotonic() + 5
    while await _dead_count(stack) != before + 2:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.1)
    assert (await wait_for(api, succeeded["id"]))["status"] == "succeeded"  # the relay left them be
    assert (await wait_for(api, cancelled.job_id))["status"] == "cancelled"
    for key, value in settings_env(stack.settings).items():
        monkeypatch.setenv(key, value)

    assert await main_async(["requeue", succeeded["id"], cancelled.job_id]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"job {succeeded['id']} succeeded, it did not fail: not run again, its letter removed",
        f"job {cancelled.job_id} cancelled, it did not fail: not run again, its letter removed",
    ]
    assert await _copies(db, succeeded["id"]) == []
    assert await _copies(db, cancelled.job_id) == []
    deadline = time.monotonic() + 5
    while await _dead_count(stack) != before:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.1)


async def test_requeue_keeps_without_a_copy_the_letter_of_a_job_still_running(
    stack: Stack,
    api: httpx.AsyncClient,
    db: DatabaseManager,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A letter whose job is still running (a duplicate's, its job's worker live, or one the relay has not
    read yet, away or its database away) was copied at once: two runs of one job side by side. It is kept,
    said so, for a requeue once the job has ended; once the job fails, a requeue copies it."""
    path = tmp_path / "clip.mp4"
    make_video(path, duration_s=1.0, fps=10, width=160, height=120)
    job = await stack.held_job(api, "video.probe", await upload(api, path))
    valid = datetime.now(UTC) + timedelta(seconds=60)
    async with db.session() as session:
        await session.execute(
            update(jobs)
            .where(jobs.c.id == job.job_id)
            .values(status="running", attempts=1, worker="live-worker", lease_expires_at=valid)
        )
        await session.commit()
    for key, value in settings_env(stack.settings).items():
        monkeypatch.setenv(key, value)
    before = await _dead_count(stack)
    await stack.publish_dead(job)
    deadline = time.monotonic() + 5
    while await _dead_count(stack) != before + 1:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.1)

    assert await main_async(["requeue", job.job_id]) == EXIT_KEPT
    assert capsys.readouterr().out.splitlines() == [
        f"job {job.job_id} is still running, it has not failed: its letter kept "
        "(requeue it again once the job has ended)"
    ]
    assert await _copies(db, job.job_id) == []
    assert await _dead_count(stack) == before + 1
    assert (await api.get(f"/v1/jobs/{job.job_id}")).json()["data"]["status"] == "running"

    async with db.session() as session:  # its worker gone: the reaper gives up on it
        await session.execute(
            update(jobs)
            .where(jobs.c.id == job.job_id)
            .values(status="failed", error_code="RETRIES_EXHAUSTED", worker=None, lease_expires_at=None)
        )
        await session.commit()
    assert await main_async(["requeue", job.job_id]) == 0
    (copy,) = await _copies(db, job.job_id)
    assert capsys.readouterr().out.splitlines() == [f"requeued {job.job_id} as new job {copy}"]
    assert (await wait_for(api, copy))["status"] == "succeeded"
