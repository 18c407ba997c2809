"""Migrations on a scratch database of this test's own."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import asyncpg
import pytest
from alembic import command
from sqlalchemy.dialects.postgresql import asyncpg as postgresql_asyncpg

from medialens_shared import jobstore, migrate
from medialens_shared.contracts import JobStatus
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


def test_a_young_jobs_table_claims_without_reading_the_parent_index(scratch_db: str) -> None:
    """The parent index holds only parts of composite jobs (migration 0005): a worker's claim, which
    selects `parent_id IS NULL`, cannot read it. Before, on a table of lone jobs not analyzed yet, the
    planner combined it with the primary key and read an entry for every job at each claim."""
    url = f"postgresql+asyncpg://postgres@127.0.0.1:5432/{scratch_db}"
    migrate.upgrade(url)
    claim = jobstore.LoneTransition(
        postgresql_asyncpg.dialect(),
        from_statuses=[JobStatus.QUEUED],
        to=JobStatus.RUNNING,
        count_attempt=True,
        batched=True,
        message="started",
        worker="w",
    )

    async def plan() -> tuple[str, str]:
        conn = await asyncpg.connect(f"postgresql://postgres@127.0.0.1:5432/{scratch_db}")
        try:
            await conn.execute("ALTER TABLE jobs SET (autovacuum_enabled = false)")  # no statistics
            await conn.execute("INSERT INTO tenants (id, name, webhook_secret) VALUES ('t', 't', 's')")
            await conn.execute(
                "INSERT INTO jobs (id, tenant_id, type, status) "
                "SELECT md5(g::text), 't', 'audio.probe', 'queued' FROM generate_series(1, 2000) g"
            )
            await conn.execute("SET plan_cache_mode = force_generic_plan")  # as a statement reused
            statement = await conn.prepare(claim.sql)
            explained = json.dumps(await statement.explain(*claim._arguments(["a", "b"], None, {})))
            definition = await conn.fetchval(
                "SELECT indexdef FROM pg_indexes WHERE indexname = 'ix_jobs_parent'"
            )
        finally:
            await conn.close()
        return explained, definition

    explained, definition = asyncio.run(plan())
    assert definition.endswith("WHERE (parent_id IS NOT NULL)")
    assert "pk_jobs" in explained
    assert "ix_jobs_parent" not in explained
    assert "ix_jobs_queued_since" not in explained  # migration 0006's index of every queued job neither


def test_the_parent_index_swap_goes_down_and_up_again(scratch_db: str) -> None:
    """Migration 0005 undone puts back the index of every job's parent, and done again the partial one."""
    url = f"postgresql+asyncpg://postgres@127.0.0.1:5432/{scratch_db}"

    async def definition() -> str:
        conn = await asyncpg.connect(f"postgresql://postgres@127.0.0.1:5432/{scratch_db}")
        try:
            return str(
                await conn.fetchval("SELECT indexdef FROM pg_indexes WHERE indexname = 'ix_jobs_parent'")
            )
        finally:
            await conn.close()

    migrate.upgrade(url)
    command.downgrade(migrate.alembic_config(url), "0004")
    assert asyncio.run(definition()).endswith("USING btree (parent_id)")
    migrate.upgrade(url)
    assert asyncio.run(definition()).endswith("WHERE (parent_id IS NOT NULL)")


def test_the_queued_jobs_index_goes_down_and_up_again(scratch_db: str) -> None:
    """Migration 0006 undone drops the index of queued jobs, and done again builds it with its predicate."""
    url = f"postgresql+asyncpg://postgres@127.0.0.1:5432/{scratch_db}"

    async def definition() -> str | None:
        conn = await asyncpg.connect(f"postgresql://postgres@127.0.0.1:5432/{scratch_db}")
        try:
            found = await conn.fetchval(
                "SELECT indexdef FROM pg_indexes WHERE indexname = 'ix_jobs_queued_since'"
            )
        finally:
            await conn.close()
        return str(found) if found is not None else None

    migrate.upgrade(url)
    command.downgrade(migrate.alembic_config(url), "0005")
    assert asyncio.run(definition()) is None
    migrate.upgrade(url)
    built = asyncio.run(definition())
    assert built is not None
    assert built.endswith("WHERE ((status = 'queued'::text) AND (type <> 'media.analyze'::text))")
