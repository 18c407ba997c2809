"""Unit tests of `detect_quality` on clips with a black and a frozen stretch at known times."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
import numpy.typing as npt
import pytest

from medialens_shared.errors import MediaDecodeError, UnsupportedInput
from medialens_video.quality import detect_quality
from medialens_video.scenes import detect_scenes
from medialens_video.thumbnails import extract_thumbnails
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


def _clip(path: Path, pictures: list[np.ndarray], fps: int = 25) -> Path:
    """H.264 of RGB `pictures` (nearly lossless, so only the pictures' own changes count)."""
    height, width = pictures[0].shape[:2]
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps, options={"crf": "4"})
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for index, picture in enumerate(pictures):
            frame = av.VideoFrame.from_ndarray(picture, format="rgb24")
            frame.pts = index
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


def _grey(level: int, width: int = 320, height: int = 180) -> np.ndarray:
    return np.full((height, width, 3), level, np.uint8)


def test_black_is_most_pixels_dark_not_a_dark_mean(tmp_path: Path) -> None:
    """A frame is black when 98% of its pixels are dark (blackdetect's rule), not when its mean is: a dark
    night scene with a few bright lights (mean luma 0.08) is not black, nor is a black card with a caption
    band over 8% of it; a black card with a caption of 1% is."""
    night, card, small_caption = _grey(8), _grey(0), _grey(0)
    night[40:58, 100:180] = 170  # lights: 2.5% of the picture, and the mean stays under 0.1
    card[80:95, :] = 255  # a caption band, 8% of the picture
    small_caption[85:87, 100:260] = 255  # 0.6%
    for name, picture in (("night", night), ("card", card), ("small-caption", small_caption)):
        pictures = [_grey(120)] * 25 + [picture] * 50 + [_grey(120)] * 25
        analysis = detect_quality(_clip(tmp_path / f"{name}.mp4", pictures), freeze_min_s=10.0)
        expected = [pytest.approx((1.0, 3.0), abs=0.05)] if name == "small-caption" else []
        assert analysis.black == expected, name


def test_slow_or_small_motion_and_colour_changes_are_not_frozen(tmp_path: Path) -> None:
    """Frames are compared with the still picture's first showing (freezedetect's way), over Y, U and V:
    a small box creeping 2 pixels a frame (frame to frame below the noise) and hues changing at one
    brightness are not frozen; the picture that really stops is."""
    creeping = []
    for index in range(75):
        picture = _grey(128)
        picture[80:96, 20 + 2 * index : 36 + 2 * index] = 255
        creeping.append(picture)
    hues = []
    for index in range(75):  # red to blue through magenta, at a luma that stays within 1%
        t = index / 74
        hues.append(
            np.tile(np.array([200 * (1 - t) + 80 * t, 60, 80 * (1 - t) + 200 * t], np.uint8), (180, 320, 1))
        )
    stopped = creeping[:25] + [creeping[25]] * 75
    assert detect_quality(_clip(tmp_path / "creeping.mp4", creeping)).frozen == []
    assert detect_quality(_clip(tmp_path / "hues.mp4", hues)).frozen == []
    assert detect_quality(_clip(tmp_path / "stopped.mp4", stopped)).frozen == [
        pytest.approx((1.0, 4.0), abs=0.05)
    ]


def _grey_frames(count: int, *, black: range, seed: int) -> list[av.VideoFrame]:
    """`count` 160x96 frames of random grey levels (each unlike the one before), black at `black`."""
    rng = np.random.default_rng(seed)
    pictures = [
        np.full((96, 160, 3), 0 if index in black else int(rng.integers(60, 200)), dtype=np.uint8)
        for index in range(count)
    ]
    return [av.VideoFrame.from_ndarray(picture, format="rgb24") for picture in pictures]


