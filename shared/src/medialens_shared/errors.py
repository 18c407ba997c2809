"""Every error MediaLens raises, in one tree.

    MediaLensError                  (error_code, http_status, message, details)
    ├── ApiError                    raised by the gateway; rendered as the envelope
    │   ├── RequestValidationFailed     422 VALIDATION_ERROR
    │   ├── Unauthorized                401 UNAUTHORIZED
    │   ├── NotFound                    404 NOT_FOUND
    │   ├── MethodNotAllowed            405 METHOD_NOT_ALLOWED (Allow; a code API.md's table adds to)
    │   ├── Conflict                    409 CONFLICT
    │   ├── JobNotFinished              409 JOB_NOT_FINISHED
    │   ├── JobNotCancellable           409 JOB_NOT_CANCELLABLE
    │   ├── PayloadTooLarge             413 PAYLOAD_TOO_LARGE
    │   ├── RangeNotSatisfiable         416 VALIDATION_ERROR   (a Range outside the file)
    │   ├── UnsupportedMediaType        415 UNSUPPORTED_MEDIA_TYPE
    │   ├── RateLimited                 429 RATE_LIMITED       (Retry-After)
    │   ├── ServiceUnavailable          503 SERVICE_UNAVAILABLE (Retry-After)
    │   └── InternalError               500 INTERNAL_ERROR
    └── JobError                    raised inside a job; ends up in the job's error_code
        ├── PermanentJobError           the job fails at once; retrying cannot help
        │   ├── UnsupportedInput            UNSUPPORTED_INPUT   (wrong kind of file)
        │   ├── MediaDecodeError            MEDIA_DECODE_ERROR  (damaged media)
        │   ├── InvalidParams               INVALID_PARAMS
        │   ├── InputNotFound               INPUT_NOT_FOUND
        │   ├── JobTimeout                  TIMEOUT
        │   └── RetriesExhausted            RETRIES_EXHAUSTED
        ├── TransientJobError           a passing fault: the try is retried
        │   └── DiskFull                    the worker's disk had no room (`disk_full`)
        └── JobCancelled                the job was asked to stop; it ends `cancelled`

Any other exception escaping a job handler is a bug: the job fails with INTERNAL_ERROR; unless
`disk_full` recognises it, when it is retried as a DiskFull.
"""

from __future__ import annotations

import errno
import os
import re
from typing import Any, ClassVar


