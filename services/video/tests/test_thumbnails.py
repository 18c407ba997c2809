"""Unit tests of `extract_thumbnails`: times, sizes and decodability of the JPEGs."""

from __future__ import annotations

from pathlib import Path

import av
import pytest

from medialens_shared.errors import InvalidParams, UnsupportedInput
from medialens_video.thumbnails import extract_thumbnails, thumbnail_times
from scripts.samples import SEGMENT_COLOURS, make_audio, make_video


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("thumbs") / "clip.mp4"
    make_video(path, duration_s=6.0, fps=25, width=320, height=240, segments=6, keyint=50)
    return path


def test_times_are_even_or_periodic() -> None:
    """`count` gives the middles of equal slices; `every_s` gives multiples from zero."""
    assert thumbnail_times(10.0, count=4, every_s=None) == [1.25, 3.75, 6.25, 8.75]
    assert thumbnail_times(10.0, count=None, every_s=None) == pytest.approx([0.5 + k for k in range(10)])
    assert thumbnail_times(5.0, count=None, every_s=2.0) == [0.0, 2.0, 4.0]
    with pytest.raises(InvalidParams):
        thumbnail_times(5000.0, count=None, every_s=1.0)


def test_evenly_spaced_jpegs_of_the_right_frames(clip: Path, tmp_path: Path) -> None:
    """Six thumbnails land one in each colour segment, as decodable 160 x 120 JPEGs."""
    images = extract_thumbnails(clip, out_dir=tmp_path, count=6, width=160)
    assert [image.t_s for image in images] == pytest.approx([0.5, 1.5, 2.5, 3.5, 4.5, 5.5], abs=1 / 25)
    for index, image in enumerate(images):
        assert (image.width, image.height) == (160, 120)
        with av.open(str(image.path)) as jpeg:
            assert jpeg.format.name in {"image2", "jpeg_pipe"}
            rgb = next(jpeg.decode(video=0)).to_ndarray(format="rgb24")
        assert rgb.shape == (120, 160, 3)
        corner = rgb[4, 4].astype(int)
        assert max(abs(corner - SEGMENT_COLOURS[index])) < 16


def test_every_s_and_odd_width(clip: Path, tmp_path: Path) -> None:
    """One thumbnail every 2.5 s, 101 pixels asked, gives 100 x 76 JPEGs at 0, 2.5 and 5 s."""
    images = extract_thumbnails(clip, out_dir=tmp_path, every_s=2.5, width=101)
    assert [image.t_s for image in images] == pytest.approx([0.0, 2.5, 5.0], abs=1 / 25)
    assert {(image.width, image.height) for image in images} == {(100, 76)}


def test_audio_is_unsupported(tmp_path: Path) -> None:
    """A WAV file has no video stream and fails with UnsupportedInput."""
    path = tmp_path / "a.wav"
    make_audio(path, duration_s=0.3)
    with pytest.raises(UnsupportedInput):
        extract_thumbnails(path, out_dir=tmp_path / "t")
