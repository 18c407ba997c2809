"""`/v1/files`: upload (multipart and raw), read, download with Range, delete, and list with cursors."""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import httpx
import pytest
from bson import ObjectId
from gridfs import AsyncGridFSBucket
from pymongo import AsyncMongoClient
from sqlalchemy import select

from medialens_gateway.deps import registered
from medialens_shared.db import DatabaseManager
from medialens_shared.filestore import FileStore
from medialens_shared.tables import files
from scripts.samples import make_csv
from tests.fixtures.stack import Stack

from ..conftest import EnvelopeCheck

BLOB = bytes(range(256)) * 40 + b"tail-bytes"  # 10250 bytes with a recognisable end


async def _raw_upload(client: httpx.AsyncClient, data: bytes, **headers: str | bytes) -> dict:
    response = await client.post("/v1/files", content=data, headers=headers)
    assert response.status_code == 201, response.text
    return response.json()["data"]


async def _storage_id(db: DatabaseManager, file_id: str) -> str:
    """Where GridFS keeps the bytes of the file `file_id`."""
    async with db.session() as session:
        found = await session.execute(select(files.c.storage_id).where(files.c.id == file_id))
        storage_id: str = found.scalar_one()
        return storage_id


@contextlib.asynccontextmanager
async def mongodb_away(stack: Stack) -> AsyncIterator[None]:
    """While open, the gateway's file store talks to a MongoDB where nothing listens (port 1): the files'
    rows are still in PostgreSQL, their bytes out of reach."""
    store = registered(stack.app, FileStore)
    bucket = store.bucket
    away: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        "mongodb://127.0.0.1:1/", serverSelectionTimeoutMS=300, connectTimeoutMS=300, connect=False
    )
    store.bucket = AsyncGridFSBucket(away["medialens"])
    try:
        yield
    finally:
        store.bucket = bucket
        await away.close()


async def test_multipart_upload_gives_the_file_object(
    api: httpx.AsyncClient, tmp_path: Path, envelope: EnvelopeCheck
) -> None:
    """A multipart upload answers 201 with the file's name, type, size, SHA-256 and a Location."""
    path = tmp_path / "table.csv"
    make_csv(path, rows=50)
    data = path.read_bytes()
    response = await api.post("/v1/files", files={"file": ("table.csv", data, "text/csv")})
    body = envelope(response, status=201)
    file = body["data"]
    assert file["filename"] == "table.csv"
    assert file["content_type"] == "text/csv"
    assert file["size_bytes"] == len(data)
    assert file["sha256"] == hashlib.sha256(data).hexdigest()
    assert file["kind"] == "table"
    assert response.headers["location"] == f"/v1/files/{file['id']}"
    fetched = envelope(await api.get(f"/v1/files/{file['id']}"), status=200)["data"]
    assert fetched == file


async def test_multipart_upload_ignores_other_fields(api: httpx.AsyncClient) -> None:
    """Form fields other than `file`, before and after it, do not end up in the stored bytes."""
    data = os.urandom(3000)
    response = await api.post(
        "/v1/files",
        data={"note": "first", "zzz": "last"},
        files={"file": ("blob.bin", data, "application/octet-stream")},
    )
    assert response.status_code == 201, response.text
    file = response.json()["data"]
    assert file["size_bytes"] == len(data)
    assert file["sha256"] == hashlib.sha256(data).hexdigest()
    content = await api.get(f"/v1/files/{file['id']}/content")
    assert content.content == data


async def test_raw_upload_takes_type_and_filename_from_headers(api: httpx.AsyncClient) -> None:
    """A raw-body upload stores its Content-Type and X-Filename with the right size and SHA-256."""
    file = await _raw_upload(api, BLOB, **{"Content-Type": "image/x-test", "X-Filename": "blob.raw"})
    assert (file["filename"], file["content_type"]) == ("blob.raw", "image/x-test")
    assert file["size_bytes"] == len(BLOB)
    assert file["sha256"] == hashlib.sha256(BLOB).hexdigest()
    assert file["kind"] == "unknown"


async def test_raw_upload_without_filename_is_named_upload(api: httpx.AsyncClient) -> None:
    """A raw upload without X-Filename is named `upload`."""
    file = await _raw_upload(api, b"abc", **{"Content-Type": "application/octet-stream"})
    assert file["filename"] == "upload"