class MediaLensError(Exception):
    """Base of all MediaLens errors: a stable code plus a message a person can act on."""

    error_code: ClassVar[str] = "INTERNAL_ERROR"
    http_status: ClassVar[int] = 500

    def __init__(self, message: str, *, details: list[Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details


class ApiError(MediaLensError):
    """An error answered to an HTTP client."""

    #: Seconds a client should wait before retrying; sent as `Retry-After` when set.
    retry_after: int | None = None
    #: Other headers the answer carries.
    headers: dict[str, str] | None = None


class RequestValidationFailed(ApiError):
    error_code = "VALIDATION_ERROR"
    http_status = 422


class Unauthorized(ApiError):
    error_code = "UNAUTHORIZED"
    http_status = 401


class NotFound(ApiError):
    error_code = "NOT_FOUND"
    http_status = 404


class MethodNotAllowed(ApiError):
    """A method the path does not take; the answer's `Allow` header lists the ones it does."""

    error_code = "METHOD_NOT_ALLOWED"
    http_status = 405


class Conflict(ApiError):
    error_code = "CONFLICT"
    http_status = 409


class JobNotFinished(ApiError):
    error_code = "JOB_NOT_FINISHED"
    http_status = 409


class JobNotCancellable(ApiError):
    error_code = "JOB_NOT_CANCELLABLE"
    http_status = 409


class PayloadTooLarge(ApiError):
    error_code = "PAYLOAD_TOO_LARGE"
    http_status = 413


class RangeNotSatisfiable(ApiError):
    """A Range the file cannot serve; the answer names the file's size (`Content-Range: bytes */size`)."""

    error_code = "VALIDATION_ERROR"
    http_status = 416

    def __init__(self, message: str, *, size: int | None = None, details: list[Any] | None = None) -> None:
        super().__init__(message, details=details)
        if size is not None:
            self.headers = {"Content-Range": f"bytes */{size}"}


class UnsupportedMediaType(ApiError):
    error_code = "UNSUPPORTED_MEDIA_TYPE"
    http_status = 415


class RateLimited(ApiError):
    error_code = "RATE_LIMITED"
    http_status = 429

    def __init__(self, message: str, *, retry_after: int = 1) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ServiceUnavailable(ApiError):
    error_code = "SERVICE_UNAVAILABLE"
    http_status = 503

    def __init__(self, message: str, *, retry_after: int = 5) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class InternalError(ApiError):
    error_code = "INTERNAL_ERROR"
    http_status = 500


class JobError(MediaLensError):
    """An error raised while a job runs."""


class PermanentJobError(JobError):
    """Retrying cannot help: the job fails at once with this error's code."""


class UnsupportedInput(PermanentJobError):
    error_code = "UNSUPPORTED_INPUT"


class MediaDecodeError(PermanentJobError):
    error_code = "MEDIA_DECODE_ERROR"


class InvalidParams(PermanentJobError):
    error_code = "INVALID_PARAMS"


class InputNotFound(PermanentJobError):
    error_code = "INPUT_NOT_FOUND"


class JobTimeout(PermanentJobError):
    error_code = "TIMEOUT"


class RetriesExhausted(PermanentJobError):
    error_code = "RETRIES_EXHAUSTED"


class TransientJobError(JobError):
    """A passing fault (a dependency blip): the try is retried with backoff."""


class DiskFull(TransientJobError):
    """The worker's disk (its input cache, a job's scratch: thumbnails, a converted table, DuckDB's spill)
    had no room. Retried: other jobs' files go as they end, and the retry may reach a worker with room; the
    job fails RETRIES_EXHAUSTED with this reason when none does."""

    @classmethod
    def of(cls, exc: BaseException) -> DiskFull:
        return cls(f"no space left on the worker's disk ({type(exc).__name__}: {exc})")


_DISK_FULL_CODES = (errno.ENOSPC, errno.EDQUOT)
#: DuckDB's IO error for a write the disk had no room for: its errors carry no errno attribute, but name
#: the file and then the C library's words (`IO Error: Could not write file "x": No space left on
#: device`), or its errno in a JSON detail (`"errno":"28"`).
_DUCKDB_DISK_FULL = re.compile(
    r'^IO Error:.*(?:": (?:' + "|".join(re.escape(os.strerror(code)) for code in _DISK_FULL_CODES) + r")"
    r'|"errno":"(?:' + "|".join(str(code) for code in _DISK_FULL_CODES) + r')")',
    re.DOTALL,
)


def disk_full(exc: BaseException) -> bool:
    """Whether `exc`, or an exception it was raised from (or while handling, unless that was suppressed),
    says a disk has no room left: an OSError with ENOSPC or EDQUOT (PyAV's and PIL's included), or DuckDB's
    IO error for such a write (`_DUCKDB_DISK_FULL`). Only these: the words alone elsewhere (a CSV line or a
    query quoted in DuckDB's message) are the input's, not the disk's. An analyser that turns its
    library's errors into a job's error code (the data service) asks this first: a full disk is neither a
    damaged file nor a bad query."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in _DISK_FULL_CODES:
            return True
        if _DUCKDB_DISK_FULL.search(str(current)):
            return True
        current = current.__cause__ or (None if current.__suppress_context__ else current.__context__)
    return False


class JobCancelled(JobError):
    """The job was asked to stop and did so at a checkpoint."""

    error_code = "CANCELLED"
