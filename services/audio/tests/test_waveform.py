"""`audio.waveform` on signals whose min/max per point are known."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pytest

from medialens_audio.waveform import MAX_POINTS, PeakBinner, compute_waveform, fitting_rate
from medialens_shared.contracts import AudioWaveformParams
from medialens_shared.errors import UnsupportedInput

from .signals import noise, write, write_late_audio


def no_report(fraction: float, message: str) -> None:
    """A progress callback that discards what it is told."""


def square(seconds: float, *, rate: int, hz: float, left: float, right: float) -> np.ndarray:
    t = np.arange(round(seconds * rate)) / rate
    wave = np.where(np.floor(2 * hz * t) % 2 == 0, 1.0, -1.0).astype(np.float32)
    return np.stack([left * wave, right * wave])


def test_square_wave_peaks(tmp_path: Path) -> None:
    """A 2 Hz square of 0.6 and 0.2 on two channels gives mono peaks of +-0.4, both in the flipping points."""
    path = write(tmp_path / "square.wav", square(2.05, rate=48000, hz=2.0, left=0.6, right=0.2))
    result = compute_waveform(path, AudioWaveformParams(points_per_second=10), no_report)
    assert result.points_per_second == 10
    assert result.duration_s == pytest.approx(2.05)
    assert len(result.peaks) == math.ceil(2.05 * 10)
    assert result.peaks[0] == pytest.approx((0.4, 0.4), abs=1e-3)  # 0.0-0.1 s: high
    assert result.peaks[2] == pytest.approx((-0.4, 0.4), abs=1e-3)  # 0.2-0.3 s: flips at 0.25 s
    assert result.peaks[3] == pytest.approx((-0.4, -0.4), abs=1e-3)  # 0.3-0.4 s: low
    assert result.peaks[-1] == pytest.approx((0.4, 0.4), abs=1e-3)  # 2.0-2.05 s: high again


@pytest.mark.parametrize(("rate", "pps", "seconds"), [(44100, 7, 1.3), (48000, 1000, 0.5), (22050, 1, 2.5)])
def test_point_count_and_range(tmp_path: Path, rate: int, pps: int, seconds: float) -> None:
    """There are ceil(duration x pps) points, each a (min, max) pair within -1..1."""
    path = write(tmp_path / "noise.wav", noise(-3.0, seconds, rate=rate), rate=rate)
    result = compute_waveform(path, AudioWaveformParams(points_per_second=pps), no_report)
    assert len(result.peaks) == math.ceil(seconds * pps)
    assert all(-1.0 <= low <= high <= 1.0 for low, high in result.peaks)


def test_samples_past_full_scale_clip_to_one_point() -> None:
    """Float audio may exceed full scale: a stretch wholly above 1 (or below -1) reads (1, 1) ((-1, -1)),
    never a minimum above its maximum; one crossing full scale is clipped at that end only."""
    binner = PeakBinner(100, 4)  # points of 25 samples
    above, below = np.full(25, 1.5), np.full(25, -2.0)
    crossing = np.linspace(0.5, 1.5, 25)
    binner.feed(np.stack([np.concatenate([above, below, crossing])] * 2).astype(np.float32))
    assert binner.result().peaks == [(1.0, 1.0), (-1.0, -1.0), (0.5, 1.0)]


def test_streaming_equals_whole_signal() -> None:
    """Points from odd-sized blocks equal the min/max computed on the whole mono mix at once."""
    samples = noise(-10.0, 3.0, rate=44100)
    binner = PeakBinner(44100, 7)
    for start in range(0, samples.shape[1], 9999):
        binner.feed(samples[:, start : start + 9999])
    mono = samples.mean(axis=0)
    edges = [i * 44100 // 7 for i in range(22)] + [mono.size]
    expected = [(mono[a:b].min(), mono[a:b].max()) for a, b in itertools.pairwise(edges) if a < b]
    got = np.array(binner.result().peaks)
    assert got.shape == (21, 2)
    assert got.ravel() == pytest.approx(np.array(expected).ravel(), abs=1e-4)


def test_a_rate_too_high_for_one_result_is_lowered_to_fit(tmp_path: Path) -> None:
    """2.5 s at 1000 points per second would be 2,500 points; with room for 600, 228 per second are drawn
    (the highest rate whose points fit 2.5 s and `DURATION_SLACK` more: 2.625 s) and the result says so."""
    path = write(tmp_path / "noise.wav", noise(-3.0, 2.5, rate=48000))
    result = compute_waveform(path, AudioWaveformParams(points_per_second=1000), no_report, max_points=600)
    assert result.points_per_second == 228
    assert len(result.peaks) == math.ceil(2.5 * 228) == 570


def test_the_default_cap_keeps_a_result_inside_a_mongodb_document() -> None:
    """Ten hours at 1000 points per second is lowered to 6 per second; at MAX_POINTS the encoded peaks
    stay far below MongoDB's 16 MB limit."""
    import bson

    assert fitting_rate(1000, 36000.0) == 6
    assert fitting_rate(10, 60.0) == 10
    assert fitting_rate(10, None) == 10
    assert fitting_rate(10, 10_000_000.0) == 1
    size = len(bson.encode({"peaks": [(-0.1234, 0.5678)] * MAX_POINTS}))
    assert size < 12 * 1024 * 1024, size


