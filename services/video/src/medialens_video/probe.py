"""`video.probe`: container and stream metadata of a video, read without decoding it but for its first frame.

Everything comes from the container's and streams' metadata; only the first video frame is decoded, to
catch damaged media cheaply (and to read the display rotation FFmpeg attaches to decoded frames).

`frame_count` is the count the container states (MP4, AVI; less the frames an MP4's edit list hides) or,
where it states none (Matroska, WebM, MPEG-TS), the video stream's own span (`frames.first_timestamp` to
`frames.stated_end`: never the container's duration, which covers every stream from 0) times its average
rate, vouched for by the timestamps of a few packets at its start, middle and end, which must be one frame
interval apart. A variable-rate stream has no count short of reading every packet, so it gets null, as
does a stream whose end the file does not state (a piped Matroska, a raw H.264 or MPEG-2 stream: ffprobe
gives neither a count nor a duration without reading every packet, which a probe does not).

An untimed stream (raw H.264 or HEVC: no timestamps, `frames.untimed`) is timed at its nominal rate, the
one its headers state, as ffmpeg times it: its average rate is that one, not FFmpeg's, which is its raw
demuxer's default (a 30 frames/s stream read 25 on average, and variable-rate).
"""

from __future__ import annotations

import statistics
from fractions import Fraction
from itertools import islice, pairwise
from pathlib import Path
from typing import Any

import av.error

from medialens_shared.contracts import (
    ProbeAudioStream,
    ProbeFormat,
    ProbeVideoStream,
    VideoProbeResult,
)
from medialens_shared.demux import demuxed
from medialens_shared.errors import MediaDecodeError
from medialens_shared.sniff import ffmpeg_reason
from medialens_video.frames import (
    RAW_VIDEO_FORMATS,
    average_rate,
    avi_frame_ticks,
    display_rotation,
    first_timestamp,
    open_video,
    pixel_aspect,
    stated_duration_s,
    stated_end,
    untimed,
)

#: Relative difference between the nominal and average frame rates above which a stream counts as VFR.
VFR_TOLERANCE = 0.01
#: Packets read at each of the places `_steady_rate` looks at.
RATE_SAMPLES = 12
#: FFmpeg's field orders (`AVFieldOrder`, PyAV's `field_order` number) by ffprobe's names; 0, unknown, is
#: none of them.
FIELD_ORDERS = {1: "progressive", 2: "tt", 3: "bb", 4: "tb", 5: "bt"}


