"""`video.quality`: black and frozen stretches, from every frame's mean luma and change in luma.

A frame is black when its mean luma (0..1, black to white, whatever range the video uses) is at most
`black_threshold`. A frame is frozen when its luma differs from the previous frame's by at most
`FREEZE_NOISE` on average and it is not black (a black stretch is reported as black, not also as
frozen). A frozen stretch starts at the first showing of the still picture and ends at the first frame
that differs. A stretch still open at the end is closed at the video's end (last frame plus its
duration). Like FFmpeg's blackdetect and freezedetect, but one decode for both, streamed: only the
previous frame's small luma plane is kept.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from medialens_video.frames import (
    DecodeGuard,
    Report,
    SmallFrame,
    demuxed,
    expected_frames,
    frame_ticks,
    open_video,
)

#: Mean absolute luma difference (0..1) up to which two frames count as the same picture.
FREEZE_NOISE = 0.002
#: Slack on the minimum lengths, so a stretch of exactly `min_black_s` survives float rounding.
EPSILON_S = 1e-6


@dataclass(slots=True)
class _Runs:
    """Open and closed stretches of one kind, as (start_s, end_s)."""

    min_s: float
    closed: list[tuple[float, float]] = field(default_factory=list)
    start: float | None = None

    def step(self, inside: bool, *, start_s: float, now_s: float) -> None:
        if inside and self.start is None:
            self.start = start_s
        elif not inside and self.start is not None:
            self.close(now_s)

    def close(self, end_s: float) -> None:
        if self.start is not None and end_s - self.start >= self.min_s - EPSILON_S:
            self.closed.append((self.start, end_s))
        self.start = None


@dataclass(frozen=True, slots=True)
class QualityAnalysis:
    black: list[tuple[float, float]]
    frozen: list[tuple[float, float]]
    frames_analyzed: int


def _no_report(_fraction: float, _message: str) -> None:
    return None


def detect_quality(
    path: Path,
    *,
    black_threshold: float = 0.1,
    min_black_s: float = 0.5,
    freeze_min_s: float = 2.0,
    report: Report = _no_report,
) -> QualityAnalysis:
    """The black and frozen stretches of the video at `path`; `report` may raise to stop."""
    black, frozen = _Runs(min_black_s), _Runs(freeze_min_s)
    with open_video(path, whole=True) as (container, stream):
        total = expected_frames(container, stream)
        ticks = frame_ticks(stream)
        time_base = stream.time_base
        stream.thread_type = "AUTO"
        guard = DecodeGuard(total)
        first_pts: int | None = None
        previous: tuple[float, SmallFrame] | None = None
        last_pts, last_interval, count = 0, ticks, 0
        with demuxed(container, stream) as packets:
            for packet in packets:
                for frame in guard.decode(stream.codec_context, packet):
                    if frame.pts is None:
                        continue
                    if first_pts is None:
                        first_pts = frame.pts
                    now_s = float((frame.pts - first_pts) * time_base)
                    small = SmallFrame.of(frame)
                    is_black = small.luma() <= black_threshold
                    black.step(is_black, start_s=now_s, now_s=now_s)
                    if previous is not None:
                        still = not is_black and small.luma_difference(previous[1]) <= FREEZE_NOISE
                        frozen.step(still, start_s=previous[0], now_s=now_s)
                        last_interval = frame.pts - last_pts
                    previous, last_pts = (now_s, small), frame.pts
                    count += 1
                report(min(count / total, 1.0), f"decoding {count}/{total} frames")
        guard.require_frames(count)
    end_s = float((last_pts + last_interval - (first_pts or 0)) * time_base)
    black.close(end_s)
    frozen.close(end_s)
    return QualityAnalysis(black=black.closed, frozen=frozen.closed, frames_analyzed=count)
