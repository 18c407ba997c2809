"""Models that document the gateway's answers in `/openapi.json`.

Routes answer with `JSONResponse` built from the envelope, so these models are used for documentation only:
every success is `Envelope[<object>]`, and every route lists the error envelope for the statuses it can
answer.
"""

from __future__ import annotations

from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, Field

from medialens_shared.contracts import JobStatus
from medialens_shared.envelope import Envelope

T = TypeVar("T")


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


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The `responses=` entry documenting the error envelope for `statuses`."""
    return {
        status: {"model": Envelope[ErrorData], "description": "The error envelope."} for status in statuses
    }


__all__ = [
    "Check",
    "DeliveryObject",
    "Envelope",
    "FileObject",
    "JobObject",
    "JobType",
    "Page",
    "Readiness",
    "Result",
    "errors",
]