def probe_video(path: Path) -> VideoProbeResult:
    """Describe the container, the video stream the jobs read (`frames.open_video`) and every decodable
    audio stream of the file at `path`.

    Raises `UnsupportedInput` when the file is not a video (empty, a table, audio only, ...),
    `MediaDecodeError` when it is a damaged video (cannot be opened, or its first frame does not decode)
    and `InputNotFound` when there is no file.
    """
    path = Path(path)
    with open_video(path, whole=True, with_audio=True) as (container, video):
        size_bytes = path.stat().st_size
        format_name = container.format.name
        first_frame, hidden = _decode_first_frame(container, video)

        duration_s = stated_duration_s(container)
        fps = _rate(video.guessed_rate)
        avg_fps = _rate(average_rate(container, video))
        frame_count, steady = _frame_count(container, video, hidden=hidden)
        if (step := avi_frame_ticks(container, video)) > 1:  # its header counts ticks, not frames
            frame_count = frame_count and max(1, frame_count // step)
            avg_fps = avg_fps and avg_fps / step
        if steady is False:  # FFmpeg's average is the first frames' rate: not the stream's
            avg_fps = None
        elif video.start_time is None and untimed(container, video):  # a raw stream: FFmpeg's average
            # is then its demuxer's default, 25 frames/s
            avg_fps = fps
        codec_context = video.codec_context
        aspect = pixel_aspect(video)
        return VideoProbeResult(
            format=ProbeFormat(
                name=format_name,
                duration_s=duration_s,
                size_bytes=size_bytes,
                # A raw stream's is a header's placeholder (a raw MPEG-1 stream read 104,857,717 b/s).
                bit_rate=None if format_name in RAW_VIDEO_FORMATS else container.bit_rate or None,
            ),
            video=ProbeVideoStream(
                codec=_codec_name(video),
                width=codec_context.width,
                height=codec_context.height,
                fps=fps,
                avg_fps=avg_fps,
                is_vfr=steady is False or bool(fps and avg_fps and abs(fps - avg_fps) > VFR_TOLERANCE * fps),
                frame_count=frame_count,
                pix_fmt=codec_context.pix_fmt,
                rotation=_rotation(first_frame, video.metadata),
                sample_aspect_ratio=_ratio(aspect),
                display_aspect_ratio=_ratio(codec_context.width * aspect / max(codec_context.height, 1)),
                field_order=FIELD_ORDERS.get(codec_context.field_order),
            ),
            audio=[
                ProbeAudioStream(
                    codec=_codec_name(stream),
                    sample_rate=stream.codec_context.sample_rate,
                    channels=stream.codec_context.channels,
                    duration_s=_stream_seconds(container, stream)
                    or _read_seconds(container, stream)
                    or duration_s,
                )
                for stream in container.streams.audio
                if stream.codec_context is not None  # a codec FFmpeg has no decoder for: nothing to read
            ],
        )


def _decode_first_frame(container: Any, stream: Any) -> tuple[Any, int]:
    """The first decoded frame of `stream`, and the packets before it that an edit list hides (flagged
    discard: decoded, never shown); `MediaDecodeError` when there is none.

    Those packets are all read by then: a frame comes out of the decoder in display order, after every
    frame shown before it, hidden or not."""
    hidden = 0
    try:
        with demuxed(container, stream) as packets:
            for packet in packets:
                hidden += 1 if packet.is_discard and packet.size else 0
                for frame in stream.codec_context.decode(packet):
                    return frame, hidden
    except av.error.FFmpegError as exc:
        raise MediaDecodeError(
            f"The video stream cannot be decoded; the file is probably damaged ({ffmpeg_reason(exc)})."
        ) from exc
    raise MediaDecodeError("The video stream holds no decodable frame; the file is probably damaged.")


def _frame_count(container: Any, stream: Any, *, hidden: int = 0) -> tuple[int | None, bool | None]:
    """The frame count the container states, less the `hidden` frames an edit list does not show (an MP4
    cut without re-encoding starts at the keyframe before the cut, and states every frame from it: one cut
    1.32 s into a 25 frames/s clip counted 200 frames where 167 are shown, and analysed), else the stream's
    span (`frames.first_timestamp` to
    `frames.stated_end`) times its average rate when the rate is steady (`_steady_rate`), else None; and
    whether the rate was found steady (None when not looked at or not told). A rate found unsteady makes
    the stream variable-rate whatever FFmpeg's average says: in Matroska that average is the first frames'
    (a clip slowing halfway read 25 fps and not VFR)."""
    if stream.frames:
        return max(1, int(stream.frames) - hidden), None
    end = stated_end(container, stream)
    rate = average_rate(container, stream)
    if end is None or not rate:
        return None, None
    start = first_timestamp(container, stream)
    if end <= start:
        return None, None
    interval = float(1 / (rate * Fraction(stream.time_base)))
    steady = _steady_rate(container, stream, start=start, end=end, interval=interval)
    if not steady:
        return None, steady
    return max(1, round(float((end - start) * stream.time_base * rate))), steady


def _steady_rate(container: Any, stream: Any, *, start: int, end: int, interval: float) -> bool | None:
    """Whether frames are `interval` ticks apart where `RATE_SAMPLES` consecutive packets are read at the
    stream's start, middle and end (seeking to any frame, so nothing is decoded): the median gap of their
    sorted timestamps (decode order is not display order), within a tick or `VFR_TOLERANCE`. None when
    the file cannot be sought.

    The end's are the last packets of those read from `_END_LOOK` times as far back: in an MPEG program
    stream, the first packets after a seek close to the end came with timestamps half a frame off the
    stream's (FFmpeg's demuxer), so a DVD-like file at a steady 25 frames/s was variable-rate, without an
    average rate or a frame count."""
    back = round(_END_LOOK * RATE_SAMPLES * interval)
    places = (
        (start, RATE_SAMPLES),
        ((start + end) // 2, RATE_SAMPLES),
        (max(start, end - back), 2 * _END_LOOK * RATE_SAMPLES),
    )
    for at, count in places:
        try:
            container.seek(at, stream=stream, backward=True, any_frame=True)
        except av.error.FFmpegError:
            return None
        with demuxed(container, stream) as packets:
            read = list(islice(packets, count))
        stamps = sorted({p.pts for p in read[-RATE_SAMPLES:] if p.pts is not None})
        gaps = [b - a for a, b in pairwise(stamps)]
        if gaps and abs(statistics.median(gaps) - interval) > max(1.0, VFR_TOLERANCE * interval):
            return False
    return True


#: How many times `RATE_SAMPLES` frames before the end `_steady_rate` seeks to read the end's.
_END_LOOK = 3


def _codec_name(stream: Any) -> str:
    """The codec's canonical name (`h264`, `mp3`), not the decoder's (`mp3float`)."""
    return str(stream.codec_context.codec.canonical_name)


def _rotation(frame: Any, metadata: dict[str, str]) -> int:
    """Clockwise display rotation (0/90/180/270), as the legacy `rotate` tag and phones state it.

    The display matrix FFmpeg attaches to every decoded frame first (`frames.display_rotation`), else
    the legacy tag.
    """
    if frame.rotation:
        return display_rotation(frame)
    try:
        degrees = float(metadata.get("rotate", "0"))
    except ValueError:
        degrees = 0.0
    return (round(degrees / 90.0) * 90) % 360


def _seconds(ticks: int | None, time_base: Fraction | None) -> float | None:
    if not ticks or time_base is None:
        return None
    return float(ticks * time_base)


def _stream_seconds(container: Any, stream: Any) -> float | None:
    """How long `stream` lasts as the file states it (see `frames.stated_end`: in Matroska and WebM its
    `DURATION` tag, since FFmpeg gives such a stream the container's duration, the longest stream's)."""
    end = stated_end(container, stream)
    return None if end is None else _seconds(end - int(stream.start_time or 0), stream.time_base)


#: Packets of any stream read after the seek to the file's end before `_read_seconds` gives up: a file
#: the seek cannot place (no index) would be read whole.
_END_PACKETS = 2000


def _read_seconds(container: Any, stream: Any) -> float | None:
    """How long `stream` lasts by its last packet, read after a seek to the file's end, where the file
    states no stream's length (FLV: the container's duration is its longest stream's, and a 2 s soundtrack
    beside 12 s of video read 12.08 s; ffprobe gives none). None where the seek fails or lands far from the
    end, or the stream has no timed packet there."""
    if container.duration is None or stream.time_base is None:
        return None
    end_s = Fraction((container.start_time or 0) + container.duration, av.time_base)
    try:
        container.seek(int(end_s / stream.time_base), stream=stream, backward=True)
    except av.error.FFmpegError:
        return None
    end = None
    with demuxed(container, stream) as packets:
        for count, packet in enumerate(packets):
            if count >= _END_PACKETS:
                return None
            if packet.pts is not None and packet.size:
                end = max(end or 0, packet.pts + (packet.duration or 0))
    return None if end is None else _seconds(end - int(stream.start_time or 0), stream.time_base)


def _ratio(ratio: Fraction) -> str:
    """`ratio` as ffprobe writes an aspect ratio: "16:9", in lowest terms."""
    return f"{ratio.numerator}:{ratio.denominator}"


def _rate(rate: Fraction | None) -> float | None:
    return float(rate) if rate else None
