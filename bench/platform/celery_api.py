"""The Celery baseline's front: a FastAPI endpoint that writes a job row, then sends the task.

    python -m bench.platform.celery_api PORT

`POST /jobs {"path": ..., "plain": false}` inserts a row into the baseline's own PostgreSQL database (a
pooled asyncpg connection) and calls `probe.apply_async` with the job id as the task id, as a FastAPI +
Celery monolith does (`probe_plain` with `"plain": true`); it answers the envelope with 202.
`BENCH_CELERY_POSTGRES` names the database.
"""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from bench.platform.celery_app import probe, probe_plain
from medialens_shared.envelope import success

SCHEMA = """
create table if not exists jobs (
    id text primary key,
    type text not null,
    status text not null,
    path text not null,
    created_at timestamptz not null default now()
)
"""


def create_app(dsn: str) -> FastAPI:
    state: dict[str, Any] = {}

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        state["pool"] = await asyncpg.create_pool(dsn, min_size=4, max_size=20)
        async with state["pool"].acquire() as conn:
            await conn.execute(SCHEMA)
        yield
        await state["pool"].close()

    app = FastAPI(lifespan=lifespan)

    @app.post("/jobs", status_code=202)
    async def submit(request: Request) -> JSONResponse:
        body = await request.json()
        job_id = str(uuid.uuid4())
        async with state["pool"].acquire() as conn:
            row = await conn.fetchrow(
                "insert into jobs (id, type, status, path) values ($1, 'audio.probe', 'queued', $2)"
                " returning created_at",
                job_id,
                body["path"],
            )
        task = probe_plain if body.get("plain") else probe
        task.apply_async(args=[body["path"]], task_id=job_id)
        data = {"id": job_id, "status": "queued", "created_at": row["created_at"].isoformat()}
        return JSONResponse(success(data, request_id=uuid.uuid4().hex), status_code=202)

    return app


def main() -> None:
    app = create_app(os.environ["BENCH_CELERY_POSTGRES"])
    config = uvicorn.Config(app, host="127.0.0.1", port=int(sys.argv[1]), log_config=None, proxy_headers=True)
    uvicorn.Server(config).run()


if __name__ == "__main__":
    main()
