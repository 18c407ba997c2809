"""The gateway's dependencies, named once: routes take these `Annotated` aliases and nothing else."""

from __future__ import annotations

from typing import Annotated

import svcs.fastapi
from fastapi import Depends, Request
from pymongo.asynchronous.database import AsyncDatabase
from sqlalchemy.ext.asyncio import AsyncSession

from medialens_gateway.auth import KeyCache, Tenant, authenticate, presented_key
from medialens_gateway.bus import GatewayBus
from medialens_gateway.events import EventHub
from medialens_shared.db import DatabaseManager, MongoDoc
from medialens_shared.filestore import FileStore
from medialens_shared.settings import Settings
from medialens_shared.signals import JobSignals


async def _session(services: svcs.fastapi.DepContainer) -> AsyncSession:
    return await services.aget(AsyncSession)


async def _tenant(
    request: Request, services: svcs.fastapi.DepContainer, session: Annotated[AsyncSession, Depends(_session)]
) -> Tenant:
    return await authenticate(session, key=presented_key(request), cache=await services.aget(KeyCache))


async def _settings(services: svcs.fastapi.DepContainer) -> Settings:
    return await services.aget(Settings)


async def _files(services: svcs.fastapi.DepContainer) -> FileStore:
    return await services.aget(FileStore)


async def _signals(services: svcs.fastapi.DepContainer) -> JobSignals:
    return await services.aget(JobSignals)


async def _db(services: svcs.fastapi.DepContainer) -> DatabaseManager:
    return await services.aget(DatabaseManager)


async def _mongo(services: svcs.fastapi.DepContainer) -> AsyncDatabase[MongoDoc]:
    return await services.aget(AsyncDatabase)


async def _bus(services: svcs.fastapi.DepContainer) -> GatewayBus:
    return await services.aget(GatewayBus)


async def _hub(services: svcs.fastapi.DepContainer) -> EventHub:
    return await services.aget(EventHub)


DbSession = Annotated[AsyncSession, Depends(_session)]
CurrentTenant = Annotated[Tenant, Depends(_tenant)]
AppSettings = Annotated[Settings, Depends(_settings)]
Files = Annotated[FileStore, Depends(_files)]
Signals = Annotated[JobSignals, Depends(_signals)]
Databases = Annotated[DatabaseManager, Depends(_db)]
Events = Annotated[EventHub, Depends(_hub)]
Mongo = Annotated[AsyncDatabase[MongoDoc], Depends(_mongo)]
Bus = Annotated[GatewayBus, Depends(_bus)]
