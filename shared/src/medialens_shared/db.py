"""The database manager: one object per process that owns the PostgreSQL, MongoDB and Redis pools.

It opens them together (`initialize_all`, waiting with backoff for servers that are not up yet and warming
the pools), checks them together (`health_check_all`) and closes them together (`close_all`), so no
request or task ever opens a connection of its own. Every connection is tagged with the process's name
(`application_name`, `appname`, `CLIENT SETNAME`), which is how tests and operators count them on the
servers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import asyncpg
from gridfs import AsyncGridFSBucket
from pymongo import AsyncMongoClient, monitoring
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.monitoring import ConnectionPoolListener
from redis.asyncio import ConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from sqlalchemy import event, text
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DBAPIError, DisconnectionError, SQLAlchemyError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry, NullPool, PoolProxiedConnection, QueuePool
from sqlalchemy.util import greenlet_spawn

from medialens_shared import metrics, migrate, telemetry
from medialens_shared.settings import Settings

log = logging.getLogger(__name__)

#: The GridFS bucket file bytes are stored in (its collections `fs.files` and `fs.chunks`).
GRIDFS_BUCKET = "fs"

MongoDoc = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Check:
    """The answer of one dependency to a health check."""

    ok: bool
    latency_ms: float
    error: str | None = None


async def timed_check(probe: Callable[[], Awaitable[object]], *, timeout: float) -> Check:
    """Run `probe` within `timeout` seconds and report how it went; never raises."""
    start = time.perf_counter()
    try:
        async with asyncio.timeout(timeout):
            await probe()
    except Exception as exc:
        reason = "timed out" if isinstance(exc, TimeoutError) else f"{type(exc).__name__}: {exc}"
        return Check(ok=False, latency_ms=_ms_since(start), error=reason[:300])
    return Check(ok=True, latency_ms=_ms_since(start))


def _ms_since(start: float) -> float:
    return round((time.perf_counter() - start) * 1000, 2)


class MongoPoolCounter(ConnectionPoolListener):
    """PyMongo's pool has no counters to read, only events: this keeps the open and checked-out counts.

    Each handler takes the event PyMongo passes, though only its arrival matters.
    """

    def __init__(self) -> None:
        self.open = 0
        self.in_use = 0

    def connection_created(self, event: monitoring.ConnectionCreatedEvent) -> None:  # noqa: ARG002
        self.open += 1

    def connection_closed(self, event: monitoring.ConnectionClosedEvent) -> None:  # noqa: ARG002
        self.open = max(self.open - 1, 0)

    def connection_checked_out(self, event: monitoring.ConnectionCheckedOutEvent) -> None:  # noqa: ARG002
        self.in_use += 1

    def connection_checked_in(self, event: monitoring.ConnectionCheckedInEvent) -> None:  # noqa: ARG002
        self.in_use = max(self.in_use - 1, 0)

    # The other events of the pool carry nothing these counts need.
    def pool_created(self, event: monitoring.PoolCreatedEvent) -> None: ...
    def pool_ready(self, event: monitoring.PoolReadyEvent) -> None: ...
    def pool_cleared(self, event: monitoring.PoolClearedEvent) -> None: ...
    def pool_closed(self, event: monitoring.PoolClosedEvent) -> None: ...
    def connection_ready(self, event: monitoring.ConnectionReadyEvent) -> None: ...
    def connection_check_out_started(self, event: monitoring.ConnectionCheckOutStartedEvent) -> None: ...
    def connection_check_out_failed(self, event: monitoring.ConnectionCheckOutFailedEvent) -> None: ...


class DatabaseManager:
    """Owns this process's pools of PostgreSQL (SQLAlchemy + asyncpg), MongoDB and Redis connections."""

    def __init__(self, settings: Settings, *, name: str) -> None:
        self.settings = settings
        self.name = name
        pg = settings.postgres
        self.pool_size, self.max_overflow = pg.pool_for(name)
        connect_args = {
            "timeout": pg.connect_timeout,
            "server_settings": {"application_name": f"medialens-{name}"},
        }
        bare_size = pg.bare_size_for(name)
        self.engine: AsyncEngine = create_async_engine(
            pg.url.get_secret_value(),
            pool_size=self.pool_size - bare_size,
            max_overflow=self.max_overflow,
            pool_timeout=pg.pool_timeout,
            pool_recycle=pg.pool_recycle,
            connect_args=connect_args,
        )
        self.bare = BarePool(
            create_async_engine(pg.url.get_secret_value(), poolclass=NullPool, connect_args=connect_args),
            size=bare_size,
            timeout_s=pg.pool_timeout,
            recycle_s=pg.pool_recycle,
            ping_idle=pg.pool_pre_ping,
        )
        if pg.pool_pre_ping:
            # SQLAlchemy's own pre-ping costs three round trips on every checkout with asyncpg (BEGIN, ping,
            # ROLLBACK); this check costs none for a connection in use a moment ago.
            event.listen(self.engine.sync_engine, "checkout", _checking_alive(self.engine.dialect))
        self.sessions = async_sessionmaker(self.engine, expire_on_commit=False)
        telemetry.instrument_engine(self.engine)
        telemetry.instrument_clients()  # before the MongoDB client: PyMongo takes listeners at creation
        metrics.track_pools(self)
        mongo = settings.mongodb
        self.mongo_pool = MongoPoolCounter()
        self.mongo: AsyncMongoClient[MongoDoc] = AsyncMongoClient(
            mongo.url.get_secret_value(),
            event_listeners=[self.mongo_pool],
            maxPoolSize=mongo.max_pool_size,
            minPoolSize=mongo.min_pool_size,
            serverSelectionTimeoutMS=mongo.timeout_ms,
            connectTimeoutMS=mongo.timeout_ms,
            appname=f"medialens-{name}",
            tz_aware=True,
            connect=False,
        )
        self.mongo_db: AsyncDatabase[MongoDoc] = self.mongo[mongo.database]
        self.gridfs = AsyncGridFSBucket(self.mongo_db, bucket_name=GRIDFS_BUCKET)
        #: The bucket's chunks, which `filestore.Download` reads a few at a time.
        self.gridfs_chunks: AsyncCollection[MongoDoc] = self.mongo_db[f"{GRIDFS_BUCKET}.chunks"]
        rd = settings.redis
        self.redis_pool: ConnectionPool = ConnectionPool.from_url(
            rd.url.get_secret_value(),
            max_connections=rd.max_connections,
            socket_timeout=rd.socket_timeout,
            socket_connect_timeout=rd.socket_timeout,
            health_check_interval=30,
            # A connection the server dropped (a restart, CLIENT KILL) is replaced and the command retried.
            retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), retries=3),
            retry_on_error=[RedisConnectionError, RedisTimeoutError],
            client_name=f"medialens-{name}",
            decode_responses=False,
        )
        self.redis: Redis = Redis(connection_pool=self.redis_pool)

    # --- lifecycle ----------------------------------------------------------------------------------

    async def initialize_all(self, *, wait_s: float = 30.0) -> None:
        """Wait (with backoff, up to `wait_s`) until every server answers, then warm the pools."""
        await asyncio.gather(
            _retry("postgres", self.ping_postgres, wait_s=wait_s),
            _retry("mongodb", self.ping_mongodb, wait_s=wait_s),
            _retry("redis", self.ping_redis, wait_s=wait_s),
        )
        migrate.check_schema(await self.schema_version())
        await self._warm_up()
        log.info("database pools ready for %s", self.name)

    async def schema_version(self) -> str | None:
        """The database's Alembic revision, None when it was never migrated."""
        async with self.engine.connect() as conn:
            try:
                version = await conn.scalar(text("SELECT version_num FROM alembic_version"))
            except DBAPIError as exc:
                if not any(isinstance(cause, asyncpg.UndefinedTableError) for cause in causes(exc)):
                    raise
                return None
        return None if version is None else str(version)

    async def _warm_up(self) -> None:
        """Open a few connections of each pool ahead of the first request, so it pays no connect."""
        warm = min(self.pool_size - self.bare.size, 2)

        async def hold_one() -> None:
            async with self.engine.connect() as conn:
                await conn.execute(text("SELECT 1"))

        await asyncio.gather(*(hold_one() for _ in range(warm)), self.bare.warm(min(self.bare.size, 2)))
        await asyncio.gather(*(self.redis.ping() for _ in range(2)))

    async def health_check_all(self) -> dict[str, Check]:
        """Ping every resource concurrently within the configured budget."""
        timeout = self.settings.gateway.health_timeout_s
        names = ("postgres", "mongodb", "redis")
        probes = (self.ping_postgres, self.ping_mongodb, self.ping_redis)
        checks = await asyncio.gather(*(timed_check(probe, timeout=timeout) for probe in probes))
        return dict(zip(names, checks, strict=True))

    async def close_all(self) -> None:
        """Close every pool; safe to call twice. Each pool has `CLOSE_TIMEOUT_S` to close: a server that
        stopped answering (a network partition, not a restart: that closes the sockets) would otherwise
        hold up the process's stop for good, as asyncpg waits for the server's goodbye to a graceful
        close. What is left open then closes with the process."""

        async def close_redis() -> None:
            await self.redis.aclose()
            await self.redis_pool.disconnect()

        for pool, close in (
            ("postgres_bare", self.bare.close),
            ("postgres", self.engine.dispose),
            ("mongodb", self.mongo.close),
            ("redis", close_redis),
        ):
            try:
                async with asyncio.timeout(CLOSE_TIMEOUT_S):
                    await close()
            except TimeoutError:
                log.warning(
                    "the %s pool of %s did not close within %.0f s (its server does not answer); "
                    "left to close with the process",
                    pool,
                    self.name,
                    CLOSE_TIMEOUT_S,
                )
        log.info("database pools closed for %s", self.name)

    # --- pings --------------------------------------------------------------------------------------

    async def ping_postgres(self) -> None:
        async with self.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    async def ping_mongodb(self) -> None:
        await self.mongo.admin.command("ping")

    async def ping_redis(self) -> None:
        await self.redis.ping()

    # --- accessors ----------------------------------------------------------------------------------

    @asynccontextmanager
    async def session(self) -> AsyncIterator[AsyncSession]:
        """A PostgreSQL session from the pool, returned to it on exit (rolled back if not committed)."""
        async with self.sessions() as session:
            yield session

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[asyncpg.Connection]:
        """An asyncpg connection of the bare pool (`BarePool`), outside any transaction: each statement
        commits on its own, unless the caller opens a transaction (`conn.transaction()`) around several.

        For the hot paths, where one statement does: asyncpg directly costs a fraction of a session's CPU
        (no unit of work, no BEGIN and ROLLBACK round trips, no result machinery). JSONB columns come back
        as Python objects and go in as JSON text (SQLAlchemy's codecs on the connection). A connection
        interrupted mid-statement, or whose server ended it (its backend terminated, the server shutting
        down), is discarded rather than returned to the pool: the next caller would get a connection still
        waiting for the answer to a statement that never comes.
        """
        conn = await self.bare.acquire()
        sound = False
        try:
            yield conn
            sound = True
        except Exception as exc:
            # A connection the server ended while it sat in the pool can be handed out before asyncpg has
            # seen its socket close, its protocol stuck on the server's farewell: its first statement
            # fails inside asyncpg. That, or any failure on a closed connection, is the server gone (what
            # SQLAlchemy's asyncpg dialect calls a disconnect), not a bug. (Asked before the connection is
            # discarded, which closes it.)
            gone = isinstance(exc, POSTGRES_GONE)
            lost = not gone and (isinstance(exc, asyncpg.InternalClientError) or conn.is_closed())
            # The server refused a statement: the connection itself is sound.
            sound = isinstance(exc, asyncpg.PostgresError) and not (gone or lost)
            if lost:
                raise ConnectionLost(f"PostgreSQL ended the connection: {exc}") from exc
            raise
        finally:
            self.bare.release(conn, sound=sound)

    def collection(self, name: str) -> AsyncCollection[MongoDoc]:
        return self.mongo_db[name]

    def redis_key(self, *parts: str) -> str:
        """A Redis key or channel under this stack's prefix."""
        return ":".join((self.settings.redis.prefix, *parts))

    def pool_stats(self) -> dict[str, dict[str, int]]:
        """Pool figures for metrics: PostgreSQL size/checked out/overflow, Redis and MongoDB connections."""
        pool, bare = self.engine.pool, self.bare
        postgres = {"size": bare.size, "checked_out": bare.in_use, "overflow": 0, "checked_in": bare.idle}
        if isinstance(pool, QueuePool):
            postgres["size"] += pool.size()
            postgres["checked_out"] += pool.checkedout()
            postgres["overflow"] = max(pool.overflow(), 0)
            postgres["checked_in"] += pool.checkedin()
        redis = {
            "max": self.redis_pool.max_connections,
            "created": len(self.redis_pool._available_connections) + len(self.redis_pool._in_use_connections),
            "in_use": len(self.redis_pool._in_use_connections),
        }
        mongodb = {
            "max": self.settings.mongodb.max_pool_size,
            "open": self.mongo_pool.open,
            "in_use": self.mongo_pool.in_use,
        }
        bare_figures = {"size": bare.size, "checked_out": bare.in_use, "checked_in": bare.idle}
        return {"postgres": postgres, "postgres_bare": bare_figures, "redis": redis, "mongodb": mongodb}


