"""Sample media and tables with known ground truth, for the unit tests and the demo.

Every generator writes exactly one file, the path it is given, and nothing else. What a generator puts
in the file is fully determined by its arguments, so a test can assert exact values:

* `make_video` — an MP4 (or any container PyAV infers from the suffix) of `round(duration_s * fps)`
  frames in `segments` solid-colour segments (or segments starting at the irregular times `cuts_s`),
  each with a small white square moving across it — or, with `texture`, a distinct panning texture —
  optionally a black and a frozen stretch, and optionally a sine-tone audio track. The container records
  the frame count and duration.
* `make_numbered_video` — frames that each show their own number (`frame_number` reads it back from a
  picture or a thumbnail), in any container PyAV writes (MPEG-TS, MPEG-PS, Matroska, WebM, piped
  Matroska), with keyframes exactly where asked, a late start, audio that outlasts the video, or a rate
  that slows down midway; it returns each frame's time.
* `make_audio` — a sine tone at a known frequency and peak level; the codec follows the suffix.
* `make_csv` — a table of integers, floats (with nulls), strings and dates; returns its statistics.
* `truncate` and `corrupt` — damaged copies of a file. Which damage the probes (open + decode the
  first frame) notice:

  ======================================  ===========================  ==========================
  damage                                  MP4 (`make_video`)           WAV (`make_audio`)
  ======================================  ===========================  ==========================
  `truncate` (any fraction < 1)           cannot open: decode error    opens; shorter duration
  `corrupt()` (middle 25-75 %)            opens and decodes: no error  opens and decodes: no error
  `corrupt(start_fraction=0.0)`           first frame: decode error    opens (samples are noise)
  `corrupt(start_fraction=0.0,            —                            cannot open: decode error
  keep_head_bytes=12)`
  ======================================  ===========================  ==========================

  The MP4 keeps its `moov` index at the end (PyAV does not move it to the front), so any cut loses
  it. PCM has no structure beyond its 78-byte header, so garbage in the samples is just noise.

Generation is fast (well under a second for the defaults) and uses only PyAV's bundled FFmpeg, which
ships libx264, mpeg4, aac, libmp3lame, flac and pcm_s16le encoders.
"""

from __future__ import annotations

import csv
import os
import random
import statistics
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import date, timedelta
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
import numpy.typing as npt
from av.container import OutputContainer

#: Audio codec chosen for each file suffix by `make_audio`.
AUDIO_CODECS: dict[str, str] = {
    ".wav": "pcm_s16le",
    ".flac": "flac",
    ".mp3": "libmp3lame",
    ".m4a": "aac",
}

#: RGB colours of the video segments, in order (repeated when there are more segments).
SEGMENT_COLOURS: tuple[tuple[int, int, int], ...] = (
    (200, 30, 30),
    (30, 160, 40),
    (30, 60, 200),
    (220, 200, 40),
    (160, 40, 180),
    (40, 190, 190),
)

#: Muxer `make_numbered_video` uses for each file suffix, and the codec of its tone where AAC does not fit.
_MUXERS = {
    ".mkv": "matroska",
    ".webm": "webm",
    ".ts": "mpegts",
    ".mpg": "mpeg",
    ".mp4": "mp4",
    ".avi": "avi",
    ".wmv": "asf",
}
_TONE_CODECS = {"webm": "libopus", "mpeg": "mp2", "asf": "wmav2"}

_LAYOUTS = {1: "mono", 2: "stereo", 3: "2.1", 4: "quad", 5: "5.0", 6: "5.1", 8: "7.1"}
_CSV_CATEGORIES = ("alpha", "beta", "gamma", "delta")
_CSV_FIRST_DAY = date(2024, 1, 1)


def segment_starts(frame_count: int, segments: int) -> list[int]:
    """The first frame index of each colour segment `make_video` writes (the known scene cuts)."""
    segments = max(1, min(segments, frame_count))
    return [round(k * frame_count / segments) for k in range(segments)]


def cut_frames(frame_count: int, fps: float, cuts_s: Sequence[float]) -> list[int]:
    """The first frame index of each segment when segments start at the times `cuts_s` (plus frame 0)."""
    starts = {0} | {round(t * fps) for t in cuts_s}
    return sorted(start for start in starts if 0 <= start < frame_count)


