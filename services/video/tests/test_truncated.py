"""An MP4 indexed at its start (made for streaming) and cut short opens and demuxes quietly up to where its
bytes end: every video job type must fail it with MEDIA_DECODE_ERROR rather than report the index's
duration or analyse part of the video and succeed (found in review: probe, scenes and thumbnails did)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

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
