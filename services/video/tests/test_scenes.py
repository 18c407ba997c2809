"""Unit tests of `detect_scenes` on generated clips whose cuts are known to the frame."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from av.video.frame import PictureType

from medialens_shared.errors import MediaDecodeError, UnsupportedInput
from medialens_video import frames, scenes
from medialens_video.frames import encode_jpeg
from medialens_video.scenes import detect_scenes
from scripts.samples import corrupt, cut_frames, make_audio, make_video, truncate

CUTS_S = [1.32, 2.2, 4.04, 5.68, 6.36]


def _f1(found: list[int], truth: list[int], *, tolerance: int = 1) -> tuple[float, float]:
    """Precision and recall of `found` cut frames against `truth`, matching each truth cut at most once."""
    unmatched = list(truth)
    hits = 0
    for frame in found:
        match = next((t for t in unmatched if abs(t - frame) <= tolerance), None)
        if match is not None:
            unmatched.remove(match)
            hits += 1
    return hits / max(len(found), 1), hits / max(len(truth), 1)


@pytest.fixture(scope="module")
def textured(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("scenes") / "textured.mp4"
    make_video(path, duration_s=8.0, fps=25, width=320, height=180, cuts_s=CUTS_S, texture=True)
    return path


def test_finds_irregular_cuts_in_textured_video(textured: Path) -> None:
    """Every cut of a panning-texture clip is found at its exact frame, with no extra cut."""
    analysis = detect_scenes(textured)
    truth = cut_frames(200, 25, CUTS_S)[1:]
    found = [scene.start_frame for scene in analysis.scenes[1:]]
    assert found == truth
    assert _f1(found, truth) == (1.0, 1.0)
    assert analysis.frames_analyzed == 200
    assert analysis.frames_decoded < 200
    assert [scene.start_s for scene in analysis.scenes[1:]] == pytest.approx([f / 25 for f in truth])
    assert analysis.scenes[0].start_s == 0.0
    assert analysis.scenes[-1].end_s == pytest.approx(8.0)
    assert analysis.scenes[-1].end_frame == 200


def test_finds_cuts_between_flat_colours(tmp_path: Path) -> None:
    """Cuts between flat-colour segments with a moving square are found within one frame."""
    path = tmp_path / "flat.mp4"
    make_video(path, duration_s=6.0, fps=30, cuts_s=[0.9, 2.47, 3.1, 4.83])
    found = [scene.start_frame for scene in detect_scenes(path).scenes[1:]]
    assert _f1(found, cut_frames(180, 30, [0.9, 2.47, 3.1, 4.83])[1:], tolerance=1) == (1.0, 1.0)


def test_cuts_long_gop_and_short_gop_alike(tmp_path: Path) -> None:
    """A clip with a keyframe every 12 frames yields the same exact cuts as the default GOP."""
    path = tmp_path / "gop.mp4"
    make_video(path, duration_s=8.0, fps=25, width=320, height=180, cuts_s=CUTS_S, texture=True, keyint=12)
    found = [scene.start_frame for scene in detect_scenes(path).scenes[1:]]
    assert found == cut_frames(200, 25, CUTS_S)[1:]


@pytest.mark.parametrize("suffix", [".mkv", ".ts"])
def test_chunked_decoding_in_other_containers(tmp_path: Path, suffix: str) -> None:
    """Matroska clips cut into keyframe chunks, and MPEG-TS ones (whose seeks by time miss the keyframes,
    so they are decoded in one piece instead), yield the exact cuts."""
    path = tmp_path / f"gop{suffix}"
    make_video(path, duration_s=8.0, fps=25, width=320, height=180, cuts_s=CUTS_S, texture=True, keyint=12)
    analysis = detect_scenes(path)
    assert [scene.start_frame for scene in analysis.scenes[1:]] == cut_frames(200, 25, CUTS_S)[1:]
    assert analysis.frames_analyzed == 200


@pytest.mark.parametrize("cpus", [1, 2, 8])
def test_same_cuts_whatever_the_thread_count(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cpus: int
) -> None:
    """One, two or eight decoding threads (as many chunks as that makes) find the same exact cuts."""
    path = tmp_path / "gop.mp4"
    make_video(path, duration_s=8.0, fps=25, width=320, height=180, cuts_s=CUTS_S, texture=True, keyint=12)
    monkeypatch.setattr(scenes, "usable_cpus", lambda: cpus)
    found = [scene.start_frame for scene in detect_scenes(path).scenes[1:]]
    assert found == cut_frames(200, 25, CUTS_S)[1:]


def test_chunks_stop_at_the_next_keyframe(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """In closed GOPs a chunk drains its decoder at the next chunk's keyframe instead of decoding it:
    every keyframe is decoded once (by the chunk it starts), and the cuts stay exact."""
    path = tmp_path / "gop.mp4"
    make_video(path, duration_s=8.0, fps=25, width=320, height=180, cuts_s=CUTS_S, texture=True, keyint=12)
    monkeypatch.setattr(scenes, "usable_cpus", lambda: 8)
    monkeypatch.setattr(scenes, "_refine_task", None)  # nothing to refine here: the suspects show every cut
    keyframes: list[int] = []
    decode = scenes.DecodeGuard.decode

    def spy(guard: scenes.DecodeGuard, codec: object, packet: av.Packet | None) -> list[object]:
        if packet is not None and packet.is_keyframe and packet.pts is not None:
            keyframes.append(packet.pts)
        return decode(guard, codec, packet)

    monkeypatch.setattr(scenes.DecodeGuard, "decode", spy)
    analysis = detect_scenes(path)
    assert [scene.start_frame for scene in analysis.scenes[1:]] == cut_frames(200, 25, CUTS_S)[1:]
    assert len(keyframes) >= 8
    assert sorted(keyframes) == sorted(set(keyframes))


def test_open_gop_chunks_decode_past_the_keyframe(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """In open GOPs the B-frames shown just before a keyframe come after it in decode order: the scan
    marks those keyframes as not closed, so a chunk decodes on past them, and cuts there stay exact."""
    path = b_run_clip(tmp_path / "open.mp4", x264_params="open-gop=1:" + FIXED_PATTERN)
    with scenes.open_video(path) as (container, stream):
        timeline = scenes._scan(container, stream, scenes.frame_ticks(stream))
    assert len(timeline.keyframes) > 2
    assert timeline.closed == {timeline.keyframes[0][1]}
    monkeypatch.setattr(scenes, "usable_cpus", lambda: 8)
    assert [scene.start_frame for scene in detect_scenes(path).scenes[1:]] == B_RUN_CUTS


#: Cuts on non-reference B-frames (33, 97, 121), just before a keyframe (47) and on one (72), in a clip
#: whose picture types follow a fixed pattern (IBBBP..., a keyframe every 24 frames) whatever the content.
B_RUN_CUTS = [33, 47, 72, 97, 121]
#: x264 options that fix the picture types: three B-frames between references, no scene-cut keyframes.
FIXED_PATTERN = "bframes=3:b-adapt=0:scenecut=0"


@pytest.fixture(scope="module")
def fixed_pattern(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return b_run_clip(tmp_path_factory.mktemp("scenes") / "fixed.mp4", x264_params=FIXED_PATTERN)


def b_run_clip(path: Path, *, x264_params: str) -> Path:
    """6 s at 25 fps with the B_RUN_CUTS, a keyframe every 24 frames, encoded with `x264_params`."""
    make_video(
        path,
        duration_s=6.0,
        fps=25,
        width=320,
        height=180,
        cuts_s=[f / 25 for f in B_RUN_CUTS],
        texture=True,
        keyint=24,
        x264_params=x264_params,
    )
    return path


def test_fixed_pattern_puts_cuts_on_b_frames_and_keyframes(fixed_pattern: Path) -> None:
    """The clip below really has its cuts on B-frames, a P-frame before a keyframe and a keyframe."""
    with av.open(str(fixed_pattern)) as container:
        types = [PictureType(frame.pict_type).name for frame in container.decode(video=0)]
    assert [types[f] for f in B_RUN_CUTS] == ["B", "P", "I", "B", "B"]


@pytest.mark.parametrize("spikes", [True, False])
def test_cuts_on_b_frames_and_beside_keyframes(
    fixed_pattern: Path, monkeypatch: pytest.MonkeyPatch, spikes: bool
) -> None:
    """Cuts on skipped B-frames are exact: seen through packet-size suspects, or, with those turned off,
    seen roughly between two reference frames and then refined by decoding that stretch in full."""
    refined: list[int] = []
    refine = scenes._refine_task

    def spy(path: Path, change: scenes._Change, *args: object) -> object:
        refined.append(change.after)
        return refine(path, change, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(scenes, "_refine_task", spy)
    if not spikes:
        monkeypatch.setattr(scenes, "SPIKE_RATIO", float("inf"))
    analysis = detect_scenes(fixed_pattern)
    assert [scene.start_frame for scene in analysis.scenes[1:]] == B_RUN_CUTS
    assert analysis.frames_decoded < 150
    assert (len(refined) >= 3) is not spikes


def test_variable_frame_rate_uses_pts(tmp_path: Path) -> None:
    """On a VFR clip the cut times follow the decoder's timestamps, not frame index over rate."""
    path = tmp_path / "vfr.mp4"
    make_video(path, duration_s=4.0, fps=25, width=320, height=180, segments=4, vfr=True, texture=True)
    analysis = detect_scenes(path)
    # Frames after the middle (50) last three intervals each: frame k shows at 50 + 3 (k - 50) ticks.
    assert [scene.start_frame for scene in analysis.scenes[1:]] == [25, 50, 75]
    assert [scene.start_s for scene in analysis.scenes[1:]] == pytest.approx([1.0, 2.0, 5.0])
    assert analysis.scenes[-1].end_s == pytest.approx(8.0)


