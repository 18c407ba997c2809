"""The response envelope and its time format."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from medialens_shared.envelope import Envelope, failure, iso, success, utc_now

ENVELOPE_KEYS = {"success", "data", "message", "error_code", "timestamp", "request_id"}


def test_iso_has_three_decimals_and_z() -> None:
    """iso() writes milliseconds (truncated) and a Z."""
    assert iso(datetime(2026, 11, 28, 16, 0, 0, 123456, tzinfo=UTC)) == "2026-11-28T16:00:00.123Z"
    assert iso(datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)) == "2026-01-02T03:04:05.000Z"
    assert iso(datetime(2026, 1, 2, 3, 4, 5, 999999, tzinfo=UTC)) == "2026-01-02T03:04:05.999Z"


def test_iso_converts_to_utc() -> None:
    """An aware time in another zone is written as the same instant in UTC, across a day boundary."""
    plus_two = timezone(timedelta(hours=2))
    assert iso(datetime(2026, 11, 28, 1, 30, 0, 5000, tzinfo=plus_two)) == "2026-11-27T23:30:00.005Z"
    minus_five = timezone(timedelta(hours=-5))
    assert iso(datetime(2026, 12, 31, 20, 0, tzinfo=minus_five)) == "2027-01-01T01:00:00.000Z"


def test_iso_of_none_is_none() -> None:
    """A missing time stays None."""
    assert iso(None) is None


def test_utc_now_is_aware_utc() -> None:
    """utc_now() is timezone-aware and in UTC."""
    now = utc_now()
    assert now.utcoffset() == timedelta(0)


def test_success_shape() -> None:
    """success() is a JSON-ready dict with success true, the data and no error code."""
    body = success({"id": "j1"}, request_id="req-1", message="ok")
    assert set(body) == ENVELOPE_KEYS
    assert body["success"] is True
    assert body["data"] == {"id": "j1"}
    assert (body["message"], body["error_code"], body["request_id"]) == ("ok", None, "req-1")
    assert body["timestamp"].endswith("Z")
    assert datetime.fromisoformat(body["timestamp"]).tzinfo is not None


def test_failure_shape_with_and_without_details() -> None:
    """failure() carries the code and message; details go under data, and no details means data None."""
    body = failure(error_code="NOT_FOUND", message="no such job", request_id="req-2", details=[{"a": 1}])
    assert set(body) == ENVELOPE_KEYS
    assert body["success"] is False
    assert body["data"] == {"details": [{"a": 1}]}
    assert (body["error_code"], body["message"], body["request_id"]) == ("NOT_FOUND", "no such job", "req-2")
    bare = failure(error_code="CONFLICT", message="x", request_id="req-3")
    assert bare["data"] is None


def test_envelope_defaults() -> None:
    """An Envelope built with nothing is a success with no data and a fresh timestamp."""
    envelope = Envelope[int]()
    assert (envelope.success, envelope.data, envelope.error_code) == (True, None, None)
    assert len(envelope.timestamp) == len("2026-11-28T16:00:00.123Z")


def test_iso_writes_any_zero_offset_zone_as_utc() -> None:
    """A time in UTC itself (as PostgreSQL's arrive) and one in another zero-offset zone read the same."""
    other_zero = timezone(timedelta(0), "GMT")
    assert iso(datetime(2026, 11, 28, 16, 0, 0, 123456, tzinfo=other_zero)) == "2026-11-28T16:00:00.123Z"
    assert iso(datetime(2026, 11, 28, 16, 0, 0, 123456, tzinfo=UTC)) == "2026-11-28T16:00:00.123Z"
