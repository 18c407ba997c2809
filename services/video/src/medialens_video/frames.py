"""Opening a video and turning decoded frames into what the analysers compare: small planes, JPEGs.

`open_video` is the one place that decides whether a file is a video at all (`UnsupportedInput`) or a
damaged one (`MediaDecodeError`). `SmallFrame.of` reads the 8-bit Y, U and V planes of a decoded frame
in place and keeps a downscaled copy (about 128 x 72 luma), so an analyser holds a few kilobytes per
frame it looks at and nothing per frame it has passed.

Two kinds of input shape every reader. An `untimed` stream, whose frames come without timestamps (every
one of a raw H.264 or HEVC stream, which cannot be sought either; most of an MPEG-PS that times one frame
in a few), is read from its start, every frame decoded, and `FrameClock` times its frames as ffmpeg does.
An interlaced frame holds two fields shown half a frame apart: what is compared (`SmallFrame.of`) and
shown (`encode_jpeg`) of it is its top field.
"""

from __future__ import annotations

import heapq
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from fractions import Fraction
from itertools import chain, islice, pairwise
from pathlib import Path
from typing import Any

import av
import av.error
import numpy as np
import numpy.typing as npt

from medialens_shared.cpus import usable_cpus
from medialens_shared.demux import demuxed, probed
from medialens_shared.errors import MediaDecodeError, UnsupportedInput
from medialens_shared.matroska import duration_tag
from medialens_shared.sniff import ffmpeg_reason, inspect_media, unreadable_media

#: `report(fraction, message)`: progress from an analyser; raises `JobCancelled` to stop it.
Report = Callable[[float, str], None]

#: Demuxers that open files which are not video: text and binary "art" (ANSI, BIN, XBIN, ADF, IDF —
#: FFmpeg picks `bin` for any `.bin` file, `tty` for any `.txt`) and still images (`image2`, `*_pipe`).
_NOT_VIDEO_FORMATS = frozenset({"tty", "bin", "xbin", "adf", "idf", "image2"})

#: Width of the luma plane the analysers compare; chroma is half as wide.
SMALL_WIDTH = 128

#: 8-bit planar formats whose planes are read in place; anything else is converted first.
_PLANAR_8BIT = frozenset({"yuv420p", "yuvj420p", "yuv422p", "yuvj422p", "yuv444p", "yuvj444p"})

#: Share of packets that may fail to decode (concealed by skipping them) before a file counts as damaged.
MAX_BAD_PACKET_SHARE = 0.05

#: Packets whose timestamps `first_timestamp` reads: more than any reordering delay (B-frames) spans.
FIRST_PACKETS = 16
#: How much earlier than a keyframe's time `from_keyframe` seeks again when a seek passed it (then twice as
#: far each time).
SEEK_BACK_S = 1.0

Array = npt.NDArray[np.int16]


@contextmanager
def open_video(path: Path, *, whole: bool = False, with_audio: bool = False) -> Iterator[tuple[Any, Any]]:
    """The open container and the video stream a player shows (`_played_video`: not a cover picture).

    Raises `UnsupportedInput` when the file is not a video (empty, a table, audio only, ...) or its video
    is in a codec FFmpeg has no decoder for,
    `MediaDecodeError` when it looks like media but cannot be opened (or, with `whole`, when it ends
    before the frames its container indexes: see `_require_whole`), and `InputNotFound` when there is
    no file. `with_audio`: the file is looked at longer where an audio track starts late, as for the
    video's (`opened`), for a caller that reads the audio tracks' formats.
    """
    path = Path(path)
    kind = inspect_media(path, noun="a video")
    try:
        container = opened(path, with_audio=with_audio)
    except av.error.FFmpegError as exc:
        raise unreadable_media(exc, kind, not_readable_as="a video") from exc
    with container:
        format_name = container.format.name
        if format_name in _NOT_VIDEO_FORMATS or format_name.endswith("_pipe"):
            raise UnsupportedInput(
                f"The file is not a video: it was read as {container.format.long_name or format_name}."
            )
        video = _played_video(container)
        if video is None:
            raise UnsupportedInput(
                "The file has no video stream" + (" (it is audio only)." if container.streams.audio else ".")
            )
        if video.codec_context is None:  # FFmpeg knows no decoder for its codec (PyAV then gives none)
            raise UnsupportedInput("The file's video stream is in a codec this service cannot decode.")
        if whole:
            _require_whole(path, video.index)
        yield container, video


def opened(path: Path | str, *, with_audio: bool = False) -> Any:
    """The file at `path` opened for reading, looked at longer where the video track (and `with_audio`,
    a decodable audio track) starts late (`probed`). Its tags are read as UTF-8 with what is not UTF-8
    replaced (`\ufffd`): a tag in Latin-1 or CP1252 (Windows tools write WAV and AVI tags so) failed every
    job on the file with a UnicodeDecodeError, PyAV's default being strict. An AVI of H.264 or HEVC with
    B-frames is read without made-up pts (`reordered_avi`)."""
    container = probed(
        lambda options: av.open(str(path), mode="r", options=options, metadata_errors="replace"),
        lambda container: [
            *filter(None, [_played_video(container)]),
            *(container.streams.audio if with_audio else []),
        ],
    )
    if reordered_avi(container):
        container.flags &= ~_GENPTS
    return container


