"""The audio job types end to end: upload, submit, progress, result and cancel through the gateway."""

from __future__ import annotations

import math
from fractions import Fraction
from pathlib import Path

import av
import httpx
import numpy as np
import pytest

from scripts.samples import make_audio
from tests.fixtures.stack import cancel_within, result_of, run_job, submit, upload, wait_for

from .signals import noise, sequence, write


async def test_loudness_job(api: httpx.AsyncClient, tmp_path: Path) -> None:
    """A -23 dBFS stereo tone measures -23.0 LUFS, with peaks and a short-term series, through the API."""
    path = tmp_path / "tone.flac"
    make_audio(path, duration_s=5.0, level_dbfs=-23.0)
    job = await run_job(api, "audio.loudness", path)
    assert job["status"] == "succeeded", job
    result = await result_of(api, job["id"])
    assert result["integrated_lufs"] == pytest.approx(-23.0, abs=0.1)
    assert result["sample_peak_dbfs"] == pytest.approx(-23.0, abs=0.05)
    assert result["true_peak_dbtp"] == pytest.approx(-23.0, abs=0.3)
    assert result["loudness_range_lu"] == pytest.approx(0.0, abs=0.1)
    assert [point["t_s"] for point in result["short_term"]] == [3.0, 4.0, 5.0]


async def test_silence_job_with_params(api: httpx.AsyncClient, tmp_path: Path) -> None:
    """A quiet stretch between two loud ones is reported with the job's threshold and minimum."""
    samples = np.concatenate([noise(-20.0, 1.0), noise(-80.0, 1.5, seed=1), noise(-20.0, 1.0)], axis=1)
    path = write(tmp_path / "gap.wav", samples)
    params = {"threshold_db": -60.0, "min_duration_s": 1.0}
    job = await run_job(api, "audio.silence", path, params=params)
    assert job["status"] == "succeeded", job
    result = await result_of(api, job["id"])
    (segment,) = result["segments"]
    assert (segment["start_s"], segment["end_s"]) == pytest.approx((1.0, 2.5), abs=0.05)
    assert result["total_silence_s"] == pytest.approx(1.5, abs=0.05)
    assert (result["segment_count"], result["segments_truncated"]) == (1, False)


async def test_waveform_job(api: httpx.AsyncClient, tmp_path: Path) -> None:
    """A tone that steps from -6 to -20 dBFS draws ceil(duration x pps) points that step down with it."""
    path = write(tmp_path / "steps.wav", sequence((-6.0, 1.0), (-20.0, 1.0)))
    job = await run_job(api, "audio.waveform", path, params={"points_per_second": 20})
    assert job["status"] == "succeeded", job
    result = await result_of(api, job["id"])
    assert (result["points_per_second"], result["duration_s"]) == (20, 2.0)
    assert len(result["peaks"]) == math.ceil(2.0 * 20)
    assert result["peaks"][5] == pytest.approx([-0.501, 0.501], abs=0.01)
    assert result["peaks"][-5] == pytest.approx([-0.1, 0.1], abs=0.01)


async def test_damaged_input_fails_the_job(api: httpx.AsyncClient, tmp_path: Path) -> None:
    """A WAV whose header is garbage fails with MEDIA_DECODE_ERROR and a message saying so."""
    path = tmp_path / "a.wav"
    make_audio(path, duration_s=1.0)
    data = bytearray(path.read_bytes())
    data[12:200] = bytes(188)
    path.write_bytes(bytes(data))
    job = await run_job(api, "audio.loudness", path)
    assert (job["status"], job["error_code"]) == ("failed", "MEDIA_DECODE_ERROR"), job
    assert "damaged" in job["error_message"]


def long_silence(path: Path, minutes: float) -> Path:
    """A mono FLAC of digital silence: tiny on disk, minutes of samples to analyse."""
    rate = 48000
    zeros = np.zeros((1, rate), dtype=np.float32)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("flac", rate=rate)
        stream.layout = "mono"
        for second in range(round(minutes * 60)):
            frame = av.AudioFrame.from_ndarray(zeros, format="fltp", layout="mono")
            frame.sample_rate, frame.pts, frame.time_base = rate, second * rate, Fraction(1, rate)
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


async def test_running_job_cancels_within_two_seconds(api: httpx.AsyncClient, tmp_path: Path) -> None:
    """A running loudness job over 20 minutes of audio reports progress and stops within 2 s of a cancel."""
    file_id = await upload(api, long_silence(tmp_path / "long.flac", 20))
    job = await submit(api, "audio.loudness", file_id)
    running = await wait_for(api, job["id"], until=lambda j: j["status"] == "running" and j["progress"] > 0)
    assert "measuring loudness" in running["message"]
    await cancel_within(api, job["id"])
