"""`video.scenes`: hard cuts found from content change, exact to the frame, without decoding every frame.

How it stays well ahead of decoding the whole video while finding every cut to the frame:

1. A demux-only pass (no decoding) reads every packet's timestamp, size and keyframe flag: the timeline
   of all frames, the keyframes, and the *suspects*: keyframes and packets much larger than their
   neighbours (an encoder starts a new shot with a nearly intra-coded frame). The few frames before a
   suspect (in display order) will be decoded in full, so a cut there is seen between adjacent frames.
2. The video is split at keyframes into chunks that decode independently, and a pool of threads (one
   per CPU; FFmpeg decodes without the GIL) decodes them side by side, each decoder single-threaded:
   a chain of P-frames leaves FFmpeg's own frame threads little to overlap, separate chunks overlap
   fully. A chunk decodes only its reference frames (`skip_frame=nonref`) and the suspects' stretches,
   without deblocking, and compares each decoded frame with the previous one on small Y/U/V planes
   (`SmallFrame.difference`, 0..255). A chunk ends at the next chunk's keyframe by draining its
   decoder when that keyframe closes its GOP (nothing decoded after it shows before it), so no
   keyframe is decoded twice; in open GOPs it decodes on until the keyframe comes out.
3. A large change between two decoded frames with skipped frames between them is looked at again:
   a seek to the keyframe before it, then a decode of exactly that stretch (`_refine`).
4. A change counts as a cut when it reaches `threshold` and stands `ADAPTIVE_RATIO` times above the
   typical change per frame around it (PySceneDetect's AdaptiveDetector idea: fast motion raises the
   bar). Optional flash suppression drops a pair of cuts that returns to the same picture within
   `FLASH_MAX_S`; then cuts closer than `min_scene_len_s` to the previous one are dropped.
5. Each scene's thumbnail is its first frame decoded again exactly (deblocking on, from the keyframe
   before it): frames of the fast pass drift from the true picture within a GOP, fine for comparing
   small planes, not for showing.

Timestamps are the decoder's pts (correct on variable frame rate), relative to the video stream's start
(`frames.first_timestamp`), as the other video jobs' are.
Memory: a few numbers per frame and a few kilobytes per candidate cut; no frame is kept.

Refinements and thumbnails start at a keyframe through `frames.from_keyframe`, which reaches it in MPEG-TS
and MPEG-PS too (a seek there lands past it). A stream with packets that carry no timestamp (a raw H.264
or HEVC stream: none of them; an MPEG-PS that times one frame in a few) has no timeline to plan by: it is
decoded in one piece, every frame, timed by `frames.FrameClock`, and its thumbnails are decoded from its
start the same way. Interlaced frames are compared by their top fields (`SmallFrame.of`).
"""

from __future__ import annotations

import statistics
import threading
import time
from bisect import bisect_left, bisect_right
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace
from itertools import pairwise
from pathlib import Path
from typing import Any, TypeVar

from medialens_shared.contracts import SCENES_DEFAULT_THRESHOLD
from medialens_shared.cpus import usable_cpus
from medialens_shared.demux import demuxed
from medialens_video.frames import (
    DecodeGuard,
    FrameClock,
    Report,
    SmallFrame,
    encode_jpeg,
    first_timestamp,
    frame_ticks,
    from_keyframe,
    open_video,
    pixel_aspect,
    require_forward,
    skips_frames,
)

#: A cut's change must be this many times the median change per frame of its neighbours.
ADAPTIVE_RATIO = 3.0
#: Decoded frames on each side whose changes make that neighbourhood.
ADAPTIVE_WINDOW = 6
#: A packet this many times the 80th-percentile size of the recent ones makes its frame a suspect.
SPIKE_RATIO = 2.5
#: Packets in that recent window.
SIZE_WINDOW = 31
#: Frames before a suspect (in display order) that are decoded in full.
SUSPECT_FRAMES = 6
#: A cut and a cut back to a picture like the one before it, this close together, are a flash.
FLASH_MAX_S = 0.5
#: Chunks per decoding thread: enough for an even share when one chunk decodes slower than another,
#: few enough that opening and seeking each one costs little.
CHUNKS_PER_THREAD = 4
#: Seconds between two progress reports (and cancellation checks) while the threads decode.
POLL_S = 0.1
#: How many packets the demux-only pass reads between two looks at the clock (about 4 ms of them).
_SCAN_LOOK_PACKETS = 256

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class SceneSpan:
    start_s: float
    end_s: float
    start_frame: int
    end_frame: int
    thumbnail: Path | None