class BarePool:
    """The asyncpg connections of `DatabaseManager.connection()`: statements that commit on their own.

    Why not SQLAlchemy's pool, which sessions use: taking a connection from it and giving it back went
    through greenlet switches, pool events and a reset for every statement, which on the gateway's
    GET /v1/jobs/{id} was a third of the request's CPU (GET served 1.5 times as many requests with the
    connections kept here; same stack, interleaved runs). Why not asyncpg's own pool: its release resets
    each connection (a round trip: RESET ALL, UNLISTEN, CLOSE ALL, ...), which a connection that only runs
    self-committing statements does not need.

    What it keeps of a pool: at most `size` connections, opened when first needed (through SQLAlchemy's
    dialect, so they have its JSON codecs), the most recently used handed out first; a wait of at most
    `timeout_s` for one, then SQLAlchemy's pool TimeoutError, as sessions get; a connection idle for more
    than `IDLE_PING_S` pinged before use, one older than `recycle_s` closed. A connection comes back only
    when sound (the caller says so), open and outside a transaction; any other is terminated.
    """

    def __init__(
        self, factory: AsyncEngine, *, size: int, timeout_s: float, recycle_s: int, ping_idle: bool
    ) -> None:
        self.size = size
        self._factory = factory
        self._timeout_s = timeout_s
        self._recycle_s = recycle_s
        self._ping_idle = ping_idle
        self._slots = asyncio.Semaphore(size)
        #: Idle connections with the time each was last given back, most recently used last.
        self._idle: list[tuple[asyncpg.Connection, float]] = []
        self._opened_at: dict[asyncpg.Connection, float] = {}
        self._closed = False

    @property
    def idle(self) -> int:
        return len(self._idle)

    @property
    def in_use(self) -> int:
        return len(self._opened_at) - len(self._idle)

    async def acquire(self) -> asyncpg.Connection:
        if self._closed or not self.size:
            raise RuntimeError("this process has no bare pool (closed, or none in its share): use a session")
        if self._slots.locked():  # else the semaphore is taken at once, without a timer
            try:
                async with asyncio.timeout(self._timeout_s):
                    await self._slots.acquire()
            except TimeoutError as exc:
                raise PoolTimeout(
                    f"no bare PostgreSQL connection free within {self._timeout_s:.0f} s (size {self.size})"
                ) from exc
        else:
            await self._slots.acquire()
        try:
            return await self._reuse() or await self._open()
        except BaseException:
            self._slots.release()
            raise

    def release(self, conn: asyncpg.Connection, *, sound: bool) -> None:
        if sound and not self._closed and not conn.is_closed() and not conn.is_in_transaction():
            self._idle.append((conn, time.monotonic()))
        else:
            self._drop(conn)
        self._slots.release()

    async def warm(self, count: int) -> None:
        """Open `count` connections ahead of the first statement."""
        held = [await self.acquire() for _ in range(count)]
        for conn in held:
            self.release(conn, sound=True)

    async def close(self) -> None:
        """Close the idle connections (side by side, each given 2 s for the server's goodbye, then cut);
        those in use are closed when given back. Safe to call twice."""
        self._closed = True
        idle, self._idle = self._idle, []

        async def close_one(conn: asyncpg.Connection) -> None:
            self._opened_at.pop(conn, None)
            with contextlib.suppress(Exception):  # asyncpg cuts the connection itself when this fails
                await conn.close(timeout=2)

        await asyncio.gather(*(close_one(conn) for conn, _ in idle))
        await self._factory.dispose()

    async def _reuse(self) -> asyncpg.Connection | None:
        while self._idle:
            conn, used_at = self._idle.pop()
            now = time.monotonic()
            if conn.is_closed() or 0 <= self._recycle_s < now - self._opened_at[conn]:
                self._drop(conn)
                continue
            if self._ping_idle and now - used_at > IDLE_PING_S:
                try:
                    await conn.fetchval("SELECT 1", timeout=self._timeout_s)
                except Exception as exc:  # any failure: a connection we cannot trust
                    log.info("an idle bare connection did not answer a ping (%s); replacing it", exc)
                    self._drop(conn)
                    continue
            return conn
        return None

    async def _open(self) -> asyncpg.Connection:
        fairy = await self._factory.raw_connection()  # NullPool: a new connection with the dialect's setup
        conn: asyncpg.Connection = fairy.driver_connection
        await greenlet_spawn(fairy.detach)  # from here on this pool's own
        self._opened_at[conn] = time.monotonic()
        return conn

    def _drop(self, conn: asyncpg.Connection) -> None:
        self._opened_at.pop(conn, None)
        conn.terminate()


