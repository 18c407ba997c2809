"""The gateway's assembly: settings, lifespan (pools, bus, event hub), middleware, error handlers, routes."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncGenerator

import svcs.fastapi
import uvicorn
import uvloop
from fastapi import FastAPI

from medialens_gateway.auth import KeyCache, dev_keys_in_use, ensure_keys
from medialens_gateway.bus import GatewayBus
from medialens_gateway.deps import GatewayCore
from medialens_gateway.edge import EdgeMiddleware
from medialens_gateway.envelope import install_error_handlers
from medialens_gateway.events import EventHub
from medialens_gateway.files.routes import router as files_router
from medialens_gateway.jobs.hotpath import HotPaths
from medialens_gateway.jobs.routes import router as jobs_router
from medialens_gateway.jobs.types import router as job_types_router
from medialens_gateway.openapi import install_openapi
from medialens_gateway.ops.routes import router as ops_router
from medialens_gateway.ratelimit import TenantRateLimit
from medialens_shared.db import DatabaseManager
from medialens_shared.logs import configure_logging
from medialens_shared.memtrim import frozen_startup_heap
from medialens_shared.opsserver import QuietServer
from medialens_shared.registry import register_core
from medialens_shared.settings import Settings, load_settings
from medialens_shared.signals import JobSignals
from medialens_shared.telemetry import configure_tracing, instrument_app, tracing_on


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()

    @svcs.fastapi.lifespan
    async def lifespan(_: FastAPI, registry: svcs.Registry) -> AsyncGenerator[None]:
        db = DatabaseManager(settings, name="gateway")
        register_core(registry, settings=settings, db=db)
        await db.initialize_all()
        async with db.session() as session:
            if settings.is_development:
                await ensure_keys(session, pairs=settings.dev.pairs())
            elif in_use := await dev_keys_in_use(session, pairs=settings.dev.pairs()):
                raise RuntimeError(
                    f"development API keys ({', '.join(in_use)}: MEDIALENS_DEV_API_KEYS) are valid in this "
                    "database: revoke them (medialens-keys list, medialens-keys revoke) before serving in "
                    "production"
                )
        core = GatewayCore(
            db=db,
            signals=svcs.Container(registry).get(JobSignals),  # register_core's, which `Signals` gives too
            settings=settings,
            keys=KeyCache(ttl_s=settings.gateway.key_cache_ttl_s),
            rate=TenantRateLimit(settings.gateway.tenant_rate_limit),
        )
        registry.register_value(GatewayCore, core)
        hub = EventHub(JobSignals(db.redis, prefix=settings.redis.prefix))
        registry.register_value(EventHub, hub, on_registry_close=hub.stop)
        await hub.start()
        bus = GatewayBus(settings)
        registry.register_value(GatewayBus, bus, ping=GatewayBus.ping, on_registry_close=bus.close)
        await bus.connect()
        with frozen_startup_heap():  # everything made so far lives as long as the process
            yield

    app = FastAPI(
        title="MediaLens",
        version="1.0.0",
        summary="Media and data analysis jobs over REST.",
        lifespan=lifespan,
        # FastAPI's own telemetry asks the OpenTelemetry API on every request whether a provider is set;
        # without tracing the answer is always no, so it is switched off here (with tracing, as before).
        telemetry=None if tracing_on() else {"tracing": False, "metrics": False, "logs": False},
        # A path with a slash too many is a 404 in the envelope naming the path meant, not Starlette's bare
        # 307 to an absolute http:// URL (wrong behind a TLS proxy, and no envelope).
        redirect_slashes=False,
    )
    app.add_middleware(HotPaths)  # added first: the innermost layer, inside the edge
    app.add_middleware(EdgeMiddleware, max_in_flight=settings.gateway.max_in_flight)
    instrument_app(app)
    install_error_handlers(app)
    for router in (jobs_router, files_router, job_types_router, ops_router):
        app.include_router(router)
    install_openapi(app)
    return app


def main() -> None:
    """Serve the gateway until SIGTERM or SIGINT, then drain and exit 0."""
    settings = load_settings("The MediaLens REST gateway, on MEDIALENS_GATEWAY_HOST and _PORT.")
    configure_logging(settings, service="gateway")
    configure_tracing("gateway")
    config = uvicorn.Config(
        create_app(settings),
        host=settings.gateway.host,
        port=settings.gateway.port,
        log_config=None,
        access_log=settings.gateway.access_log,
        proxy_headers=True,
        timeout_graceful_shutdown=10,
    )

    async def serve() -> None:
        server = QuietServer(config)
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, server.handle_exit, signum, None)
        await server.serve()

    uvloop.run(serve())  # as `uvicorn --loop uvloop` would; the stdlib loop is markedly slower


if __name__ == "__main__":
    main()
