"""Operations, outside `/v1` and without a key: liveness, readiness, Prometheus metrics.

Two readiness questions, for two readers. `/health/ready` asks whether every dependency answers: for
operators, alerts, a blue-green switch and a demo waiting for the whole stack. `/health/serving` asks only
whether this process can take requests, which is what a load balancer (the Kubernetes readiness probe)
must route by: PostgreSQL, where every job is stored, answers. RabbitMQ, MongoDB and Redis are shared by
every gateway, so routing by them would take every gateway out of the Service at once when one of them
is away, turning a broker outage the outbox absorbs (submissions still answer 202) into an outage of the
whole API; the calls that do need them answer 503 with `Retry-After` on their own meanwhile.
"""

from __future__ import annotations

import asyncio
from dataclasses import asdict
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from medialens_gateway.deps import AppSettings, Bus, Databases
from medialens_gateway.envelope import error_response, ok
from medialens_gateway.openapi import RETRY_AFTER, Envelope, Readiness
from medialens_shared.db import Check, timed_check

router = APIRouter(tags=["operations"])


@router.get("/health/live", summary="The process is up", response_model=Envelope[dict[str, str]])
async def live() -> JSONResponse:
    return ok({"status": "ok"})


def _unavailable(what: str) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI 503 of a readiness route: `what` did not answer."""
    return {
        503: {
            "model": Envelope[Readiness],
            "headers": RETRY_AFTER,
            "description": f"SERVICE_UNAVAILABLE: {what} did not answer; the envelope (`success` false) "
            "holds the checks in `data`.",
        }
    }


def _readiness(checks: dict[str, Check], *, state: str) -> JSONResponse:
    """200 with the checks when all passed; else 503 naming the ones that did not ("Not `state`: ...")."""
    data = {
        "status": "ok" if all(check.ok for check in checks.values()) else "unavailable",
        "checks": {name: asdict(check) for name, check in checks.items()},
    }
    if data["status"] == "ok":
        return ok(data)
    down = ", ".join(name for name, check in checks.items() if not check.ok)
    return error_response(
        status_code=503,
        error_code="SERVICE_UNAVAILABLE",
        message=f"Not {state}: {down} did not answer; see data.checks.",
        data=data,
        retry_after=5,
    )


@router.get(
    "/health/ready",
    summary="Every dependency answered within its budget (503 when one did not)",
    response_model=Envelope[Readiness],
    responses=_unavailable("a dependency"),
)
async def ready(db: Databases, bus: Bus, settings: AppSettings) -> JSONResponse:
    checks, rabbit = await asyncio.gather(
        db.health_check_all(),
        timed_check(bus.ping, timeout=settings.gateway.health_timeout_s),
    )
    return _readiness(checks | {"rabbitmq": rabbit}, state="ready")


@router.get(
    "/health/serving",
    summary="This process takes requests: PostgreSQL, where every job is stored, answered (503 when not)",
    response_model=Envelope[Readiness],
    responses=_unavailable("PostgreSQL"),
)
async def serving(db: Databases, settings: AppSettings) -> JSONResponse:
    check = await timed_check(db.ping_postgres, timeout=settings.gateway.health_timeout_s)
    return _readiness({"postgres": check}, state="serving")


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST.split(";")[0]: {"schema": {"type": "string"}}}}},
)
async def metrics() -> Response:
    # Pool figures are read at scrape time by medialens_shared.metrics' collector.
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
