"""Migrations on a scratch database of this test's own."""

from __future__ import annotations

import asyncio
import importlib
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import asyncpg
import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from pydantic import SecretStr
from sqlalchemy.dialects.postgresql import asyncpg as postgresql_asyncpg
from sqlalchemy.ext.asyncio import create_async_engine

from medialens_shared import jobstore, migrate
from medialens_shared.contracts import TERMINAL_STATUSES, JobStatus
from medialens_shared.db import DatabaseManager
from medialens_shared.settings import Settings
from medialens_shared.tables import FINISHED_JOBS, metadata
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


def test_the_url_reads_as_the_services_read_it_tls_setting_included(scratch_db: str) -> None:
    """`?ssl=prefer` (or `require`, on a server with TLS) is an argument of the connection, as it is to the
    services' engine: it was sent to the server as a setting, which refused it, so no URL could ask both
    the migration and the services for TLS."""
    url = f"postgresql+asyncpg://postgres@127.0.0.1:5432/{scratch_db}?ssl=prefer"
    migrate.upgrade(url)
    assert asyncio.run(_tables(scratch_db)) >= TABLES | {"alembic_version"}


def test_a_role_that_may_not_connect_to_postgres_migrates_its_database(scratch_db: str, run_id: str) -> None:
    """The `postgres` database is asked only to create a missing database: a role without CONNECT there
    (as managed servers have) migrates the database it owns (its first look failed there)."""
    role = f"medialens_migrate_{run_id}"

    async def admin(*statements: str) -> None:
        conn = await asyncpg.connect(ADMIN)
        try:
            for statement in statements:
                await conn.execute(statement)
        finally:
            await conn.close()

    asyncio.run(admin(f'CREATE ROLE "{role}" LOGIN', f'CREATE DATABASE "{scratch_db}" OWNER "{role}"'))
    try:
        asyncio.run(admin("REVOKE CONNECT ON DATABASE postgres FROM PUBLIC"))
        try:
            with pytest.raises(asyncpg.InsufficientPrivilegeError):  # the role indeed may not
                asyncio.run(asyncpg.connect(f"postgresql://{role}@127.0.0.1:5432/postgres"))
            migrate.upgrade(f"postgresql+asyncpg://{role}@127.0.0.1:5432/{scratch_db}")
        finally:
            asyncio.run(admin("GRANT CONNECT ON DATABASE postgres TO PUBLIC"))
        assert asyncio.run(_tables(scratch_db)) >= TABLES | {"alembic_version"}
    finally:
        asyncio.run(drop_database(scratch_db))
        asyncio.run(admin(f'DROP ROLE "{role}"'))


