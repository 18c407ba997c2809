"""The gateway's dependencies, named once: routes take these `Annotated` aliases and nothing else.

Values the lifespan registered (the pools, the settings, the signals...) are looked up in the registry
directly; only `DbSession`, a factory whose session must go back to the pool, opens the request's svcs
container. Each dependency costs FastAPI some tens of microseconds per request, so the aliases depend on
nothing but the request, and the busiest routes take a single one, `Caller`: the authenticated tenant
with the few values those routes use (`GatewayCore`, registered once by the lifespan).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, TypeVar

import svcs.fastapi
from fastapi import Depends, FastAPI, Request
from pymongo.asynchronous.database import AsyncDatabase
from sqlalchemy.ext.asyncio import AsyncSession

from medialens_gateway.auth import KeyCache, Tenant, authenticate
from medialens_gateway.bus import GatewayBus
from medialens_gateway.events import EventHub
from medialens_gateway.ratelimit import TenantRateLimit
from medialens_shared.db import DatabaseManager, MongoDoc
from medialens_shared.filestore import FileStore
from medialens_shared.settings import Settings
from medialens_shared.signals import JobSignals

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class GatewayCore:
    """The lifespan's values every authenticated request needs, registered as one: one registry lookup
    per request instead of one per value."""

    db: DatabaseManager
    signals: JobSignals
    settings: Settings
    keys: KeyCache
    rate: TenantRateLimit


@dataclass(frozen=True, slots=True)
class CallerContext:
    """The caller's tenant (authenticated, within its rate) and the core values, as one dependency."""

    tenant: Tenant
    db: DatabaseManager
    signals: JobSignals
    settings: Settings


def registered(app: FastAPI, svc_type: type[T]) -> T:
    """A value of the running app's registry: no container needed, a value has nothing to clean up after
    the request (`HotPaths` too takes `GatewayCore` from here)."""
    return svcs.Container(svcs.fastapi.get_registry(app)).get(svc_type)


async def _session(services: svcs.fastapi.DepContainer) -> AsyncSession:
    return await services.aget(AsyncSession)


async def caller_of(core: GatewayCore, headers: Mapping[str, str]) -> CallerContext:
    """The caller of a request with these headers: its tenant (authenticated, and charged one request of
    its rate) and the core values. What `Caller` gives a route, and `HotPaths` an endpoint it calls."""
    tenant = await authenticate(core.db, headers=headers, cache=core.keys)
    core.rate.spend(tenant.id)
    return CallerContext(tenant=tenant, db=core.db, signals=core.signals, settings=core.settings)


async def _tenant(request: Request) -> Tenant:
    """The caller's tenant, which must be within its request rate."""
    return (await caller_of(registered(request.app, GatewayCore), request.headers)).tenant


async def _caller(request: Request) -> CallerContext:
    """`_tenant` and the values a job route uses, in one dependency (FastAPI's cost is per dependency)."""
    return await caller_of(registered(request.app, GatewayCore), request.headers)


async def _settings(request: Request) -> Settings:
    return registered(request.app, Settings)


async def _files(request: Request) -> FileStore:
    return registered(request.app, FileStore)


async def _signals(request: Request) -> JobSignals:
    return registered(request.app, JobSignals)


async def _db(request: Request) -> DatabaseManager:
    return registered(request.app, DatabaseManager)


async def _mongo(request: Request) -> AsyncDatabase[MongoDoc]:
    database: AsyncDatabase[MongoDoc] = registered(request.app, AsyncDatabase)
    return database


async def _bus(request: Request) -> GatewayBus:
    return registered(request.app, GatewayBus)


async def _hub(request: Request) -> EventHub:
    return registered(request.app, EventHub)


DbSession = Annotated[AsyncSession, Depends(_session)]
CurrentTenant = Annotated[Tenant, Depends(_tenant)]
Caller = Annotated[CallerContext, Depends(_caller)]
AppSettings = Annotated[Settings, Depends(_settings)]
Files = Annotated[FileStore, Depends(_files)]
Signals = Annotated[JobSignals, Depends(_signals)]
Databases = Annotated[DatabaseManager, Depends(_db)]
Events = Annotated[EventHub, Depends(_hub)]
Mongo = Annotated[AsyncDatabase[MongoDoc], Depends(_mongo)]
Bus = Annotated[GatewayBus, Depends(_bus)]
