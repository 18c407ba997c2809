"""An MP4 indexed at its start (made for streaming) and cut short opens and demuxes quietly up to where its
bytes end: every video job type must fail it with MEDIA_DECODE_ERROR rather than report the index's
duration or analyse part of the video and succeed (found in review: probe, scenes and thumbnails did)."""

from __future__ import annotations

from collections.abc import Callable
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest

from medialens_shared.errors import MediaDecodeError
from medialens_video.probe import probe_video
from medialens_video.quality import detect_quality
from medialens_video.scenes import detect_scenes
from medialens_video.thumbnails import extract_thumbnails
from scripts.samples import faststart, make_video, truncate


@pytest.fixture(scope="module")
def streamable(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 4 s clip with its index first, and cuts at 1.5 s."""
    work = tmp_path_factory.mktemp("truncated")
    made = work / "made.mp4"
    make_video(made, duration_s=4.0, fps=25, width=320, height=240, cuts_s=[1.5])
    path = work / "streamable.mp4"
    faststart(made, path)
    return path


ANALYSES: dict[str, Callable[[Path, Path], Any]] = {
    "probe": lambda path, _out: probe_video(path),
    "scenes": lambda path, _out: detect_scenes(path),
    "quality": lambda path, _out: detect_quality(path),
    "thumbnails": lambda path, out: extract_thumbnails(path, out_dir=out, count=5),
}


@pytest.mark.parametrize("analysis", sorted(ANALYSES))
def test_the_whole_file_is_analysed(streamable: Path, tmp_path: Path, analysis: str) -> None:
    """The file itself, whole, is fine for every analysis (the check finds nothing wrong with it)."""
    ANALYSES[analysis](streamable, tmp_path)


@pytest.mark.parametrize("keep_fraction", [0.5, 0.9])
@pytest.mark.parametrize("analysis", sorted(ANALYSES))
def test_the_file_cut_short_is_a_decode_error(
    streamable: Path, tmp_path: Path, analysis: str, keep_fraction: float
) -> None:
    cut = tmp_path / "cut.mp4"
    truncate(streamable, cut, keep_fraction=keep_fraction)
    with pytest.raises(MediaDecodeError, match="truncated"):
        ANALYSES[analysis](cut, tmp_path / "out")


def test_a_matroska_file_cut_short_is_analysed_as_far_as_it_goes_by_every_job(tmp_path: Path) -> None:
    """A Matroska file whose video starts at 40 ms, cut at a tenth (its cues, written last, lost with the
    rest: nothing says more was meant), reads as the frames that are there, the same ones in scenes and
    quality: `video.quality` found none (MEDIA_DECODE_ERROR), its reader left at the file's end by the
    seek to the start that the demuxer refused while looking for the video's first timestamp."""
    made, cut = tmp_path / "made.mkv", tmp_path / "cut.mkv"
    noise = np.random.default_rng(0)
    with av.open(str(made), mode="w") as container:
        video = container.add_stream("libx264", rate=25)
        video.width, video.height, video.pix_fmt = 160, 120, "yuv420p"
        for i in range(75):
            picture = noise.integers(0, 255, (120, 160, 3), dtype=np.uint8)
            frame = av.VideoFrame.from_ndarray(picture, format="rgb24").reformat(format="yuv420p")
            frame.pts, frame.time_base = 40 + i * 40, Fraction(1, 1000)
            container.mux(video.encode(frame))
        container.mux(video.encode(None))
    truncate(made, cut, keep_fraction=0.1)
    scenes = detect_scenes(cut)
    assert 0 < scenes.frames_analyzed < 75
    assert detect_quality(cut).frames_analyzed == scenes.frames_analyzed
    assert len(extract_thumbnails(cut, out_dir=tmp_path / "out", count=2)) == 2
