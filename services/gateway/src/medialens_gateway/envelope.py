"""Every answer of the gateway as the envelope: the request id, and the one place errors are rendered.

The edge middleware (`medialens_gateway.edge`) gives each request its id, which every envelope carries;
`install_error_handlers` renders every error, from a domain `ApiError` to an unknown route, a wrong method
or a validation failure, as the envelope with its API error code (and the edge renders a bug or an outage).
"""

from __future__ import annotations

import re
from contextvars import ContextVar
from typing import Any

import asyncpg
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic_core import to_json
from pymongo.errors import ConnectionFailure
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import OutOfMemoryError, ReadOnlyError
from redis.exceptions import TimeoutError as RedisTimeoutError
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from medialens_shared.db import POSTGRES_GONE, ConnectionLost, causes
from medialens_shared.envelope import failure, success
from medialens_shared.errors import ApiError, MethodNotAllowed, RequestValidationFailed

request_id_var: ContextVar[str] = ContextVar("request_id", default="")

_STATUS_CODES = {
    401: "UNAUTHORIZED",
    404: "NOT_FOUND",
    405: MethodNotAllowed.error_code,
    409: "CONFLICT",
    413: "PAYLOAD_TOO_LARGE",
    415: "UNSUPPORTED_MEDIA_TYPE",
    422: "VALIDATION_ERROR",
    429: "RATE_LIMITED",
    503: "SERVICE_UNAVAILABLE",
}


def dependency_outage(exc: BaseException) -> str | None:
    """The dependency a failure shows to be away (a 503, not a bug's 500), or None."""
    if isinstance(exc, OperationalError | InterfaceError | PoolTimeout) or (
        isinstance(exc, DBAPIError) and exc.connection_invalidated
    ):
        return "PostgreSQL"
    if isinstance(exc, (*POSTGRES_GONE, ConnectionLost)) or (
        isinstance(exc, asyncpg.InterfaceError) and "closed" in str(exc)  # as SQLAlchemy's is_disconnect
    ):
        return "PostgreSQL"
    if isinstance(exc, ConnectionFailure):
        return "MongoDB"
    if isinstance(exc, RedisConnectionError | RedisTimeoutError | ReadOnlyError | OutOfMemoryError):
        return "Redis"  # away, or refusing writes: a replica after a failover, or at its `maxmemory`
    if isinstance(exc, ConnectionError | TimeoutError):
        return "A dependency"
    return None


#: PostgreSQL's SQLSTATEs for text it cannot store: a NUL in jsonb (22P05) or in text (22021).
_UNSTORABLE_TEXT = frozenset({"22P05", "22021"})


def unstorable_text(exc: BaseException) -> bool:
    """Whether the failure is PostgreSQL refusing text of the request (a NUL character, `\\u0000`): the
    client's input, a 422, not a bug. Checked on the failure itself, as asyncpg raises it, and on what it
    wraps, as SQLAlchemy raises it."""
    return any(getattr(cause, "sqlstate", None) in _UNSTORABLE_TEXT for cause in causes(exc))


class EnvelopeResponse(JSONResponse):
    """A JSON response rendered by pydantic-core's serializer instead of the standard library's `json`.

    The same JSON (UTF-8, no spaces), in a fraction of the time: for a job object `json.dumps` was a few
    percent of a `GET /v1/jobs/{id}`'s CPU. One difference: a NaN or an infinity, which `json.dumps` refused
    (the request then failed as a 500), is written as `null`, as JSON has no such numbers.
    """

    def render(self, content: Any) -> bytes:
        return to_json(content, inf_nan_mode="null")


def ok(
    data: Any, *, status_code: int = 200, message: str = "", headers: dict[str, str] | None = None
) -> JSONResponse:
    """A success envelope response."""
    body = success(data, request_id=request_id_var.get(), message=message)
    return EnvelopeResponse(body, status_code=status_code, headers=headers)


