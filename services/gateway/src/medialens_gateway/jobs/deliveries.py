"""A job's webhook delivery log, as its tenant reads it, and redelivery on request."""

from __future__ import annotations

from typing import Any

from sqlalchemy import RowMapping, select
from sqlalchemy.ext.asyncio import AsyncSession

from medialens_gateway import pagination
from medialens_shared import webhooks
from medialens_shared.envelope import iso
from medialens_shared.errors import NotFound
from medialens_shared.tables import jobs, webhook_deliveries


def delivery_view(row: RowMapping) -> dict[str, Any]:
    return {
        "id": row["id"],
        "job_id": row["job_id"],
        "url": row["url"],
        "event": webhooks.event_of(row["payload"]),
        "status": row["status"],
        "attempts": row["attempts"],
        "last_status_code": row["last_status_code"],
        "last_error": row["last_error"],
        "created_at": iso(row["created_at"]),
        "delivered_at": iso(row["delivered_at"]),
        "next_attempt_at": iso(row["next_attempt_at"]),
    }


async def list_deliveries(
    session: AsyncSession, *, tenant_id: str, job_id: str, limit: int, cursor: str | None
) -> list[RowMapping]:
    """A page of the job's deliveries after `cursor`, oldest first, one row more than `limit` (the caller
    has checked the job is the tenant's)."""
    query = select(webhook_deliveries).where(
        webhook_deliveries.c.job_id == job_id, webhook_deliveries.c.tenant_id == tenant_id
    )
    query = pagination.page(
        query,
        created_at=webhook_deliveries.c.created_at,
        item_id=webhook_deliveries.c.id,
        limit=limit,
        cursor=cursor,
        listing=pagination.deliveries_of(job_id),
        oldest_first=True,
    )
    return list((await session.execute(query)).mappings().all())


async def redeliver(session: AsyncSession, *, tenant_id: str, job_id: str, delivery_id: str) -> RowMapping:
    """A new pending delivery with the payload and URL of `delivery_id`; the new row."""
    # The job's row held against deletion (the relay's retention skips a locked job, and one it is deleting
    # now is waited for, then found gone: 404), so the new delivery is neither cascaded away unseen nor
    # refused by its foreign key.
    held = select(jobs.c.id).where(jobs.c.id == job_id).with_for_update(read=True, key_share=True)
    if await session.scalar(held) is None:
        raise NotFound(f"No delivery {delivery_id} of job {job_id} for this API key's tenant.")
    query = select(webhook_deliveries).where(
        webhook_deliveries.c.id == delivery_id,
        webhook_deliveries.c.job_id == job_id,
        webhook_deliveries.c.tenant_id == tenant_id,
    )
    original = (await session.execute(query)).mappings().one_or_none()
    if original is None:
        raise NotFound(f"No delivery {delivery_id} of job {job_id} for this API key's tenant.")
    new_id = await webhooks.enqueue(
        session, job_id=job_id, tenant_id=tenant_id, url=original["url"], payload=original["payload"]
    )
    await session.commit()
    query = select(webhook_deliveries).where(webhook_deliveries.c.id == new_id)
    return (await session.execute(query)).mappings().one()