@contextmanager
def scheduling_kept() -> Iterator[None]:
    """Put the calling thread's scheduling back as it was once the encoding inside is done.

    SVT-AV1 makes the thread that opens it a real-time one (SCHED_FIFO at priority 99) wherever it may, as
    root in CI, and every thread and process that thread starts later inherits that: in the test process,
    two DuckDB lanes started after an AV1 encode held both cores, and the watchdog thread beside them, as
    real-time as they were and so never preempting them, ran its cancel 10-17 s late. The video generators
    here encode inside this; a test that encodes video for itself wraps it so too (the suite fails a test
    that leaves its thread's scheduling changed: `tests/fixtures/scheduling.py`). Where Python has no
    scheduling calls (macOS), it does nothing.
    """
    if not hasattr(os, "sched_getscheduler"):
        yield
        return
    policy, param = os.sched_getscheduler(0), os.sched_getparam(0)
    try:
        yield
    finally:
        os.sched_setscheduler(0, policy, param)


def make_video(
    path: Path,
    *,
    duration_s: float = 2.0,
    fps: int = 25,
    width: int = 320,
    height: int = 240,
    codec: str = "libx264",
    pix_fmt: str = "yuv420p",
    segments: int = 4,
    rotation: int = 0,
    vfr: bool = False,
    with_audio: bool = False,
    audio_sample_rate: int = 48000,
    audio_channels: int = 2,
    audio_codec: str = "aac",
    cuts_s: Sequence[float] | None = None,
    texture: bool = False,
    black_s: tuple[float, float] | None = None,
    frozen_s: tuple[float, float] | None = None,
    keyint: int | None = None,
    grain: int = 0,
    x264_params: str | None = None,
    pixel_aspect: Fraction | None = None,
) -> None:
    """Write a constant-frame-rate video of exactly `round(duration_s * fps)` frames to `path`.

    The frames fall into `segments` solid-colour segments (`SEGMENT_COLOURS`, starting at
    `segment_starts(...)`), each with a white square moving left to right so consecutive frames differ.
    `rotation` is the clockwise display rotation (0, 90, 180 or 270) stored as the stream's display
    matrix — the pixels themselves are not rotated; `pixel_aspect` is the bitstream's sample aspect ratio
    (the pixels' width to height). With `vfr`, frames from the middle on each last
    three frame intervals, so the stream stays nominally `fps` but its average rate is well below it
    (the frame count is unchanged; the clip lasts about twice as long). With `with_audio`, a 1 kHz sine
    at -23 dBFS lasting `frame_count / fps` seconds is muxed alongside with `audio_codec`.
    The container format follows the suffix (`.mp4`, `.mkv`, `.mov`, ...).

    `cuts_s` replaces `segments` with segments starting at these times (frames `cut_frames(...)`).
    With `texture`, each segment is its own random texture tinted with its colour and panning a few
    pixels per frame (content that moves like footage, for detectors and benchmarks) instead of the flat
    colour and square. Frames from `black_s[0]` to `black_s[1]` (seconds, end excluded) are black (RGB 0);
    frames from `frozen_s[0]` to `frozen_s[1]` repeat the frame at `frozen_s[0]`. `keyint` caps the H.264
    keyframe interval (x264's default is 250 frames). `grain` adds film-grain-like noise of up to that
    many levels, different on every frame (so the bit rate is closer to camera footage's).
    `x264_params` go to libx264 as they are (e.g. `"bframes=3:b-adapt=0:scenecut=0"` for a fixed
    picture-type pattern whatever the content, so a test can put a cut on a B-frame).
    """
    frame_count = round(duration_s * fps)
    if frame_count < 1:
        raise ValueError("a video needs at least one frame")
    if width % 2 or height % 2:
        raise ValueError("width and height must be even for 4:2:0 chroma subsampling")
    if rotation % 90:
        raise ValueError("rotation must be a multiple of 90 degrees")
    starts = (
        cut_frames(frame_count, fps, cuts_s) if cuts_s is not None else segment_starts(frame_count, segments)
    )
    black = _frame_span(black_s, fps)
    frozen = _frame_span(frozen_s, fps)
    textures = _Textures(width, height) if texture else None
    noise = _grain_bank(width, height, grain) if grain else None
    half = frame_count // 2
    with scheduling_kept(), av.open(str(path), mode="w") as container:
        video = container.add_stream(codec, rate=fps)
        if not isinstance(video, av.VideoStream):
            raise TypeError(f"{codec!r} is not a video codec")
        video.width = width
        video.height = height
        video.pix_fmt = pix_fmt
        if codec in ("libx264", "h264"):
            video.options = {
                "preset": "veryfast",
                # One encoding thread: with x264's automatic threads the same call wrote different streams
                # from run to run on a busy machine (the first keyframe 4,843 or 4,848 bytes), and a test's
                # truth must not depend on the load (`threads` in `x264_params` does not hold: FFmpeg sets
                # x264's from this option).
                "threads": "1",
                **({"g": str(keyint)} if keyint else {}),
                **({"x264-params": x264_params} if x264_params else {}),
            }
        video.codec_context.sample_aspect_ratio = pixel_aspect or Fraction(0, 1)  # 0:1, none stated
        if rotation % 360:
            # PyAV's degrees are counter-clockwise; ours (like the old `rotate` tag) are clockwise.
            video.set_display_rotation(-float(rotation % 360))
        audio = None
        if with_audio:
            audio = _add_audio_stream(container, audio_codec, audio_sample_rate)
            audio.layout = _layout(audio_channels)
        for index in range(frame_count):
            shown = frozen[0] if frozen[0] <= index < frozen[1] else index
            if black[0] <= index < black[1]:
                image = np.zeros((height, width, 3), dtype=np.uint8)
            else:
                image = _picture(shown, starts, textures, width, height, frame_count)
                if noise is not None:
                    grained = image.astype(np.int16) + noise[(shown * 7) % len(noise)]
                    image = np.clip(grained, 0, 255).astype(np.uint8)
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = half + 3 * (index - half) if vfr and index > half else index
            frame.time_base = Fraction(1, fps)
            container.mux(video.encode(frame))
        container.mux(video.encode(None))
        if audio is not None:
            _encode_sine(
                container,
                audio,
                total_samples=round(frame_count / fps * audio_sample_rate),
                sample_rate=audio_sample_rate,
                channels=audio_channels,
                freq_hz=1000.0,
                level_dbfs=-23.0,
            )


