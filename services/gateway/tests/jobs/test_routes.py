"""`/v1/jobs`: submission checks, reads, filtered lists, results, cancellation, idempotency and SSE."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager
from redis.asyncio import Redis
from sqlalchemy import func, text, update

from medialens_gateway.deps import registered
from medialens_gateway.jobs import routes
from medialens_gateway.main import create_app
from medialens_shared.contracts import FileKind
from medialens_shared.db import DatabaseManager
from medialens_shared.signals import JobSignals
from medialens_shared.sniff import SNIFF_BYTES, sniff
from medialens_shared.tables import jobs
from scripts.samples import make_audio, make_audio_only, make_csv, make_video
from tests.fixtures.servers import TENANT_KEYS
from tests.fixtures.stack import Stack, api_client, result_of, run_job, submit, upload, wait_for

from ..conftest import TIMESTAMP, EnvelopeCheck

JOB_KEYS = {
    "id", "type", "status", "progress", "message", "file_id", "params", "labels", "priority", "attempts",
    "error_code", "error_message", "created_at", "started_at", "finished_at", "parent_id", "children",
}  # fmt: skip


def _cursor(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode()


@pytest.fixture
async def csv_file(api: httpx.AsyncClient, tmp_path: Path) -> str:
    """A small CSV of tenant A: its file id."""
    path = tmp_path / "table.csv"
    make_csv(path, rows=30)
    return await upload(api, path, content_type="text/csv")


async def _outbox_sent(db: DatabaseManager, job_id: str) -> bool:
    async with db.session() as session:
        sent = await session.scalar(
            text("select sent_at is not null from outbox where job_id = :id"), {"id": job_id}
        )
    return bool(sent)


@pytest.fixture
def first_event(monkeypatch: pytest.MonkeyPatch) -> asyncio.Event:
    """Set when an event stream sends its first event, i.e. has subscribed and read the job (a test
    client's response arrives whole, at its end, so this is how a test knows the stream follows)."""
    sent = asyncio.Event()
    sse = routes._sse

    def seen(event: str, data: dict[str, Any]) -> str:
        sent.set()
        return sse(event, data)

    monkeypatch.setattr(routes, "_sse", seen)
    return sent


def _events(stream: str) -> list[tuple[str, dict[str, Any]]]:
    events = []
    for block in stream.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines() if not line.startswith(":"))
        if lines:
            events.append((lines["event"], json.loads(lines["data"])))
    return events


# --- submission checks -------------------------------------------------------------------------------


async def test_unknown_type_is_422_naming_the_known_types(
    api: httpx.AsyncClient, csv_file: str, envelope: EnvelopeCheck
) -> None:
    """An unknown job type answers 422 whose message and details list the known types."""
    response = await api.post("/v1/jobs", json={"type": "video.nope", "file_id": csv_file})
    body = envelope(response, status=422, error_code="VALIDATION_ERROR")
    for known in ("video.probe", "audio.probe", "data.profile"):
        assert known in body["message"]
    assert body["data"]["details"][0]["loc"] == ["body", "type"]


@pytest.mark.parametrize(
    ("job_type", "params", "loc"),
    [
        ("data.profile", {"format": "xls"}, ["body", "params", "format"]),
        ("video.probe", {"depth": 3}, ["body", "params", "depth"]),
        ("data.profile", {"format": "csv", "sep": ";"}, ["body", "params", "sep"]),
        # Not the JSON types the published schema names: they were coerced (true as a count of 1).
        ("video.thumbnails", {"count": True}, ["body", "params", "count"]),
        ("video.scenes", {"threshold": "27"}, ["body", "params", "threshold"]),
        ("data.query", {"sql": "SELECT 1", "limit": "10"}, ["body", "params", "limit"]),
        ("data.profile", {"header": "yes"}, ["body", "params", "header"]),
        # A CSV's `header` with a format that names its columns itself: params that contradict each other.
        ("data.convert", {"to": "csv", "format": "parquet", "header": True}, ["body", "params"]),
    ],
)
async def test_params_not_fitting_the_schema_are_422(
    api: httpx.AsyncClient,
    csv_file: str,
    envelope: EnvelopeCheck,
    job_type: str,
    params: dict[str, Any],
    loc: list[str],
) -> None:
    """Params outside the type's schema, or unknown to it, answer 422 with details naming the param."""
    response = await api.post("/v1/jobs", json={"type": job_type, "file_id": csv_file, "params": params})
    body = envelope(response, status=422, error_code="VALIDATION_ERROR")
    assert loc in [detail["loc"] for detail in body["data"]["details"]]
    assert job_type in body["message"]


@pytest.mark.parametrize(
    ("job_type", "param", "number"),
    [("video.quality", "min_black_s", "1e999"), ("audio.silence", "threshold_db", "-1e999")],
)
async def test_an_infinite_param_is_422(
    api: httpx.AsyncClient, csv_file: str, envelope: EnvelopeCheck, job_type: str, param: str, number: str
) -> None:
    """`1e999` is valid JSON for an infinite number, which PostgreSQL cannot store: it answered 500."""
    body = f'{{"type": "{job_type}", "file_id": "{csv_file}", "params": {{"{param}": {number}}}}}'
    response = await api.post("/v1/jobs", content=body, headers={"Content-Type": "application/json"})
    answer = envelope(response, status=422, error_code="VALIDATION_ERROR")
    assert ["body", "params", param] in [detail["loc"] for detail in answer["data"]["details"]]


@pytest.mark.parametrize("priority", [-1, 10, "high", "5", True, 5.0])
async def test_priority_out_of_range_is_422(
    api: httpx.AsyncClient, csv_file: str, envelope: EnvelopeCheck, priority: object
) -> None:
    """A priority outside 0..9, or not a JSON integer (`"5"` and `true` were taken, `true` as 1), answers
    422 naming `priority`."""
    response = await api.post(
        "/v1/jobs", json={"type": "data.profile", "file_id": csv_file, "priority": priority}
    )
    body = envelope(response, status=422, error_code="VALIDATION_ERROR")
    assert ["body", "priority"] in [detail["loc"] for detail in body["data"]["details"]]


async def test_listing_by_a_type_that_does_not_exist_is_422(
    api: httpx.AsyncClient, envelope: EnvelopeCheck
) -> None:
    """`?type=` takes a job type, as `?status=` a status: a misspelt one is a 422 naming it, not an empty
    page that reads as "no such jobs"."""
    body = envelope(await api.get("/v1/jobs?type=video.prob"), status=422, error_code="VALIDATION_ERROR")
    assert "'video.prob'" in body["message"]
    assert body["data"]["details"][0]["loc"] == ["query", "type"]


