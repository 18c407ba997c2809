"""Job rows: compare-and-set transitions on the real database, and the public job object."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta

import pytest
from sqlalchemy import func, insert, select

from medialens_shared import jobstore
from medialens_shared.contracts import JobStatus
from medialens_shared.db import DatabaseManager
from medialens_shared.tables import jobs, outbox, tenants, webhook_deliveries

pytestmark = pytest.mark.integration

JOB_KEYS = {
    "id", "type", "status", "progress", "message", "file_id", "params", "labels", "priority", "attempts",
    "error_code", "error_message", "created_at", "started_at", "finished_at", "parent_id", "children",
}  # fmt: skip


async def test_queued_to_running_happens_once(db: DatabaseManager, new_job) -> None:
    """The first claim moves queued to running and stamps started_at; a second claim gets None."""
    job_id = await new_job()
    async with db.session() as session:
        first = await jobstore.transition(
            session, job_id=job_id, from_statuses=[JobStatus.QUEUED], to=JobStatus.RUNNING, count_attempt=True
        )
        second = await jobstore.transition(
            session, job_id=job_id, from_statuses=[JobStatus.QUEUED], to=JobStatus.RUNNING, count_attempt=True
        )
        await session.commit()
    assert first is not None
    assert (first["status"], first["attempts"]) == ("running", 1)
    assert isinstance(first["started_at"], datetime)
    assert first["finished_at"] is None
    assert second is None
    async with db.session() as session:
        row = await jobstore.get(session, job_id=job_id)
    assert row is not None
    assert (row["status"], row["attempts"]) == ("running", 1)


async def test_two_concurrent_claims_exactly_one_wins(db: DatabaseManager, new_job) -> None:
    """Two sessions claiming the same queued job at once: one gets the row, the other None."""
    job_id = await new_job()

    async def claim() -> jobstore.JobRow | None:
        async with db.session() as session:
            row = await jobstore.transition(
                session, job_id=job_id, from_statuses=[JobStatus.QUEUED], to=JobStatus.RUNNING,
                count_attempt=True,
            )  # fmt: skip
            await asyncio.sleep(0.05)  # hold the row lock so the other claim really waits on it
            await session.commit()
            return row

    results = await asyncio.gather(claim(), claim())
    winners = [row for row in results if row is not None]
    assert len(winners) == 1
    async with db.session() as session:
        row = await jobstore.get(session, job_id=job_id)
    assert row is not None
    assert row["attempts"] == 1


async def test_a_terminal_job_never_changes(db: DatabaseManager, new_job) -> None:
    """Leaving a terminal status raises ValueError; running -> x on a succeeded job returns None."""
    job_id = await new_job(status="running")
    async with db.session() as session:
        done = await jobstore.transition(
            session, job_id=job_id, from_statuses=[JobStatus.RUNNING], to=JobStatus.SUCCEEDED, progress=1.0
        )
        await session.commit()
    assert done is not None
    assert done["status"] == "succeeded"
    assert isinstance(done["finished_at"], datetime)
    async with db.session() as session:
        with pytest.raises(ValueError, match="terminal job never changes"):
            await jobstore.transition(
                session, job_id=job_id, from_statuses=[JobStatus.SUCCEEDED], to=JobStatus.QUEUED
            )
        again = await jobstore.transition(
            session, job_id=job_id, from_statuses=[JobStatus.RUNNING], to=JobStatus.FAILED, error_code="X"
        )
        await session.commit()
        row = await jobstore.get(session, job_id=job_id)
    assert again is None
    assert row is not None
    assert (row["status"], row["error_code"], row["finished_at"]) == ("succeeded", None, done["finished_at"])


async def test_count_attempt_increments_and_started_at_is_kept(db: DatabaseManager, new_job) -> None:
    """Each counted claim adds one attempt; a second run keeps the first started_at."""
    job_id = await new_job()
    rows = []
    async with db.session() as session:
        for _ in range(3):
            row = await jobstore.transition(
                session, job_id=job_id, from_statuses=[JobStatus.QUEUED], to=JobStatus.RUNNING,
                count_attempt=True,
            )  # fmt: skip
            assert row is not None
            rows.append(row)
            back = await jobstore.transition(
                session, job_id=job_id, from_statuses=[JobStatus.RUNNING], to=JobStatus.QUEUED
            )
            assert back is not None
            assert back["attempts"] == row["attempts"]
        await session.commit()
    assert [row["attempts"] for row in rows] == [1, 2, 3]
    assert len({row["started_at"] for row in rows}) == 1


async def test_get_of_an_unknown_job_is_none(db: DatabaseManager) -> None:
    """Reading a job id that does not exist gives None; transitioning it gives None."""
    async with db.session() as session:
        assert await jobstore.get(session, job_id="no-such-job") is None
        assert (
            await jobstore.transition(
                session, job_id="no-such-job", from_statuses=[JobStatus.QUEUED], to=JobStatus.RUNNING
            )
            is None
        )


async def test_job_view_shape_and_children(db: DatabaseManager, new_job) -> None:
    """job_view has the API's keys, ISO times, and lists the children in creation order."""
    parent = await new_job(params={"k": 1}, labels={"team": "a"}, priority=3)
    first = await new_job(parent_id=parent)
    second = await new_job(parent_id=parent)
    async with db.session() as session:
        row = await jobstore.get(session, job_id=parent)
        children = await jobstore.children_of(session, job_id=parent)
    assert row is not None
    assert children == [first, second]
    view = jobstore.job_view(row, children=children)
    assert set(view) == JOB_KEYS
    assert view["id"] == parent
    assert (view["status"], view["progress"], view["message"]) == ("queued", 0.0, "")
    assert (view["params"], view["labels"], view["priority"], view["attempts"]) == (
        {"k": 1},
        {"team": "a"},
        3,
        0,
    )
    assert view["created_at"].endswith("Z")
    assert (view["started_at"], view["finished_at"]) == (None, None)
    assert view["children"] == [first, second]