#: libavformat's flag to make up the pts a container does not store (PyAV sets it on every file it opens).
_GENPTS = 1
#: Codecs whose frames an AVI holds in decoding order, B-frames before the frames they are shown after.
_REORDERED_CODECS = frozenset({"h264", "hevc"})


def reordered_avi(container: Any) -> bool:
    """Whether `container` is an AVI whose H.264 or HEVC video has B-frames. AVI stores no pts; the ones
    libavformat makes up (GENPTS, which PyAV sets) are each packet's decoding time plus a frame, and they
    travel with the packets in decoding order: frames came out in display order carrying 1, 4, 3, 5, 2...,
    a cut was missed and thumbnails were up to 3 frames off. Read without them, such a video is `untimed`,
    its frames timed as they come out by `FrameClock`, by their packets' decoding times."""
    return container.format.name == "avi" and any(
        stream.codec_context is not None
        and stream.codec_context.name in _REORDERED_CODECS
        and stream.codec_context.has_b_frames
        for stream in container.streams.video
    )


def _played_video(container: Any) -> Any | None:
    """The video stream a player shows: the first one flagged default, else the first; never a cover
    picture (flagged attached). A Matroska file can hold a still picture as an ordinary track before the
    video (ffmpeg 5.1 wrote `-disposition attached_pic` so), its default flag off: every job analysed
    that one frame. Of those, the ones FFmpeg has a decoder for come first (PyAV gives the others no codec
    context): a track in an unknown codec before a readable one failed every job."""
    streams = [s for s in container.streams.video if not s.disposition & av.stream.Disposition.attached_pic]
    decodable = [s for s in streams if s.codec_context is not None]
    flagged = [s for s in decodable if s.disposition & av.stream.Disposition.default]
    return next(iter(flagged or decodable or streams), None)


def _require_whole(path: Path, index: int) -> None:
    """`MediaDecodeError` when the file ends before the last frames its container's index lists.

    A file cut short after an index written at its start (an MP4 made for streaming, a download that
    stopped) opens and demuxes quietly up to where the bytes end: an analysis would cover part of the video
    and succeed, a probe would report the index's duration. So: a seek, in a container of its own, to the
    last frame the index lists (any frame, not a keyframe: nothing is decoded, and a whole GOP is not read),
    and the read of one packet there, which such a file cannot give. The last frame starts one frame
    interval before the stream's end (`stated_end`, not the container's): Matroska, seeking to any frame,
    skips every packet before the time asked, so a seek past it finds nothing even in a whole file. Where
    the stream states no duration, or the container has no index to hold the file to (MPEG-TS, Matroska
    without cues), seeking searches the bytes that exist, or fails, and this finds nothing wrong. Nor is
    an ASF or an MPEG program stream looked at: their streams' ends are read off their last packets
    (`_ENDS_READ`), so a file cut short ends where its packets do (the look read the end twice, to agree).
    """
    with opened(path) as container:
        # No made-up pts, which are not read here: to make one for the last video frame of an AVI whose
        # sound runs on past it, libavformat read every packet to the end (140 s for 30 minutes of sound).
        container.flags &= ~_GENPTS
        stream = container.streams[index]
        if not stream.duration or container.format.name in _ENDS_READ:
            return
        end = stated_end(container, stream)
        if end is None:
            return
        last_frame = max(stream.start_time or 0, end - frame_ticks(stream))
        try:
            container.seek(last_frame, stream=stream, backward=True, any_frame=True)
        except av.error.FFmpegError:
            return  # no index to seek by: nothing to hold the file to
        with demuxed(container, stream) as packets:
            if any(packet.size for packet in packets):
                return
    raise MediaDecodeError(
        "The file ends before the frames its container lists: it is truncated (a download or copy that "
        "stopped early)."
    )


def average_rate(container: Any, stream: Any) -> Fraction | None:
    """The stream's average frame rate as FFmpeg gives it, but in raw DV (a camcorder's capture) its
    frames' own rate (`guessed_rate`): FFmpeg 8 gives it a time base of 1/60000 s and an average of one
    frame a tick, 60,000 frames/s, its frames 2,400 ticks apart (25/s). (An AVI remuxed from MP4 with
    B-frames has an average of one frame a tick too: there that is its ticks' rate, twice its frames',
    which `avi_frame_ticks` finds.)"""
    rate = stream.average_rate
    if not rate:
        return None
    if container.format.name == "dv" and stream.guessed_rate:
        return Fraction(stream.guessed_rate)
    return Fraction(rate)


