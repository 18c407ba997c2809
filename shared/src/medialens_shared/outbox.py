"""Entries of the transactional outbox: a message is written in the same transaction as the job change
that calls for it, and the relay publishes it later (see `medialens_gateway.relay`).

Three kinds of entry: a job to run now, a job to run after a delay (a retry's backoff: it waits in a
delay queue, then reaches its service), and a job given up on, sent to the dead-letter exchange so that
operators see it.
"""

from __future__ import annotations

import random
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from medialens_shared.contracts import JobMessage
from medialens_shared.tables import outbox
from medialens_shared.telemetry import context_headers

#: The delay queues' waits, in seconds; a backoff is rounded up to the next one.
DELAY_TIERS_S = (1, 5, 30, 120, 600)


def backoff_s(attempt: int, *, base_s: float = 1.0, cap_s: float = 600.0) -> int:
    """Exponential backoff with full jitter for the retry after `attempt` tries, as a delay tier."""
    wanted = random.uniform(base_s, min(cap_s, base_s * 2 ** max(attempt, 1)))  # noqa: S311 - jitter
    return next((tier for tier in DELAY_TIERS_S if tier >= wanted), DELAY_TIERS_S[-1])


async def enqueue(
    session: AsyncSession,
    message: JobMessage,
    *,
    delay_s: int = 0,
    dead: bool = False,
    headers: dict[str, Any] | None = None,
) -> None:
    """Add `message` to the outbox in the caller's transaction."""
    if delay_s and delay_s not in DELAY_TIERS_S:
        raise ValueError(f"delay {delay_s} s is not one of the delay queues {DELAY_TIERS_S}")
    await session.execute(
        outbox.insert().values(
            job_id=message.job_id,
            routing_key=message.type,
            payload=message.model_dump(mode="json"),
            # By default the caller's trace context, which the relay publishes within (one trace per job).
            headers=context_headers() if headers is None else headers,
            delay_s=delay_s,
            dead=dead,
        )
    )