class ConnectionLost(ConnectionError):
    """A bare connection (`DatabaseManager.connection`) that the server ended under its statement."""


#: What asyncpg raises when the server ended a connection (or cannot take one): an outage, not a refusal.
POSTGRES_GONE: tuple[type[asyncpg.PostgresError], ...] = (
    asyncpg.PostgresConnectionError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
)


#: How long `DatabaseManager.close_all` gives each pool to close.
CLOSE_TIMEOUT_S = 5.0

#: A pooled connection last checked out longer ago than this is pinged before use (a firewall may have
#: dropped it silently); one used more recently is only checked for a close the server announced.
IDLE_PING_S = 5.0


def _checking_alive(dialect: Dialect) -> Callable[[Any, ConnectionPoolEntry, PoolProxiedConnection], None]:
    """A checkout hook: a connection the server closed, or one idle for long that does not answer a ping,
    is replaced (on DisconnectionError SQLAlchemy retries the checkout with a fresh connection)."""

    def check(dbapi_connection: Any, record: ConnectionPoolEntry, _proxy: PoolProxiedConnection) -> None:
        driver = record.driver_connection
        if driver is None or driver.is_closed():
            raise DisconnectionError("the server closed this connection")
        now = time.monotonic()
        idle_s = now - record.info.get("checked_out_at", now)
        record.info["checked_out_at"] = now
        if idle_s > IDLE_PING_S:
            try:
                dialect.do_ping(dbapi_connection)
            except Exception as exc:
                raise DisconnectionError(f"no answer to a ping after {idle_s:.0f} s unused: {exc}") from exc

    return check