def test_min_scene_len_merges_close_cuts(textured: Path) -> None:
    """With min_scene_len_s 1.0 the cuts 0.88 s and 0.68 s after the previous kept one are dropped."""
    found = [scene.start_s for scene in detect_scenes(textured, min_scene_len_s=1.0).scenes[1:]]
    assert found == pytest.approx([1.32, 4.04, 5.68])


def _colour_clip(path: Path, colours: list[tuple[int, int, int]], fps: int = 25) -> None:
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = 160, 96, "yuv420p"
        for index, colour in enumerate(colours):
            image = np.empty((96, 160, 3), dtype=np.uint8)
            image[:] = colour
            image[40:56, index % 140 : index % 140 + 16] = 255
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts, frame.time_base = index, Fraction(1, fps)
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))


def test_flash_suppression(tmp_path: Path) -> None:
    """Two white frames inside a shot count as a cut without flash suppression and as none with it."""
    path = tmp_path / "flash.mp4"
    red, white, blue = (180, 40, 40), (255, 255, 255), (40, 40, 180)
    _colour_clip(path, [red] * 30 + [white] * 2 + [red] * 28 + [blue] * 40)
    plain = [scene.start_frame for scene in detect_scenes(path, min_scene_len_s=0.0).scenes[1:]]
    assert plain == [30, 32, 60]
    suppressed = detect_scenes(path, min_scene_len_s=0.0, flash_suppression=True).scenes[1:]
    assert [scene.start_frame for scene in suppressed] == [60]


