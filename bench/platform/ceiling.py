"""The machine's HTTP ceiling: a bare FastAPI endpoint returning the envelope, served as the gateway is.

    python -m bench.platform.ceiling PORT [uvloop|asyncio]

One uvicorn process started as the gateway's `main()` starts it (`uvloop.run(server.serve())`: uvloop's
event loop, httptools parses HTTP) with its options (`log_config=None`, `proxy_headers`), no middleware, no
dependency, no database: what any FastAPI service on this machine can answer at most when served that way.
(The gateway moved to uvloop before this did; until then the ceiling ran on the standard library's loop,
slower on the machine of the time, so ratios measured against it flattered the gateway; on today's machine
the two loops serve within a few percent of each other, uvloop with a longer p99.9.) `asyncio` serves it
on the standard library's loop instead, for the calibration scenario (the issue's "bare FastAPI process",
bench.platform.calibrate).
"""

from __future__ import annotations

import asyncio
import sys
import uuid

import uvicorn
import uvloop
from fastapi import FastAPI
from fastapi.responses import JSONResponse

from medialens_shared.envelope import success

SAMPLE = {"id": "00000000-0000-0000-0000-000000000000", "type": "audio.probe", "status": "queued"}


def create_app() -> FastAPI:
    app = FastAPI()

    @app.get("/v1/ping")
    async def ping() -> JSONResponse:
        return JSONResponse(success(SAMPLE, request_id=uuid.uuid4().hex))

    return app


def main() -> None:
    config = uvicorn.Config(
        create_app(), host="127.0.0.1", port=int(sys.argv[1]), log_config=None, proxy_headers=True
    )
    loop = sys.argv[2] if len(sys.argv) > 2 else "uvloop"
    run = {"uvloop": uvloop.run, "asyncio": asyncio.run}[loop]
    run(uvicorn.Server(config).serve())


if __name__ == "__main__":
    main()