async def test_content_streams_back_identical_bytes(api: httpx.AsyncClient) -> None:
    """GET content answers the very bytes uploaded, with the stored Content-Type and length."""
    file = await _raw_upload(api, BLOB, **{"Content-Type": "image/x-test", "X-Filename": "b.raw"})
    response = await api.get(f"/v1/files/{file['id']}/content")
    assert response.status_code == 200
    assert response.content == BLOB
    assert response.headers["content-type"] == "image/x-test"
    assert response.headers["content-length"] == str(len(BLOB))
    assert response.headers["accept-ranges"] == "bytes"
    assert 'filename="b.raw"' in response.headers["content-disposition"]


@pytest.mark.parametrize("name", ["日本語 (q).csv", "emoji😀.wav", "Ωmega.csv"])
async def test_content_of_a_file_named_in_any_script_downloads_under_its_name(
    api: httpx.AsyncClient, name: str
) -> None:
    """A name that is not plain ASCII (multipart uploads carry UTF-8) comes back in `filename*` (RFC 6266),
    exactly, with an ASCII stand-in in `filename`; writing it as it was into the Latin-1 header was a 500."""
    response = await api.post("/v1/files", files={"file": (name, BLOB, "application/octet-stream")})
    assert response.status_code == 201, response.text
    content = await api.get(f"/v1/files/{response.json()['data']['id']}/content")
    assert content.status_code == 200, content.text
    assert content.content == BLOB
    disposition = content.headers["content-disposition"]
    fallback, _, encoded = disposition.partition("; filename*=UTF-8''")
    assert unquote(encoded) == name
    assert fallback.startswith('attachment; filename="')
    assert fallback.isascii()


async def test_raw_upload_reads_x_filename_as_utf8(api: httpx.AsyncClient) -> None:
    """X-Filename's raw bytes are read as UTF-8 (`café.csv`, not `cafÃ©.csv`), else as Latin-1, and the name
    downloads as it was sent."""
    utf8 = await _raw_upload(api, b"a\n", **{"Content-Type": "text/csv", "X-Filename": "café.csv".encode()})
    assert utf8["filename"] == "café.csv"
    latin1 = await _raw_upload(api, b"a\n", **{"X-Filename": "naïve.csv".encode("latin-1")})
    assert latin1["filename"] == "naïve.csv"
    content = await api.get(f"/v1/files/{utf8['id']}/content")
    assert unquote(content.headers["content-disposition"].partition("filename*=UTF-8''")[2]) == "café.csv"


@pytest.mark.parametrize(
    ("sent", "kept"),
    [
        ("../../etc/passwd", "passwd"),
        ("..\\..\\windows\\win.ini", "win.ini"),
        ("C:\\Users\\me\\t.csv", "t.csv"),
        ("/abs/dir/table.csv", "table.csv"),
        ("back\\slash.txt", "slash.txt"),
        ("dir/..", "upload"),
        ("dir/", "upload"),
    ],
)
@pytest.mark.parametrize("how", ["raw", "multipart"])
async def test_an_uploads_name_is_reduced_to_its_base_name(
    api: httpx.AsyncClient, how: str, sent: str, kept: str
) -> None:
    """A name sent as a path, with `/` or `\\`, raw (X-Filename) or in a form, is stored as its last part
    (`upload` when none is left), so no download is named `../../etc/passwd`."""
    if how == "raw":
        file = await _raw_upload(api, b"x", **{"X-Filename": sent})
    else:
        response = await api.post("/v1/files", files={"file": (sent, b"x", "application/octet-stream")})
        assert response.status_code == 201, response.text
        file = response.json()["data"]
    assert file["filename"] == kept
    content = await api.get(f"/v1/files/{file['id']}/content")
    assert content.headers["content-disposition"] == f'attachment; filename="{kept}"'