@pytest.mark.parametrize(
    "labels", [{"team": 5}, {"": "x"}, {"bad key!": "x"}, ["a", "b"], {f"k{i}": "v" for i in range(33)}]
)
async def test_labels_must_be_a_flat_string_map(
    api: httpx.AsyncClient, csv_file: str, envelope: EnvelopeCheck, labels: object
) -> None:
    """Labels that are not a flat map of valid keys to strings answer 422 naming `labels`."""
    response = await api.post(
        "/v1/jobs", json={"type": "data.profile", "file_id": csv_file, "labels": labels}
    )
    body = envelope(response, status=422, error_code="VALIDATION_ERROR")
    assert all(detail["loc"][:2] == ["body", "labels"] for detail in body["data"]["details"])


async def test_unknown_body_field_is_422(
    api: httpx.AsyncClient, csv_file: str, envelope: EnvelopeCheck
) -> None:
    """A body field the API does not know answers 422 naming it."""
    response = await api.post("/v1/jobs", json={"type": "data.profile", "file_id": csv_file, "colour": "red"})
    body = envelope(response, status=422, error_code="VALIDATION_ERROR")
    assert ["body", "colour"] in [detail["loc"] for detail in body["data"]["details"]]


@pytest.mark.parametrize("content_type", ["application/x-www-form-urlencoded", "text/plain; charset=utf-8"])
async def test_a_body_not_sent_as_json_is_422_saying_what_to_send(
    api: httpx.AsyncClient, csv_file: str, envelope: EnvelopeCheck, content_type: str
) -> None:
    """A JSON body sent with another Content-Type (`curl -d` sends a form's) answers 422 naming the header
    and what to send (it named only the body: "Input should be a valid dictionary"); a JSON subtype is
    read as JSON."""
    body = json.dumps({"type": "data.profile", "file_id": csv_file})
    response = await api.post("/v1/jobs", content=body, headers={"Content-Type": content_type})
    answer = envelope(response, status=422, error_code="VALIDATION_ERROR")
    assert f"Content-Type: application/json, not {content_type.partition(';')[0]}" in answer["message"]
    merge = await api.post("/v1/jobs", content=body, headers={"Content-Type": "application/merge-patch+json"})
    envelope(merge, status=202)


@pytest.mark.parametrize("job_type", ["data.profile", "media.analyze"])
@pytest.mark.parametrize("headers", [{}, {"Idempotency-Key": "lone-surrogate"}])
async def test_a_file_id_that_is_no_unicode_text_is_422(
    api: httpx.AsyncClient, envelope: EnvelopeCheck, job_type: str, headers: dict[str, str]
) -> None:
    """JSON can spell a lone surrogate (`"\\udc00"`), which no UTF-8 text holds: as a file_id it reached
    the job message's and PostgreSQL's encoding and failed there, a 500, on each way in (plain, composite,
    with an Idempotency-Key). It does not fit the schema: 422 naming `file_id`."""
    body = f'{{"type": "{job_type}", "file_id": "\\udc00"}}'
    response = await api.post(
        "/v1/jobs", content=body, headers={"Content-Type": "application/json", **headers}
    )
    answer = envelope(response, status=422, error_code="VALIDATION_ERROR")
    assert ["body", "file_id"] in [detail["loc"] for detail in answer["data"]["details"]]


@pytest.mark.parametrize("depth", [1200, 5000])
@pytest.mark.parametrize("idempotency_key", [None, "deep"])
async def test_a_body_nested_too_deep_to_parse_is_422(
    api: httpx.AsyncClient, csv_file: str, envelope: EnvelopeCheck, depth: int, idempotency_key: str | None
) -> None:
    """A JSON body nested past the parser's recursion (`[[[...]]]` a thousand deep, well under the size
    bound) answers 422 as a body that does not parse, as FastAPI answers it; the hot path's parse raised
    RecursionError, a 500."""
    nested = "[" * depth + "]" * depth
    body = f'{{"type": "data.profile", "file_id": "{csv_file}", "params": {{"x": {nested}}}}}'
    headers = {"Content-Type": "application/json"}
    if idempotency_key:
        headers["Idempotency-Key"] = idempotency_key
    response = await api.post("/v1/jobs", content=body, headers=headers)
    answer = envelope(response, status=422, error_code="VALIDATION_ERROR")
    assert answer["data"]["details"][0]["type"] == "body_unparsable"


async def test_missing_file_is_404(api: httpx.AsyncClient, envelope: EnvelopeCheck) -> None:
    """A file_id that does not exist answers 404 NOT_FOUND naming it."""
    response = await api.post("/v1/jobs", json={"type": "data.profile", "file_id": "f" * 32})
    body = envelope(response, status=404, error_code="NOT_FOUND")
    assert "f" * 32 in body["message"]


async def test_deleted_file_is_404(api: httpx.AsyncClient, csv_file: str, envelope: EnvelopeCheck) -> None:
    """A job on a file deleted before submission answers 404."""
    assert (await api.delete(f"/v1/files/{csv_file}")).status_code == 200
    response = await api.post("/v1/jobs", json={"type": "data.profile", "file_id": csv_file})
    envelope(response, status=404, error_code="NOT_FOUND")


async def test_csv_named_mp4_is_415_for_video_probe(
    api: httpx.AsyncClient, tmp_path: Path, envelope: EnvelopeCheck
) -> None:
    """A CSV uploaded as `clip.mp4` with a video type is refused for video.probe with 415, by its content."""
    path = tmp_path / "clip.mp4"
    make_csv(path, rows=10)
    file_id = await upload(api, path, content_type="video/mp4")
    response = await api.post("/v1/jobs", json={"type": "video.probe", "file_id": file_id})
    body = envelope(response, status=415, error_code="UNSUPPORTED_MEDIA_TYPE")
    assert body["message"] == (
        "video.probe takes a video; by its content, 'clip.mp4' is a table (CSV, JSON lines or Parquet)."
    )


async def test_a_soundtrack_alone_in_an_mp4_is_audio(
    api: httpx.AsyncClient, tmp_path: Path, envelope: EnvelopeCheck
) -> None:
    """An MP4 holding only a soundtrack, its track list after its media data (as FFmpeg writes one), is
    stored as audio: 415 for video.probe (it was taken as a video, then failed UNSUPPORTED_INPUT), taken by
    audio.probe."""
    path = tmp_path / "voice.mp4"
    make_audio_only(path)
    assert sniff(path.read_bytes()[:SNIFF_BYTES]) is FileKind.VIDEO  # the track list lies past them
    file_id = await upload(api, path, content_type="video/mp4")
    assert (await api.get(f"/v1/files/{file_id}")).json()["data"]["kind"] == "audio"
    response = await api.post("/v1/jobs", json={"type": "video.probe", "file_id": file_id})
    body = envelope(response, status=415, error_code="UNSUPPORTED_MEDIA_TYPE")
    assert body["message"] == "video.probe takes a video; by its content, 'voice.mp4' is audio."
    accepted = await api.post("/v1/jobs", json={"type": "audio.probe", "file_id": file_id})
    assert accepted.status_code == 202, accepted.text


