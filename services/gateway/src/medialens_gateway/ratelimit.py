"""Each tenant's request rate (429 RATE_LIMITED), counted with the `limits` library.

`gateway.tenant_rate_limit` takes the library's notation, one or more limits separated by semicolons
(`"100/second;3000/minute"`); empty means no limit. The counts are fixed windows kept in this gateway
process's memory: a hit costs a couple of microseconds, where counting in Redis would hold the rate across
replicas at the price of a round trip on every request. With N gateway replicas behind a balancer a tenant
may therefore reach about N times the rate; size the limit per replica.
"""

from __future__ import annotations

import math
import time

from limits import RateLimitItem, parse_many
from limits.storage import MemoryStorage
from limits.strategies import FixedWindowRateLimiter

from medialens_shared.errors import RateLimited


class TenantRateLimit:
    """The request budget of each tenant in this process; `spend` raises `RateLimited` once it is gone."""

    def __init__(self, spec: str) -> None:
        self.limits: list[RateLimitItem] = parse_many(spec) if spec.strip() else []
        self._counter = FixedWindowRateLimiter(MemoryStorage())

    def spend(self, tenant_id: str) -> None:
        for limit in self.limits:
            if not self._counter.hit(limit, tenant_id):
                reset_at = self._counter.get_window_stats(limit, tenant_id).reset_time
                raise RateLimited(
                    f"This tenant is over its rate of {limit}; retry after the Retry-After header's seconds.",
                    retry_after=max(1, math.ceil(reset_at - time.time())),
                )