def test_audio_longer_than_announced_fails_instead_of_overflowing() -> None:
    """Points beyond the cap (the metadata announced less than there is) fail the job: UNSUPPORTED_INPUT."""
    binner = PeakBinner(1000, 10, max_points=15)
    binner.feed(noise(-3.0, 1.0, rate=1000))
    with pytest.raises(UnsupportedInput, match="fewer points_per_second"):
        binner.feed(noise(-3.0, 1.0, rate=1000))


def test_a_lowered_rate_leaves_room_for_audio_a_little_longer_than_announced() -> None:
    """A 625 s file asked at 1000 points a second decodes ~20 ms longer than announced (AAC's padding): the
    rate lowered to fit leaves room for it. Fitted exactly (400 a second, 250,000 points) it was refused as
    "longer than its metadata says"."""
    rate = fitting_rate(1000, 625.0)
    binner = PeakBinner(8000, rate)
    second = np.zeros((1, 8000), dtype=np.float32)
    for _ in range(625):
        binner.feed(second)
    binner.feed(second[:, :160])  # 20 ms more
    assert len(binner.result().peaks) <= MAX_POINTS


@pytest.mark.parametrize(("name", "codec"), [("late.mkv", "pcm_s16le"), ("late.mp4", "flac")])
def test_a_late_soundtrack_is_drawn_on_the_media_timeline(tmp_path: Path, name: str, codec: str) -> None:
    """The soundtrack of a video that comes in 1.5 s after it is drawn from 1.5 s on, after (0, 0) points
    (what plays there), so peaks[i] lies at i / pps under a player's timeline; duration_s is where the
    audio ends. It was drawn from point 0, 1.5 s early."""
    samples = square(2.05, rate=48000, hz=2.0, left=0.6, right=0.2)
    path = write_late_audio(tmp_path / name, samples, start_s=1.5, video_s=3.55, codec=codec)
    result = compute_waveform(path, AudioWaveformParams(points_per_second=10), no_report)
    assert result.duration_s == pytest.approx(3.55)
    assert len(result.peaks) == math.ceil(3.55 * 10)
    assert result.peaks[:15] == [(0.0, 0.0)] * 15
    assert result.peaks[15] == pytest.approx((0.4, 0.4), abs=1e-3)  # 1.5-1.6 s: the square's first 0.1 s
    assert result.peaks[17] == pytest.approx((-0.4, 0.4), abs=1e-3)  # flips at 1.75 s
    assert result.peaks[18] == pytest.approx((-0.4, -0.4), abs=1e-3)


def test_a_start_inside_a_point_shares_it_with_the_silence_before() -> None:
    """Audio starting 0.3 s in, at 4 points a second: point 0 is silent, point 1 (0.25-0.5 s) holds
    silence then audio, so it spans 0 and the audio's level; duration_s counts the time before."""
    binner = PeakBinner(100, 4, start_s=0.3)  # points of 25 samples; the audio from sample 30
    binner.feed(np.full((2, 45), 0.5, dtype=np.float32))
    result = binner.result()
    assert result.peaks == [(0.0, 0.0), (0.0, 0.5), (0.5, 0.5)]
    assert result.duration_s == pytest.approx(0.75)


def test_a_recording_that_states_no_length_has_its_rate_lowered_to_fit(tmp_path: Path) -> None:
    """A WebM as a browser records it states no duration: its length is counted, so a rate too high for one
    result is lowered to fit it (it failed as "longer than its metadata says", with no metadata to blame)."""
    path = write(tmp_path / "recorded.webm", noise(-3.0, 10.0), codec="libopus", piped=True)
    result = compute_waveform(path, AudioWaveformParams(points_per_second=100), no_report, max_points=600)
    assert result.points_per_second == 58  # 600 points over 10 s and `DURATION_SLACK` more: 10.2 s
    assert len(result.peaks) == 580
    assert result.duration_s == pytest.approx(10.0, abs=1e-3)