async def test_a_soundtrack_alone_in_a_transport_stream_is_audio(
    api: httpx.AsyncClient, tmp_path: Path, envelope: EnvelopeCheck
) -> None:
    """An MPEG-TS whose program map lists only a soundtrack (as a radio recording or FFmpeg writes it) is
    stored as audio, refused by video jobs with 415 (it was a video: they took it, then failed
    UNSUPPORTED_INPUT), and its loudness is measured."""
    path = tmp_path / "radio.ts"
    make_audio_only(path, container_format="mpegts", codec="mp2")
    file_id = await upload(api, path, content_type="video/mp2t")
    assert (await api.get(f"/v1/files/{file_id}")).json()["data"]["kind"] == "audio"
    response = await api.post("/v1/jobs", json={"type": "video.scenes", "file_id": file_id})
    envelope(response, status=415, error_code="UNSUPPORTED_MEDIA_TYPE")
    job = await wait_for(api, (await submit(api, "audio.loudness", file_id))["id"], timeout=60)
    assert job["status"] == "succeeded", job
    # A -20 dBFS sine on two channels: an RMS of -23 dB each, +3 dB for two, -0.691 (BS.1770), K-weighting
    # at 440 Hz about 0.
    assert (await result_of(api, job["id"]))["integrated_lufs"] == pytest.approx(-20.7, abs=0.3)


async def test_an_mp3_cut_mid_frame_is_audio_and_measured(api: httpx.AsyncClient, tmp_path: Path) -> None:
    """An MP3 cut mid-frame (`tail -c`, a stream recorded as it went by) is stored as audio and its loudness
    measured: it was unknown, and every audio job on it was refused with 415."""
    whole, path = tmp_path / "tone.mp3", tmp_path / "cut.mp3"
    make_audio_only(whole, container_format="mp3", codec="libmp3lame")
    path.write_bytes(whole.read_bytes()[1000:])
    file_id = await upload(api, path, content_type="audio/mpeg")
    assert (await api.get(f"/v1/files/{file_id}")).json()["data"]["kind"] == "audio"
    job = await wait_for(api, (await submit(api, "audio.loudness", file_id))["id"], timeout=60)
    assert job["status"] == "succeeded", job
    # FFmpeg's ebur128 reads -21.2 LUFS of the cut file (-21.1 of the whole one).
    assert (await result_of(api, job["id"]))["integrated_lufs"] == pytest.approx(-21.2, abs=0.1)


@pytest.mark.parametrize(
    ("name", "written_as", "size", "codec", "probed"),
    [
        # An AVCHD camcorder's clip: M2TS, 192-byte transport packets (FFmpeg writes them for `.m2ts`).
        ("00001.mts", "00001.m2ts", (96, 64), "libx264", ("mpegts", "h264", 25)),
        # MPEG-2 in MXF, as broadcast and professional cameras write it.
        ("C0001.mxf", "C0001.mxf", (720, 576), "mpeg2video", ("mxf", "mpeg2video", 25)),
    ],
)
async def test_camera_files_are_videos(
    api: httpx.AsyncClient,
    tmp_path: Path,
    name: str,
    written_as: str,
    size: tuple[int, int],
    codec: str,
    probed: tuple[str, str, int],
) -> None:
    """A camcorder's M2TS clip and a broadcast camera's MXF file are stored as videos and probed: every job
    on one was refused with 415, its kind unknown."""
    path = tmp_path / name
    make_video(tmp_path / written_as, duration_s=1.0, width=size[0], height=size[1], fps=25, codec=codec)
    (tmp_path / written_as).rename(path)
    file_id = await upload(api, path, content_type="application/octet-stream")
    assert (await api.get(f"/v1/files/{file_id}")).json()["data"]["kind"] == "video"
    job = await wait_for(api, (await submit(api, "video.probe", file_id))["id"], timeout=60)
    assert job["status"] == "succeeded", job
    probe = await result_of(api, job["id"])
    assert (probe["format"]["name"], probe["video"]["codec"], probe["video"]["frame_count"]) == probed


async def test_an_ogg_theora_video_is_taken_by_video_jobs(api: httpx.AsyncClient, tmp_path: Path) -> None:
    """An Ogg file that begins a Theora stream is a video (it was "audio": every video job refused it with
    415). No encoder of PyAV's writes Theora: the first page is laid out as the Ogg and Theora specifications
    give it, which is all the check reads."""
    path = tmp_path / "clip.ogv"
    identification = b"\x80theora\x03\x02\x01" + bytes(33)
    path.write_bytes(b"OggS\x00\x02" + bytes(20) + bytes([1, len(identification)]) + identification)
    file_id = await upload(api, path, content_type="video/ogg")
    assert (await api.get(f"/v1/files/{file_id}")).json()["data"]["kind"] == "video"
    response = await api.post("/v1/jobs", json={"type": "video.probe", "file_id": file_id})
    assert response.status_code == 202, response.text


@pytest.mark.parametrize("idempotency_key", [None, "empty-once"])
async def test_an_empty_file_is_415_saying_it_is_empty(
    api: httpx.AsyncClient, tmp_path: Path, envelope: EnvelopeCheck, idempotency_key: str | None
) -> None:
    """A 0-byte upload is stored (kind unknown); a job on it is refused naming it empty, not "none of these
    (not a video, audio or a table ...)", on the one-statement submission and the transactional one."""
    path = tmp_path / "rows.csv"
    path.write_bytes(b"")
    file_id = await upload(api, path, content_type="text/csv")
    headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
    response = await api.post("/v1/jobs", json={"type": "data.profile", "file_id": file_id}, headers=headers)
    body = envelope(response, status=415, error_code="UNSUPPORTED_MEDIA_TYPE")
    assert body["message"] == (
        "data.profile takes a table (CSV, JSON lines or Parquet); 'rows.csv' is empty (0 bytes)."
    )


async def test_audio_file_is_415_for_data_profile(
    api: httpx.AsyncClient, tmp_path: Path, envelope: EnvelopeCheck
) -> None:
    """A WAV file submitted for data.profile answers 415."""
    path = tmp_path / "tone.csv"
    make_audio(path.with_suffix(".wav"), duration_s=0.2)
    path.write_bytes(path.with_suffix(".wav").read_bytes())
    file_id = await upload(api, path, content_type="text/csv")
    response = await api.post("/v1/jobs", json={"type": "data.profile", "file_id": file_id})
    envelope(response, status=415, error_code="UNSUPPORTED_MEDIA_TYPE")


# --- submission, reads, lists ------------------------------------------------------------------------


