"""Alembic environment: runs the migrations on the async engine built from the settings."""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from medialens_shared.tables import metadata

config = context.config
#: The advisory lock migrations hold (any fixed 64-bit key no other code of this database uses).
MIGRATION_LOCK = 0x6D65_6469_616C_656E  # "medialen"
#: Seconds between two tries of a run that waits for another to finish.
LOCK_POLL_S = 0.5


def _run(connection: Connection) -> None:
    context.configure(connection=connection, target_metadata=metadata, compare_type=True)
    with context.begin_transaction():
        context.run_migrations()


async def _run_online() -> None:
    engine = create_async_engine(config.get_main_option("sqlalchemy.url") or "")
    try:
        async with engine.connect() as connection:
            # One migration at a time on a database (a Job's pod and its retry, a `make migrate` beside a
            # Job): a session lock, held across the migrations' own transactions and autocommit blocks,
            # so the second run waits, then finds nothing left to do, instead of failing halfway (or
            # dropping an index the first one is building). Polled, each try its own short transaction:
            # a run waiting inside `pg_advisory_lock` would hold a snapshot that the first run's
            # CREATE INDEX CONCURRENTLY waits for, a deadlock.
            lock = text("SELECT pg_try_advisory_lock(:key)")
            while not await connection.scalar(lock, {"key": MIGRATION_LOCK}):
                await connection.commit()
                await asyncio.sleep(LOCK_POLL_S)
            await connection.commit()
            await connection.run_sync(_run)
            await connection.commit()
    finally:
        await engine.dispose()  # closing the session releases the lock


if context.is_offline_mode():
    context.configure(url=config.get_main_option("sqlalchemy.url"), target_metadata=metadata)
    with context.begin_transaction():
        context.run_migrations()
else:
    asyncio.run(_run_online())
