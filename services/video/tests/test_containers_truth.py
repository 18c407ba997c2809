"""Probe, thumbnails and quality hold to the truth where containers help least: MPEG-TS and MPEG-PS (no
index, so a seek lands on any packet near the time asked), AVI (no pts at all), Matroska and WebM (no
per-stream frame count or duration; audio that outlasts the video, a late start, a rate that changes, no
duration at all when piped) and the shortest videos. Every frame shows its own number
(`scripts.samples.make_numbered_video`), so each thumbnail is checked against the frame its time says it
is."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import pytest

from medialens_video.probe import probe_video
from medialens_video.quality import detect_quality
from medialens_video.scenes import detect_scenes
from medialens_video.thumbnails import ThumbnailImage, extract_thumbnails
from scripts.samples import frame_number, make_numbered_video, make_video, numbered_picture

FPS = 25
HALF_FRAME_S = 0.5 / FPS + 1e-6

#: Clips whose video's own span differs from the container's, in containers that state no stream's own
#: length (FFmpeg gives each stream the container's): Matroska, WebM, and ASF (WMV), where even a
#: soundtrack as long as the video ends a frame later, after the preroll: (file name, generator
#: arguments, frame count, the video's span in seconds).
OWN_SPAN_CLIPS: dict[str, tuple[str, dict[str, Any], int, float]] = {
    "audio outlasts the video": ("long-audio.mkv", {"frame_count": 100, "audio_s": 10.0}, 100, 4.0),
    "audio outlasts the video (WebM)": (
        "long-audio.webm",
        {"frame_count": 100, "codec": "libvpx-vp9", "audio_s": 10.0},
        100,
        4.0,
    ),
    "video starts at 5 s": (
        "late.mkv",
        {"frame_count": 250, "start_s": 5.0, "audio_s": 15.0, "keyint": 50},
        250,
        10.0,
    ),
    "audio outlasts the video (WMV)": (
        "long-audio.wmv",
        {"frame_count": 100, "codec": "wmv2", "audio_s": 10.0, "keyint": 25},
        100,
        4.0,
    ),
    "audio as long as the video (WMV)": (
        "with-audio.wmv",
        {"frame_count": 250, "codec": "wmv2", "audio_s": 10.0, "keyint": 25},
        250,
        10.0,
    ),
}


def _shown(image: ThumbnailImage) -> int:
    """The number of the frame a thumbnail shows."""
    with av.open(str(image.path)) as jpeg:
        return frame_number(next(jpeg.decode(video=0)).to_ndarray(format="rgb24"))


def _assert_frames_at(images: list[ThumbnailImage], targets: list[float]) -> None:
    """One thumbnail per target, each the frame nearest its target (within half a frame), showing the
    frame its `t_s` names."""
    assert len(images) == len(targets)
    for image, target in zip(images, targets, strict=True):
        assert image.t_s == pytest.approx(target, abs=HALF_FRAME_S), (image.t_s, target)
        assert _shown(image) == round(image.t_s * FPS), (image.t_s, target)


def _keyframe_times(path: Path) -> list[float]:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        first = stream.start_time or 0
        return [
            round(float((p.pts - first) * stream.time_base), 3)
            for p in container.demux(stream)
            if p.is_keyframe and p.pts is not None
        ]


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("containers")


@pytest.mark.parametrize(
    ("name", "codec", "keyint"),
    [("long-gop.ts", "libx264", 100), ("short-gop.mpg", "mpeg2video", 25)],
)
def test_unindexed_thumbnails_are_the_frames_at_their_times(
    clips: Path, tmp_path: Path, name: str, codec: str, keyint: int
) -> None:
    """In MPEG-TS (keyframes 4 s apart) and MPEG-PS (1 s apart), a thumbnail every 2.5 s (far enough apart
    for each to be sought) is the frame at its time, not the next keyframe's, and the one in the last GOP
    (10 s) is there too."""
    path = clips / name
    make_numbered_video(path, frame_count=300, codec=codec, keyint=keyint, audio_s=12.0)
    assert _keyframe_times(path) == [k * keyint / FPS for k in range(300 // keyint)]
    images = extract_thumbnails(path, out_dir=tmp_path, every_s=2.5)
    _assert_frames_at(images, [0.0, 2.5, 5.0, 7.5, 10.0])


def test_mpegts_with_one_keyframe_gives_every_thumbnail(clips: Path, tmp_path: Path) -> None:
    """A valid 4 s MPEG-TS whose only keyframe is its first frame gives all ten thumbnails, each the
    frame at its time (0.2, 0.6, ... 3.8 s), rather than a decode error."""
    path = clips / "one-keyframe.ts"
    make_numbered_video(path, frame_count=100, audio_s=4.0)
    assert _keyframe_times(path) == [0.0]
    images = extract_thumbnails(path, out_dir=tmp_path, count=10)
    _assert_frames_at(images, [0.2 + 0.4 * k for k in range(10)])


@pytest.mark.parametrize("case", sorted(OWN_SPAN_CLIPS))
def test_frame_count_is_the_video_streams_own(clips: Path, case: str) -> None:
    """The frame count of a Matroska, WebM or WMV video is exact when the container's duration is not the
    video's: audio lasting 10 s beside 4 s of video, or video from 5 s to 15 s beside audio from 0 (a
    WMV's came as 251 for 100 frames, and as 251 for 250 beside a soundtrack as long)."""
    name, made, frames, _span_s = OWN_SPAN_CLIPS[case]
    path = clips / name
    make_numbered_video(path, **made)
    assert probe_video(path).video.frame_count == frames


