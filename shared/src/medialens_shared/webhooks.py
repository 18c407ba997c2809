"""Webhooks' shared half: the delivery owed when a job with a `callback_url` ends, and its signature.

`jobstore.transition` calls `enqueue` in the transaction of a terminal status change, so a webhook is owed
exactly when the status is stored, whichever path ended the job (worker, reaper, dead letters, cancel).
The relay's dispatcher (`medialens_gateway.webhooks`) sends the rows; a receiver checks a request by
recomputing `signature` over the exact bytes it got, with its tenant's webhook secret.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import uuid
from enum import StrEnum
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from medialens_shared.tables import webhook_deliveries

SIGNATURE_HEADER = "X-MediaLens-Signature"
DELIVERY_HEADER = "X-MediaLens-Delivery"
EVENT_HEADER = "X-MediaLens-Event"


class DeliveryStatus(StrEnum):
    PENDING = "pending"
    DELIVERING = "delivering"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


def body_of(payload: dict[str, Any]) -> bytes:
    """The bytes a delivery sends (and signs): compact JSON of its payload."""
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()


def signature(secret: str, body: bytes) -> str:
    """The X-MediaLens-Signature value of `body`: `sha256=<hex HMAC-SHA256 keyed with the secret>`."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def event_of(payload: dict[str, Any]) -> str:
    """The X-MediaLens-Event value: `job.<status>`."""
    return f"job.{payload['status']}"


async def enqueue(
    session: AsyncSession, *, job_id: str, tenant_id: str, url: str, payload: dict[str, Any]
) -> str:
    """Add a pending delivery of `payload` to `url` in the caller's transaction; its id."""
    delivery_id = str(uuid.uuid4())
    await session.execute(
        webhook_deliveries.insert().values(
            id=delivery_id,
            job_id=job_id,
            tenant_id=tenant_id,
            url=url,
            status=DeliveryStatus.PENDING.value,
            payload=payload,
        )
    )
    return delivery_id
