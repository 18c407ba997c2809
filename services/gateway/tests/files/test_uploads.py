"""Uploads are streamed: an oversized body is refused while streaming, without holding it in memory."""

from __future__ import annotations

import hashlib
import os
import tracemalloc
from collections.abc import AsyncIterator

import httpx
import pytest
from prometheus_client import REGISTRY
from pymongo import AsyncMongoClient
from starlette.types import Message

from medialens_shared.settings import Settings
from tests.fixtures.servers import TENANT_KEYS
from tests.fixtures.stack import Stack

from ..conftest import EnvelopeCheck

MIB = 1024 * 1024
BOUNDARY = "medialens-test-boundary"


async def _ids(client: httpx.AsyncClient) -> list[str]:
    response = await client.get("/v1/files", params={"limit": 200})
    return [item["id"] for item in response.json()["data"]["items"]]


async def _gridfs_counts(settings: Settings, client: httpx.AsyncClient, *, filename: str) -> tuple[int, int]:
    """GridFS files named `filename`, and all GridFS files.

    An upload first makes the bucket exist: the nx-27017 dev server breaks GridFS writes when `fs.files` is
    queried before the bucket's first file, and it answers only plain finds on it.
    """
    warm = await client.post("/v1/files", content=b"warm-up", headers={"Content-Type": "text/plain"})
    assert warm.status_code == 201, warm.text
    assert (await client.delete(f"/v1/files/{warm.json()['data']['id']}")).status_code == 200
    mongo: AsyncMongoClient = AsyncMongoClient(settings.mongodb.url.get_secret_value())
    try:
        database = mongo[settings.mongodb.database]
        everything = await database["fs.files"].find({}).to_list()
        return sum(doc.get("filename") == filename for doc in everything), len(everything)
    finally:
        await mongo.close()


async def test_chunked_oversized_upload_is_413_without_buffering(
    fresh_client: httpx.AsyncClient, settings: Settings, envelope: EnvelopeCheck
) -> None:
    """A 64 MiB chunked raw upload is refused with 413, memory stays far below 64 MiB, nothing is stored."""
    piece = os.urandom(MIB)
    sent = 0

    async def body() -> AsyncIterator[bytes]:
        nonlocal sent
        for _ in range(64):
            sent += 1
            yield piece

    before_files = await _ids(fresh_client)
    name = f"huge-{os.urandom(4).hex()}.mp4"
    before_gridfs = await _gridfs_counts(settings, fresh_client, filename=name)
    assert before_gridfs[0] == 0
    tracemalloc.start()
    try:
        response = await fresh_client.post(
            "/v1/files", content=body(), headers={"Content-Type": "video/mp4", "X-Filename": name}
        )
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert "content-length" not in response.request.headers
    assert response.request.headers["transfer-encoding"] == "chunked"
    body_ = envelope(response, status=413, error_code="PAYLOAD_TOO_LARGE")
    assert str(settings.gateway.max_upload_bytes) in body_["message"]
    assert peak < 24 * MIB, f"peak {peak / MIB:.1f} MiB"
    assert sent < 64  # refused while streaming, not after reading everything
    assert await _ids(fresh_client) == before_files
    assert await _gridfs_counts(settings, fresh_client, filename=name) == before_gridfs


