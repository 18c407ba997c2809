"""The operations endpoints of a consumer, served on a real port and asked over HTTP."""

from __future__ import annotations

import httpx
import pytest

from medialens_shared.db import Check, DatabaseManager
from medialens_shared.opsserver import bound_port, ops_app, serving

pytestmark = pytest.mark.integration


async def broker_ok() -> Check:
    return Check(ok=True, latency_ms=1.5)


async def broker_down() -> Check:
    return Check(ok=False, latency_ms=2.0, error="no consumer")


async def test_live_ready_and_metrics_over_http(db: DatabaseManager) -> None:
    """/health/live is 200, /health/ready 200 with every check ok, /metrics the Prometheus text."""
    async with serving(ops_app(db, {"rabbitmq": broker_ok}), host="127.0.0.1", port=0) as server:
        base = f"http://127.0.0.1:{bound_port(server)}"
        async with httpx.AsyncClient(base_url=base, timeout=10) as client:
            live = await client.get("/health/live")
            ready = await client.get("/health/ready")
            metrics = await client.get("/metrics")
    assert (live.status_code, live.json()["data"]) == (200, {"status": "ok"})
    assert ready.status_code == 200
    data = ready.json()["data"]
    assert data["status"] == "ok"
    assert set(data["checks"]) == {"postgres", "mongodb", "redis", "rabbitmq"}
    assert data["checks"]["rabbitmq"] == {"ok": True, "latency_ms": 1.5, "error": None}
    assert metrics.status_code == 200
    assert metrics.headers["content-type"].startswith("text/plain")
    assert "# TYPE" in metrics.text


async def test_ready_is_503_naming_what_is_down(db: DatabaseManager) -> None:
    """A failing check makes /health/ready 503 with Retry-After and the failing check named."""
    async with (
        serving(ops_app(db, {"rabbitmq": broker_down}), host="127.0.0.1", port=0) as server,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{bound_port(server)}", timeout=10) as client,
    ):
        ready = await client.get("/health/ready")
    assert ready.status_code == 503
    assert ready.headers["retry-after"] == "5"
    body = ready.json()
    assert (body["success"], body["error_code"], body["message"]) == (
        False, "SERVICE_UNAVAILABLE", "Not ready: rabbitmq.",
    )  # fmt: skip
    assert body["data"]["status"] == "unavailable"
    assert body["data"]["checks"]["rabbitmq"]["error"] == "no consumer"
    assert body["data"]["checks"]["postgres"]["ok"] is True
