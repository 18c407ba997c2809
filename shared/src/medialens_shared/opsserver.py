"""The operations endpoints of a service without an API (the analysis services and the relay):
`/health/live`, `/health/ready` and `/metrics`, on `MEDIALENS_WORKER_HTTP_PORT`, for probes and Prometheus.

Readiness asks every dependency (the database manager's checks) and, for a consumer, whether it is really
consuming: its channel holds a consumer tag *and* the broker counts a consumer on its queue, so a consumer
the broker cancelled (or a channel that silently died) makes the service unready instead of idle.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import asdict

import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from medialens_shared.db import Check, DatabaseManager
from medialens_shared.envelope import failure, success

log = logging.getLogger(__name__)

ExtraCheck = Callable[[], Awaitable[Check]]


def ops_app(db: DatabaseManager, extra: Mapping[str, ExtraCheck]) -> Starlette:
    async def live(_: Request) -> Response:
        return _json(success({"status": "ok"}, request_id=""), 200)

    async def ready(_: Request) -> Response:
        checks = await db.health_check_all()
        names = list(extra)
        checks.update(zip(names, await asyncio.gather(*(extra[name]() for name in names)), strict=True))
        data = {
            "status": "ok" if all(c.ok for c in checks.values()) else "unavailable",
            "checks": {name: asdict(check) for name, check in checks.items()},
        }
        if data["status"] == "ok":
            return _json(success(data, request_id=""), 200)
        down = ", ".join(name for name, check in checks.items() if not check.ok)
        body = failure(error_code="SERVICE_UNAVAILABLE", message=f"Not ready: {down}.", request_id="")
        body["data"] = data
        return _json(body, 503, retry_after=5)

    async def metrics(_: Request) -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    routes = [Route("/health/live", live), Route("/health/ready", ready), Route("/metrics", metrics)]
    return Starlette(routes=routes)


def _json(body: object, status: int, *, retry_after: int | None = None) -> Response:
    headers = {"Retry-After": str(retry_after)} if retry_after else None
    return Response(json.dumps(body), status_code=status, media_type="application/json", headers=headers)


class QuietServer(uvicorn.Server):
    """uvicorn's server, minus its signal handling: the process owns SIGTERM and SIGINT and stops this
    server itself (uvicorn would otherwise take the signals and raise them again once it stopped, so a
    clean shutdown would end with "killed by SIGTERM" instead of exit code 0)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@contextlib.asynccontextmanager
async def serving(app: Starlette, *, host: str, port: int) -> AsyncIterator[uvicorn.Server]:
    """Serve `app` in this event loop while the context is open; port 0 picks a free port."""
    server = QuietServer(uvicorn.Config(app, host=host, port=port, log_config=None, access_log=False))
    task = asyncio.create_task(server.serve(), name="ops-server")
    while not server.started and not task.done():  # noqa: ASYNC110 - uvicorn offers a flag, not an event
        await asyncio.sleep(0.01)
    if task.done():
        task.result()  # raises why it could not start (a port in use)
    try:
        yield server
    finally:
        server.should_exit = True
        await task


def bound_port(server: uvicorn.Server) -> int:
    """The port a started server listens on (useful with port 0)."""
    port: int = server.servers[0].sockets[0].getsockname()[1]
    return port