@pytest.mark.parametrize(
    ("declared", "stored", "encoding"),
    [
        ("text/csv; charset=windows-1252", "text/csv; charset=windows-1252", "cp1252"),
        ('Text/CSV; Charset="ISO-8859-1"', "text/csv; charset=iso-8859-1", "latin-1"),
        ("text/plain; charset=UTF-16; format=flowed", "text/plain; charset=utf-16", "utf-16"),
    ],
)
@pytest.mark.parametrize("how", ["raw", "multipart"])
async def test_a_text_upload_keeps_its_charset(
    api: httpx.AsyncClient, how: str, declared: str, stored: str, encoding: str
) -> None:
    """A text upload's charset is kept (normalised, other parameters dropped) in its content_type, and the
    download says it again, so a Windows-1252, Latin-1 or UTF-16 CSV is not labelled UTF-8; its kind
    still comes from its content."""
    data = "name;price\nJosé;5\nZoë;7\n".encode(encoding)
    if how == "raw":
        file = await _raw_upload(api, data, **{"Content-Type": declared})
    else:
        response = await api.post("/v1/files", files={"file": ("t.csv", data, declared)})
        assert response.status_code == 201, response.text
        file = response.json()["data"]
    assert (file["content_type"], file["kind"]) == (stored, "table")
    content = await api.get(f"/v1/files/{file['id']}/content")
    assert content.headers["content-type"] == stored
    assert content.content == data


async def test_a_text_file_without_charset_downloads_with_its_type_as_stored(api: httpx.AsyncClient) -> None:
    """A `text/*` file stored without a charset downloads with exactly that Content-Type: no `charset=utf-8`
    is added to it."""
    file = await _raw_upload(api, "a;b\nJosé;1\n".encode("cp1252"), **{"Content-Type": "text/csv"})
    assert file["content_type"] == "text/csv"
    for response in (
        await api.get(f"/v1/files/{file['id']}/content"),
        await api.get(f"/v1/files/{file['id']}/content", headers={"Range": "bytes=0-1"}),
        await api.head(f"/v1/files/{file['id']}/content"),
    ):
        assert response.headers["content-type"] == "text/csv"


@pytest.mark.parametrize("method", ["GET", "HEAD"])
@pytest.mark.parametrize("spec", [None, "bytes=5-"])
async def test_content_with_mongodb_away_is_503_before_any_byte(
    stack: Stack, api: httpx.AsyncClient, envelope: EnvelopeCheck, method: str, spec: str | None
) -> None:
    """With MongoDB unreachable, a download (whole or ranged, GET or HEAD) answers 503 SERVICE_UNAVAILABLE
    with Retry-After, not a 200 whose body then breaks off; the file's row still answers."""
    file = await _raw_upload(api, BLOB, **{"Content-Type": "application/octet-stream"})
    async with mongodb_away(stack):
        headers = {"Range": spec} if spec else {}
        response = await api.request(method, f"/v1/files/{file['id']}/content", headers=headers)
        assert response.status_code == 503, response.text
        assert response.headers["retry-after"]
        if method == "GET":
            body = envelope(response, status=503, error_code="SERVICE_UNAVAILABLE")
            assert "MongoDB" in body["message"]
        assert (await api.get(f"/v1/files/{file['id']}")).status_code == 200


async def test_content_whose_bytes_are_gone_is_404(
    stack: Stack, api: httpx.AsyncClient, db: DatabaseManager, envelope: EnvelopeCheck
) -> None:
    """A file whose bytes left GridFS after its row was read (a DELETE racing the download) answers 404
    NOT_FOUND, not a 200 that breaks off."""
    file = await _raw_upload(api, BLOB, **{"Content-Type": "application/octet-stream"})
    await registered(stack.app, FileStore).delete(await _storage_id(db, file["id"]))
    for headers in ({}, {"Range": "bytes=10-"}):
        response = await api.get(f"/v1/files/{file['id']}/content", headers=headers)
        envelope(response, status=404, error_code="NOT_FOUND")


@pytest.mark.parametrize(
    ("spec", "status", "length", "content_range"),
    [(None, 200, 3 * 1024 * 1024, None), ("bytes=1048570-1048579", 206, 10, "bytes 1048570-1048579/3145728")],
)
async def test_head_on_content_reads_none_of_its_bytes(
    api: httpx.AsyncClient,
    db: DatabaseManager,
    spec: str | None,
    status: int,
    length: int,
    content_range: str | None,
) -> None:
    """HEAD answers a download's status, Content-Length, Content-Range and type without reading a byte of the
    file: with its chunks gone from GridFS (GET could not send them), HEAD still answers in full."""
    file = await _raw_upload(api, os.urandom(3 * 1024 * 1024), **{"Content-Type": "video/mp4"})
    chunks = db.collection("fs.chunks")
    await chunks.delete_many({"files_id": ObjectId(await _storage_id(db, file["id"]))})
    response = await api.head(f"/v1/files/{file['id']}/content", headers={"Range": spec} if spec else {})
    assert response.status_code == status
    assert response.headers["content-length"] == str(length)
    assert response.headers.get("content-range") == content_range
    assert response.headers["content-type"] == "video/mp4"
    assert response.content == b""


