"""`video.scenes`: hard cuts found from content change, exact to the frame, without decoding every frame.

How it stays faster than decoding the whole video while finding every cut to the frame:

1. One pass decodes only the reference frames (FFmpeg's `skip_frame=nonref`, deblocking skipped), and
   compares each with the previous one on small Y/U/V planes (`SmallFrame.difference`, 0..255).
2. Every packet is seen before it is decoded, so the pass knows each frame's timestamp, decoded or not.
   A packet much larger than its neighbours (an encoder starts a new shot with a nearly intra-coded
   frame) or a keyframe marks a *suspect*: the few frames around it are decoded in full, so a cut there
   is seen between two adjacent frames.
3. A large change between two decoded frames with skipped frames between them is looked at again:
   a seek to the keyframe before it, then a decode of exactly that stretch (`_refine`).
4. A change counts as a cut when it reaches `threshold` and stands `ADAPTIVE_RATIO` times above the
   typical change per frame around it (PySceneDetect's AdaptiveDetector idea: fast motion raises the
   bar). Optional flash suppression drops a pair of cuts that returns to the same picture within
   `FLASH_MAX_S`; then cuts closer than `min_scene_len_s` to the previous one are dropped.

Timestamps are the decoder's pts (correct on variable frame rate), relative to the first frame. Each
scene's thumbnail is its first frame, encoded when the cut is seen (no second pass over the video).
Memory: a few numbers per frame and a few kilobytes per candidate cut; no frame is kept.
"""

from __future__ import annotations

import statistics
from bisect import bisect_left
from collections import deque
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any

from medialens_video.frames import (
    DecodeGuard,
    Report,
    SmallFrame,
    encode_jpeg,
    expected_frames,
    frame_ticks,
    open_video,
)

#: Content change (0..255, mean of |dY|, |dU|, |dV| on small planes) at which a cut is considered.
DEFAULT_THRESHOLD = 12.0
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
    #: Frames actually decoded (the reference frames plus the stretches around suspects and cuts).
    frames_decoded: int


@dataclass(slots=True)
class _Change:
    """The change from the decoded frame at `before` to the next decoded frame, at `after` (pts)."""

    before: int
    after: int
    score: float
    small_before: SmallFrame | None = None
    small_after: SmallFrame | None = None
    thumbnail: Path | None = None


