"""The database manager against the real PostgreSQL, MongoDB and Redis servers."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import asyncpg
import pytest
from pydantic import SecretStr
from sqlalchemy import make_url, text
from sqlalchemy.exc import TimeoutError as PoolTimeout

from medialens_shared import db as db_module
from medialens_shared.db import POSTGRES_GONE, Check, ConnectionLost, DatabaseManager, timed_check
from medialens_shared.settings import Settings
from tests.fixtures.proxy import TcpProxy

pytestmark = pytest.mark.integration


def with_redis_url(settings: Settings, url: str) -> Settings:
    return settings.model_copy(update={"redis": settings.redis.model_copy(update={"url": SecretStr(url)})})


async def test_health_check_all_reports_every_server_ok(db: DatabaseManager) -> None:
    """Each of postgres, mongodb and redis answers ok with a positive latency and no error."""
    checks = await db.health_check_all()
    assert set(checks) == {"postgres", "mongodb", "redis"}
    for check in checks.values():
        assert check.ok is True
        assert check.latency_ms > 0
        assert check.error is None


async def test_an_unreachable_redis_is_reported_not_raised(settings: Settings, database: str) -> None:
    """With Redis on a closed port the health check says redis is not ok, with an error, and the rest ok."""
    manager = DatabaseManager(with_redis_url(settings, "redis://127.0.0.1:1/0"), name="unreachable")
    try:
        checks = await manager.health_check_all()
    finally:
        await manager.close_all()
    assert checks["redis"].ok is False
    assert checks["redis"].error
    assert "ConnectionError" in checks["redis"].error or "refused" in checks["redis"].error.lower()
    assert checks["postgres"].ok is True
    assert checks["mongodb"].ok is True


@pytest.mark.parametrize(
    ("url", "said"),
    [
        ("postgresql+asyncpg://postgres@127.0.0.1:5432/medialens_no_such_db", "does not exist"),
        ("postgresql+asyncpg://no_such_role@127.0.0.1:5432/postgres", "no_such_role"),
    ],
)
async def test_a_database_or_role_that_does_not_exist_stops_the_start_at_once(
    settings: Settings, url: str, said: str
) -> None:
    """PostgreSQL's refusal of the settings is not a server still starting: it was retried for the whole
    wait (30 s) and then reported as "did not answer"."""
    own = settings.model_copy(
        update={"postgres": settings.postgres.model_copy(update={"url": SecretStr(url)})}
    )
    manager = DatabaseManager(own, name="refused")
    start = time.monotonic()
    try:
        with pytest.raises(ConnectionError, match=f"postgres refused this process's settings: .*{said}"):
            await manager.initialize_all(wait_s=30)
    finally:
        await manager.close_all()
    assert time.monotonic() - start < 10


async def test_initialize_all_gives_up_naming_the_server(settings: Settings, database: str) -> None:
    """initialize_all with wait_s=1 against a closed Redis port raises ConnectionError naming redis."""
    manager = DatabaseManager(with_redis_url(settings, "redis://127.0.0.1:1/0"), name="noredis")
    start = time.monotonic()
    try:
        with pytest.raises(ConnectionError, match=r"redis did not answer within 1 s"):
            await manager.initialize_all(wait_s=1)
    finally:
        await manager.close_all()
    assert time.monotonic() - start < 5


async def test_timed_check_reports_a_timeout() -> None:
    """A probe slower than its budget is reported as timed out, not raised."""
    check = await timed_check(lambda: asyncio.sleep(1), timeout=0.05)
    assert check == Check(ok=False, latency_ms=check.latency_ms, error="timed out")
    assert 40 <= check.latency_ms < 1000


async def _server_side_counts(db: DatabaseManager, app_name: str) -> tuple[int, int]:
    async with db.session() as session:
        postgres = await session.scalar(
            text("SELECT count(*) FROM pg_stat_activity WHERE application_name = :name"), {"name": app_name}
        )
    clients = await db.redis.client_list()
    redis = sum(1 for client in clients if client.get("name") == app_name)
    return int(postgres or 0), redis


async def test_close_all_leaves_no_open_connection_on_the_servers(
    settings: Settings, db: DatabaseManager, run_id: str
) -> None:
    """After close_all the servers count no PostgreSQL or Redis connection under the manager's name."""
    name = f"closecheck-{run_id}"
    app_name = f"medialens-{name}"
    manager = DatabaseManager(settings, name=name)
    await manager.initialize_all(wait_s=5)

    async def use() -> None:
        async with manager.session() as session:
            await session.execute(text("SELECT pg_sleep(0.05)"))
        await manager.redis.incr(manager.redis_key("closecheck", run_id))

    await asyncio.gather(*(use() for _ in range(6)))
    await manager.collection("closecheck").insert_one({"run": run_id})
    before = await _server_side_counts(db, app_name)
    assert before[0] > 0
    assert before[1] > 0

    await manager.close_all()
    deadline = time.monotonic() + 2.0
    after = await _server_side_counts(db, app_name)
    while after != (0, 0) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
        after = await _server_side_counts(db, app_name)
    assert after == (0, 0)
    await manager.close_all()  # a second close is harmless


