"""`GET /v1/jobs/{job_id}` and `POST /v1/jobs`, the two busiest operations, taken past FastAPI's routing and
dependency solving to the same endpoint functions.

FastAPI's generic work on these requests (matching the path against every route, solving the dependencies,
reading and validating each argument by the endpoint's signature) was the largest single share of their
CPU, about a fifth under wrk, more than the PostgreSQL round trip; a bare ASGI app making the same query
served 2.5 times the gateway's GETs. This layer, the innermost of the gateway's middleware (inside the
edge, so request ids, metrics and load shedding apply as before), recognises the two operations by method
and path, builds the endpoints' arguments as their dependencies would (`caller_of` for `Caller`, the path's
job id, the JSON body validated as `JobRequest` exactly as FastAPI validates it, the Idempotency-Key
header) and calls the endpoint functions of `medialens_gateway.jobs.routes` themselves: one
implementation, two ways in. A domain error they raise is rendered by the handler FastAPI uses.

Whatever this layer is not sure to read as FastAPI would goes on to FastAPI unchanged, its body replayed:
another content type, a body that does not parse or validate, an Idempotency-Key over its length, an app
mounted under a root path. So every validation error is FastAPI's own, and the routes stay declared there
too, as the OpenAPI document and for everything passed on. One check is this layer's alone: a submission's
body over `JOB_BODY_MAX_BYTES` is refused (413 PAYLOAD_TOO_LARGE) as soon as it is announced or read past
the bound, whatever its content type. And a submission passed on is let in first (401 without a valid
key), since FastAPI reads and judges a body before it authenticates its caller.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from pydantic import ValidationError
from starlette.datastructures import Headers
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from medialens_gateway.auth import authenticate
from medialens_gateway.deps import CallerContext, GatewayCore, caller_of, registered
from medialens_gateway.envelope import api_error_response
from medialens_gateway.jobs import routes
from medialens_gateway.jobs.schemas import JobRequest
from medialens_shared.errors import ApiError, PayloadTooLarge

#: The path of one job, as Starlette compiles `/v1/jobs/{job_id}` (a `str` parameter: no slash).
_JOB_PATH = re.compile(r"^/v1/jobs/(?P<job_id>[^/]+)$")
#: The longest Idempotency-Key the route's header parameter takes.
_KEY_MAX = 255


@dataclass(frozen=True, slots=True)
class _Route:
    """What the edge's metrics read of `scope["route"]`: the route's path template."""

    path: str


_GET_JOB = _Route("/v1/jobs/{job_id}")
_SUBMIT = _Route("/v1/jobs")

Call = Callable[[CallerContext], Awaitable[Response]]


class HotPaths:
    """Pure ASGI: answers the two busiest operations itself, passes everything else on."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("root_path"):
            await self.app(scope, receive, send)
            return
        method, path = scope["method"], scope["path"]
        if method == "GET" and (match := _JOB_PATH.match(path)):
            job_id = match["job_id"]
            scope["route"] = _GET_JOB
            await self._answer(scope, receive, send, lambda caller: routes.get_job(job_id, caller))
            return
        if method == "POST" and path == "/v1/jobs":
            await self._submit(scope, receive, send)
            return
        await self.app(scope, receive, send)

    async def _submit(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope["route"] = _SUBMIT  # for the metrics of what this layer answers itself (FastAPI sets its own)
        headers = Headers(scope=scope)
        messages, body = await _read_body(receive, headers, limit=routes.JOB_BODY_MAX_BYTES)
        if body is None:
            limit = routes.JOB_BODY_MAX_BYTES
            too_large = PayloadTooLarge(f"A job submission's body is at most {limit} bytes.")
            await api_error_response(too_large)(scope, receive, send)
            return
        request = _job_request(headers, body)
        key = headers.get("idempotency-key")
        if request is None or (key is not None and len(key) > _KEY_MAX):
            # FastAPI reads a body before it solves the route's dependencies: a caller without a valid key
            # was told its body does not parse (422), not that it is not let in (401), as API.md has it.
            core = registered(scope["app"], GatewayCore)
            try:
                await authenticate(core.db, headers=headers, cache=core.keys)
            except ApiError as exc:
                await api_error_response(exc)(scope, receive, send)
                return
            await self.app(scope, _replay(messages, receive), send)
            return
        await self._answer(
            scope, receive, send, lambda caller: routes.submit_job(request, caller, idempotency_key=key)
        )

    async def _answer(self, scope: Scope, receive: Receive, send: Send, call: Call) -> None:
        core = registered(scope["app"], GatewayCore)
        try:
            response = await call(await caller_of(core, Headers(scope=scope)))
        except ApiError as exc:
            response = api_error_response(exc)
        await response(scope, receive, send)


def _job_request(headers: Headers, body: bytes) -> JobRequest | None:
    """The body as the route's `JobRequest`, when FastAPI would read it as JSON and it validates; else None.

    FastAPI parses a JSON body with `json.loads` and validates the object in Python mode: so does this. A
    body nested deeper than `json.loads` can recurse (`[[[...]]]` a thousand times) goes on too, where
    FastAPI answers it as a body that does not parse; raised here, it was a 500."""
    media_type = headers.get("content-type", "").partition(";")[0].strip().lower()
    if media_type != "application/json":
        return None
    try:
        return JobRequest.model_validate(json.loads(body))
    # Not UTF-8, not JSON (both ValueErrors), nested too deep to parse, or not a JobRequest.
    except (ValueError, RecursionError, ValidationError):
        return None


async def _read_body(receive: Receive, headers: Headers, *, limit: int) -> tuple[list[Message], bytes | None]:
    """The request's messages up to the end of its body (or a disconnect), and the body; None for the body
    once it is announced or found longer than `limit` (reading stops there)."""
    messages: list[Message] = []
    length = headers.get("content-length", "")
    if length.isdigit() and int(length) > limit:
        return messages, None
    size = 0
    while True:
        message = await receive()
        messages.append(message)
        size += len(message.get("body", b""))
        if size > limit:
            return messages, None
        if message["type"] != "http.request" or not message.get("more_body", False):
            break
    return messages, b"".join(m.get("body", b"") for m in messages if m["type"] == "http.request")


def _replay(messages: list[Message], receive: Receive) -> Receive:
    """A `receive` that gives `messages` again, then what `receive` gives."""
    pending = list(messages)

    async def replayed() -> Message:
        return pending.pop(0) if pending else await receive()

    return replayed
