"""Damaged and wrong inputs fail their job at once with the API's error code and a message that says what
was wrong (API.md, "Job types and their results"; ARCHITECTURE.md, guarantee 4)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from scripts.samples import corrupt, make_audio, make_audio_only, make_video, truncate
from tests.fixtures.stack import Stack, run_job, submit, upload, wait_for

pytestmark = pytest.mark.integration


async def assert_failed(api: httpx.AsyncClient, job: dict[str, Any], error_code: str) -> str:
    """`job` failed with `error_code` on its one attempt and has no result; its error message."""
    assert job["status"] == "failed", job
    assert job["error_code"] == error_code, job
    assert job["attempts"] == 1, job
    assert job["finished_at"] is not None, job
    message: str = job["error_message"]
    assert message, job
    assert "Traceback" not in message
    response = await api.get(f"/v1/jobs/{job['id']}/result")
    assert response.status_code == 409, response.text
    body = response.json()
    assert (body["success"], body["error_code"]) == (False, "JOB_NOT_FINISHED"), body
    return message


async def test_truncated_video_fails_with_media_decode_error(api: httpx.AsyncClient, tmp_path: Path) -> None:
    """A truncated MP4 fails video.probe with MEDIA_DECODE_ERROR, saying it is damaged or truncated."""
    whole, cut = tmp_path / "whole.mp4", tmp_path / "cut.mp4"
    make_video(whole, duration_s=2.0)
    truncate(whole, cut, keep_fraction=0.5)
    job = await run_job(api, "video.probe", cut)
    message = await assert_failed(api, job, "MEDIA_DECODE_ERROR")
    assert "damaged" in message or "truncated" in message, message


async def test_truncated_wav_fails_its_loudness_job_with_media_decode_error(
    api: httpx.AsyncClient, tmp_path: Path
) -> None:
    """A WAV cut short fails audio.loudness with MEDIA_DECODE_ERROR, saying it is truncated, instead of
    measuring the fragment that is left (an integrated loudness of null for a few milliseconds)."""
    whole, cut = tmp_path / "tone.wav", tmp_path / "cut.wav"
    make_audio(whole, duration_s=3.0)
    truncate(whole, cut, keep_fraction=0.05)
    job = await run_job(api, "audio.loudness", cut)
    message = await assert_failed(api, job, "MEDIA_DECODE_ERROR")
    assert "truncated" in message, message


async def test_wav_with_garbled_header_fails_with_media_decode_error(
    api: httpx.AsyncClient, tmp_path: Path
) -> None:
    """A WAV whose chunk headers are garbage fails audio.probe with MEDIA_DECODE_ERROR."""
    whole, bad = tmp_path / "tone.wav", tmp_path / "bad.wav"
    make_audio(whole, duration_s=1.0)
    corrupt(whole, bad, start_fraction=0.0, end_fraction=0.5, keep_head_bytes=12)
    job = await run_job(api, "audio.probe", bad)
    message = await assert_failed(api, job, "MEDIA_DECODE_ERROR")
    assert "damaged" in message or "cannot" in message, message


async def test_video_container_without_video_stream_fails_with_unsupported_input(
    api: httpx.AsyncClient, tmp_path: Path
) -> None:
    """An MPEG program stream that holds only audio is accepted as a video (its container does not list its
    streams up front) but fails video.probe with UNSUPPORTED_INPUT, saying it has no video stream."""
    path = tmp_path / "audio-only.mpg"
    make_audio_only(path, container_format="mpeg", codec="mp2")
    job = await run_job(api, "video.probe", path)
    message = await assert_failed(api, job, "UNSUPPORTED_INPUT")
    assert "no video stream" in message, message


async def test_ragged_csv_fails_with_unsupported_input_naming_the_line(
    api: httpx.AsyncClient, tmp_path: Path
) -> None:
    """A CSV whose fourth line has a field too few fails data.profile with UNSUPPORTED_INPUT naming that
    line."""
    path = tmp_path / "ragged.csv"
    rows = ["id,name,score", *(f"{i},name{i},{i * 1.5}" for i in range(1, 40))]
    rows[3] = "3,name3"  # line 4 of the file
    path.write_text("\n".join(rows) + "\n")
    job = await submit(api, "data.profile", await upload(api, path, content_type="text/csv"))
    job = await wait_for(api, job["id"])
    message = await assert_failed(api, job, "UNSUPPORTED_INPUT")
    assert "line 4" in message, message


async def test_input_deleted_before_the_job_runs_fails_with_input_not_found(
    stack: Stack, api: httpx.AsyncClient, tmp_path: Path
) -> None:
    """A file deleted after its job was accepted but before it ran fails the job with INPUT_NOT_FOUND."""
    path = tmp_path / "clip.mp4"
    make_video(path, duration_s=1.0, fps=10, width=160, height=120)
    file_id = await upload(api, path)
    await stack.rabbit_proxy.cut()  # hold the job in the outbox while the file goes
    try:
        job = await submit(api, "video.probe", file_id)
        response = await api.delete(f"/v1/files/{file_id}")
        assert response.status_code == 200, response.text
        assert (await api.get(f"/v1/files/{file_id}")).status_code == 404
    finally:
        await stack.rabbit_proxy.restore()
    done = await wait_for(api, job["id"], timeout=90)
    message = await assert_failed(api, done, "INPUT_NOT_FOUND")
    assert file_id in message, message
