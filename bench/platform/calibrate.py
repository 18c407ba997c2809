"""Calibration: the issue's reference figures, measured again on this machine in the same run.

Issue 7 quotes figures measured "on this kind of machine before any of MediaLens existed": Celery running
the probe workload ≈95 jobs/s (2,000 jobs, p99 ≈14 s), a bare FastAPI process ≈3k req/s, aio-pika
confirmed publishes ≈3.5k/s, single-row PostgreSQL commits ≈2.4k/s, the nx-27017 dev server ≈800 writes/s.
Each micro figure is measured here as the quote most plainly reads; `factor` is measured / quoted. The
figures marked `in_median` are the ones compared with the quote (one per quote); the others (pipelined,
concurrent, uvloop) are beside them for scale. After the pipeline, Celery's own factor (its jobs/s / 95)
goes beside the median of the micro factors: if it is about the same, our Celery baseline runs as fast as
this machine's speed explains; if it is higher, the baseline is leaner than what the issue measured.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aio_pika
import asyncpg
from pymongo import AsyncMongoClient

from bench.platform import scenarios
from bench.platform.httpload import Figures, timetable
from bench.platform.stack import Stack, ceiling_server

QUOTED = {"publishes": 3500.0, "commits": 2400.0, "writes": 800.0, "fastapi": 3000.0, "celery": 95.0}
QUOTED_CELERY_JOBS, QUOTED_CELERY_P99_S = 2000, 14.0
PAYLOAD = b"x" * 300
SCRATCH_TABLE = "calibration_commits"
SCRATCH_DDL = f"create table {SCRATCH_TABLE} (id bigint generated always as identity primary key, body text)"
SCRATCH_INSERT = f"insert into {SCRATCH_TABLE} (body) values ($1)"
SCRATCH_BODY = PAYLOAD.decode()
SCRATCH_COLLECTION = "calibration_writes"


def _shares(total: int, parts: int) -> list[int]:
    """`total` split into `parts` counts that differ by at most one."""
    return [total // parts + (1 if n < total % parts else 0) for n in range(parts)]


async def _per_s(count: int, work: Callable[[], Awaitable[Any]]) -> float:
    """`count` operations over the seconds `work` took, rounded to 0.1."""
    start = time.perf_counter()
    await work()
    return round(count / (time.perf_counter() - start), 1)


async def rabbit_publishes(
    amqp_url: str, *, messages: int = 5000, in_flight: int = 100
) -> tuple[float, float]:
    """aio-pika confirmed publishes per second: (sequential, pipelined).

    One `connect_robust` connection to the bench's own vhost, one channel with publisher confirms, a
    server-named exclusive queue (gone with the connection). `messages` persistent messages of 300 bytes go
    through the default exchange to that queue, timed from the first publish to the last broker confirm:
    first each publish awaited (its confirm received) before the next, then `in_flight` publishers at once
    (`messages` in all; the queue is purged between). The quote is compared with the sequential figure:
    on a confirming channel aio-pika's `await exchange.publish(...)` returns once the broker confirms, so
    the plainest loop that measures "confirmed publishes" is sequential (MediaLens's relay pipelines its
    batches, as the second figure does). A persistent message in a non-durable queue is not written to
    disk, so no fsync is in either figure (to a durable queue each sequential confirm waits for one).
    """
    connection = await aio_pika.connect_robust(amqp_url)
    try:
        channel = await connection.channel(publisher_confirms=True)
        queue = await channel.declare_queue(exclusive=True)

        async def publish(count: int) -> None:
            for _ in range(count):
                message = aio_pika.Message(PAYLOAD, delivery_mode=aio_pika.DeliveryMode.PERSISTENT)
                await channel.default_exchange.publish(message, routing_key=queue.name)

        sequential = await _per_s(messages, lambda: publish(messages))
        await queue.purge()
        pipelined = await _per_s(
            messages, lambda: asyncio.gather(*(publish(n) for n in _shares(messages, in_flight)))
        )
        await queue.purge()
    finally:
        await connection.close()
    return sequential, pipelined


async def postgres_commits(dsn: str, *, rows: int = 5000, connections: int = 8) -> dict[str, Any]:
    """Single-row PostgreSQL commits per second: (one connection, `connections` at once, server settings).

    asyncpg on the bench's own database, a scratch table (bigint identity key, a 300-character text
    column) dropped afterwards. `rows` INSERTs of one row, each its own autocommitted statement (no
    explicit transaction, so every one is a commit and a WAL flush), timed from the first to the last
    answer: first one after another on one connection, then the same `rows` spread over `connections`
    connections inserting at once (commits can share a WAL flush there). The quote is compared with the
    first. The server's `fsync` and `synchronous_commit` are returned too: either off would flatter it.
    """
    pool: list[Any] = []
    async with _scratch_table(dsn) as admin:
        try:

            async def inserts(conn: Any, count: int) -> None:
                for _ in range(count):
                    await conn.execute(SCRATCH_INSERT, SCRATCH_BODY)

            sequential = await _per_s(rows, lambda: inserts(admin, rows))
            pool = [await asyncpg.connect(dsn) for _ in range(connections)]
            concurrent = await _per_s(
                rows,
                lambda: asyncio.gather(
                    *(inserts(c, n) for c, n in zip(pool, _shares(rows, connections), strict=True))
                ),
            )
            settings = {
                name: await admin.fetchval(f"show {name}") for name in ("fsync", "synchronous_commit")
            }
        finally:
            for conn in pool:
                await conn.close()
    return {"sequential": sequential, "concurrent": concurrent, "server": settings}


async def commit_floor(
    dsn: str, *, rate: float, duration_s: float, synchronous_commit: str = "on", connections: int = 16
) -> Figures:
    """Single-row PostgreSQL commits on the fixed timetable of `fixed_rate` (each due at its moment, its
    latency counted from then): what the database alone gives one durable commit at the rate a submission
    is measured at, the floor under a `POST /v1/jobs` (one commit each, flushed before the 202).

    The scratch table of `postgres_commits`, the same 300-character row, on a pool of `connections`.
    With `synchronous_commit` "off" (these connections only) a commit does not wait for its WAL flush.
    """
    async with _scratch_table(dsn):
        # A startup setting of each connection, which the pool's RESET ALL at every release goes back to (a
        # SET in the pool's `init` lasted until the first release: that pass measured flushed commits but
        # its first).
        pool = await asyncpg.create_pool(
            dsn,
            min_size=connections,
            max_size=connections,
            server_settings={"synchronous_commit": synchronous_commit},
        )
        try:

            async def commit(_index: int) -> int:
                async with pool.acquire() as conn:
                    await conn.execute(SCRATCH_INSERT, SCRATCH_BODY)
                return 200

            return await timetable(commit, rate=rate, duration_s=duration_s)
        finally:
            await pool.close()


@contextlib.asynccontextmanager
async def _scratch_table(dsn: str) -> AsyncIterator[Any]:
    """The scratch table of the commit measurements, made on a connection of its own (yielded), dropped
    afterwards."""
    admin = await asyncpg.connect(dsn)
    try:
        await admin.execute(SCRATCH_DDL)
        yield admin
    finally:
        await admin.execute(f"drop table if exists {SCRATCH_TABLE}")
        await admin.close()


async def mongo_writes(mongo_url: str, database: str, *, documents: int = 2000) -> float:
    """nx-27017 writes per second (or whatever MongoDB-wire server `mongo_url` is: the stack's).

    PyMongo's `AsyncMongoClient` with its defaults (write concern w=1: each write acknowledged), a scratch
    collection in the run's database, dropped afterwards. `documents` `insert_one` calls of a small
    document (an int and a 40-character string), each awaited before the next, timed from the first to
    the last acknowledgement. The connection is opened by a `ping` before the clock starts. The dev server
    as `devmongo` starts it logs every command to its log file; that is part of its cost, as in `make dev`.
    """
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_url)
    try:
        await client.admin.command("ping")
        collection = client[database][SCRATCH_COLLECTION]

        async def writes() -> None:
            for n in range(documents):
                await collection.insert_one({"n": n, "body": "x" * 40})

        per_s = await _per_s(documents, writes)
        await collection.drop()
    finally:
        await client.close()
    return per_s


def figure(measured: float, quoted: float, *, in_median: bool) -> dict[str, Any]:
    return {
        "measured": measured,
        "quoted": quoted,
        "factor": round(measured / quoted, 2),
        "in_median": in_median,
    }


def calibration(
    stack: Stack, *, duration_s: float, connections: int, uvloop_rps: float | None = None
) -> dict[str, Any]:
    """The issue's micro figures on this machine, one line printed per figure. `uvloop_rps`: the ceiling
    scenario's figure of this run, added for scale when it ran."""
    publishes, pipelined = asyncio.run(rabbit_publishes(stack.amqp_url))
    commits = asyncio.run(postgres_commits(stack.dsn))
    writes = asyncio.run(mongo_writes(stack.mongo_url, stack.mongo_database))
    with ceiling_server(loop="asyncio") as url:
        fastapi = scenarios.ceiling(
            url, duration_s=duration_s, connections=connections, label="calibration FastAPI (asyncio loop)"
        )["bare FastAPI GET envelope"]
    measured = [
        ("aio-pika confirmed publishes/s, each awaited", publishes, "publishes", True),
        ("aio-pika confirmed publishes/s, 100 in flight", pipelined, "publishes", False),
        ("PostgreSQL single-row commits/s, one connection", commits["sequential"], "commits", True),
        ("PostgreSQL single-row commits/s, 8 connections", commits["concurrent"], "commits", False),
        ("nx-27017 writes/s (insert_one, each awaited)", writes, "writes", True),
        ("bare FastAPI req/s, asyncio loop (wrk)", fastapi["rps"], "fastapi", True),
    ]
    if uvloop_rps:
        measured.append(("bare FastAPI req/s, uvloop (the ceiling)", uvloop_rps, "fastapi", False))
    figures = {
        label: figure(value, QUOTED[quote], in_median=in_median)
        for label, value, quote, in_median in measured
    }
    for label, fig in figures.items():
        print(
            f"calibration {label:<48} measured={fig['measured']:9.1f} quoted={fig['quoted']:6.0f} "
            f"factor=x{fig['factor']}",
            flush=True,
        )
    median = statistics.median(f["factor"] for f in figures.values() if f["in_median"])
    print(f"calibration median factor of the micro figures: x{median:.2f}", flush=True)
    return {"figures": figures, "median_factor": round(median, 2), "postgres_server": commits["server"]}


def _celery_figure(celery: dict[str, Any], median_factor: float) -> dict[str, Any]:
    factor = round(celery["jobs_per_s"] / QUOTED["celery"], 2)
    return {
        "measured": celery["jobs_per_s"],
        "quoted": QUOTED["celery"],
        "factor": factor,
        "jobs": celery["jobs"],
        "quoted_jobs": QUOTED_CELERY_JOBS,
        "p99_s": celery["p99_s"],
        "quoted_p99_s": QUOTED_CELERY_P99_S,
        "factor_over_median": round(factor / median_factor, 2),
    }


def with_celery(calibration: dict[str, Any], celery: dict[str, Any], *, plain: dict[str, Any]) -> None:
    """The Celery baselines' pipeline figures of this run beside the quote (≈95 jobs/s, 2,000 jobs, p99
    ≈14 s) and against the median micro factor: the baseline (`probe_audio`) and the same task with
    FFmpeg's default open (`celery_app.probe_plain`); prints a line for each."""
    median = calibration["median_factor"]
    for key, figures in (("celery", celery), ("celery_plain_probe", plain)):
        fig = calibration[key] = _celery_figure(figures, median)
        print(
            f"calibration {key} jobs/s measured={fig['measured']} quoted={QUOTED['celery']:g} "
            f"factor=x{fig['factor']}, x{fig['factor_over_median']} the micro figures' median x{median}",
            flush=True,
        )
