"""Unit tests of `extract_thumbnails`: times, sizes and decodability of the JPEGs."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
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
    # The smallest positive float: an infinite count, which int() refused (OverflowError: INTERNAL_ERROR).
    with pytest.raises(InvalidParams, match="more than 1000 thumbnails"):
        thumbnail_times(5.0, count=None, every_s=5e-324)
    assert len(thumbnail_times(999.0, count=None, every_s=1.0)) == 999


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


@pytest.mark.parametrize(("fps", "frames", "count"), [(5, 5, 12), (2, 6, 20), (25, 3, 7), (10, 30, 45)])
def test_more_thumbnails_than_frames_take_each_nearest_frame_in_order(
    tmp_path: Path, fps: int, frames: int, count: int
) -> None:
    """Each thumbnail is the frame nearest its time (the first from half a frame before it), in time order,
    a frame given again when it is nearest to several: the times went back and forth (0.2, 0.4, 0.2 s)
    when the targets were closer than a frame."""
    path = tmp_path / "few.mp4"
    make_video(path, duration_s=frames / fps, fps=fps, width=160, height=96)
    images = extract_thumbnails(path, out_dir=tmp_path / "out", count=count, width=64)
    slice_s = frames / fps / count
    nearest = [
        min(
            (i for i in range(frames) if i / fps >= (k + 0.5) * slice_s - 0.5 / fps - 1e-9),
            default=frames - 1,
        )
        for k in range(count)
    ]
    assert [image.t_s for image in images] == pytest.approx([i / fps for i in nearest], abs=1e-6)


def test_audio_is_unsupported(tmp_path: Path) -> None:
    """A WAV file has no video stream and fails with UnsupportedInput."""
    path = tmp_path / "a.wav"
    make_audio(path, duration_s=0.3)
    with pytest.raises(UnsupportedInput):
        extract_thumbnails(path, out_dir=tmp_path / "t")


@pytest.mark.parametrize(
    ("rotation", "where"),
    [(0, "left"), (90, "top"), (180, "right"), (270, "bottom")],
)
def test_thumbnails_are_turned_as_the_video_is_displayed(tmp_path: Path, rotation: int, where: str) -> None:
    """A 96 x 64 clip whose display matrix turns it: its thumbnail has the displayed shape (64 wide gives
    64 x 96 when turned a quarter), and the white square that starts at the picture's left edge is where
    the turn puts it (top for 90 degrees clockwise)."""
    path = tmp_path / f"turned-{rotation}.mp4"
    make_video(path, duration_s=1.0, fps=10, width=96, height=64, segments=1, rotation=rotation)
    (image,) = extract_thumbnails(path, out_dir=tmp_path / "t", every_s=5.0, width=64)
    quarter = rotation in (90, 270)
    assert (image.width, image.height) == ((64, 96) if quarter else (64, 42))
    with av.open(str(image.path)) as jpeg:
        rgb = next(jpeg.decode(video=0)).to_ndarray(format="rgb24")
    assert rgb.shape == (image.height, image.width, 3)
    rows, cols = np.nonzero(rgb.min(axis=2) > 200)  # the white square
    y, x = rows.mean() / image.height, cols.mean() / image.width
    centre = {"left": (0.5, 0.06), "right": (0.5, 0.94), "top": (0.06, 0.5), "bottom": (0.94, 0.5)}[where]
    assert (y, x) == pytest.approx(centre, abs=0.08), (y, x)


def test_thumbnails_of_non_square_pixels_have_the_displayed_shape(tmp_path: Path) -> None:
    """A PAL 16:9 clip stores 720 x 576 pixels 16/11 as wide as high (shown 1047 x 576): its thumbnail
    320 wide is 176 high, not 256, and a block shown square (110 x 160 stored pixels) stays square."""
    path = tmp_path / "anamorphic.mp4"
    picture = np.full((576, 720, 3), 90, np.uint8)
    picture[208:368, 300:410] = 255  # 110 x 160 stored: 160 x 160 as shown
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 720, 576, "yuv420p"
        stream.codec_context.sample_aspect_ratio = Fraction(16, 11)
        for index in range(5):
            frame = av.VideoFrame.from_ndarray(picture, format="rgb24")
            frame.pts = index
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    (image,) = extract_thumbnails(path, out_dir=tmp_path / "t", every_s=5.0, width=320)
    assert (image.width, image.height) == (320, 176)
    with av.open(str(image.path)) as jpeg:
        rgb = next(jpeg.decode(video=0)).to_ndarray(format="rgb24")
    assert rgb.shape == (176, 320, 3)
    rows, cols = np.nonzero(rgb.min(axis=2) > 200)
    assert (cols.max() - cols.min() + 1) / (rows.max() - rows.min() + 1) == pytest.approx(1.0, abs=0.08)


def test_seeking_back_ends_on_a_coarse_time_base() -> None:
    """A stream whose ticks are 3 s long (a crafted file's time base): a seek that lands past the target's
    keyframe is retried further back, at least a tick each time, until the stream's start, instead of at
    the same place for ever (1 s rounded to 0 ticks); a cancel is heard between tries."""
    from types import SimpleNamespace

    from medialens_video.thumbnails import _Reader

    seeks: list[int] = []

    class Container:
        def seek(self, at: int, **_: object) -> None:
            seeks.append(at)
            assert len(seeks) < 50, seeks

        def demux(self, _stream: object) -> object:  # every seek lands on a keyframe after the target
            yield SimpleNamespace(pts=10, dts=10, is_keyframe=True, size=1)

    reports: list[tuple[float, str]] = []
    stream = SimpleNamespace(time_base=Fraction(3))
    reader = _Reader(Container(), stream, guard=None, report=lambda *note: reports.append(note), start=0)  # type: ignore[arg-type]
    reader._seek_keyframe(5)
    assert reader.head.pts == 10  # from the start: nothing earlier to take
    assert (seeks[0], seeks[-1] < 0) == (5, True)
    assert seeks == [5, 4, 3, 1, -16]  # back 1, 2, 4 ticks, then from before the start
    assert len(reports) == len(seeks)


@pytest.mark.parametrize(
    ("container", "codec", "expected"),
    [
        (Fraction(64, 45), Fraction(1), Fraction(64, 45)),  # the container's (-aspect on a copy) wins
        (None, Fraction(16, 11), Fraction(16, 11)),
        (Fraction(0), Fraction(4, 3), Fraction(4, 3)),  # 0: unknown
        (Fraction(1, 255), None, Fraction(1)),  # broken: square (it made a 320 x 45900 JPEG)
        (None, Fraction(65535), Fraction(1)),
    ],
)
def test_the_pixel_aspect_is_the_containers_then_the_codecs_within_reason(
    container: Fraction | None, codec: Fraction | None, expected: Fraction
) -> None:
    """As FFmpeg guesses it: the container's sample aspect ratio first, then the codec's; one past 1/4..4
    is a broken header, and the pixels are taken as square."""
    from types import SimpleNamespace

    from medialens_video.frames import pixel_aspect

    stream = SimpleNamespace(
        sample_aspect_ratio=container, codec_context=SimpleNamespace(sample_aspect_ratio=codec)
    )
    assert pixel_aspect(stream) == expected


def _mpeg4_avi(path: Path, *, b_frames: int) -> None:
    """4 s at 25 fps of MPEG-4 part 2 in AVI (DivX/Xvid-style), with `b_frames` between references."""
    rng = np.random.default_rng(4)
    with av.open(str(path), "w", format="avi") as out:
        stream = out.add_stream("mpeg4", rate=25)
        stream.width, stream.height, stream.pix_fmt = 160, 96, "yuv420p"
        stream.codec_context.max_b_frames = b_frames
        stream.codec_context.gop_size = 50
        for _ in range(100):
            picture = rng.integers(0, 255, (96, 160, 3), dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(picture, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


@pytest.mark.parametrize("b_frames", [0, 2])
def test_thumbnails_of_an_avi_whose_first_frame_is_shown_late(tmp_path: Path, b_frames: int) -> None:
    """An MPEG-4 AVI with B-frames shows its first frame a tick after the stream's start, and AVI's demuxer
    refuses a seek before its index (EPERM): every thumbnails job of such a file ended INTERNAL_ERROR."""
    path = tmp_path / "divx.avi"
    _mpeg4_avi(path, b_frames=b_frames)
    for asked in ({"count": 4}, {"every_s": 1.0}):
        images = extract_thumbnails(path, out_dir=tmp_path / "thumbs", width=64, **asked)
        assert len(images) == 4, asked
        times = [image.t_s for image in images]
        assert times == sorted(times), times
        assert 0.0 <= times[0] <= times[-1] < 4.0, times
        for image in images:
            with av.open(str(image.path)) as jpeg:
                assert next(jpeg.decode(video=0)).width == 64


def test_a_very_tall_picture_gives_a_thumbnail_no_taller_than_the_widest_asked(tmp_path: Path) -> None:
    """A 16x1000 picture at width 320 would be 320x20000, and at 3840 a height the scaler refused: the
    thumbnail fits in THUMBNAIL_HEIGHT_MAX instead, narrower than asked, its size given as made."""
    path = tmp_path / "tall.mp4"
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 16, 1000, "yuv420p"
        for level in (40, 120, 200):
            picture = np.full((1000, 16, 3), level, dtype=np.uint8)
            out.mux(stream.encode(av.VideoFrame.from_ndarray(picture, format="rgb24")))
        out.mux(stream.encode(None))
    for width in (320, 3840):
        [image] = extract_thumbnails(path, out_dir=tmp_path / f"w{width}", count=1, width=width)
        assert (image.width, image.height) == (60, 3750), (width, image)  # the aspect kept, even sides
        with av.open(str(image.path)) as jpeg:
            decoded = next(jpeg.decode(video=0))
        assert (decoded.width, decoded.height) == (60, 3750)


def test_a_time_in_a_hole_of_the_video_takes_the_nearer_frame(tmp_path: Path) -> None:
    """An MPEG-TS whose frames of 9.0-11.96 s were lost (a broadcast's dropout; the times after it kept):
    a thumbnail at 9 or 10 s is the last frame before the hole (8.96 s, shown until the next), at 11 s
    the first after it (12.0 s), each the nearer. Every one of them took the frame after the hole."""
    path = tmp_path / "dropout.ts"
    with av.open(str(path), "w", format="mpegts") as container:
        stream = container.add_stream("libx264", rate=25, options={"g": "25"})
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for index in [*range(0, 225), *range(300, 500)]:
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), index % 250, np.uint8), format="rgb24")
            frame.pts, frame.time_base = index, Fraction(1, 25)
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    images = extract_thumbnails(path, out_dir=tmp_path / "thumbs", every_s=1.0, width=64)
    assert [round(image.t_s, 2) for image in images][7:14] == [7.0, 8.0, 8.96, 8.96, 12.0, 12.0, 13.0]
