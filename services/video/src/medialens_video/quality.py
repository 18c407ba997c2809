"""`video.quality`: black and frozen stretches, from every frame's dark pixels and change of picture.

As FFmpeg's blackdetect and freezedetect judge them, with one decode for both, streamed (only the previous
frame's small planes are kept):

- A frame is black when at least `BLACK_PIXEL_SHARE` (98%) of its pixels have a luma (0..1, black to white,
  whatever range the video uses) of at most `black_threshold`: blackdetect's `pic_th` and `pix_th`, every
  pixel counted (`frames.dark_share`; a downscaled picture smoothed grain and smeared thin lines). Not
  the mean luma: a dark night scene has a low mean and is no black frame, and a black card with a
  caption is not black either.
- A frame is frozen when it differs by at most `FREEZE_NOISE` (freezedetect's -60 dB) from the still
  picture's first showing, not merely from the frame before it (slow or small motion adds up: a box
  crossing the picture a few pixels a frame is no freeze), as the mean absolute difference over the
  pixels of its Y, U and V planes (colour counts: hues changing at the same brightness are no freeze),
  sampled without averaging (`SmallFrame.of(averaged=False)`: an average halved grain's difference), and
  it is not black (a black stretch is reported as black, not also as frozen). A frame that differs
  starts the next comparison. A frozen stretch starts at the first showing of the still picture and ends
  at the first frame that differs from it.

Times run from the video stream's start (`frames.first_timestamp`), as the other video jobs' do, not from
its first decoded frame: a recording cut mid-GOP (MPEG-TS from a broadcast) starts with packets that decode
to nothing until the first keyframe, and its black stretches read 0.64 s early, beside the scenes and
thumbnails of the same file. A frame that comes without a timestamp is timed by `frames.FrameClock`, as
ffmpeg times it, after the frame before it: such frames were dropped, every one of a raw H.264 or HEVC
stream's (the job failed "no decodable frame"), and most of an MPEG-PS's that times one frame in a few.

An empty packet with a time of its own shows the frame before it again (`frames.shown_again_at`: libtheora
writes one for every frame of a still picture), and is judged as that frame shown at its time (the frame's
own duration then ends at it: the last frame's duration closes a stretch open at the end).

A stretch still open at the end is closed at the video's end: the last frame plus its own duration (a
last frame held for 3 s closed 40 ms after it started, and a black end shorter than `min_black_s` by then
was dropped), or the gap before it where its container gives none.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from medialens_shared.demux import demuxed
from medialens_video.frames import (
    DecodeGuard,
    FrameClock,
    Report,
    SmallFrame,
    dark_share,
    expected_frames,
    first_timestamp,
    frame_threads,
    frame_ticks,
    open_video,
    planar_8bit,
    require_forward,
    shown_again_at,
    stated_end,
)

#: Mean absolute difference of Y, U and V (0..1) up to which a frame is the still picture it is compared
#: with: freezedetect's default noise, -60 dB. (At 0.002, on luma alone, frame to frame, a box 200 pixels
#: wide crossing a 720p picture read as frozen.)
FREEZE_NOISE = 0.001
#: Share of a frame's pixels that must be dark for the frame to be black: blackdetect's `pic_th`.
BLACK_PIXEL_SHARE = 0.98
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
        total = expected_frames(container, stream, end=stated_end(container, stream))
        ticks = frame_ticks(stream)
        time_base = stream.time_base
        frame_threads(stream)
        guard = DecodeGuard(total)
        origin = first_timestamp(container, stream)
        clock = FrameClock.of(container, stream, origin)
        #: The still picture frames are compared with: its first showing's time and its planes.
        still_picture: tuple[float, SmallFrame] | None = None
        #: The last frame shown: whether it is black, and its planes; and the times of the packets that show
        #: a frame again, until the decoder (a few frames behind with threads) gives the frames before them.
        shown: tuple[bool, SmallFrame] | None = None
        repeated: deque[int] = deque()
        last_pts, last_interval, last_duration, count = origin, ticks, 0, 0

        def show(pts: int, duration: int, is_black: bool, small: SmallFrame) -> None:
            nonlocal still_picture, shown, last_pts, last_interval, last_duration, count
            require_forward(last_pts, pts, time_base=time_base, origin=origin)
            now_s = max(float((pts - origin) * time_base), 0.0)
            black.step(is_black, start_s=now_s, now_s=now_s)
            still = False
            if still_picture is not None:
                still = not is_black and small.mafd(still_picture[1]) <= FREEZE_NOISE
                frozen.step(still, start_s=still_picture[0], now_s=now_s)
                last_interval = pts - last_pts
            if still_picture is None or not still:
                still_picture = (now_s, small)
            shown = (is_black, small)
            last_pts, last_duration = pts, duration
            count += 1

        def show_repeats(before: int | None) -> None:
            while repeated and (before is None or repeated[0] < before):
                pts = repeated.popleft()
                if shown is not None:
                    show(pts, 0, *shown)

        with demuxed(container, stream) as packets:
            for packet in packets:
                if (again := shown_again_at(packet)) is not None:
                    repeated.append(again)
                for frame in clock.stamp(guard.decode(stream.codec_context, packet), packet):
                    if frame.pts is None:
                        continue
                    show_repeats(before=frame.pts)
                    planar = planar_8bit(frame)
                    is_black = dark_share(planar, black_threshold) >= BLACK_PIXEL_SHARE
                    show(frame.pts, frame.duration, is_black, SmallFrame.of(planar, averaged=False))
                report(min(count / total, 1.0), f"decoding {count}/{total} frames")
        show_repeats(before=None)
        guard.require_frames(count)
    end_s = max(float((last_pts + (last_duration or last_interval) - origin) * time_base), 0.0)
    black.close(end_s)
    frozen.close(end_s)
    return QualityAnalysis(black=black.closed, frozen=frozen.closed, frames_analyzed=count)
