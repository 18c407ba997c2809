"""Keyset pagination, newest first: an opaque cursor holding the listing it is of and the last item's
(created_at, id)."""

from __future__ import annotations

import base64
import binascii
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import Query
from sqlalchemy import Column, Select, and_, or_

from medialens_shared.errors import RequestValidationFailed

Limit = Annotated[int, Query(ge=1, le=200, description="Items per page (1..200).")]
Cursor = Annotated[
    str | None,
    Query(description="The previous page's `next_cursor`, as it came (opaque: any other is a 422)."),
]


#: The listings that page by (created_at, id), `jobs`, `files` and each job's deliveries (`deliveries_of`):
#: a cursor of one is refused by the others (a files cursor passed to `/v1/jobs` gave a page of jobs from
#: some other place, with a 200).
Listing = str


def deliveries_of(job_id: str) -> str:
    """The listing of one job's webhook deliveries: another job's refuses its cursor (it started that job's
    list after the other's place, silently)."""
    return f"deliveries/{job_id}"


def encode(created_at: datetime, item_id: str, *, listing: Listing) -> str:
    return _opaque(f"{listing}|{created_at.isoformat()}|{item_id}")


def decode(cursor: str, *, listing: Listing) -> tuple[datetime, str]:
    """The (created_at, id) a cursor of `listing` holds; 422 for any text `encode` did not write for that
    listing. Its time must be zone-aware and within PostgreSQL's range once in UTC (a tampered
    `0001-01-01T00:00:00+01:00` was a 500)."""
    try:
        of, _, rest = _opened(cursor).partition("|")
        created, _, item_id = rest.partition("|")
        after = datetime.fromisoformat(created)
        if of != listing or after.tzinfo is None or not item_id:
            raise ValueError("not a cursor of this listing")
        return after.astimezone(UTC), item_id
    except (binascii.Error, UnicodeDecodeError, ValueError, OverflowError) as exc:
        raise _not_ours() from exc


def _opaque(text: str) -> str:
    """`text` as a cursor: URL-safe base64, without its padding."""
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def _opened(cursor: str) -> str:
    """The text `_opaque` made `cursor` of (binascii.Error or UnicodeDecodeError for any other)."""
    return base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()


def _not_ours() -> RequestValidationFailed:
    return RequestValidationFailed(
        "The cursor is not one this API gave out; pass `next_cursor` unchanged.",
        details=[{"loc": ["query", "cursor"], "msg": "invalid cursor", "type": "value_error"}],
    )


def page(
    query: Select[Any],
    *,
    created_at: Column[Any],
    item_id: Column[Any],
    limit: int,
    cursor: str | None,
    listing: Listing,
    oldest_first: bool = False,
) -> Select[Any]:
    """`query` restricted to the page after `cursor` (of `listing`), newest first (or `oldest_first`), one
    row more than `limit`."""
    if cursor:
        after_created, after_id = decode(cursor, listing=listing)
        if oldest_first:
            later = or_(created_at > after_created, and_(created_at == after_created, item_id > after_id))
            query = query.where(later)
        else:
            earlier = or_(created_at < after_created, and_(created_at == after_created, item_id < after_id))
            query = query.where(earlier)
    if oldest_first:
        return query.order_by(created_at, item_id).limit(limit + 1)
    return query.order_by(created_at.desc(), item_id.desc()).limit(limit + 1)


def listed_page(
    items: list[Any], *, key: str, limit: int, cursor: str | None
) -> tuple[list[Any], str | None]:
    """A page of `items`, a list the service holds in memory (the job types' catalogue), after `cursor`,
    and the next page's cursor: the last item's `key` (a name), opaque as the others (any other is a 422)."""
    start = 0
    if cursor:
        names = [item[key] for item in items]
        try:
            raw = _opened(cursor)
            start = names.index(raw.removeprefix("name|")) + 1 if raw.startswith("name|") else -1
        except (binascii.Error, UnicodeDecodeError, ValueError):
            start = -1
        if start < 0:
            raise _not_ours()
    chosen = items[start : start + limit]
    more = start + limit < len(items)
    return chosen, _opaque(f"name|{chosen[-1][key]}") if more else None


def next_cursor(rows: list[Any], *, limit: int, listing: Listing) -> str | None:
    """The cursor of `listing`'s page after `rows` (fetched with one extra row), or None on the last
    page."""
    if len(rows) <= limit:
        return None
    last = rows[limit - 1]
    return encode(last["created_at"], last["id"], listing=listing)