def expected_frames(container: Any, stream: Any, *, end: int | None) -> int:
    """The frame count the container states, else the stream's span (to its `end`, the caller's
    `stated_end`, which in an ASF or a program stream reads the last packets; or failing that the
    container's duration) times the average rate, else (a raw stream, which states neither) its packets
    counted, at least 1: a total for progress and the damaged-packet budget, which may be an estimate
    (nothing is read to find the stream's first timestamp)."""
    if stream.frames:
        return int(stream.frames)
    rate = average_rate(container, stream) or stream.guessed_rate
    if end is not None:
        span_s = float((end - (stream.start_time or 0)) * stream.time_base)
    elif (stated_s := stated_duration_s(container)) is not None:
        span_s = stated_s
    else:  # a raw stream states nothing: its packets are counted (reading them costs ~1% of decoding them)
        return max(1, packet_span(container, stream)[0])
    return max(1, round(span_s * float(rate))) if rate else 1


def packet_span(container: Any, stream: Any) -> tuple[int, int]:
    """The count of the stream's packets and the end of the last of them (its timestamp plus its duration;
    for an `untimed` stream the sum of their durations, each one nominal interval where it has none), in
    the stream's time base, read without decoding in a container of its own (the one in use is left as it
    is: an untimed stream cannot be sought back to its start)."""
    count, end, total, ticks = 0, None, 0, frame_ticks(stream)
    with opened(container.name) as own, demuxed(own, own.streams[stream.index]) as packets:
        for packet in packets:
            if not packet.size:
                continue  # the demuxer's flush packet
            count += 1
            total += packet.duration or ticks
            if packet.pts is not None:
                stop = packet.pts + (packet.duration or 0)
                end = stop if end is None else max(end, stop)
    return count, total if end is None else end


def untimed(container: Any, stream: Any) -> bool:
    """Whether frames of the stream come without timestamps, so that they are to be timed by counting them
    (`FrameClock`), reading the stream from its start: some of its first packets holding data carry none
    (they are read in a container of their own). All of them do in a raw H.264 or HEVC elementary stream
    (Annex B, as cameras and pipelines hand it out), which states no start either; some in an MPEG program
    stream whose PES packets hold several frames and a timestamp for the first alone (DVD VOBs, the H.264
    "PS" of CCTV recorders)."""
    return any(p.pts is None for p in _opening_packets(container, stream))


def avi_frame_ticks(container: Any, stream: Any) -> int:
    """How many ticks of its time base an AVI's frames lie apart: 1, as AVI counts, but in one FFmpeg
    remuxed from MP4 with B-frames (`ffmpeg -i in.mp4 -c copy out.avi`) 2, its ticks 1/50 s for 25 frames a
    second, and its header's frame count and rate then count ticks (600 frames at 50 a second for 300 at
    25). The least gap between the decoding times of its first packets, in such a `reordered_avi` alone
    (an MJPEG AVI whose first frames are two ticks apart, then one, is counted as it states); else 1."""
    if not reordered_avi(container):
        return 1
    times = sorted({p.dts for p in _opening_packets(container, stream) if p.dts is not None})
    return min((b - a for a, b in pairwise(times)), default=1)


def _opening_packets(container: Any, stream: Any) -> list[Any]:
    """The stream's first `FIRST_PACKETS` packets holding data, read in a container of its own."""
    with opened(container.name) as own, demuxed(own, own.streams[stream.index]) as packets:
        return list(islice((p for p in packets if p.size), FIRST_PACKETS))


@dataclass(slots=True)
class FrameClock:
    """Times for frames that come without a pts (an `untimed` stream's), as ffmpeg times them: each one at
    the end of the frame before it (that frame's pts plus its duration, which the decoder takes from the
    stream's frame rate: the SPS's, or the raw demuxer's 25 frames/s where the stream states none; else one
    nominal `interval`), the first at `next` (None: frames stay untimed until one comes with a pts). A
    frame that has a pts keeps it. Right only for frames decoded in order, none skipped (`skip_frame` left
    at its default).

    In a `reordered_avi`, whose packets' decoding times are its frames' slots (one a frame, a dropped frame
    an empty chunk's), each frame as it comes out (in display order) takes the least slot among the packets
    sent to the decoder (`stamp`'s `packet`) that no frame has taken: exact across drops (counted one
    interval apart, every frame after a drop was a frame early, and more after each), and from any
    keyframe a seek lands on (a closed GOP's frames fill its own slots)."""

    interval: int
    next: int | None = None
    #: The slots of the packets sent and not yet taken (a heap), in a `reordered_avi`; else None.
    slots: list[int] | None = None

    @classmethod
    def of(cls, container: Any, stream: Any, first: int) -> FrameClock:
        """The clock for `stream`'s frames from `first`: one nominal frame interval (`frame_ticks`) where a
        frame states no duration; by its packets' slots in a `reordered_avi`."""
        return cls(frame_ticks(stream), first, slots=[] if reordered_avi(container) else None)

    def fresh(self) -> FrameClock:
        """A clock as this one was made, for another decoder or after a seek."""
        return replace(self, slots=None if self.slots is None else [])

    def stamp(self, frames: list[Any], packet: Any = None) -> list[Any]:
        """`frames`, decoded from `packet` (None: the decoder drained), each given its time."""
        if self.slots is not None and packet is not None and packet.size and packet.dts is not None:
            heapq.heappush(self.slots, packet.dts)
        for frame in frames:
            if frame.pts is None and self.slots:
                frame.pts = heapq.heappop(self.slots)
            elif frame.pts is None and self.next is not None:
                frame.pts = self.next
            if frame.pts is not None:
                self.next = frame.pts + (frame.duration or self.interval)
        return frames