def make_numbered_video(
    path: Path,
    *,
    frame_count: int,
    fps: int = 25,
    codec: str = "libx264",
    container_format: str | None = None,
    keyint: int = 250,
    start_s: float = 0.0,
    audio_s: float | None = None,
    slow_from: int | None = None,
    piped: bool = False,
    width: int = 320,
    height: int = 240,
) -> list[float]:
    """Write `frame_count` frames to `path`, each showing its own number (`frame_number` reads it back), and
    return each frame's time in seconds from the first frame's.

    `container_format` names the muxer when the suffix does not (`"mpegts"`, `"mpeg"` for MPEG-PS).
    Keyframes fall exactly every `keyint` frames from frame 0, none in between (libx264 without scene-cut
    keyframes, mpeg2video, libvpx and libvpx-vp9). The video starts `start_s` seconds into the file (its
    timestamps are offset by it; a multiple of the frame interval). `audio_s` adds a 1 kHz tone from 0 to
    that time (AAC; MP2 in MPEG-PS, Opus in WebM, WMA in ASF), so audio may outlast the video or start
    before it.
    Frames from `slow_from` on last three frame intervals instead of one: a rate that changes midway,
    which Matroska states nowhere (its default frame duration stays `1/fps`). `piped` writes through an
    object that cannot seek, as `ffmpeg ... -f matroska - > file` does: the file has no duration and no
    index.
    """
    if frame_count < 1 or frame_count >= 2**NUMBER_BITS:
        raise ValueError(f"frame_count must lie between 1 and {2**NUMBER_BITS - 1}")
    muxer = container_format or _MUXERS[Path(path).suffix.lower()]
    offset = round(start_s * fps)
    ticks = [
        index if slow_from is None or index <= slow_from else slow_from + 3 * (index - slow_from)
        for index in range(frame_count)
    ]
    with scheduling_kept(), Path(path).open("wb") as sink:
        target: Any = _Pipe(sink) if piped else sink
        with av.open(target, mode="w", format=muxer) as container:
            video = container.add_stream(codec, rate=fps)
            if not isinstance(video, av.VideoStream):
                raise TypeError(f"{codec!r} is not a video codec")
            video.width, video.height, video.pix_fmt = width, height, "yuv420p"
            video.options = _exact_keyframes(codec, keyint)
            audio = None
            if audio_s is not None:  # every stream before the first packet: the header lists them
                audio = _add_audio_stream(container, _TONE_CODECS.get(muxer, "aac"), 48000)
                audio.layout = "stereo"
            for index, tick in enumerate(ticks):
                frame = av.VideoFrame.from_ndarray(numbered_picture(index, width, height), format="rgb24")
                frame.pts, frame.time_base = offset + tick, Fraction(1, fps)
                container.mux(video.encode(frame))
            container.mux(video.encode(None))
            if audio is not None and audio_s is not None:
                _encode_sine(
                    container,
                    audio,
                    total_samples=round(audio_s * 48000),
                    sample_rate=48000,
                    channels=2,
                    freq_hz=1000.0,
                    level_dbfs=-23.0,
                )
    return [tick / fps for tick in ticks]