@dataclass(slots=True)
class _Pass:
    threshold: float
    thumbnail_dir: Path | None
    thumbnail_width: int
    all_pts: list[int] = field(default_factory=list)
    changes: list[_Change] = field(default_factory=list)
    first_thumbnail: Path | None = None
    decoded: int = 0
    _previous: tuple[int, SmallFrame] | None = None

    def see(self, frame: Any) -> None:
        if frame.pts is None:
            return
        small = SmallFrame.of(frame)
        self.decoded += 1
        if self._previous is None:
            self.first_thumbnail = self.thumbnail(frame)
        else:
            before, small_before = self._previous
            change = _Change(before, frame.pts, small.difference(small_before))
            if change.score >= self.threshold:
                # Kept only for likely cuts: the planes for flash suppression, the scene's first frame.
                change.small_before, change.small_after = small_before, small
                change.thumbnail = self.thumbnail(frame)
            self.changes.append(change)
        self._previous = (frame.pts, small)

    def thumbnail(self, frame: Any) -> Path | None:
        if self.thumbnail_dir is None:
            return None
        data, _, _ = encode_jpeg(frame, self.thumbnail_width)
        path = self.thumbnail_dir / f"frame-{frame.pts}.jpg"
        path.write_bytes(data)
        return path


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

    `report(fraction, message)` is called for every packet (it throttles itself) and may raise to stop.
    """
    if thumbnail_dir is not None:
        thumbnail_dir.mkdir(parents=True, exist_ok=True)
    state = _Pass(
        threshold=threshold or DEFAULT_THRESHOLD,
        thumbnail_dir=thumbnail_dir,
        thumbnail_width=thumbnail_width,
    )
    with open_video(path) as (container, stream):
        total = expected_frames(container, stream)
        ticks = frame_ticks(stream)
        time_base = stream.time_base
        stream.thread_type = "AUTO"
        codec = stream.codec_context
        # Without deblocking, small block edges drift within a GOP; on 128-pixel planes they stay far
        # below a cut's change, and decoding gets a good deal cheaper.
        codec.options = {"skip_loop_filter": "all"}
        guard = DecodeGuard(total)
        sizes: deque[int] = deque(maxlen=SIZE_WINDOW)
        suspects: deque[tuple[int, int]] = deque()
        for packet in container.demux(stream):
            pts = packet.pts
            if pts is not None:
                state.all_pts.append(pts)
                if packet.is_keyframe or (len(sizes) >= 5 and packet.size > SPIKE_RATIO * _high(sizes)):
                    suspects.append((pts - SUSPECT_FRAMES * ticks, pts))
                sizes.append(packet.size)
                while suspects and suspects[0][1] < pts - 4 * SUSPECT_FRAMES * ticks:
                    suspects.popleft()
                in_full = any(low <= pts <= high for low, high in suspects)
                codec.skip_frame = "DEFAULT" if in_full else "NONREF"
            else:
                codec.skip_frame = "DEFAULT"
            for frame in guard.decode(codec, packet):
                state.see(frame)
            count = len(state.all_pts)
            report(0.9 * min(count / total, 1.0), f"decoding {count}/{total} frames")
        guard.require_frames(state.decoded)
        timeline = sorted(state.all_pts)
        gaps = [_index(timeline, c.after) - _index(timeline, c.before) for c in state.changes]
        rough = [i for i in _standing_out(state.changes, gaps, state.threshold) if gaps[i] > 1]
        for done, i in enumerate(rough):
            report(0.9 + 0.1 * done / len(rough), f"refining {done + 1}/{len(rough)} possible cuts")
            state.changes[i] = _refine(container, stream, state.changes[i], state, report)
            gaps[i] = _index(timeline, state.changes[i].after) - _index(timeline, state.changes[i].before)

    cuts = _cuts(state.changes, gaps, state.threshold)
    first_pts = timeline[0]

    def at(pts: int) -> float:
        return float((pts - first_pts) * time_base)

    if flash_suppression:
        cuts = _without_flashes(cuts, state.threshold, at)
    kept: list[_Change] = []
    last_s = 0.0
    for cut in cuts:
        if at(cut.after) - last_s >= min_scene_len_s:
            kept.append(cut)
            last_s = at(cut.after)
    last_interval = timeline[-1] - timeline[-2] if len(timeline) > 1 else ticks
    end_pts = timeline[-1] + last_interval
    starts = [(first_pts, state.first_thumbnail)] + [(c.after, c.thumbnail) for c in kept]
    scenes = [
        SceneSpan(
            start_s=at(pts),
            end_s=at(starts[k + 1][0]) if k + 1 < len(starts) else at(end_pts),
            start_frame=_index(timeline, pts),
            end_frame=_index(timeline, starts[k + 1][0]) if k + 1 < len(starts) else len(timeline),
            thumbnail=thumbnail,
        )
        for k, (pts, thumbnail) in enumerate(starts)
    ]
    return SceneAnalysis(scenes=scenes, frames_analyzed=len(timeline), frames_decoded=state.decoded)


def _high(values: deque[int]) -> int:
    """The 80th percentile of `values`: above the typical P-frame, below a frame that starts a shot."""
    return sorted(values)[len(values) * 4 // 5]


def _index(timeline: list[int], pts: int) -> int:
    return bisect_left(timeline, pts)


def _refine(container: Any, stream: Any, change: _Change, state: _Pass, report: Report) -> _Change:
    """The largest frame-to-frame change between `change.before` and `change.after`, decoding all of it."""
    codec = stream.codec_context
    container.seek(change.before, stream=stream, backward=True)
    frames: list[tuple[int, SmallFrame, Any]] = []
    done = False
    for packet in container.demux(stream):
        if packet.pts is not None:
            codec.skip_frame = "NONREF" if packet.pts < change.before else "DEFAULT"
        for frame in codec.decode(packet):
            if frame.pts is None or frame.pts < change.before:
                continue
            if frame.pts > change.after:
                done = True
                break
            frames.append((frame.pts, SmallFrame.of(frame), frame))
        report(0.9, "refining a possible cut")
        if done:
            break
    state.decoded += len(frames)
    best: _Change | None = None
    best_frame: Any = None
    for (pts0, small0, _), (pts1, small1, frame1) in pairwise(frames):
        score = small1.difference(small0)
        if best is None or score > best.score:
            best = _Change(pts0, pts1, score, small0, small1)
            best_frame = frame1
    if best is None:
        return change
    if best.score >= state.threshold:
        best.thumbnail = state.thumbnail(best_frame)
    return best


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
