"""Codecs whose decoders or pictures take paths H.264 in yuv420p does not: AV1 (libdav1d, which reads its
frame skipping once, as it opens) and full-range 4:2:0 (MJPEG from a camera, a phone's H.264), whose frames
need no conversion to be made JPEGs."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from medialens_video.frames import encode_jpeg
from medialens_video.scenes import SceneAnalysis, detect_scenes
from medialens_video.thumbnails import ThumbnailImage, extract_thumbnails
from scripts.samples import (
    SEGMENT_COLOURS,
    _Textures,
    frame_number,
    make_numbered_video,
    make_video,
    scheduling_kept,
)

FPS = 25

needs_av1 = pytest.mark.skipif(
    "libsvtav1" not in av.codecs_available or "libdav1d" not in av.codecs_available,
    reason="no SVT-AV1 encoder or libdav1d decoder in this FFmpeg",
)


#: The frames where the AV1 clip of `_av1_with_cuts` cuts to another scene.
AV1_CUTS = [33, 47, 73, 97, 121]


def _av1_with_cuts(path: Path) -> None:
    """6 s of AV1 with a keyframe every 24 frames and cuts at `AV1_CUTS`, between them."""
    textures = _Textures(320, 180)
    with scheduling_kept(), av.open(str(path), "w") as out:
        stream = out.add_stream("libsvtav1", rate=FPS, options={"g": "24", "preset": "12"})
        stream.width, stream.height, stream.pix_fmt = 320, 180, "yuv420p"
        starts = [0, *AV1_CUTS]
        for index in range(150):
            segment = sum(1 for start in starts if start <= index) - 1
            picture = textures.frame(segment, index - starts[segment])
            frame = av.VideoFrame.from_ndarray(picture, format="rgb24")
            frame.pts, frame.time_base = index, Fraction(1, FPS)
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))


def _shown(image: ThumbnailImage) -> int:
    with av.open(str(image.path)) as jpeg:
        return frame_number(next(jpeg.decode(video=0)).to_ndarray(format="rgb24"))


def _assert_scene_thumbnails(path: Path, analysis: SceneAnalysis, width: int) -> None:
    """Each scene's thumbnail is the JPEG of its first frame from a plain decode of the file."""
    with av.open(str(path)) as container:
        frames = list(container.decode(video=0))
    for scene in analysis.scenes:
        assert scene.thumbnail is not None, scene
        assert scene.thumbnail.read_bytes() == encode_jpeg(frames[scene.start_frame], width)[0], scene


@needs_av1
def test_av1_thumbnails_are_the_frames_at_their_times(tmp_path: Path) -> None:
    """Four thumbnails of 8 s of numbered AV1 are frames 25, 75, 125 and 175, at 1, 3, 5 and 7 s. Those are
    non-reference frames: libdav1d, opened while the frames before the first target were being skipped,
    skipped every non-reference frame after, and the thumbnails were the next frames (1.04 s, ...)."""
    path = tmp_path / "numbered.webm"
    make_numbered_video(path, frame_count=200, codec="libsvtav1", keyint=50)
    with av.open(str(path)) as container:
        assert container.streams.video[0].codec_context.name == "libdav1d"
    images = extract_thumbnails(path, out_dir=tmp_path / "t", count=4)
    assert [(image.t_s, _shown(image)) for image in images] == [(1.0, 25), (3.0, 75), (5.0, 125), (7.0, 175)]


@needs_av1
def test_av1_scenes_each_have_the_thumbnail_of_their_first_frame(tmp_path: Path) -> None:
    """6 s of AV1 with a keyframe every 24 frames and cuts between them: each scene's thumbnail is the JPEG
    of its first frame. Four of the six were missing: decoded from the keyframe before, skipping the
    non-reference frames up to it, libdav1d skipped the scene's first frame too."""
    path = tmp_path / "cuts.webm"
    _av1_with_cuts(path)
    analysis = detect_scenes(path, thumbnail_dir=tmp_path / "t", thumbnail_width=160)
    assert [scene.start_frame for scene in analysis.scenes] == [0, *AV1_CUTS]
    _assert_scene_thumbnails(path, analysis, 160)


@pytest.mark.parametrize(("codec", "suffix"), [("mjpeg", ".avi"), ("libx264", ".mp4")])
def test_full_range_420_at_the_size_asked_keeps_its_times(tmp_path: Path, codec: str, suffix: str) -> None:
    """4 s in four colours, full-range 4:2:0 (yuvj420p), 320 x 240, a thumbnail a second, 320 wide: each
    frame is already what the JPEG encoder takes, and was given to it as it was, which set its pts to 0.
    Every thumbnail read 0 s (the right picture but the wrong time), and every scene's thumbnail was
    written over the first scene's (which then showed the last scene)."""
    path = tmp_path / f"full-range{suffix}"
    make_video(path, duration_s=4.0, fps=FPS, width=320, height=240, codec=codec, pix_fmt="yuvj420p")
    images = extract_thumbnails(path, out_dir=tmp_path / "t", every_s=1.0, width=320)
    assert [image.t_s for image in images] == [0.0, 1.0, 2.0, 3.0]
    for index, image in enumerate(images):
        with av.open(str(image.path)) as jpeg:
            corner = next(jpeg.decode(video=0)).to_ndarray(format="rgb24")[4, 4].astype(int)
        assert np.abs(corner - SEGMENT_COLOURS[index]).max() < 16, (index, corner)
    analysis = detect_scenes(path, thumbnail_dir=tmp_path / "s", thumbnail_width=320)
    assert [scene.start_frame for scene in analysis.scenes] == [0, 25, 50, 75]
    _assert_scene_thumbnails(path, analysis, 320)