def test_two_migrations_at_once_both_succeed(scratch_db: str) -> None:
    """Two `medialens-migrate` processes at once on a database neither finds (a Job's pod and its retry, a
    `make migrate` beside a Job): one creates it, the other finds it made; then the second waits for the
    first's migrations and finds nothing to do (unlocked, the two ran the same migrations side by side and
    blocked each other for good)."""
    url = f"postgresql+asyncpg://postgres@127.0.0.1:5432/{scratch_db}"
    env = {key: value for key, value in os.environ.items() if not key.startswith("MEDIALENS_")}
    env["MEDIALENS_POSTGRES_URL"] = url
    runs = [
        subprocess.Popen(
            [sys.executable, "-m", "medialens_shared.migrate"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for _ in range(2)
    ]
    try:
        outputs = [run.communicate(timeout=120)[0].decode() for run in runs]
    finally:
        for run in runs:
            run.kill()
    assert [run.returncode for run in runs] == [0, 0], outputs
    assert asyncio.run(_tables(scratch_db)) >= TABLES | {"alembic_version"}


def test_main_reads_the_url_from_the_environment(scratch_db: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """medialens-migrate migrates the database named in MEDIALENS_POSTGRES_URL."""
    monkeypatch.setenv("MEDIALENS_POSTGRES_URL", f"postgresql+asyncpg://postgres@127.0.0.1:5432/{scratch_db}")
    monkeypatch.setattr(sys, "argv", ["medialens-migrate"])
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
    assert "ix_jobs_finished" not in explained  # nor 0007's of the finished ones


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


@pytest.mark.parametrize(
    ("index", "before", "predicate"),
    [
        (
            "ix_jobs_queued_since",
            "0005",
            "WHERE ((status = 'queued'::text) AND (type <> 'media.analyze'::text))",
        ),
        (
            "ix_jobs_finished",
            "0006",
            "WHERE ((parent_id IS NULL) AND (status = ANY (ARRAY['cancelled'::text, 'failed'::text, "
            "'succeeded'::text])))",
        ),
        ("ix_files_job", "0006", "USING btree (job_id) WHERE (job_id IS NOT NULL)"),
        ("ix_idempotency_keys_job", "0006", "USING btree (job_id)"),
        ("ix_files_deleted", "0007", "USING btree (deleted_at) WHERE (deleted_at IS NOT NULL)"),
    ],
)
def test_a_partial_jobs_index_goes_down_and_up_again(
    scratch_db: str, index: str, before: str, predicate: str
) -> None:
    """Migrations 0006 (queued jobs), 0007 (finished jobs, and what refers to a job) and 0008 (deleted
    files) undone drop their indexes, and done again build them with their predicates."""
    url = f"postgresql+asyncpg://postgres@127.0.0.1:5432/{scratch_db}"

    async def definition() -> str | None:
        conn = await asyncpg.connect(f"postgresql://postgres@127.0.0.1:5432/{scratch_db}")
        try:
            found = await conn.fetchval("SELECT indexdef FROM pg_indexes WHERE indexname = $1", index)
        finally:
            await conn.close()
        return str(found) if found is not None else None

    migrate.upgrade(url)
    command.downgrade(migrate.alembic_config(url), before)
    assert asyncio.run(definition()) is None
    migrate.upgrade(url)
    built = asyncio.run(definition())
    assert built is not None
    assert built.endswith(predicate)


def test_the_finished_jobs_predicate_names_every_terminal_status() -> None:
    """`tables.FINISHED_JOBS` (the index's predicate, and migration 0007's copy of it) lists exactly the
    terminal statuses, as the relay's look does."""
    listed = set(re.findall(r"'([a-z]+)'", FINISHED_JOBS))
    assert listed == {status.value for status in TERMINAL_STATUSES}
    assert (
        FINISHED_JOBS
        == importlib.import_module(
            "medialens_shared.migrations.versions.0007_jobs_finished_index"
        ).FINISHED_JOBS
    )


def test_the_migrations_build_the_schema_the_tables_declare(scratch_db: str) -> None:
    """Alembic's comparison of the migrated database with `tables.metadata` finds nothing to change: every
    table, column and index the code declares is what the migrations built (a migration that replaced an
    index of another name, or a declaration with no migration, shows here)."""
    url = f"postgresql+asyncpg://postgres@127.0.0.1:5432/{scratch_db}"
    migrate.upgrade(url)

    async def differences() -> list[Any]:
        engine = create_async_engine(url)
        try:
            async with engine.connect() as conn:
                found: list[Any] = await conn.run_sync(
                    lambda sync: compare_metadata(MigrationContext.configure(sync), metadata)
                )
        finally:
            await engine.dispose()
        return found

    assert asyncio.run(differences()) == []


def test_a_process_refuses_a_database_behind_this_releases_schema(
    scratch_db: str, settings: Settings
) -> None:
    """A process's start (`initialize_all`) refuses a database never migrated, or at a revision this release
    migrates past, naming the command to run (processes were ready on an empty database, and answered 500);
    a revision it does not know, a newer release's, is let pass (a blue-green rollout migrates first)."""
    url = f"postgresql+asyncpg://postgres@127.0.0.1:5432/{scratch_db}"
    own = settings.model_copy(
        update={"postgres": settings.postgres.model_copy(update={"url": SecretStr(url)})}
    )

    async def start() -> None:
        manager = DatabaseManager(own, name="schema-check")
        try:
            await manager.initialize_all(wait_s=5)
        finally:
            await manager.close_all()

    async def set_version(version: str) -> None:
        conn = await asyncpg.connect(f"postgresql://postgres@127.0.0.1:5432/{scratch_db}")
        try:
            await conn.execute("UPDATE alembic_version SET version_num = $1", version)
        finally:
            await conn.close()

    asyncio.run(migrate.create_database_if_missing(url))
    with pytest.raises(migrate.SchemaBehind, match=r"never migrated.*run medialens-migrate"):
        asyncio.run(start())
    migrate.upgrade(url)
    asyncio.run(start())
    first = "0001"
    asyncio.run(set_version(first))
    with pytest.raises(migrate.SchemaBehind, match=f"at {first} and this release needs"):
        asyncio.run(start())
    asyncio.run(set_version("a-newer-release"))
    asyncio.run(start())


def test_help_says_what_the_command_does_and_touches_nothing(scratch_db: str) -> None:
    """`--help` describes the command and exits 0 without migrating (it created and migrated the database),
    and an argument it does not take is refused (exit 2), as in every entry point that takes none."""
    env = {
        **os.environ,
        "MEDIALENS_POSTGRES_URL": f"postgresql+asyncpg://postgres@127.0.0.1:5432/{scratch_db}",
    }
    shown = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; sys.argv[0] = 'medialens-migrate'; "
            "from medialens_shared.migrate import main; main()",
            "--help",
        ],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert shown.returncode == 0, shown.stderr
    assert "Apply the database migrations" in shown.stdout
    assert "MEDIALENS_*" in shown.stdout
    refused = subprocess.run(
        [sys.executable, "-c", "from medialens_shared.migrate import main; main()", "--now"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert refused.returncode == 2
    assert "unrecognized arguments: --now" in refused.stderr

    async def exists() -> bool:
        conn = await asyncpg.connect(ADMIN)
        try:
            return bool(await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", scratch_db))
        finally:
            await conn.close()

    assert not asyncio.run(exists())