def test_writes_a_thumbnail_per_scene(textured: Path, tmp_path: Path) -> None:
    """Each scene gets a decodable 160-pixel-wide JPEG of its first frame."""
    analysis = detect_scenes(textured, thumbnail_dir=tmp_path / "t", thumbnail_width=160)
    assert len(analysis.scenes) == len(CUTS_S) + 1
    for scene in analysis.scenes:
        assert scene.thumbnail is not None
        with av.open(str(scene.thumbnail)) as jpeg:
            frame = next(jpeg.decode(video=0))
        assert (frame.width, frame.height) == (160, 90)


def test_thumbnails_are_decoded_with_deblocking(textured: Path, tmp_path: Path) -> None:
    """Each scene's JPEG is byte for byte the JPEG of that frame from a plain full decode, and not the one
    of the same frame decoded without deblocking (as the fast pass decodes it)."""
    analysis = detect_scenes(textured, thumbnail_dir=tmp_path / "t", thumbnail_width=160)
    starts = {scene.start_frame: scene.thumbnail for scene in analysis.scenes}
    for options, same in (({}, True), ({"skip_loop_filter": "all"}, False)):
        with av.open(str(textured)) as container:
            stream = container.streams.video[0]
            stream.codec_context.options = options
            for index, frame in enumerate(container.decode(stream)):
                thumbnail = starts.get(index)
                if thumbnail is not None:
                    assert (encode_jpeg(frame, 160)[0] == thumbnail.read_bytes()) is same, (index, options)


def test_reports_progress_and_stops_when_report_raises(textured: Path) -> None:
    """Progress goes from 0 to 1 with frame counts, and an exception from report stops the analysis."""
    notes: list[tuple[float, str]] = []
    detect_scenes(textured, report=lambda f, m: notes.append((f, m)))
    assert notes[0] == (0.0, "decoding 0/200 frames")
    assert all(0.0 <= f <= 1.0 for f, _ in notes)
    assert "decoding 200/200 frames" in [m for _, m in notes]

    class Stop(Exception):
        pass

    def stop_at_half(fraction: float, _message: str) -> None:
        if fraction >= 0.45:
            raise Stop

    with pytest.raises(Stop):
        detect_scenes(textured, report=stop_at_half)


