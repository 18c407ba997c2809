"""`/v1/files`: upload, read, download (with Range), delete and list a tenant's files.

A download opens the file's bytes before it answers (`service.open_content`): the status line is a promise
the body must keep, so MongoDB being away is a 503 and bytes gone a 404, never a 200 that breaks off. It is
sent with exactly the stored Content-Type (Starlette would add `charset=utf-8` to a `text/*` type without
one, mislabelling a Windows-1252 or UTF-16 CSV), and a HEAD answers its headers without reading a byte.
"""

from __future__ import annotations

import re
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Header, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.background import BackgroundTask

from medialens_gateway.deps import AppSettings, CurrentTenant, DbSession, Files
from medialens_gateway.edge import is_head
from medialens_gateway.envelope import ok
from medialens_gateway.files import service
from medialens_gateway.files.uploads import read_upload
from medialens_gateway.openapi import LOCATION, Envelope, ErrorEnvelope, FileObject, Page, errors
from medialens_gateway.pagination import Cursor, Limit, next_cursor
from medialens_shared.errors import PayloadTooLarge, RangeNotSatisfiable

router = APIRouter(prefix="/v1/files", tags=["files"], responses=errors(401, 404, 422, 500))

_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$", re.IGNORECASE)

UPLOAD_BODY: dict[str, Any] = {
    "parameters": [
        {
            "name": "X-Filename",
            "in": "header",
            "required": False,
            "description": "A raw body's file name, as UTF-8 (a path is reduced to its last part); "
            "`upload` when none is given. A multipart part names its file itself.",
            "schema": {"type": "string"},
        }
    ],
    "requestBody": {
        "required": True,
        "description": "The file: a multipart form with the field `file`, or the raw bytes with their "
        "Content-Type (and an optional `X-Filename` header).",
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {"file": {"type": "string", "format": "binary"}},
                    "required": ["file"],
                }
            },
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
            # Any other type is a raw body too, stored with that type (`text/csv`, `audio/wav`).
            "*/*": {"schema": {"type": "string", "format": "binary"}},
        },
    },
}


@router.post(
    "",
    status_code=201,
    openapi_extra=UPLOAD_BODY,
    summary="Upload a file (streamed)",
    response_model=Envelope[FileObject],
    responses={201: {"headers": LOCATION}, **errors(413)},
)
async def upload_file(
    request: Request, tenant: CurrentTenant, session: DbSession, store: Files, settings: AppSettings
) -> JSONResponse:
    limit = settings.gateway.max_upload_bytes
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit + 64 * 1024:  # room for multipart framing
        raise PayloadTooLarge(f"The upload is larger than the limit of {limit} bytes; send a smaller file.")
    upload = await read_upload(request)
    row = await service.store_upload(
        session, store=store, tenant_id=tenant.id, upload=upload, max_bytes=limit
    )
    return ok(service.file_view(row), status_code=201, headers={"Location": f"/v1/files/{row['id']}"})


@router.get("", summary="List the tenant's files, newest first", response_model=Envelope[Page[FileObject]])
async def list_files(
    tenant: CurrentTenant, session: DbSession, limit: Limit = 50, cursor: Cursor = None
) -> JSONResponse:
    rows = await service.list_files(session, tenant_id=tenant.id, limit=limit, cursor=cursor)
    items = [service.file_view(row) for row in rows[:limit]]
    return ok({"items": items, "next_cursor": next_cursor(rows, limit=limit, listing="files")})


@router.get("/{file_id}", summary="The file object", response_model=Envelope[FileObject])
async def get_file(file_id: str, tenant: CurrentTenant, session: DbSession) -> JSONResponse:
    return ok(service.file_view(await service.get_file(session, tenant_id=tenant.id, file_id=file_id)))


#: The bytes of a download, of whatever type the file was stored with (its `Content-Type` is sent as is).
_BYTES: dict[str, Any] = {"*/*": {"schema": {"type": "string", "format": "binary"}}}
_DOWNLOAD_HEADERS: dict[str, Any] = {
    "Content-Type": {
        "description": "The Content-Type the file was stored with.",
        "schema": {"type": "string"},
    },
    "Content-Length": {"schema": {"type": "integer"}},
    "Content-Disposition": {
        "description": "`attachment` with the file's name (`filename*` for a name that is not plain ASCII).",
        "schema": {"type": "string"},
    },
    "Accept-Ranges": {
        "description": "`bytes`: a single byte range may be asked for.",
        "schema": {"type": "string"},
    },
    "ETag": {
        "description": "The file's SHA-256 in quotes: a file never changes, so this tag never does either.",
        "schema": {"type": "string"},
    },
}


