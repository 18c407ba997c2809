"""`HotPaths`: the two busiest operations answered past FastAPI's routing, exactly as FastAPI answers them."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from prometheus_client import REGISTRY
from starlette.types import ASGIApp, Receive, Scope, Send

from medialens_gateway.jobs.hotpath import HotPaths
from medialens_gateway.jobs.routes import JOB_BODY_MAX_BYTES
from scripts.samples import make_audio, make_csv
from tests.fixtures.servers import TENANT_KEYS
from tests.fixtures.stack import Stack, api_client, submit, upload

from ..conftest import EnvelopeCheck

KEY_A = TENANT_KEYS["tenant-a"]


@pytest.fixture
async def csv_file(api: httpx.AsyncClient, tmp_path: Path) -> str:
    path = tmp_path / "table.csv"
    make_csv(path, rows=10)
    return await upload(api, path, content_type="text/csv")


@pytest.fixture
async def wav_file(api: httpx.AsyncClient, tmp_path: Path) -> str:
    path = tmp_path / "tone.wav"
    make_audio(path, duration_s=0.2, sample_rate=8000, channels=1)
    return await upload(api, path, content_type="audio/wav")


def _layers(app: ASGIApp) -> Iterator[ASGIApp]:
    layer: ASGIApp | None = app
    while layer is not None:
        yield layer
        layer = getattr(layer, "app", None)


def without_hot_paths(app: FastAPI) -> ASGIApp:
    """The running app as it answers with its `HotPaths` layer skipped: every request through FastAPI."""
    assert app.middleware_stack is not None  # built when the lifespan started
    hot = next(layer for layer in _layers(app.middleware_stack) if isinstance(layer, HotPaths))

    async def fastapi_only(scope: Scope, receive: Receive, send: Send) -> None:
        await hot.app({**scope, "app": app}, receive, send)  # `app` as Starlette sets it

    return fastapi_only


def _comparable(response: httpx.Response, new_ids: set[str]) -> dict[str, Any]:
    """Status, the headers that matter and the body, without what differs from one request to the next."""
    body = response.json()
    body.pop("timestamp"), body.pop("request_id")
    data = body.get("data")
    if isinstance(data, dict) and data.get("id") in new_ids:
        data["id"] = data["created_at"] = "<new job>"
    location = response.headers.get("location")
    return {
        "status": response.status_code,
        "content-type": response.headers["content-type"],
        "location": "<new job>" if location and location.rsplit("/", 1)[-1] in new_ids else location,
        "body": body,
    }


def _requests(job_id: str, csv_file: str, wav_file: str) -> list[tuple[str, str, dict[str, Any]]]:
    job = {"type": "data.profile", "file_id": csv_file, "labels": {"team": "a"}}
    json_headers = {"Content-Type": "application/json"}
    return [
        ("GET", f"/v1/jobs/{job_id}", {}),
        ("GET", "/v1/jobs/no-such-job", {}),
        ("GET", f"/v1/jobs/{job_id}", {"headers": {"Authorization": "Bearer wrong"}}),
        ("GET", f"/v1/jobs/{job_id}", {"headers": {"Authorization": ""}}),
        ("POST", "/v1/jobs", {"json": job}),
        ("POST", "/v1/jobs", {"json": job | {"type": "audio.loudness"}}),  # 415: a CSV is no audio
        ("POST", "/v1/jobs", {"json": job | {"file_id": wav_file, "type": "data.nope"}}),  # 422 (ours)
        ("POST", "/v1/jobs", {"json": job | {"file_id": "no-such-file"}}),  # 404
        ("POST", "/v1/jobs", {"json": job | {"priority": 12}}),  # 422 (FastAPI's)
        ("POST", "/v1/jobs", {"content": b"{not json", "headers": json_headers}),
        ("POST", "/v1/jobs", {"content": b'{"type": "data.profile"}', "headers": json_headers}),
        ("POST", "/v1/jobs", {"content": b"\xff\xfe", "headers": json_headers}),
        ("POST", "/v1/jobs", {"content": b"type=data.profile", "headers": {"Content-Type": "text/plain"}}),
        ("POST", "/v1/jobs", {"json": job, "headers": {"Idempotency-Key": "k" * 256}}),
        ("POST", "/v1/jobs", {"json": job, "headers": {"Authorization": "Bearer wrong"}}),
    ]


async def test_the_hot_paths_answer_as_fastapi_does(
    stack: Stack, api: httpx.AsyncClient, csv_file: str, wav_file: str
) -> None:
    """Each request, good or bad, gets the same status, headers and envelope with the layer as without it
    (but for the new job's id and time, and the request's own id and time)."""
    job_id = (await submit(api, "data.profile", csv_file))["id"]
    async with api_client(without_hot_paths(stack.app), key=KEY_A) as fastapi:
        for method, path, options in _requests(job_id, csv_file, wav_file):
            answers = [await client.request(method, path, **options) for client in (api, fastapi)]
            new_ids = {
                answer.json()["data"]["id"] for answer in answers if answer.status_code in (200, 202)
            } - {job_id}
            hot, plain = (_comparable(answer, new_ids) for answer in answers)
            assert hot == plain, (method, path, options)


async def test_an_idempotent_replay_answers_the_first_job_either_way(
    stack: Stack, api: httpx.AsyncClient, csv_file: str
) -> None:
    """A submission with an Idempotency-Key, then its replay through FastAPI and through the layer: both
    answer 200 with the first job."""
    body = {"type": "data.profile", "file_id": csv_file}
    headers = {"Idempotency-Key": f"hot-{csv_file}"}
    first = await api.post("/v1/jobs", json=body, headers=headers)
    assert first.status_code == 202, first.text
    async with api_client(without_hot_paths(stack.app), key=KEY_A) as fastapi:
        for client in (fastapi, api):
            replay = await client.post("/v1/jobs", json=body, headers=headers)
            assert replay.status_code == 200, replay.text
            assert replay.json()["data"]["id"] == first.json()["data"]["id"]
            assert replay.headers["location"] == f"/v1/jobs/{first.json()['data']['id']}"


class Downstream:
    """Stands in for FastAPI behind the layer: records what reached it and answers 299 with the body."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, bytes]] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        self.seen.append((scope["method"], scope["path"], body))
        await send({"type": "http.response.start", "status": 299, "headers": []})
        await send({"type": "http.response.body", "body": body})