async def test_empty_file_round_trips(api: httpx.AsyncClient) -> None:
    """An empty upload has size 0, the SHA-256 of nothing, and downloads as zero bytes."""
    file = await _raw_upload(api, b"", **{"Content-Type": "text/plain"})
    assert file["size_bytes"] == 0
    assert file["sha256"] == hashlib.sha256(b"").hexdigest()
    response = await api.get(f"/v1/files/{file['id']}/content")
    assert response.status_code == 200
    assert response.content == b""


async def test_a_request_without_a_file_is_422_and_stores_nothing(
    api: httpx.AsyncClient, envelope: EnvelopeCheck
) -> None:
    """A POST with no body and no Content-Type sent no file: 422 saying how to send one (an empty file
    named `upload` was stored), and the tenant's file list is as it was; so does a chunked body of no
    chunks (it was stored), while a chunked body with bytes and no Content-Type is a file."""

    async def chunked(*parts: bytes) -> AsyncIterator[bytes]:
        for part in parts:
            yield part

    before = (await api.get("/v1/files")).json()["data"]["items"]
    for response in (await api.post("/v1/files"), await api.post("/v1/files", content=chunked())):
        envelope(response, status=422, error_code="VALIDATION_ERROR")
        assert "holds no file" in response.json()["message"]
    assert (await api.get("/v1/files")).json()["data"]["items"] == before
    stored = envelope(await api.post("/v1/files", content=chunked(b"", b"ab", b"c")), status=201)["data"]
    assert (await api.get(f"/v1/files/{stored['id']}/content")).content == b"abc"


@pytest.mark.parametrize(
    ("spec", "start", "end"),
    [
        ("bytes=0-9", 0, 9),
        ("BYTES=0-9", 0, 9),  # a range unit is case-insensitive
        ("bytes=10-", 10, len(BLOB) - 1),
        ("bytes=-5", len(BLOB) - 5, len(BLOB) - 1),
        ("bytes=100-199", 100, 199),
        ("bytes=10000-999999", 10000, len(BLOB) - 1),
        ("bytes=-999999", 0, len(BLOB) - 1),
    ],
)
async def test_range_gives_206_with_the_right_bytes(
    api: httpx.AsyncClient, spec: str, start: int, end: int
) -> None:
    """A satisfiable Range answers 206 with exactly those bytes and a matching Content-Range."""
    file = await _raw_upload(api, BLOB, **{"Content-Type": "application/octet-stream"})
    response = await api.get(f"/v1/files/{file['id']}/content", headers={"Range": spec})
    assert response.status_code == 206
    assert response.content == BLOB[start : end + 1]
    assert response.headers["content-range"] == f"bytes {start}-{end}/{len(BLOB)}"
    assert response.headers["content-length"] == str(end - start + 1)


@pytest.mark.parametrize("spec", ["bytes=20000-", "bytes=9-3", "bytes=-", "bytes=abc"])
async def test_unsatisfiable_range_is_416_in_the_envelope(
    api: httpx.AsyncClient, envelope: EnvelopeCheck, spec: str
) -> None:
    """A Range outside the file, reversed or malformed answers 416 in the envelope naming the header."""
    file = await _raw_upload(api, BLOB, **{"Content-Type": "application/octet-stream"})
    response = await api.get(f"/v1/files/{file['id']}/content", headers={"Range": spec})
    body = envelope(response, status=416, error_code="VALIDATION_ERROR")
    assert body["data"]["details"][0]["loc"] == ["header", "range"]
    assert str(len(BLOB)) in body["message"]
    assert response.headers["content-range"] == f"bytes */{len(BLOB)}"  # as RFC 9110 asks of a 416


@pytest.mark.parametrize("spec", ["items=0-1", "bytes=0-1,4-5"])
async def test_a_range_in_another_unit_or_of_several_parts_is_ignored(
    api: httpx.AsyncClient, spec: str
) -> None:
    """RFC 9110: a Range in a unit the server does not know MUST be ignored, and any Range MAY be: a unit
    other than bytes, and several ranges (which would need multipart/byteranges), get the whole file, 200
    (they were 416s)."""
    file = await _raw_upload(api, BLOB, **{"Content-Type": "application/octet-stream"})
    response = await api.get(f"/v1/files/{file['id']}/content", headers={"Range": spec})
    assert response.status_code == 200
    assert response.content == BLOB
    assert "content-range" not in response.headers


