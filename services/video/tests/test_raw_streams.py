"""Every video job on streams whose frames come without timestamps, against clips of known truth.

Raw H.264 and HEVC elementary streams (Annex B, no container, as some cameras and pipelines hand them out)
have none at all: FFmpeg's demuxer times no packet and seeks nowhere, and ffprobe and ffmpeg time the
frames at the rate the stream's headers state (30 frames/s here; the demuxer's 25 where none is stated).
A raw MPEG-2 video stream is timed by its parser, its first frame a frame after 0. H.264 in an MPEG
program stream (as CCTV recorders write it) times one frame in a few.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import av
import pytest

from medialens_shared.errors import MediaDecodeError
from medialens_video.frames import encode_jpeg
from medialens_video.probe import probe_video
from medialens_video.quality import detect_quality
from medialens_video.scenes import detect_scenes
from medialens_video.thumbnails import ThumbnailImage, extract_thumbnails
from scripts.samples import corrupt, frame_number, make_numbered_video, make_video

from .test_scenes import FIXED_PATTERN

FPS = 30
FRAMES = 240
BLACK_S = (3.0, 4.0)
FROZEN_S = (5.5, 8.0)
#: Where scenes start: the cuts at 2 s and 5 s, and the black stretch's two ends.
SCENE_STARTS = [0, 60, 90, 120, 150]

#: Raw streams without any timestamp: (file name, encoder, the format FFmpeg reads it as).
RAW = {"raw H.264": ("clip.h264", "libx264", "h264"), "raw HEVC": ("clip.hevc", "libx265", "hevc")}


def _flawed(path: Path, **options: Any) -> Path:
    """8 s of panning texture: cuts at 2 s and 5 s, black from 3 s to 4 s, frozen from 5.5 s to the end."""
    make_video(
        path,
        duration_s=FRAMES / options.get("fps", FPS),
        width=320,
        height=240,
        cuts_s=[2.0, 5.0],
        texture=True,
        black_s=BLACK_S,
        frozen_s=FROZEN_S,
        **{"fps": FPS, **options},
    )
    return path


@pytest.fixture(scope="module", params=sorted(RAW))
def raw(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    name, codec, _format = RAW[request.param]
    return _flawed(tmp_path_factory.mktemp("raw") / name, codec=codec), request.param


def _assert_frames_at(images: list[ThumbnailImage], targets: list[float], fps: int) -> None:
    """One thumbnail per target, each the frame nearest its target, showing the frame its `t_s` names."""
    assert len(images) == len(targets)
    for image, target in zip(images, targets, strict=True):
        assert image.t_s == pytest.approx(target, abs=0.5 / fps + 1e-6), (image.t_s, target)
        with av.open(str(image.path)) as jpeg:
            shown = frame_number(next(jpeg.decode(video=0)).to_ndarray(format="rgb24"))
        assert shown == round(image.t_s * fps), (image.t_s, target)


def test_the_raw_streams_have_no_timestamps(raw: tuple[Path, str]) -> None:
    """What the tests below stand on: no packet and no decoded frame of these streams has a timestamp."""
    path, _case = raw
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert all(p.pts is None and p.dts is None for p in container.demux(stream))
    with av.open(str(path)) as container:
        assert {frame.pts for frame in container.decode(video=0)} == {None}


def test_probe_times_a_raw_stream_at_its_stated_rate(raw: tuple[Path, str]) -> None:
    """The frame rate is the stream's own, 30, on average too, and steady (FFmpeg's average is its raw
    demuxer's default, 25: the stream read variable-rate); as ffprobe, no duration and no frame count
    (they are had only by reading every packet)."""
    path, case = raw
    result = probe_video(path)
    assert result.format.name == RAW[case][2]
    assert (result.video.fps, result.video.avg_fps, result.video.is_vfr) == (30.0, 30.0, False)
    assert (result.format.duration_s, result.video.frame_count) == (None, None)


def test_quality_of_a_raw_stream(raw: tuple[Path, str]) -> None:
    """The black and the frozen stretch are found within 0.1 s (as ffmpeg's blackdetect times them, frame
    n at n/30 s), every frame analysed (the frames, all without a pts, were dropped: "no decodable
    frame")."""
    path, _case = raw
    analysis = detect_quality(path)
    assert analysis.black == [pytest.approx(BLACK_S, abs=0.1)]
    assert analysis.frozen == [pytest.approx(FROZEN_S, abs=0.1)]
    assert analysis.frames_analyzed == FRAMES


def test_scenes_of_a_raw_stream(raw: tuple[Path, str], tmp_path: Path) -> None:
    """The cuts are found at their frames and times, and each scene's thumbnail is the JPEG of its first
    frame from a plain decode (the job failed with ZeroDivisionError: INTERNAL_ERROR)."""
    path, _case = raw
    analysis = detect_scenes(path, thumbnail_dir=tmp_path, thumbnail_width=160)
    assert [scene.start_frame for scene in analysis.scenes] == SCENE_STARTS
    assert [scene.start_s for scene in analysis.scenes] == pytest.approx([f / FPS for f in SCENE_STARTS])
    assert (analysis.frames_analyzed, analysis.scenes[-1].end_s) == (FRAMES, pytest.approx(8.0))
    with av.open(str(path)) as container:
        frames = {i: f for i, f in enumerate(container.decode(video=0)) if i in SCENE_STARTS}
    for scene in analysis.scenes:
        assert scene.thumbnail is not None
        assert scene.thumbnail.read_bytes() == encode_jpeg(frames[scene.start_frame], 160)[0]


@pytest.mark.parametrize("case", sorted(RAW))
def test_thumbnails_of_a_raw_stream(tmp_path: Path, case: str) -> None:
    """Five thumbnails over the 5 s of a numbered raw stream, each the frame at its time (the job failed:
    its end was sought, and its seeks refused)."""
    name, codec, muxer = RAW[case]
    path = tmp_path / name
    make_numbered_video(path, frame_count=150, fps=FPS, codec=codec, container_format=muxer, keyint=60)
    images = extract_thumbnails(path, out_dir=tmp_path / "thumbs", count=5)
    _assert_frames_at(images, [0.5, 1.5, 2.5, 3.5, 4.5], FPS)


def test_a_raw_mpeg2_stream_is_timed_from_its_first_frame(tmp_path: Path) -> None:
    """A raw MPEG-2 stream's first frame is shown at 0.04 s: its black stretch and its thumbnails are timed
    from there, as its scenes are (they came a frame late)."""
    path = _flawed(tmp_path / "clip.m2v", codec="mpeg2video", fps=25)
    assert detect_quality(path).black == [pytest.approx(BLACK_S, abs=0.5 / 25)]
    numbered = tmp_path / "numbered.m2v"
    make_numbered_video(
        numbered, frame_count=150, codec="mpeg2video", container_format="mpeg2video", keyint=12
    )
    images = extract_thumbnails(numbered, out_dir=tmp_path / "thumbs", count=5)
    _assert_frames_at(images, [0.6, 1.8, 3.0, 4.2, 5.4], 25)


def test_h264_in_a_program_stream_timing_one_frame_in_a_few(tmp_path: Path) -> None:
    """H.264 in MPEG-PS with three B-frames between references, most packets untimed: scenes, quality and
    thumbnails hold to the truth (the frames without a pts were skipped: cuts read at frames 15, 18, 24,
    three frames in four went unanalysed, and thumbnails came up to 0.7 s late)."""
    path = _flawed(tmp_path / "clip.mpg", x264_params=FIXED_PATTERN)
    with av.open(str(path)) as container:
        stamps = [p.pts for p in container.demux(video=0) if p.size]
    assert stamps.count(None) > len(stamps) / 2
    analysis = detect_scenes(path, thumbnail_dir=tmp_path / "scenes")
    assert [scene.start_frame for scene in analysis.scenes] == SCENE_STARTS
    assert all(scene.thumbnail is not None for scene in analysis.scenes)
    quality = detect_quality(path)
    assert (quality.black, quality.frozen) == (
        [pytest.approx(BLACK_S, abs=0.1)],
        [pytest.approx(FROZEN_S, abs=0.1)],
    )
    assert quality.frames_analyzed == FRAMES
    numbered = tmp_path / "numbered.mpg"
    make_numbered_video(numbered, frame_count=150, keyint=60)
    images = extract_thumbnails(numbered, out_dir=tmp_path / "thumbs", every_s=1.0)
    _assert_frames_at(images, [0.0, 1.0, 2.0, 3.0, 4.0, 5.0][: len(images)], 25)
    assert len(images) >= 5


@pytest.mark.parametrize("job", ["probe", "quality", "scenes", "thumbnails"])
def test_a_raw_stream_of_garbage_is_a_decode_error(raw: tuple[Path, str], tmp_path: Path, job: str) -> None:
    """A raw stream whose bytes past its first 40 are garbage fails every job with MediaDecodeError."""
    path, _case = raw
    damaged = tmp_path / f"garbage{path.suffix}"
    corrupt(path, damaged, start_fraction=0.0, end_fraction=1.0, keep_head_bytes=40)
    run = {
        "probe": lambda: probe_video(damaged),
        "quality": lambda: detect_quality(damaged),
        "scenes": lambda: detect_scenes(damaged),
        "thumbnails": lambda: extract_thumbnails(damaged, out_dir=tmp_path / "thumbs"),
    }[job]
    with pytest.raises(MediaDecodeError):
        run()


def test_a_raw_mpeg1_stream_states_no_length_and_its_thumbnails_span_it(tmp_path: Path) -> None:
    """FFmpeg estimates a raw MPEG-1 stream's duration from the bit rate in its first header: 6 s read
    0.02 s, so the probe said one frame and every thumbnail was its first frame. As for the other raw
    streams, the probe states no length nor bit rate (a header's placeholder; ffprobe says N/A for the
    others) and the thumbnails span its frames,
    each within a frame of its time (FFmpeg's parser times this stream's frames from the seventh on one
    interval late)."""
    path = tmp_path / "numbered.m1v"
    make_numbered_video(path, frame_count=150, codec="mpeg1video", container_format="mpeg1video", keyint=12)
    with av.open(str(path)) as container:
        stated = container.duration
    assert stated is not None
    assert stated < 1_000_000  # FFmpeg's estimate: under a second
    result = probe_video(path)
    assert (result.format.name, result.format.duration_s, result.video.frame_count) == (
        "mpegvideo",
        None,
        None,
    )
    assert result.format.bit_rate is None  # the header's placeholder, 104,857,717 b/s (found in review)
    images = extract_thumbnails(path, out_dir=tmp_path / "thumbs", count=5)
    assert [image.t_s for image in images] == pytest.approx([0.6, 1.8, 3.0, 4.2, 5.4], abs=1 / 25 + 1e-6)
    for image in images:
        with av.open(str(image.path)) as jpeg:
            shown = frame_number(next(jpeg.decode(video=0)).to_ndarray(format="rgb24"))
        assert abs(shown - image.t_s * 25) <= 1, (shown, image.t_s)
