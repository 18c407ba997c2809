"""Read an upload from the request body as a stream of chunks, multipart or raw, never whole.

Starlette's `request.form()` would spool the file to a temporary file before we see it; instead the body is
pushed through python-multipart's streaming parser, and the bytes of the `file` field are handed on as they
arrive, so the gateway's memory stays one chunk deep whatever the upload's size.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

from fastapi import Request
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from medialens_shared.errors import RequestValidationFailed

FILE_FIELD = "file"


@dataclass(slots=True)
class Upload:
    filename: str
    content_type: str
    chunks: AsyncIterator[bytes]


def _bad(message: str) -> RequestValidationFailed:
    return RequestValidationFailed(
        message, details=[{"loc": ["body", FILE_FIELD], "msg": message, "type": "value_error"}]
    )


async def read_upload(request: Request) -> Upload:
    """The uploaded file of `request`: the `file` field of a multipart form, or else the raw body."""
    content_type = request.headers.get("content-type", "application/octet-stream")
    mime, options = parse_options_header(content_type)
    if mime == b"multipart/form-data":
        boundary = options.get(b"boundary")
        if not boundary:
            raise _bad("The multipart body has no boundary in its Content-Type.")
        return await _multipart_upload(request.stream(), boundary)
    filename = request.headers.get("x-filename") or "upload"
    return Upload(filename=filename, content_type=mime.decode("latin-1"), chunks=request.stream())


class _FilePart:
    """Collects the callbacks of python-multipart for the one part named `file`."""

    def __init__(self) -> None:
        self.pending: list[bytes] = []
        self.header_field = bytearray()
        self.header_value = bytearray()
        self.headers: dict[str, bytes] = {}
        self.inside = False
        self.finished = False
        self.filename = ""
        self.content_type = "application/octet-stream"

    def on_part_begin(self) -> None:
        self.headers = {}

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self.header_field += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self.header_value += data[start:end]

    def on_header_end(self) -> None:
        self.headers[self.header_field.decode("latin-1").lower()] = bytes(self.header_value)
        self.header_field.clear()
        self.header_value.clear()

    def on_headers_finished(self) -> None:
        _, disposition = parse_options_header(self.headers.get("content-disposition", b""))
        if disposition.get(b"name") == FILE_FIELD.encode() and not self.finished:
            self.inside = True
            self.filename = disposition.get(b"filename", b"upload").decode("utf-8", "replace") or "upload"
            part_type = self.headers.get("content-type", b"application/octet-stream")
            self.content_type = parse_options_header(part_type)[0].decode("latin-1")

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self.inside:
            self.pending.append(bytes(data[start:end]))

    def on_part_end(self) -> None:
        if self.inside:
            self.inside = False
            self.finished = True

    def take(self) -> list[bytes]:
        taken, self.pending = self.pending, []
        return taken


async def _multipart_upload(body: AsyncIterator[bytes], boundary: bytes) -> Upload:
    part = _FilePart()
    parser = MultipartParser(
        boundary,
        callbacks={
            "on_part_begin": part.on_part_begin,
            "on_header_field": part.on_header_field,
            "on_header_value": part.on_header_value,
            "on_header_end": part.on_header_end,
            "on_headers_finished": part.on_headers_finished,
            "on_part_data": part.on_part_data,
            "on_part_end": part.on_part_end,
        },
    )

    def feed(chunk: bytes) -> None:
        try:
            parser.write(chunk)
        except MultipartParseError as exc:
            raise _bad(f"The multipart body is malformed: {exc}") from exc

    async for chunk in body:  # read until the file part's headers are known
        feed(chunk)
        if part.inside or part.finished:
            break
    if not (part.inside or part.finished):
        raise _bad(f"The multipart form has no `{FILE_FIELD}` field with the file.")

    async def chunks() -> AsyncIterator[bytes]:
        for piece in part.take():
            yield piece
        while not part.finished:
            chunk = await anext(body, None)
            if chunk is None:
                raise _bad("The multipart body ended before the file part did.")
            feed(chunk)
            for piece in part.take():
                yield piece

    return Upload(filename=part.filename, content_type=part.content_type, chunks=chunks())
