"""Streamed decoding of a file's first decodable audio stream into float32 blocks (channels, samples).

Every analyser reads its input through `open_audio`: the file is checked (missing, empty, a table), opened
with PyAV, its first frame decoded, then the stream decoded and converted by FFmpeg into float32 blocks of
one second in [-1, 1], so memory does not depend on the file's length. After each block the caller's
`report(fraction, message)` is called: it publishes progress and raises `JobCancelled` when the job was
cancelled, so a cancel takes effect within a second of media.

The blocks follow the frames actually decoded, not the container's declaration of them: the analysis
rate and channel layout are those of the first decoded frame, and a frame in any other sample format,
rate or layout (MP2 declared as float but decoded as 16-bit; two MP3s joined, going from 44.1 to 48 kHz;
ADTS AAC going from mono to stereo) is converted to them. A later rate is resampled to the first one. A
later channel count is remixed to the first layout by FFmpeg's rematrixing (mono onto both channels of
stereo at -3 dB each, stereo into mono as the sum of its channels at -3 dB), which keeps a programme's
loudness: failing would throw away a whole file for a change its players take in their stride. The
peaks of a remixed part are those of the mix (up to 3 dB above its channels' for stereo folded to mono).
Decoding runs in FFmpeg alone while the frames keep the declared format, with PyAV frame by frame
from where they do not (`AudioInput._decoded`), and for a chained Ogg, whose chains can each have their
own codec, rate and channels, with PyAV chain by chain (`_ogg_chains`).

The blocks hold the audio stream's samples from its first decoded one, with no time before it. Where that
sample lies on the media's timeline (time 0 the container's start, as ffprobe's `start_time` reports it)
is `AudioInput.start_s`: 0 for audio that starts with its file, 1.5 for the soundtrack of an MKV or MP4
that comes in 1.5 s after the video. The analysers add it to every time they report, so their times sit
beside the video jobs' (`timeline_start`). A gap in the frames' times, in a container that times each
packet, is handed out as silence (`_Clock`, `_gaps_filled`), so the samples stay on the timeline. In an
MP4 they end where its edit list says the sound does, not with the padding of the codec's last frame
(`played_samples`).

A packet the decoder refuses fails the analysis with `MediaDecodeError` as damage, unless it holds a tag
or padding, not sound (`_TagsAndPadding`: a Lyrics3 tag after an MP3's last frame, zero padding, the ID3v2
tag opening the second of two MP3s joined with `cat`): that one is passed over, as `ffmpeg` passes it. An
AC-3 packet holding a frame and, glued to it, a tag or padding has them passed over and the frame decoded
alone (`ffmpeg` loses that frame). FFmpeg's `amovie` does not say which packet its decoder refused, so from
there PyAV decodes the stream again and tells (`AudioInput._decoded`); where PyAV passes no tag over,
`amovie`'s refusal stands. Zeros are padding only after the sound: with no sound after them
(`_decoded_frames`), and from where an MP3's Xing header says its sound ends, or, in a stream that says
nothing of its length, 64 KiB of them at most (`_TagsAndPadding`).

A sample that is not a number (NaN or infinite, which only float PCM holds) fails the analysis with
`MediaDecodeError` rather than being replaced: it has no level to measure or draw (a NaN silenced the
K-weighting for the rest of the file, an infinity made the peaks infinite), and a stand-in value would
pass off as sound a file that plays a click or a blast there.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import mmap
import queue
import re
import threading
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple

import av
import av.error
import av.filter
import numpy as np
import numpy.typing as npt

from medialens_shared.demux import demuxed, probed, unprobed
from medialens_shared.errors import MediaDecodeError, UnsupportedInput
from medialens_shared.matroska import duration_tag
from medialens_shared.sniff import ffmpeg_reason, inspect_media, unreadable_media

logger = logging.getLogger(__name__)

Block = npt.NDArray[np.float32]
#: `report(fraction, message)`: progress of a job from a worker thread; raises `JobCancelled` on cancel.
Report = Callable[[float, str], None]


#: The most channels a block crosses between FFmpeg and NumPy as planar samples (`fltp`). PyAV 18 counts a
#: planar frame's planes by reading FFmpeg's data pointers until a null one, past the end of the 8 a frame
#: holds (`AV_NUM_DATA_POINTERS`), so a frame of 8 or more planar channels (7.1 and up) crashes the process
#: (SIGSEGV in `to_ndarray`, `from_ndarray`). Those blocks cross packed (`flt`, interleaved: one plane
#: whatever the count) instead, and are transposed; fewer channels stay planar and skip that copy.
PLANAR_CHANNELS_MAX = 7


def sample_format(channels: int) -> str:
    """The float32 sample format blocks of `channels` channels cross PyAV in (see PLANAR_CHANNELS_MAX)."""
    return "fltp" if channels <= PLANAR_CHANNELS_MAX else "flt"


def block_of(frame: Any, channels: int) -> Block:
    """A frame in `sample_format(channels)` as a (channels, n) float32 block."""
    array: Block = frame.to_ndarray()
    if channels <= PLANAR_CHANNELS_MAX:
        return array
    return np.ascontiguousarray(array.reshape(-1, channels).T)


def frame_of(block: Block, layout: str) -> Any:
    """A (channels, n) float32 block as a frame in `sample_format(channels)`."""
    channels = block.shape[0]
    if channels <= PLANAR_CHANNELS_MAX:
        return av.AudioFrame.from_ndarray(np.ascontiguousarray(block), format="fltp", layout=layout)
    packed = np.ascontiguousarray(block.T).reshape(1, -1)
    return av.AudioFrame.from_ndarray(packed, format="flt", layout=layout)


#: How far FFmpeg reads a WAV's samples ahead when opening it (`probesize`; other formats keep the
#: default 5 MB). The default read one second of CD audio whole: 7.5 ms of CPU, most of a probe job's work;
#: 32 KB took 1.0 ms, 4 KB 0.46, every field the same. It does not bound the search for S/PDIF (AC-3 or
#: DTS carried as PCM samples): FFmpeg's WAV reader looks for it in a window of its own at the start of
#: the samples (measured: an AC-3 stream behind 20 KB of silence is found with the default, 32 KB and
#: 4 KB alike, one behind 40 KB with none of them).
WAV_PROBE_BYTES = 4 * 1024


@contextlib.contextmanager
def open_container(path: Path) -> Iterator[tuple[Any, Any]]:
    """The open container and its first audio stream FFmpeg can decode; domain errors for files that are
    not audio."""
    path = Path(path)
    kind = inspect_media(path, noun="audio")
    with path.open("rb") as handle:
        head = handle.read(12)
        wav = head[:4] == b"RIFF" and head[8:12] == b"WAVE"
        if wav:
            _require_whole_wav(handle, size=path.stat().st_size)
    options = {"probesize": str(WAV_PROBE_BYTES)} if wav else {}
    try:
        container = _opened(path, options)
    except av.error.FFmpegError as exc:
        raise unreadable_media(exc, kind, not_readable_as="audio or video") from exc
    with container:
        if not container.streams.audio:
            raise UnsupportedInput(
                "The file has no audio stream"
                + (" (it holds only video or pictures)." if container.streams.video else ".")
            )
        # The first one FFmpeg has a decoder for (and found a format for: `_first_decodable`): a track in
        # an unknown codec, or one never given a packet, before a readable one failed every job.
        stream = _first_decodable(container)
        if stream is None:
            raise UnsupportedInput("The file's audio is in a codec this service cannot decode.")
        if str(container.format.name).startswith(_INDEXED_FORMAT):
            _require_whole_index(path, stream.index)
        elif container.format.name == "mp3":
            _require_whole_mp3(path)
        yield container, stream


def no_packets() -> UnsupportedInput:
    """The error for an audio track the file lists (an MPEG-TS's table) but holds no packet of, which
    FFmpeg found no format for: no sound to measure, rather than damage."""
    return UnsupportedInput(
        "The file lists an audio track but holds none of its sound: there is no audio to read."
    )


def _opened(path: Path | str, options: dict[str, str] | None = None) -> Any:
    """The file at `path` opened for reading with FFmpeg's `options`, looked at longer where a track starts
    late (`probed`; typed `Any`: PyAV's demux iterator is a generator, typed as an Iterator). Its tags are
    read as UTF-8 with what is not UTF-8 replaced (`\ufffd`): a tag in Latin-1 or CP1252 (Windows tools
    write WAV tags so) failed every job on the file with a UnicodeDecodeError, PyAV's default being
    strict."""
    return probed(
        lambda chosen: av.open(str(path), mode="r", options=chosen, metadata_errors="replace"),
        lambda container: [stream] if (stream := _first_decodable(container)) is not None else [],
        options,
    )


#: FFmpeg's name of the MP4 family's demuxer ("mov,mp4,m4a,3gp,3g2,mj2"), whose index lists every packet.
_INDEXED_FORMAT = "mov,"
#: How far before its stated end the last packets of a stream are looked for.
_LAST_PACKETS_S = 0.25


def _require_whole_index(path: Path, index: int) -> None:
    """`MediaDecodeError` when an MP4's index lists packets past the end of the file.

    An MP4 whose index is written first (made for streaming: `faststart`) and that was cut short after it
    (an upload or a download that stopped) opens and decodes quietly up to where its bytes end: a probe
    reported the index's duration and an analysis measured a fragment, and both succeeded. So: in a
    container of its own, a seek to the stream's last quarter second by the index (any packet: nothing is
    decoded) and the read of a packet there, which such a file cannot give. The video service checks its
    stream the same way (`medialens_video.frames._require_whole`); an index written last is lost with the
    end of the file, and such a file does not open at all.
    """
    with _opened(path) as container:
        stream = container.streams[index]
        if not stream.duration or stream.time_base is None:
            return
        start = stream.start_time or 0
        last = max(start, start + stream.duration - round(_LAST_PACKETS_S / stream.time_base))
        try:
            container.seek(last, stream=stream, backward=True, any_frame=True)
        except av.error.FFmpegError:
            return
        with demuxed(container, stream) as packets:
            try:
                if any(packet.size for packet in packets):
                    return
            except av.error.FFmpegError:
                pass  # a packet the index lists that cannot be read where it says: cut short too
    raise MediaDecodeError(
        "The file ends before the sound its index lists: it is truncated (a download or copy that stopped "
        "early)."
    )


#: Chunk sizes at or above this say "unknown" (writers to a pipe, which cannot go back to fill them in).
_RIFF_SIZE_UNKNOWN = 0x7FFFF000
#: How many chunks `_require_whole_wav` walks past looking for `data` before it leaves the file to FFmpeg.
_WAV_CHUNKS_MAX = 64


def _require_whole_wav(handle: BinaryIO, *, size: int) -> None:
    """`MediaDecodeError` when a WAV's `data` chunk declares more bytes than the file holds after it.

    FFmpeg reads such a file quietly to where it ends, so a probe would report the rest's duration and an
    analysis measure a fragment of the sound, and both succeed. The `data` chunk's own size decides, not
    the RIFF header's: a known writer bug puts the whole file's size there (8 bytes too many) in files
    that are complete, and a chunk after the samples (a LIST of tags) cut short loses no sound. One byte
    short is let through: it is the pad byte an odd-sized chunk ends with, which some writers count in
    the size and others leave out. `handle` is just past the 12-byte RIFF header. A header with no `data`
    chunk in reach (garbled) is left to FFmpeg, which tells a damaged file from a foreign one.
    """
    offset = 12
    for _ in range(_WAV_CHUNKS_MAX):
        header = handle.read(8)
        if len(header) < 8:
            return
        chunk_size = int.from_bytes(header[4:8], "little")
        if header[:4] == b"data":
            declared = offset + 8 + chunk_size
            if chunk_size < _RIFF_SIZE_UNKNOWN and size + 1 < declared:
                raise MediaDecodeError(
                    f"The WAV file holds {size:,} bytes of the {declared:,} its header declares: it is "
                    "truncated (a download or copy that stopped early)."
                )
            return
        offset += 8 + chunk_size + (chunk_size & 1)
        if offset >= size:
            return
        handle.seek(offset)


#: Frames an MP3 may hold fewer of than its header declares and be whole: one a writer counted and did not
#: write, and one more for a first frame smaller than the others (a VBR file's header frame).
_MP3_SLACK_FRAMES = 2
#: MPEG audio layer III bit rates (kb/s) by the header's index: MPEG-1, and MPEG-2 and 2.5.
_MP3_KBPS = {
    True: (0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320),
    False: (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),
}
#: Sample rates by the header's version bits (3: MPEG-1, 2: MPEG-2, 0: MPEG-2.5) and rate index.
_MP3_RATES = {3: (44100, 48000, 32000), 2: (22050, 24000, 16000), 0: (11025, 12000, 8000)}


def _require_whole_mp3(path: Path) -> None:
    """`MediaDecodeError` when an MP3's Xing, Info or VBRI header declares more bytes than the file holds.

    LAME (behind most MP3s: FFmpeg, Audacity, iTunes) and Fraunhofer's encoder write in the first frame
    how many frames and bytes the stream has. FFmpeg takes the duration from there and reads a file cut
    short quietly to where it ends: `audio.probe` said 10 s of a file holding 5, and the analyses
    measured the half there, and succeeded. The whole file's size is compared with the stream's
    (`_mp3_whole_end`), so a file cut by less than its tags hold passes. An MP3 without such a header (a
    stream recorded as is) has nothing to tell its length by.
    """
    declared = _mp3_declared(path)
    size = path.stat().st_size
    if declared is not None and size < _mp3_whole_end(declared):
        raise MediaDecodeError(
            f"The MP3 file holds {size:,} bytes, fewer than the {declared[0]:,} of sound its header "
            "declares: it is truncated (a download or copy that stopped early)."
        )


class _Mp3Length(NamedTuple):
    """What an MP3's Xing, Info or VBRI header tells of its length (`_mp3_declared`)."""

    #: The stream's bytes the header declares, from its first frame on.
    stream_bytes: int
    #: The size of its first frame.
    frame_bytes: int
    #: Where its first frame starts in the file (past its ID3v2 tag).
    start: int


def _mp3_declared(path: Path) -> _Mp3Length | None:
    """The stream's bytes an MP3's Xing, Info or VBRI header declares, the size of its first frame and
    where that frame starts; None where it has no such header, or one without the byte count."""
    found = _mp3_first_frame_at(path)
    if found is None:
        return None
    start, frame = found
    declared = _mp3_declared_bytes(frame)
    return None if declared is None else _Mp3Length(declared, _mp3_frame_bytes(frame), start)


def _mp3_whole_end(declared: _Mp3Length) -> int:
    """The least the file of an MP3 whose sound is whole reaches, in bytes from its start, by its header's
    `declared` bytes and first frame's size (`_mp3_declared`): those bytes less `_MP3_SLACK_FRAMES`
    frames. Its tags are not added: should an encoder count its ID3 tag in, a whole file cannot look
    short."""
    return declared.stream_bytes - _MP3_SLACK_FRAMES * declared.frame_bytes


def _mp3_sound_end(declared: _Mp3Length) -> int:
    """Where in the file an MP3's sound ends at the least, by its header (`_mp3_declared`): from its first
    frame, past its ID3v2 tag, the declared bytes less `_MP3_SLACK_FRAMES` frames. Zeros from there on are
    padding (`_TagsAndPadding`); counted from the file's start instead, a cover picture's worth of an
    unfinished download's zeros (a 300 KB tag) passed as padding, the job reading the sound cut short."""
    return declared.start + _mp3_whole_end(declared)


def _mp3_frame_bytes(frame: bytes) -> int:
    """The size of the MPEG audio layer III frame whose header opens `frame`: 144 (MPEG-1) or 72 (MPEG-2
    and 2.5) times its bit rate over its sample rate, and its padding byte; 2,880 (a free-format stream's
    largest) for a header that does not say."""
    version = (frame[1] >> 3) & 3
    mpeg1 = version == 3
    kbps = _MP3_KBPS[mpeg1][frame[2] >> 4] if frame[2] >> 4 < 15 else 0
    rates = _MP3_RATES.get(version)
    rate_index = (frame[2] >> 2) & 3
    if not kbps or rates is None or rate_index == 3:
        return 2880
    return (144 if mpeg1 else 72) * kbps * 1000 // rates[rate_index] + ((frame[2] >> 1) & 1)


def _mp3_declared_bytes(frame: bytes) -> int | None:
    """The stream's bytes that the first frame's Xing or Info header (after the frame's side information,
    whose size depends on the MPEG version and the channels) or VBRI header (32 bytes in) declares; None
    where it has none, or one without the byte count."""
    mpeg1 = (frame[1] >> 3) & 3 == 3
    mono = frame[3] >> 6 == 3
    side = (17 if mono else 32) if mpeg1 else (9 if mono else 17)
    xing = frame[4 + side : 4 + side + 16]
    if xing[:4] in (b"Xing", b"Info") and len(xing) == 16:
        flags = int.from_bytes(xing[4:8], "big")
        if not flags & 2:
            return None
        at = 12 if flags & 1 else 8  # the frame count comes first when there is one
        return int.from_bytes(xing[at : at + 4], "big")
    vbri = frame[36:50]
    if vbri[:4] == b"VBRI" and len(vbri) == 14:
        return int.from_bytes(vbri[10:14], "big")
    return None


@dataclass
class AudioInput:
    """A file's first decodable audio stream, ready to be read once as float32 blocks."""

    #: The rate of the first decoded frame, which every block is at.
    sample_rate: int
    #: FFmpeg's name of the first decoded frame's channel layout ("stereo", "5.1", ...), which every block
    #: is in; its default one for the channel count when the file does not say, its unnamed one ("9
    #: channels") for a count it has no default for (`_named_layout`).
    layout: str
    #: FFmpeg's channel names in stream order (FL, FR, FC, LFE, BL, BR, SL, SR, ...; NONE in an unnamed
    #: layout).
    channel_names: tuple[str, ...]
    #: The duration the metadata announces (`stated_duration`: for progress and planning); None when unknown.
    duration_s: float | None
    #: Where the first sample lies on the media's timeline, in seconds (`timeline_start`); 0 when the audio
    #: starts with the file. Every block's samples follow it without a gap (one in the sound is silence).
    start_s: float
    _path: Path
    _stream_index: int
    #: FFmpeg's options the file was opened with (`container.options`), for `amovie` to open it alike.
    _format_options: dict[str, str]
    #: Whether the file is a chained Ogg, read chain by chain (`_chain_frames`), never by `amovie`.
    _chained: bool
    #: Whether the container times each packet (`_TIMED_FORMATS`), so that its sound can have gaps, which
    #: are filled with silence (`_Clock`).
    _timed: bool
    #: The stream's frames decoded by PyAV, from the first on: read when `amovie` cannot go on.
    _frames: Iterator[Any]
    #: What `_frames` passed over as tags or padding (`_TagsAndPadding`).
    _tags: _TagsAndPadding
    #: The most samples the stream plays (`played_samples`): the decoder's output past them is padding.
    _played: int | None = None
    #: Samples per channel handed out so far.
    samples: int = field(default=0)
    _reading: Generator[Block, None, None] | None = field(default=None, repr=False)

    @property
    def channels(self) -> int:
        return len(self.channel_names)

    def blocks(self, report: Report, *, action: str, block_s: float = 1.0) -> Iterator[Block]:
        """The decoded samples as (channels, n) float32 blocks of about `block_s` seconds each.

        A thread decodes up to two blocks ahead, so decoding overlaps the caller's analysis (FFmpeg and
        NumPy release the GIL). Calls `report` after each block with the fraction read and `action`
        ("measuring loudness"). Raises `MediaDecodeError` when a packet cannot be decoded, a sample is not
        a number (NaN or infinite) or the stream holds no samples. A block is shorter than `block_s` at
        the end and where the stream's format changes.
        """
        target = max(1, round(block_s * self.sample_rate))
        self._reading = _read_ahead(self._decoded(target), depth=2)
        with contextlib.closing(self._reading) as decoded:
            for decoded_block in decoded:
                block = decoded_block
                if self._played is not None and self.samples + block.shape[1] > self._played:
                    block = block[:, : max(0, self._played - self.samples)]
                if block.shape[1]:
                    yield self._hand_out(block, report, action)
                else:  # the decoder reads again what was handed out: a cancel must still get through
                    self._report(report, action)
        if self.samples == 0:
            raise MediaDecodeError(
                "The audio stream holds no decodable samples; the file is probably damaged."
            )

    def close(self) -> None:
        """Stop the decoding thread of a read its caller left midway (its loop raised), so the file is not
        closed under it."""
        if self._reading is not None:
            self._reading.close()

    def _decoded(self, target: int) -> Generator[Block, None, None]:
        """The blocks from `_filtered` (FFmpeg alone, the fastest) until a frame leaves the format the
        container declares, which it cannot take; from then on from `_converted` (PyAV's frames), which
        starts over and skips the samples already handed out. Both give the same samples (compared whole
        on MP2, MP3, AAC, AC-3, DTS, Opus, WMA and 16-channel PCM), so the stream reads on without a seam;
        only a file whose format changes pays for decoding its first part twice. So does one with a packet
        `amovie`'s decoder refuses, which `amovie` does not name: PyAV's frames pass it over if it holds a
        tag or padding and fail on it as damage otherwise (`_decoded_frames`). A stream `amovie` finds no
        format for (`_SourceRefused`) is read by `_converted` from its start."""
        decoded = 0
        refused: av.error.FFmpegError | None = None
        refused_at = 0
        try:
            if not self._chained:
                try:
                    for block in _filtered(
                        self._path,
                        self._stream_index,
                        target,
                        self.channels,
                        self._format_options,
                        timed=self._timed,
                    ):
                        yield self._checked(block, decoded)
                        decoded += block.shape[1]
                except av.error.PatchWelcomeError as exc:
                    logger.info(
                        "audio frames leave their declared format after %.1f s (%s); decoded by PyAV now",
                        decoded / self.sample_rate,
                        ffmpeg_reason(exc),
                    )
                except _SourceRefused as exc:
                    logger.info("amovie found no format for the audio stream (%s); decoded by PyAV", exc)
                except av.error.FFmpegError as exc:
                    logger.info(
                        "amovie's decoder refused a packet after %.1f s (%s); decoded by PyAV now",
                        decoded / self.sample_rate,
                        ffmpeg_reason(exc),
                    )
                    refused, refused_at = exc, decoded
                else:
                    return
            skip = decoded
            for converted in _converted(
                self._frames, rate=self.sample_rate, layout=self.layout, size=target, timed=self._timed
            ):
                block = converted
                if skip:
                    if skip >= block.shape[1]:
                        skip -= block.shape[1]
                        yield block[:, :0]  # nothing to hand out, but `blocks` reports, once a second
                        continue
                    block, skip = np.ascontiguousarray(block[:, skip:]), 0
                yield self._checked(block, decoded)
                decoded += block.shape[1]
            if refused is not None and not self._tags.passed:
                # PyAV's reading found no tag to pass over: what `amovie`'s decoder refused was damage,
                # which PyAV's demuxer may drop unseen (a FLAC frame of garbage: its parser resyncs).
                raise _stopped_decoding(refused_at / self.sample_rate, refused)
        except (av.error.FFmpegError, _Hole) as exc:
            raise _stopped_decoding(decoded / self.sample_rate, exc) from exc

    def _checked(self, block: Block, decoded: int) -> Block:
        """`block`, which follows `decoded` samples; `MediaDecodeError` when a sample is NaN or infinite."""
        finite = np.isfinite(block)  # 10 us a second of stereo: not worth sparing
        if not finite.all():
            at_s = (decoded + int(np.flatnonzero(~finite.all(axis=0))[0])) / self.sample_rate
            raise MediaDecodeError(
                f"The audio holds samples that are not numbers (NaN or infinite) from {at_s:.3f} s on; "
                "the file is damaged, so it has no level to measure or draw."
            )
        return block

    def _hand_out(self, block: Block, report: Report, action: str) -> Block:
        self.samples += block.shape[1]
        self._report(report, action)
        return block

    def _report(self, report: Report, action: str) -> None:
        done_s = self.samples / self.sample_rate
        if self.duration_s:
            fraction = min(done_s / self.duration_s, 0.99)
            report(fraction, f"{action}: {_clock(done_s)} of {_clock(self.duration_s)}")
        else:
            report(0.0, f"{action}: {_clock(done_s)} read")


@contextlib.contextmanager
def open_audio(path: Path) -> Iterator[AudioInput]:
    """Open the first decodable audio stream of the file at `path` for one streamed read.

    Its first frame is decoded here: the analysis takes its rate and layout from it. Raises
    `InputNotFound`, `UnsupportedInput` (empty, a table, no audio stream) or `MediaDecodeError` (media
    that cannot be opened, or whose first packet does not decode).
    """
    with open_container(path) as (container, stream):
        chains = _ogg_chains(container)
        declared = _mp3_declared(Path(path)) if container.format.name == "mp3" else None
        tags = _TagsAndPadding(sound_end=None if declared is None else _mp3_sound_end(declared))
        source = _chain_frames(chains, tags) if len(chains) > 1 else _decoded_frames(container, stream, tags)
        with contextlib.closing(source) as frames:
            try:
                first = next(frames, None)
            except (av.error.FFmpegError, _Hole) as exc:
                raise _stopped_decoding(0.0, exc) from exc
            if first is None and unprobed(stream):
                raise no_packets()
            if first is None:  # nothing to read: `blocks` says so; the declared format stands in
                sample_rate = int(stream.codec_context.sample_rate)
                layout = _named_layout(stream.layout, int(stream.codec_context.channels))
            else:
                sample_rate = int(first.sample_rate)
                layout = _named_layout(first.layout, len(first.layout.channels))
            audio = AudioInput(
                sample_rate=sample_rate,
                layout=layout.name,
                channel_names=tuple(channel.name for channel in layout.channels),
                duration_s=stated_duration(container, stream, chains),
                start_s=timeline_start(container, stream, first),
                _path=Path(path),
                _stream_index=int(stream.index),
                _format_options=dict(container.options),
                _chained=len(chains) > 1,
                _timed=str(container.format.name) in _TIMED_FORMATS,
                _frames=frames if first is None else itertools.chain((first,), frames),
                _tags=tags,
                _played=played_samples(container, stream, sample_rate),
            )
            try:
                yield audio
            finally:
                audio.close()


#: FFmpeg's names of the MP4 and QuickTime demuxer, whose edit list says where a stream's playing ends.
_MP4_FORMAT = "mov,mp4,m4a,3gp,3g2,mj2"


def played_samples(container: Any, stream: Any, sample_rate: int) -> int | None:
    """How many samples an MP4's (or QuickTime's) audio stream plays, at `sample_rate`; None for other
    containers, where the decoder's output is the stream.

    An AAC or Opus encoder pads the last frame out to a whole one, and an MP4's edit list (or its last
    sample's duration) says where the sound ends within it, as gapless players read it. FFmpeg's MP4 reader
    passes that on for the priming at the start, which the decoder drops, but not for the padding at the
    end, which it decodes whole: 1 s of AAC read 1.0027 s (10 ms of sound lasted 21 ms), of Opus 1.0135 s,
    so every waveform was up to a frame longer than the probe's duration, and a trailing silence too. The
    stream's declared duration (its playing time, what the probe reports) bounds the samples handed out.
    """
    if str(container.format.name) != _MP4_FORMAT or not stream.duration or stream.time_base is None:
        return None
    return round(int(stream.duration) * Fraction(stream.time_base) * sample_rate)


def timeline_start(container: Any, stream: Any, first: Any | None) -> float:
    """Where the stream's first decoded sample (`first`, a frame; None when there is none) lies on the
    media's timeline, in seconds: its time less the container's start (ffprobe's format `start_time`, the
    earliest stream's start). 0 when the file states neither, as a WAV does, or the audio starts first.

    The decoded frame's time, not the stream's declared start, as it is where the samples handed out
    begin: a decoder drops an encoder's priming samples (AAC, Opus, MP3's LAME delay) and moves the first
    frame's time past them. Audio that starts with the container (any single-stream file; a video whose
    sound starts with it) gets exactly 0.0, so its times are as they were.
    """
    origin = container.start_time
    if first is not None and first.pts is not None and first.time_base is not None:
        start = first.pts * Fraction(first.time_base)
    elif stream.start_time is not None and stream.time_base is not None:
        start = stream.start_time * Fraction(stream.time_base)
    else:
        return 0.0
    if origin is None:
        return 0.0
    return max(0.0, float(start - Fraction(origin, av.time_base)))


def stated_duration(container: Any, stream: Any, chains: list[str] | None = None) -> float | None:
    """The audio stream's own duration as the file states it, from its first sample to its end (what
    ffprobe reports as the stream's `duration`); None when the file does not say.

    The stream's duration where the container keeps one (MP4, MPEG-TS, WAV, FLAC, ...). Else the span from
    the stream's start to its end, to the microsecond as FFmpeg gives a container's times: the end is the
    `DURATION` tag in Matroska and WebM (FFmpeg's muxer writes the stream's end time there; mkvmerge, its
    length, taken as the duration itself), the container's end otherwise. The container's duration alone
    runs from its start to the end of its longest stream, so it counted the 1.5 s before a late
    soundtrack, or video going on after the audio stopped, as audio (4.0 s for an MKV whose audio lasts
    2.5 s). Audio that spans its container (any single-stream file) gets the container's duration, as
    before.

    A raw MP3 with no header of its length, or a raw (ADTS) AAC, states nothing: FFmpeg estimates a
    duration from the first frames' bit rate, right only at a constant one. Those files' frames are counted
    instead (`_counted_duration`), and so are those of a file that states no length at all, where FFmpeg
    gives none: a WebM or Matroska written as it was recorded (a browser's MediaRecorder, any writer to a
    pipe, which cannot go back to fill in the length), a FLAC written to a pipe (no sample count in its
    STREAMINFO). Those probed with no duration, and the waveform of a long one at a high
    `points_per_second` failed as "longer than its metadata says" instead of lowering its rate to fit.

    Ogg Opus states its length as the granule position of its last page, which counts the pre-skip (the
    encoder's priming, which the decoder drops: RFC 7845 section 4.5): FFmpeg takes it whole, so every Ogg
    Opus file lasted 6.5 ms (libopus's 312 samples) longer than the samples it plays. It is taken off. A
    chained Ogg file (streams one after another: `cat a.opus b.opus`, an internet radio's recording; Opus,
    Vorbis, FLAC) states only its last chain's length (10 s and 3 s chained read 3 s): each chain's packets
    are counted, and their sum stands (`_chains_duration`). `chains`: the file's `_ogg_chains`, where the
    caller has them already (the search of the file's bytes is not made twice).
    """
    if _length_unstated(container):
        counted = _counted_duration(container.name, stream.index)
        if counted is not None:
            return counted
    declared = _declared_duration(container, stream)
    if declared is None:
        return _counted_duration(container.name, stream.index)
    chains = _ogg_chains(container) if chains is None else chains
    if len(chains) > 1:
        return _chains_duration(chains) or declared
    return declared


def _ogg_chains(container: Any) -> list[str]:
    """The chains of an Ogg file, each as a URL FFmpeg opens as a file of its own (its `subfile` protocol,
    a byte range of the file); one for a file of one chain, none for a file that is not Ogg.

    A chained Ogg holds logical streams one after another (`cat a.ogg b.ogg`, an internet radio's
    recording of its programmes), each with its own codec, rate and channels. FFmpeg reads on across a
    chain only while they stay the same: at one that changes them its demuxer stops ("not yet
    implemented"), and `amovie` took that for the file's end, so the jobs measured the first part of the
    file and said nothing. Read one by one, each chain is a file of one stream (`_chain_frames`).
    """
    if str(container.format.name) != "ogg":
        return []
    path = Path(container.name).resolve()
    starts = _ogg_chain_starts(path)
    if len(starts) <= 1:
        return [container.name]
    ends = [*starts[1:], 0]  # `end` 0: to the end of the file
    starts[0] = 0  # the first chain as FFmpeg read it, from the file's start
    return [
        f"subfile,,start,{start},end,{end},,:file:{path}" for start, end in zip(starts, ends, strict=True)
    ]


def _ogg_chain_starts(path: Path) -> list[int]:
    """Where each chain of the Ogg file at `path` begins, in bytes: at a page flagged "beginning of
    stream" (RFC 3533 section 6) that follows a page that is not, whatever the codec (Opus, Vorbis, FLAC).
    The streams of a multiplexed file (Theora video beside Vorbis) all begin on its first pages, one after
    another: one chain. The bytes are searched once (each pattern from where it was last found: searched
    anew from each page, a day's radio recording of hundreds of chains took minutes), a few milliseconds
    a file, so a file of one chain is not demuxed to count its packets on every open (0.4 s for an hour).
    """
    starts: list[int] = []
    with path.open("rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
        patterns = [_OGG_PAGE + bytes([flags]) for flags in _BEGINNING_FLAGS]
        found = [data.find(pattern) for pattern in patterns]
        after_beginning = -1  # where the last beginning page ends
        while any(at >= 0 for at in found):
            page = min(at for at in found if at >= 0)
            found = [
                data.find(p, page + 1) if at == page else at for p, at in zip(patterns, found, strict=True)
            ]
            end = _page_end(data, page)
            if end is None or data[page + 18 : page + 22] != bytes(4):
                continue  # cut short, or not the first page of its stream: a chance match inside a packet
            if page != after_beginning:  # a page of a stream begun earlier lies between
                starts.append(page)
            after_beginning = end
    return starts


def _page_end(data: mmap.mmap, page: int) -> int | None:
    """Where the Ogg page at `page` ends (header, segment table, then the body the table sizes); None
    when its header or table is cut short."""
    table = page + _OGG_HEADER
    if table > len(data) or table + data[table - 1] > len(data):
        return None
    segments = data[table - 1]
    return table + segments + sum(data[table : table + segments])


def _chain_frames(chains: list[str], tags: _TagsAndPadding) -> Generator[Any, None, None]:
    """The frames of each chain's first decodable audio stream (`_ogg_chains`), one chain after the other."""
    for container, stream in _chain_streams(chains):
        yield from _decoded_frames(container, stream, tags)


def _chains_duration(chains: list[str]) -> float | None:
    """The sum of the chains' durations, each counted from its packets (a chain states its own length,
    but the file only its last chain's); None when none gives one. A chain that cannot be read ends the
    count, as a packet does in `_counted_duration` (an analysis then fails there as damaged)."""
    total = 0.0
    with contextlib.suppress(av.error.FFmpegError):
        for container, stream in _chain_streams(chains):
            total += _counted(container, stream) or 0.0
    return total or None


def _chain_streams(chains: list[str]) -> Generator[tuple[Any, Any], None, None]:
    """Each chain opened, with its first decodable audio stream; a chain without one is passed over, and
    so is the last chain when it cannot be opened: the file was cut short in its first pages (a radio
    recording stopped as a programme began), where reading the whole file FFmpeg stops too. Any other
    chain that cannot be opened raises FFmpeg's error."""
    for number, chain in enumerate(chains, start=1):
        try:
            container = _opened(chain)
        except av.error.FFmpegError as exc:
            if number < len(chains):
                raise
            logger.info(
                "the last chain of a chained Ogg cannot be opened (%s): passed over", ffmpeg_reason(exc)
            )
            return
        with container:
            stream = _first_decodable(container)
            if stream is not None:
                yield container, stream


def _first_decodable(container: Any) -> Any | None:
    """The container's first audio stream FFmpeg has a decoder for and found the format of (the first
    it has a decoder for when it found none's, which `_opened` looks for longer); None when it has a
    decoder for none. A broadcast's table can list a track that never has a packet before the one that
    plays: the jobs read no sound in it, and the longer look at it, on every open, cost 64 MiB for
    nothing. A first track that starts past the first look beside a second that does not (rare: a
    programme's tracks start together) leaves the second read."""
    decodable = _decodable(container)
    return next((stream for stream in decodable if not unprobed(stream)), next(iter(decodable), None))


def _decodable(container: Any) -> list[Any]:
    """The container's audio streams FFmpeg has a decoder for (PyAV gives the others no codec context)."""
    return [stream for stream in container.streams.audio if stream.codec_context is not None]


#: An Ogg page's capture pattern and stream structure version; the header type flags follow.
_OGG_PAGE = b"OggS\x00"
#: The bytes of an Ogg page's header before its segment table, whose length is the header's last byte.
_OGG_HEADER = 27
#: The header type flags a page that begins a logical stream can have: "beginning of stream" (0x02), also
#: "end of stream" (0x04) when the stream is one page; never "continued packet".
_BEGINNING_FLAGS = (0x02, 0x06)


def _declared_duration(container: Any, stream: Any) -> float | None:
    """The audio stream's duration as the container declares it (`stated_duration`); None when it does not."""
    if stream.duration and stream.time_base is not None:
        declared = float(stream.duration * stream.time_base)
        if str(container.format.name) == "ogg":
            declared -= _opus_pre_skip(stream) / OPUS_RATE
        return declared
    if not container.duration:
        return None
    whole_s: float = container.duration / av.time_base
    if container.start_time is None or stream.start_time is None or stream.time_base is None:
        return whole_s
    start = max(container.start_time, round(stream.start_time * Fraction(stream.time_base) * av.time_base))
    end = container.start_time + container.duration
    tag = duration_tag(stream.metadata) if str(container.format.name).startswith("matroska") else None
    if tag is not None and tag.is_length:
        return float(tag.seconds)  # mkvmerge's: the track's own length
    if tag is not None:
        end = round(tag.seconds * av.time_base)  # FFmpeg's: where the track ends
    return (end - start) / av.time_base if end > start else whole_s


#: Raw audio formats that hold no length (FFmpeg's names): FFmpeg estimates one from the first frames' bit
#: rate ("Estimating duration from bitrate"), which is wrong at a variable one. 10 s of ADTS AAC (FFmpeg's
#: encoder at 192 kb/s) or of MP3 without a Xing header (LAME's ABR) starting with 3 s of silence read
#: 302.6 s and 44.5 s. An MP3 whose first frame is a Xing, Info or VBRI header (what LAME and FFmpeg write
#: to a file) gives its frame count there, which FFmpeg reads: those are not counted.
_UNSTATED_LENGTH_FORMATS = frozenset({"aac", "mp3"})
#: How far into an MP3 (past its ID3v2 tag) its first frame is looked for.
_MP3_SYNC_SEARCH_BYTES = 4096


def _length_unstated(container: Any) -> bool:
    """Whether the container is a raw audio stream whose duration FFmpeg can only estimate."""
    name = str(container.format.name)
    if name not in _UNSTATED_LENGTH_FORMATS:
        return False
    return name != "mp3" or not _mp3_length_header(Path(container.name))


def _mp3_length_header(path: Path) -> bool:
    """Whether the MP3 at `path` opens (after its ID3v2 tag) with a Xing, Info or VBRI frame, which holds
    the stream's frame count."""
    frame = _mp3_first_frame(path)
    # Xing/Info sit after the frame header and its side information (13 to 38 bytes in), VBRI at 36.
    return frame is not None and (b"Xing" in frame[:48] or b"Info" in frame[:48] or frame[36:40] == b"VBRI")


def _mp3_first_frame(path: Path) -> bytes | None:
    """The first 64 bytes of the MP3 at `path` from its first frame's sync (`_mp3_first_frame_at`)."""
    found = _mp3_first_frame_at(path)
    return None if found is None else found[1]


def _mp3_first_frame_at(path: Path) -> tuple[int, bytes] | None:
    """Where the first frame of the MP3 at `path` starts and its first 64 bytes from its sync, past its
    ID3v2 tag (whose size is four 7-bit bytes, 10 more with a footer: ID3v2.4); None when no frame starts
    in the first `_MP3_SYNC_SEARCH_BYTES` after it."""
    with path.open("rb") as handle:
        tag = handle.read(10)
        offset = 0
        if len(tag) == 10 and tag[:3] == b"ID3":
            offset = _id3v2_length(tag)
        handle.seek(offset)
        head = handle.read(_MP3_SYNC_SEARCH_BYTES + 64)
    sync = next(
        (
            i
            for i in range(min(len(head) - 1, _MP3_SYNC_SEARCH_BYTES))
            if head[i] == 0xFF and head[i + 1] & 0xE0 == 0xE0
        ),
        None,
    )
    return None if sync is None else (offset + sync, head[sync : sync + 64])


def _id3v2_length(header: bytes) -> int:
    """The bytes of the ID3v2 tag whose 10-byte header opens `header`: the header, the size its four
    7-bit bytes give, and a 10-byte footer when flagged (ID3v2.4)."""
    size = (header[6] & 0x7F) << 21 | (header[7] & 0x7F) << 14 | (header[8] & 0x7F) << 7 | header[9] & 0x7F
    return 10 + size + (10 if header[5] & 0x10 else 0)


def _counted_duration(path: str, index: int) -> float | None:
    """The duration of the file's stream at `index` as the sum of its packets' durations (demuxed, not
    decoded: about 2 µs a frame, 0.3 s for an hour of MP3); None when they give none. A packet that cannot
    be read ends the count: the stream's playable part (an analysis then fails there as damaged).

    The time before 0 is left out: a stream whose first packet starts before it (Opus's pre-skip in WebM
    and Ogg, -6.5 ms) holds priming there, which the decoder drops. Padding a codec's last frame ends with
    is counted (13.5 ms at most in a WebM of Opus), as the demuxers do not all say how much of it there is.
    """
    with _opened(path) as container:
        return _counted(container, container.streams[index])


def _counted(container: Any, stream: Any) -> float | None:
    """`_counted_duration` of `stream` in the open `container`."""
    total = 0
    first: int | None = None
    with demuxed(container, stream) as packets:
        try:
            for packet in packets:
                if first is None and packet.pts is not None:
                    first = packet.pts
                total += packet.duration or 0
        except av.error.FFmpegError:
            pass
    total -= max(0, -(first or 0))
    if total <= 0 or stream.time_base is None:
        return None
    return float(total * stream.time_base)


#: Opus's rate whatever the input's: its pre-skip is counted in samples at 48 kHz.
OPUS_RATE = 48000


def _opus_pre_skip(stream: Any) -> int:
    """The pre-skip of an Opus stream (samples at 48 kHz, from its OpusHead: RFC 7845 section 5.1); 0 for
    any other codec."""
    head = bytes(stream.codec_context.extradata or b"")
    if len(head) < 12 or head[:8] != b"OpusHead":
        return 0
    return int.from_bytes(head[10:12], "little")


def _decoded_frames(container: Any, stream: Any, tags: _TagsAndPadding) -> Generator[Any, None, None]:
    """The stream's frames as its decoder gives them, to the decoder's last (PyAV's demuxer ends with an
    empty packet, which drains it). A packet the decoder refuses that holds a tag or padding, not sound
    (`tags`), is passed over, as `ffmpeg` passes it; any other it refuses raises FFmpeg's error. An AC-3
    or E-AC-3 packet whose frames are followed by tags or padding (`_glued_end`) has them passed over
    before its frames are decoded, which keeps the frames. Zeros alone are padding only after the sound:
    should a packet of sound follow them, they were a hole in it (a zeroed block of a download), and
    `_Hole` is raised then.

    Closing this generator closes the demuxer: PyAV keeps memory of one dropped midway for good.
    """
    decoder = stream.codec_context
    hole: _Hole | None = None
    with demuxed(container, stream) as packets:
        for packet in packets:
            sound, padding = packet, None
            frames_end = _glued_end(packet, decoder.name)
            if frames_end is not None:
                rest = memoryview(packet)[frames_end:]
                at = None if packet.pos is None else packet.pos + frames_end
                if tags.are_in(rest, at, glued=True):
                    logger.info(
                        "tags or padding after AC-3 frames (%d bytes at byte %s): passed over",
                        len(rest),
                        at,
                    )
                    sound, padding = _cut(packet, frames_end), rest
            try:
                frames = decoder.decode(sound)
            except av.error.FFmpegError as exc:
                data = memoryview(packet if packet.size else b"")  # an empty packet's buffer is NULL
                if not tags.are_in(data, packet.pos):
                    raise
                logger.info(
                    "a packet of tags or padding (%d bytes at byte %s) refused by the decoder (%s): "
                    "passed over",
                    packet.size,
                    packet.pos,
                    ffmpeg_reason(exc),
                )
                if _zeros_end(data, 0) == len(data):
                    hole = _Hole(packet.pos)
                continue
            if hole is not None and packet.size:
                raise hole
            if padding is not None and _zeros_end(padding, 0) == len(padding):
                hole = _Hole(at)
            for frame in frames:
                if frame.samples:
                    yield frame


class _Hole(Exception):
    """Zeros passed over as padding that sound follows: a hole in the sound (a block of a download lost or
    never written), damage."""

    def __init__(self, position: int | None) -> None:
        where = "" if position is None else f" at byte {position:,}"
        super().__init__(f"zeros{where} where the sound goes on")


#: The codecs whose parser glues what follows a frame and is no frame (a tag, zero padding) onto that
#: frame, and whose decoder then refuses the frame with it: AC-3 and E-AC-3. FFmpeg's decoder reads more
#: than `_AC3_SKIPPED` bytes past a frame as the header of a dependent frame (E-AC-3's extra channels)
#: and fails the packet on anything else, the frame's samples lost (`ffmpeg` loses them too: 32 ms of
#: AC-3 at 48 kHz).
_GLUING_CODECS = frozenset({"ac3", "eac3"})
#: The bytes past its frames an AC-3 packet may hold that FFmpeg's decoder skips itself.
_AC3_SKIPPED = 16
#: AC-3's bit rates (kb/s) by its frame size code halved (ATSC A/52, table 5.18).
_AC3_KBPS = (32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 384, 448, 512, 576, 640)


def _glued_end(packet: Any, codec: str) -> int | None:
    """Where the frames of an AC-3 or E-AC-3 `packet` end (each one's size read from its header, one after
    the other while a frame starts there) when more bytes follow them than the decoder skips; None for a
    packet of any other codec, one holding its frames alone, and one whose bytes start no frame or end
    within one (the decoder tells those)."""
    if codec not in _GLUING_CODECS or packet.size <= _AC3_SKIPPED:
        return None
    data = memoryview(packet)
    end = 0
    while (size := _ac3_frame_bytes(bytes(data[end : end + 6]))) is not None:
        end += size
    return end if end > 0 and end + _AC3_SKIPPED < len(data) else None


def _ac3_frame_bytes(head: bytes) -> int | None:
    """The size of the AC-3 or E-AC-3 frame whose sync word opens `head` (its first 6 bytes), from its
    header (ATSC A/52: AC-3's bit rate and sample rate codes, E-AC-3's `frmsiz` in 16-bit words less
    one); None when no frame starts there."""
    if len(head) < 6 or head[:2] != b"\x0b\x77":
        return None
    bsid = head[5] >> 3
    if bsid > 16:
        return None
    if bsid > 10:  # E-AC-3: frmsiz, 11 bits after the stream type (2) and substream id (3)
        return (((head[2] & 0x07) << 8 | head[3]) + 1) * 2
    sample_rate_code, size_code = head[4] >> 6, head[4] & 0x3F
    if sample_rate_code == 3 or size_code >= 2 * len(_AC3_KBPS):
        return None
    kbps = _AC3_KBPS[size_code >> 1]
    # 1536 samples a frame: 4 bytes a kb/s at 48 kHz, 6 at 32 kHz; at 44.1 kHz 320/147 16-bit words a kb/s
    # rounded down, and a word more for an odd size code.
    if sample_rate_code == 0:
        return kbps * 4
    if sample_rate_code == 2:
        return kbps * 6
    return 2 * (kbps * 320 // 147 + (size_code & 1))


def _cut(packet: Any, size: int) -> Any:
    """A packet of `packet`'s first `size` bytes, at its times."""
    cut = av.Packet(bytes(memoryview(packet)[:size]))
    cut.pts, cut.dts, cut.duration = packet.pts, packet.dts, packet.duration
    if packet.time_base is not None:
        cut.time_base = packet.time_base
    return cut


#: What a tag begins with: ID3v2 (`ID3`), ID3v1 (`TAG`), Lyrics3 and APEv2 (its header).
_TAG_START = re.compile(rb"ID3|TAG|LYRICSBEGIN|APETAGEX")
#: What ends a Lyrics3 tag: `LYRICS200` (version 2) or, looked for after it, `LYRICSEND` (version 1).
_LYRICS3_ENDS = (re.compile(rb"LYRICS200"), re.compile(rb"LYRICSEND"))
#: The most zero bytes taken for padding after the sound of a stream that does not declare how far its
#: sound goes: writers pad a file out to a disk sector or a flash page (512 bytes to 4 KiB), a CD rip or
#: a broadcast capture to a block of its medium or recorder (up to 64 KiB). More zeros than that are
#: taken for sound never written (a download allocated whole and never finished). An MP3 whose header
#: declares its length is judged by it instead (`_TagsAndPadding`).
_PADDING_MAX = 64 * 1024
#: The bytes scanned at once looking for the end of a run of zeros.
_ZEROS_SCAN = 64 * 1024


class _TagsAndPadding:
    """Tells the packets a decoder refuses that are tags or padding, not sound, in one stream's packets.

    The raw MP3 and AC-3 readers hand on as a packet whatever lies between frames or after the last one
    (they read tags at the file's start and ID3v1 at its end): a Lyrics3 tag before the ID3v1 tag, zero
    padding after the last frame, the ID3v2 tag that opens the second of two MP3s joined with `cat`,
    split over several packets when it holds a picture; the AC-3 parser glues a tag or padding after the
    last frame to it (judged apart from the frame: `_glued_end`). The decoder refuses those packets alone,
    and `ffmpeg` reads on past them: so do the jobs. A refused packet of anything else (garbage within the
    sound, a hole of zeros) is damage.

    Zeros are padding only where the sound has ended. Where the stream declares how far its sound goes
    (`sound_end`, a position in the file: an MP3's Xing, Info or VBRI header), zeros from there on are
    padding whatever their length, and zeros before it are the sound missing (a download allocated whole
    and never finished, its end never written). Where it declares nothing, up to `_PADDING_MAX` zero bytes
    in all are padding. Zeros that sound follows are a hole in it whatever their place (`_decoded_frames`).
    """

    def __init__(self, sound_end: int | None = None) -> None:
        #: Where the stream's sound ends at the least, by its own declaration, in the file's bytes.
        self._sound_end = sound_end
        #: Where the last tag found ends, in the file's bytes (0: none found going on past its packet).
        self._tag_end = 0
        #: How many zero bytes were passed over as padding.
        self._zeros = 0
        #: How many refused packets were found to be tags or padding.
        self.passed = 0

    def are_in(self, data: memoryview, position: int | None, *, glued: bool = False) -> bool:
        """Whether `data`, bytes at `position` in the file that the decoder refused (or would: `glued`
        after a frame), holds tags or padding: it starts within a tag an earlier packet began, or with a
        tag or padding, or ends with tags (glued to a frame)."""
        if position is not None and position < self._tag_end:
            self.passed += 1
            return True
        starts = [0, *(match.start() for match in _TAG_START.finditer(data, 1))]
        for start in starts:
            found = _tags_end(data, start, glued=glued or start > 0)
            if found is None:
                continue
            end, zeros, zeros_at = found
            if zeros and not self._padding(zeros, None if position is None else position + zeros_at):
                continue
            if position is not None and end > len(data):
                self._tag_end = position + end
            self._zeros += zeros
            self.passed += 1
            return True
        return False

    def _padding(self, zeros: int, at: int | None) -> bool:
        """Whether `zeros` zero bytes, the first of them at `at` in the file, can be padding after the
        sound: by where the stream declares its sound ends, or where it declares nothing (or the reader
        does not say where the bytes are), by how many zeros there are with those already passed over."""
        if self._sound_end is not None and at is not None:
            return at >= self._sound_end
        return self._zeros + zeros <= _PADDING_MAX


def _tags_end(data: memoryview, at: int, *, glued: bool) -> tuple[int, int, int] | None:
    """Where the tags and padding in `data` from `at` on end (past `len(data)` when the last tag goes on
    beyond it), how many zero bytes are among them and where the first of those is (`at` when none);
    None when something else is among them. A frame may follow a whole tag (the packet's first bytes a
    tag the reader handed on with the next frame), but not zeros, nor any tag `glued` after a frame
    (which must reach the packet's end)."""
    tagged = False
    zeros, zeros_at = 0, at
    while at < len(data):
        if data[at] == 0:
            run_end = _zeros_end(data, at)
            zeros_at = zeros_at if zeros else at
            zeros += run_end - at
            at = run_end
            continue
        end = _tag_end(data, at)
        if end is None:
            return (at, zeros, zeros_at) if tagged and not glued else None
        at, tagged = end, True
    return (at, zeros, zeros_at) if not glued or at == len(data) else None


def _zeros_end(data: memoryview, at: int) -> int:
    """Where the run of zero bytes in `data` from `at` on ends (`len(data)` when it runs to the end),
    looked for `_ZEROS_SCAN` bytes at a time: a packet of padding can be as long as the padding."""
    for start in range(at, len(data), _ZEROS_SCAN):
        chunk = np.frombuffer(data[start : start + _ZEROS_SCAN], dtype=np.uint8)
        if chunk.any():
            return start + int(np.argmax(chunk != 0))
    return len(data)


def _tag_end(data: memoryview, at: int) -> int | None:
    """Where the tag starting at `at` in `data` ends (past `len(data)` when it goes on beyond it); None
    when no tag starts there. Sizes as the tags' specifications give them: ID3v2's four 7-bit bytes (and
    a 10-byte footer when flagged), ID3v1's 128 bytes, APEv2's item bytes and footer after a header, a
    Lyrics3 tag to its end marker (`LYRICS200` for version 2, `LYRICSEND` for 1)."""
    head = bytes(data[at : at + 32])
    if head[:3] == b"ID3" and len(head) >= 10 and head[3] in (2, 3, 4) and max(head[6:10]) < 0x80:
        return at + _id3v2_length(head)
    if head[:3] == b"TAG":
        return at + 128
    if head[:8] == b"APETAGEX" and len(head) == 32 and head[23] & 0x20:  # flags: this is the header
        return at + 32 + int.from_bytes(head[12:16], "little")
    if head[:11] == b"LYRICSBEGIN":
        marker = next((found for mark in _LYRICS3_ENDS if (found := mark.search(data, at)) is not None), None)
        return marker.end() if marker is not None else None
    return None


def _stopped_decoding(seconds: float, exc: Exception) -> MediaDecodeError:
    return MediaDecodeError(
        f"The audio stream stops decoding after {seconds:.1f} s; the file is damaged ({ffmpeg_reason(exc)})."
    )


def _read_ahead(source: Generator[Block, None, None], *, depth: int) -> Generator[Block, None, None]:
    """`source`'s items, produced by a thread at most `depth` items ahead; its errors raised here.

    Closing the iterator (or leaving it by an exception, such as a cancel) stops and joins the thread,
    which closes `source`, so the file is never closed under it.
    """
    items: queue.Queue[tuple[Block | None, BaseException | None]] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: tuple[Block | None, BaseException | None]) -> bool:
        while not stop.is_set():
            try:
                items.put(item, timeout=0.1)
            except queue.Full:
                continue
            return True
        return False

    def produce() -> None:
        with contextlib.closing(source):
            try:
                for block in source:
                    if not put((block, None)):
                        return
            except BaseException as exc:
                put((None, exc))
                return
            put((None, None))

    thread = threading.Thread(target=produce, name="audio-decode", daemon=True)
    thread.start()
    try:
        while True:
            block, error = items.get()
            if error is not None:
                raise error
            if block is None:
                return
            yield block
    finally:
        stop.set()
        thread.join()


def _filtered(
    path: Path, stream_index: int, size: int, channels: int, options: dict[str, str], *, timed: bool
) -> Generator[Block, None, None]:
    """The stream as blocks of `size` samples, float32 (planar up to PLANAR_CHANNELS_MAX channels), the
    last one shorter, decoded and converted by FFmpeg alone, which opens the file with `options` as
    `_opened` did (the longer look at a track that starts late: without it, `amovie` found the track
    without a format and failed).

    FFmpeg's `amovie` source demuxes and decodes, `aformat` converts any sample format to float32 in
    [-1, 1] (after `_gaps_filled` where the container is `timed`), and the sink gathers the codec's
    small frames into blocks: a whole block per call, in C, without the GIL, so the decoding thread does
    not contend with the analysis for it once per codec frame (26,000 times in ten minutes of MP3), as a
    loop over PyAV's frames does even when it only pushes them into a graph (`_converted`; measured, the
    loudness of an hour of 160 kb/s AAC took 6.0 s this way and 8.2 s that way, of 192 kb/s MP3 14.8 and
    16.2 s, of 16-bit WAV 12 s both). `amovie`'s output is fixed to the format the container declares,
    though: a frame in any other sample format, rate or layout fails with `PatchWelcomeError` ("not yet
    implemented in ffmpeg") and ends this.
    """
    source = {"filename": str(path), "streams": str(stream_index)}
    if options:
        source["format_opts"] = ":".join(f"{name}={value}" for name, value in options.items())
    try:
        graph, _, _ = _block_graph(
            lambda graph: (
                _gaps_filled(graph, graph.add("amovie", **source)) if timed else graph.add("amovie", **source)
            ),
            channels=channels,
            size=size,
        )
    except av.error.ArgumentError as exc:
        raise _SourceRefused(ffmpeg_reason(exc)) from exc
    while True:
        try:
            frame = graph.pull()
        except av.error.EOFError:
            return
        yield block_of(frame, channels)


class _SourceRefused(Exception):
    """`amovie` found no format for the stream, which it declares as its output (a track whose first
    packet lies past even `LATE_STREAM_PROBE`'s look): PyAV's decoder, which takes the format from the
    packets, reads it instead (`AudioInput._decoded`)."""


def _block_graph(
    add_source: Callable[[Any], Any], *, channels: int, size: int, **target: str
) -> tuple[Any, Any, Any]:
    """A filter graph (one thread) from the source `add_source` adds to it, through `aformat` to float32
    of `channels` (planar up to PLANAR_CHANNELS_MAX; `target` more of its options: a rate, a layout), to
    a sink giving blocks of `size` samples; the graph, its source and its sink. The user keeps the graph
    while it reads: its filters hold no reference to it, and a graph collected fails every pull."""
    graph = av.filter.Graph()
    graph.threads = 1
    source = add_source(graph)
    convert = graph.add("aformat", sample_fmts=sample_format(channels), **target)
    sink = graph.add("abuffersink")
    source.link_to(convert)
    convert.link_to(sink)
    graph.configure()
    graph.set_audio_frame_size(size)
    return graph, source, sink


def _converted(
    frames: Iterator[Any], *, rate: int, layout: str, size: int, timed: bool
) -> Generator[Block, None, None]:
    """`frames`, in whatever sample formats, rates and layouts they come, as float32 blocks of `size`
    samples at `rate` in `layout` (float32 planar up to PLANAR_CHANNELS_MAX channels).

    Each run of frames in one format goes through a `_Conversion` of its own, flushed when the format
    changes, so the last block of a run is shorter (and so is the stream's last); so is the last block
    before a gap in a `timed` container's sound, which is then filled with silence (`_Clock`).
    """
    conversion: _Conversion | None = None
    clock = _Clock()
    for frame in frames:
        gap = clock.gap_before(frame) if timed else 0
        if conversion is None or conversion.source != _format_of(frame) or gap:
            if conversion is not None and conversion.source != _format_of(frame):
                logger.debug(
                    "audio frames change from %s to %s; converted to %s Hz %s",
                    conversion.source,
                    _format_of(frame),
                    rate,
                    layout,
                )
            if conversion is not None:
                yield from conversion.flushed()
            if gap:
                yield from _silence(
                    round(gap * rate), channels=len(av.AudioLayout(layout).channels), size=size
                )
            conversion = _Conversion(frame, rate=rate, layout=layout, size=size)
        yield from conversion.converted(frame)
    if conversion is not None:
        yield from conversion.flushed()


#: FFmpeg's names of the containers that time each packet (the others time the sound by its samples: WAV,
#: FLAC, MP3, AAC, MP4, Ogg), so that a part of it can be missing and the times after it kept: a
#: broadcast's dropout in MPEG-TS or MPEG-PS, a browser's recording paused in WebM or Matroska, a stream
#: in FLV or ASF. Gaps are filled in those alone: an AVI of VBR MP3, timed by its bytes, drifts from its
#: samples, and filling that would put silences where there are none.
_TIMED_FORMATS = frozenset({"mpegts", "mpeg", "matroska,webm", "flv", "asf"})
#: How much later than the previous frame's end a frame may start before the time between is a gap in
#: the sound, filled with silence: FFmpeg's own threshold for it (`aresample`'s `min_hard_comp`). Timestamps
#: jitter far less (a millisecond in Matroska); a broadcast's dropout lasts seconds.
GAP_S = Fraction(1, 10)
#: The longest gap filled: a frame later than this after the previous one's end follows it instead, a
#: break between recordings joined, not sound lost, as `ffmpeg` reads an MPEG-TS (its
#: `dts_delta_threshold`). Filling a jump of an hour held 3.1 GB in FFmpeg's resampler.
LONGEST_GAP_S = 10
#: FFmpeg's filters doing in `_filtered` what `_Clock` does in `_converted`: `asetpts` moves a frame that
#: starts before the previous one ends, or more than `LONGEST_GAP_S` after, to that end (the previous
#: frame's samples kept in its variable 0), and `aresample`, in its `async` mode, fills with silence
#: where a frame then starts more than `GAP_S` after the previous one's end.
_FOLLOWING_ON = (
    "st(1,if(isnan(PREV_OUTPTS),PTS,"
    f"if(between(PTS-PREV_OUTPTS-ld(0)/SR/TB,0,{LONGEST_GAP_S}/TB),PTS,PREV_OUTPTS+ld(0)/SR/TB)));"
    "st(0,NB_SAMPLES);ld(1)"
)


def _gaps_filled(graph: Any, source: Any) -> Any:
    """`source` (a filter of `graph`) followed by the filters that fill gaps in its sound with silence
    (see `_Clock`); the last of them."""
    forward = graph.add("asetpts", _FOLLOWING_ON)
    filled = graph.add("aresample", f"async=1:min_hard_comp={float(GAP_S)}")
    source.link_to(forward)
    forward.link_to(filled)
    return filled


class _Clock:
    """Where the sound is on the media's timeline, frame by frame: a gap in the frames' times (a
    broadcast's dropout: packets lost, the times after it kept) is owed as silence, so every time after
    it stays where it is; counting samples alone, the silences, loudness and waveform after a 4 s dropout
    came 4 s early. A frame that starts before the previous one ends (times that go back: segments
    joined, each timed from 0) or more than `LONGEST_GAP_S` after it (a break between recordings) follows
    it, as `ffmpeg` reads them, and so does one within `GAP_S` of its end (jitter). What `_gaps_filled`
    has FFmpeg do, for the other path."""

    def __init__(self) -> None:
        self._end: Fraction | None = None  # where the previous frame ends

    def gap_before(self, frame: Any) -> Fraction:
        """The silence owed before `frame` (0 when it follows on)."""
        duration = Fraction(frame.samples, frame.sample_rate)
        if frame.pts is None or frame.time_base is None:  # untimed: it follows on
            start = self._end or Fraction(0)
        else:
            start = frame.pts * Fraction(frame.time_base)
        if self._end is None:
            self._end = start + duration
            return Fraction(0)
        gap = start - self._end if GAP_S < start - self._end <= LONGEST_GAP_S else Fraction(0)
        self._end += gap + duration
        return gap


def _silence(samples: int, *, channels: int, size: int) -> Iterator[Block]:
    """`samples` of silence in `channels`, as blocks of at most `size` samples."""
    for start in range(0, samples, size):
        yield np.zeros((channels, min(size, samples - start)), dtype=np.float32)


def _format_of(frame: Any) -> tuple[str, int, str]:
    """A decoded frame's sample format, rate and layout: what FFmpeg's buffer source is set up for."""
    return (frame.format.name, int(frame.sample_rate), frame.layout.name)


class _Conversion:
    """FFmpeg's conversion of frames in one format (`source`) to float32 at the analysis rate and layout,
    gathered into blocks of `size` samples.

    The frames are pushed into a filter graph (buffer source; `aformat`, whose auto-inserted `aresample`
    converts the sample format, resamples and remixes; a sink cutting blocks of `size`), so conversion
    and gathering run in C, without the GIL. The sink is pulled only when a block is due, as a pull that
    finds none raises, which costs more than converting the frame. FFmpeg's buffer source takes one
    format for its life: a frame in another one needs a new conversion.
    """

    def __init__(self, first: Any, *, rate: int, layout: str, size: int) -> None:
        self.source = _format_of(first)
        self._in_rate, self._out_rate = int(first.sample_rate), rate
        self._channels = len(av.AudioLayout(layout).channels)
        self._size = size
        self._pushed = self._pulled = 0
        in_layout = _named_layout(first.layout, len(first.layout.channels)).name
        self._graph, self._buffer, self._sink = _block_graph(
            lambda graph: graph.add_abuffer(
                format=first.format.name,
                sample_rate=self._in_rate,
                layout=in_layout,
                time_base=Fraction(1, self._in_rate),
            ),
            channels=self._channels,
            size=size,
            sample_rates=str(rate),
            channel_layouts=layout,
        )

    def converted(self, frame: Any) -> Iterator[Block]:
        """The blocks completed by `frame` (most frames complete none)."""
        frame.pts = None  # the blocks' times are their sample counts; a stream's own may jump
        self._buffer.push(frame)
        self._pushed += frame.samples
        while self._pushed * self._out_rate // self._in_rate - self._pulled >= self._size:
            try:
                converted: Any = self._sink.pull()
            except av.error.BlockingIOError:
                return  # the resampler holds a few samples back: the next frame completes the block
            self._pulled += converted.samples
            yield block_of(converted, self._channels)

    def flushed(self) -> Iterator[Block]:
        """The samples still in the graph, the last block shorter."""
        self._buffer.push(None)
        while True:
            try:
                converted = self._sink.pull()
            except (av.error.EOFError, av.error.BlockingIOError):
                return
            yield block_of(converted, self._channels)


def _named_layout(layout: Any, channels: int) -> Any:
    """The stream's layout, or FFmpeg's default one for its channel count when the file names none; for a
    count FFmpeg has none for (9, 11, 13, 15, 17 to 23, 25 and more: second-order ambisonics, a 32-track
    desk recording), its unnamed one ("9 channels", every channel `NONE`). Silence and the
    waveform read any channels; loudness refuses unnamed ones (`loudness.measure_loudness`), which it
    cannot weigh."""
    names = [channel.name for channel in layout.channels]
    if len(names) == channels and "NONE" not in names:
        return layout
    try:
        return av.AudioLayout(f"{channels}c")
    except ValueError:
        return av.AudioLayout(f"{channels} channels")


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"