async def test_submit_is_202_with_location_and_the_job_object(
    api: httpx.AsyncClient, csv_file: str, envelope: EnvelopeCheck
) -> None:
    """A valid job answers 202 with the whole job object, defaults filled in, and a Location header."""
    response = await api.post(
        "/v1/jobs", json={"type": "data.profile", "file_id": csv_file, "labels": {"team": "qa"}}
    )
    job = envelope(response, status=202)["data"]
    assert set(job) == JOB_KEYS
    assert response.headers["location"] == f"/v1/jobs/{job['id']}"
    assert (job["type"], job["file_id"], job["status"]) == ("data.profile", csv_file, "queued")
    assert job["params"] == {"format": "auto"}  # no `header` (an extension of API.md) when not given
    assert (job["labels"], job["priority"], job["attempts"], job["children"]) == ({"team": "qa"}, 5, 0, [])
    assert TIMESTAMP.match(job["created_at"])
    got = envelope(await api.get(f"/v1/jobs/{job['id']}"), status=200)["data"]
    assert (got["id"], got["type"], got["labels"]) == (job["id"], "data.profile", {"team": "qa"})


@pytest.mark.parametrize("job_type", ["data.profile", "data.query"])
async def test_a_csv_header_given_is_taken_and_shown(
    api: httpx.AsyncClient, csv_file: str, envelope: EnvelopeCheck, job_type: str
) -> None:
    """`header` (whether a CSV's first line names its columns) is taken by the table jobs and shown in the
    job's params as given."""
    params: dict[str, Any] = {"header": False} | ({"sql": "SELECT 1"} if job_type == "data.query" else {})
    response = await api.post("/v1/jobs", json={"type": job_type, "file_id": csv_file, "params": params})
    job = envelope(response, status=202)["data"]
    assert (job["params"]["header"], job["params"]["format"]) == (False, "auto")


async def test_a_submission_wakes_the_relays(
    stack: Stack, api: httpx.AsyncClient, db: DatabaseManager, csv_file: str
) -> None:
    """Each accepted submission (a plain one, and one with an Idempotency-Key, which takes the path of
    composite jobs: a transaction of several statements) nudges the relays on the outbox channel; a
    refused one does not."""
    channel = f"{stack.settings.redis.prefix}:outbox"
    pubsub = db.redis.pubsub()

    async def nudges(within_s: float = 0.5) -> int:
        count = 0
        deadline = time.monotonic() + within_s
        while (left := deadline - time.monotonic()) > 0:
            if await pubsub.get_message(ignore_subscribe_messages=True, timeout=left) is not None:
                count += 1
        return count

    try:
        await pubsub.subscribe(channel)
        await pubsub.get_message(timeout=1.0)  # the subscription's confirmation
        refused = await api.post("/v1/jobs", json={"type": "data.profile", "file_id": "no-such-file"})
        assert refused.status_code == 404
        assert await nudges() == 0
        for extra in ({}, {"headers": {"Idempotency-Key": uuid.uuid4().hex}}):
            response = await api.post("/v1/jobs", json={"type": "data.profile", "file_id": csv_file}, **extra)
            assert response.status_code == 202
            assert await nudges() == 1
    finally:
        await pubsub.aclose()


async def test_unknown_job_is_404(api: httpx.AsyncClient, envelope: EnvelopeCheck) -> None:
    """A job id that never existed answers 404 on read, result, events and cancel."""
    for method, url in [
        ("GET", "/v1/jobs/nope"),
        ("GET", "/v1/jobs/nope/result"),
        ("GET", "/v1/jobs/nope/events"),
        ("POST", "/v1/jobs/nope/cancel"),
    ]:
        envelope(await api.request(method, url), status=404, error_code="NOT_FOUND")


async def test_finished_job_has_a_result_and_cannot_be_cancelled(
    api: httpx.AsyncClient, tmp_path: Path, envelope: EnvelopeCheck
) -> None:
    """A succeeded job's result carries job_id, type, input_file_id and created_at; cancelling it is 409."""
    path = tmp_path / "t.csv"
    truth = make_csv(path, rows=40)
    job = await run_job(api, "data.profile", path, priority=9)
    assert job["status"] == "succeeded", job
    assert job["progress"] == 1.0
    assert TIMESTAMP.match(job["started_at"])
    assert TIMESTAMP.match(job["finished_at"])
    result = await result_of(api, job["id"])
    assert (result["job_id"], result["type"], result["input_file_id"]) == (
        job["id"],
        "data.profile",
        job["file_id"],
    )
    assert TIMESTAMP.match(result["created_at"])
    assert result["row_count"] == 40
    assert result["column_count"] == truth["column_count"]
    assert "tenant_id" not in result
    body = envelope(
        await api.post(f"/v1/jobs/{job['id']}/cancel"), status=409, error_code="JOB_NOT_CANCELLABLE"
    )
    assert "succeeded" in body["message"]


async def test_result_before_success_is_409(
    stack: Stack, api: httpx.AsyncClient, csv_file: str, envelope: EnvelopeCheck
) -> None:
    """Asking for the result of a job not yet succeeded answers 409 JOB_NOT_FINISHED."""
    await stack.rabbit_proxy.cut()
    try:
        job = await submit(api, "data.profile", csv_file)
        body = envelope(
            await api.get(f"/v1/jobs/{job['id']}/result"), status=409, error_code="JOB_NOT_FINISHED"
        )
        assert "queued" in body["message"]
    finally:
        await stack.rabbit_proxy.restore()
    await wait_for(api, job["id"])


async def test_failed_job_result_is_409(
    api: httpx.AsyncClient, tmp_path: Path, envelope: EnvelopeCheck
) -> None:
    """A job that failed has no result: 409 JOB_NOT_FINISHED naming its status and error code, and where
    its failure is told (not that its result exists once it has succeeded, as if to wait for it)."""
    path = tmp_path / "t.csv"
    make_csv(path, rows=10)
    job = await run_job(api, "data.profile", path, params={"format": "parquet"})
    assert job["status"] == "failed", job
    assert job["error_code"]
    body = envelope(await api.get(f"/v1/jobs/{job['id']}/result"), status=409, error_code="JOB_NOT_FINISHED")
    assert body["message"] == (
        f"Job {job['id']} failed ({job['error_code']}): it has no result; the job object's error_message "
        "says why."
    )


