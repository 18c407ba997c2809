"""A first end-to-end pass: one job of each service through the gateway, on the real servers."""

from __future__ import annotations

from pathlib import Path

import httpx

from scripts.samples import make_audio, make_csv, make_video
from tests.fixtures.stack import result_of, run_job


async def test_video_probe_runs_end_to_end(api: httpx.AsyncClient, tmp_path: Path) -> None:
    """A probed video reports its generated size, rate and frame count."""
    path = tmp_path / "clip.mp4"
    make_video(path, duration_s=2.0, fps=25, width=320, height=240)
    job = await run_job(api, "video.probe", path)
    assert job["status"] == "succeeded", job
    result = await result_of(api, job["id"])
    assert result["video"]["width"] == 320
    assert result["video"]["frame_count"] == 50


async def test_audio_probe_runs_end_to_end(api: httpx.AsyncClient, tmp_path: Path) -> None:
    """A probed WAV reports its generated rate, channels and duration."""
    path = tmp_path / "tone.wav"
    make_audio(path, duration_s=1.5, sample_rate=44100, channels=1)
    job = await run_job(api, "audio.probe", path)
    assert job["status"] == "succeeded", job
    result = await result_of(api, job["id"])
    assert (result["sample_rate"], result["channels"]) == (44100, 1)


async def test_data_profile_runs_end_to_end(api: httpx.AsyncClient, tmp_path: Path) -> None:
    """A profiled CSV reports the generator's row count."""
    path = tmp_path / "table.csv"
    truth = make_csv(path, rows=200)
    job = await run_job(api, "data.profile", path)
    assert job["status"] == "succeeded", job
    result = await result_of(api, job["id"])
    assert result["row_count"] == 200
    assert result["column_count"] == len(truth["columns"])
