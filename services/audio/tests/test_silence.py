"""`audio.silence` on noise with silences at known positions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medialens_audio import silence
from medialens_audio.silence import SilenceDetector, detect_silence
from medialens_shared.contracts import AudioSilenceParams, AudioSilenceResult, SilenceSegment

from .signals import amplitude, noise, sine, write, write_late_audio

RATE = 48000


def noise_with_gaps(gaps: list[tuple[float, float]], seconds: float) -> np.ndarray:
    """Noise at -20 dBFS RMS with the (start_s, end_s) gaps filled by a -70 dBFS noise floor."""
    samples = noise(-20.0, seconds)
    floor = noise(-70.0, seconds, seed=1)
    for start, end in gaps:
        span = slice(round(start * RATE), round(end * RATE))
        samples[:, span] = floor[:, span]
    return samples


def no_report(fraction: float, message: str) -> None:
    """A progress callback that discards what it is told."""


def test_silences_at_known_positions(tmp_path: Path) -> None:
    """Two gaps inside and one at the end are found to 0.05 s; the open one is closed at the duration."""
    gaps = [(1.0, 2.0), (3.5, 4.25), (5.4, 6.0)]
    path = write(tmp_path / "gaps.wav", noise_with_gaps(gaps, 6.0))
    result = detect_silence(path, AudioSilenceParams(threshold_db=-50.0, min_duration_s=0.5), no_report)
    assert len(result.segments) == 3
    for segment, (start, end) in zip(result.segments, gaps, strict=True):
        assert segment.start_s == pytest.approx(start, abs=0.05)
        assert segment.end_s == pytest.approx(end, abs=0.05)
        assert segment.duration_s == pytest.approx(segment.end_s - segment.start_s, abs=1e-3)
    assert result.segments[-1].end_s == 6.0
    assert result.total_silence_s == pytest.approx(0.6 + 0.75 + 1.0, abs=0.1)
    assert (result.segment_count, result.segments_truncated) == (3, False)


def test_short_gaps_and_loud_floors_are_not_silence(tmp_path: Path) -> None:
    """A gap shorter than min_duration_s is skipped, and a threshold under the floor finds nothing."""
    path = write(tmp_path / "gaps.wav", noise_with_gaps([(1.0, 1.3), (2.0, 3.0)], 4.0))
    found = detect_silence(path, AudioSilenceParams(min_duration_s=0.5), no_report)
    assert [(s.start_s, s.end_s) for s in found.segments] == [pytest.approx((2.0, 3.0), abs=0.05)]
    strict = detect_silence(path, AudioSilenceParams(threshold_db=-90.0), no_report)
    assert strict.segments == []
    assert strict.total_silence_s == 0.0


def test_silence_spanning_blocks_is_one_segment() -> None:
    """A silence fed across many small blocks comes out as the same single segment."""
    samples = noise_with_gaps([(0.5, 2.5)], 3.0)
    detector = SilenceDetector(RATE, threshold_db=-50.0, min_duration_s=0.5)
    for start in range(0, samples.shape[1], 1000):
        detector.feed(samples[:, start : start + 1000])
    (segment,) = detector.result().segments
    assert (segment.start_s, segment.end_s) == pytest.approx((0.5, 2.5), abs=0.01)


def test_all_silent_file_is_one_segment(tmp_path: Path) -> None:
    """A file that is silent throughout is one segment from 0 to its duration."""
    path = write(tmp_path / "quiet.wav", np.zeros((1, RATE * 2), dtype=np.float32))
    result = detect_silence(path, AudioSilenceParams(), no_report)
    assert [(s.start_s, s.end_s) for s in result.segments] == [(0.0, 2.0)]


@pytest.mark.parametrize(
    ("name", "codec", "start_s"),
    [("late.mkv", "pcm_s16le", 1.5), ("late.mp4", "flac", 1.5), ("prompt.mkv", "pcm_s16le", 0.0)],
)
def test_silences_lie_on_the_media_timeline(tmp_path: Path, name: str, codec: str, start_s: float) -> None:
    """The soundtrack of an MKV or MP4 that comes in 1.5 s after the video has its silences 1.5 s later
    than in the audio alone, where they lie beside the video (they read 1.5 s early); the time before the
    audio starts is not reported as silence, and audio that starts with the video is read as before."""
    gaps = [(1.0, 2.0), (3.0, 3.6), (4.4, 5.0)]
    path = write_late_audio(
        tmp_path / name, noise_with_gaps(gaps, 5.0), start_s=start_s, video_s=start_s + 5.0, codec=codec
    )
    result = detect_silence(path, AudioSilenceParams(threshold_db=-50.0, min_duration_s=0.5), no_report)
    found = [(segment.start_s, segment.end_s) for segment in result.segments]
    assert found == [pytest.approx((start + start_s, end + start_s), abs=1e-3) for start, end in gaps]
    assert result.total_silence_s == pytest.approx(2.2, abs=1e-3)


def silent_runs(samples: np.ndarray, *, threshold_db: float, min_samples: int) -> list[tuple[int, int]]:
    """Every run of samples silent on all channels and at least `min_samples` long, as (start, end)."""
    silent = (np.abs(samples) < np.float32(amplitude(threshold_db))).all(axis=0)
    edges = np.flatnonzero(np.diff(np.concatenate([[0], silent.astype(np.int8), [0]])))
    starts, ends = edges[0::2], edges[1::2]
    keep = ends - starts >= min_samples
    return list(zip(starts[keep].tolist(), ends[keep].tolist(), strict=True))


def test_a_detection_past_the_cap_lists_the_first_silences_and_counts_them_all(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 100 Hz tone with min_duration_s 0.0001 has a silence at each zero crossing (400 in 2 s, 40,000
    in 200 s: past a MongoDB document within an hour). With room for 25, the result lists the first 25
    exactly, says it is truncated, and counts all of them in segment_count and total_silence_s."""
    monkeypatch.setattr(silence, "MAX_SEGMENTS", 25, raising=False)
    tone = sine(-6.0, 2.0, freq_hz=100.0)
    path = write(tmp_path / "tone.wav", tone, codec="pcm_f32le")
    params = AudioSilenceParams(threshold_db=-20.0, min_duration_s=0.0001)
    result = detect_silence(path, params, no_report)
    expected = silent_runs(tone, threshold_db=-20.0, min_samples=round(0.0001 * RATE))
    assert len(expected) == 401  # a crossing every 5 ms, and the one the tone starts on
    assert [(s.start_s, s.end_s) for s in result.segments] == [
        (round(start / RATE, 4), round(end / RATE, 4)) for start, end in expected[:25]
    ]
    assert (result.segment_count, result.segments_truncated) == (401, True)
    assert result.total_silence_s == round(sum(end - start for start, end in expected) / RATE, 4)


