"""The envelope on every answer of the gateway, the request id, and errors rendered in one place."""

from __future__ import annotations

import gc
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from asgi_lifespan import LifespanManager
from sqlalchemy import select

from medialens_gateway.envelope import EnvelopeResponse
from medialens_gateway.main import create_app
from medialens_shared.filestore import CHUNK_BYTES, FileStore
from medialens_shared.settings import Settings
from medialens_shared.tables import files
from scripts.samples import make_csv
from tests.fixtures.servers import TENANT_KEYS
from tests.fixtures.stack import Stack, upload

from .conftest import EnvelopeCheck


async def test_success_is_the_envelope_with_the_request_id_header(
    api: httpx.AsyncClient, envelope: EnvelopeCheck
) -> None:
    """A successful call answers the six envelope keys, success true, and the id also as a header."""
    body = envelope(await api.get("/v1/files", params={"limit": 1}), status=200)
    assert body["message"] == ""
    assert set(body["data"]) == {"items", "next_cursor"}


@pytest.mark.parametrize(
    "sent",
    [
        "trace-42.abc:x",
        "Root=1-67891233-abcdef012345678912345678",  # AWS's load balancers
        "{550e8400-e29b-41d4-a716-446655440000}",
        "abc+def/ghi==",
        "x" * 200,
    ],
)
async def test_client_request_id_is_echoed(
    api: httpx.AsyncClient, envelope: EnvelopeCheck, sent: str
) -> None:
    """A client X-Request-ID of visible ASCII comes back in both the header and the body (the ids of AWS's
    load balancers, braced UUIDs and base64 were replaced: only letters, digits and `._:-` were kept)."""
    response = await api.get("/v1/job-types", headers={"X-Request-ID": sent})
    body = envelope(response, status=200)
    assert body["request_id"] == sent


@pytest.mark.parametrize("sent", ["bad id/<script>", "x" * 201, "caf\u00e9", "tab\there"])
async def test_malformed_client_request_id_is_replaced(
    api: httpx.AsyncClient, envelope: EnvelopeCheck, sent: str
) -> None:
    """A client X-Request-ID with a space, a control or non-ASCII character, or longer than 200 characters
    is replaced by a fresh 32-hex id: in a text log line it could write context of its own."""
    response = await api.get("/v1/job-types", headers={"X-Request-ID": sent.encode()})
    body = envelope(response, status=200)
    assert body["request_id"] != sent
    assert len(body["request_id"]) == 32
    assert int(body["request_id"], 16) >= 0


async def test_each_request_gets_its_own_id(api: httpx.AsyncClient, envelope: EnvelopeCheck) -> None:
    """Two requests without a client id get two different request ids."""
    first = envelope(await api.get("/health/live"), status=200)
    second = envelope(await api.get("/health/live"), status=200)
    assert first["request_id"] != second["request_id"]


async def test_unknown_route_is_a_404_envelope(api: httpx.AsyncClient, envelope: EnvelopeCheck) -> None:
    """An unknown path answers 404 NOT_FOUND in the envelope, naming the path."""
    body = envelope(await api.get("/v1/no-such-thing"), status=404, error_code="NOT_FOUND")
    assert "/v1/no-such-thing" in body["message"]
    assert body["data"] is None


@pytest.mark.parametrize("path", ["/v1/jobs/", "/health/ready/", "/v1/job-types/"])
async def test_a_trailing_slash_is_a_404_envelope_naming_the_path_meant(
    api: httpx.AsyncClient, envelope: EnvelopeCheck, path: str
) -> None:
    """A path with a slash too many answers 404 in the envelope, naming the path without it (it was a bare
    307 to an absolute http:// URL, with no envelope, even without a key)."""
    body = envelope(await api.get(path), status=404, error_code="NOT_FOUND")
    assert body["message"] == f"No route {path}; did you mean {path.rstrip('/')}?"


async def test_wrong_method_is_a_405_envelope(api: httpx.AsyncClient, envelope: EnvelopeCheck) -> None:
    """A method a path does not take answers 405 METHOD_NOT_ALLOWED in the envelope, its Allow header (and
    message) naming every method the path takes, not only those of its first route."""
    for path in ("/v1/files", "/v1/jobs"):
        response = await api.put(path)
        body = envelope(response, status=405, error_code="METHOD_NOT_ALLOWED")
        assert body["message"] == f"PUT is not allowed on {path}; it takes GET, HEAD, POST."
        assert response.headers["allow"] == "GET, HEAD, POST"
    response = await api.delete("/health/live")
    envelope(response, status=405, error_code="METHOD_NOT_ALLOWED")
    assert response.headers["allow"] == "GET, HEAD"
    response = await api.get("/v1/jobs/some-job/cancel")
    assert response.headers["allow"] == "POST"