@dataclass(frozen=True, slots=True)
class SceneAnalysis:
    scenes: list[SceneSpan]
    #: Frames the analysis covered: every frame's timestamp is known, whether it was decoded or not.
    frames_analyzed: int
    #: Frames decoded to find the cuts (reference frames, the stretches around suspects and cuts);
    #: thumbnails are decoded on top of these.
    frames_decoded: int


@dataclass(slots=True)
class _Change:
    """The change from the decoded frame at `before` to the next decoded frame, at `after` (pts)."""

    before: int
    after: int
    score: float
    small_before: SmallFrame | None = None
    small_after: SmallFrame | None = None


@dataclass(frozen=True, slots=True)
class _Timeline:
    """What the demux-only pass learns: every frame's pts, the keyframes, the frames to decode in full."""

    #: Display timestamps of all frames, sorted.
    pts: list[int]
    #: (packets before it in decode order, pts) of each keyframe.
    keyframes: list[tuple[int, int]]
    #: Timestamps of the frames decoded in full (the stretches before suspects).
    full: frozenset[int]
    #: Timestamps of the keyframes that no later packet (in decode order) shows before: those of
    #: closed GOPs, where a chunk ending there can stop without decoding the keyframe.
    closed: frozenset[int] = frozenset()
    #: Packets holding data, timed or not (an untimed stream's frames are timed once decoded).
    packets: int = 0


@dataclass(frozen=True, slots=True)
class _Chunk:
    """Frames from the keyframe at `start` (None: the first packet) to the one at `end` (None: the end)."""

    index: int
    start: int | None
    end: int | None


@dataclass(slots=True)
class _Changes:
    """Consecutive decoded frames of one chunk compared: their changes, and its first and last frames."""

    threshold: float
    changes: list[_Change] = field(default_factory=list)
    first: tuple[int, SmallFrame] | None = None
    last: tuple[int, SmallFrame] | None = None
    decoded: int = 0

    def see(self, pts: int, small: SmallFrame) -> None:
        self.decoded += 1
        if self.last is None:
            self.first = (pts, small)
        else:
            self.add(self.last, (pts, small))
        self.last = (pts, small)

    def add(self, before: tuple[int, SmallFrame], after: tuple[int, SmallFrame]) -> None:
        change = _Change(before[0], after[0], after[1].difference(before[1]))
        if change.score >= self.threshold:  # planes kept only for likely cuts (flash suppression)
            change.small_before, change.small_after = before[1], after[1]
        self.changes.append(change)


class _Misaligned(Exception):
    """A chunk's seek did not land on its keyframe, so the chunk would lose or repeat frames."""


class _Stopped(Exception):
    """A decoding thread stops early because another one failed or the job was cancelled."""


@dataclass(slots=True)
class _Workers:
    """The decoding threads of one analysis: shared stop flag, per-task counts for progress."""

    pool: ThreadPoolExecutor
    report: Report
    stop: threading.Event = field(default_factory=threading.Event)
    counts: list[int] = field(default_factory=list)

    def check(self) -> None:
        if self.stop.is_set():
            raise _Stopped

    def run(self, tasks: Sequence[Callable[[int], T]], note: Callable[[int], tuple[float, str]]) -> list[T]:
        """Each task run on the pool with its index (to count its progress in `counts[index]`).

        This thread reports `note(sum of counts)` every `POLL_S`; when the report raises (a cancel) or a
        task fails, the other tasks stop at their next packet and the exception is raised here.
        """
        self.counts = [0] * len(tasks)
        futures: list[Future[T]] = [self.pool.submit(task, i) for i, task in enumerate(tasks)]
        try:
            pending: set[Future[T]] = set(futures)
            while pending:
                done, pending = wait(pending, timeout=POLL_S, return_when=FIRST_EXCEPTION)
                for future in done:
                    future.result()  # a failed task's exception, at once
                self.report(*note(sum(self.counts)))
        except BaseException:
            self.stop.set()
            wait(futures)
            raise
        return [future.result() for future in futures]