#: FFmpeg's raw video formats (elementary streams: MPEG-1/2 `.m1v`/`.m2v`, H.264 and HEVC Annex B, MPEG-4
#: part 2 `.m4v`, VC-1, AVS, VVC), which hold no length: a duration FFmpeg gives one is estimated from a
#: bit rate in its first headers ("Estimating duration from bitrate"). A raw MPEG-1 stream of 3 s read
#: 0.02 s: its probe said one frame, and every thumbnail came from its first frame.
RAW_VIDEO_FORMATS = frozenset({"mpegvideo", "h264", "hevc", "m4v", "vc1", "cavsvideo", "avs2", "avs3", "vvc"})


def stated_duration_s(container: Any) -> float | None:
    """The container's duration as the file states it, in seconds; None when it states none (a raw
    stream's is FFmpeg's estimate: `RAW_VIDEO_FORMATS`)."""
    if not container.duration or container.format.name in RAW_VIDEO_FORMATS:
        return None
    return float(container.duration / av.time_base)


def stated_end(container: Any, stream: Any) -> int | None:
    """The end of the stream's last frame (video or audio), in the stream's time base, as the file states
    it: the stream's start plus its own duration (MP4, MPEG-TS, AVI, ...), or in Matroska and WebM the
    stream's `DURATION` tag, where FFmpeg's muxer writes that end (mkvmerge writes the stream's length:
    added to its start). None when the file states neither, and for a raw stream (`RAW_VIDEO_FORMATS`),
    whose duration FFmpeg estimates.

    A Matroska stream has no duration of its own: when FFmpeg's probing does not settle a stream's timing
    (a clip of a few frames, or of frames of megabytes; any audio stream), it gives the stream the
    container's start and duration, which run from 0 to the end of the longest stream (audio that outlasts
    the video, or video that outlasts the audio), so they are not used. Nor are an ASF's (WMV): it states
    only the file's play time, which FFmpeg gives every stream (`_asf_end`).
    """
    if _is_matroska(container):
        tag = duration_tag(stream.metadata)
        if tag is None:
            return None
        start_s = (stream.start_time or 0) * Fraction(stream.time_base)
        return round(tag.end(start_s) / Fraction(stream.time_base))
    if container.format.name == "asf":
        return _asf_end(container, stream)
    if container.format.name == "mpeg" and stream.type == "video" and stream.duration:
        return _program_stream_end(container, stream, int((stream.start_time or 0) + stream.duration))
    if stream.duration and container.format.name not in RAW_VIDEO_FORMATS:
        return int((stream.start_time or 0) + stream.duration)
    return None


#: Containers whose streams' ends `stated_end` reads off their last packets: none is stated (an ASF states
#: the file's play time alone, an MPEG program stream nothing).
_ENDS_READ = frozenset({"asf", "mpeg"})


def _asf_end(container: Any, stream: Any) -> int | None:
    """The end of an ASF stream's last frame, read off its last packets after a seek to the end (in a
    container of its own: the one in use stays where it is); None when that seek fails.

    ASF states no stream's length, only the whole file's play time, which FFmpeg gives each stream from the
    preroll on: 4 s of video beside 10 s of sound counted 251 frames and had its thumbnails spread over
    10 s, and even beside a soundtrack as long it counted a frame too many."""
    with opened(container.name) as own:
        own_stream = own.streams[stream.index]
        try:
            own.seek(round(FAR_FUTURE_S / own_stream.time_base), stream=own_stream, backward=True)
        except av.error.FFmpegError:
            return None
        return latest_end(own, own_stream)


def _program_stream_end(container: Any, stream: Any, estimate: int) -> int:
    """The end of an MPEG program stream's last frame: FFmpeg's `estimate` (from the last timestamps it
    found) set right by reading the last packets, from `_PS_END_FRAMES` frames before it (in a container of
    its own), the first `_PS_SETTLE_PACKETS` of them left out, and counting the frames after the last
    timestamp one interval each.

    A PES packet times only the first of the frames it holds, so FFmpeg's estimate fell 1-8 frames short
    (144 of 152 in a file of small frames; 293 of 300 in a DVD-like one at a low rate), and the first
    packets after a seek come with timestamps half a frame off. Where that reading fails, the estimate
    stands."""
    interval = frame_ticks(stream)
    with opened(container.name) as own:
        own_stream = own.streams[stream.index]
        try:
            own.seek(
                max(estimate - _PS_END_FRAMES * interval, 0), stream=own_stream, backward=True, any_frame=True
            )
        except av.error.FFmpegError:
            return estimate
        last, untimed = None, 0
        with demuxed(own, own_stream) as packets:
            for packet in islice((p for p in packets if p.size), _PS_SETTLE_PACKETS, None):
                if packet.pts is None:
                    untimed += 1
                else:
                    last, untimed = max(packet.pts, last or packet.pts), 0
    return estimate if last is None else last + interval * (1 + untimed)


