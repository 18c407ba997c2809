"""The service registry (svcs): what a process owns, registered once in its lifespan.

Lifecycles: a *value* is a singleton for the whole process (the database manager, the file store, the job
signals); a *factory* makes a fresh instance for each container, that is for each request or job, and
disposes of it when the container closes (a PostgreSQL session goes back to the pool). Closing the
registry at shutdown closes the pools (`DatabaseManager.close_all`). Every registration of a resource that
can be down (a database, the broker) carries a health ping, so readiness is driven by what is registered.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import svcs
from pymongo.asynchronous.database import AsyncDatabase
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncSession

from medialens_shared.db import DatabaseManager
from medialens_shared.filestore import FileStore
from medialens_shared.settings import Settings
from medialens_shared.signals import JobSignals


def _ping(probe: Callable[[], Awaitable[None]]) -> Callable[[object], Awaitable[None]]:
    """svcs calls a ping with the service it checks; ours probe the pool behind the service instead."""

    async def ping(_service: object) -> None:
        await probe()

    return ping


def register_core(registry: svcs.Registry, *, settings: Settings, db: DatabaseManager) -> None:
    """Register the settings, the pools and what is built on them."""

    async def session() -> AsyncIterator[AsyncSession]:
        async with db.session() as s:
            yield s

    registry.register_value(Settings, settings)
    registry.register_value(DatabaseManager, db, ping=_ping(db.ping_postgres), on_registry_close=db.close_all)
    registry.register_factory(AsyncSession, session, ping=_ping(db.ping_postgres))
    registry.register_value(AsyncDatabase, db.mongo_db, ping=_ping(db.ping_mongodb))
    registry.register_value(Redis, db.redis, ping=_ping(db.ping_redis))
    registry.register_value(FileStore, FileStore(db.gridfs, db.gridfs_chunks), ping=_ping(db.ping_mongodb))
    nudge_s = settings.relay.nudge_interval_s
    signals = JobSignals(db.redis, prefix=settings.redis.prefix, nudge_interval_s=nudge_s)
    # Registered after the pools, so closed before them (svcs closes in reverse order).
    registry.register_value(JobSignals, signals, ping=_ping(db.ping_redis), on_registry_close=signals.aclose)
