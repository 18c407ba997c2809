"""The service registry: the core's resources, their lifecycles and their health pings."""

from __future__ import annotations

import pytest
import svcs
from pymongo.asynchronous.database import AsyncDatabase
from redis.asyncio import Redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from medialens_shared.db import DatabaseManager
from medialens_shared.filestore import FileStore
from medialens_shared.registry import register_core
from medialens_shared.settings import Settings
from medialens_shared.signals import JobSignals

pytestmark = pytest.mark.integration


async def test_register_core_registers_every_resource_with_a_passing_ping(
    settings: Settings, database: str
) -> None:
    """Settings, the manager, sessions, Mongo, Redis, the file store and the signals resolve and ping ok."""
    manager = DatabaseManager(settings, name="registry-test")
    registry = svcs.Registry()
    register_core(registry, settings=settings, db=manager)
    async with svcs.Container(registry) as container:
        assert await container.aget(Settings) is settings
        assert await container.aget(DatabaseManager) is manager
        assert await container.aget(AsyncDatabase) is manager.mongo_db
        assert await container.aget(Redis) is manager.redis
        store = await container.aget(FileStore)
        assert store.bucket is manager.gridfs
        signals = await container.aget(JobSignals)
        assert signals.prefix == settings.redis.prefix
        pings = container.get_pings()
        assert len(pings) == 6
        for ping in pings:
            await ping.aping()
    await registry.aclose()
    assert manager.pool_stats()["postgres"]["checked_in"] == 0  # closing the registry closed the pools


async def test_a_session_is_fresh_per_container_and_returned_after(settings: Settings, database: str) -> None:
    """Each container gets its own AsyncSession, whose connection goes back to the pool when it closes."""
    manager = DatabaseManager(settings, name="registry-sessions")
    registry = svcs.Registry()
    register_core(registry, settings=settings, db=manager)
    try:
        async with svcs.Container(registry) as first, svcs.Container(registry) as second:
            one = await first.aget(AsyncSession)
            two = await second.aget(AsyncSession)
            assert one is not two
            assert await first.aget(AsyncSession) is one  # one per container
            assert await one.scalar(text("SELECT 41 + 1")) == 42
            assert await two.scalar(text("SELECT 1")) == 1
            assert manager.pool_stats()["postgres"]["checked_out"] == 2
        assert manager.pool_stats()["postgres"]["checked_out"] == 0
        assert not one.in_transaction()
    finally:
        await registry.aclose()