def error_response(
    *,
    status_code: int,
    error_code: str,
    message: str,
    details: list[Any] | None = None,
    data: dict[str, Any] | None = None,
    retry_after: int | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    """An error envelope response; `data` replaces the default `{"details": [...]}` when given."""
    headers = dict(headers or {})
    if retry_after is not None:
        headers["Retry-After"] = str(retry_after)
    body = failure(error_code=error_code, message=message, request_id=request_id_var.get(), details=details)
    if data is not None:
        body["data"] = data
    return EnvelopeResponse(body, status_code=status_code, headers=headers)


def api_error_response(exc: ApiError) -> JSONResponse:
    """The envelope of a domain error: its status, code, message, details and headers."""
    return error_response(
        status_code=exc.http_status,
        error_code=exc.error_code,
        message=exc.message,
        details=exc.details,
        retry_after=exc.retry_after,
        headers=exc.headers,
    )


async def _api_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return api_error_response(exc)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    details = [
        {"loc": list(err.get("loc", ())), "msg": err.get("msg", ""), "type": err.get("type", "")}
        for err in exc.errors()
    ]
    where = ", ".join(".".join(str(part) for part in d["loc"]) for d in details[:3])
    message = f"The request does not fit the schema ({where}); see data.details."
    for err, detail in zip(exc.errors(), details, strict=True):
        if err.get("type") == "json_invalid":
            # FastAPI's own words were "JSON decode error" at `body.<offset>`: what the parser found, where.
            found = str((err.get("ctx") or {}).get("error", "")) or "not JSON"
            message = f"The body is not valid JSON: {found} at character {detail['loc'][-1]}."
            detail["msg"] = f"JSON decode error: {found}"
    sent = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if ["body"] in [d["loc"] for d in details] and sent and not _JSON_MEDIA_TYPE.fullmatch(sent):
        # A JSON body sent as something else (`curl -d` sends a form's) is read as raw bytes, and the
        # schema's complaint ("a valid dictionary") does not say what to change.
        message = f"The body is read as JSON: send it with Content-Type: application/json, not {sent}."
    return error_response(status_code=422, error_code="VALIDATION_ERROR", message=message, details=details)


#: The media types FastAPI reads a body of as JSON: application/json and application/*+json.
_JSON_MEDIA_TYPE = re.compile(r"application/(?:json|[^/]+\+json)")


_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def _allowed_methods(request: Request) -> str:
    """Every method some route takes on the request's path (Starlette's 405 names only the first route's)."""
    routes = request.app.router.routes
    allowed = {
        method
        for method in _METHODS
        if any(route.matches({**request.scope, "method": method})[0] is Match.FULL for route in routes)
    }
    if "GET" in allowed:
        allowed.add("HEAD")  # the edge answers HEAD wherever GET is taken
    return ", ".join(method for method in _METHODS if method in allowed)


def _routed(request: Request, path: str) -> bool:
    """Whether some route takes `path` with the request's method."""
    scope = {**request.scope, "path": path}
    return any(route.matches(scope)[0] is Match.FULL for route in request.app.router.routes)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 400:  # FastAPI's "error parsing the body", e.g. JSON that is not UTF-8
        return error_response(
            status_code=RequestValidationFailed.http_status,
            error_code=RequestValidationFailed.error_code,
            message="The request body cannot be parsed as its Content-Type says; see data.details.",
            details=[{"loc": ["body"], "msg": str(exc.detail), "type": "body_unparsable"}],
        )
    code = _STATUS_CODES.get(
        exc.status_code, "INTERNAL_ERROR" if exc.status_code >= 500 else "VALIDATION_ERROR"
    )
    headers = dict(exc.headers or {})
    if exc.status_code == 404:
        message = f"No route {request.url.path}; see /docs for the API."
        meant = request.url.path.rstrip("/")
        if meant != request.url.path and _routed(request, meant):
            message = f"No route {request.url.path}; did you mean {meant}?"
    elif exc.status_code == 405:
        headers["Allow"] = _allowed_methods(request)
        message = f"{request.method} is not allowed on {request.url.path}; it takes {headers['Allow']}."
    else:
        message = str(exc.detail)
    return error_response(status_code=exc.status_code, error_code=code, message=message, headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
