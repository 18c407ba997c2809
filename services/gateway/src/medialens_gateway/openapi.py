"""The gateway's `/openapi.json`: the models that document its answers, and what routes cannot say alone.

Routes answer with `JSONResponse` built from the envelope, so these models are used for documentation only:
every success is `Envelope[<object>]`, and every route lists the error envelope for the statuses it can
answer. `install_openapi` then adds to FastAPI's document what holds for whole groups of operations rather
than for one route: the API key every `/v1` operation needs.
"""

from __future__ import annotations

from typing import Any, Generic, Literal, TypeVar

from fastapi import FastAPI
from pydantic import BaseModel, ConfigDict, Field

from medialens_shared.contracts import JOB_TYPES, JobStatus
from medialens_shared.envelope import Envelope as AnyEnvelope

T = TypeVar("T")


class Envelope(AnyEnvelope[T], Generic[T]):
    """The envelope as answered: all six keys, always (the defaults are for building one, not for reading)."""

    model_config = ConfigDict(json_schema_serialization_defaults_required=True)


class FileObject(BaseModel):
    id: str
    filename: str
    content_type: str
    size_bytes: int
    sha256: str
    kind: str = Field(description="What the content is: video, audio, table or unknown.")
    job_id: str | None = Field(description="The job that made this file, for artifacts.")
    created_at: str


class JobObject(BaseModel):
    id: str
    type: str
    status: JobStatus
    progress: float = Field(ge=0, le=1)
    message: str
    file_id: str | None
    params: dict[str, Any]
    labels: dict[str, str]
    priority: int = Field(ge=0, le=9)
    attempts: int
    error_code: str | None
    error_message: str | None
    created_at: str
    started_at: str | None
    finished_at: str | None
    parent_id: str | None
    children: list[str]


class DeliveryObject(BaseModel):
    """One webhook delivery of a job: the POST of its terminal job object to its callback_url."""

    id: str = Field(description="The delivery id, sent as the X-MediaLens-Delivery header.")
    job_id: str
    url: str
    event: str = Field(description="`job.<status>`, sent as the X-MediaLens-Event header.")
    status: Literal["pending", "delivering", "succeeded", "failed"]
    attempts: int
    last_status_code: int | None = Field(description="The HTTP status of the last try, if it got one.")
    last_error: str | None = Field(description="Why the last try did not succeed.")
    created_at: str
    delivered_at: str | None
    next_attempt_at: str | None = Field(description="When the next try is due, while one is.")


class Page(BaseModel, Generic[T]):
    items: list[T]
    next_cursor: str | None


class Check(BaseModel):
    ok: bool
    latency_ms: float
    error: str | None


class Readiness(BaseModel):
    status: str
    checks: dict[str, Check]


class JobType(BaseModel):
    name: str
    service: str
    description: str
    accepts: list[str]
    params_schema: dict[str, Any]
    result_schema: dict[str, Any]


class Result(BaseModel):
    """The result document: these common fields plus the job type's own (see /v1/job-types)."""

    model_config = {"extra": "allow"}

    job_id: str
    type: str
    input_file_id: str | None
    created_at: str


class ErrorData(BaseModel):
    details: list[dict[str, Any]] = Field(default_factory=list)


class ErrorEnvelope(BaseModel):
    """Every error answer: the envelope with `success` false and one of API.md's error codes (or
    METHOD_NOT_ALLOWED, a 405, which API.md does not list)."""

    success: Literal[False]
    data: ErrorData | None = Field(description="`{details: [...]}` when there is more to say, else null.")
    message: str = Field(description="What is wrong and what to do, in plain words.")
    error_code: str = Field(
        description="One of API.md's error codes, or METHOD_NOT_ALLOWED (405).", examples=["NOT_FOUND"]
    )
    timestamp: str
    request_id: str = Field(description="Also sent as the X-Request-ID header.")


#: Every answer's request id (the client's `X-Request-ID` when it sent a sane one).
REQUEST_ID: dict[str, Any] = {
    "description": "The request id, as in the envelope's `request_id`.",
    "schema": {"type": "string"},
}

#: A client's own request id, which every answer then carries (`medialens_gateway.edge`): one of up to 200
#: visible ASCII characters is kept, anything else replaced by a fresh id (never refused).
REQUEST_ID_PARAMETER: dict[str, Any] = {
    "name": "X-Request-ID",
    "in": "header",
    "required": False,
    "description": "An id of your own for this request (1 to 200 visible ASCII characters, no spaces), "
    "echoed in the answer's `X-Request-ID` header and `request_id`; another value is replaced by a fresh id.",
    "schema": {"type": "string"},
}

#: The `Location` header of a created (or accepted) resource, as `headers=` of a response.
LOCATION: dict[str, Any] = {
    "Location": {
        "description": "The path of the job or file this answer is about.",
        "schema": {"type": "string"},
    }
}

