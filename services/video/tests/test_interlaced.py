"""Every video job on interlaced clips of known truth: H.264 coded interlaced (MBAFF, top field first) and
MPEG-2 (interlaced DCT and motion, bottom field first), in MP4, MPEG-TS, MPEG-PS and raw streams.

Each frame weaves two fields shown half a frame apart, each from its own instant of the scene (as an
interlaced camera takes them, chroma subsampled per field), so anything that moves combs the frame. The
scene: a panning texture over the top half, a white bar sweeping across a flat colour in the bottom half;
a cut on a frame boundary, a black stretch, a cut between the two fields of one frame (its first field from
one shot, its second from the next: a switch on a field), and a freeze (the picture stops, then moves on
from where it stopped, so its end is no cut).
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import numpy.typing as npt
import pytest

from medialens_video.probe import probe_video
from medialens_video.quality import detect_quality
from medialens_video.scenes import detect_scenes
from medialens_video.thumbnails import extract_thumbnails
from scripts.samples import SEGMENT_COLOURS

FPS = 25
WIDTH, HEIGHT = 320, 240
FRAMES = 200
#: The truth, in frames (a frame's first field is shown at its index, its second half a frame later).
CUT = 50
BLACK = (70, 95)
FIELD_CUT = 112.5
FROZEN = (125, 185)
#: Pixels the bar moves per frame: fields half a frame apart hold it 16 pixels apart.
BAR_SPEED = 32

#: (file name, encoder, whether the top field comes first, and the codec and frame count the probe gives:
#: none for a raw stream, which states none).
CLIPS = {
    "H.264 in MP4": ("clip.mp4", "libx264", True, "h264", FRAMES),
    "H.264 in MPEG-TS": ("clip.ts", "libx264", True, "h264", FRAMES),
    "raw H.264": ("clip.h264", "libx264", True, "h264", None),
    "MPEG-2 in MPEG-PS": ("clip.mpg", "mpeg2video", False, "mpeg2video", FRAMES),
    "raw MPEG-2": ("clip.m2v", "mpeg2video", False, "mpeg2video", None),
}
#: Encoder options: interlaced coding, and a quality high enough that a frozen picture decodes the same
#: from frame to frame (two B-frames keep MPEG-2's P-frames from refining it for a few frames).
OPTIONS = {
    "libx264": {"preset": "veryfast", "crf": "10", "x264-params": "interlaced=1:tff=1"},
    "mpeg2video": {"flags": "+ildct+ilme", "g": "12", "bf": "2", "b": "20M"},
}


def _texture(segment: int) -> npt.NDArray[np.uint8]:
    rng = np.random.default_rng(segment)
    cells = rng.integers(0, 256, (HEIGHT // 16 + 1, (WIDTH + 400) // 8, 3), dtype=np.uint8)
    tint = np.array(SEGMENT_COLOURS[segment % len(SEGMENT_COLOURS)], dtype=np.uint16)
    tinted = (cells.repeat(8, 0).repeat(8, 1).astype(np.uint16) + 2 * tint) // 3
    return tinted.astype(np.uint8)


_TEXTURES = [_texture(segment) for segment in range(3)]


def scene_at(t: float) -> npt.NDArray[np.uint8]:
    """The scene at `t` (frames, halves for second fields) as RGB."""
    if BLACK[0] <= t < BLACK[1]:
        return np.zeros((HEIGHT, WIDTH, 3), dtype=np.uint8)
    segment = (t >= CUT) + (t >= FIELD_CUT)
    moved = min(t, FROZEN[0]) + max(0.0, t - FROZEN[1])  # the scene's own time: it stops while frozen
    image = np.empty((HEIGHT, WIDTH, 3), dtype=np.uint8)
    shift = round(4 * moved) % 400
    image[: HEIGHT // 2] = _TEXTURES[segment][: HEIGHT // 2, shift : shift + WIDTH]
    image[HEIGHT // 2 :] = SEGMENT_COLOURS[segment]
    bar = round(BAR_SPEED * moved) % (WIDTH - 24)
    image[HEIGHT // 2 :, bar : bar + 24] = 255
    return image


def _field_planes(rgb: npt.NDArray[np.uint8]) -> list[npt.NDArray[np.uint8]]:
    """Y, U and V of a field (every other row of a picture), subsampled to 4:2:0 on its own."""
    height, width = rgb.shape[:2]
    yuv = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24").reformat(format="yuv420p")
    flat = yuv.to_ndarray()
    chroma = height // 4
    return [
        flat[:height],
        flat[height : height + chroma].reshape(height // 2, width // 2),
        flat[height + chroma :].reshape(height // 2, width // 2),
    ]


def weave(first: npt.NDArray[np.uint8], second: npt.NDArray[np.uint8], *, top_first: bool) -> av.VideoFrame:
    """A frame of two fields: the first shown taken from `first`, the other from `second`; each field's
    chroma rows are its own (4:2:0 interlaced), as a camera makes them."""
    chroma = (HEIGHT // 2, WIDTH // 2)
    planes = [np.empty((HEIGHT, WIDTH), np.uint8), np.empty(chroma, np.uint8), np.empty(chroma, np.uint8)]
    first_rows, second_rows = (0, 1) if top_first else (1, 0)
    for picture, rows in ((first, first_rows), (second, second_rows)):
        for plane, field in zip(planes, _field_planes(picture[rows::2]), strict=True):
            plane[rows::2] = field
    flat = np.concatenate([plane.ravel() for plane in planes]).reshape(HEIGHT * 3 // 2, WIDTH)
    return av.VideoFrame.from_ndarray(flat, format="yuv420p")


def interlaced_clip(path: Path, *, codec: str, top_first: bool) -> Path:
    """`FRAMES` frames of `scene_at`, coded interlaced by `codec`, in the container the suffix names."""
    formats = {".h264": "h264", ".m2v": "mpeg2video"}
    with av.open(str(path), mode="w", format=formats.get(path.suffix)) as container:
        stream = container.add_stream(codec, rate=FPS)
        if not isinstance(stream, av.VideoStream):
            raise TypeError(codec)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        stream.options = OPTIONS[codec]
        for index in range(FRAMES):
            frame = weave(scene_at(index), scene_at(index + 0.5), top_first=top_first)
            frame.pts, frame.time_base = index, Fraction(1, FPS)
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


@pytest.fixture(scope="module", params=sorted(CLIPS))
def clip(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    name, codec, top_first, _codec, _count = CLIPS[request.param]
    path = interlaced_clip(tmp_path_factory.mktemp("interlaced") / name, codec=codec, top_first=top_first)
    return path, request.param


def test_clips_are_interlaced(clip: tuple[Path, str]) -> None:
    """The clips below really are coded interlaced: every frame decodes flagged so."""
    path, _case = clip
    with av.open(str(path)) as container:
        flags = {frame.interlaced_frame for frame in container.decode(video=0)}
    assert flags == {True}


def test_probe(clip: tuple[Path, str]) -> None:
    """The frame rate is the frame's (25), not the field's, steady; the count is the frames'."""
    path, case = clip
    _name, _encoder, top_first, codec, count = CLIPS[case]
    video = probe_video(path).video
    assert (video.codec, video.width, video.height, video.pix_fmt) == (codec, WIDTH, HEIGHT, "yuv420p")
    assert (video.fps, video.avg_fps, video.is_vfr) == (25.0, 25.0, False)
    assert video.frame_count == count
    assert video.field_order == ("tt" if top_first else "bb")  # as ffprobe names them


