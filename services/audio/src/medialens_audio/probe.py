"""`audio.probe`: codec, sample rate, channels, duration and bit rate of the first decodable audio stream.

The values come from the stream's and container's metadata; only the first audio frame is decoded, to
catch damaged media cheaply. A video file with an audio track is probed like any audio file.

`duration_s` is the audio stream's own duration, from its first sample to its last (ffprobe's stream
`duration`; `decode.stated_duration`), not the container's: the soundtrack of an MKV that comes in 1.5 s
after the video, or stops before it, lasts less than the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import av
import av.error

from medialens_audio.decode import no_packets, open_container, stated_duration
from medialens_shared.contracts import AudioProbeResult
from medialens_shared.demux import demuxed, unprobed
from medialens_shared.errors import MediaDecodeError
from medialens_shared.sniff import ffmpeg_reason


def probe_audio(path: Path) -> AudioProbeResult:
    """Describe the first decodable audio stream of the file at `path`.

    Raises `UnsupportedInput` when the file has no audio (empty, a table, a silent video, ...),
    `MediaDecodeError` when it is damaged media (cannot be opened, or its first audio frame does not
    decode) and `InputNotFound` when there is no file.
    """
    with open_container(path) as (container, stream):
        head = _decode_first_frame(container, stream)
        codec_context = stream.codec_context
        duration_s = stated_duration(container, stream)
        return AudioProbeResult(
            codec=_mpeg_audio_codec(str(codec_context.codec.canonical_name), head),
            sample_rate=codec_context.sample_rate,
            channels=codec_context.channels,
            duration_s=duration_s,
            bit_rate=_bit_rate(Path(path), container, stream, duration_s),
        )


def _bit_rate(path: Path, container: Any, stream: Any, duration_s: float | None) -> int | None:
    """The stream's bit rate as FFmpeg states it. Where the file holds nothing but this stream: the
    file's size over `duration_s` when FFmpeg has none, or when its rate comes from a length other than
    ours (counted: `decode.stated_duration`; a raw MP3 or ADTS AAC starting quietly read its first frames'
    rate, 32,000 b/s for a file of 142,000, a chained Ogg its last chain's). None where the file holds
    more than this stream and a cover picture, and states none for the stream (Opus in Matroska, AAC LATM
    in MPEG-TS), as ffprobe says: the container's rate, given before, counted the video (1,114,419 b/s
    for 96 kb/s of Opus). A cover picture (a FLAC's, an MP3's) is not counted as more.

    Where the stated rate is known to be another (`_RATE_COUNTED`: Vorbis states its encoder's nominal
    rate, 160,000 b/s for speech of 88,911; a FLAC or Ogg stream with a cover picture states none, and the
    file's rate counted the picture, 346,544 b/s for 14,483 of sound), the stream's packets are counted
    (demuxed, not decoded: `_packet_bit_rate`), but in a file whose length FFmpeg misses (chained Ogg,
    whose demuxer stops at a chain it cannot follow), which the file's rate stays for."""
    stated_s = container.duration / av.time_base if container.duration else None
    others = [other for other in container.streams if other.index != stream.index]
    if any(not other.disposition & av.stream.Disposition.attached_pic for other in others):
        return stream.bit_rate or None
    if (
        duration_s
        and not others
        and (stated_s is None or abs(stated_s - duration_s) > 0.01 * duration_s + 0.05)
    ):
        return _file_bit_rate(path, duration_s)
    if duration_s and (stream.codec_context.codec.name in _RATE_COUNTED or (others and not stream.bit_rate)):
        return _packet_bit_rate(path, stream.index, duration_s)
    return stream.bit_rate or container.bit_rate or _file_bit_rate(path, duration_s)


#: Codecs whose stated bit rate is not their stream's: Vorbis's header holds its encoder's nominal rate.
_RATE_COUNTED = frozenset({"vorbis"})


def _packet_bit_rate(path: Path, index: int, duration_s: float) -> int | None:
    """The stream at `index`'s packets' bytes over `duration_s`, read in a container of its own (about
    4 us a packet: 0.11 s for 20 minutes of Vorbis)."""
    with av.open(str(path), metadata_errors="replace") as own, demuxed(own, own.streams[index]) as packets:
        size = sum(packet.size for packet in packets)
    return round(size * 8 / duration_s) or None


def _file_bit_rate(path: Path, duration_s: float | None) -> int | None:
    """The file's size over its duration, as FFmpeg gives a container's bit rate; None without a duration.

    FFmpeg has none for a file whose length it does not know (a WebM from a browser's recorder, a FLAC
    written to a pipe): it is worked out here from the duration counted for it (`stated_duration`).
    """
    if not duration_s or duration_s <= 0:
        return None
    return round(path.stat().st_size * 8 / duration_s) or None


def _decode_first_frame(container: Any, stream: Any) -> bytes:
    """Decode the first frame of `stream`; the first bytes of the packet it came from (`_mpeg_audio_codec`
    reads them). `MediaDecodeError` when that fails or there is none, `UnsupportedInput` when there is none
    of a track FFmpeg found no format for (`decode.no_packets`)."""
    try:
        # The demuxer is closed here, not dropped midway: a PyAV demux generator dropped before its end
        # leaves 0.2-1.6 KB behind for good (PyAV 18.1; none once closed), and a probe stops at once.
        with demuxed(container, stream) as packets:
            for packet in packets:
                for _frame in stream.codec_context.decode(packet):
                    return bytes(memoryview(packet)[:4])
    except av.error.FFmpegError as exc:
        raise MediaDecodeError(
            f"The audio stream cannot be decoded; the file is probably damaged ({ffmpeg_reason(exc)})."
        ) from exc
    if unprobed(stream):
        raise no_packets()
    raise MediaDecodeError("The audio stream holds no decodable frame; the file is probably damaged.")


#: MPEG audio's layers by the two layer bits of its frame header (00 is reserved).
_MPEG_AUDIO_LAYERS = {0b11: "mp1", 0b10: "mp2", 0b01: "mp3"}


def _mpeg_audio_codec(name: str, packet: bytes) -> str:
    """`name`, a stream's codec as FFmpeg names it, made exact for MPEG audio by the first bytes of one of
    its packets (a frame header). FFmpeg 8's MPEG-TS demuxer names an MPEG-1/2 audio stream `mp3` (its
    decoder reads layers I and II as well) until its parser has read a frame, which its look at a file of
    soundtracks alone stops before: a radio recording's MP2 was probed as `mp3` where ffprobe says `mp2`.
    (Beside a video the look reads on and names it right, as `video.probe` gives it.)"""
    if name == "mp3" and len(packet) >= 2 and packet[0] == 0xFF and packet[1] & 0xE0 == 0xE0:
        return _MPEG_AUDIO_LAYERS.get(packet[1] >> 1 & 0b11, name)
    return name
