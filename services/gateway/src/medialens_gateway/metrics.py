"""HTTP metrics of the gateway: request count and latency by method, route template and status."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

REQUESTS = Counter("medialens_http_requests_total", "HTTP requests answered", ["method", "route", "status"])
LATENCY = Histogram(
    "medialens_http_request_duration_seconds",
    "Time to the response's first byte",
    ["method", "route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)

# The pool gauge (medialens_db_pool_connections) and the job families live in medialens_shared.metrics,
# which every process exports.


_children: dict[tuple[str, str, int], tuple[Histogram, Counter]] = {}


def observe(*, method: str, route: str, status: int, seconds: float) -> None:
    """Count one answered request and its latency (the edge middleware calls this for each request)."""
    key = (method, route, status)
    if (found := _children.get(key)) is None:  # `labels()` takes a lock and builds a key on every call
        found = _children[key] = (LATENCY.labels(method, route), REQUESTS.labels(method, route, str(status)))
    found[0].observe(seconds)
    found[1].inc()