#: How far before FFmpeg's estimate of a program stream's end `_program_stream_end` reads, in frames, and
#: how many packets of those it leaves out (their timestamps may be off after the seek).
_PS_END_FRAMES = 36
_PS_SETTLE_PACKETS = 12


#: A time past the end of any stream (seconds, small enough to count in microseconds): a seek there
#: lands on the last keyframe.
FAR_FUTURE_S = 1e9


def latest_end(container: Any, stream: Any) -> int | None:
    """The latest end (timestamp plus duration) of the stream's packets from the demuxer's position on."""
    with demuxed(container, stream) as packets:
        return max((p.pts + (p.duration or 0) for p in packets if p.pts is not None), default=None)


def first_timestamp(container: Any, stream: Any) -> int:
    """The video stream's first timestamp: its start as FFmpeg found it, or in Matroska (where that may be
    the container's start, see `stated_end`) the least timestamp of its first packets, read in a container
    of their own, so the one in use stays where it is. (They were read in it, after a seek to the start,
    and sought back to the start after: a truncated file refused that seek at its end, and a file whose
    timestamps are all 0 was left at its last keyframe, so `video.quality` found no frame in the one and
    2 of 50 in the other.)

    A raw stream states no start: then the least timestamp of its first packets too, or 0 when they have
    none (an `untimed` one). A raw MPEG-2 video stream's first frame is shown a frame after its first
    packet is decoded: timed from 0, its black stretch and its thumbnails came a frame later than its
    scenes."""
    stated = int(stream.start_time or 0)
    if stream.start_time is not None and not _is_matroska(container):
        return stated
    return int(min((p.pts for p in _opening_packets(container, stream) if p.pts is not None), default=stated))


def _is_matroska(container: Any) -> bool:
    return str(container.format.name).startswith("matroska")


def frame_ticks(stream: Any) -> int:
    """One nominal frame interval in the stream's time base (at least one tick)."""
    rate = stream.guessed_rate or stream.average_rate or Fraction(25)
    return max(1, round(1 / (Fraction(rate) * Fraction(stream.time_base))))


@contextmanager
def from_keyframe(
    container: Any, stream: Any, keyframe: int | None, *, start: int
) -> Iterator[Iterator[Any]]:
    """The stream's packets in decode order from its keyframe shown at `keyframe` (pts) on, for a `with`
    block that closes the demuxer; None: from where the demuxer is (a container just opened: its start).
    Empty when the keyframe is not found even from the stream's `start`.

    A seek back to a keyframe's time lands on it in an indexed container (MP4, Matroska), but in MPEG-TS
    and MPEG-PS on the packet decoded at that time: with B-frames, one past the keyframe, which is decoded
    before it is shown. Every frame decoded from there was lost to the next keyframe: a scene's refinement
    found nothing to refine, and its thumbnail was missing. So packets are read (not decoded) up to the
    keyframe, the ones before it dropped, and a seek that passed it (a packet decoded after the time it is
    shown) is made again `SEEK_BACK_S` earlier, twice as far each time, down to before `start`."""
    if keyframe is None:
        with demuxed(container, stream) as packets:
            yield packets
        return
    at, back = keyframe, max(1, round(SEEK_BACK_S / stream.time_base))
    while True:
        _seek_anywhere(container, stream, (at, start, 0))
        with demuxed(container, stream) as packets:
            for packet in packets:
                if packet.is_keyframe and packet.pts == keyframe:
                    yield chain((packet,), packets)
                    return
                if packet.dts is not None and packet.dts > keyframe:
                    break  # decoded after the keyframe is shown: past it
        if at < start:
            yield iter(())
            return
        at, back = keyframe - back, back * 2


def _seek_anywhere(container: Any, stream: Any, places: tuple[int, ...]) -> None:
    """A seek back to the first of `places` the demuxer takes (AVI's refuses a time before its first index
    entry); `MediaDecodeError` when it takes none."""
    for where in dict.fromkeys(places):
        try:
            container.seek(where, stream=stream, backward=True)
        except av.error.FFmpegError:
            continue
        return
    raise MediaDecodeError(
        "The video stream cannot be sought, even to its start; the file is probably damaged."
    )


#: Decoders that read `skip_frame` once, as they open, and keep to it. libdav1d (AV1) opened skipping
#: non-reference frames never outputs one, however it is asked later: a thumbnail on one came a frame late
#: (1.04 s for 1.0 s), and a scene starting on one had none.
_SKIP_FIXED_AT_OPEN = frozenset({"libdav1d"})


