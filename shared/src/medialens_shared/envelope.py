"""The one response envelope of the public API, and its time format.

Every JSON answer of the gateway, success or error, is an `Envelope`; times are ISO 8601 UTC with exactly
three decimals and `Z`.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, Field

T = TypeVar("T")


def utc_now() -> datetime:
    return datetime.now(UTC)


def iso(moment: datetime | None) -> str | None:
    """`2026-11-28T16:00:00.123Z` for an aware datetime; None stays None."""
    if moment is None:
        return None
    # isoformat is C and ends in "+00:00" in UTC; strftime cost every job object a few microseconds per time.
    # PostgreSQL's times arrive in UTC already (four per job object): no conversion for them.
    if moment.tzinfo is not UTC:
        moment = moment.astimezone(UTC)
    return moment.isoformat(timespec="milliseconds")[:-6] + "Z"


class Envelope(BaseModel, Generic[T]):
    success: bool = True
    data: T | None = None
    message: str = ""
    error_code: str | None = None
    timestamp: str = Field(default_factory=lambda: iso(utc_now()) or "")
    request_id: str = ""


class ErrorDetails(BaseModel):
    details: list[Any] = Field(default_factory=list)


def success(data: Any, *, request_id: str, message: str = "") -> dict[str, Any]:
    """A success envelope as a plain dict, ready for JSON (built directly: this runs on every request)."""
    return {
        "success": True,
        "data": data,
        "message": message,
        "error_code": None,
        "timestamp": iso(utc_now()),
        "request_id": request_id,
    }


def failure(
    *, error_code: str, message: str, request_id: str, details: list[Any] | None = None
) -> dict[str, Any]:
    """An error envelope as a plain dict, ready for JSON."""
    return {
        "success": False,
        "data": {"details": details} if details else None,
        "message": message,
        "error_code": error_code,
        "timestamp": iso(utc_now()),
        "request_id": request_id,
    }
