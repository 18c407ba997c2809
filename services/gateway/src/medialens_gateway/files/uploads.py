"""Read an upload from the request body as a stream of chunks, multipart or raw, never whole.

Starlette's `request.form()` would spool the file to a temporary file before we see it; instead the body is
pushed through python-multipart's streaming parser, and the bytes of the `file` field are handed on as they
arrive, so the gateway's memory stays one chunk deep whatever the upload's size.

What the client says of the file is kept as it meant it: the Content-Type's `charset` (a Windows-1252 or
UTF-16 CSV is labelled so again when downloaded), and the name as text (`X-Filename`'s raw bytes read as
UTF-8, as clients send them, and a part's RFC 8187 `filename*`), reduced to its last part: a name is never
a path (`../../etc/passwd`, `C:\\Users\\me\\t.csv`) to anyone who later saves the download under it.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import AsyncIterator
from dataclasses import dataclass
from urllib.parse import unquote_to_bytes

from fastapi import Request
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from medialens_shared.errors import RequestValidationFailed

FILE_FIELD = "file"
#: The name of an upload that has none (or whose name is no file's name, such as `..`).
NO_NAME = "upload"

#: A media type as RFC 9110 writes one (`type/subtype`, both tokens), safe to send back in a header.
_MEDIA_TYPE = re.compile(r"[a-z0-9!#$%&'*+.^_`|~-]+/[a-z0-9!#$%&'*+.^_`|~-]+")
#: A charset's name as RFC 2978 writes one, which is safe to store and to send back in a header.
_CHARSET = re.compile(r"[a-z0-9!#$%&'+^_`{}~-]{1,40}")
#: One `; key=value` parameter of a header, its value a quoted string (which may hold `;`) or a token.
_PARAM = re.compile(rb';\s*([^\s=;]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;]*)')
#: The charsets RFC 8187 has a recipient read an extended parameter in.
_EXT_CHARSETS = frozenset({"utf-8", "iso-8859-1"})


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
    """The uploaded file of `request`: the `file` field of a multipart form, or else the raw body.

    A request with neither a Content-Type nor a body (`curl -X POST` without `-F`) sent no file: a 422
    saying how to send one, where it stored an empty file named `upload`; a chunked body is read up to its
    first byte to tell (one of no chunks was stored so). An empty file sent as one (a raw body of no bytes
    with its Content-Type, or a form's empty `file`) is stored as it is.
    """
    headers = request.headers
    untyped = "content-type" not in headers
    if untyped and headers.get("content-length", "0").strip() == "0" and "transfer-encoding" not in headers:
        raise _bad(_NO_FILE)
    content_type = headers.get("content-type", "application/octet-stream")
    mime, options = parse_options_header(content_type)
    if mime == b"multipart/form-data":
        boundary = options.get(b"boundary")
        if not boundary:
            raise _bad("The multipart body has no boundary in its Content-Type.")
        return await _multipart_upload(request.stream(), boundary)
    filename = base_name(_text(request.headers.get("x-filename", "").encode("latin-1")))
    chunks = await _not_empty(request.stream()) if untyped else request.stream()
    return Upload(filename=filename, content_type=stored_type(content_type), chunks=chunks)


_NO_FILE = (
    "The request holds no file: send a multipart form with the field `file`, or the file's bytes as the "
    "body with their Content-Type."
)


async def _not_empty(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """`chunks`, read up to the first byte: a 422 when they end before one."""
    async for chunk in chunks:
        if chunk:
            return _following(chunk, chunks)
    raise _bad(_NO_FILE)


async def _following(first: bytes, rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    yield first
    async for chunk in rest:
        yield chunk


def stored_type(content_type: str | bytes) -> str:
    """The Content-Type a file keeps: its media type and, when the client gave one, its `charset`
    (lower-cased, `text/csv; charset=windows-1252`), which a text file's bytes cannot be read without;
    other parameters are dropped."""
    mime, options = parse_options_header(content_type)
    media_type = mime.decode("latin-1").lower()
    if not _MEDIA_TYPE.fullmatch(media_type):  # none, or not one a header may carry back (`text/\x01csv`)
        media_type = "application/octet-stream"
    charset = options.get(b"charset", b"").decode("latin-1").strip().lower()
    return f"{media_type}; charset={charset}" if _CHARSET.fullmatch(charset) else media_type


#: The longest file name kept, in characters (about what file systems and browsers take); a longer one keeps
#: its extension.
FILENAME_MAX = 255


def base_name(name: str) -> str:
    """The last part of a file name that may be a path, split at `/` and at `\\` (which Windows clients
    send), without control characters and at most `FILENAME_MAX` long; `upload` when no name is left.

    A NUL (`filename*=UTF-8''a%00b.csv`) reached PostgreSQL, whose text refuses it: a 500 once the whole
    upload had been streamed; a name had no bound.
    """
    last = name.replace("\\", "/").rpartition("/")[2]
    last = "".join(char for char in last if unicodedata.category(char) != "Cc")
    if len(last) > FILENAME_MAX:
        stem, dot, extension = last.rpartition(".")
        kept = dot + extension if stem and len(extension) <= 16 else ""
        last = last[: FILENAME_MAX - len(kept)] + kept
    return NO_NAME if last.strip() in ("", ".", "..") else last


def _text(raw: bytes) -> str:
    """Header bytes as text: UTF-8, as clients write non-ASCII names, else Latin-1 (HTTP's old default)."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def _extended_filename(disposition: bytes) -> str | None:
    """A Content-Disposition's `filename*` (RFC 8187: `UTF-8''caf%C3%A9.csv`), decoded; None when it has
    none or one that does not decode. RFC 7578 asks senders of forms not to use it (python-multipart skips
    it), but some do, and then often send no plain `filename`."""
    for key, value in _PARAM.findall(disposition):
        if key.lower() != b"filename*":
            continue
        charset, _, rest = value.strip(b'"').decode("latin-1").partition("'")
        encoded = rest.partition("'")[2]
        if charset.lower() not in _EXT_CHARSETS:
            return None
        try:
            return unquote_to_bytes(encoded).decode(charset)
        except UnicodeDecodeError:
            return None
    return None


class _FilePart:
    """Collects the callbacks of python-multipart for the one part named `file`."""

    def __init__(self) -> None:
        self.pending: list[bytes] = []
        self.header_field = bytearray()
        self.header_value = bytearray()
        self.headers: dict[str, bytes] = {}
        self.inside = False
        self.finished = False
        self.filename = NO_NAME
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
        raw_disposition = self.headers.get("content-disposition", b"")
        _, disposition = parse_options_header(raw_disposition)
        if disposition.get(b"name") == FILE_FIELD.encode() and not self.finished:
            self.inside = True
            # `filename*` is preferred to `filename` when a part has both, as RFC 6266 has it.
            name = _extended_filename(raw_disposition) or _text(disposition.get(b"filename", b""))
            self.filename = base_name(name)
            self.content_type = stored_type(self.headers.get("content-type", b"application/octet-stream"))

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