#: The `Retry-After` header of a 429 or 503, as `headers=` of a response.
RETRY_AFTER: dict[str, Any] = {
    "Retry-After": {
        "description": "Seconds to wait before trying again.",
        "schema": {"type": "integer", "minimum": 1},
    }
}


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The `responses=` entry documenting the error envelope for `statuses`."""
    return {status: {"model": ErrorEnvelope, "description": "The error envelope."} for status in statuses}


#: The two ways `medialens_gateway.auth.presented_key` accepts a key; either one is enough.
SECURITY_SCHEMES: dict[str, dict[str, Any]] = {
    "bearerAuth": {
        "type": "http",
        "scheme": "bearer",
        "description": "The tenant's API key as `Authorization: Bearer <api key>`.",
    },
    "apiKeyHeader": {
        "type": "apiKey",
        "in": "header",
        "name": "X-API-Key",
        "description": "The tenant's API key as `X-API-Key: <api key>`.",
    },
}
KEY_REQUIRED: list[dict[str, list[str]]] = [{name: []} for name in SECURITY_SCHEMES]


def _needs_key(path: str) -> bool:
    """API.md: every `/v1` call needs a key (every `/v1` route takes `CurrentTenant`); operations do not."""
    return path == "/v1" or path.startswith("/v1/")


def _may_be_shed(path: str) -> bool:
    """`medialens_gateway.edge` sheds every request past `gateway.max_in_flight` but health checks."""
    return not path.startswith("/health")


def _error(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "headers": RETRY_AFTER,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorEnvelope"}}},
    }


#: Every operation that needs a key answers 401 without one, with the challenge of `auth.CHALLENGE`.
UNAUTHORIZED: dict[str, Any] = {
    "description": "UNAUTHORIZED: no API key, or one unknown or revoked.",
    "headers": {
        "WWW-Authenticate": {
            "description": 'The challenge: `Bearer realm="MediaLens"` (with `error="invalid_token"` for a '
            "key sent but refused).",
            "schema": {"type": "string"},
        }
    },
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorEnvelope"}}},
}

#: The tenant's rate is spent by `CurrentTenant`, so on every operation that needs a key.
RATE_LIMITED = _error(
    "RATE_LIMITED: this tenant is over its request rate (`MEDIALENS_GATEWAY_TENANT_RATE_LIMIT`) or, for an "
    "event stream, holds its most open streams (`MEDIALENS_GATEWAY_EVENT_STREAMS_PER_TENANT`); retry after "
    "`Retry-After` seconds."
)
UNAVAILABLE = _error(
    "SERVICE_UNAVAILABLE: the gateway sheds load (more than `MEDIALENS_GATEWAY_MAX_IN_FLIGHT` requests in "
    "flight) or a dependency is down; retry after `Retry-After` seconds."
)


def document(base: dict[str, Any]) -> dict[str, Any]:
    """`base` (FastAPI's document of the app) with what holds for whole groups of its operations."""
    components = base.setdefault("components", {})
    components["securitySchemes"] = SECURITY_SCHEMES
    components.setdefault("headers", {})["X-Request-ID"] = REQUEST_ID
    components.setdefault("parameters", {})["X-Request-ID"] = REQUEST_ID_PARAMETER
    schemas = components.setdefault("schemas", {})
    for name, schema in _schemas(ErrorEnvelope).items():
        schemas.setdefault(name, schema)
    _params_by_type(schemas)
    for path, operations in base.get("paths", {}).items():
        for operation in operations.values():
            operation.setdefault("parameters", []).append({"$ref": "#/components/parameters/X-Request-ID"})
            responses = operation.setdefault("responses", {})
            if _needs_key(path):
                operation["security"] = KEY_REQUIRED
                unauthorized = responses.setdefault("401", dict(UNAUTHORIZED))
                unauthorized["headers"] = unauthorized.get("headers", {}) | UNAUTHORIZED["headers"]
                responses.setdefault("429", RATE_LIMITED)
            if _may_be_shed(path):
                responses.setdefault("503", UNAVAILABLE)
            for status, response in responses.items():
                responses[status] = response | {
                    "headers": response.get("headers", {})
                    | {"X-Request-ID": {"$ref": "#/components/headers/X-Request-ID"}}
                }
    return base


def _schemas(
    model: type[BaseModel], *, mode: Literal["validation", "serialization"] = "serialization"
) -> dict[str, Any]:
    """The JSON Schema of `model` and of the models it holds, by name, as OpenAPI's components list them."""
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}", mode=mode)
    return {model.__name__: schema, **schema.pop("$defs", {})}


def _params_by_type(schemas: dict[str, Any]) -> None:
    """Each job type's params schema as a component (the same as `/v1/job-types` serves), named from the
    job request's `params`: which one applies depends on its `type`, which a schema alone cannot select."""
    for spec in JOB_TYPES.values():
        for name, schema in _schemas(spec.params, mode="validation").items():
            schemas.setdefault(name, schema)
    request = schemas.get("JobRequest", {}).get("properties", {}).get("params")
    if request is not None:
        by_type = "; ".join(f"`{name}`: {spec.params.__name__}" for name, spec in JOB_TYPES.items())
        request["description"] = f"Checked against the type's schema (components): {by_type}."


def install_openapi(app: FastAPI) -> None:
    """Serve `document(...)` of FastAPI's own document at `/openapi.json` (and so in `/docs`)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:  # built once, like FastAPI's own, not again for every request
            app.openapi_schema = document(FastAPI.openapi(app))
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


__all__ = [
    "RETRY_AFTER",
    "Check",
    "DeliveryObject",
    "Envelope",
    "ErrorEnvelope",
    "FileObject",
    "JobObject",
    "JobType",
    "Page",
    "Readiness",
    "Result",
    "errors",
    "install_openapi",
]
