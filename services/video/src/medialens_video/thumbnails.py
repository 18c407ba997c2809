"""`video.thumbnails`: frames at chosen times as JPEGs, found by seeking rather than decoding everything.

The times spread over the video stream's own span, from its first frame (`frames.first_timestamp`) to
the end of its last: the end the file states (`frames.stated_end`; never the container's duration, which
covers every stream from 0), else, where it states none (a Matroska with no duration tag, a piped one
with no duration at all), the end read off the packets' timestamps without decoding: those from the last
keyframe, found by seeking to the end, or where the file cannot be sought, the whole stream's.

For each time the decoder starts at a keyframe at or before it and decodes forward, skipping the
non-reference frames on the way (nothing needs them), to the frame at that time (the nearest, within half
a frame). A seek lands on the last such keyframe in an indexed container (MP4, Matroska); in one without
an index (MPEG-TS, MPEG-PS) it lands on any packet near the time, so the reader reads on to a keyframe,
and seeks further back, twice as far each time, while that keyframe comes after the time. A time close
after the previous one (within `SEEK_AHEAD_S`) is reached by decoding on instead of seeking back. Every
time gets its image, or the job fails with `MediaDecodeError`.

An untimed stream (`frames.untimed`: a raw H.264 or HEVC stream, whose packets have no timestamps and
which cannot be sought; an MPEG-PS that times one frame in a few) is decoded once from its start, every
frame, timed by `frames.FrameClock`; a raw one spans its packets' durations added up. A raw stream failed
"cannot be read to its end", its end sought for and its seeks refused; a PS's frames between its timed
ones were skipped, and its thumbnails taken at the next timed one, up to 0.7 s late.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Generator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av.error

from medialens_shared.contracts import THUMBNAILS_DEFAULT_COUNT
from medialens_shared.demux import packets_of
from medialens_shared.errors import InvalidParams, MediaDecodeError
from medialens_video.frames import (
    FAR_FUTURE_S,
    DecodeGuard,
    FrameClock,
    Report,
    encode_jpeg,
    expected_frames,
    first_timestamp,
    frame_threads,
    frame_ticks,
    latest_end,
    open_video,
    packet_span,
    pixel_aspect,
    shown_again_at,
    skips_frames,
    stated_end,
    untimed,
)

MAX_THUMBNAILS = 1000
#: A target less than this far ahead of the decoder is reached by decoding on, not by seeking.
SEEK_AHEAD_S = 2.0
#: How much earlier a seek that landed after its keyframe is first retried (the next retry twice as far).
BACK_OFF_S = 1.0


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
        slices = duration_s / every_s - 1e-9
        # Compared before it is counted: every_s=5e-324 makes the quotient infinite, which int() refuses.
        if slices >= MAX_THUMBNAILS:
            raise InvalidParams(
                f"every_s={every_s} asks for more than {MAX_THUMBNAILS} thumbnails of this "
                f"{duration_s:.1f} s video; the most is {MAX_THUMBNAILS}"
            )
        n = max(1, int(slices) + 1)
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
        aspect = pixel_aspect(stream)
        first_pts = first_timestamp(container, stream)
        clock = FrameClock.of(container, stream, first_pts) if untimed(container, stream) else None
        stated = stated_end(container, stream)
        if stated is None and clock is not None:  # not to be sought: the end is the packets' durations
            packets, end = packet_span(container, stream)
        else:
            end = _read_end(container, stream) if stated is None else stated
            packets = expected_frames(container, stream, end=stated)
        duration_s = float(max(end - first_pts, 1) * time_base)
        frame_threads(stream)
        guard = DecodeGuard(packets)
        times = thumbnail_times(duration_s, count=count, every_s=every_s)
        images: list[ThumbnailImage] = []
        with closing(_Reader(container, stream, guard, report, start=first_pts, clock=clock)) as reader:
            for k, t_s in enumerate(times):
                reader.note = (0.95 * k / len(times), f"thumbnail {k + 1}/{len(times)}")
                report(*reader.note)
                target = first_pts + round(t_s / time_base)
                frame = reader.frame_at(target, ahead=round(SEEK_AHEAD_S / time_base), slack=ticks // 2)
                if frame is None:
                    raise MediaDecodeError(
                        f"No frame of the video stream decodes at or before {t_s:.2f} s; "
                        "the file is probably damaged."
                    )
                data, out_w, out_h = encode_jpeg(frame, width, aspect=aspect)
                out = out_dir / f"thumb-{k:04d}.jpg"
                out.write_bytes(data)
                images.append(ThumbnailImage(float((frame.pts - first_pts) * time_base), out, out_w, out_h))
    return images


def _read_end(container: Any, stream: Any) -> int:
    """The end of the stream's last frame, in its time base, read off the packets (none decoded): those
    from the last keyframe, which a seek to the end finds, or all of them when that seek fails.
    `MediaDecodeError` when no packet is timed."""
    try:
        container.seek(round(FAR_FUTURE_S / stream.time_base), stream=stream, backward=True)
        end = latest_end(container, stream)
    except av.error.FFmpegError:
        end = None
    if end is None:
        try:
            container.seek(0, stream=stream, backward=True)
        except av.error.FFmpegError as exc:
            raise MediaDecodeError(
                "The video stream cannot be read to its end; the file is probably damaged."
            ) from exc
        end = latest_end(container, stream)
    if end is None:
        raise MediaDecodeError("The video stream holds no timed frame; the file is probably damaged.")
    return end


class _Reader:
    """Decodes forward from the last position, seeking when a target is behind or far ahead."""

    def __init__(
        self,
        container: Any,
        stream: Any,
        guard: DecodeGuard,
        report: Report,
        *,
        start: int,
        clock: FrameClock | None = None,
    ) -> None:
        self.container, self.stream, self.guard, self.report = container, stream, guard, report
        #: Times the frames of an untimed stream, which is read once from its start, never sought.
        self.clock = clock
        #: The stream's first timestamp: a seek before it starts the stream over.
        self.start = start
        self.position: int | None = None
        self.pending: list[Any] = []
        #: The demuxer since the last seek, closed at the next one and by `close` (see `demux.demuxed`).
        self.packets: Generator[Any] | None = None
        #: The packet to decode first after a seek: the keyframe `_seek_keyframe` read up to.
        self.head: Any = None
        self.last: Any = None
        #: Times of the packets read since the last seek that show the frame before them again
        #: (`shown_again_at`).
        self.repeated: list[int] = []
        #: What `report` is told while decoding towards a target: (fraction, message).
        self.note = (0.0, "seeking")

    def close(self) -> None:
        if self.packets is not None:
            self.packets.close()
            self.packets = None

    def frame_at(self, target: int, *, ahead: int, slack: int) -> Any:
        """The first frame at or after `target - slack` (the last frame when the video ends before), or the
        one before it where that is nearer (a hole in the video: a broadcast's dropout took the frame after
        it, seconds away); None when nothing decodes from the keyframe before `target` to the end. Targets
        come in order.

        The frame given last is given again when it is still the answer (the frames before it are before
        the previous target): with more thumbnails than frames, or targets closer than a frame, the next
        target used to take the frame after it, and the one after that sought back to it, so the times
        went back and forth (0.2, 0.4, 0.2 s).
        """
        if self.last is not None and self.last.pts >= target - slack:
            return self.last
        if self.clock is not None and self.clock.slots is None:  # read once from its start, never sought
            if self.packets is None:
                self.packets = packets_of(self.container, self.stream)
        elif self.position is None or target < self.position or target - self.position > ahead:
            self._seek_keyframe(target)
        codec = self.stream.codec_context
        skipping = self.clock is None and skips_frames(codec)  # an untimed stream's clock counts every frame
        while True:
            while self.pending:
                frame = self.pending[0]
                previous = self.last
                # A hole in the video (a dropout) with the frame before it nearer, or that frame shown again
                # at the target (an empty packet): the frame before it.
                if (
                    frame.pts > target + slack
                    and previous is not None
                    and (target - previous.pts < frame.pts - target or self._shown_again(previous, target))
                ):
                    return previous
                self.pending.pop(0)
                self.last = frame
                self.position = frame.pts
                if frame.pts >= target - slack:
                    return frame
            packet, self.head = self.head, None
            if packet is None and self.packets is not None:
                packet = next(self.packets, None)
            if packet is None:
                return self.last
            if packet.pts is not None and skipping:
                codec.skip_frame = "NONREF" if packet.pts < target - 2 * slack - 1 else "DEFAULT"
            self.pending = self._decode(codec, packet)
            self.report(*self.note)

    def _decode(self, codec: Any, packet: Any) -> list[Any]:
        """The timed frames `packet` gives; a packet showing the frame before again is noted."""
        if (again := shown_again_at(packet)) is not None:
            self.repeated.append(again)
        decoded = self.guard.decode(codec, packet)
        if self.clock is not None:
            self.clock.stamp(decoded, packet)
        return [f for f in decoded if f.pts is not None]

    def _shown_again(self, frame: Any, target: int) -> bool:
        """Whether a packet read after `frame` shows it again at `target` or before: still shown there."""
        after = bisect_right(self.repeated, frame.pts)
        return after < len(self.repeated) and self.repeated[after] <= target

    def _seek(self, timestamp: int) -> None:
        """Seek to `timestamp`, or to the stream's start, or to 0, whichever the demuxer takes first.

        AVI's demuxer refuses a time before its first index entry (EPERM): the seek before the start that
        `_seek_keyframe` makes ended every thumbnails job of an MPEG-4 AVI with B-frames, whose first frame
        is shown a tick after it is decoded, in INTERNAL_ERROR. From an earlier place than asked, the reading
        goes forward as far as it needs."""
        for where in dict.fromkeys((timestamp, self.start, 0)):
            try:
                self.container.seek(where, stream=self.stream, backward=True)
            except av.error.FFmpegError:
                continue
            return
        raise MediaDecodeError(
            "The video stream cannot be sought, even to its start; the file is probably damaged."
        )

    def _seek_keyframe(self, target: int) -> None:
        """Leave a keyframe at or before `target` in `head` and the demuxer after it: the last one before
        `target` where a seek lands on it (an indexed container), else one at most about a GOP earlier.

        A seek in a container without an index lands on any packet near the time asked, so packets are
        read (not decoded) to the first keyframe, and while that keyframe comes after `target` (its time
        passed without one) the seek is retried `BACK_OFF_S` earlier, twice as far each time. Once that is
        before the stream's start, the seek goes a further `back` before it (a seek to the start itself may
        land past the first keyframe, whose decoding time comes before its display time) and the first
        packet is taken, keyframe or not: nothing comes earlier.
        """
        # At least a tick: a coarse time base (2 s a tick, a crafted file's) rounded 1 s to 0, and the
        # seek was retried at the same place for ever.
        at, back = target, max(1, round(BACK_OFF_S / self.stream.time_base))
        while True:
            self.report(*self.note)  # a cancel is heard between two tries
            from_start = at < self.start
            self.close()
            self._seek(self.start - back if from_start else at)
            self.packets, self.pending, self.last = packets_of(self.container, self.stream), [], None
            self.repeated.clear()
            if self.clock is not None:
                self.clock = self.clock.fresh()
            for packet in self.packets:
                shown = packet.pts if packet.pts is not None else packet.dts
                if shown is None:
                    continue  # the demuxer's flush packet
                if from_start or (packet.is_keyframe and shown <= target):
                    self.head = packet
                    return
                if (packet.dts if packet.dts is not None else shown) > target:
                    break
            if from_start:
                return
            at, back = target - back, back * 2