def test_the_demux_only_pass_reports_and_can_be_stopped(
    textured: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pass that reads every packet before any decoding (about 4 s for two hours of video) reports its
    count and stops when the report raises (a cancel): it ran without either, past the 2 s a cancel has."""
    monkeypatch.setattr(scenes, "POLL_S", 0.0)
    monkeypatch.setattr(scenes, "_SCAN_LOOK_PACKETS", 50)

    class Stop(Exception):
        pass

    notes: list[str] = []

    def stop_while_reading(_fraction: float, message: str) -> None:
        notes.append(message)
        if message == "reading the packets: 150":
            raise Stop

    with pytest.raises(Stop):
        detect_scenes(textured, report=stop_while_reading)
    assert notes == ["reading the packets: 50", "reading the packets: 100", "reading the packets: 150"]


def test_truncated_video_is_a_decode_error(textured: Path, tmp_path: Path) -> None:
    """A truncated MP4 fails with MediaDecodeError."""
    damaged = tmp_path / "cut.mp4"
    truncate(textured, damaged, keep_fraction=0.6)
    with pytest.raises(MediaDecodeError):
        detect_scenes(damaged)


def test_garbage_in_the_middle_is_a_decode_error(textured: Path, tmp_path: Path) -> None:
    """An MP4 whose middle half is garbage opens, but fails with MediaDecodeError once decoding reaches it."""
    damaged = tmp_path / "middle.mp4"
    corrupt(textured, damaged)
    with pytest.raises(MediaDecodeError, match="damaged packets"):
        detect_scenes(damaged)


def test_audio_is_unsupported(tmp_path: Path) -> None:
    """A WAV file has no video stream and fails with UnsupportedInput."""
    path = tmp_path / "a.wav"
    make_audio(path, duration_s=0.3)
    with pytest.raises(UnsupportedInput):
        detect_scenes(path)


@pytest.mark.parametrize("suffix", [".ts", ".mpg"])
def test_unindexed_containers_refine_cuts_and_give_each_scene_its_thumbnail(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, suffix: str
) -> None:
    """In MPEG-TS (H.264 with B-frames) and MPEG-PS (MPEG-2), a seek back to a keyframe's time lands past it,
    on the packet decoded at that time: the cuts on skipped B-frames are refined to their frames all the
    same (they read a frame late), and each scene's thumbnail is the JPEG of its first frame from a plain
    decode (every one was missing)."""
    path = tmp_path / f"clip{suffix}"
    if suffix == ".ts":
        b_run_clip(path, x264_params=FIXED_PATTERN)
        monkeypatch.setattr(scenes, "SPIKE_RATIO", float("inf"))  # the cuts on B-frames are refined
        truth = B_RUN_CUTS
    else:
        make_video(
            path, duration_s=6.0, width=320, height=180, codec="mpeg2video", cuts_s=CUTS_S[:4], texture=True
        )
        truth = cut_frames(150, 25, CUTS_S[:4])[1:]
    analysis = detect_scenes(path, thumbnail_dir=tmp_path / "t", thumbnail_width=160)
    starts = {scene.start_frame: scene.thumbnail for scene in analysis.scenes}
    assert list(starts) == [0, *truth]
    with av.open(str(path)) as container:
        for index, frame in enumerate(container.decode(video=0)):
            if index in starts:
                thumbnail = starts[index]
                assert thumbnail is not None, index
                assert encode_jpeg(frame, 160)[0] == thumbnail.read_bytes(), index


@pytest.mark.parametrize(("cpus", "threads"), [(1, 1), (2, 3), (64, 16)])
def test_frame_threads_follow_the_cpus_the_process_may_use(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cpus: int, threads: int
) -> None:
    """Decoders run FFmpeg's automatic count of frame threads over the usable CPUs (a container's quota),
    not over the node's, which FFmpeg counts itself."""
    path = tmp_path / "clip.mp4"
    make_video(path, duration_s=1.0, fps=25, width=160, height=90)
    monkeypatch.setattr(frames, "usable_cpus", lambda: cpus)
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames.frame_threads(stream)
        assert stream.codec_context.thread_count == threads
        assert next(container.decode(stream)).width == 160