#: Bits of the frame number `numbered_picture` draws: stripes across the top half, most significant first.
NUMBER_BITS = 10


def numbered_picture(index: int, width: int, height: int) -> npt.NDArray[np.uint8]:
    """An RGB frame whose top half shows `index` in `NUMBER_BITS` black (0) and white (1) vertical stripes
    over mid-grey, wide enough to read back after scaling and JPEG (`frame_number`)."""
    image = np.full((height, width, 3), 128, dtype=np.uint8)
    for bit in range(NUMBER_BITS):
        left, right = bit * width // NUMBER_BITS, (bit + 1) * width // NUMBER_BITS
        image[: height // 2, left:right] = 255 if index >> (NUMBER_BITS - 1 - bit) & 1 else 0
    return image


def frame_number(rgb: npt.NDArray[np.uint8]) -> int:
    """The number `numbered_picture` drew into an RGB picture of any size (a thumbnail of the frame)."""
    height, width = rgb.shape[:2]
    number = 0
    for bit in range(NUMBER_BITS):
        centre = (2 * bit + 1) * width // (2 * NUMBER_BITS)
        patch = rgb[height // 8 : 3 * height // 8, centre - width // 80 : centre + width // 80 + 1]
        number = number << 1 | int(patch.mean() > 128)
    return number


def _exact_keyframes(codec: str, keyint: int) -> dict[str, object]:
    """Encoder options that put a keyframe on every `keyint`-th frame and nowhere else."""
    if codec in ("libx264", "h264"):
        return {"preset": "veryfast", "g": str(keyint), "x264-params": f"keyint_min={keyint}:scenecut=0"}
    if codec in ("libvpx", "libvpx-vp9"):
        return {"g": str(keyint), "keyint_min": str(keyint), "deadline": "realtime", "cpu-used": "8"}
    return {"g": str(keyint), "sc_threshold": "1000000000"}


class _Pipe:
    """A file PyAV can only write to (no `seek`), as a pipe is: the muxer cannot go back to fill in a
    duration or an index."""

    def __init__(self, sink: Any) -> None:
        self._sink = sink

    def write(self, data: bytes) -> int:
        return int(self._sink.write(data))


def _picture(
    index: int, starts: list[int], textures: _Textures | None, width: int, height: int, frame_count: int
) -> npt.NDArray[np.uint8]:
    """Frame `index` of `make_video`: its segment's texture, or its colour with the moving square."""
    segment = sum(1 for start in starts if start <= index) - 1
    if textures is not None:
        return textures.frame(segment, index - starts[segment])
    image = np.empty((height, width, 3), dtype=np.uint8)
    image[:] = SEGMENT_COLOURS[segment % len(SEGMENT_COLOURS)]
    square = max(4, min(width, height) // 8)
    x = (index * (width - square)) // max(1, frame_count - 1)
    y = (height - square) // 2
    image[y : y + square, x : x + square] = 255
    return image


def _grain_bank(width: int, height: int, grain: int) -> list[npt.NDArray[np.int16]]:
    """Sixteen fields of uniform noise in -grain..grain, cycled so no frame repeats its neighbours'."""
    rng = np.random.default_rng(0)
    return [rng.integers(-grain, grain + 1, (height, width, 1), dtype=np.int16) for _ in range(16)]


def _frame_span(span_s: tuple[float, float] | None, fps: float) -> tuple[int, int]:
    if span_s is None:
        return (-1, -1)
    return (round(span_s[0] * fps), round(span_s[1] * fps))


class _Textures:
    """Per-segment panning textures: blocky random noise, smoothed, tinted with the segment's colour."""

    def __init__(self, width: int, height: int) -> None:
        self.width, self.height = width, height
        self._segment = -1
        self._texture = np.zeros((1, 1, 3), dtype=np.uint8)
        self._step = (0, 0)

    def frame(self, segment: int, offset: int) -> npt.NDArray[np.uint8]:
        if segment != self._segment:
            self._segment = segment
            rng = np.random.default_rng(segment)
            block = max(4, self.width // 40)
            cells = (self.height * 2 // block + 2, self.width * 2 // block + 2, 3)
            noise = rng.integers(0, 256, cells, dtype=np.uint8).repeat(block, 0).repeat(block, 1)
            tint = np.array(SEGMENT_COLOURS[segment % len(SEGMENT_COLOURS)], dtype=np.uint16)
            self._texture = ((noise.astype(np.uint16) + tint * 2) // 3).astype(np.uint8)
            self._step = (1 + segment % 2, 2 + segment % 3)
        rows, cols = self._texture.shape[0] - self.height, self._texture.shape[1] - self.width
        y = (offset * self._step[0]) % rows
        x = (offset * self._step[1]) % cols
        return np.ascontiguousarray(self._texture[y : y + self.height, x : x + self.width])


def make_audio_only(
    path: Path, *, container_format: str = "mp4", codec: str = "aac", options: dict[str, str] | None = None
) -> None:
    """One second of a 440 Hz tone at -20 dBFS, stereo, alone in a container made for video (MP4 by
    default; `mpegts`, `mpeg` with `mp2`, `webm`, `matroska`, `mov`), with no video stream; `options` are
    the muxer's (`{"movflags": "faststart"}` puts an MP4's track list first)."""
    with av.open(str(path), "w", format=container_format, options=options or {}) as container:
        stream = _add_audio_stream(container, codec, 48000)
        stream.layout = "stereo"
        _encode_sine(
            container,
            stream,
            total_samples=48000,
            sample_rate=48000,
            channels=2,
            freq_hz=440.0,
            level_dbfs=-20.0,
        )


def make_audio(
    path: Path,
    *,
    duration_s: float = 2.0,
    sample_rate: int = 48000,
    channels: int = 2,
    freq_hz: float = 1000.0,
    level_dbfs: float = -23.0,
) -> None:
    """Write `round(duration_s * sample_rate)` samples of a sine tone to `path`, the same on every channel.

    `level_dbfs` is the sine's peak level relative to full scale (its RMS is 3.01 dB lower).
    The codec follows the suffix (`AUDIO_CODECS`): `.wav` PCM s16le, `.flac` FLAC, `.mp3` MP3
    (libmp3lame, with a Xing/LAME header so the duration is exact), `.m4a` AAC. Raw ADTS `.aac` is left
    out: it has no index, so FFmpeg only estimates its duration from the bit rate. Lossy codecs add
    encoder delay and padding, so their decoded length may differ from the request by up to one codec
    frame (1024 AAC / 1152 MP3 samples).
    """
    suffix = Path(path).suffix.lower()
    codec = AUDIO_CODECS.get(suffix)
    if codec is None:
        raise ValueError(f"no audio codec for suffix {suffix!r}; use one of {sorted(AUDIO_CODECS)}")
    total = round(duration_s * sample_rate)
    if total < 1:
        raise ValueError("audio needs at least one sample")
    options = {"write_xing": "1"} if codec == "libmp3lame" else None
    with av.open(str(path), mode="w", options=options) as container:
        stream = _add_audio_stream(container, codec, sample_rate)
        stream.layout = _layout(channels)
        _encode_sine(
            container,
            stream,
            total_samples=total,
            sample_rate=sample_rate,
            channels=channels,
            freq_hz=freq_hz,
            level_dbfs=level_dbfs,
        )


def make_csv(path: Path, *, rows: int = 100, seed: int = 0) -> dict[str, Any]:
    """Write a CSV table of `rows` rows to `path` and return the statistics it is known to have.

    Columns: `id` (int, 1..rows), `quantity` (int, 0..1000), `price` (float with three decimals,
    `max(1, rows // 10)` empty cells when rows > 0), `category` (one of alpha/beta/gamma/delta) and
    `day` (ISO date in 2024). The returned dict holds `row_count`, `column_count`, `columns` (names in
    order) and `stats`: per column its `dtype` ("int", "float", "str", "date"), `null_count`,
    `distinct_count`, and `min`/`max` (plus `mean` for numbers, computed from the values as written;
    ISO strings for dates), and for `category` the `value_counts`.
    """
    rng = random.Random(seed)
    null_rows = set(rng.sample(range(rows), k=max(1, rows // 10))) if rows > 0 else set()
    ids = list(range(1, rows + 1))
    quantities = [rng.randint(0, 1000) for _ in range(rows)]
    prices: list[float | None] = [
        None if i in null_rows else round(rng.uniform(-50.0, 500.0), 3) for i in range(rows)
    ]
    categories = [rng.choice(_CSV_CATEGORIES) for _ in range(rows)]
    days = [_CSV_FIRST_DAY + timedelta(days=rng.randint(0, 365)) for _ in range(rows)]

    columns = ["id", "quantity", "price", "category", "day"]
    with Path(path).open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        for i in range(rows):
            price = prices[i]
            writer.writerow(
                [ids[i], quantities[i], "" if price is None else repr(price), categories[i], days[i]]
            )

    present_prices = [p for p in prices if p is not None]
    counts: dict[str, int] = {}
    for category in categories:
        counts[category] = counts.get(category, 0) + 1
    return {
        "row_count": rows,
        "column_count": len(columns),
        "columns": columns,
        "stats": {
            "id": _numeric_stats("int", ids, nulls=0),
            "quantity": _numeric_stats("int", quantities, nulls=0),
            "price": _numeric_stats("float", present_prices, nulls=rows - len(present_prices)),
            "category": {
                "dtype": "str",
                "null_count": 0,
                "distinct_count": len(counts),
                "min": min(categories, default=None),
                "max": max(categories, default=None),
                "value_counts": dict(sorted(counts.items(), key=lambda item: (-item[1], item[0]))),
            },
            "day": {
                "dtype": "date",
                "null_count": 0,
                "distinct_count": len(set(days)),
                "min": min(days).isoformat() if days else None,
                "max": max(days).isoformat() if days else None,
            },
        },
    }


def loop_video(src: Path, dst: Path, *, times: int) -> None:
    """Write `src`'s video stream `times` times over to `dst`, without re-encoding (a long clip, fast).

    Every repeat starts with the keyframe `src` starts with, so `dst` decodes to `times` copies of its
    frames, timed one after another.
    """
    with av.open(str(src)) as source, av.open(str(dst), mode="w") as target:
        video = source.streams.video[0]
        out = target.add_stream_from_template(video)
        packets = [p for p in source.demux(video) if p.size]
        span = max(p.pts + (p.duration or 0) for p in packets if p.pts is not None)
        for repeat in range(times):
            for packet in packets:
                shifted = av.Packet(bytes(packet))
                shifted.pts = None if packet.pts is None else packet.pts + repeat * span
                shifted.dts = None if packet.dts is None else packet.dts + repeat * span
                shifted.duration = packet.duration
                shifted.is_keyframe = packet.is_keyframe
                shifted.time_base = packet.time_base
                shifted.stream = out
                target.mux(shifted)


def faststart(src: Path, dst: Path) -> None:
    """`src`'s video stream (its audio stream, in a file without video) remuxed into `dst` with its `moov`
    index first, as MP4s made for streaming are; such a file cut short still opens (see `truncate`), and
    only the frames past its end are missing."""
    streaming = {"movflags": "faststart"}
    with av.open(str(src)) as source, av.open(str(dst), mode="w", options=streaming) as target:
        (kept,) = source.streams.video[:1] or source.streams.audio[:1]
        out = target.add_stream_from_template(kept)
        for packet in source.demux(kept):
            if packet.dts is None:
                continue  # the demuxer's flush packet
            packet.stream = out
            target.mux(packet)


def truncate(src: Path, dst: Path, *, keep_fraction: float = 0.5) -> None:
    """Copy the first `keep_fraction` of `src`'s bytes to `dst`, as an interrupted upload would.

    An MP4 from `make_video` keeps its `moov` index at the end, so any truncation loses it and PyAV
    cannot open the copy (the probes raise `MediaDecodeError`); one from `faststart` opens, its index
    listing frames the file no longer holds. A truncated WAV opens too, its header declaring more bytes
    than the file holds.
    """
    if not 0.0 <= keep_fraction <= 1.0:
        raise ValueError("keep_fraction must lie between 0 and 1")
    data = Path(src).read_bytes()
    Path(dst).write_bytes(data[: int(len(data) * keep_fraction)])


def corrupt(
    src: Path,
    dst: Path,
    *,
    start_fraction: float = 0.25,
    end_fraction: float = 0.75,
    keep_head_bytes: int = 128,
    seed: int = 0,
) -> None:
    """Copy `src` to `dst` with the bytes from `start_fraction` to `end_fraction` replaced by garbage.

    The first `keep_head_bytes` are always kept (the default covers the 48-byte MP4 head and the 78-byte
    WAV header PyAV writes), so the file still sniffs as what it was; the length is unchanged, and the
    garbage is the same for the same `seed`.
    With the defaults an MP4 from `make_video` still opens (its `moov` index is at the end) and its
    first frame still decodes: the damage only shows later, which a probe that decodes one frame does
    not see. With `start_fraction=0.0` the garbage reaches into the first video packet and decoding it
    fails (`MediaDecodeError`). A WAV decodes either way — every byte pattern is a valid sample — unless
    `keep_head_bytes` is small enough (e.g. 12) to garble its chunk headers: then it no longer opens
    (`MediaDecodeError`, since it still sniffs as audio).
    """
    if not 0.0 <= start_fraction <= end_fraction <= 1.0:
        raise ValueError("need 0 <= start_fraction <= end_fraction <= 1")
    data = bytearray(Path(src).read_bytes())
    start = max(keep_head_bytes, int(len(data) * start_fraction))
    end = max(start, int(len(data) * end_fraction))
    data[start:end] = random.Random(seed).randbytes(end - start)
    Path(dst).write_bytes(bytes(data))


def _layout(channels: int) -> str:
    try:
        return _LAYOUTS[channels]
    except KeyError:
        raise ValueError(f"unsupported channel count {channels}; use one of {sorted(_LAYOUTS)}") from None


def _add_audio_stream(container: OutputContainer, codec: str, sample_rate: int) -> av.AudioStream:
    stream = container.add_stream(codec, rate=sample_rate)
    if not isinstance(stream, av.AudioStream):
        raise TypeError(f"{codec!r} is not an audio codec")
    if codec == "wmav2":
        stream.bit_rate = 128_000  # it has no default: opening it failed with EINVAL
    return stream


def _encode_sine(
    container: OutputContainer,
    stream: av.AudioStream,
    *,
    total_samples: int,
    sample_rate: int,
    channels: int,
    freq_hz: float,
    level_dbfs: float,
) -> None:
    """Encode `total_samples` of a sine into `stream` in 1024-sample frames and flush the encoder."""
    amplitude = 10.0 ** (level_dbfs / 20.0)
    layout = _layout(channels)
    chunk = 1024
    for offset in range(0, total_samples, chunk):
        count = min(chunk, total_samples - offset)
        samples = _sine(offset, count, sample_rate, freq_hz, amplitude)
        planes = np.ascontiguousarray(np.broadcast_to(samples, (channels, count)))
        frame = av.AudioFrame.from_ndarray(planes, format="fltp", layout=layout)
        frame.sample_rate = sample_rate
        frame.pts = offset
        frame.time_base = Fraction(1, sample_rate)
        container.mux(stream.encode(frame))
    container.mux(stream.encode(None))


def _sine(
    offset: int, count: int, sample_rate: int, freq_hz: float, amplitude: float
) -> npt.NDArray[np.float32]:
    t = np.arange(offset, offset + count, dtype=np.float64) / sample_rate
    return (amplitude * np.sin(2.0 * np.pi * freq_hz * t)).astype(np.float32)


def _numeric_stats(dtype: str, values: list[int] | list[float], *, nulls: int) -> dict[str, Any]:
    return {
        "dtype": dtype,
        "null_count": nulls,
        "distinct_count": len(set(values)),
        "min": min(values, default=None),
        "max": max(values, default=None),
        "mean": statistics.fmean(values) if values else None,
    }