def skips_frames(codec_context: Any) -> bool:
    """Whether the decoder may be told to skip non-reference frames packet by packet (`skip_frame`): not
    one that would keep skipping them once it opened so (`_SKIP_FIXED_AT_OPEN`), which decodes every frame
    instead."""
    return str(codec_context.name) not in _SKIP_FIXED_AT_OPEN


#: How far a video's times may go back (packets in decode order, frames as shown) before the video is
#: taken for parts joined, each timed anew: a stream made in one piece never goes back, a broken muxer
#: by a frame or two.
TIMES_BACK_S = 1.0


def require_forward(previous: int | None, current: int, *, time_base: Fraction, origin: int) -> None:
    """`UnsupportedInput` when the time `current` lies more than `TIMES_BACK_S` before `previous` (both in
    `time_base`; `origin`, the stream's first time, places them in the message).

    MPEG-TS recordings joined byte by byte, each timed from its own start (a recorder restarted, segments
    across a discontinuity), put frames of both parts at the same times: the scenes of the second part
    were merged into the first's, its black and frozen stretches reported twice at the first's times, and
    nothing said so. `ffmpeg -i joined.ts -c copy out.ts` makes such times continuous.
    """
    if previous is None or float((previous - current) * time_base) <= TIMES_BACK_S:
        return
    raise UnsupportedInput(
        f"The video's times go back by {float((previous - current) * time_base):.1f} s after "
        f"{float((previous - origin) * time_base):.1f} s: it is parts joined, each timed from its own "
        "start, which cannot be put on one timeline. Join them with continuous times (`ffmpeg -i in.ts "
        "-c copy out.ts` does) or send the parts one by one."
    )


def shown_again_at(packet: Any) -> int | None:
    """The time at which `packet` shows the frame before it again, or None when it does not: an empty
    packet with a time of its own (libtheora writes one for each frame that repeats the last; NUT and
    Matroska keep them as written; an AVI's empty chunk, read without made-up pts, has its decoding time
    alone). Not the demuxer's flush packet at the end, which has no time. A decoder sent one takes it for
    the end of the stream and refuses every packet after it: a Theora video holding a still picture
    failed as damaged."""
    if packet.size:
        return None
    at: int | None = packet.pts if packet.pts is not None else packet.dts
    return at


class DecodeGuard:
    """Counts packets the decoder rejects: a few are skipped (as FFmpeg does), many mean damaged media.

    One guard may serve several decoders in threads (chunks of one file), so the count is locked.
    """

    def __init__(self, expected_packets: int) -> None:
        self.bad = 0
        self.limit = max(3, int(expected_packets * MAX_BAD_PACKET_SHARE))
        self._lock = threading.Lock()

    def decode(self, codec_context: Any, packet: Any) -> list[Any]:
        if packet is not None and shown_again_at(packet) is not None:
            return []
        try:
            return list(codec_context.decode(packet))
        except av.error.FFmpegError as exc:
            with self._lock:
                self.bad += 1
            if self.bad > self.limit:
                raise MediaDecodeError(
                    f"The video stream cannot be decoded: {self.bad} damaged packets "
                    f"({ffmpeg_reason(exc)}); the file is probably damaged."
                ) from exc
            return []

    def require_frames(self, decoded: int) -> None:
        if decoded == 0:
            raise MediaDecodeError("The video stream holds no decodable frame; the file is probably damaged.")