def test_times_run_from_the_streams_start_in_a_recording_cut_mid_gop(tmp_path: Path) -> None:
    """An MPEG-TS cut at an arbitrary byte, as a broadcast recording starts: its first packets decode to
    nothing until the first keyframe. The black's times run from the stream's start (as the scenes' and
    thumbnails' do, and blackdetect's); they ran from the first decoded frame, 0.4 s early here."""
    whole = tmp_path / "whole.ts"
    with av.open(str(whole), "w", format="mpegts") as out:
        stream = out.add_stream(
            "libx264", rate=25, options={"g": "50", "keyint_min": "50", "sc_threshold": "0"}
        )
        stream.width, stream.height, stream.pix_fmt = 160, 96, "yuv420p"
        for frame in _grey_frames(250, black=range(125, 150), seed=8):  # black at 5.0-6.0 s
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    data = whole.read_bytes()
    cut = tmp_path / "cut.ts"
    cut.write_bytes(data[(len(data) * 3 // 20) // 188 * 188 :])  # about 1.5 s in, between keyframes
    with av.open(str(cut)) as container:
        video = container.streams.video[0]
        start_s = float(video.start_time * video.time_base)
        keyframe_s = next(
            float(packet.pts * video.time_base) for packet in container.demux(video) if packet.is_keyframe
        )
    assert keyframe_s - start_s > 0.2  # the cut fell between keyframes: the premise of the test
    analysis = detect_quality(cut, min_black_s=0.5)
    [(begin, end)] = analysis.black
    with av.open(str(whole)) as container:
        source_start_s = float(container.streams.video[0].start_time * container.streams.video[0].time_base)
    truth = (5.0 - (start_s - source_start_s), 6.0 - (start_s - source_start_s))
    assert abs(begin - truth[0]) <= 0.1, (begin, end, truth)
    assert abs(end - truth[1]) <= 0.1, (begin, end, truth)


def test_a_black_last_frame_held_is_closed_at_the_end_of_its_showing(tmp_path: Path) -> None:
    """A video ending on one black frame shown for 3 s: the stretch is closed at the end of that showing
    (the stream's 7 s), not 40 ms after it started, which made it shorter than `min_black_s`: dropped."""
    path = tmp_path / "held.mp4"
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=25, options={"bf": "0"})
        stream.width, stream.height, stream.pix_fmt = 160, 96, "yuv420p"
        stream.codec_context.time_base = Fraction(1, 1000)
        frames = _grey_frames(101, black=range(100, 101), seed=7)
        packets = []
        for index, frame in enumerate(frames):
            frame.pts, frame.time_base = index * 40, Fraction(1, 1000)
            packets += stream.encode(frame)
        packets += stream.encode(None)
        last = max(packets, key=lambda packet: packet.pts)
        for packet in packets:
            if packet is last:
                packet.duration = round(Fraction(3, 1) / packet.time_base)  # shown from 4.0 s to 7.0 s
            out.mux(packet)
    [(begin, end)] = detect_quality(path, min_black_s=0.5).black
    assert abs(begin - 4.0) <= 0.1
    assert abs(end - 7.0) <= 0.1


def _lossless(path: Path, lumas: list[npt.NDArray[np.uint8]]) -> Path:
    """25 fps lossless H.264 of yuv420p frames with these luma planes (grey chroma)."""
    height, width = lumas[0].shape
    grey = np.full((height // 2, width), 128, dtype=np.uint8)  # U and V, a quarter each, side by side
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=25, options={"qp": "0", "preset": "ultrafast"})
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for luma in lumas:
            planes = np.concatenate([luma, grey])
            out.mux(stream.encode(av.VideoFrame.from_ndarray(planes, format="yuv420p")))
        out.mux(stream.encode(None))
    return path


def _busy(rng: np.random.Generator) -> npt.NDArray[np.uint8]:
    return rng.integers(60, 200, (180, 320), dtype=np.uint8)


@pytest.mark.parametrize(
    ("name", "luma", "black"),
    [
        # 85% of the pixels dark: grain a 2 x 2 average smoothed away read black.
        (
            "grain",
            lambda rng: np.clip(30 + rng.integers(-10, 11, (180, 320)), 0, 255).astype(np.uint8),
            False,
        ),
        # Black but for 1-pixel lines on 1.4% of the pixels: averaged, they smeared over 2.8% of them.
        (
            "lines",
            lambda rng: np.where(np.arange(320) % 70 == 0, 235, 16).astype(np.uint8)[None, :].repeat(180, 0),
            True,
        ),
    ],
)
def test_a_frame_is_black_as_blackdetect_counts_its_pixels(
    tmp_path: Path, name: str, luma: Any, black: bool
) -> None:
    """98% of every pixel at most the threshold, as blackdetect counts them (its `pic_th`), not of a
    downscaled picture: grain and thin lines read as blackdetect reads them (checked against it)."""
    rng = np.random.default_rng(1)
    lumas = [_busy(rng) for _ in range(10)] + [luma(rng) for _ in range(25)] + [_busy(rng) for _ in range(10)]
    found = detect_quality(_lossless(tmp_path / f"{name}.mp4", lumas), min_black_s=0.5).black
    assert found == ([(0.4, 1.4)] if black else []), found


def test_grain_above_the_freeze_noise_is_no_freeze(tmp_path: Path) -> None:
    """A still picture with a grain of one level on 60% of its pixels differs by 0.0017 (freezedetect's
    measure, above its -60 dB): no freeze, as freezedetect says. Averaged 2 x 2 first, it read 0.0009."""
    rng = np.random.default_rng(3)
    base = rng.integers(60, 200, (180, 320)).astype(np.int16)

    def grainy() -> npt.NDArray[np.uint8]:
        grain = rng.integers(-1, 2, (180, 320)) * (rng.random((180, 320)) < 0.6)
        return np.clip(base + grain, 0, 255).astype(np.uint8)

    lumas = [_busy(rng) for _ in range(25)] + [grainy() for _ in range(100)] + [_busy(rng) for _ in range(25)]
    assert detect_quality(_lossless(tmp_path / "grain.mp4", lumas), freeze_min_s=2.0).frozen == []


def test_a_change_on_the_bottom_field_alone_ends_a_freeze(tmp_path: Path) -> None:
    """720 x 576 (SD broadcast): a still picture for 3 s, then the same with its odd rows (the bottom
    field) changed, still for 3 s: two freezes, as freezedetect finds. Every second row picked, the
    bottom field was never looked at, and the two read as one freeze of 6 s."""
    rng = np.random.default_rng(5)
    still = rng.integers(60, 200, (576, 720), dtype=np.uint8)
    changed = still.copy()
    changed[1::2] = np.clip(still[1::2].astype(np.int16) + 40, 0, 255).astype(np.uint8)
    lumas = [still] * 75 + [changed] * 75
    frozen = detect_quality(_lossless(tmp_path / "fields.mp4", lumas), freeze_min_s=2.0).frozen
    assert frozen == [pytest.approx((0.0, 3.0), abs=0.05), pytest.approx((3.0, 6.0), abs=0.05)]


def test_mpeg_ts_parts_joined_each_timed_from_its_start_are_refused_by_scenes_and_quality(
    tmp_path: Path,
) -> None:
    """Two recordings joined byte by byte, each timed from 0 (a recorder restarted): both parts' frames
    lie at the same times, and the jobs merged the second's scenes into the first's and reported its
    black stretch twice at the first's times. They say what the file is and how to join it instead
    (UNSUPPORTED_INPUT); one part alone, or parts whose times go on, are read as before."""
    part = tmp_path / "part.ts"
    with av.open(str(part), "w", format="mpegts") as out:
        stream = out.add_stream("libx264", rate=25, options={"g": "25"})
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for index in range(75):
            level = 0 if 25 <= index < 50 else 200
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), level, np.uint8), format="rgb24")
            frame.pts, frame.time_base = index, Fraction(1, 25)
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    joined = tmp_path / "joined.ts"
    joined.write_bytes(part.read_bytes() * 2)
    with pytest.raises(UnsupportedInput, match=r"times go back by 3\.0 s after 3\.0 s: it is parts joined"):
        detect_quality(joined)
    with pytest.raises(UnsupportedInput, match=r"times go back by 3\.0 s after 3\.0 s: it is parts joined"):
        detect_scenes(joined)
    assert detect_quality(part).black == [pytest.approx((1.0, 2.0), abs=0.05)]


