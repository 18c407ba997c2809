"""The gateway's two brakes: each tenant's request rate (429) and its bound on requests in flight (503)."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
from asgi_lifespan import LifespanManager
from fastapi import FastAPI

from medialens_gateway.main import create_app
from medialens_shared.settings import Settings
from tests.fixtures.servers import TENANT_KEYS

from .conftest import EnvelopeCheck


@asynccontextmanager
async def gateway(app: FastAPI) -> AsyncIterator[dict[str, httpx.AsyncClient]]:
    """A client per tenant of `app`, running with its lifespan."""
    async with LifespanManager(app, startup_timeout=60, shutdown_timeout=60) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        clients = {
            tenant: httpx.AsyncClient(
                transport=transport, base_url="http://gateway", headers={"X-API-Key": key}, timeout=30
            )
            for tenant, key in TENANT_KEYS.items()
        }
        try:
            yield clients
        finally:
            for client in clients.values():
                await client.aclose()


def _with(settings: Settings, **gateway: object) -> Settings:
    return settings.model_copy(update={"gateway": settings.gateway.model_copy(update=gateway)})


async def test_a_tenant_over_its_rate_gets_429_and_others_do_not(
    settings: Settings, database: str, envelope: EnvelopeCheck
) -> None:
    """Past `tenant_rate_limit` a tenant's requests answer 429 RATE_LIMITED with Retry-After, in the
    envelope; another tenant's budget is its own."""
    app = create_app(_with(settings, tenant_rate_limit="3/minute"))
    async with gateway(app) as clients:
        answers = [await clients["tenant-a"].get("/v1/jobs?limit=1") for _ in range(4)]
        other = await clients["tenant-b"].get("/v1/jobs?limit=1")
    assert [answer.status_code for answer in answers] == [200, 200, 200, 429]
    body = envelope(answers[-1], status=429, error_code="RATE_LIMITED")
    assert "3 per 1 minute" in body["message"]
    assert 1 <= int(answers[-1].headers["retry-after"]) <= 60
    envelope(other, status=200)


async def test_no_limit_by_default(settings: Settings, database: str) -> None:
    app = create_app(_with(settings, tenant_rate_limit=""))
    async with gateway(app) as clients:
        answers = [await clients["tenant-a"].get("/v1/jobs?limit=1") for _ in range(30)]
    assert {answer.status_code for answer in answers} == {200}


async def test_past_its_bound_in_flight_the_gateway_sheds_load_but_not_health_checks(
    settings: Settings, database: str, envelope: EnvelopeCheck
) -> None:
    """With `max_in_flight` requests running, the next answers 503 SERVICE_UNAVAILABLE with Retry-After at
    once, while liveness still answers; once they end, requests are served again."""
    app = create_app(_with(settings, max_in_flight=2))
    release = asyncio.Event()
    entered = asyncio.Semaphore(0)

    @app.get("/v1/slow")
    async def slow() -> dict[str, str]:
        entered.release()
        await release.wait()
        return {"done": "yes"}

    async with gateway(app) as clients:
        client = clients["tenant-a"]
        running = [asyncio.create_task(client.get("/v1/slow")) for _ in range(2)]
        for _ in running:
            await asyncio.wait_for(entered.acquire(), 10)
        shed = await client.get("/v1/jobs?limit=1")
        live = await client.get("/health/live")
        release.set()
        assert [(await task).status_code for task in running] == [200, 200]
        after = await client.get("/v1/jobs?limit=1")
    body = envelope(shed, status=503, error_code="SERVICE_UNAVAILABLE")
    assert "in flight" in body["message"]
    assert shed.headers["retry-after"] == "1"
    assert live.status_code == 200
    envelope(after, status=200)


async def test_reading_and_submitting_jobs_spend_the_same_budget_and_need_a_key(
    settings: Settings, database: str, envelope: EnvelopeCheck
) -> None:
    """`GET /v1/jobs/{id}` and `POST /v1/jobs`, which take their tenant through one combined dependency,
    are authenticated and counted against the tenant's rate like every other /v1 call."""
    app = create_app(_with(settings, tenant_rate_limit="3/minute"))
    async with gateway(app) as clients:
        client = clients["tenant-a"]
        anonymous = await client.get("/v1/jobs/no-such-job", headers={"X-API-Key": ""})
        answers = [
            await client.get("/v1/jobs/no-such-job"),
            await client.post("/v1/jobs", json={"type": "audio.probe", "file_id": "no-such-file"}),
            await client.get("/v1/jobs?limit=1"),
            await client.post("/v1/jobs", json={"type": "audio.probe", "file_id": "no-such-file"}),
        ]
    envelope(anonymous, status=401, error_code="UNAUTHORIZED")
    assert [answer.status_code for answer in answers] == [404, 404, 200, 429]
    envelope(answers[-1], status=429, error_code="RATE_LIMITED")


def _calls(document: dict[str, Any]) -> Iterator[tuple[str, str, str, dict[str, Any]]]:
    """(method, url, path, documented responses) of each operation, its path parameters filled with `x`."""
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            yield method.upper(), re.sub(r"\{[^}]+\}", "x", path), path, operation["responses"]


def _documents_the_brake(response: dict[str, Any]) -> None:
    assert response["content"]["application/json"]["schema"]["$ref"].endswith("Envelope")
    assert response["headers"]["Retry-After"]["schema"]["type"] == "integer"


async def test_429_is_documented_on_exactly_the_operations_a_tenant_rate_applies_to(
    settings: Settings, database: str
) -> None:
    """With a tenant's rate spent, an operation answers 429 exactly when the OpenAPI document lists a 429
    (the error envelope, with Retry-After) for it."""
    app = create_app(_with(settings, tenant_rate_limit="1/hour"))
    async with gateway(app) as clients:
        client = clients["tenant-a"]
        document = (await client.get("/openapi.json")).json()
        await client.get("/v1/job-types")  # spends the hour's one request
        for method, url, path, responses in _calls(document):
            answer = await client.request(method, url)
            assert ("429" in responses) is (answer.status_code == 429), (method, path, answer.status_code)
            if "429" in responses:
                _documents_the_brake(responses["429"])


async def test_503_is_documented_on_every_operation_the_gateway_sheds(
    settings: Settings, database: str
) -> None:
    """With `max_in_flight` requests running, an operation answers 503 exactly when the OpenAPI document
    lists a 503 (the error envelope, with Retry-After) for it; the readiness routes list their own 503 and
    are not shed."""
    app = create_app(_with(settings, max_in_flight=1))
    release = asyncio.Event()
    entered = asyncio.Event()

    @app.get("/v1/slow", include_in_schema=False)
    async def slow() -> dict[str, str]:
        entered.set()
        await release.wait()
        return {"done": "yes"}

    async with gateway(app) as clients:
        client = clients["tenant-a"]
        document = (await client.get("/openapi.json")).json()
        running = asyncio.create_task(client.get("/v1/slow"))
        await asyncio.wait_for(entered.wait(), 10)
        answers = [(call, await client.request(call[0], call[1])) for call in _calls(document)]
        release.set()
        await running
    for (method, _, path, responses), answer in answers:
        assert "503" in responses or answer.status_code != 503, (method, path)
        if path in ("/health/ready", "/health/serving"):
            assert answer.status_code == 200, answer.text
            assert responses["503"]["headers"]["Retry-After"]
        else:
            assert ("503" in responses) is (answer.status_code == 503), (method, path, answer.status_code)
            if "503" in responses:
                _documents_the_brake(responses["503"])