async def test_lists_filter_by_status_type_and_label(
    fresh_client: httpx.AsyncClient, tmp_path: Path, envelope: EnvelopeCheck
) -> None:
    """Job lists filter by status, type and one or several key:value labels, newest first."""
    csv_path, wav_path = tmp_path / "t.csv", tmp_path / "a.wav"
    make_csv(csv_path, rows=10)
    make_audio(wav_path, duration_s=0.3)
    table, audio = await upload(fresh_client, csv_path), await upload(fresh_client, wav_path)
    first = await submit(fresh_client, "data.profile", table, labels={"team": "red", "env": "ci"})
    second = await submit(fresh_client, "audio.probe", audio, labels={"team": "blue", "env": "ci"})
    third = await submit(fresh_client, "data.profile", table, labels={"team": "blue"})
    for job in (first, second, third):
        await wait_for(fresh_client, job["id"])
    cancelled_file = await upload(fresh_client, csv_path)

    async def ids(**params: Any) -> list[str]:
        response = await fresh_client.get("/v1/jobs", params=params)
        return [item["id"] for item in envelope(response, status=200)["data"]["items"]]

    assert await ids() == [third["id"], second["id"], first["id"]]
    assert await ids(type="data.profile") == [third["id"], first["id"]]
    assert await ids(type="audio.probe") == [second["id"]]
    assert await ids(label="team:blue") == [third["id"], second["id"]]
    assert await ids(label=["team:blue", "env:ci"]) == [second["id"]]
    # A key given twice requires both values, which no job has (only the last one was used).
    assert await ids(label=["team:blue", "team:red"]) == []
    assert await ids(label=["team:red", "team:blue"]) == []
    assert await ids(label="team:green") == []
    assert await ids(status="succeeded") == [third["id"], second["id"], first["id"]]
    assert await ids(status="queued") == []
    assert await ids(status="succeeded", type="audio.probe", label="env:ci") == [second["id"]]
    # A status or type repeated selects jobs of any of them (only the last one was used).
    assert await ids(status=["succeeded", "queued"]) == [third["id"], second["id"], first["id"]]
    assert await ids(status=["queued", "running"]) == []
    assert await ids(type=["audio.probe", "data.profile"]) == [third["id"], second["id"], first["id"]]
    assert await ids(type=["audio.probe", "video.probe"], status=["failed", "succeeded"]) == [second["id"]]
    page = (await fresh_client.get("/v1/jobs", params={"limit": 2})).json()["data"]
    rest = (await fresh_client.get("/v1/jobs", params={"cursor": page["next_cursor"]})).json()["data"]
    assert [j["id"] for j in page["items"] + rest["items"]] == [third["id"], second["id"], first["id"]]
    assert rest["next_cursor"] is None
    by_type = (await fresh_client.get("/v1/jobs", params={"type": "data.profile", "limit": 1})).json()["data"]
    assert [j["id"] for j in by_type["items"]] == [third["id"]]
    assert await ids(type="data.profile", cursor=by_type["next_cursor"]) == [first["id"]]
    # Filters hold past a cursor too (`first` is red).
    assert await ids(type="data.profile", label="team:blue", cursor=by_type["next_cursor"]) == []
    assert cancelled_file  # an uploaded file alone adds no job
    assert len(await ids()) == 3


@pytest.mark.parametrize(
    "params", [{"label": "nocolon"}, {"label": ":value"}, {"status": "sleeping"}, {"limit": 500}]
)
async def test_malformed_list_filters_are_422(
    api: httpx.AsyncClient, envelope: EnvelopeCheck, params: dict[str, Any]
) -> None:
    """A label filter without key:value, an unknown status or a limit over 200 answers 422."""
    body = envelope(await api.get("/v1/jobs", params=params), status=422, error_code="VALIDATION_ERROR")
    assert body["data"]["details"][0]["loc"][0] == "query"


@pytest.mark.parametrize(
    "cursor",
    [
        "zzzz",
        # Tampered: times that leave PostgreSQL's range in UTC (each was a 500), a time without its zone.
        "{listing}|0001-01-01T00:00:00+01:00|x",
        "{listing}|9999-12-31T23:59:59-01:00|x",
        "{listing}|2020-01-01T00:00:00|x",
        # Of the other listing: a files cursor gave a page of jobs (from the file's place), with a 200.
        "{other}|2020-01-01T00:00:00+00:00|x",
        "2020-01-01T00:00:00+00:00|x",  # of no listing
    ],
)
@pytest.mark.parametrize("listing", ["jobs", "files"])
async def test_a_cursor_the_api_did_not_give_out_is_422(
    api: httpx.AsyncClient, envelope: EnvelopeCheck, listing: str, cursor: str
) -> None:
    """A cursor not given out by the API for that list answers 422 on both lists, however it was made."""
    other = {"jobs": "files", "files": "jobs"}[listing]
    made = cursor if cursor == "zzzz" else _cursor(cursor.format(listing=listing, other=other))
    response = await api.get(f"/v1/{listing}", params={"cursor": made})
    envelope(response, status=422, error_code="VALIDATION_ERROR")
    assert (
        await api.get(f"/v1/{listing}", params={"cursor": _cursor(f"{listing}|2020-01-01T00:00:00+00:00|x")})
    ).status_code == 200


# --- cancellation ------------------------------------------------------------------------------------


async def test_cancel_of_a_queued_job_is_immediate_and_final(
    stack: Stack, api: httpx.AsyncClient, csv_file: str, db: DatabaseManager, envelope: EnvelopeCheck
) -> None:
    """A queued job cancelled while the broker is away is cancelled at once and stays so once published."""
    await stack.rabbit_proxy.cut()
    try:
        job = await submit(api, "data.profile", csv_file)
        await asyncio.sleep(0.3)  # the relay tries and fails to publish meanwhile
        assert not await _outbox_sent(db, job["id"])
        body = envelope(await api.post(f"/v1/jobs/{job['id']}/cancel"), status=202)
        assert body["data"]["status"] == "cancelled"
        assert body["message"] == "cancelled"
        assert TIMESTAMP.match(body["data"]["finished_at"])
    finally:
        await stack.rabbit_proxy.restore()
    deadline = time.monotonic() + 30
    while not await _outbox_sent(db, job["id"]):
        assert time.monotonic() < deadline, "the relay did not publish the entry after the broker came back"
        await asyncio.sleep(0.1)
    await asyncio.sleep(2.0)  # time for a worker to (wrongly) pick it up
    after = await wait_for(api, job["id"])
    assert after["status"] == "cancelled"
    assert after["started_at"] is None
    assert after["attempts"] == 0
    envelope(await api.get(f"/v1/jobs/{job['id']}/result"), status=409, error_code="JOB_NOT_FINISHED")
    envelope(await api.post(f"/v1/jobs/{job['id']}/cancel"), status=409, error_code="JOB_NOT_CANCELLABLE")


async def test_cancel_of_a_job_queued_again_after_a_try_does_not_say_it_never_started(
    stack: Stack, api: httpx.AsyncClient, db: DatabaseManager, csv_file: str
) -> None:
    """A job waiting out a retry has started (its attempt counted): cancelled, it says "cancelled", not
    "cancelled before it started"; a job never tried still says the latter."""
    tried = await stack.held_job(api, "data.profile", csv_file)
    untried = await stack.held_job(api, "data.profile", csv_file)
    async with db.session() as session:
        await session.execute(update(jobs).where(jobs.c.id == tried.job_id).values(attempts=1))
        await session.commit()
    for message, job in [("cancelled", tried), ("cancelled before it started", untried)]:
        response = await api.post(f"/v1/jobs/{job.job_id}/cancel")
        assert response.status_code == 202, response.text
        data = response.json()["data"]
        assert (data["status"], data["message"]) == ("cancelled", message)