def test_quality(clip: tuple[Path, str]) -> None:
    """The black stretch and the freeze (2.4 s) are found within 0.1 s, and nothing else."""
    path, _case = clip
    analysis = detect_quality(path)
    assert analysis.black == [pytest.approx((BLACK[0] / FPS, BLACK[1] / FPS), abs=0.1)]
    assert analysis.frozen == [pytest.approx((FROZEN[0] / FPS, FROZEN[1] / FPS), abs=0.1)]
    assert analysis.frames_analyzed == FRAMES


def test_scenes(clip: tuple[Path, str], tmp_path: Path) -> None:
    """The cuts are found at their frames, the one between two fields within one frame of it (compared
    whole, each of the two frames it spans changed half as much, and it was found in neither), the
    freeze's end is no cut, and every scene has a thumbnail."""
    path, _case = clip
    analysis = detect_scenes(path, thumbnail_dir=tmp_path)
    starts = [scene.start_frame for scene in analysis.scenes]
    assert starts[:4] == [0, CUT, *BLACK]
    assert len(starts) == 5
    assert abs(starts[4] - FIELD_CUT) <= 1
    assert [scene.start_s for scene in analysis.scenes] == pytest.approx([f / FPS for f in starts])
    assert analysis.frames_analyzed == FRAMES
    assert all(scene.thumbnail is not None for scene in analysis.scenes)


def _comb(path: Path) -> float:
    """How much a JPEG's bottom half (the bar's) differs between neighbouring rows, beyond what a smooth
    picture does: the mean of |2 row - the row above - the row below| of its luma."""
    with av.open(str(path)) as jpeg:
        luma = next(jpeg.decode(video=0)).to_ndarray(format="gray").astype(np.int32)
    bottom = luma[luma.shape[0] // 2 + 4 : -4]
    return float(np.abs(2 * bottom[1:-1] - bottom[:-2] - bottom[2:]).mean())


def test_thumbnails_are_at_their_times_and_not_combed(clip: tuple[Path, str], tmp_path: Path) -> None:
    """Five thumbnails come in time order, each within a frame of its time (MPEG-PS states a duration a
    frame or two short), from one field: woven, the bar's two places half a frame apart combed them."""
    path, _case = clip
    images = extract_thumbnails(path, out_dir=tmp_path, count=5)
    times = [image.t_s for image in images]
    assert times == sorted(times)
    assert times == pytest.approx([0.8, 2.4, 4.0, 5.6, 7.2], abs=1.5 / FPS)
    assert max(_comb(image.path) for image in images) < 4.0