async def test_chunked_oversized_multipart_upload_is_413(
    fresh_client: httpx.AsyncClient, settings: Settings, envelope: EnvelopeCheck
) -> None:
    """A multipart upload streamed past the limit is refused with 413 and leaves no file behind."""
    piece = b"\x00" * MIB
    name = f"big-{os.urandom(4).hex()}.bin"

    async def body() -> AsyncIterator[bytes]:
        yield (
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        for _ in range(12):
            yield piece
        yield f"\r\n--{BOUNDARY}--\r\n".encode()

    before_gridfs = await _gridfs_counts(settings, fresh_client, filename=name)
    response = await fresh_client.post(
        "/v1/files", content=body(), headers={"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}
    )
    envelope(response, status=413, error_code="PAYLOAD_TOO_LARGE")
    assert await _ids(fresh_client) == []
    assert await _gridfs_counts(settings, fresh_client, filename=name) == before_gridfs


async def test_declared_oversized_upload_is_refused_before_reading(
    fresh_client: httpx.AsyncClient, envelope: EnvelopeCheck
) -> None:
    """A Content-Length over the limit is refused with 413 before a single body chunk is read."""
    pulled = 0

    async def body() -> AsyncIterator[bytes]:
        nonlocal pulled
        for _ in range(20):
            pulled += 1
            yield b"\x00" * MIB

    response = await fresh_client.post(
        "/v1/files",
        content=body(),
        headers={"Content-Type": "application/octet-stream", "Content-Length": str(20 * MIB)},
    )
    envelope(response, status=413, error_code="PAYLOAD_TOO_LARGE")
    assert pulled == 0
    assert await _ids(fresh_client) == []


async def test_upload_at_the_limit_is_accepted(fresh_client: httpx.AsyncClient, settings: Settings) -> None:
    """An upload of exactly the configured limit is stored whole."""
    data = os.urandom(settings.gateway.max_upload_bytes)
    response = await fresh_client.post(
        "/v1/files", content=data, headers={"Content-Type": "application/octet-stream"}
    )
    assert response.status_code == 201, response.text
    file = response.json()["data"]
    assert file["size_bytes"] == len(data)
    assert file["sha256"] == hashlib.sha256(data).hexdigest()


async def test_chunked_multipart_upload_is_reassembled(fresh_client: httpx.AsyncClient) -> None:
    """A multipart body arriving in odd-sized chunks is stored as the exact file bytes."""
    data = os.urandom(300_000)
    whole = (
        (
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="odd.bin"\r\n'
            "Content-Type: application/x-odd\r\n\r\n"
        ).encode()
        + data
        + f"\r\n--{BOUNDARY}--\r\n".encode()
    )

    async def body() -> AsyncIterator[bytes]:
        for start in range(0, len(whole), 7777):
            yield whole[start : start + 7777]

    response = await fresh_client.post(
        "/v1/files", content=body(), headers={"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}
    )
    assert response.status_code == 201, response.text
    file = response.json()["data"]
    assert (file["filename"], file["content_type"]) == ("odd.bin", "application/x-odd")
    assert file["sha256"] == hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize(
    ("disposition", "name"),
    [
        ("filename*=UTF-8''caf%C3%A9.csv", "café.csv"),
        ("filename*=utf-8'fr'%C3%A9t%C3%A9%20%282024%29.csv", "été (2024).csv"),
        ("filename*=ISO-8859-1''na%EFve.csv", "naïve.csv"),
        ("filename=\"cafe.csv\"; filename*=UTF-8''caf%C3%A9.csv", "café.csv"),
        ("filename*=UTF-8''..%2F..%2Fetc%2Fpasswd", "passwd"),
        ("filename=\"plain.csv\"; filename*=KOI8-R''x.csv", "plain.csv"),
        # Control characters go (a NUL reached PostgreSQL, which refused it: a 500 after the upload).
        ("filename*=UTF-8''a%00b%0D%0A.csv", "ab.csv"),
        ("filename*=UTF-8''%00%01", "upload"),
        # At most 255 characters, the extension kept.
        ("filename*=UTF-8''" + "n" * 300 + ".csv", "n" * 251 + ".csv"),
    ],
)
async def test_multipart_filename_star_names_the_file(
    fresh_client: httpx.AsyncClient, disposition: str, name: str
) -> None:
    """A file part's RFC 8187 `filename*` (which RFC 7578 asks senders not to use, yet some do) names the
    file, decoded and preferred to a plain `filename`; one in a charset other than UTF-8 or ISO-8859-1 is
    passed over."""
    response = await _post_part(fresh_client, disposition=disposition, content_type="text/csv")
    assert response.status_code == 201, response.text
    assert response.json()["data"]["filename"] == name


async def test_a_part_type_no_header_can_carry_is_stored_as_bytes(fresh_client: httpx.AsyncClient) -> None:
    """A file part whose Content-Type holds a control character (`text/\x01csv`) is stored as
    application/octet-stream: sent back as it came, it made every download of the file a 500."""
    response = await _post_part(fresh_client, disposition='filename="t.csv"', content_type="text/\x01csv")
    assert response.status_code == 201, response.text
    file = response.json()["data"]
    assert file["content_type"] == "application/octet-stream"
    download = await fresh_client.get(f"/v1/files/{file['id']}/content")
    assert (download.status_code, download.content) == (200, b"a,b\n1,2\n")


async def _post_part(client: httpx.AsyncClient, *, disposition: str, content_type: str) -> httpx.Response:
    """An upload of one `file` part with its disposition's `disposition` and its `content_type`, as given."""
    body = (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; {disposition}\r\n'
        f"Content-Type: {content_type}\r\n\r\na,b\n1,2\n"
        f"\r\n--{BOUNDARY}--\r\n"
    ).encode()
    return await client.post(
        "/v1/files", content=body, headers={"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}
    )


async def test_multipart_without_boundary_is_422(api: httpx.AsyncClient, envelope: EnvelopeCheck) -> None:
    """A multipart Content-Type without a boundary answers 422 naming the file field."""
    response = await api.post("/v1/files", content=b"x", headers={"Content-Type": "multipart/form-data"})
    body = envelope(response, status=422, error_code="VALIDATION_ERROR")
    assert body["data"]["details"][0]["loc"] == ["body", "file"]


async def test_multipart_without_file_field_is_422(
    fresh_client: httpx.AsyncClient, envelope: EnvelopeCheck
) -> None:
    """A form without a `file` field answers 422 and stores nothing."""
    response = await fresh_client.post("/v1/files", data={"other": "value"}, files={"doc": ("a.txt", b"a")})
    body = envelope(response, status=422, error_code="VALIDATION_ERROR")
    assert "`file`" in body["message"]
    assert await _ids(fresh_client) == []


async def test_truncated_multipart_is_422(fresh_client: httpx.AsyncClient, envelope: EnvelopeCheck) -> None:
    """A multipart body that ends inside the file part answers 422 and stores nothing."""

    async def body() -> AsyncIterator[bytes]:
        yield (
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="cut.bin"\r\n\r\n'
        ).encode()
        yield b"partial data with no closing boundary"

    response = await fresh_client.post(
        "/v1/files", content=body(), headers={"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}
    )
    body_ = envelope(response, status=422, error_code="VALIDATION_ERROR")
    assert "ended" in body_["message"]
    assert await _ids(fresh_client) == []


async def test_malformed_multipart_is_422(fresh_client: httpx.AsyncClient, envelope: EnvelopeCheck) -> None:
    """A multipart body that does not start with its boundary answers 422 as malformed."""
    response = await fresh_client.post(
        "/v1/files",
        content=b"this is not multipart at all\r\n\r\n",
        headers={"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"},
    )
    body = envelope(response, status=422, error_code="VALIDATION_ERROR")
    assert "malformed" in body["message"]


async def test_an_upload_the_client_abandons_is_no_server_error(stack: Stack) -> None:
    """A client that goes away mid-upload (a phone losing its network) is counted 499, as nginx counts it,
    and no answer is sent: it was a 500 in the request metrics, which the high-error-rate alert reads, and
    an "unhandled error" in the log."""
    sent: list[Message] = []
    chunks: list[Message] = [
        {"type": "http.request", "body": b"x" * 1024, "more_body": True},
        {"type": "http.disconnect"},
    ]

    async def receive() -> Message:
        return chunks.pop(0) if chunks else {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)

    def counted(status: str) -> float:
        labels = {"method": "POST", "route": "/v1/files", "status": status}
        return REGISTRY.get_sample_value("medialens_http_requests_total", labels) or 0.0

    before = counted("499"), counted("500")
    headers = [
        (b"authorization", f"Bearer {TENANT_KEYS['tenant-a']}".encode()),
        (b"content-type", b"application/octet-stream"),
        (b"content-length", b"1048576"),
    ]
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/files",
        "raw_path": b"/v1/files",
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 50000),
        "server": ("gateway", 80),
    }
    await stack.asgi(scope, receive, send)
    assert sent == []
    assert (counted("499"), counted("500")) == (before[0] + 1, before[1])