async def test_pool_stats_follow_a_held_session(settings: Settings, database: str) -> None:
    """checked_out rises while a session holds a connection and falls back once it is returned."""
    manager = DatabaseManager(settings, name="poolstats")
    await manager.initialize_all(wait_s=5)
    try:
        idle = manager.pool_stats()
        assert idle["postgres"]["size"] == settings.postgres.pool_size
        assert idle["postgres"]["checked_out"] == 0
        assert idle["postgres"]["checked_in"] >= 1  # warmed up
        assert idle["redis"]["max"] == settings.redis.max_connections
        assert idle["redis"]["created"] >= 1
        assert idle["redis"]["in_use"] == 0
        async with manager.session() as session:
            await session.execute(text("SELECT 1"))
            held = manager.pool_stats()
            assert held["postgres"]["checked_out"] == 1
        assert manager.pool_stats()["postgres"]["checked_out"] == 0
    finally:
        await manager.close_all()


async def test_pool_stats_count_mongodb_connections(settings: Settings, database: str) -> None:
    """The MongoDB figures count the connections the driver opened, none in use once calls are done."""
    manager = DatabaseManager(settings, name="mongostats")
    await manager.initialize_all(wait_s=5)
    try:
        await asyncio.gather(*(manager.collection("poolstats").count_documents({}) for _ in range(4)))
        stats = manager.pool_stats()["mongodb"]
        assert stats["max"] == settings.mongodb.max_pool_size
        assert 1 <= stats["open"] <= settings.mongodb.max_pool_size
        assert stats["in_use"] == 0
    finally:
        await manager.close_all()
    assert manager.pool_stats()["mongodb"]["open"] == 0


@contextlib.asynccontextmanager
async def own_manager(settings: Settings, name: str) -> AsyncIterator[DatabaseManager]:
    """A DatabaseManager of its own, its PostgreSQL connections named `medialens-<name>` (to be killed)."""
    manager = DatabaseManager(settings, name=name)
    await manager.initialize_all(wait_s=5)
    try:
        yield manager
    finally:
        await manager.close_all()


async def kill_backends(db: DatabaseManager, name: str) -> int:
    """Terminate the backends of `own_manager(..., name)`'s connections: how many."""
    async with db.connection() as admin:
        kill = "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = $1"
        killed: int = await admin.fetchval(kill, f"medialens-{name}")
    return killed


async def test_a_connection_the_server_terminated_is_replaced_at_checkout(
    settings: Settings, db: DatabaseManager, run_id: str
) -> None:
    """Pooled connections whose backends were killed are replaced when next checked out: no error reaches
    the caller, through a session or a bare connection."""
    name = f"killcheck-{run_id}"
    async with own_manager(settings, name) as manager:
        assert await kill_backends(db, name)
        await asyncio.sleep(0.2)  # the servers' goodbyes reach the pooled connections
        for _ in range(manager.pool_size + 1):
            async with manager.connection() as conn:
                assert await conn.fetchval("SELECT 1") == 1
            async with manager.session() as session:
                assert await session.scalar(text("SELECT 1")) == 1


async def test_a_bare_connection_killed_mid_statement_is_not_given_out_again(
    settings: Settings, db: DatabaseManager, run_id: str
) -> None:
    """A backend killed while its bare connection runs a statement: the caller gets the server's error or
    ConnectionLost (both outages, not bugs), and the connection is dropped, not handed on broken."""

    async def kill_soon(pid: int) -> None:
        await asyncio.sleep(0.3)
        async with db.connection() as admin:
            assert await admin.fetchval("SELECT pg_terminate_backend($1)", pid)

    async with own_manager(settings, f"killmid-{run_id}") as manager:
        with pytest.raises((*POSTGRES_GONE, ConnectionLost)):
            async with manager.connection() as conn:
                await asyncio.gather(conn.execute("SELECT pg_sleep(5)"), kill_soon(conn.get_server_pid()))
        for _ in range(manager.pool_size + 1):
            async with manager.connection() as conn:
                assert await conn.fetchval("SELECT 1") == 1