@router.get(
    "/{file_id}/content",
    summary="The file's bytes, streamed; honours Range",
    response_class=StreamingResponse,
    responses={
        200: {"description": "The whole file", "content": _BYTES, "headers": _DOWNLOAD_HEADERS},
        206: {
            "description": "The byte range asked for",
            "content": _BYTES,
            "headers": {
                **_DOWNLOAD_HEADERS,
                "Content-Range": {"description": "`bytes start-end/size`", "schema": {"type": "string"}},
            },
        },
        304: {
            "description": "The file is the one `If-None-Match` names: no body (only its `ETag`).",
            "headers": {"ETag": _DOWNLOAD_HEADERS["ETag"]},
        },
        416: {
            "model": ErrorEnvelope,
            "description": "VALIDATION_ERROR: a Range the file cannot serve (`Content-Range: bytes */size`).",
        },
    },
)
async def get_content(
    file_id: str,
    request: Request,
    tenant: CurrentTenant,
    session: DbSession,
    store: Files,
    range_: Annotated[
        str | None,
        Header(
            alias="Range",
            description="One byte range (`bytes=0-1023`, `bytes=1024-`, `bytes=-512`): answered 206 with "
            "those bytes. Several ranges, or another unit, get the whole file (200).",
        ),
    ] = None,
    if_range: Annotated[
        str | None,
        Header(
            alias="If-Range",
            description="The `ETag` a download was begun with: the Range is served only if it is still this "
            "file's (else the whole file, 200). A date never matches (the file states none).",
        ),
    ] = None,
    if_none_match: Annotated[
        str | None,
        Header(
            alias="If-None-Match",
            description="`ETag`s already held (or `*`): 304 without a body when this file's is among them.",
        ),
    ] = None,
) -> Response:
    # The file's bytes, with its SHA-256 as a strong `ETag` (a file never changes): a client that holds
    # them asks again with `If-None-Match` and gets a 304 without them; a download resumed with `Range`
    # and `If-Range` gets the rest only from the same file (RFC 9110 13.1.5). A comment, not a docstring:
    # FastAPI would publish a docstring as the operation's description.
    row = await service.get_file(session, tenant_id=tenant.id, file_id=file_id)
    size = row["size_bytes"]
    start, end, status = 0, size - 1, 200
    etag = f'"{row["sha256"]}"'
    if if_none_match is not None and _held(if_none_match, etag):
        return Response(status_code=304, headers={"ETag": etag})
    headers = {
        "Accept-Ranges": "bytes",
        "Content-Disposition": content_disposition(row["filename"]),
        "Content-Type": row["content_type"],
        "ETag": etag,
    }
    if range_ and _served(range_) and (if_range is None or if_range.strip() == etag):
        start, end = _parse_range(range_, size)
        status = 206
        headers["Content-Range"] = f"bytes {start}-{end}/{size}"
    headers["Content-Length"] = str(max(end - start + 1, 0))
    download = await service.open_content(store, row, start=start, end=end)
    if is_head(request.scope):
        await download.close()
        return Response(status_code=status, headers=headers)
    # Closed after the body, and also when the body was never started (a client gone before the status
    # line): `chunks` closes it only when iterated.
    return StreamingResponse(
        download.chunks(), status_code=status, headers=headers, background=BackgroundTask(download.close)
    )


def _held(if_none_match: str, etag: str) -> bool:
    """Whether an `If-None-Match` list names `etag`, compared weakly (`W/` ignored), or is `*`."""
    tags = [tag.strip().removeprefix("W/") for tag in if_none_match.split(",")]
    return "*" in tags or etag in tags


def _served(spec: str) -> bool:
    """Whether a Range is one this gateway answers: a single byte range. RFC 9110 has a server ignore a
    range unit it does not know, and lets it ignore any Range: several ranges get the whole file (200),
    not multipart/byteranges."""
    unit, _, ranges = spec.strip().partition("=")
    return unit.strip().lower() == "bytes" and "," not in ranges


#: Digits past which a Range position is larger than any file (2**63 has 19): read as this bound instead.
_POSITION_DIGITS = 20


def _position(digits: str) -> int:
    """A Range position, any number of digits long. Python refuses to read more than 4,300 digits as an int
    (a `bytes=0-999...` of 5,000 nines was a 500); a position that long is past the end of any file, and
    RFC 9110 has a last position past the end read as the end, so the bound serves as well."""
    digits = digits.lstrip("0") or "0"
    return int(digits) if len(digits) < _POSITION_DIGITS else 10**_POSITION_DIGITS


def _parse_range(spec: str, size: int) -> tuple[int, int]:
    match = _RANGE.match(spec.strip())
    if match and (match[1] or match[2]):
        if match[1]:
            start = _position(match[1])
            end = min(_position(match[2]), size - 1) if match[2] else size - 1
        else:
            start, end = max(size - _position(match[2]), 0), size - 1
        if start <= end < size:
            return start, end
    raise RangeNotSatisfiable(
        f"Range {spec!r} cannot be served from a file of {size} bytes; use bytes=start-end.",
        size=size,
        details=[{"loc": ["header", "range"], "msg": "unsatisfiable range", "type": "value_error"}],
    )


@router.delete("/{file_id}", summary="Delete a file", response_model=Envelope[dict[str, Any]])
async def delete_file(file_id: str, tenant: CurrentTenant, session: DbSession, store: Files) -> JSONResponse:
    await service.delete_file(session, store=store, tenant_id=tenant.id, file_id=file_id)
    return ok({"id": file_id, "deleted": True})


#: What may stand in a quoted `filename="..."` as it is: printable ASCII but the quote and the backslash.
_PLAIN_NAME = re.compile(r"[ !#-\[\]-~]*")


def content_disposition(filename: str) -> str:
    """An attachment header for any stored name (RFC 6266): a name of plain ASCII as it is; any other with
    an ASCII stand-in (`_` for each other character) in `filename` and the name itself, UTF-8 and
    percent-encoded, in `filename*`, which browsers and HTTP clients prefer. Header values are Latin-1, so
    writing the name as it is failed (a 500) for most names in other scripts."""
    if _PLAIN_NAME.fullmatch(filename):
        return f'attachment; filename="{filename}"'
    fallback = "".join(c if _PLAIN_NAME.fullmatch(c) else "_" for c in filename)
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(filename, safe='')}"
