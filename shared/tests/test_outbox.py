"""Outbox entries and the retry backoff."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from medialens_shared import outbox
from medialens_shared.contracts import JobMessage
from medialens_shared.db import DatabaseManager
from medialens_shared.tables import outbox as outbox_table

pytestmark = pytest.mark.integration


def test_backoff_is_a_delay_tier_that_grows_with_attempts() -> None:
    """Backoffs are always delay tiers, within the exponential bound of their attempt, capped at the last."""
    for attempt in range(1, 12):
        for _ in range(50):
            delay = outbox.backoff_s(attempt)
            assert delay in outbox.DELAY_TIERS_S
            bound = min(600.0, 2**attempt)
            assert delay <= next(t for t in outbox.DELAY_TIERS_S if t >= bound)
    assert {outbox.backoff_s(1) for _ in range(50)} <= {1, 5}


async def test_enqueue_writes_the_message_in_the_callers_transaction(
    db: DatabaseManager, new_job, tenant_id: str
) -> None:
    """enqueue inserts the message, its delay and dead flag; a rollback leaves nothing."""
    job_id = await new_job()
    message = JobMessage(job_id=job_id, type="video.probe", tenant_id=tenant_id, file_id=None, params={})
    async with db.session() as session:
        await outbox.enqueue(session, message, delay_s=5, headers={"traceparent": "x"})
        await session.rollback()
        await outbox.enqueue(session, message, dead=True)
        await session.commit()
        rows = (
            (await session.execute(select(outbox_table).where(outbox_table.c.job_id == job_id)))
            .mappings()
            .all()
        )
    assert len(rows) == 1
    row = rows[0]
    assert (row["routing_key"], row["delay_s"], row["dead"], row["sent_at"]) == ("video.probe", 0, True, None)
    assert row["payload"] == message.model_dump(mode="json")


async def test_enqueue_refuses_a_delay_without_a_queue(db: DatabaseManager, tenant_id: str) -> None:
    """A delay that is not one of the delay queues is refused before anything is written."""
    message = JobMessage(job_id="j", type="video.probe", tenant_id=tenant_id, file_id=None)
    async with db.session() as session:
        with pytest.raises(ValueError, match="not one of the delay queues"):
            await outbox.enqueue(session, message, delay_s=7)
