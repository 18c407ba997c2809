"""An MP4 cut without re-encoding (`ffmpeg -ss 1.32 -i in.mp4 -c copy out.mp4`) keeps every packet from the
keyframe before the cut and an edit list that hides the frames before it: they are decoded for the frames
that follow, flagged discard by the demuxer, and never shown. Every job reads the frames a player shows,
timed from the first of them, as ffprobe's `-show_frames` lists them."""

from __future__ import annotations

from pathlib import Path

import av
import pytest

from medialens_video.frames import encode_jpeg
from medialens_video.probe import probe_video
from medialens_video.quality import detect_quality
from medialens_video.scenes import detect_scenes
from medialens_video.thumbnails import extract_thumbnails
from scripts.samples import make_video

FPS = 25
#: Frames hidden at the start: the cut falls 1.32 s into the source, whose first keyframe is frame 0.
HIDDEN = 33
SHOWN = 200 - HIDDEN


@pytest.fixture(scope="module")
def cut(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """8 s at 25 frames/s (cuts at 3 s and 5 s, black from 6 s to 7 s, a keyframe every 2 s), remuxed with
    its timestamps moved 1.32 s earlier, as `ffmpeg -ss 1.32 -c copy` writes it: the muxer writes an edit
    list starting at the frame then at 0, on a B-frame. Shown: 167 frames, cuts at 1.68 s and 3.68 s,
    black from 4.68 s to 5.68 s."""
    folder = tmp_path_factory.mktemp("edit-lists")
    source, path = folder / "source.mp4", folder / "cut.mp4"
    make_video(
        source,
        duration_s=8.0,
        fps=FPS,
        width=320,
        height=180,
        cuts_s=[3.0, 5.0],
        texture=True,
        keyint=50,
        black_s=(6.0, 7.0),
    )
    with av.open(str(source)) as src, av.open(str(path), "w") as out:
        video = src.streams.video[0]
        stream = out.add_stream_from_template(video)
        shift = round(HIDDEN / FPS / video.time_base)
        for packet in src.demux(video):
            if packet.dts is None:
                continue
            packet.pts, packet.dts, packet.stream = packet.pts - shift, packet.dts - shift, stream
            out.mux(packet)
    with av.open(str(path)) as container:
        packets = [p for p in container.demux(video=0) if p.size]
        assert (len(packets), sum(p.is_discard for p in packets)) == (200, HIDDEN)  # the premise
    return path


def _shown(path: Path) -> list[av.VideoFrame]:
    with av.open(str(path)) as container:
        return list(container.decode(video=0))


def test_scenes_of_an_mp4_cut_without_reencoding_are_timed_from_its_first_shown_frame(
    cut: Path, tmp_path: Path
) -> None:
    """The cuts (and the black's edges) are found at 1.68, 3.68, 4.68 and 5.68 s, frames 42, 92, 117 and
    142 of the 167 shown, and each scene's thumbnail is the JPEG of its first frame. The hidden frames were
    on the timeline: the cuts read 3.0, 5.0, 6.0 and 7.0 s (the source's times), 200 frames analysed, and
    the first scene had no thumbnail (its first frame, hidden, never decodes)."""
    frames = _shown(cut)
    assert len(frames) == SHOWN
    assert float(frames[0].pts * frames[0].time_base) == 0.0
    analysis = detect_scenes(cut, thumbnail_dir=tmp_path / "t", thumbnail_width=160)
    assert analysis.frames_analyzed == SHOWN
    assert [scene.start_frame for scene in analysis.scenes] == [0, 42, 92, 117, 142]
    assert [scene.start_s for scene in analysis.scenes] == pytest.approx([0.0, 1.68, 3.68, 4.68, 5.68])
    assert (analysis.scenes[-1].end_s, analysis.scenes[-1].end_frame) == (pytest.approx(SHOWN / FPS), SHOWN)
    for scene in analysis.scenes:
        assert scene.thumbnail is not None, scene
        assert scene.thumbnail.read_bytes() == encode_jpeg(frames[scene.start_frame], 160)[0], scene


def test_the_frame_count_of_an_mp4_cut_without_reencoding_is_its_shown_frames(
    cut: Path, tmp_path: Path
) -> None:
    """The probe counts the 167 frames shown, as quality analyses them and `ffprobe -count_frames` reads
    them, not the 200 the MP4 states (its hidden frames too); the black and the thumbnails agree."""
    assert probe_video(cut).video.frame_count == SHOWN
    quality = detect_quality(cut)
    assert quality.frames_analyzed == SHOWN
    assert quality.black == [pytest.approx((4.68, 5.68), abs=1e-6)]
    images = extract_thumbnails(cut, out_dir=tmp_path, count=5)
    middles = [(k + 0.5) * SHOWN / FPS / 5 for k in range(5)]
    assert [image.t_s for image in images] == pytest.approx(middles, abs=0.5 / FPS + 1e-6)
