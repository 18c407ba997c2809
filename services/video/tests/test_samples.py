"""Self-checks of `scripts.samples`: the generated files really hold the ground truth they promise."""

from __future__ import annotations

import csv
import statistics
from pathlib import Path

import av
import numpy as np
import pytest

from scripts.samples import (
    SEGMENT_COLOURS,
    corrupt,
    cut_frames,
    loop_video,
    make_audio,
    make_csv,
    make_video,
    segment_starts,
    truncate,
)


def test_video_has_exactly_the_requested_frames(tmp_path: Path) -> None:
    """Decoding a generated clip yields round(duration_s * fps) frames, the first in the first colour."""
    path = tmp_path / "v.mp4"
    make_video(path, duration_s=1.0, fps=24, width=64, height=48)
    with av.open(str(path)) as container:
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
    assert len(frames) == 24
    corner = frames[0][2, 2].astype(int)
    assert np.abs(corner - np.array(SEGMENT_COLOURS[0])).max() < 12
    cut = segment_starts(24, 4)[1]
    assert np.abs(frames[cut][2, 2].astype(int) - np.array(SEGMENT_COLOURS[1])).max() < 12


@pytest.mark.parametrize("suffix", [".wav", ".flac"])
def test_lossless_audio_has_exactly_the_requested_samples(tmp_path: Path, suffix: str) -> None:
    """A lossless file decodes to exactly round(duration_s * sample_rate) samples at the requested peak."""
    path = tmp_path / f"a{suffix}"
    make_audio(path, duration_s=0.5, sample_rate=16000, channels=1, level_dbfs=-6.0)
    with av.open(str(path)) as container:
        chunks = [frame.to_ndarray() for frame in container.decode(audio=0)]
    samples = np.concatenate(chunks, axis=1)[0].astype(np.float64) / 32768.0
    assert samples.size == 8000
    assert samples.max() == pytest.approx(10 ** (-6 / 20), abs=1e-3)


def test_csv_matches_its_ground_truth(tmp_path: Path) -> None:
    """The stats make_csv returns are those of the file it wrote, nulls included."""
    path = tmp_path / "t.csv"
    truth = make_csv(path, rows=57, seed=3)
    with path.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert truth["row_count"] == len(rows) == 57
    assert truth["columns"] == list(rows[0])
    prices = [float(row["price"]) for row in rows if row["price"]]
    stats = truth["stats"]["price"]
    assert stats["null_count"] == 57 - len(prices) == 5
    assert (stats["min"], stats["max"]) == (min(prices), max(prices))
    assert stats["mean"] == pytest.approx(statistics.fmean(prices))
    assert truth["stats"]["day"]["min"] == min(row["day"] for row in rows)
    assert sum(truth["stats"]["category"]["value_counts"].values()) == 57
    assert make_csv(tmp_path / "again.csv", rows=57, seed=3) == truth


def test_damage_helpers_keep_the_head(tmp_path: Path) -> None:
    """truncate keeps a prefix; corrupt keeps the length and the head bytes but changes the middle."""
    src = tmp_path / "src.bin"
    src.write_bytes(bytes(1000))
    truncate(src, tmp_path / "cut.bin", keep_fraction=0.3)
    assert (tmp_path / "cut.bin").read_bytes() == bytes(300)
    corrupt(src, tmp_path / "bad.bin")
    bad = (tmp_path / "bad.bin").read_bytes()
    assert len(bad) == 1000
    assert bad[:250] == bytes(250)
    assert bad[750:] == bytes(250)
    assert bad[250:750] != bytes(500)


def test_cut_frames_round_times_to_frames() -> None:
    """Cut times become sorted frame indexes, with frame 0 first and times past the end dropped."""
    assert cut_frames(100, 25, [2.0, 0.52, 9.0]) == [0, 13, 50]


def test_black_frozen_and_looped_video(tmp_path: Path) -> None:
    """Black frames are black, frozen frames repeat, and a looped clip holds the frames times over."""
    path = tmp_path / "v.mp4"
    make_video(
        path,
        duration_s=1.0,
        fps=25,
        width=64,
        height=48,
        texture=True,
        black_s=(0.2, 0.4),
        frozen_s=(0.6, 0.8),
    )
    with av.open(str(path)) as container:
        frames = [frame.to_ndarray(format="gray") for frame in container.decode(video=0)]
    assert frames[5].max() <= 20
    assert frames[4].mean() > 40
    assert np.abs(frames[16].astype(int) - frames[15]).mean() < 1.0
    assert np.abs(frames[21].astype(int) - frames[19]).mean() > 5.0
    looped = tmp_path / "loop.mp4"
    loop_video(path, looped, times=3)
    with av.open(str(looped)) as container:
        assert sum(1 for _ in container.decode(video=0)) == 75