@dataclass(frozen=True, slots=True)
class SmallFrame:
    """A decoded frame's planes, downscaled: luma `y` about `SMALL_WIDTH` wide, chroma `u`, `v` half."""

    y: Array
    u: Array
    v: Array
    full_range: bool

    @classmethod
    def of(cls, frame: Any, *, averaged: bool = True) -> SmallFrame:
        """The frame's planes picked down to about twice `SMALL_WIDTH` and, `averaged`, 2 x 2 blocks
        averaged (what the scene detector compares); not averaged, each pixel picked is as decoded, so a
        measure over them estimates one over the whole picture (grain is not smoothed away).

        Averaged, an interlaced frame is read from its top field alone (each row picked from the other
        field is taken from the top field's row above it, so the planes keep their shape, and a stream
        that mixes interlaced and progressive frames compares them alike). Its two fields are shown half a
        frame apart: a cut between them (a switch on a field) spread its change over two frames, each too
        small beside the motion around it, and was found in neither; the top fields hold it whole.
        """
        field = averaged and bool(frame.interlaced_frame)
        frame = planar_8bit(frame)
        width = SMALL_WIDTH if averaged else 2 * SMALL_WIDTH
        y = _shrink(_plane(frame, 0), width, averaged=averaged, field=field)
        u = _shrink(_plane(frame, 1), width // 2, averaged=averaged, field=field)
        v = _shrink(_plane(frame, 2), width // 2, averaged=averaged, field=field)
        return cls(y=y, u=u, v=v, full_range=_full_range(frame))

    def difference(self, other: SmallFrame) -> float:
        """Content change to `other`, 0..255: the mean absolute difference of Y, U and V, averaged.

        Frames of different sizes (a stream that changes resolution) count as entirely different.
        """
        if self.y.shape != other.y.shape or self.u.shape != other.u.shape:
            return 255.0
        dy = np.abs(self.y - other.y).mean()
        du = np.abs(self.u - other.u).mean()
        dv = np.abs(self.v - other.v).mean()
        return float(dy + du + dv) / 3.0

    def mafd(self, other: SmallFrame) -> float:
        """Mean absolute frame difference to `other`, 0..1, over every pixel of Y, U and V alike (as
        FFmpeg's freezedetect counts it: chroma by its own, smaller, count of pixels); 1 for frames of
        different sizes."""
        if self.y.shape != other.y.shape or self.u.shape != other.u.shape:
            return 1.0
        sad = sum(
            int(np.abs(a - b).sum()) for a, b in ((self.y, other.y), (self.u, other.u), (self.v, other.v))
        )
        return sad / (self.y.size + self.u.size + self.v.size) / 255.0


#: FFmpeg's cap on the frame threads it picks itself (`MAX_AUTO_THREADS`).
_MAX_AUTO_THREADS = 16


def frame_threads(stream: Any) -> None:
    """Let the stream's decoder run frame threads, as many as FFmpeg's automatic count (one more than the
    CPUs, one on a single CPU) over the CPUs this process may use (`usable_cpus`): FFmpeg counts every CPU
    of the node in a container, and ran 16 decoding threads (its cap) for a video limited to 2 CPUs."""
    cpus = usable_cpus()
    stream.codec_context.thread_count = 1 if cpus == 1 else min(cpus + 1, _MAX_AUTO_THREADS)
    stream.thread_type = "AUTO"


def planar_8bit(frame: Any) -> Any:
    """The frame in an 8-bit planar YUV format: itself, or converted."""
    return frame if frame.format.name in _PLANAR_8BIT else frame.reformat(format="yuv420p")


def _full_range(frame: Any) -> bool:
    return bool(frame.format.name.startswith("yuvj") or frame.color_range == 2)


def dark_share(frame: Any, threshold: float) -> float:
    """The share of the frame's pixels, every one of them (as blackdetect counts), whose luma (0 black to 1
    white, whatever the range) is at most `threshold`; `frame` in an 8-bit planar format (`planar_8bit`).

    On the whole luma plane, not a downscaled one: averaging smooths grain away (a grainy near-black
    picture read black with 82% of its pixels dark) and smears thin bright lines over their neighbours
    (black with 1.4% of 1-pixel lines read not black), both unlike blackdetect's rule of 98% of pixels."""
    level = threshold * 255.0 if _full_range(frame) else 16.0 + threshold * 219.0
    luma = _plane(frame, 0)
    return float(np.count_nonzero(luma <= level)) / luma.size


def _plane(frame: Any, index: int) -> npt.NDArray[np.uint8]:
    plane = frame.planes[index]
    rows = np.frombuffer(plane, dtype=np.uint8).reshape(plane.height, plane.line_size)
    return rows[:, : plane.width]


def _shrink(plane: npt.NDArray[np.uint8], width: int, *, averaged: bool = True, field: bool = False) -> Array:
    """Pick every n-th pixel down to twice `width`, then average 2 x 2 blocks: cheap and alias-damped.
    Not `averaged`: every n-th pixel down to `width`, as decoded, the rows every odd n-th (n or n + 1), so
    they come from both fields of an interlaced picture: every second row of a 720-wide picture (SD
    broadcast) was its top field alone, and a freeze ended by a change on the bottom field went on.
    `field`: the rows picked from the top field alone (an odd row's place taken by the even row above
    it)."""
    if not averaged:
        step = max(1, plane.shape[1] // width)
        return plane[:: step | 1, ::step].astype(np.int16)
    step = max(1, plane.shape[1] // (2 * width))
    if field:
        rows = np.arange(0, plane.shape[0], step)
        picked = plane[rows - rows % 2, ::step].astype(np.int16)
    else:
        picked = plane[::step, ::step].astype(np.int16)
    rows, cols = (picked.shape[0] // 2) * 2, (picked.shape[1] // 2) * 2
    if rows == 0 or cols == 0:
        return picked
    p = picked[:rows, :cols]
    return (p[0::2, 0::2] + p[1::2, 0::2] + p[0::2, 1::2] + p[1::2, 1::2]) >> 2


def display_rotation(frame: Any) -> int:
    """Clockwise degrees (0, 90, 180 or 270) the frame is to be shown turned by, from the display matrix
    FFmpeg attaches to each decoded frame (PyAV's `rotation` counts counter-clockwise: a portrait phone clip
    says -90)."""
    return (round(-float(frame.rotation or 0) / 90.0) * 90) % 360


#: Pixel shapes taken at their word: a ratio past these is a broken header (or a crafted one, which made a
#: 320 x 45900 JPEG, or failed the encoder), and the pixels are taken as square.
PIXEL_ASPECT_RANGE = (Fraction(1, 4), Fraction(4))


def pixel_aspect(stream: Any) -> Fraction:
    """The shape of the stream's pixels (its sample aspect ratio: 16/11 for PAL 16:9 in 720x576, 4/3 for
    HDV's 1440x1080 shown 1920 wide): the container's first, then the codec's (as FFmpeg guesses it: a
    container's display aspect, set without re-encoding, overrides the bitstream's); 1 where neither states
    one in PIXEL_ASPECT_RANGE."""
    low, high = PIXEL_ASPECT_RANGE
    for ratio in (stream.sample_aspect_ratio, stream.codec_context.sample_aspect_ratio):
        if ratio and low <= Fraction(ratio) <= high:
            return Fraction(ratio)
    return Fraction(1)


#: The tallest thumbnail made (the widest one asked): a picture taller than wide by more than that is
#: made narrower than asked to fit. A 16x2000 source asked at 320 gave a 320x40000 JPEG, and at 3840 a
#: height the scaler refused (INTERNAL_ERROR). The result gives each thumbnail's width and height.
THUMBNAIL_HEIGHT_MAX = 3840


def thumbnail_size(frame: Any, width: int, *, aspect: Fraction = Fraction(1)) -> tuple[int, int]:
    """`width` and the height keeping the frame's aspect as displayed (its pixels `aspect` wide to 1 high,
    then turned), both even (for 4:2:0 JPEG); narrower where the height would pass
    `THUMBNAIL_HEIGHT_MAX`."""
    shown_w, shown_h = frame.width * aspect, Fraction(frame.height)
    if display_rotation(frame) in (90, 270):
        shown_w, shown_h = shown_h, shown_w
    width = max(2, width - width % 2)
    if width * shown_h > THUMBNAIL_HEIGHT_MAX * shown_w:
        width = max(2, int(THUMBNAIL_HEIGHT_MAX * shown_w / shown_h) // 2 * 2)
    height = min(THUMBNAIL_HEIGHT_MAX, max(2, round(width * shown_h / shown_w / 2) * 2))
    return width, height


def encode_jpeg(frame: Any, width: int, *, aspect: Fraction = Fraction(1)) -> tuple[bytes, int, int]:
    """The frame as displayed (its pixels `aspect` wide to 1 high: see `pixel_aspect`; turned by its
    display matrix), resized to `width` with that aspect kept, as JPEG bytes (square pixels), with its
    width and height."""
    out_w, out_h = thumbnail_size(frame, width, aspect=aspect)
    turn = display_rotation(frame)
    if turn or frame.interlaced_frame:  # scale the stored picture, then turn the few pixels left
        stored_w, stored_h = (out_h, out_w) if turn in (90, 270) else (out_w, out_h)
        rgb = _scaled_rgb(frame, stored_w, stored_h)
        turned = np.ascontiguousarray(np.rot90(rgb, k=-turn // 90))
        scaled = av.VideoFrame.from_ndarray(turned, format="rgb24").reformat(format="yuvj420p")
    else:
        scaled = frame.reformat(width=out_w, height=out_h, format="yuvj420p", interpolation="AREA")
        if scaled is frame:
            # Already the size and format asked (full-range 4:2:0 at its own width: MJPEG from a camera,
            # a phone's H.264), so reformat gave the frame itself, and the encoder, retiming what it is
            # given, set the caller's pts to 0: every thumbnail read 0 s, and each scene's overwrote the
            # first's. It is given a copy.
            scaled = av.VideoFrame.from_ndarray(frame.to_ndarray(), format="yuvj420p")
    scaled.pts = None
    encoder = av.CodecContext.create("mjpeg", "w")
    encoder.width, encoder.height = out_w, out_h
    encoder.pix_fmt = "yuvj420p"
    encoder.time_base = Fraction(1, 25)
    encoder.qmin, encoder.qmax = 2, 4
    data = b"".join(bytes(p) for p in [*encoder.encode(scaled), *encoder.encode(None)])
    return data, out_w, out_h


def _scaled_rgb(frame: Any, width: int, height: int) -> npt.NDArray[np.uint8]:
    """The stored picture scaled to `width` x `height`, as RGB. An interlaced frame's from its top field
    alone (as `SmallFrame.of` compares it), scaled across first so that its rows stay apart: scaled whole,
    its fields, shown half a frame apart, were blended into a combed picture of anything that moved."""
    if not frame.interlaced_frame:
        whole = frame.reformat(width=width, height=height, format="rgb24", interpolation="AREA")
        return np.asarray(whole.to_ndarray(), dtype=np.uint8)
    across = frame.reformat(width=width, format="rgb24", interpolation="AREA").to_ndarray()
    top = av.VideoFrame.from_ndarray(np.ascontiguousarray(across[0::2]), format="rgb24")
    return np.asarray(top.reformat(height=height, interpolation="AREA").to_ndarray(), dtype=np.uint8)


def seconds(ticks: int, time_base: Fraction) -> float:
    return float(ticks * time_base)