@pytest.mark.parametrize("case", sorted(OWN_SPAN_CLIPS))
def test_thumbnails_span_the_video_streams_own(clips: Path, tmp_path: Path, case: str) -> None:
    """Five thumbnails spread over the video stream's own span (the middles of five equal slices of it,
    from its first frame), not over the container's, each the frame at its time (a WMV's were spread over
    its 10 s of sound, the last ones all its last frame)."""
    name, made, _frames, span_s = OWN_SPAN_CLIPS[case]
    path = clips / name
    make_numbered_video(path, **made)
    images = extract_thumbnails(path, out_dir=tmp_path, count=5)
    _assert_frames_at(images, [span_s * (k + 0.5) / 5 for k in range(5)])


def test_matroska_with_a_varying_rate_has_no_frame_count(clips: Path) -> None:
    """Two seconds at 30 frames/s then two at 10 (80 frames) in Matroska, which states a 30 frames/s
    default: no count can be had without reading every packet, so it is null rather than 4 s x 30 = 120;
    and the stream is variable-rate, with no average rate (FFmpeg's is the first frames': it read 30 and
    not VFR)."""
    path = clips / "slows-down.mkv"
    make_numbered_video(path, frame_count=80, fps=30, slow_from=59, audio_s=4.0)
    result = probe_video(path)
    assert result.format.duration_s == pytest.approx(4.0, abs=1 / 30)
    assert result.video.frame_count is None
    assert (result.video.is_vfr, result.video.avg_fps) == (True, None)


def test_piped_matroska_thumbnails_span_the_whole_video(clips: Path, tmp_path: Path) -> None:
    """A Matroska written through a pipe states no duration and has no index: its probe has no frame
    count, and its six thumbnails still spread over its 12 s (1, 3, ... 11 s), each the frame at its time."""
    path = clips / "piped.mkv"
    make_numbered_video(path, frame_count=300, keyint=100, piped=True)
    result = probe_video(path)
    assert (result.format.duration_s, result.video.frame_count) == (None, None)
    images = extract_thumbnails(path, out_dir=tmp_path, count=6)
    _assert_frames_at(images, [1.0 + 2.0 * k for k in range(6)])


