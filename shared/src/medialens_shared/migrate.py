"""Apply the database migrations: `medialens-migrate` (also run by `make dev` and the test fixtures).

Creates the database named in `MEDIALENS_POSTGRES_URL` when it does not exist yet, then runs Alembic's
`upgrade head` from the migrations shipped inside this package.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import asyncpg
from alembic import command
from alembic.config import Config
from sqlalchemy.engine import make_url

from medialens_shared.settings import Settings

log = logging.getLogger(__name__)


async def create_database_if_missing(url: str) -> None:
    """Create the database of `url` on its server if it is not there (idempotent)."""
    parsed = make_url(url)
    name = parsed.database
    admin = parsed.set(drivername="postgresql", database="postgres").render_as_string(hide_password=False)
    conn = await asyncpg.connect(admin)
    try:
        exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
        if not exists:
            await conn.execute(f'CREATE DATABASE "{name}"')
            log.info("created database %s", name)
    finally:
        await conn.close()


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(Path(__file__).with_name("migrations")))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def upgrade(url: str) -> None:
    """Bring the database at `url` to the newest schema."""
    asyncio.run(create_database_if_missing(url))
    command.upgrade(alembic_config(url), "head")


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    settings = Settings()
    upgrade(settings.postgres.url.get_secret_value())
    log.info("migrations applied")


if __name__ == "__main__":
    main()