async def test_bare_connections_the_server_just_ended_fail_as_an_outage(
    settings: Settings, db: DatabaseManager, run_id: str
) -> None:
    """Backends killed while their connections sit in the pool, used at once (asyncpg may not have seen
    their sockets close yet): each use works or fails as an outage (a 503 at the gateway), never with
    asyncpg's own client error (a 500); then every connection works again."""
    name = f"killidle-{run_id}"
    async with own_manager(settings, name) as manager:
        assert await kill_backends(db, name)
        for _ in range(manager.pool_size + 1):
            with contextlib.suppress(*POSTGRES_GONE, ConnectionLost):
                async with manager.connection() as conn:
                    await conn.fetchval("SELECT 1")
        for _ in range(manager.pool_size + 1):
            async with manager.connection() as conn:
                assert await conn.fetchval("SELECT 1") == 1


async def test_a_bare_connection_commits_each_statement_and_decodes_jsonb(
    db: DatabaseManager, run_id: str
) -> None:
    """A statement on `connection()` is committed on its own, and JSONB comes back as Python objects."""
    table = f"bare_{run_id}".replace("-", "_")
    async with db.connection() as conn:
        await conn.execute(f"CREATE TABLE {table} (doc jsonb)")
        await conn.execute(f"INSERT INTO {table} VALUES ($1)", '{"a": [1, 2]}')
    try:
        async with db.session() as session:
            assert (await session.execute(text(f"SELECT doc FROM {table}"))).scalar_one() == {"a": [1, 2]}
        async with db.connection() as conn:
            assert await conn.fetchval(f"SELECT doc FROM {table}") == {"a": [1, 2]}
    finally:
        async with db.connection() as conn:
            await conn.execute(f"DROP TABLE {table}")


async def test_redis_key_and_collection(db: DatabaseManager, settings: Settings) -> None:
    """redis_key prefixes the parts; collection() is a collection of the configured database."""
    assert db.redis_key("job", "j1", "live") == f"{settings.redis.prefix}:job:j1:live"
    collection = db.collection("results")
    assert collection.name == "results"
    assert collection.database.name == settings.mongodb.database


# --- the bare pool --------------------------------------------------------------------------------------


async def test_the_bare_pool_hands_the_same_connection_back_and_counts_it(
    settings: Settings, database: str, run_id: str
) -> None:
    """A connection given back sound is the next one handed out (no new backend); the pool's figures
    follow it out and back; the process's total keeps its budget, the bare share included."""
    async with own_manager(settings, f"barereuse-{run_id}") as manager:
        assert manager.bare.size == settings.postgres.bare_size_for(manager.name) >= 1
        async with manager.connection() as conn:
            first = conn.get_server_pid()
            held = manager.pool_stats()
            assert held["postgres_bare"]["checked_out"] == 1
        async with manager.connection() as conn:
            assert conn.get_server_pid() == first
        idle = manager.pool_stats()
        assert idle["postgres_bare"]["checked_out"] == 0
        assert idle["postgres_bare"]["checked_in"] >= 1
        assert idle["postgres"]["size"] == settings.postgres.pool_size


async def test_a_refused_statement_keeps_the_connection_and_an_open_transaction_drops_it(
    settings: Settings, db: DatabaseManager, run_id: str
) -> None:
    """The server refusing a statement leaves a sound connection, handed out again; one given back with a
    transaction left open is terminated (its backend gone), never handed to the next caller."""
    async with own_manager(settings, f"baretx-{run_id}") as manager:
        refused = 0

        async def divide_by_zero() -> None:
            nonlocal refused
            async with manager.connection() as conn:
                refused = conn.get_server_pid()
                await conn.fetchval("SELECT 1 / 0")

        with pytest.raises(asyncpg.DivisionByZeroError):
            await divide_by_zero()
        async with manager.connection() as conn:
            assert conn.get_server_pid() == refused
            await conn.execute("BEGIN")  # and never ends it
        async with manager.connection() as conn:
            assert conn.get_server_pid() != refused
            assert not conn.is_in_transaction()
        async with db.connection() as admin:
            alive = await admin.fetchval("SELECT count(*) FROM pg_stat_activity WHERE pid = $1", refused)
        deadline = time.monotonic() + 2
        while alive and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            async with db.connection() as admin:
                alive = await admin.fetchval("SELECT count(*) FROM pg_stat_activity WHERE pid = $1", refused)
        assert alive == 0