def _no_report(_fraction: float, _message: str) -> None:
    return None


def detect_scenes(
    path: Path,
    *,
    threshold: float | None = None,
    min_scene_len_s: float = 0.5,
    flash_suppression: bool = False,
    thumbnail_dir: Path | None = None,
    thumbnail_width: int = 320,
    report: Report = _no_report,
) -> SceneAnalysis:
    """The scenes of the video at `path`, with a JPEG of each scene's first frame in `thumbnail_dir`.

    `report(fraction, message)` is called about every `POLL_S` from this thread and may raise to stop.
    """
    threshold = threshold or SCENES_DEFAULT_THRESHOLD
    with open_video(path, whole=True) as (container, stream):
        ticks = frame_ticks(stream)
        time_base = stream.time_base
        timeline = _scan(container, stream, ticks, report)
        origin = first_timestamp(container, stream)
        timing = FrameClock.of(container, stream, origin)  # copied for each decoder that counts frames
    # Packets without a timestamp (all of a raw H.264 stream's, most of an MPEG-PS's that times one frame
    # in a few) leave frames off the timeline, and the frames they decode to are timed only by counting
    # them: the stream is decoded in one piece, every frame of it, and its timeline is what the decoder
    # gives out.
    clocked = timeline.packets > len(timeline.pts)
    total = timeline.packets if clocked else len(timeline.pts)
    threads = usable_cpus()
    chunks = [_Chunk(0, None, None)] if clocked else _chunks(timeline, total // (threads * CHUNKS_PER_THREAD))
    guard = DecodeGuard(total)
    guard.require_frames(total)  # none on the timeline: an edit list hides every frame (ffmpeg shows none)

    def clock() -> FrameClock | None:
        return timing.fresh() if clocked else None

    report(0.0, f"decoding 0/{total} frames")
    with ThreadPoolExecutor(threads, thread_name_prefix="scenes") as pool:
        workers = _Workers(pool, report)
        parts = _decode_chunks(
            path,
            chunks,
            timeline=timeline,
            threshold=threshold,
            guard=guard,
            workers=workers,
            clock=clock,
            total=total,
            threads=threads,
        )
        report(0.8, f"decoding {total}/{total} frames")
        changes, decoded = _joined(parts, threshold)
        guard.require_frames(decoded)
        if clocked and parts[0].first is not None:
            timeline = replace(timeline, pts=sorted([parts[0].first[0], *(c.after for c in changes)]))
            total = len(timeline.pts)
        first_pts = timeline.pts[0]
        gaps = [_index(timeline.pts, c.after) - _index(timeline.pts, c.before) for c in changes]
        decoded += _refine(path, changes, gaps, timeline=timeline, threshold=threshold, workers=workers)
        cuts = _cuts(changes, gaps, threshold)

        def at(pts: int) -> float:
            """Seconds from the stream's start (`origin`), as quality and thumbnails count them and ffmpeg
            shows them; not from the least pts: an MPEG-TS recording cut mid-GOP starts with a B-frame shown
            before its first packet, and every cut read a frame later than the black stretches and
            thumbnails of the same file. A frame shown before the start is at 0."""
            return max(float((pts - origin) * time_base), 0.0)

        if flash_suppression:
            cuts = _without_flashes(cuts, threshold, at)
        kept: list[_Change] = []
        last_s = 0.0
        for cut in cuts:
            if at(cut.after) - last_s >= min_scene_len_s:
                kept.append(cut)
                last_s = at(cut.after)
        starts = [first_pts] + [c.after for c in kept]
        thumbnails: dict[int, Path] = {}
        if thumbnail_dir is not None:
            thumbnail_dir.mkdir(parents=True, exist_ok=True)
            groups = [(None, starts)] if clocked else _by_keyframe(starts, timeline)
            for part in workers.run(
                [
                    _thumbnail_task(
                        path, group, thumbnail_dir, thumbnail_width, total, workers, first_pts, clock()
                    )
                    for group in groups
                ],
                lambda n: (0.85 + 0.1 * n / len(starts), f"decoding thumbnail {n}/{len(starts)}"),
            ):
                thumbnails.update(part)

    timeline_pts = timeline.pts
    last_interval = timeline_pts[-1] - timeline_pts[-2] if total > 1 else ticks
    ends = [*starts[1:], timeline_pts[-1] + last_interval]
    scenes = [
        SceneSpan(
            start_s=at(start),
            end_s=at(end),
            start_frame=_index(timeline_pts, start),
            end_frame=_index(timeline_pts, end) if k + 1 < len(starts) else total,
            thumbnail=thumbnails.get(start),
        )
        for k, (start, end) in enumerate(zip(starts, ends, strict=True))
    ]
    return SceneAnalysis(scenes=scenes, frames_analyzed=total, frames_decoded=decoded)


def _decode_chunks(
    path: Path,
    chunks: list[_Chunk],
    *,
    timeline: _Timeline,
    threshold: float,
    guard: DecodeGuard,
    workers: _Workers,
    clock: Callable[[], FrameClock | None],
    total: int,
    threads: int,
) -> list[_Changes]:
    """Each chunk decoded and compared on the pool (`_chunk_task`), each with a `clock()` of its own."""

    def note(n: int) -> tuple[float, str]:
        return 0.8 * min(n / total, 1.0), f"decoding {min(n, total)}/{total} frames"

    decoder_threads = 1 if len(chunks) > 1 else threads
    try:
        return workers.run(
            [
                _chunk_task(path, chunk, timeline, threshold, guard, workers, decoder_threads, clock())
                for chunk in chunks
            ],
            note,
        )
    except _Misaligned:
        # A container whose seeks miss keyframes (MPEG-TS seeks by time): decode it in one piece.
        workers.stop.clear()
        whole = _Chunk(0, None, None)
        return workers.run(
            [_chunk_task(path, whole, timeline, threshold, guard, workers, threads, clock())], note
        )


def _refine(
    path: Path,
    changes: list[_Change],
    gaps: list[int],
    *,
    timeline: _Timeline,
    threshold: float,
    workers: _Workers,
) -> int:
    """Each change that stands out across skipped frames replaced, in `changes` and `gaps`, by the largest
    frame-to-frame change of that stretch decoded in full (`_refine_task`); the frames decoded for it."""
    total, first_pts = len(timeline.pts), timeline.pts[0]
    rough = [i for i in _standing_out(changes, gaps, threshold) if gaps[i] > 1]
    refined = workers.run(
        [
            _refine_task(
                path,
                changes[i],
                threshold,
                total,
                workers,
                _keyframe_at(timeline, changes[i].before),
                first_pts,
            )
            for i in rough
        ],
        lambda n: (
            0.8 + 0.05 * min(n / max(len(rough), 1), 1.0),
            f"refining {n}/{len(rough)} possible cuts",
        ),
    )
    decoded = 0
    for i, (change, count) in zip(rough, refined, strict=True):
        changes[i] = change
        gaps[i] = _index(timeline.pts, change.after) - _index(timeline.pts, change.before)
        decoded += count
    return decoded


def _scan(container: Any, stream: Any, ticks: int, report: Report = _no_report) -> _Timeline:
    """Every packet's timestamp, size and keyframe flag, read without decoding anything; `report`ed about
    every `POLL_S` (it may raise to stop): about 18 µs a packet, 4 s for two hours of video at 30 fps,
    which ran without a word nor a look for a cancel."""
    decode_order: list[int] = []
    keyframes: list[tuple[int, int]] = []
    suspects: list[int] = []
    sizes: deque[int] = deque(maxlen=SIZE_WINDOW)
    count = 0
    next_report = time.monotonic() + POLL_S
    first_dts: int | None = None
    last_dts: int | None = None
    with demuxed(container, stream) as packets:
        for packet in packets:
            if count and not count % _SCAN_LOOK_PACKETS and time.monotonic() >= next_report:
                report(0.0, f"reading the packets: {count}")
                next_report = time.monotonic() + POLL_S
            if packet.is_discard:
                continue  # before an edit list's start: decoded for what follows, never shown
            count += 1 if packet.size else 0
            if packet.dts is not None:
                first_dts = packet.dts if first_dts is None else first_dts
                require_forward(last_dts, packet.dts, time_base=stream.time_base, origin=first_dts)
                last_dts = max(packet.dts, last_dts if last_dts is not None else packet.dts)
            pts = packet.pts
            if pts is None:
                continue
            if packet.is_keyframe:
                keyframes.append((len(decode_order), pts))
            if packet.is_keyframe or (len(sizes) >= 5 and packet.size > SPIKE_RATIO * _high(sizes)):
                suspects.append(pts)
            decode_order.append(pts)
            sizes.append(packet.size)
    timeline = sorted(decode_order)
    full: set[int] = set()
    for pts in suspects:
        low = bisect_left(timeline, pts - SUSPECT_FRAMES * ticks)
        full.update(timeline[low : bisect_right(timeline, pts)])
    closed: set[int] = set()
    for k, (position, pts) in enumerate(keyframes):
        following = keyframes[k + 1][0] if k + 1 < len(keyframes) else len(decode_order)
        if all(p >= pts for p in decode_order[position + 1 : following]):
            closed.add(pts)
    return _Timeline(
        pts=timeline, keyframes=keyframes, full=frozenset(full), closed=frozenset(closed), packets=count
    )


def _chunks(timeline: _Timeline, min_packets: int) -> list[_Chunk]:
    """The video cut at keyframes into chunks of at least `min_packets` packets (one chunk if it has no
    keyframe past its first packet)."""
    bounds: list[int] = []
    last = 0
    for position, pts in timeline.keyframes:
        if position - last >= max(min_packets, 1):
            bounds.append(pts)
            last = position
    starts: list[int | None] = [None, *bounds]
    ends: list[int | None] = [*bounds, None]
    return [_Chunk(i, start, end) for i, (start, end) in enumerate(zip(starts, ends, strict=True))]


def _chunk_task(
    path: Path,
    chunk: _Chunk,
    timeline: _Timeline,
    threshold: float,
    guard: DecodeGuard,
    workers: _Workers,
    decoder_threads: int,
    clock: FrameClock | None = None,
) -> Callable[[int], _Changes]:
    def run(task: int) -> _Changes:
        """Decode the chunk's reference frames and suspects' stretches (no deblocking) and compare them;
        with a `clock` (an untimed stream, in one chunk), every frame, timed by it."""
        out = _Changes(threshold)
        with open_video(path) as (container, stream):
            codec = stream.codec_context
            codec.thread_count = decoder_threads
            if decoder_threads > 1:
                stream.thread_type = "AUTO"
            # Without deblocking, small block edges drift within a GOP; on 128-pixel planes they stay
            # far below a cut's change, and decoding gets a good deal cheaper.
            codec.options = {"skip_loop_filter": "all"}
            skipping = clock is None and skips_frames(codec)
            if chunk.start is not None:
                container.seek(chunk.start, stream=stream, backward=True)
            counting = True

            def take(frames: list[Any], packet: Any = None) -> bool:
                """Compare the chunk's frames among `frames` (from `packet`); False once past the chunk's
                end."""
                for frame in frames if clock is None else clock.stamp(frames, packet):
                    if frame.pts is None or (chunk.start is not None and frame.pts < chunk.start):
                        continue
                    if chunk.end is not None and frame.pts >= chunk.end:
                        return False
                    if out.first is None and chunk.start is not None and frame.pts != chunk.start:
                        raise _Misaligned
                    out.see(frame.pts, SmallFrame.of(frame))
                return True

            with demuxed(container, stream) as packets:
                for packet in packets:
                    workers.check()
                    pts = packet.pts
                    if counting and pts is not None and pts == chunk.end and packet.is_keyframe:
                        counting = False  # the next chunk's packets: decoded only to finish this one's frames
                        if pts in timeline.closed:
                            # No later packet shows before this keyframe: the decoder's delayed frames are
                            # the last of the chunk, so drain them rather than decode the keyframe (an
                            # intra frame, several P-frames' work, which the next chunk decodes anyway)
                            # and the packets after it until the decoder outputs it.
                            take(guard.decode(codec, None))
                            break
                    if counting and (pts is not None or (clock is not None and packet.size)):
                        workers.counts[task] += 1
                    if skipping:
                        codec.skip_frame = (
                            "NONREF" if pts is not None and pts not in timeline.full else "DEFAULT"
                        )
                    if not take(guard.decode(codec, packet), packet):
                        break
        if out.first is None and chunk.start is not None:
            raise _Misaligned
        return out

    return run


def _joined(parts: list[_Changes], threshold: float) -> tuple[list[_Change], int]:
    """The chunks' changes in order, with the change across each boundary; and the frames decoded."""
    joined = _Changes(threshold)
    previous: tuple[int, SmallFrame] | None = None
    for part in parts:
        if previous is not None and part.first is not None:
            joined.add(previous, part.first)
        joined.changes.extend(part.changes)
        joined.decoded += part.decoded
        previous = part.last or previous
    return joined.changes, joined.decoded


def _high(values: deque[int]) -> int:
    """The 80th percentile of `values`: above the typical P-frame, below a frame that starts a shot."""
    return sorted(values)[len(values) * 4 // 5]


def _index(timeline: list[int], pts: int) -> int:
    return bisect_left(timeline, pts)


def _keyframe_at(timeline: _Timeline, pts: int) -> int | None:
    """The pts of the last keyframe shown at or before `pts`; None when none is."""
    keys = sorted(key for _, key in timeline.keyframes)
    k = bisect_right(keys, pts)
    return keys[k - 1] if k else None


def _refine_task(
    path: Path,
    change: _Change,
    threshold: float,
    total: int,
    workers: _Workers,
    keyframe: int | None,
    first_pts: int,
) -> Callable[[int], tuple[_Change, int]]:
    def stretch() -> list[tuple[int, SmallFrame]]:
        """Every frame from `change.before` to `change.after`, decoded from the `keyframe` before."""
        frames: list[tuple[int, SmallFrame]] = []
        guard = DecodeGuard(total)
        with open_video(path) as (container, stream):
            codec = stream.codec_context
            codec.options = {"skip_loop_filter": "all"}
            skipping = skips_frames(codec)
            with from_keyframe(container, stream, keyframe, start=first_pts) as packets:
                for packet in packets:
                    workers.check()
                    if packet.pts is not None and skipping:
                        codec.skip_frame = "NONREF" if packet.pts < change.before else "DEFAULT"
                    for frame in guard.decode(codec, packet):
                        if frame.pts is None or frame.pts < change.before:
                            continue
                        if frame.pts > change.after:
                            return frames
                        frames.append((frame.pts, SmallFrame.of(frame)))
        return frames

    def run(task: int) -> tuple[_Change, int]:
        """The largest frame-to-frame change of that stretch, and the frames decoded."""
        frames = stretch()
        workers.counts[task] = 1
        found = _Changes(threshold)
        for before, after in pairwise(frames):
            found.add(before, after)
        return max(found.changes, key=lambda c: c.score, default=change), len(frames)

    return run


def _by_keyframe(targets: list[int], timeline: _Timeline) -> list[tuple[int | None, list[int]]]:
    """The `targets` (sorted pts) grouped by the keyframe at or before each (None: before the first)."""
    groups: dict[int | None, list[int]] = {}
    for pts in targets:
        groups.setdefault(_keyframe_at(timeline, pts), []).append(pts)
    return list(groups.items())


def _thumbnail_task(
    path: Path,
    group: tuple[int | None, list[int]],
    out_dir: Path,
    width: int,
    total: int,
    workers: _Workers,
    first_pts: int,
    clock: FrameClock | None = None,
) -> Callable[[int], dict[int, Path]]:
    keyframe, targets = group
    wanted = set(targets)

    def run(task: int) -> dict[int, Path]:
        """JPEGs of the frames at `targets`, decoded exactly (deblocking on) from the `keyframe` before
        them; with a `clock` (an untimed stream), every frame from the start, timed by it.

        A target whose frame never decodes takes the first frame shown after it (frames come out of the
        decoder in display order, so one past the target means the target's is lost): a recording cut
        mid-GOP starts with frames that refer to pictures it lacks, and its first scene had no
        thumbnail."""
        written: dict[int, Path] = {}
        remaining = sorted(wanted)
        guard = DecodeGuard(total)
        with open_video(path) as (container, stream):
            codec = stream.codec_context
            aspect = pixel_aspect(stream)
            skipping = clock is None and skips_frames(codec)
            with from_keyframe(container, stream, keyframe, start=first_pts) as packets:
                for packet in packets:
                    workers.check()
                    if packet.pts is not None and skipping:
                        codec.skip_frame = "DEFAULT" if packet.pts in wanted else "NONREF"
                    decoded = guard.decode(codec, packet)
                    for frame in decoded if clock is None else clock.stamp(decoded, packet):
                        if frame.pts is None or frame.pts < remaining[0]:
                            continue
                        due = bisect_right(remaining, frame.pts)
                        data, _, _ = encode_jpeg(frame, width, aspect=aspect)
                        for target in remaining[:due]:
                            written[target] = out_dir / f"frame-{target}.jpg"
                            written[target].write_bytes(data)
                            workers.counts[task] += 1
                        del remaining[:due]
                        if not remaining:
                            return written
        return written

    return run


def _cuts(changes: list[_Change], gaps: list[int], threshold: float) -> list[_Change]:
    """The changes that reach `threshold` and stand out from the change per frame around them."""
    return [changes[i] for i in _standing_out(changes, gaps, threshold)]


def _standing_out(changes: list[_Change], gaps: list[int], threshold: float) -> list[int]:
    """Indexes of the changes at `threshold` or above and `ADAPTIVE_RATIO` times their neighbours' rate."""
    rates = [c.score / max(gap, 1) for c, gap in zip(changes, gaps, strict=True)]
    found = []
    for i, change in enumerate(changes):
        if change.score < threshold:
            continue
        around = rates[max(0, i - ADAPTIVE_WINDOW) : i] + rates[i + 1 : i + 1 + ADAPTIVE_WINDOW]
        typical = statistics.median(around) if around else 0.0
        if change.score >= ADAPTIVE_RATIO * typical:
            found.append(i)
    return found


def _without_flashes(cuts: list[_Change], threshold: float, at: Any) -> list[_Change]:
    """Drop each cut followed within `FLASH_MAX_S` by a cut back to a picture like the one before it."""
    kept: list[_Change] = []
    skip_until = -1
    for i, cut in enumerate(cuts):
        if i <= skip_until:
            continue
        back = None
        for j in range(i + 1, len(cuts)):
            if at(cuts[j].after) - at(cut.after) > FLASH_MAX_S:
                break
            after, before = cuts[j].small_after, cut.small_before
            if after is not None and before is not None and after.difference(before) < threshold:
                back = j
                break
        if back is None:
            kept.append(cut)
        else:
            skip_until = back
    return kept