async def test_a_download_carries_the_files_sha256_as_its_etag(api: httpx.AsyncClient) -> None:
    """Every download, whole or a range, and its HEAD, carries the file's SHA-256 as a strong ETag; a
    client that holds the file (`If-None-Match` naming it, weakly too, or `*`) gets a 304 without a body,
    and the file otherwise (they had no tag to ask by)."""
    file = await _raw_upload(api, BLOB, **{"Content-Type": "application/octet-stream"})
    url, etag = f"/v1/files/{file['id']}/content", f'"{hashlib.sha256(BLOB).hexdigest()}"'
    for response in (
        await api.get(url),
        await api.get(url, headers={"Range": "bytes=0-9"}),
        await api.head(url),
    ):
        assert response.headers["etag"] == etag
    for held in (etag, f'"other", W/{etag}', "*"):
        response = await api.get(url, headers={"If-None-Match": held})
        assert (response.status_code, response.content, response.headers["etag"]) == (304, b"", etag)
    response = await api.get(url, headers={"If-None-Match": '"other"'})
    assert (response.status_code, response.content) == (200, BLOB)


@pytest.mark.parametrize(
    ("validator", "resumed"),
    [("{etag}", True), ('"0000"', False), ("W/{etag}", False), ("Sat, 29 Oct 1994 19:43:31 GMT", False)],
)
async def test_a_range_with_if_range_is_served_only_from_the_same_file(
    api: httpx.AsyncClient, validator: str, resumed: bool
) -> None:
    """RFC 9110 13.1.5: a Range sent with `If-Range` is served (206) only when the validator is this file's
    ETag, compared strongly; another tag, a weak one or a date (the file states none) gets the whole file
    (200), so a download resumed against a changed resource starts over rather than splice two files. The
    Range was served whatever `If-Range` said."""
    file = await _raw_upload(api, BLOB, **{"Content-Type": "application/octet-stream"})
    etag = f'"{hashlib.sha256(BLOB).hexdigest()}"'
    headers = {"Range": "bytes=100-", "If-Range": validator.format(etag=etag)}
    response = await api.get(f"/v1/files/{file['id']}/content", headers=headers)
    if resumed:
        assert (response.status_code, response.content) == (206, BLOB[100:])
    else:
        assert (response.status_code, response.content) == (200, BLOB)
        assert "content-range" not in response.headers


@pytest.mark.parametrize("digits", [20, 5000])
async def test_a_range_position_of_any_length_is_answered(
    api: httpx.AsyncClient, envelope: EnvelopeCheck, digits: int
) -> None:
    """A position longer than Python reads as an int (4,300 digits) was a 500. Past the end as a last
    position or a suffix it is the end (206, the whole file); as a first position, 416 in the envelope."""
    file = await _raw_upload(api, BLOB, **{"Content-Type": "application/octet-stream"})
    url, huge = f"/v1/files/{file['id']}/content", "9" * digits
    for spec in (f"bytes=0-{huge}", f"bytes=-{huge}", f"bytes=0-{'0' * digits}{len(BLOB) - 1}"):
        response = await api.get(url, headers={"Range": spec})
        assert response.status_code == 206, response.text
        assert response.content == BLOB
        assert response.headers["content-range"] == f"bytes 0-{len(BLOB) - 1}/{len(BLOB)}"
    response = await api.get(url, headers={"Range": f"bytes={huge}-"})
    envelope(response, status=416, error_code="VALIDATION_ERROR")
    assert response.headers["content-range"] == f"bytes */{len(BLOB)}"


async def test_range_on_empty_file_is_416(api: httpx.AsyncClient, envelope: EnvelopeCheck) -> None:
    """Any Range on an empty file answers 416."""
    file = await _raw_upload(api, b"", **{"Content-Type": "text/plain"})
    response = await api.get(f"/v1/files/{file['id']}/content", headers={"Range": "bytes=0-0"})
    envelope(response, status=416, error_code="VALIDATION_ERROR")