async def test_the_layer_answers_its_two_operations_and_passes_the_rest_on_unread(
    stack: Stack, api: httpx.AsyncClient, csv_file: str
) -> None:
    """GET of a job and a plain valid submission never reach FastAPI; anything else does, with its body
    as sent (so the parity test above compares the layer with FastAPI, not FastAPI with itself)."""
    job_id = (await submit(api, "data.profile", csv_file))["id"]
    downstream = Downstream()
    hot = HotPaths(downstream)

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await hot({**scope, "app": stack.app}, receive, send)

    async with api_client(app, key=KEY_A) as client:
        got = await client.get(f"/v1/jobs/{job_id}")
        assert got.status_code == 200
        assert got.json()["data"]["id"] == job_id
        submitted = await client.post("/v1/jobs", json={"type": "data.profile", "file_id": csv_file})
        assert submitted.status_code == 202, submitted.text
        assert (await client.get("/v1/jobs/no-such-job")).status_code == 404
        assert downstream.seen == []

        passed = [
            ("POST", "/v1/jobs", b'{"type": "data.profile", "priority": 99}', "application/json"),
            ("POST", "/v1/jobs", b"not json", "application/json"),
            ("POST", "/v1/jobs", b'{"type": "data.profile", "file_id": "x"}', "text/plain"),
            ("GET", "/v1/jobs", b"", None),
            ("GET", f"/v1/jobs/{job_id}/result", b"", None),
            ("POST", f"/v1/jobs/{job_id}/cancel", b"", None),
        ]
        for method, path, content, media_type in passed:
            headers = {"Content-Type": media_type} if media_type else {}
            response = await client.request(method, path, content=content, headers=headers)
            assert response.status_code == 299
            assert response.content == content
        assert downstream.seen == [(method, path, content) for method, path, content, _ in passed]


@pytest.mark.parametrize("chunked", [False, True])
async def test_a_submission_over_the_bound_is_413_before_it_is_read(
    api: httpx.AsyncClient, csv_file: str, envelope: EnvelopeCheck, chunked: bool
) -> None:
    """A body over JOB_BODY_MAX_BYTES answers 413 PAYLOAD_TOO_LARGE, announced by its Content-Length or
    streamed without one, JSON or not; no job is made; the request metrics count it under its route (it
    was `unmatched`)."""
    labels = {"method": "POST", "route": "/v1/jobs", "status": "413"}
    counted = REGISTRY.get_sample_value("medialens_http_requests_total", labels) or 0.0
    params = {"sql": "x" * JOB_BODY_MAX_BYTES}
    body = json.dumps({"type": "data.query", "file_id": csv_file, "params": params})
    content: bytes | AsyncIterator[bytes] = body.encode()
    if chunked:

        async def chunks() -> AsyncIterator[bytes]:
            for start in range(0, len(body), 65536):
                yield body[start : start + 65536].encode()

        content = chunks()
    before = (await api.get("/v1/jobs", params={"limit": 1})).json()["data"]["items"]
    response = await api.post("/v1/jobs", content=content, headers={"Content-Type": "application/json"})
    body_sent = envelope(response, status=413, error_code="PAYLOAD_TOO_LARGE")
    assert str(JOB_BODY_MAX_BYTES) in body_sent["message"]
    assert (await api.get("/v1/jobs", params={"limit": 1})).json()["data"]["items"] == before
    plain = await api.post("/v1/jobs", content=b"x" * (JOB_BODY_MAX_BYTES + 1))
    envelope(plain, status=413, error_code="PAYLOAD_TOO_LARGE")
    assert REGISTRY.get_sample_value("medialens_http_requests_total", labels) == counted + 2