async def test_cancel_of_a_job_waiting_for_its_rerun_deletes_the_files_its_earlier_attempts_saved(
    stack: Stack, api: httpx.AsyncClient, db: DatabaseManager, csv_file: str
) -> None:
    """A job queued again after an attempt whose worker died (the reaper's requeue), that attempt having
    saved a file: cancelled while it waits for its rerun, its file is deleted (the row marked, the bytes
    dropped), as the rerun would have deleted it. It stayed the tenant's for ever, no rerun to come and the
    relay ending no such job. Another job's file stays."""
    rerun, other = [await stack.held_job(api, "data.profile", csv_file) for _ in range(2)]
    async with db.session() as session:
        tried = jobs.c.id.in_([rerun.job_id, other.job_id])
        await session.execute(update(jobs).where(tried).values(attempts=1, started_at=func.now()))
        await session.commit()
    saved = [await stack.saved_file("tenant-a", job.job_id) for job in (rerun, other)]
    response = await api.post(f"/v1/jobs/{rerun.job_id}/cancel")
    assert response.status_code == 202, response.text
    assert response.json()["data"]["status"] == "cancelled"
    assert [await stack.file_state(api, *each) for each in saved] == ["deleted", "kept"]


async def test_cancel_of_a_running_job_asks_it_to_stop(
    stack: Stack, api: httpx.AsyncClient, db: DatabaseManager, csv_file: str, envelope: EnvelopeCheck
) -> None:
    """Cancelling a running job answers 202 with the job still running and a note that it stops at its next
    checkpoint, and raises the flag its worker looks for. (A job of the stack's own, seen running before it
    ended, made this test skip or accept a success; the worker's side is each service's cancel test.)"""
    job = await stack.held_job(api, "data.profile", csv_file)
    async with db.session() as session:
        running = {"status": "running", "worker": "data-elsewhere-1-abcdef", "started_at": func.now()}
        lease = func.now() + timedelta(minutes=5)
        await session.execute(
            update(jobs).where(jobs.c.id == job.job_id).values(**running, lease_expires_at=lease)
        )
        await session.commit()
    body = envelope(await api.post(f"/v1/jobs/{job.job_id}/cancel"), status=202)
    assert (body["data"]["status"], body["message"]) == ("running", "asked to stop at its next checkpoint")
    assert await JobSignals(db.redis, prefix=stack.settings.redis.prefix).cancel_requested(job.job_id)


# --- idempotency -------------------------------------------------------------------------------------


async def test_a_submission_commits_its_outbox_entry_with_the_job(
    api: httpx.AsyncClient, csv_file: str, db: DatabaseManager
) -> None:
    """The job's outbox entry is written with it: routed by its type, carrying the message that runs it."""
    job = await submit(api, "data.profile", csv_file, priority=7)
    async with db.session() as session:
        entry = (
            await session.execute(
                text("select routing_key, payload, delay_s, dead from outbox where job_id = :id"),
                {"id": job["id"]},
            )
        ).one()
    assert entry.routing_key == "data.profile"
    assert (entry.delay_s, entry.dead) == (0, False)
    assert entry.payload == {
        "job_id": job["id"],
        "type": "data.profile",
        "tenant_id": "tenant-a",
        "file_id": csv_file,
        "params": job["params"],
        "priority": 7,
    }


async def test_idempotency_key_replays_the_first_job(
    api: httpx.AsyncClient, csv_file: str, envelope: EnvelopeCheck
) -> None:
    """The same Idempotency-Key and body answers 200 with the first job; another body answers 409 CONFLICT."""
    key = {"Idempotency-Key": f"idem-{csv_file}"}
    job_body = {"type": "data.profile", "file_id": csv_file, "labels": {"a": "1"}}
    first = envelope(await api.post("/v1/jobs", json=job_body, headers=key), status=202)["data"]
    again = await api.post("/v1/jobs", json=job_body, headers=key)
    replay = envelope(again, status=200)
    assert replay["data"]["id"] == first["id"]
    assert again.headers["location"] == f"/v1/jobs/{first['id']}"
    assert "Idempotency-Key" in replay["message"]
    # The same job with a default spelled out (as the job object shows its params) is the same body.
    spelled = await api.post("/v1/jobs", json={**job_body, "params": {"format": "auto"}}, headers=key)
    assert envelope(spelled, status=200)["data"]["id"] == first["id"]
    other = await api.post("/v1/jobs", json={**job_body, "priority": 1}, headers=key)
    body = envelope(other, status=409, error_code="CONFLICT")
    assert "different body" in body["message"]


async def test_a_replay_answers_even_after_the_input_file_was_deleted(
    api: httpx.AsyncClient, tmp_path: Path, envelope: EnvelopeCheck
) -> None:
    """The first job of a key is the answer to its replay, whatever became of the input since."""
    path = tmp_path / "gone.csv"
    make_csv(path, rows=5)
    file_id = await upload(api, path)
    key = {"Idempotency-Key": f"deleted-{file_id}"}
    job_body = {"type": "data.profile", "file_id": file_id}
    first = envelope(await api.post("/v1/jobs", json=job_body, headers=key), status=202)["data"]
    envelope(await api.delete(f"/v1/files/{file_id}"), status=200)
    replay = envelope(await api.post("/v1/jobs", json=job_body, headers=key), status=200)
    assert replay["data"]["id"] == first["id"]
    fresh = await api.post("/v1/jobs", json=job_body, headers={"Idempotency-Key": f"new-{file_id}"})
    envelope(fresh, status=404, error_code="NOT_FOUND")


async def test_idempotency_keys_are_per_tenant(
    stack: Stack, api: httpx.AsyncClient, tmp_path: Path, csv_file: str
) -> None:
    """Tenant B using tenant A's Idempotency-Key gets a job of its own."""
    key = {"Idempotency-Key": f"shared-{csv_file}"}
    path = tmp_path / "b.csv"
    make_csv(path, rows=5)
    other = stack.client("tenant-b")
    b_file = await upload(other, path)
    a_job = await api.post("/v1/jobs", json={"type": "data.profile", "file_id": csv_file}, headers=key)
    b_job = await other.post("/v1/jobs", json={"type": "data.profile", "file_id": b_file}, headers=key)
    assert (a_job.status_code, b_job.status_code) == (202, 202)
    assert a_job.json()["data"]["id"] != b_job.json()["data"]["id"]


async def test_concurrent_submits_with_one_key_create_one_job(
    api: httpx.AsyncClient, csv_file: str, db: DatabaseManager
) -> None:
    """Ten concurrent submissions with one Idempotency-Key create exactly one job, which all ten answer."""
    key = f"race-{csv_file}"
    job_body = {"type": "data.profile", "file_id": csv_file}
    responses = await asyncio.gather(
        *(api.post("/v1/jobs", json=job_body, headers={"Idempotency-Key": key}) for _ in range(10))
    )
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200] * 9 + [202], [r.text for r in responses]
    assert len({r.json()["data"]["id"] for r in responses}) == 1
    async with db.session() as session:
        count = await session.scalar(
            text("select count(*) from jobs where file_id = :file and tenant_id = 'tenant-a'"),
            {"file": csv_file},
        )
        outbox = await session.scalar(
            text("select count(*) from outbox o join jobs j on j.id = o.job_id where j.file_id = :file"),
            {"file": csv_file},
        )
    assert (count, outbox) == (1, 1)