async def test_delete_then_reads_answer_404(api: httpx.AsyncClient, envelope: EnvelopeCheck) -> None:
    """DELETE answers 200; later the object, its content and a second delete answer 404."""
    file = await _raw_upload(api, b"bye", **{"Content-Type": "text/plain"})
    body = envelope(await api.delete(f"/v1/files/{file['id']}"), status=200)
    assert body["data"] == {"id": file["id"], "deleted": True}
    for response in (
        await api.get(f"/v1/files/{file['id']}"),
        await api.get(f"/v1/files/{file['id']}/content"),
        await api.delete(f"/v1/files/{file['id']}"),
    ):
        envelope(response, status=404, error_code="NOT_FOUND")
    listed = (await api.get("/v1/files", params={"limit": 200})).json()["data"]["items"]
    assert file["id"] not in {item["id"] for item in listed}


async def test_a_delete_with_mongodb_away_is_503_and_deletes_nothing(
    stack: Stack, api: httpx.AsyncClient, envelope: EnvelopeCheck
) -> None:
    """With MongoDB unreachable, DELETE answers 503 with Retry-After and the file stays whole (it was
    marked deleted first: the 503 said "retry" for a file gone, whose bytes stayed in GridFS for good);
    the retry once MongoDB is back deletes it."""
    file = await _raw_upload(api, BLOB, **{"Content-Type": "application/octet-stream"})
    async with mongodb_away(stack):
        response = await api.delete(f"/v1/files/{file['id']}")
        envelope(response, status=503, error_code="SERVICE_UNAVAILABLE")
        assert response.headers["retry-after"]
    assert (await api.get(f"/v1/files/{file['id']}/content")).content == BLOB
    envelope(await api.delete(f"/v1/files/{file['id']}"), status=200)
    envelope(await api.get(f"/v1/files/{file['id']}/content"), status=404, error_code="NOT_FOUND")


async def test_unknown_file_is_404(api: httpx.AsyncClient, envelope: EnvelopeCheck) -> None:
    """A file id that never existed answers 404 NOT_FOUND."""
    envelope(await api.get("/v1/files/0123456789abcdef"), status=404, error_code="NOT_FOUND")


async def test_list_is_newest_first_and_pages_without_gaps(
    fresh_client: httpx.AsyncClient, envelope: EnvelopeCheck
) -> None:
    """Paging with limit=2 walks every file once, newest first, and the last page has no cursor."""
    made = [(await _raw_upload(fresh_client, f"n{i}".encode()))["id"] for i in range(7)]
    seen: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        data = envelope(await fresh_client.get("/v1/files", params=params), status=200)["data"]
        assert len(data["items"]) <= 2
        seen += [item["id"] for item in data["items"]]
        pages += 1
        cursor = data["next_cursor"]
        if cursor is None:
            break
    assert seen == list(reversed(made))
    assert pages == 4
    whole = (await fresh_client.get("/v1/files")).json()["data"]
    assert [item["id"] for item in whole["items"]] == seen
    assert whole["next_cursor"] is None


async def test_exact_page_has_no_next_cursor(fresh_client: httpx.AsyncClient) -> None:
    """A list of exactly `limit` items answers them all and no next cursor."""
    for i in range(3):
        await _raw_upload(fresh_client, f"x{i}".encode())
    data = (await fresh_client.get("/v1/files", params={"limit": 3})).json()["data"]
    assert len(data["items"]) == 3
    assert data["next_cursor"] is None


@pytest.mark.parametrize("limit", [0, 201, -1, "many"])
async def test_limit_out_of_range_is_422(
    api: httpx.AsyncClient, envelope: EnvelopeCheck, limit: object
) -> None:
    """A limit outside 1..200 (or not a number) answers 422 naming the query parameter."""
    body = envelope(
        await api.get("/v1/files", params={"limit": limit}), status=422, error_code="VALIDATION_ERROR"
    )
    assert ["query", "limit"] in [detail["loc"] for detail in body["data"]["details"]]


@pytest.mark.parametrize("cursor", ["!!!garbage!!!", "bm90LWEtZGF0ZXxpZA", "%%%", "/w"])
async def test_garbage_cursor_is_422(api: httpx.AsyncClient, envelope: EnvelopeCheck, cursor: str) -> None:
    """A cursor this API did not give out answers 422 naming the cursor."""
    body = envelope(
        await api.get("/v1/files", params={"cursor": cursor}), status=422, error_code="VALIDATION_ERROR"
    )
    assert body["data"]["details"][0]["loc"] == ["query", "cursor"]
