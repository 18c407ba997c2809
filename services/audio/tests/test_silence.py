"""`audio.silence` on noise with silences at known positions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medialens_audio.silence import SilenceDetector, detect_silence
from medialens_shared.contracts import AudioSilenceParams

from .signals import noise, write

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
