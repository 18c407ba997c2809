"""An MPEG-TS recording cut at an arbitrary byte (a broadcast or camera recording joined midway): its first
packets, up to the first keyframe, decode to nothing, and the first of them in decode order is not the first
shown (a B-frame comes after it, shown a frame before). Scenes are timed from the stream's start as quality
and thumbnails are, and as ffmpeg shows the file; the first scene has a thumbnail all the same."""

from __future__ import annotations

from pathlib import Path

import av
import pytest

from medialens_video.frames import encode_jpeg
from medialens_video.quality import detect_quality
from medialens_video.scenes import detect_scenes
from scripts.samples import make_video

#: In the source: cuts, then black from 8 s to 9 s (two more cuts, at its edges).
SOURCE_CUTS_S = [4.0, 7.0, 8.0, 9.0]


@pytest.fixture(scope="module")
def recording(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("recording-cut")
    whole, cut = folder / "whole.ts", folder / "cut.ts"
    make_video(
        whole,
        duration_s=10.0,
        fps=25,
        width=320,
        height=180,
        cuts_s=SOURCE_CUTS_S[:2],
        texture=True,
        keyint=50,
        black_s=(8.0, 9.0),
    )
    data = whole.read_bytes()
    for start in range(len(data) * 3 // 20 // 188 * 188, len(data) // 2, 188):  # from about 1.5 s in
        cut.write_bytes(data[start:])
        with av.open(str(cut)) as container:
            video = container.streams.video[0]
            packets = [p for p in container.demux(video) if p.pts is not None]
        # The cut wanted: between keyframes, and a frame shown before the first packet's.
        if not packets[0].is_keyframe and min(p.pts for p in packets) < video.start_time:
            break
    else:
        raise AssertionError("no place to cut the recording as wanted")
    return cut


def test_scenes_of_a_recording_cut_mid_gop_are_timed_as_its_black_and_have_every_thumbnail(
    recording: Path, tmp_path: Path
) -> None:
    """The cuts come at the times the black's edges come in quality and in a decode timed from the stream's
    start (ffmpeg's blackdetect: 6.4 s and 7.4 s); they read a frame later, from the B-frame shown before
    the start. The first scene's thumbnail, whose first frame never decodes, is the first frame shown; it
    was missing."""
    with av.open(str(recording)) as container:
        video = container.streams.video[0]
        frames = list(container.decode(video))
        at = {frame.pts: float((frame.pts - video.start_time) * video.time_base) for frame in frames}
    black_s = next(at[f.pts] for f in frames if f.to_ndarray(format="gray").mean() < 10)
    shift = SOURCE_CUTS_S[2] - black_s
    assert detect_quality(recording).black == [pytest.approx((black_s, black_s + 1.0), abs=1e-6)]
    analysis = detect_scenes(recording, thumbnail_dir=tmp_path / "t", thumbnail_width=160)
    assert [scene.start_s for scene in analysis.scenes] == pytest.approx(
        [0.0, *(t - shift for t in SOURCE_CUTS_S)], abs=1e-6
    )
    by_time = {round(t, 6): frame for frame, t in zip(frames, at.values(), strict=True)}
    firsts = [frames[0], *(by_time[round(scene.start_s, 6)] for scene in analysis.scenes[1:])]
    for scene, frame in zip(analysis.scenes, firsts, strict=True):
        assert scene.thumbnail is not None, scene
        assert scene.thumbnail.read_bytes() == encode_jpeg(frame, 160)[0], scene