async def test_a_full_bare_pool_makes_the_next_caller_wait_then_time_out(
    settings: Settings, database: str, run_id: str
) -> None:
    """With every bare connection in use the next caller waits for one given back; past the pool
    timeout it gets SQLAlchemy's pool TimeoutError (a passing fault, 503 at the gateway)."""
    quick = settings.model_copy(
        update={"postgres": settings.postgres.model_copy(update={"pool_timeout": 0.3})}
    )
    async with own_manager(quick, f"barefull-{run_id}") as manager, contextlib.AsyncExitStack() as held:
        for _ in range(manager.bare.size):
            await held.enter_async_context(manager.connection())
        started = time.monotonic()
        with pytest.raises(PoolTimeout):
            async with manager.connection():
                pass
        assert 0.25 < time.monotonic() - started < 3

        async def give_one_back_soon() -> None:
            await asyncio.sleep(0.1)
            await held.aclose()

        async def take_one() -> int:
            async with manager.connection() as conn:
                return int(await conn.fetchval("SELECT 1"))

        assert (await asyncio.gather(take_one(), give_one_back_soon()))[0] == 1


async def test_a_closed_bare_pool_refuses_bare_statements(settings: Settings, database: str) -> None:
    """Once its process closed its pools, asking for a bare connection is a bug, said at once (no wait)."""
    manager = DatabaseManager(settings, name="relay")
    async with manager.connection() as conn:
        assert await conn.fetchval("SELECT 1") == 1
    await manager.close_all()
    with pytest.raises(RuntimeError, match="no bare pool"):
        async with manager.connection():
            pass


async def test_a_bare_connection_past_its_recycle_age_is_replaced(
    settings: Settings, database: str, run_id: str
) -> None:
    """`pool_recycle` holds for bare connections too: one older than it is closed, not handed out again."""
    aged = settings.model_copy(update={"postgres": settings.postgres.model_copy(update={"pool_recycle": 0})})
    async with own_manager(aged, f"barerecycle-{run_id}") as manager:
        async with manager.connection() as conn:
            first = conn.get_server_pid()
        await asyncio.sleep(0.01)
        async with manager.connection() as conn:
            assert conn.get_server_pid() != first
        assert manager.pool_stats()["postgres_bare"]["checked_in"] == 1  # the old one is gone, not kept


@contextlib.asynccontextmanager
async def postgres_through_proxy(settings: Settings) -> AsyncIterator[tuple[Settings, TcpProxy]]:
    """`settings` whose PostgreSQL is reached through a TcpProxy (pool timeout 1 s), and the proxy."""
    direct = make_url(settings.postgres.url.get_secret_value())
    proxy = TcpProxy(direct.host or "127.0.0.1", direct.port or 5432)
    await proxy.start()
    url = direct.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
    postgres = settings.postgres.model_copy(update={"url": SecretStr(url), "pool_timeout": 1.0})
    try:
        yield settings.model_copy(update={"postgres": postgres}), proxy
    finally:
        await proxy.cut()


async def test_an_idle_bare_connection_that_no_longer_answers_is_replaced_after_its_ping(
    settings: Settings, database: str, run_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bare connection idle for longer than `IDLE_PING_S` whose flow a firewall forgot (open on both
    ends, no byte through): the ping before reuse times out, the caller gets a fresh connection, and the
    silent one is not kept."""
    async with (
        postgres_through_proxy(settings) as (proxied, proxy),
        own_manager(proxied, f"ping-{run_id}") as manager,
    ):
        async with manager.connection() as conn:
            silenced = conn.get_server_pid()
        proxy.forget_open()
        monkeypatch.setattr(db_module, "IDLE_PING_S", 0.0)
        started = time.monotonic()
        async with manager.connection() as conn:
            assert conn.get_server_pid() != silenced
            assert await conn.fetchval("SELECT 1") == 1
        assert time.monotonic() - started >= 0.9  # the ping waited out its timeout (1 s) first
        assert manager.pool_stats()["postgres_bare"]["checked_in"] == 1  # only the new one is kept
        await proxy.restore()  # the other connections, silent meanwhile but unused, close as usual


async def test_closing_the_pools_of_a_server_that_stopped_answering_is_bounded(
    settings: Settings,
    database: str,
    run_id: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A stop during a network partition: asyncpg waits for the server's goodbye to a graceful close, so
    without a bound `close_all` would never return; each pool gets `CLOSE_TIMEOUT_S`, then is left."""
    monkeypatch.setattr(db_module, "CLOSE_TIMEOUT_S", 1.0)
    async with postgres_through_proxy(settings) as (proxied, proxy):
        manager = DatabaseManager(proxied, name=f"partition-{run_id}")
        await manager.initialize_all(wait_s=5)  # sessions' and bare connections open and idle
        proxy.forget_open()
        started = time.monotonic()
        async with asyncio.timeout(30):  # a failure, not a hang, if it is not bounded
            await manager.close_all()
        assert time.monotonic() - started < 4.0  # 1 s for each PostgreSQL pool, MongoDB and Redis at once
        assert "did not close within 1 s" in caplog.text
