"""The error tree: codes, HTTP statuses, retry hints and the permanent/transient split."""

from __future__ import annotations

import errno
import os

import pytest

from medialens_shared import errors


@pytest.mark.parametrize(
    ("error", "code", "status"),
    [
        (errors.RequestValidationFailed, "VALIDATION_ERROR", 422),
        (errors.Unauthorized, "UNAUTHORIZED", 401),
        (errors.NotFound, "NOT_FOUND", 404),
        (errors.Conflict, "CONFLICT", 409),
        (errors.JobNotFinished, "JOB_NOT_FINISHED", 409),
        (errors.JobNotCancellable, "JOB_NOT_CANCELLABLE", 409),
        (errors.PayloadTooLarge, "PAYLOAD_TOO_LARGE", 413),
        (errors.RangeNotSatisfiable, "VALIDATION_ERROR", 416),
        (errors.UnsupportedMediaType, "UNSUPPORTED_MEDIA_TYPE", 415),
        (errors.InternalError, "INTERNAL_ERROR", 500),
    ],
)
def test_api_errors_carry_their_code_and_status(error: type[errors.ApiError], code: str, status: int) -> None:
    """Each API error has its stable error_code and HTTP status, and keeps message and details."""
    raised = error("plain words", details=[{"field": "x"}])
    assert (raised.error_code, raised.http_status) == (code, status)
    assert raised.message == "plain words"
    assert str(raised) == "plain words"
    assert raised.details == [{"field": "x"}]
    assert raised.retry_after is None


def test_rate_limited_and_unavailable_carry_retry_after() -> None:
    """RateLimited and ServiceUnavailable tell the client how long to wait."""
    assert errors.RateLimited("slow down", retry_after=7).retry_after == 7
    assert errors.RateLimited("slow down").retry_after == 1
    unavailable = errors.ServiceUnavailable("redis is down")
    assert (unavailable.retry_after, unavailable.http_status) == (5, 503)
    assert unavailable.error_code == "SERVICE_UNAVAILABLE"


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (errors.UnsupportedInput, "UNSUPPORTED_INPUT"),
        (errors.MediaDecodeError, "MEDIA_DECODE_ERROR"),
        (errors.InvalidParams, "INVALID_PARAMS"),
        (errors.InputNotFound, "INPUT_NOT_FOUND"),
        (errors.JobTimeout, "TIMEOUT"),
        (errors.RetriesExhausted, "RETRIES_EXHAUSTED"),
    ],
)
def test_permanent_job_errors_carry_their_code(error: type[errors.PermanentJobError], code: str) -> None:
    """Each permanent job error is a JobError with its own code, never transient."""
    raised = error("bad input")
    assert raised.error_code == code
    assert isinstance(raised, errors.JobError)
    assert not isinstance(raised, errors.TransientJobError)


def test_transient_and_cancelled_are_not_permanent() -> None:
    """Transient faults and cancellation sit beside the permanent errors, not under them."""
    assert not issubclass(errors.TransientJobError, errors.PermanentJobError)
    assert not issubclass(errors.JobCancelled, errors.PermanentJobError)
    assert errors.JobCancelled("stop").error_code == "CANCELLED"
    assert errors.TransientJobError("blip").error_code == "INTERNAL_ERROR"


def _raised_from(cause: BaseException) -> RuntimeError:
    try:
        raise RuntimeError("wrapped") from cause
    except RuntimeError as exc:
        return exc


ASYNC_WRITE = (
    "IO Error: Async write failed for range [offset=29, size=3227284]: "
    '{"exception_type":"IO","exception_message":"Could not write file \\"/s/x.csv\\": '
    'No space left on device","errno":"28"}'
)


@pytest.mark.parametrize(
    ("exc", "full"),
    [
        (OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/scratch/t.jpg"), True),
        (OSError(errno.EDQUOT, os.strerror(errno.EDQUOT)), True),
        (_raised_from(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))), True),
        (Exception('IO Error: Could not write file "/scratch/x.parquet": No space left on device'), True),
        (Exception(ASYNC_WRITE), True),
        (OSError(errno.EACCES, os.strerror(errno.EACCES)), False),
        (ValueError("no space left for doubt"), False),
        (_raised_from(ValueError("bad")), False),
        # The words quoted from the input or the query, not said of a write:
        (Exception('Invalid Input Error: line 30002: "disk: No space left on device" has 3 fields'), False),
        (Exception("Binder Error: column msgg not found in WHERE msgg = 'No space left on device'"), False),
    ],
    ids=[
        "enospc",
        "edquot",
        "chained",
        "duckdb-io",
        "duckdb-async-io",
        "eacces",
        "other-words",
        "other-chained",
        "quoted-csv-line",
        "quoted-sql",
    ],
)
def test_a_full_disk_is_recognised_by_its_errno_or_duckdbs_io_error(exc: BaseException, full: bool) -> None:
    """PyAV's and PIL's OSErrors carry the errno; DuckDB's IO errors only their words, which a CSV line or a
    query quoted in another DuckDB error may hold too (a ragged line failed RETRIES_EXHAUSTED "no space
    left on the worker's disk" instead of UNSUPPORTED_INPUT naming the line)."""
    assert errors.disk_full(exc) is full
