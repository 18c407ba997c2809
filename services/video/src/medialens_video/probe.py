"""`video.probe`: container and stream metadata of a video, read without decoding it.

Everything comes from the container's and streams' metadata; only the first video frame is decoded, to
catch damaged media cheaply (and to read the display rotation FFmpeg attaches to decoded frames).
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from typing import Any

import av.error

from medialens_shared.contracts import (
    ProbeAudioStream,
    ProbeFormat,
    ProbeVideoStream,
    VideoProbeResult,
)
from medialens_shared.errors import MediaDecodeError
from medialens_shared.sniff import ffmpeg_reason
from medialens_video.frames import demuxed, display_rotation, open_video

#: Relative difference between the nominal and average frame rates above which a stream counts as VFR.
VFR_TOLERANCE = 0.01


def probe_video(path: Path) -> VideoProbeResult:
    """Describe the container, the first video stream and every audio stream of the file at `path`.

    Raises `UnsupportedInput` when the file is not a video (empty, a table, audio only, ...),
    `MediaDecodeError` when it is a damaged video (cannot be opened, or its first frame does not decode)
    and `InputNotFound` when there is no file.
    """
    path = Path(path)
    with open_video(path, whole=True) as (container, video):
        size_bytes = path.stat().st_size
        format_name = container.format.name
        first_frame = _decode_first_frame(container, video)

        duration_s = container.duration / av.time_base if container.duration else None
        stream_duration_s = _seconds(video.duration, video.time_base)
        fps = _rate(video.guessed_rate)
        avg_fps = _rate(video.average_rate)
        frame_count: int | None = video.frames or None
        if frame_count is None and avg_fps:
            span = stream_duration_s if stream_duration_s is not None else duration_s
            frame_count = round(span * avg_fps) if span else None
        codec_context = video.codec_context
        return VideoProbeResult(
            format=ProbeFormat(
                name=format_name,
                duration_s=duration_s,
                size_bytes=size_bytes,
                bit_rate=container.bit_rate or None,
            ),
            video=ProbeVideoStream(
                codec=_codec_name(video),
                width=codec_context.width,
                height=codec_context.height,
                fps=fps,
                avg_fps=avg_fps,
                is_vfr=bool(fps and avg_fps and abs(fps - avg_fps) > VFR_TOLERANCE * fps),
                frame_count=frame_count,
                pix_fmt=codec_context.pix_fmt,
                rotation=_rotation(first_frame, video.metadata),
            ),
            audio=[
                ProbeAudioStream(
                    codec=_codec_name(stream),
                    sample_rate=stream.codec_context.sample_rate,
                    channels=stream.codec_context.channels,
                    duration_s=_seconds(stream.duration, stream.time_base) or duration_s,
                )
                for stream in container.streams.audio
            ],
        )


def _decode_first_frame(container: Any, stream: Any) -> Any:
    """The first decoded frame of `stream`; `MediaDecodeError` when there is none."""
    try:
        with demuxed(container, stream) as packets:
            for packet in packets:
                for frame in stream.codec_context.decode(packet):
                    return frame
    except av.error.FFmpegError as exc:
        raise MediaDecodeError(
            f"The video stream cannot be decoded; the file is probably damaged ({ffmpeg_reason(exc)})."
        ) from exc
    raise MediaDecodeError("The video stream holds no decodable frame; the file is probably damaged.")


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


def _rate(rate: Fraction | None) -> float | None:
    return float(rate) if rate else None
