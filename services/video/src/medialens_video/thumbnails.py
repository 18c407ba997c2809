"""`video.thumbnails`: frames at chosen times as JPEGs, found by seeking rather than decoding everything.

For each time the decoder seeks to the keyframe at or before it and decodes forward, skipping the
non-reference frames on the way (nothing needs them), to the first frame at that time. A time close
after the previous one (within `SEEK_AHEAD_S`) is reached by decoding on instead of seeking back.
"""

from __future__ import annotations

from collections.abc import Generator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medialens_shared.contracts import THUMBNAILS_DEFAULT_COUNT
from medialens_shared.errors import InvalidParams
from medialens_video.frames import (
    DecodeGuard,
    Report,
    encode_jpeg,
    expected_frames,
    frame_ticks,
    open_video,
)

MAX_THUMBNAILS = 1000
#: A target less than this far ahead of the decoder is reached by decoding on, not by seeking.
SEEK_AHEAD_S = 2.0


@dataclass(frozen=True, slots=True)
class ThumbnailImage:
    t_s: float
    path: Path
    width: int
    height: int


def _no_report(_fraction: float, _message: str) -> None:
    return None


def thumbnail_times(duration_s: float, *, count: int | None, every_s: float | None) -> list[float]:
    """`count` times at the middles of equal slices of the video, or one every `every_s` from 0."""
    if every_s is not None:
        n = max(1, int(duration_s / every_s - 1e-9) + 1)
        if n > MAX_THUMBNAILS:
            raise InvalidParams(
                f"every_s={every_s} asks for {n} thumbnails of this {duration_s:.1f} s video; "
                f"the most is {MAX_THUMBNAILS}"
            )
        return [k * every_s for k in range(n)]
    n = count or THUMBNAILS_DEFAULT_COUNT
    return [duration_s * (k + 0.5) / n for k in range(n)]


def extract_thumbnails(
    path: Path,
    *,
    out_dir: Path,
    count: int | None = None,
    every_s: float | None = None,
    width: int = 320,
    report: Report = _no_report,
) -> list[ThumbnailImage]:
    """JPEGs `width` pixels wide of the frames at `thumbnail_times(...)`, written to `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with open_video(path, whole=True) as (container, stream):
        time_base = stream.time_base
        ticks = frame_ticks(stream)
        first_pts = stream.start_time or 0
        if stream.duration:
            duration_s = float(stream.duration * time_base)
        elif container.duration:
            duration_s = container.duration / 1_000_000
        else:
            duration_s = expected_frames(container, stream) * float(ticks * time_base)
        stream.thread_type = "AUTO"
        guard = DecodeGuard(expected_frames(container, stream))
        times = thumbnail_times(duration_s, count=count, every_s=every_s)
        images: list[ThumbnailImage] = []
        decoded = 0
        with closing(_Reader(container, stream, guard, report)) as reader:
            for k, t_s in enumerate(times):
                reader.note = (0.95 * k / len(times), f"thumbnail {k + 1}/{len(times)}")
                report(*reader.note)
                target = first_pts + round(t_s / time_base)
                frame = reader.frame_at(target, ahead=round(SEEK_AHEAD_S / time_base), slack=ticks // 2)
                if frame is None:
                    continue
                decoded += 1
                data, out_w, out_h = encode_jpeg(frame, width)
                out = out_dir / f"thumb-{k:04d}.jpg"
                out.write_bytes(data)
                images.append(ThumbnailImage(float((frame.pts - first_pts) * time_base), out, out_w, out_h))
        guard.require_frames(decoded)
    return images


class _Reader:
    """Decodes forward from the last position, seeking when a target is behind or far ahead."""

    def __init__(self, container: Any, stream: Any, guard: DecodeGuard, report: Report) -> None:
        self.container, self.stream, self.guard, self.report = container, stream, guard, report
        self.position: int | None = None
        self.pending: list[Any] = []
        #: The demuxer since the last seek, closed at the next one and by `close` (see `frames.demuxed`).
        self.packets: Generator[Any] | None = None
        self.last: Any = None
        #: What `report` is told while decoding towards a target: (fraction, message).
        self.note = (0.0, "seeking")

    def close(self) -> None:
        if self.packets is not None:
            self.packets.close()
            self.packets = None

    def frame_at(self, target: int, *, ahead: int, slack: int) -> Any:
        """The first frame at or after `target - slack` (the last frame when the video ends before)."""
        if self.position is None or target < self.position or target - self.position > ahead:
            self.close()
            self.container.seek(target, stream=self.stream, backward=True)
            self.packets, self.pending, self.last = self.container.demux(self.stream), [], None
        codec = self.stream.codec_context
        while True:
            while self.pending:
                frame = self.pending.pop(0)
                self.last = frame
                self.position = frame.pts
                if frame.pts >= target - slack:
                    return frame
            packet = next(self.packets, None) if self.packets is not None else None
            if packet is None:
                return self.last
            if packet.pts is not None:
                codec.skip_frame = "NONREF" if packet.pts < target - 2 * slack - 1 else "DEFAULT"
            self.pending = [f for f in self.guard.decode(codec, packet) if f.pts is not None]
            self.report(*self.note)