def test_the_detector_holds_no_more_than_its_cap() -> None:
    """Fed block by block, the detector never keeps more silences than it lists (memory stays bounded
    however many it counts), and one still open at the end is counted but not listed once it is full."""
    detector = SilenceDetector(RATE, threshold_db=-20.0, min_duration_s=0.0001, max_segments=10)
    tone = sine(-6.0, 1.0, freq_hz=100.0)
    tone[:, -RATE // 10 :] = 0.0  # ends with 100 ms of silence
    for start in range(0, tone.shape[1], 4800):
        detector.feed(tone[:, start : start + 4800])
        assert len(detector.segments) <= 10
    result = detector.result()
    expected = silent_runs(tone, threshold_db=-20.0, min_samples=5)
    assert (len(result.segments), result.segments_truncated) == (10, True)
    assert result.segment_count == len(expected)
    assert result.total_silence_s == round(sum(end - start for start, end in expected) / RATE, 4)


def test_the_default_cap_keeps_a_result_inside_a_mongodb_document() -> None:
    """MAX_SEGMENTS silences with times of a ten-hour file encode well under MongoDB's 16 MB."""
    import bson

    segment = SilenceSegment(start_s=35999.1234, end_s=35999.5678, duration_s=0.4444)
    result = AudioSilenceResult(
        segments=[segment] * silence.MAX_SEGMENTS,
        total_silence_s=12345.6789,
        segment_count=10**9,
        segments_truncated=True,
    )
    assert len(bson.encode(result.model_dump(mode="json"))) < 5 * 1024 * 1024