async def test_head_answers_as_get_without_the_body(
    stack: Stack, api: httpx.AsyncClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """HEAD gets GET's status and headers (its Content-Length included) and no body (RFC 9110: a server
    that takes GET takes HEAD), for a file's bytes (which are not streamed from storage for it), a file, a
    list and a health check; on a path without GET it is a 405 like GET."""
    path = tmp_path / "blob.bin"
    path.write_bytes(os.urandom(3 * CHUNK_BYTES + 5))
    file_id = await upload(api, path)
    async with stack.db.session() as session:
        ours = await session.scalar(select(files.c.storage_id).where(files.c.id == file_id))
    assert ours is not None
    chunks = 0
    read = FileStore.read

    async def counted(self: FileStore, storage_id: str, **window: Any) -> AsyncIterator[bytes]:
        nonlocal chunks
        async for chunk in read(self, storage_id, **window):
            chunks += storage_id == ours  # not a job's input that the stack's services read meanwhile
            yield chunk

    monkeypatch.setattr(FileStore, "read", counted)
    targets = (f"/v1/files/{file_id}/content", f"/v1/files/{file_id}", "/v1/jobs?limit=5", "/health/live")
    for target in targets:
        chunks = 0
        got = await api.get(target)
        streamed, chunks = chunks, 0
        head = await api.head(target)
        assert head.status_code == got.status_code == 200, target
        assert head.content == b"", target
        assert head.headers["content-length"] == got.headers["content-length"] == str(len(got.content))
        assert head.headers["content-type"] == got.headers["content-type"]
        assert head.headers["x-request-id"]
        assert chunks <= 1 < streamed or chunks == streamed == 0, (target, chunks, streamed)
    refused = await api.head("/v1/jobs/some-job/cancel")
    assert refused.status_code == 405
    assert refused.headers["allow"] == "POST"
    assert refused.content == b""


async def test_body_validation_is_a_422_naming_the_field(
    api: httpx.AsyncClient, envelope: EnvelopeCheck
) -> None:
    """A job body without `type` answers 422 VALIDATION_ERROR whose details name `type`."""
    response = await api.post("/v1/jobs", json={"file_id": "abc"})
    body = envelope(response, status=422, error_code="VALIDATION_ERROR")
    locs = [detail["loc"] for detail in body["data"]["details"]]
    assert ["body", "type"] in locs
    assert "body.type" in body["message"]


async def test_malformed_json_body_is_a_422(api: httpx.AsyncClient, envelope: EnvelopeCheck) -> None:
    """A job body that is not JSON answers 422 VALIDATION_ERROR in the envelope, saying in words what the
    parser found and where (it said "does not fit the schema (body.1)")."""
    response = await api.post("/v1/jobs", content=b"{not json", headers={"Content-Type": "application/json"})
    body = envelope(response, status=422, error_code="VALIDATION_ERROR")
    assert body["data"]["details"][0]["type"] == "json_invalid"
    assert body["message"] == (
        "The body is not valid JSON: Expecting property name enclosed in double quotes at character 1."
    )
    assert body["data"]["details"][0]["msg"].endswith("Expecting property name enclosed in double quotes")


@pytest.mark.parametrize(
    ("content", "content_type"),
    [
        (b'\xff\xfe{"type": "video.probe"}', "application/json"),  # JSON, but not UTF-8
        ('{"type": "caf\u00e9"}'.encode("latin-1"), "application/json; charset=latin-1"),
    ],
)
async def test_unparsable_body_is_a_422(
    api: httpx.AsyncClient, envelope: EnvelopeCheck, content: bytes, content_type: str
) -> None:
    """A body the framework cannot parse at all answers 422 VALIDATION_ERROR (API.md's status for the code),
    with a detail on the body, not a bare 400."""
    response = await api.post("/v1/jobs", content=content, headers={"Content-Type": content_type})
    body = envelope(response, status=422, error_code="VALIDATION_ERROR")
    assert body["data"]["details"] == [
        {"loc": ["body"], "msg": "There was an error parsing the body", "type": "body_unparsable"}
    ]


def _with_nul(where: str, csv: str) -> tuple[str, str, dict[str, Any] | None]:
    """A request with a NUL character in `where`, on the uploaded table `csv`."""
    profile: dict[str, Any] = {"type": "data.profile", "file_id": csv}
    return {
        "file-id": ("POST", "/v1/jobs", {**profile, "file_id": "\u0000" + csv}),
        "label": ("POST", "/v1/jobs", {**profile, "labels": {"k": "a\u0000"}}),
        "sql": (
            "POST",
            "/v1/jobs",
            {"type": "data.query", "file_id": csv, "params": {"sql": "select\u0000"}},
        ),
        "job-id": ("GET", "/v1/jobs/%00", None),
        "label-filter": ("GET", "/v1/jobs?label=a:%00", None),
    }[where]


@pytest.mark.parametrize("where", ["file-id", "label", "sql", "job-id", "label-filter"])
async def test_a_nul_character_anywhere_is_a_422(
    api: httpx.AsyncClient, envelope: EnvelopeCheck, tmp_path: Path, where: str
) -> None:
    """A NUL (`\\u0000`) in an id, a label, a param or a filter: PostgreSQL stores no such text, and the
    client gets 422 VALIDATION_ERROR in the envelope, not a 500 (found in review: all five were 500s)."""
    make_csv(tmp_path / "t.csv", rows=5)
    csv = await upload(api, tmp_path / "t.csv")
    method, url, body = _with_nul(where, csv)
    response = await api.request(method, url, json=body)
    envelope(response, status=422, error_code="VALIDATION_ERROR")
    assert "NUL" in response.json()["message"]


async def test_unhandled_exception_is_a_500_envelope_with_the_request_id(
    settings: Settings, database: str, envelope: EnvelopeCheck
) -> None:
    """A bug in a route answers 500 INTERNAL_ERROR whose message quotes the request id, with no traceback."""
    app = create_app(settings)

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("secret internals: password=hunter2")

    async with LifespanManager(app, startup_timeout=60, shutdown_timeout=60) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
            response = await client.get(
                "/boom", headers={"X-Request-ID": "req-500", "X-API-Key": TENANT_KEYS["tenant-a"]}
            )
    body = envelope(response, status=500, error_code="INTERNAL_ERROR")
    assert body["request_id"] == "req-500"
    assert "req-500" in body["message"]
    assert "Traceback" not in response.text
    assert "hunter2" not in response.text
    assert "RuntimeError" not in response.text


@pytest.mark.parametrize(
    "error",
    [
        asyncpg.exceptions.ConnectionDoesNotExistError("connection was closed in the middle of operation"),
        asyncpg.InterfaceError("connection is closed"),
        asyncpg.exceptions.AdminShutdownError("terminating connection due to administrator command"),
    ],
)
async def test_postgres_gone_under_a_bare_connection_is_a_503(
    settings: Settings, database: str, envelope: EnvelopeCheck, error: Exception
) -> None:
    """asyncpg's own errors for a server that went away answer 503 SERVICE_UNAVAILABLE, not a bug's 500."""
    app = create_app(settings)

    @app.get("/gone")
    async def gone() -> None:
        raise error

    async with LifespanManager(app, startup_timeout=60, shutdown_timeout=60) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
            response = await client.get("/gone")
    body = envelope(response, status=503, error_code="SERVICE_UNAVAILABLE")
    assert "PostgreSQL" in body["message"]
    assert response.headers["retry-after"] == "5"


def test_an_envelope_renders_utf8_json_and_a_nan_as_null() -> None:
    """Envelopes are compact UTF-8 JSON; a NaN or an infinity, which JSON lacks, is written as null."""
    content = {"name": "café", "progress": float("nan"), "size": float("inf"), "n": [1, 2.5]}
    response = EnvelopeResponse(content)
    assert response.body == '{"name":"café","progress":null,"size":null,"n":[1,2.5]}'.encode()
    assert response.headers["content-type"] == "application/json"


async def test_the_start_up_heap_is_frozen_while_the_app_runs(settings: Settings, database: str) -> None:
    """The objects made at start-up are out of the cyclic collector's way while serving, and back after."""
    app = create_app(settings)
    async with LifespanManager(app, startup_timeout=60, shutdown_timeout=60):
        assert gc.get_freeze_count() > 0
    assert gc.get_freeze_count() == 0
