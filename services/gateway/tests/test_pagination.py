"""Cursors: opaque, round-tripping the last item's (created_at, id), refusing what the API did not give."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from medialens_gateway.pagination import decode, encode, next_cursor
from medialens_shared.errors import RequestValidationFailed


def test_cursor_round_trips() -> None:
    """A cursor decodes to the created_at and id it was made from."""
    moment = datetime(2026, 11, 28, 16, 0, 0, 123456, tzinfo=UTC)
    cursor = encode(moment, "abc|def", listing="jobs")
    assert "=" not in cursor
    assert decode(cursor, listing="jobs") == (moment, "abc|def")


@pytest.mark.parametrize("cursor", ["", "****", "bm90LWEtZGF0ZQ", "/w", "a"])
def test_garbage_cursor_is_refused(cursor: str) -> None:
    """A cursor that is not base64 of `iso|id` raises a 422 naming the cursor."""
    with pytest.raises(RequestValidationFailed) as caught:
        decode(cursor, listing="files")
    assert caught.value.details[0]["loc"] == ["query", "cursor"]


def test_next_cursor_only_when_more_rows() -> None:
    """The next cursor is the last shown row's, and None when no extra row was fetched."""
    moment = datetime(2026, 1, 1, tzinfo=UTC)
    rows = [{"created_at": moment, "id": str(i)} for i in range(3)]
    assert next_cursor(rows, limit=3, listing="jobs") is None
    assert decode(next_cursor(rows, limit=2, listing="jobs") or "", listing="jobs") == (moment, "1")


def test_a_cursor_of_one_listing_is_refused_by_another() -> None:
    """A cursor is of the listing that gave it out: a files cursor passed to the jobs listing (or to a job's
    deliveries) is a 422, not a page of jobs after some file's place, with a 200."""
    moment = datetime(2026, 1, 1, tzinfo=UTC)
    cursor = encode(moment, "f1", listing="files")
    for other in ("jobs", "deliveries"):
        with pytest.raises(RequestValidationFailed):
            decode(cursor, listing=other)