def _with_repeats(path: Path, *, still: range, black: range, count: int) -> Path:
    """A 25 fps NUT of `count` frames of noise (MPEG-4 part 2, no B-frames), where each frame in `still`
    and `black` after their first is an empty packet: the frame before shown again, as libtheora writes a
    still picture (no encoder of PyAV's writes Theora; NUT keeps empty packets as written)."""
    rng = np.random.default_rng(3)
    with av.open(str(path), "w", format="nut") as out:
        stream = out.add_stream("mpeg4", rate=25, options={"bf": "0", "qscale": "2"})
        stream.width, stream.height, stream.pix_fmt = 160, 96, "yuv420p"
        for index in range(count):
            if any(index - 1 in run and index in run for run in (still, black)):
                packet = av.Packet(0)
                packet.stream, packet.time_base, packet.pts, packet.dts = (
                    stream,
                    Fraction(1, 25),
                    index,
                    index,
                )
                out.mux(packet)
                continue
            luma = np.full((96, 160), 16, np.uint8) if index in black else rng.integers(40, 220, (96, 160))
            rgb = np.repeat(np.asarray(luma, np.uint8)[:, :, None], 3, axis=2)
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p")
            frame.pts, frame.time_base = index, Fraction(1, 25)
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return path


def test_empty_packets_show_the_frame_before_again(tmp_path: Path) -> None:
    """An empty packet with a time is the frame before it shown again: a still picture of them is frozen,
    a black frame repeated black, each to the packet's time (it failed as damaged: a decoder sent one takes
    it for the end of the stream and refuses every packet after it). Scenes read through them (noise to
    noise is no cut for a content detector; black in and out are)."""
    path = _with_repeats(tmp_path / "repeats.nut", still=range(25, 75), black=range(100, 125), count=150)
    with av.open(str(path)) as container:
        assert sum(not p.size and p.pts is not None for p in container.demux(video=0)) == 49 + 24
    found = detect_quality(path, min_black_s=0.5, freeze_min_s=1.5)
    assert found.frozen == [(1.0, 3.0)], found
    assert found.black == [(4.0, 5.0)], found
    assert found.frames_analyzed == 150
    assert [scene.start_s for scene in detect_scenes(path).scenes] == [0.0, 4.0, 5.0]
    # At 1.5 and 2.5 s the still picture first shown at 1.0 s (2.5 s is nearer the next frame, at 3.0 s).
    shown = extract_thumbnails(path, out_dir=tmp_path / "thumbs", count=6, width=80)
    assert [image.t_s for image in shown] == [0.48, 1.0, 1.0, 3.48, 4.0, 5.48], shown
