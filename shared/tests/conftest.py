"""Fixtures of the core's tests: rows inserted straight into this run's database, and the Redis side."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from pydantic import SecretStr
from sqlalchemy import insert

from medialens_shared import migrate
from medialens_shared.db import DatabaseManager
from medialens_shared.filestore import FileStore
from medialens_shared.settings import Settings
from medialens_shared.signals import JobSignals
from medialens_shared.tables import files, jobs, tenants
from tests.fixtures.servers import drop_database

NewJob = Callable[..., Awaitable[str]]
NewFile = Callable[..., Awaitable[str]]


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def tenant_id(db: DatabaseManager) -> str:
    """A fresh tenant row."""
    tenant = unique("tenant")
    async with db.session() as session:
        await session.execute(insert(tenants).values(id=tenant, name=tenant, webhook_secret="s3cret"))
        await session.commit()
    return tenant


@pytest.fixture
def new_job(db: DatabaseManager, tenant_id: str) -> NewJob:
    """Insert a job row (queued unless told otherwise); its id."""

    async def make(
        *, job_type: str = "video.probe", status: str = "queued", file_id: str | None = None, **values: Any
    ) -> str:
        job_id = unique("job")
        async with db.session() as session:
            await session.execute(
                insert(jobs).values(
                    id=job_id, tenant_id=tenant_id, type=job_type, status=status, file_id=file_id, **values
                )
            )
            await session.commit()
        return job_id

    return make


@pytest.fixture
def tenant_with_jobs() -> Callable[..., Awaitable[str]]:
    """Insert a fresh tenant, and jobs of its with these columns (`id` among them), into `db`: a database of
    the test's own (`db_without_relay`), where `tenant_id` and `new_job` insert into the run's; its id."""

    async def insert_rows(db: DatabaseManager, *rows: dict[str, Any]) -> str:
        tenant = unique("tenant")
        async with db.session() as session:
            await session.execute(insert(tenants).values(id=tenant, name=tenant, webhook_secret="s3cret"))
            for row in rows:
                await session.execute(insert(jobs).values(tenant_id=tenant, **{"type": "video.probe", **row}))
            await session.commit()
        return tenant

    return insert_rows


@pytest.fixture
async def db_without_relay(settings: Settings, run_id: str) -> AsyncIterator[DatabaseManager]:
    """A migrated database of the test's own. Once a test has started the session's stack, its relay works
    on the shared database, and its webhook dispatcher claims a pending delivery within 50 ms: a test that
    reads what the runner left there must not race it."""
    name = f"medialens_test_{run_id}_{uuid.uuid4().hex[:8]}"
    url = settings.postgres.url.get_secret_value().rsplit("/", 1)[0] + f"/{name}"
    await asyncio.to_thread(migrate.upgrade, url)
    own = settings.model_copy(
        update={"postgres": settings.postgres.model_copy(update={"url": SecretStr(url)})}
    )
    manager = DatabaseManager(own, name="video")
    try:
        yield manager
    finally:
        await manager.close_all()
        await drop_database(name)


@pytest.fixture
def store(db: DatabaseManager) -> FileStore:
    return FileStore(db.gridfs, db.gridfs_chunks)


@pytest.fixture
def signals(db: DatabaseManager, settings: Settings) -> JobSignals:
    return JobSignals(db.redis, prefix=settings.redis.prefix)


@pytest.fixture
def new_file(db: DatabaseManager, store: FileStore, tenant_id: str) -> NewFile:
    """Store `data` in GridFS and insert its file row; the file's id."""

    async def make(data: bytes, *, filename: str = "input.mp4", **values: Any) -> str:
        stored = await store.save_bytes(data, filename=filename)
        file_id = unique("file")
        async with db.session() as session:
            await session.execute(
                insert(files).values(
                    id=file_id,
                    tenant_id=tenant_id,
                    filename=filename,
                    content_type="application/octet-stream",
                    size_bytes=stored.size_bytes,
                    sha256=stored.sha256,
                    kind="video",
                    storage_id=stored.storage_id,
                    **values,
                )
            )
            await session.commit()
        return file_id

    return make