async def test_live_progress_is_laid_over_a_running_job_only(db: DatabaseManager, new_job) -> None:
    """Live progress replaces the row's progress and message while running, and is ignored otherwise."""
    live = {"progress": "0.4200", "message": "decoding"}
    running_id = await new_job(status="running", progress=0.1, message="started")
    queued_id = await new_job(progress=0.0, message="waiting")
    done_id = await new_job(status="succeeded", progress=1.0, message="done")
    async with db.session() as session:
        running = await jobstore.get(session, job_id=running_id)
        queued = await jobstore.get(session, job_id=queued_id)
        done = await jobstore.get(session, job_id=done_id)
    assert running is not None
    assert queued is not None
    assert done is not None
    view = jobstore.job_view(running, live=live)
    assert (view["progress"], view["message"]) == (0.42, "decoding")
    assert (jobstore.job_view(running)["progress"], jobstore.job_view(running)["message"]) == (0.1, "started")
    assert (
        jobstore.job_view(queued, live=live)["progress"],
        jobstore.job_view(queued, live=live)["message"],
    ) == (
        0.0,
        "waiting",
    )
    assert jobstore.job_view(done, live=live)["progress"] == 1.0


def claim_of(db: DatabaseManager) -> jobstore.LoneTransition:
    """The change a worker's claim makes, as `JobRunner` builds it."""
    return jobstore.LoneTransition(
        db.engine.dialect,
        from_statuses=[JobStatus.QUEUED],
        to=JobStatus.RUNNING,
        count_attempt=True,
        message="started",
        worker="video-w1",
        lease_expires_at=func.now() + timedelta(seconds=30),
    )


def end_of(db: DatabaseManager, to: JobStatus = JobStatus.SUCCEEDED) -> jobstore.LoneTransition:
    """The end of a job that a worker owns, as `JobRunner._finish` builds it."""
    return jobstore.LoneTransition(
        db.engine.dialect,
        from_statuses=[JobStatus.RUNNING],
        to=to,
        owned=True,
        message="done",
        progress=1.0,
        worker=None,
        lease_expires_at=None,
    )


async def row_of(db: DatabaseManager, job_id: str) -> jobstore.JobRow:
    async with db.session() as session:
        row = await jobstore.get(session, job_id=job_id)
    assert row is not None
    return row


