"""What every HTTP request of the gateway passes through first: one pure-ASGI layer.

It answers HEAD as GET without the body (RFC 9110 §9.3.2: the same status and headers, `Content-Length`
included; the scope it passes on is marked, `is_head`, so that a file download reads none of its bytes),
gives the request its id (the client's `X-Request-ID` when it sent a sane one) and echoes it as a header,
counts and times the request by route template, sheds load past `gateway.max_in_flight` requests at once
(503 with Retry-After, before any work: a gateway that queues without bound answers everyone late), and
renders a bug as the 500 envelope, a dependency outage as the 503 one, and text the database cannot store
(a NUL character) as the 422 one. One layer rather than three: each ASGI middleware costs every request a
wrapped `send` and a few frames, which showed in the gateway's profile.
"""

from __future__ import annotations

import contextlib
import logging
import re
import time
import uuid

from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from medialens_gateway import metrics
from medialens_gateway.envelope import dependency_outage, error_response, request_id_var, unstorable_text
from medialens_shared.errors import InternalError, RequestValidationFailed, ServiceUnavailable

log = logging.getLogger(__name__)

#: A client's X-Request-ID echoed as it is: 1 to 200 visible ASCII characters, so the ids proxies and
#: tracers send come back (AWS's `Root=1-67891233-abcdef012345678912345678`, `{uuid}`, base64 with `+/=`;
#: letters, digits and `._:-` alone replaced them). No spaces nor control characters: the id goes into
#: every log line, where in the text format a space would let it add `key=value` context of its own.
_CLIENT_ID = re.compile(r"^[\x21-\x7e]{1,200}$")


#: The status an aborted request is counted with, as nginx logs one ("client closed request"): not a 5xx.
CLIENT_CLOSED = 499


def _request_id(headers: list[tuple[bytes, bytes]]) -> str:
    for name, value in headers:
        if name == b"x-request-id":
            sent = value.decode("latin-1")
            return sent if _CLIENT_ID.match(sent) else uuid.uuid4().hex
    return uuid.uuid4().hex


#: The key the edge sets in the scope of a HEAD request it passes on as GET.
_HEAD = "medialens.head"


def is_head(scope: Scope) -> bool:
    """Whether a request the app sees as GET is the edge's HEAD: the route may answer the status and
    headers alone (the edge drops any body anyway)."""
    return bool(scope.get(_HEAD))


class _HeadAnswered(Exception):
    """Raised through the app by a HEAD request's `send` once the status and headers are out, so that the
    app stops before producing the body nobody will read."""


class EdgeMiddleware:
    """The request id, the HTTP metrics and the last-resort error envelope, in one layer.

    Pure ASGI (no BaseHTTPMiddleware) so streaming bodies pass through untouched. It is the outermost layer
    of our own, so it also catches what Starlette's exception middleware lets through.
    """

    def __init__(self, app: ASGIApp, *, max_in_flight: int = 0) -> None:
        self.app = app
        self.max_in_flight = max_in_flight
        self.in_flight = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        method = scope["method"]
        head = method == "HEAD"
        if head:
            scope = {**scope, "method": "GET", _HEAD: True}
        request_id = _request_id(scope["headers"])
        id_header = (b"x-request-id", request_id.encode())
        token = request_id_var.set(request_id)
        status = 0
        app = self.app
        # Health checks are never shed: an orchestrator must not restart a gateway for being busy.
        if (
            self.max_in_flight
            and self.in_flight >= self.max_in_flight
            and not scope["path"].startswith("/health")
        ):
            app = error_response(
                status_code=503,
                error_code=ServiceUnavailable.error_code,
                message="The gateway is at its limit of requests in flight; retry after Retry-After seconds.",
                retry_after=1,
            )
        self.in_flight += 1

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = [(k, v) for k, v in message.get("headers", ()) if k.lower() != b"x-request-id"]
                headers.append(id_header)
                message["headers"] = headers
            elif head and message["type"] == "http.response.body":
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                raise _HeadAnswered
            await send(message)

        try:
            await app(scope, receive, send_with_id)
        except _HeadAnswered:
            pass
        except ClientDisconnect:
            # The client left before its request was read (an aborted upload): no one to answer, and no
            # fault of the gateway's (it was counted a 500 and logged as an unhandled error).
            status = status or CLIENT_CLOSED
            log.info("request %s: the client went away before its request was read", request_id)
        except Exception as exc:
            response = self._render(exc, request_id)
            if status:
                raise  # the client already has a status line; all we can do is drop the connection
            with contextlib.suppress(_HeadAnswered):  # a HEAD gets the 503 or 500's headers alone, too
                await response(scope, receive, send_with_id)
        finally:
            self.in_flight -= 1
            request_id_var.reset(token)
            metrics.observe(
                method=method,
                route=getattr(scope.get("route"), "path", None) or "unmatched",
                status=status or 500,
                seconds=time.perf_counter() - start,
            )

    @staticmethod
    def _render(exc: Exception, request_id: str) -> ASGIApp:
        if unstorable_text(exc):
            return error_response(
                status_code=422,
                error_code=RequestValidationFailed.error_code,
                message="The request holds a NUL character (\\u0000), which no field, id or filter takes.",
            )
        outage = dependency_outage(exc)
        if outage:
            log.warning("request %s: %s is unavailable (%s)", request_id, outage, exc)
            return error_response(
                status_code=503,
                error_code=ServiceUnavailable.error_code,
                message=f"{outage} is unavailable right now; retry after a few seconds.",
                retry_after=5,
            )
        log.error("unhandled error in request %s", request_id, exc_info=exc)
        return error_response(
            status_code=500,
            error_code=InternalError.error_code,
            message=f"An internal error occurred; quote request id {request_id} when reporting it.",
        )