# --- events (SSE) ------------------------------------------------------------------------------------


async def test_events_of_a_finished_job_are_one_done(api: httpx.AsyncClient, tmp_path: Path) -> None:
    """Events of a finished job give exactly one `done` event with the terminal job object, then close."""
    path = tmp_path / "t.csv"
    make_csv(path, rows=10)
    job = await run_job(api, "data.profile", path)
    response = await api.get(f"/v1/jobs/{job['id']}/events")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["cache-control"] == "no-cache"
    events = _events(response.text)
    assert [name for name, _ in events] == ["done"]
    assert events[0][1]["id"] == job["id"]
    assert events[0][1]["status"] == "succeeded"
    assert set(events[0][1]) == JOB_KEYS


async def test_events_of_a_live_job_are_progress_then_done(
    stack: Stack, api: httpx.AsyncClient, tmp_path: Path, first_event: asyncio.Event
) -> None:
    """Events of a job followed from queued give progress events, then one `done` with the terminal job."""
    path = tmp_path / "clip.mp4"
    make_video(path, duration_s=1.0)
    file_id = await upload(api, path)
    await stack.rabbit_proxy.cut()
    try:
        job = await submit(api, "video.probe", file_id)
        listening = asyncio.create_task(api.get(f"/v1/jobs/{job['id']}/events"))
        await asyncio.wait_for(first_event.wait(), timeout=10)  # subscribed and the queued state sent
        assert not listening.done()
    finally:
        await stack.rabbit_proxy.restore()
    response = await asyncio.wait_for(listening, timeout=60)
    events = _events(response.text)
    names = [name for name, _ in events]
    assert names[0] == "progress"
    assert names.count("done") == 1
    assert names[-1] == "done"
    assert set(names[:-1]) == {"progress"}
    assert events[0][1]["status"] == "queued"
    assert all(data["id"] == job["id"] for _, data in events)
    done = events[-1][1]
    assert done["status"] == "succeeded"
    assert done["progress"] == 1.0
    progresses = [data["progress"] for _, data in events]
    assert progresses == sorted(progresses)


async def test_a_tenant_holds_at_most_its_share_of_event_streams(
    stack: Stack, csv_file: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A gateway whose `event_streams_per_tenant` is 2: a tenant's third open stream is refused with 429
    RATE_LIMITED and Retry-After, while another tenant opens its own; once the streams end (their job
    cancelled), the tenant's slots are back."""
    opened = 0
    sse = routes._sse

    def counting(event: str, data: dict[str, Any]) -> str:
        nonlocal opened
        opened += event == "progress"
        return sse(event, data)

    monkeypatch.setattr(routes, "_sse", counting)
    gateway = stack.settings.gateway.model_copy(update={"event_streams_per_tenant": 2})
    app = create_app(stack.settings.model_copy(update={"gateway": gateway}))
    async with (
        LifespanManager(app, startup_timeout=30) as manager,
        api_client(manager.app, key=TENANT_KEYS["tenant-a"]) as a,
        api_client(manager.app, key=TENANT_KEYS["tenant-b"]) as b,
        stack.relay_cut_off(),
    ):
        job = await submit(a, "data.profile", csv_file)
        make_csv(tmp_path / "theirs.csv", rows=30)
        other = await submit(
            b, "data.profile", await upload(b, tmp_path / "theirs.csv", content_type="text/csv")
        )
        streams = [asyncio.create_task(a.get(f"/v1/jobs/{job['id']}/events")) for _ in range(2)]
        theirs = asyncio.create_task(b.get(f"/v1/jobs/{other['id']}/events"))
        deadline = time.monotonic() + 10
        while opened < 3:
            assert time.monotonic() < deadline, "the streams did not open"
            await asyncio.sleep(0.05)
        refused = await asyncio.wait_for(a.get(f"/v1/jobs/{job['id']}/events"), 10)  # not a stream
        assert refused.status_code == 429, refused.text
        assert refused.json()["error_code"] == "RATE_LIMITED"
        assert refused.headers["retry-after"] == "5"
        for client, job_id in ((a, job["id"]), (b, other["id"])):
            assert (await client.post(f"/v1/jobs/{job_id}/cancel")).status_code == 202
        for done in await asyncio.wait_for(asyncio.gather(*streams, theirs), 20):
            assert done.status_code == 200
            assert _events(done.text)[-1][1]["status"] == "cancelled"
        again = await a.get(f"/v1/jobs/{job['id']}/events")
        assert again.status_code == 200
        assert [name for name, _ in _events(again.text)] == ["done"]


async def test_events_of_a_job_cancelled_while_followed_end_with_cancelled(
    stack: Stack, api: httpx.AsyncClient, csv_file: str, first_event: asyncio.Event
) -> None:
    """A followed queued job that is cancelled ends its stream with `done` carrying status cancelled."""
    await stack.rabbit_proxy.cut()
    try:
        job = await submit(api, "data.profile", csv_file)
        listening = asyncio.create_task(api.get(f"/v1/jobs/{job['id']}/events"))
        await asyncio.wait_for(first_event.wait(), timeout=10)
        assert (await api.post(f"/v1/jobs/{job['id']}/cancel")).status_code == 202
        response = await asyncio.wait_for(listening, timeout=10)
    finally:
        await stack.rabbit_proxy.restore()
    events = _events(response.text)
    assert [name for name, _ in events] == ["progress", "done"]
    assert events[-1][1]["status"] == "cancelled"


# --- Redis away ----------------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def redis_away(stack: Stack) -> AsyncIterator[None]:
    """While open, the gateway's job signals talk to a Redis where nothing listens (port 1)."""
    signals = registered(stack.app, JobSignals)
    here = signals.redis
    away = Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.3)
    signals.redis = away
    try:
        yield
    finally:
        signals.redis = here
        await away.aclose()


async def _running(
    db: DatabaseManager, job_id: str, *, progress: float = 0.0, message: str = "started"
) -> None:
    """Make a held job running, as a worker elsewhere would have, with `progress` in its row."""
    async with db.session() as session:
        running = {"status": "running", "worker": "data-elsewhere-1-abcdef", "started_at": func.now()}
        lease = func.now() + timedelta(minutes=5)
        await session.execute(
            update(jobs)
            .where(jobs.c.id == job_id)
            .values(**running, lease_expires_at=lease, progress=progress, message=message)
        )
        await session.commit()


