"""Apply the database migrations: `medialens-migrate` (also run by `make dev` and the test fixtures).

Creates the database named in `MEDIALENS_POSTGRES_URL` when it does not exist yet, then runs Alembic's
`upgrade head` from the migrations shipped inside this package.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from pathlib import Path

import asyncpg
from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy.engine import URL, make_url

from medialens_shared.settings import load_settings

log = logging.getLogger(__name__)


async def create_database_if_missing(url: str) -> None:
    """Create the database of `url` on its server if it is not there (idempotent).

    It connects as the services do: SQLAlchemy's asyncpg dialect reads the URL, so its query (`?ssl=require`)
    means what it means to them (as a plain DSN, asyncpg sent `ssl` to the server as a setting, which
    refused it, so no URL could ask for TLS). It connects to the database itself first, and to the
    server's `postgres` database only when that one is missing, to create it: a role without CONNECT on
    `postgres` (common on managed servers) migrates a database that exists.
    """
    parsed = make_url(url)
    try:
        conn = await _connect(parsed)
    except asyncpg.InvalidCatalogNameError:
        pass  # no such database: created below
    else:
        await conn.close()
        return
    conn = await _connect(parsed.set(database="postgres"))
    try:
        exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", parsed.database)
        if not exists:
            try:
                await conn.execute(f'CREATE DATABASE "{parsed.database}"')
            except (asyncpg.DuplicateDatabaseError, asyncpg.UniqueViolationError):
                pass  # another run created it meanwhile (two at once: pg_database's unique index tells)
            else:
                log.info("created database %s", parsed.database)
    finally:
        await conn.close()


async def _connect(url: URL) -> asyncpg.Connection:
    """An asyncpg connection to `url` with the arguments SQLAlchemy's asyncpg dialect gives it (those
    asyncpg.connect takes: the dialect's own, such as its statement cache size, are left out)."""
    _, arguments = url.get_dialect()().create_connect_args(url)
    accepted = inspect.signature(asyncpg.connect).parameters
    connection: asyncpg.Connection = await asyncpg.connect(
        **{key: value for key, value in arguments.items() if key in accepted}
    )
    return connection


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(Path(__file__).with_name("migrations")))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


class SchemaBehind(RuntimeError):
    """The database's schema is older than this release's (or was never made): its processes must not
    serve on it (every call of a gateway on a database never migrated was a 500, with the process ready)."""


def check_schema(version: str | None) -> None:
    """Refuse a database whose Alembic `version` this release's migrations lead past (or none at all); a
    version this release does not know is a newer release's (a blue-green rollout migrates first, and a
    migration keeps the schema working for the release before it), and is let pass with a warning."""
    script = ScriptDirectory.from_config(alembic_config(""))
    head = script.get_current_head()
    if version == head:
        return
    known = {revision.revision for revision in script.walk_revisions()}
    if version is None or version in known:
        raise SchemaBehind(
            f"the database's schema is at {version or 'nothing (never migrated)'} and this release needs "
            f"{head}: run medialens-migrate (with this release's MEDIALENS_POSTGRES_URL)"
        )
    log.warning("the database's schema %s is newer than this release's %s; going on", version, head)


def upgrade(url: str) -> None:
    """Bring the database at `url` to the newest schema."""
    asyncio.run(create_database_if_missing(url))
    command.upgrade(alembic_config(url), "head")


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    settings = load_settings(
        "Apply the database migrations to MEDIALENS_POSTGRES_URL, creating its database if missing."
    )
    upgrade(settings.postgres.url.get_secret_value())
    log.info("migrations applied")


if __name__ == "__main__":
    main()