#: What PostgreSQL answers for a setting that is wrong, not a server still starting: no waiting helps.
_REFUSALS: tuple[type[Exception], ...] = (
    asyncpg.InvalidCatalogNameError,  # no such database
    asyncpg.InvalidAuthorizationSpecificationError,  # no such role, or pg_hba refuses it
    asyncpg.InvalidPasswordError,
)


async def _retry(name: str, ping: Callable[[], Awaitable[None]], *, wait_s: float) -> None:
    """Call `ping` until it succeeds, backing off from 0.2 s to 5 s, for at most `wait_s` seconds; at once
    when the server refused the settings (a database or role that does not exist: it was retried for 30 s
    and reported as "did not answer")."""
    deadline = time.monotonic() + wait_s
    delay = 0.2
    while True:
        try:
            await ping()
        except Exception as exc:
            refusal = next((e for e in causes(exc) if isinstance(e, _REFUSALS)), None)
            if refusal is not None:
                raise ConnectionError(f"{name} refused this process's settings: {refusal}") from exc
            if time.monotonic() + delay > deadline:
                raise ConnectionError(f"{name} did not answer within {wait_s:.0f} s: {exc}") from exc
            log.warning("%s not ready (%s); retrying in %.1f s", name, exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
        else:
            return


def causes(exc: BaseException) -> list[BaseException]:
    """`exc` and what it wraps, outermost first: SQLAlchemy's `orig`, else what it was raised from or
    during (SQLAlchemy wraps asyncpg's errors, which carry the SQLSTATE and the exact class)."""
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in chain:
        chain.append(current)
        current = getattr(current, "orig", None) or current.__cause__ or current.__context__
    return chain


async def postgres_problem(db: DatabaseManager) -> str | None:
    """Why an operator's command cannot use PostgreSQL, in one line saying what to do; None when it can.

    Checked before a command (`medialens-keys`, `medialens-deadletters requeue`) uses the database, as the
    services check at their start (`migrate.check_schema`), with no wait: the first query of an unreachable
    or never-migrated database otherwise ended the command in a traceback.
    """
    try:
        version = await db.schema_version()
    except (OSError, SQLAlchemyError) as exc:
        return _unreachable(db, exc)
    try:
        migrate.check_schema(version)
    except migrate.SchemaBehind as exc:
        return str(exc)
    return None


def _unreachable(db: DatabaseManager, exc: Exception) -> str:
    url = db.engine.url  # its host, port and database: never its password
    place = f"{url.host}:{url.port or 5432}" if url.host else f"the socket in {url.query.get('host', '?')}"
    where = f"PostgreSQL at {place}/{url.database}"
    innermost = causes(exc)[-1]  # asyncpg's error or the socket's, without SQLAlchemy's wrapping
    cause = str(innermost) or type(innermost).__name__  # a connect timeout's message is empty
    if isinstance(innermost, asyncpg.InvalidCatalogNameError):
        return f"{where}: {cause}: run medialens-migrate (it makes it) or correct MEDIALENS_POSTGRES_URL"
    if isinstance(innermost, asyncpg.PostgresError):
        return f"{where} refused: {cause}: check MEDIALENS_POSTGRES_URL"
    return f"{where} cannot be reached ({cause}): is it running, and is MEDIALENS_POSTGRES_URL right?"