async def test_a_lone_claim_on_a_bare_connection_stores_what_transition_stores(
    db: DatabaseManager, new_job
) -> None:
    """A lone job claimed in one statement on a bare connection gets the row `transition` gives another
    job (status, attempt, worker, lease, started_at), committed at once; a second claim gets None."""
    claim = claim_of(db)
    lone, other = await new_job(), await new_job()
    async with db.connection() as conn:
        row = await claim.run(conn, job_id=lone)
        again = await claim.run(conn, job_id=lone)
    async with db.session() as session:
        expected = await claim.in_session(session, job_id=other)
        await session.commit()
    assert row is not None
    assert expected is not None
    assert again is None
    assert list(row.keys()) == list(expected.keys())
    varying = {"id", "created_at", "started_at", "updated_at", "lease_expires_at"}
    # (items(): an asyncpg Record iterates its values, a RowMapping its keys)
    lone_values, other_values = dict(row.items()), dict(expected.items())
    assert {k: v for k, v in lone_values.items() if k not in varying} == {
        k: v for k, v in other_values.items() if k not in varying
    }
    assert (row["status"], row["attempts"], row["message"], row["worker"]) == (
        "running", 1, "started", "video-w1",
    )  # fmt: skip
    assert row["started_at"] is not None
    assert timedelta(seconds=25) < row["lease_expires_at"] - row["started_at"] <= timedelta(seconds=30)
    stored = await row_of(db, lone)
    assert dict(stored.items()) == lone_values


async def test_a_lone_claim_leaves_a_part_to_the_session_where_its_parent_follows(
    db: DatabaseManager, new_job
) -> None:
    """A part of a composite job is not changed by the bare statement; `in_session` claims it and moves
    its parent to running in the same transaction."""
    claim = claim_of(db)
    parent = await new_job(job_type="media.analyze")
    part, sibling = await new_job(parent_id=parent), await new_job(parent_id=parent)
    async with db.connection() as conn:
        assert await claim.run(conn, job_id=part) is None
    assert (await row_of(db, part))["status"] == "queued"
    async with db.session() as session:
        row = await claim.in_session(session, job_id=part)
        await session.commit()
    assert row is not None
    assert row["status"] == "running"
    assert ((await row_of(db, parent))["status"], (await row_of(db, sibling))["status"]) == (
        "running",
        "queued",
    )


async def test_a_lone_end_checks_the_owner_and_takes_the_values_of_each_call(
    db: DatabaseManager, new_job
) -> None:
    """An owned end changes nothing for another worker, nor for an earlier attempt of the same worker (its
    lease ran out and it claimed the job again); for the claim that holds the job it stores the values it
    is given, not those it was built with."""
    job_id = await new_job(status="running", worker="video-w1", attempts=2)
    end = end_of(db, JobStatus.FAILED)
    values = {"message": "failed", "progress": 0.5, "worker": None, "lease_expires_at": None}
    async with db.connection() as conn:
        assert await end.run(conn, job_id=job_id, owner=jobstore.Claim("video-other", 2), **values) is None
        assert await end.run(conn, job_id=job_id, owner=jobstore.Claim("video-w1", 1), **values) is None
        row = await end.run(conn, job_id=job_id, owner=jobstore.Claim("video-w1", 2), **values)
    assert row is not None
    assert (row["status"], row["message"], row["progress"], row["worker"]) == ("failed", "failed", 0.5, None)
    assert row["finished_at"] is not None
    with pytest.raises(ValueError, match="owner"):
        async with db.connection() as conn:
            await end.run(conn, job_id=job_id)


