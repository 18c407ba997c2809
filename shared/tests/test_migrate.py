"""Migrations on a scratch database of this test's own."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import asyncpg
import pytest

from medialens_shared import migrate
from tests.fixtures.servers import drop_database

pytestmark = pytest.mark.integration

ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
TABLES = {"tenants", "api_keys", "files", "jobs", "outbox", "idempotency_keys"}


async def _tables(name: str) -> set[str]:
    conn = await asyncpg.connect(f"postgresql://postgres@127.0.0.1:5432/{name}")
    try:
        rows = await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        version = await conn.fetchval("SELECT version_num FROM alembic_version")
    finally:
        await conn.close()
    return {row["tablename"] for row in rows} | {f"version:{version}"}


@pytest.fixture
def scratch_db(run_id: str) -> Iterator[str]:
    name = f"medialens_migrate_{run_id}"
    yield name
    asyncio.run(drop_database(name))


def test_upgrade_creates_the_database_and_is_idempotent(scratch_db: str) -> None:
    """upgrade creates a missing database and the six tables, and a second run changes nothing."""
    url = f"postgresql+asyncpg://postgres@127.0.0.1:5432/{scratch_db}"
    migrate.upgrade(url)
    first = asyncio.run(_tables(scratch_db))
    migrate.upgrade(url)
    second = asyncio.run(_tables(scratch_db))
    assert first == second
    assert first >= TABLES | {"alembic_version"}
    assert any(name.startswith("version:") for name in first)


def test_main_reads_the_url_from_the_environment(scratch_db: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """medialens-migrate migrates the database named in MEDIALENS_POSTGRES_URL."""
    monkeypatch.setenv("MEDIALENS_POSTGRES_URL", f"postgresql+asyncpg://postgres@127.0.0.1:5432/{scratch_db}")
    migrate.main()
    assert asyncio.run(_tables(scratch_db)) >= TABLES
