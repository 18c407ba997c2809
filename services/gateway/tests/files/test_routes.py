"""`/v1/files`: upload (multipart and raw), read, download with Range, delete, and list with cursors."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from urllib.parse import unquote

import httpx
import pytest

from scripts.samples import make_csv

from ..conftest import EnvelopeCheck

BLOB = bytes(range(256)) * 40 + b"tail-bytes"  # 10250 bytes with a recognisable end


async def _raw_upload(client: httpx.AsyncClient, data: bytes, **headers: str) -> dict:
    response = await client.post("/v1/files", content=data, headers=headers)
    assert response.status_code == 201, response.text
    return response.json()["data"]


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


@pytest.mark.parametrize("name", ["日本語 (q).csv", "emoji😀.wav", "Ωmega.csv", "back\\slash.txt"])
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


async def test_empty_file_round_trips(api: httpx.AsyncClient) -> None:
    """An empty upload has size 0, the SHA-256 of nothing, and downloads as zero bytes."""
    file = await _raw_upload(api, b"", **{"Content-Type": "text/plain"})
    assert file["size_bytes"] == 0
    assert file["sha256"] == hashlib.sha256(b"").hexdigest()
    response = await api.get(f"/v1/files/{file['id']}/content")
    assert response.status_code == 200
    assert response.content == b""


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