async def test_a_stale_attempt_cannot_send_the_job_back(db_without_relay: DatabaseManager) -> None:
    """`requeue` (a passing fault's retry) for the claim of an earlier attempt of the same worker changes
    nothing and writes no outbox entry; for the claim that holds the job it requeues it through the outbox.
    (On a database of its own: the stack's relay would publish that entry, and its video service run it.)"""
    db, job_id = db_without_relay, "requeued"
    async with db.session() as session:
        await session.execute(insert(tenants).values(id="t", name="t", webhook_secret="s"))
        await session.execute(
            insert(jobs).values(
                id=job_id, tenant_id="t", type="video.probe", status="running", worker="video-w1", attempts=2
            )
        )
        await session.commit()
    async with db.session() as session:
        row = await jobstore.get(session, job_id=job_id)
        assert row is not None
        stale = await jobstore.requeue(session, job=row, message="retry", owner=jobstore.Claim("video-w1", 1))
        await session.commit()
    assert stale is None
    assert await _outbox_entries(db, job_id) == 0
    async with db.session() as session:
        requeued = await jobstore.requeue(
            session, job=row, message="retry", owner=jobstore.Claim("video-w1", 2)
        )
        await session.commit()
    assert requeued is not None
    assert (requeued["status"], requeued["worker"]) == ("queued", None)
    assert await _outbox_entries(db, job_id) == 1


async def _outbox_entries(db: DatabaseManager, job_id: str) -> int:
    async with db.session() as session:
        return int(await session.scalar(select(func.count()).where(outbox.c.job_id == job_id)) or 0)


async def test_a_batched_end_holds_each_job_to_its_own_claim(db: DatabaseManager, new_job) -> None:
    """One statement ends several jobs, each only while its own claim (worker and attempt, at its place in
    the lists, not anywhere in them) still holds it."""
    end = jobstore.LoneTransition(
        db.engine.dialect,
        from_statuses=[JobStatus.RUNNING],
        to=JobStatus.SUCCEEDED,
        owned=True,
        batched=True,
        message="done",
        worker=None,
        lease_expires_at=None,
    )
    first = await new_job(status="running", worker="video-w1", attempts=1)
    again = await new_job(status="running", worker="video-w1", attempts=2)  # claimed again by video-w1
    other = await new_job(status="running", worker="video-w2", attempts=3)
    # Its worker and attempt are each in the lists, at other places: not its claim.
    crossed = await new_job(status="running", worker="video-w2", attempts=1)
    twice = await new_job(status="running", worker="video-w1", attempts=2)  # listed stale first, then its own
    listed = [first, again, other, crossed, twice, twice]
    claims = [
        jobstore.Claim("video-w1", 1),
        jobstore.Claim("video-w1", 1),
        jobstore.Claim("video-w2", 3),
        jobstore.Claim("video-w1", 3),
        jobstore.Claim("video-w1", 1),
        jobstore.Claim("video-w1", 2),
    ]
    async with db.connection() as conn:
        ended = await end.run_many(conn, job_ids=listed, owners=claims)
        with pytest.raises(ValueError, match="one owner for each job"):
            await end.run_many(conn, job_ids=[first, again], owners=claims)
    assert sorted(row["id"] for row in ended) == sorted([first, other])
    assert [(await row_of(db, job))["status"] for job in (first, again, other, crossed, twice)] == [
        "succeeded",
        "running",
        "succeeded",
        "running",
        "running",  # held to its first claim, a stale one: its own ends it by itself (the session's path)
    ]


async def test_a_lone_end_leaves_a_job_with_a_callback_url_to_the_session_that_owes_its_webhook(
    db: DatabaseManager, new_job
) -> None:
    """A job with a callback_url is not ended by the bare statement; `in_session` ends it and enqueues its
    webhook delivery in the same transaction."""
    job_id = await new_job(
        status="running", worker="video-w1", attempts=1, callback_url="https://example.com/hook"
    )
    end = end_of(db)
    async with db.connection() as conn:
        assert await end.run(conn, job_id=job_id, owner=jobstore.Claim("video-w1", 1)) is None
    assert (await row_of(db, job_id))["status"] == "running"
    async with db.session() as session:
        row = await end.in_session(session, job_id=job_id, owner=jobstore.Claim("video-w1", 1))
        await session.commit()
        deliveries = (
            (await session.execute(select(webhook_deliveries).where(webhook_deliveries.c.job_id == job_id)))
            .mappings()
            .all()
        )
    assert row is not None
    assert row["status"] == "succeeded"
    assert [(d["url"], d["payload"]["status"]) for d in deliveries] == [
        ("https://example.com/hook", "succeeded")
    ]