@pytest.mark.parametrize("audio_s", [None, 2.0])
@pytest.mark.parametrize("frames", [1, 2, 3])
def test_the_shortest_matroska_videos_are_whole(
    clips: Path, tmp_path: Path, frames: int, audio_s: float | None
) -> None:
    """A valid H.264 Matroska of 1, 2 or 3 frames, alone or beside 2 s of audio (FFmpeg then gives the
    video stream the container's duration), is not taken for a truncated one: the probe counts its
    frames, quality decodes each of them, and one thumbnail per frame shows each in turn."""
    path = clips / f"{frames}-frames-{audio_s}.mkv"
    make_numbered_video(path, frame_count=frames, audio_s=audio_s)
    if audio_s is not None:
        with av.open(str(path)) as container:
            assert container.streams.video[0].duration == container.duration // 1000  # in ms
    assert probe_video(path).video.frame_count == frames
    assert detect_quality(path).frames_analyzed == frames
    images = extract_thumbnails(path, out_dir=tmp_path, count=frames)
    _assert_frames_at(images, [(k + 0.5) / FPS for k in range(frames)])


def test_an_avi_with_b_frames_is_timed_as_shown(clips: Path, tmp_path: Path) -> None:
    """AVI stores no pts; the ones libavformat made up travelled with the packets in decoding order, so
    H.264 or HEVC frames came out in display order carrying 1, 4, 3, 5, 2...: thumbnails showed frames
    up to 3 away from their times, and scenes missed cuts. Read without made-up pts, the frames are timed
    as they come out: each thumbnail is the frame its time says, and a cut is where it was made."""
    path = clips / "b-frames.avi"
    make_numbered_video(path, frame_count=200, keyint=50)  # H.264 (PyAV's AVI muxer takes no HEVC)
    with av.open(str(path)) as container:
        assert container.streams.video[0].codec_context.has_b_frames  # the files this is about
    images = extract_thumbnails(path, out_dir=tmp_path / "every", every_s=0.52)
    _assert_frames_at(images, [round(k * 0.52, 2) for k in range(16)])
    images = extract_thumbnails(path, out_dir=tmp_path / "count", count=5)
    _assert_frames_at(images, [0.8, 2.4, 4.0, 5.6, 7.2])
    cut = clips / "cuts.avi"
    make_video(cut, duration_s=6.0, cuts_s=[1.48, 3.0, 4.36], black_s=(3.0, 4.36))
    assert [scene.start_s for scene in detect_scenes(cut).scenes] == [0.0, 1.48, 3.0, 4.36]
    assert detect_quality(cut).black == [(3.0, 4.36)]


def test_an_avi_with_b_frames_and_dropped_frames_keeps_its_times_after_them(tmp_path: Path) -> None:
    """Frames dropped from an AVI (empty chunks in their slots) do not shift the frames after them: each
    frame takes the least slot its packets left (counted one interval apart, every frame after a drop was
    a frame early per frame dropped). Thumbnails far apart are sought to, not decoded from the start."""
    path = tmp_path / "dropped.avi"
    with av.open(str(path), "w", format="avi") as out:
        stream = out.add_stream("libx264", rate=FPS, options={"bf": "3", "g": "50"})
        stream.width, stream.height, stream.pix_fmt = 320, 240, "yuv420p"
        for index in range(300):
            if 60 <= index <= 62:
                continue
            frame = av.VideoFrame.from_ndarray(numbered_picture(index, 320, 240), format="rgb24")
            frame.pts, frame.time_base = index, Fraction(1, FPS)
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    images = extract_thumbnails(path, out_dir=tmp_path / "thumbs", every_s=4.0)
    assert [(image.t_s, _shown(image)) for image in images] == [(0.0, 0), (4.0, 100), (8.0, 200)]


def test_a_raw_dv_file_has_its_frame_rate(tmp_path: Path) -> None:
    """A raw DV file (a camcorder's capture) is 25 frames/s, steady, its 100 frames counted, and a quality
    pass counts down from 100: FFmpeg 8 gives raw DV a time base of 1/60000 s and an average rate of one
    frame a tick, 60,000/s, so it was variable-rate without an average or a count, and a quality pass said
    "decoding 100/240000 frames"."""
    path = tmp_path / "capture.dv"
    make_video(path, duration_s=4.0, fps=25, width=720, height=576, codec="dvvideo")
    video = probe_video(path).video
    assert (video.fps, video.avg_fps, video.is_vfr, video.frame_count) == (25.0, 25.0, False, 100)
    notes: list[str] = []
    assert detect_quality(path, report=lambda _f, note: notes.append(note)).frames_analyzed == 100
    assert notes[-1] == "decoding 100/100 frames"
