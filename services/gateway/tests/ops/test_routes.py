"""Operations: liveness, readiness driven by every dependency, and Prometheus metrics."""

from __future__ import annotations

import asyncio
import time

import httpx
from asgi_lifespan import LifespanManager
from pydantic import SecretStr

from medialens_gateway.main import create_app
from medialens_shared.settings import Settings
from tests.fixtures.proxy import TcpProxy
from tests.fixtures.servers import RABBIT_HOST, SERVERS
from tests.fixtures.stack import Stack

from ..conftest import EnvelopeCheck

DEPENDENCIES = {"postgres", "mongodb", "redis", "rabbitmq"}


async def test_live_is_200(api: httpx.AsyncClient, envelope: EnvelopeCheck) -> None:
    """/health/live answers 200 with status ok."""
    assert envelope(await api.get("/health/live"), status=200)["data"] == {"status": "ok"}


async def _ready(client: httpx.AsyncClient, *, within_s: float) -> httpx.Response:
    """Readiness, polled until it answers 200 or `within_s` passes (the last answer then)."""
    deadline = time.monotonic() + within_s
    while True:
        response = await client.get("/health/ready")
        if response.status_code == 200 or time.monotonic() > deadline:
            return response
        await asyncio.sleep(0.2)


async def test_ready_checks_every_dependency(api: httpx.AsyncClient, envelope: EnvelopeCheck) -> None:
    """/health/ready answers 200 with an ok check, a latency and no error for all four dependencies."""
    data = envelope(await _ready(api, within_s=15), status=200)["data"]
    assert data["status"] == "ok"
    assert set(data["checks"]) == DEPENDENCIES
    for name, check in data["checks"].items():
        assert set(check) == {"ok", "latency_ms", "error"}, name
        assert check["ok"] is True, (name, check)
        assert check["error"] is None
        assert 0 <= check["latency_ms"] < 2000


def _through(settings: Settings, server: str, url: str) -> Settings:
    """`settings` with `server`'s URL `url` (a proxy's) and a 1 s budget for each readiness check."""
    return settings.model_copy(
        update={
            server: getattr(settings, server).model_copy(update={"url": SecretStr(url)}),
            "gateway": settings.gateway.model_copy(update={"health_timeout_s": 1.0}),
        }
    )


async def test_ready_is_503_when_rabbitmq_is_unreachable(
    settings: Settings, database: str, envelope: EnvelopeCheck
) -> None:
    """A gateway started while RabbitMQ is down serves: /health/ready answers 503 naming rabbitmq, while
    /health/serving (the load balancer's question) answers 200; then it gets ready."""
    proxy = TcpProxy(*RABBIT_HOST)
    await proxy.start()
    url = settings.rabbitmq.url.get_secret_value().replace(f":{RABBIT_HOST[1]}/", f":{proxy.port}/")
    cut_settings = _through(settings, "rabbitmq", url)
    await proxy.cut()
    app = create_app(cut_settings)
    async with LifespanManager(app, startup_timeout=60, shutdown_timeout=60) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
            response = await asyncio.wait_for(client.get("/health/ready"), timeout=30)
            live = await client.get("/health/live")
            serving = await client.get("/health/serving")
            await proxy.restore()
            try:
                back = await _ready(client, within_s=20)
            finally:
                await proxy.cut()
    body = envelope(response, status=503, error_code="SERVICE_UNAVAILABLE")
    assert response.headers["retry-after"] == "5"
    assert "rabbitmq" in body["message"]
    assert body["data"]["status"] == "unavailable"
    checks = body["data"]["checks"]
    assert checks["rabbitmq"]["ok"] is False
    assert checks["rabbitmq"]["error"]
    assert all(checks[name]["ok"] for name in ("postgres", "mongodb", "redis"))
    assert live.status_code == 200
    assert envelope(serving, status=200)["data"]["checks"]["postgres"]["ok"] is True
    envelope(back, status=200)


async def test_serving_is_503_while_postgres_does_not_answer(
    settings: Settings, database: str, envelope: EnvelopeCheck
) -> None:
    """/health/serving follows this gateway's PostgreSQL: 200, then 503 naming postgres while it is cut off
    (with Retry-After), then 200 again once it answers."""
    host, port = SERVERS.postgres.rsplit("@", 1)[1].split(":")
    proxy = TcpProxy(host, int(port))
    await proxy.start()
    url = settings.postgres.url.get_secret_value().replace(f"@{host}:{port}/", f"@127.0.0.1:{proxy.port}/")
    proxied = _through(settings, "postgres", url)
    app = create_app(proxied)
    async with LifespanManager(app, startup_timeout=60, shutdown_timeout=60) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
            before = await client.get("/health/serving")
            await proxy.cut()
            try:
                during = await asyncio.wait_for(client.get("/health/serving"), timeout=30)
            finally:
                await proxy.restore()
            deadline = time.monotonic() + 20
            while (after := await client.get("/health/serving")).status_code != 200:
                assert time.monotonic() < deadline, after.text
                await asyncio.sleep(0.2)
    await proxy.cut()
    data = envelope(before, status=200)["data"]
    assert (data["status"], set(data["checks"])) == ("ok", {"postgres"})
    assert data["checks"]["postgres"]["ok"] is True
    body = envelope(during, status=503, error_code="SERVICE_UNAVAILABLE")
    assert during.headers["retry-after"] == "5"
    assert "postgres" in body["message"]
    assert body["data"]["status"] == "unavailable"
    assert body["data"]["checks"]["postgres"]["ok"] is False
    assert body["data"]["checks"]["postgres"]["error"]
    envelope(after, status=200)


async def test_metrics_are_prometheus_text(api: httpx.AsyncClient) -> None:
    """/metrics answers Prometheus text counting requests by method, route template and status."""
    await api.get("/v1/files/does-not-exist")
    response = await api.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert "# TYPE medialens_http_requests_total counter" in text
    assert 'medialens_http_requests_total{method="GET",route="/v1/files/{file_id}",status="404"}' in text
    assert "medialens_http_request_duration_seconds_bucket" in text


async def test_unmatched_routes_are_counted_as_unmatched(api: httpx.AsyncClient) -> None:
    """A request to no route is counted under route="unmatched", not under its raw path."""
    await api.get("/no/such/path/abc123")
    text = (await api.get("/metrics")).text
    assert 'route="unmatched",status="404"' in text
    assert "abc123" not in text


async def test_operations_answer_without_a_key(stack: Stack) -> None:
    """Readiness answers without any API key."""
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=stack.asgi), base_url="http://g"
    ) as client:
        assert (await client.get("/health/ready")).status_code == 200
