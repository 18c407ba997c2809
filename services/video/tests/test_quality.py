"""Unit tests of `detect_quality` on clips with a black and a frozen stretch at known times."""

from __future__ import annotations

from pathlib import Path

import pytest

from medialens_shared.errors import MediaDecodeError
from medialens_video.quality import detect_quality
from scripts.samples import corrupt, make_video


@pytest.fixture(scope="module")
def flawed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("quality") / "flawed.mp4"
    make_video(
        path,
        duration_s=8.0,
        fps=25,
        width=320,
        height=180,
        cuts_s=[3.0],
        texture=True,
        black_s=(1.0, 2.24),
        frozen_s=(4.4, 6.96),
    )
    return path


def test_finds_black_and_frozen_stretches(flawed: Path) -> None:
    """A 1.24 s black stretch and a 2.56 s frozen stretch are found within 0.1 s, and nothing else."""
    analysis = detect_quality(flawed)
    assert len(analysis.black) == 1
    assert analysis.black[0] == pytest.approx((1.0, 2.24), abs=0.1)
    assert len(analysis.frozen) == 1
    assert analysis.frozen[0] == pytest.approx((4.4, 6.96), abs=0.1)
    assert analysis.frames_analyzed == 200


def test_minimum_lengths_filter(flawed: Path) -> None:
    """Stretches shorter than min_black_s or freeze_min_s are not reported."""
    analysis = detect_quality(flawed, min_black_s=1.5, freeze_min_s=3.0)
    assert (analysis.black, analysis.frozen) == ([], [])


def test_open_stretches_close_at_the_end(tmp_path: Path) -> None:
    """A black stretch and a frozen stretch running to the end are closed at the video's duration."""
    black_end = tmp_path / "black.mp4"
    make_video(black_end, duration_s=4.0, fps=25, width=160, height=96, texture=True, black_s=(2.6, 9.0))
    assert detect_quality(black_end).black == [pytest.approx((2.6, 4.0), abs=0.1)]
    frozen_end = tmp_path / "frozen.mp4"
    make_video(frozen_end, duration_s=5.0, fps=25, width=160, height=96, texture=True, frozen_s=(2.2, 9.0))
    assert detect_quality(frozen_end, freeze_min_s=2.0).frozen == [pytest.approx((2.2, 5.0), abs=0.1)]


def test_black_threshold_is_luma(tmp_path: Path) -> None:
    """A threshold of 0 still finds pure black, and moving texture is never black at the default."""
    path = tmp_path / "b.mp4"
    make_video(path, duration_s=3.0, fps=25, width=160, height=96, texture=True, black_s=(1.0, 2.0))
    assert detect_quality(path, black_threshold=0.0).black == [pytest.approx((1.0, 2.0), abs=0.1)]


def test_damaged_first_frame_is_a_decode_error(flawed: Path, tmp_path: Path) -> None:
    """An MP4 whose frames are overwritten with garbage fails with MediaDecodeError."""
    damaged = tmp_path / "garbled.mp4"
    corrupt(flawed, damaged, start_fraction=0.0, end_fraction=0.9)
    with pytest.raises(MediaDecodeError):
        detect_quality(damaged)