async def test_jobs_read_and_cancel_with_redis_away(
    stack: Stack, api: httpx.AsyncClient, db: DatabaseManager, csv_file: str, envelope: EnvelopeCheck
) -> None:
    """Redis carries only live progress and announcements; the rows keep the truth. With Redis away, a
    running job reads with its row's progress (it answered 503) and lists; a queued job cancels, 202 (it
    answered 503 "retry" for a job already cancelled, whose retry said 409); a running job's cancel, which
    needs Redis to reach its worker, is 503 and asks nothing."""
    queued = await stack.held_job(api, "data.profile", csv_file)
    running = await stack.held_job(api, "data.profile", csv_file)
    await _running(db, running.job_id, progress=0.25, message="reading the table")
    async with redis_away(stack):
        body = envelope(await api.get(f"/v1/jobs/{running.job_id}"), status=200)
        assert (body["data"]["progress"], body["data"]["message"]) == (0.25, "reading the table")
        listed = envelope(await api.get("/v1/jobs", params={"limit": 200}), status=200)["data"]["items"]
        assert {queued.job_id, running.job_id} <= {item["id"] for item in listed}
        body = envelope(await api.post(f"/v1/jobs/{queued.job_id}/cancel"), status=202)
        assert body["data"]["status"] == "cancelled"
        envelope(
            await api.post(f"/v1/jobs/{running.job_id}/cancel"), status=503, error_code="SERVICE_UNAVAILABLE"
        )
    assert not await JobSignals(db.redis, prefix=stack.settings.redis.prefix).cancel_requested(running.job_id)
    envelope(await api.post(f"/v1/jobs/{queued.job_id}/cancel"), status=409, error_code="JOB_NOT_CANCELLABLE")


async def test_a_running_jobs_cancel_with_redis_refusing_writes_is_503(
    stack: Stack,
    api: httpx.AsyncClient,
    db: DatabaseManager,
    csv_file: str,
    envelope: EnvelopeCheck,
    read_only_redis: Redis,
) -> None:
    """A Redis refusing writes (READONLY: a replica after a failover; OOM alike) cannot carry a running
    job's cancel to its worker: 503 with Retry-After, as with Redis away (it was a 500 INTERNAL_ERROR, "a
    bug"); a queued job still cancels, and jobs still read."""
    queued = await stack.held_job(api, "data.profile", csv_file)
    running = await stack.held_job(api, "data.profile", csv_file)
    await _running(db, running.job_id, progress=0.25, message="reading the table")
    signals = registered(stack.app, JobSignals)
    here, signals.redis = signals.redis, read_only_redis
    try:
        refused = await api.post(f"/v1/jobs/{running.job_id}/cancel")
        envelope(refused, status=503, error_code="SERVICE_UNAVAILABLE")
        assert "Redis" in refused.json()["message"]
        assert refused.headers["Retry-After"]
        body = envelope(await api.post(f"/v1/jobs/{queued.job_id}/cancel"), status=202)
        assert body["data"]["status"] == "cancelled"
        envelope(await api.get(f"/v1/jobs/{running.job_id}"), status=200)
    finally:
        signals.redis = here
    assert not await JobSignals(db.redis, prefix=stack.settings.redis.prefix).cancel_requested(running.job_id)


async def test_the_job_list_shows_a_running_jobs_live_progress(
    stack: Stack, api: httpx.AsyncClient, db: DatabaseManager, csv_file: str
) -> None:
    """A running job's list item shows the progress its worker last reported, as the job object does (it
    showed the row's, written at the start: 0.0, "started", while the job read 0.7)."""
    job = await stack.held_job(api, "data.profile", csv_file)
    await _running(db, job.job_id)
    live = {"id": job.job_id, "progress": 0.7, "message": "running the query"}
    await JobSignals(db.redis, prefix=stack.settings.redis.prefix).set_progress(live)
    single = (await api.get(f"/v1/jobs/{job.job_id}")).json()["data"]
    listed = (await api.get("/v1/jobs", params={"status": "running", "limit": 200})).json()["data"]["items"]
    (item,) = [each for each in listed if each["id"] == job.job_id]
    assert (single["progress"], single["message"]) == (0.7, "running the query")
    assert item == single


async def test_a_reruns_job_shows_no_progress_its_earlier_attempt_reported(
    stack: Stack, api: httpx.AsyncClient, db: DatabaseManager, csv_file: str
) -> None:
    """A job rerun (its second attempt, running) whose first attempt last reported 60 % shows its row's
    progress, in the job object and in the list, until the rerun reports its own; the first attempt's
    showed meanwhile, as if the rerun had got that far."""
    job = await stack.held_job(api, "data.profile", csv_file)
    await _running(db, job.job_id, message="started")
    signals = JobSignals(db.redis, prefix=stack.settings.redis.prefix)
    await signals.set_progress({"id": job.job_id, "attempts": 1, "progress": 0.6, "message": "profiling"})
    async with db.session() as session:
        await session.execute(update(jobs).where(jobs.c.id == job.job_id).values(attempts=2))
        await session.commit()

    async def shown() -> tuple[tuple[float, str], tuple[float, str]]:
        single = (await api.get(f"/v1/jobs/{job.job_id}")).json()["data"]
        listed = (await api.get("/v1/jobs", params={"status": "running", "limit": 200})).json()["data"]
        (item,) = [each for each in listed["items"] if each["id"] == job.job_id]
        return (single["progress"], single["message"]), (item["progress"], item["message"])

    assert await shown() == ((0.0, "started"), (0.0, "started"))
    await signals.set_progress({"id": job.job_id, "attempts": 2, "progress": 0.25, "message": "profiling"})
    assert await shown() == ((0.25, "profiling"), (0.25, "profiling"))


async def test_events_of_a_running_job_with_redis_away_follow_its_row(
    stack: Stack,
    api: httpx.AsyncClient,
    db: DatabaseManager,
    csv_file: str,
    first_event: asyncio.Event,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With Redis away, a running job's event stream gives its row's progress and, read again at each
    keep-alive, its end (the stream broke off after its headers, without an event)."""
    monkeypatch.setattr(routes, "KEEP_ALIVE_S", 0.2)
    job = await stack.held_job(api, "data.profile", csv_file)
    await _running(db, job.job_id, progress=0.5, message="profiling")
    async with redis_away(stack):
        listening = asyncio.create_task(api.get(f"/v1/jobs/{job.job_id}/events"))
        await asyncio.wait_for(first_event.wait(), timeout=10)
        async with db.session() as session:
            ended = {"status": "failed", "error_code": "INTERNAL_ERROR", "finished_at": func.now()}
            await session.execute(update(jobs).where(jobs.c.id == job.job_id).values(**ended))
            await session.commit()
        response = await asyncio.wait_for(listening, timeout=10)
    events = _events(response.text)
    assert [name for name, _ in events] == ["progress", "done"]
    assert (events[0][1]["status"], events[0][1]["progress"]) == ("running", 0.5)
    assert events[1][1]["status"] == "failed"
