"""The video job types end to end through the gateway, the bus and the video service on real servers."""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Any

import av
import httpx
import pytest

from scripts.samples import cut_frames, faststart, loop_video, make_audio_only, make_video, truncate
from tests.fixtures.stack import cancel_within, result_of, run_job, submit, upload, wait_for

pytestmark = pytest.mark.integration

CUTS_S = [0.8, 2.36, 3.2]


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("handlers") / "clip.mp4"
    make_video(
        path,
        duration_s=6.0,
        fps=25,
        width=320,
        height=180,
        cuts_s=CUTS_S,
        texture=True,
        black_s=(4.0, 4.6),
        frozen_s=(4.6, 5.84),
    )
    return path


@pytest.fixture(scope="module")
def long_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Enough frames that decoding them all takes several seconds on a busy machine."""
    folder = tmp_path_factory.mktemp("handlers")
    make_video(folder / "base.mp4", duration_s=8.0, fps=25, width=320, height=180, segments=4)
    loop_video(folder / "base.mp4", folder / "long.mp4", times=50)
    return folder / "long.mp4"


async def _jpeg_size(api: httpx.AsyncClient, file_id: str) -> tuple[int, int]:
    response = await api.get(f"/v1/files/{file_id}/content")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/jpeg"
    with av.open(io.BytesIO(response.content)) as jpeg:
        frame = next(jpeg.decode(video=0))
    return frame.width, frame.height


async def test_scenes_end_to_end(api: httpx.AsyncClient, clip: Path) -> None:
    """A scenes job finds the three cuts at their frames and stores a readable thumbnail per scene."""
    job = await run_job(api, "video.scenes", clip, params={"min_scene_len_s": 0.3})
    assert job["status"] == "succeeded", job
    result = await result_of(api, job["id"])
    starts = [scene["start_frame"] for scene in result["scenes"]]
    assert starts[: len(CUTS_S) + 1] == cut_frames(150, 25, CUTS_S)
    assert result["cut_count"] == len(result["scenes"]) - 1
    assert result["frames_analyzed"] == 150
    assert result["scenes"][1]["start_s"] == pytest.approx(0.8)
    assert await _jpeg_size(api, result["scenes"][1]["thumbnail_file_id"]) == (320, 180)


async def test_quality_end_to_end(api: httpx.AsyncClient, clip: Path) -> None:
    """A quality job reports the black and the frozen stretch within 0.1 s."""
    job = await run_job(api, "video.quality", clip, params={"freeze_min_s": 1.0})
    assert job["status"] == "succeeded", job
    result = await result_of(api, job["id"])
    black = [(s["start_s"], s["end_s"]) for s in result["black_segments"]]
    frozen = [(s["start_s"], s["end_s"]) for s in result["frozen_segments"]]
    assert black == [pytest.approx((4.0, 4.6), abs=0.1)]
    assert frozen == [pytest.approx((4.6, 5.84), abs=0.1)]


async def test_thumbnails_end_to_end(api: httpx.AsyncClient, clip: Path) -> None:
    """A thumbnails job stores three 200-pixel-wide JPEGs that the tenant can read."""
    job = await run_job(api, "video.thumbnails", clip, params={"count": 3, "width": 200})
    assert job["status"] == "succeeded", job
    thumbnails = (await result_of(api, job["id"]))["thumbnails"]
    assert [t["t_s"] for t in thumbnails] == pytest.approx([1.0, 3.0, 5.0], abs=0.04)
    for thumbnail in thumbnails:
        assert (thumbnail["width"], thumbnail["height"]) == (200, 112)
        assert await _jpeg_size(api, thumbnail["file_id"]) == (200, 112)


async def test_a_raw_h264_stream_is_taken_and_analysed_end_to_end(
    api: httpx.AsyncClient, tmp_path: Path
) -> None:
    """A raw H.264 stream (no container, no timestamps) uploaded through the gateway runs a quality job:
    its black stretch is found where it is (the upload's sniffing refused every video job on it with 415)."""
    path = tmp_path / "clip.h264"
    make_video(path, duration_s=6.0, fps=25, width=320, height=180, cuts_s=CUTS_S, black_s=(4.0, 4.6))
    job = await run_job(api, "video.quality", path)
    assert job["status"] == "succeeded", job
    black = [(s["start_s"], s["end_s"]) for s in (await result_of(api, job["id"]))["black_segments"]]
    assert black == [pytest.approx((4.0, 4.6), abs=0.1)]


async def test_running_job_reports_frame_progress(api: httpx.AsyncClient, long_clip: Path) -> None:
    """A running quality job reports "decoding n/total frames" with its progress at n/total.

    The first report may say 0 frames (a busy machine, a decoder still filling its threads), so the test
    waits for one that has frames decoded.
    """
    job = await submit(api, "video.quality", await upload(api, long_clip))

    def decoded(j: dict[str, Any]) -> re.Match[str] | None:
        return re.fullmatch(r"decoding ([1-9]\d*)/10000 frames", j["message"] or "")

    seen = await wait_for(api, job["id"], until=lambda j: j["status"] != "queued" and decoded(j) is not None)
    assert seen["status"] == "running", seen
    match = decoded(seen)
    assert match is not None
    frames = int(match[1])
    assert frames < 10000
    assert seen["progress"] == pytest.approx(frames / 10000)
    await api.post(f"/v1/jobs/{job['id']}/cancel")
    await wait_for(api, job["id"])


async def test_cancel_stops_a_running_job_within_two_seconds(api: httpx.AsyncClient, long_clip: Path) -> None:
    """A cancel asked while a scenes job decodes ends the job `cancelled` within 2 s."""
    job = await submit(api, "video.scenes", await upload(api, long_clip), params={"thumbnails": False})
    await wait_for(api, job["id"], until=lambda j: "decoding" in (j["message"] or ""))
    await cancel_within(api, job["id"])


async def test_damaged_video_fails_with_decode_error(
    api: httpx.AsyncClient, clip: Path, tmp_path: Path
) -> None:
    """A truncated MP4 fails its scenes job with MEDIA_DECODE_ERROR."""
    damaged = tmp_path / "cut.mp4"
    truncate(clip, damaged, keep_fraction=0.5)
    job = await run_job(api, "video.scenes", damaged)
    assert (job["status"], job["error_code"]) == ("failed", "MEDIA_DECODE_ERROR"), job


async def test_a_streamable_mp4_cut_short_fails_its_thumbnails_job(
    api: httpx.AsyncClient, clip: Path, tmp_path: Path
) -> None:
    """An MP4 indexed at its start and cut short (it opens) fails video.thumbnails with MEDIA_DECODE_ERROR,
    instead of succeeding with the thumbnails of its first half."""
    streamable, damaged = tmp_path / "streamable.mp4", tmp_path / "cut.mp4"
    faststart(clip, streamable)
    truncate(streamable, damaged, keep_fraction=0.5)
    job = await run_job(api, "video.thumbnails", damaged, params={"count": 4})
    assert (job["status"], job["error_code"]) == ("failed", "MEDIA_DECODE_ERROR"), job
    assert "truncated" in job["error_message"]


async def test_a_video_container_without_video_is_unsupported(api: httpx.AsyncClient, tmp_path: Path) -> None:
    """An MPEG program stream holding only audio (taken as a video: its container lists no streams up
    front) fails its quality job with UNSUPPORTED_INPUT."""
    path = tmp_path / "sound.mpg"
    make_audio_only(path, container_format="mpeg", codec="mp2")
    job = await run_job(api, "video.quality", path)
    assert (job["status"], job["error_code"]) == ("failed", "UNSUPPORTED_INPUT"), job
    assert "no video stream" in job["error_message"]
