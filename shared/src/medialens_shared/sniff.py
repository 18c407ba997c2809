"""Tell what kind of file an upload is from its first bytes, not from its name.

The gateway uses this to answer 415 before queueing a job its type cannot take; the services use it to
tell damaged media (`MEDIA_DECODE_ERROR`) from a file that was never media (`UNSUPPORTED_INPUT`):
`inspect_media` before they open a file, `unreadable_media` when FFmpeg cannot open it.
Signatures are the containers' own magic numbers; an MP4, MOV, Matroska, WebM, Ogg or MPEG-TS file is audio
or video by the tracks its headers list (`tracklist`). A raw MPEG audio or ADTS stream that does not open on a
frame is audio by frames back to back further on. Plain text (UTF-8, UTF-16 with its byte-order mark, or
Latin-1) is told apart as CSV or JSON lines.
"""

from __future__ import annotations

import codecs
import csv
import re
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from medialens_shared.contracts import FileKind
from medialens_shared.errors import InputNotFound, MediaDecodeError, PermanentJobError, UnsupportedInput
from medialens_shared.tracklist import (
    M2TS_PACKET,
    MATROSKA_HEAD_BYTES,
    TS_PACKET,
    IsoTracks,
    iso_is_audio,
    matroska_is_audio,
    ogg_is_video,
    transport_packets,
    ts_is_audio,
)

#: How many leading bytes `sniff` looks at; callers read this much.
SNIFF_BYTES = 8192

_AUDIO_FTYP_BRANDS = (b"M4A ", b"M4B ", b"M4P ", b"F4A ", b"F4B ")
#: The major brands of still pictures in ISO files: HEIF (`heic`, as phones save photos) and AVIF.
_IMAGE_FTYP_BRANDS = (b"heic", b"heix", b"heim", b"heis", b"mif1", b"avif")
_UTF16_BOMS = (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)
#: The encodings `text_encoding` tells text files by.
TextEncoding = Literal["utf-8", "utf-16", "latin-1"]
#: Control characters text holds none of (tab, line feed and carriage return are text).
_CONTROL = re.compile(rb"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


_EBML_MAGIC = b"\x1a\x45\xdf\xa3"
#: The first box types of an ISO file (MP4, MOV, 3GP); QuickTime's may open without `ftyp`.
_ISO_OPENERS = (b"ftyp", b"moov", b"mdat", b"free", b"wide")


class Sniffer:
    """The kind of a file told from its bytes as they go by (`feed` each chunk in order, then read `kind`):
    as `sniff` tells it from the first of them, but that an ISO file's track list is read wherever it lies
    and a Matroska file's within its first `MATROSKA_HEAD_BYTES` (`tracklist`)."""

    def __init__(self) -> None:
        self._head = bytearray()
        self._iso = IsoTracks()

    def feed(self, chunk: bytes) -> None:
        opening = bytes(self._head[:4]) + chunk[: max(0, 4 - len(self._head))]  # the first chunk may be large
        room = (MATROSKA_HEAD_BYTES if opening.startswith(_EBML_MAGIC) else SNIFF_BYTES) - len(self._head)
        if room > 0:
            self._head += chunk[:room]
        self._iso.feed(chunk)

    @property
    def kind(self) -> FileKind:
        head = bytes(self._head[:SNIFF_BYTES])
        if not head:
            return FileKind.UNKNOWN
        if head.startswith(_UTF16_BOMS) and _looks_like_table_text(head):
            return FileKind.TABLE  # before the media signatures: FF FE is also an MPEG audio frame sync
        if head[4:8] == b"ftyp" and head[8:12] in _IMAGE_FTYP_BRANDS:
            return FileKind.UNKNOWN  # a HEIF or AVIF picture (a phone's photo): an ISO file, not a video
        if head[4:8] in _ISO_OPENERS:  # an audio brand (`M4A `), or else by its tracks
            audio = head[8:12] in _AUDIO_FTYP_BRANDS or iso_is_audio(self._iso)
            return FileKind.AUDIO if audio else FileKind.VIDEO
        if head.startswith(_EBML_MAGIC):  # Matroska / WebM
            return FileKind.AUDIO if matroska_is_audio(bytes(self._head)) else FileKind.VIDEO
        if head.startswith(b"OggS\x00") and ogg_is_video(head):
            return FileKind.VIDEO  # Theora, Dirac or VP8 (the other Ogg codecs FFmpeg reads are audio)
        return _sniff(head)


def sniff(head: bytes) -> FileKind:
    """The kind of a file whose first bytes are `head` (up to `SNIFF_BYTES` of them, or up to
    `MATROSKA_HEAD_BYTES` of a Matroska file); an ISO file whose track list lies past them counts as video."""
    sniffer = Sniffer()
    sniffer.feed(head)
    return sniffer.kind


def _sniff(head: bytes) -> FileKind:
    media = _sniff_media(head)
    if media is not None:
        return media
    if head.startswith((b"PAR1", b"\x1f\x8b", b"\x28\xb5\x2f\xfd")):
        return FileKind.TABLE  # Parquet, gzip or zstd (compressed tables are all we accept)
    if _looks_like_table_text(head):
        return FileKind.TABLE
    if _frames_in_a_row(head):
        return FileKind.AUDIO  # a raw MP3 or ADTS AAC stream begun elsewhere than on a frame
    return FileKind.UNKNOWN


def inspect_media(path: Path, *, noun: str) -> FileKind:
    """The sniffed kind of a service's input file; a missing file is `InputNotFound`, an empty one or a
    table `UnsupportedInput` (named as not `noun`: "audio", "a video")."""
    try:
        with path.open("rb") as handle:
            head = handle.read(SNIFF_BYTES)
    except FileNotFoundError as exc:
        raise InputNotFound(f"The input file {path.name} does not exist.") from exc
    if not head:
        raise UnsupportedInput(f"The file is empty; it is not {noun}.")
    kind = sniff(head)
    if kind is FileKind.TABLE:
        raise UnsupportedInput(f"The file is plain text or a table (CSV, JSON lines, Parquet), not {noun}.")
    return kind


def ffmpeg_reason(exc: Exception) -> str:
    """FFmpeg's own words for an error, without the errno and file path PyAV adds."""
    return str(getattr(exc, "strerror", None) or exc).rstrip(".").lower()


def unreadable_media(exc: Exception, kind: FileKind, *, not_readable_as: str) -> PermanentJobError:
    """The error for a file FFmpeg cannot open: damaged media when its first bytes looked like media,
    else a file that is not `not_readable_as` ("a video") in any format the service reads."""
    if kind in (FileKind.VIDEO, FileKind.AUDIO):
        return MediaDecodeError(
            f"The file looks like {kind.value} but cannot be read; it is probably damaged or "
            f"truncated ({ffmpeg_reason(exc)})."
        )
    return UnsupportedInput(f"The file is not {not_readable_as} in any format this service can read.")


def _sniff_media(head: bytes) -> FileKind | None:
    if head.startswith(b"RIFF") and head[8:12] == b"AVI ":
        return FileKind.VIDEO
    if head.startswith((b"RIFF", b"RF64", b"BW64")) and head[8:12] == b"WAVE":
        return FileKind.AUDIO  # WAV, and its 64-bit forms (EBU's RF64 and BW64) past 4 GB
    if head.startswith(b"riff") and head[24:28] == b"wave":
        return FileKind.AUDIO  # Sony Wave64: GUIDs whose first four bytes spell its chunks
    if head.startswith((b"FLV\x01", b"\x00\x00\x01\xba", b"\x00\x00\x01\xb3", *_VIDEO_MAGIC)):
        return FileKind.VIDEO  # FLV, MPEG program stream, MPEG video; MXF, IVF, Y4M, NUT
    if len(head) >= 4 and int.from_bytes(head[:4], "big") & 0xFFFFFF7F == 0x1F07003F:
        return FileKind.VIDEO  # DV: a DIF sequence's header block (its top bit: 625 lines, else 525)
    if head.startswith(_ASF_GUID):
        return _asf(head)  # WMV or WMA
    if (packets := transport_packets(head)) is not None:  # MPEG-TS or M2TS: audio or video by its PMT
        return FileKind.AUDIO if ts_is_audio(packets) else FileKind.VIDEO
    if _annex_b(head):
        return FileKind.VIDEO  # raw H.264 or HEVC
    if _audio_magic(head) or _dolby_sync(head):  # raw AC-3 and E-AC-3 have no more than a sync word
        return FileKind.AUDIO
    return None


#: The opening bytes of video files FFmpeg reads: MXF's header partition pack key (broadcast and
#: professional cameras' files; an MXF of sound alone, as Avid writes each track, counts as a video: its
#: tracks are not read), IVF (VP8, VP9 or AV1 frames as libvpx and libaom write them), YUV4MPEG2 (raw
#: frames, as pipelines pass them), and NUT.
_VIDEO_MAGIC = (
    bytes.fromhex("060e2b34020501010d010201"),
    b"DKIF\x00\x00 \x00",
    b"YUV4MPEG2 ",
    b"nut/multimedia container\x00",
)
#: DTS's core sync word as a raw stream carries it: big-endian, little-endian and both 14-bit forms.
_DTS_SYNC = (b"\x7f\xfe\x80\x01", b"\xfe\x7f\x01\x80", b"\x1f\xff\xe8\x00", b"\xff\x1f\x00\xe8")
#: The opening bytes of audio files FFmpeg reads that no text a table starts with holds.
_BINARY_AUDIO_MAGIC = (b"fLaC", b"OggS\x00", b"#!AMR", b"wvpk", *_DTS_SYNC)


def _audio_magic(head: bytes) -> bool:
    """Whether `head` opens an audio file by its format's signature: MP3 (its ID3v2 tag or a frame), FLAC, Ogg
    (Vorbis, Opus, FLAC), AIFF, AMR, APE, WavPack, Apple's CAF, Sun's AU, TTA, DSD (DSF) or DTS.

    A signature of four letters (`caff`, `DSD `, `FORM`, `ID3`) also opens many a CSV's header line
    (`caffeine_mg,sleep_h`, `DSD Region,count`, `FORMAT,size`): the fields after it must hold what the
    format puts there, or a table would be refused as audio."""
    if head.startswith(_BINARY_AUDIO_MAGIC):
        return True
    if len(head) > 1 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0:
        return _opens_on_a_frame(head)  # MPEG audio or ADTS AAC frame sync
    if head.startswith(b"ID3"):  # ID3v2: version 2 to 4, then a revision byte
        return len(head) >= 5 and head[3] in (2, 3, 4) and head[4] != 0xFF
    if head.startswith(b"FORM"):  # IFF: a size, then the form type
        return head[8:12] in (b"AIFF", b"AIFC")
    if head.startswith(b"caff"):  # CAF: file version 1, no flags
        return head[4:8] == b"\x00\x01\x00\x00"
    if head.startswith(b"DSD "):  # DSF: its DSD chunk is 28 bytes long (a 64-bit size)
        return head[4:12] == b"\x1c\x00\x00\x00\x00\x00\x00\x00"
    if head.startswith(b".snd"):  # AU: where its samples start (past its 24-byte header), its encoding code
        offset, encoding = int.from_bytes(head[4:8], "big"), int.from_bytes(head[12:16], "big")
        return 24 <= offset < 1 << 20 and 1 <= encoding <= 27
    if head.startswith(b"TTA1"):  # TTA: its format, 1 (integer) or 2 (float), then a channel count
        return head[4:6] in (b"\x01\x00", b"\x02\x00") and head[6:8] != b"\x00\x00"
    if head.startswith(b"MAC "):  # APE: its version number (3.80 to 4.10: 3800 to 4100)
        return len(head) >= 6 and 3800 <= int.from_bytes(head[4:6], "little") <= 4100
    return False


#: How many MPEG audio or ADTS frames must follow each other exactly, each header where the one before ends,
#: for a raw stream that does not open on a frame to count as audio (a stream recorded or a file cut with
#: `dd` mid-frame, zeros before the first frame), as FFmpeg's mp3 and aac probes count them. By chance it
#: takes headers alike at the four places their lengths lead to: none in a million random heads of 8 KiB.
_FRAMES_IN_A_ROW = 4


def _byte_class(accepts: Callable[[int], bool]) -> bytes:
    """A regular expression's class of the bytes `accepts` takes."""
    return b"[" + b"".join(re.escape(bytes([byte])) for byte in range(256) if accepts(byte)) + b"]"


#: The first three bytes of a header a run may open with: an MPEG audio frame's (a version and layer not
#: reserved, then a bit rate neither free nor reserved and a sample rate not reserved) or an ADTS frame's
#: (layer 0, then a sample rate index up to 12).
_FRAME_HEADER = re.compile(
    rb"\xff(?:%s%s|[\xf0\xf1\xf8\xf9]%s)"
    % (
        _byte_class(lambda byte: byte >> 5 == 7 and byte >> 3 & 3 != 1 and byte >> 1 & 3 != 0),
        _byte_class(lambda byte: byte >> 4 not in (0, 15) and byte >> 2 & 3 != 3),
        _byte_class(lambda byte: byte >> 2 & 15 <= 12),
    )
)
#: The bit rates of MPEG audio in kbit/s by version (1, else 2 and 2.5), layer (I, II, III) and index 1-14.
_MPEG_BIT_RATES = {
    (True, 1): (32, 64, 96, 128, 160, 192, 224, 256, 288, 320, 352, 384, 416, 448),
    (True, 2): (32, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 384),
    (True, 3): (32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320),
    (False, 1): (32, 48, 56, 64, 80, 96, 112, 128, 144, 160, 176, 192, 224, 256),
    (False, 2): (8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),
    (False, 3): (8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),
}
#: MPEG-1's sample rates; MPEG-2 halves them, MPEG-2.5 quarters them.
_MPEG_SAMPLE_RATES = (44100, 48000, 32000)
#: Signatures of files that store MP3 files as they are (ZIP, 7z, RAR; tar's is at byte 257), and of
#: programs and libraries (ELF, PE, Mach-O, Java's classes and module images), whose tables of code may
#: read as frames in a row: none of them is a raw stream.
_NOT_A_STREAM_MAGIC = (
    b"PK\x03\x04",
    b"7z\xbc\xaf\x27\x1c",
    b"Rar!\x1a\x07",
    b"\x7fELF",
    b"MZ",
    b"\xfe\xed\xfa\xce",
    b"\xfe\xed\xfa\xcf",
    b"\xce\xfa\xed\xfe",
    b"\xcf\xfa\xed\xfe",
    b"\xca\xfe\xba\xbe",
    b"\xca\xfe\xda\xda",
)
#: An MPEG program stream's pack start code: its packs cut a soundtrack's frames into pieces, but a few may
#: lie in a row within one.
_PACK_START = b"\x00\x00\x01\xba"


def _opens_on_a_frame(head: bytes) -> bool:
    """Whether `head`, which opens with the 11 set bits of a frame sync, opens an MPEG audio or ADTS stream:
    its first header is a valid one and the next frame's, alike, starts where the first ends (or `head`
    ends before it: a file of one frame, or a head cut short). A sync alone opens about one random file in
    1,300 (one with `FF Ex` first): such a file was taken as audio, and audio jobs failed it as damaged
    rather than refusing it. A free-format MP3, whose frames no header gives the length of, is told by the
    headers alike that follow (`_free_format`)."""
    first = _frame_header(head, 0, layer_one=True)
    if first is None:
        return _free_format(head)
    fixed, length = first
    second = _frame_header(head, length, layer_one=True)
    if second is None:
        return len(head) < length + 7
    return second[0] == fixed


def _free_format(head: bytes) -> bool:
    """Whether `head` opens a free-format MPEG audio stream (bit rate index 0; a version, layer and sample
    rate not reserved): its frames' length, which no header gives, is where the next header alike starts, and
    the third must start one such length (give or take a padding byte) after it, unless `head` ends first."""
    if len(head) < 4:
        return False
    header = int.from_bytes(head[:4], "big")
    version, layer, sample_rate = header >> 19 & 3, header >> 17 & 3, header >> 10 & 3
    if header & 0xFFE0F000 != 0xFFE00000 or version == 1 or layer == 0 or sample_rate == 3:
        return False
    fixed = header & _FREE_FORMAT_FIXED

    def alike(at: int) -> bool:
        return int.from_bytes(head[at : at + 4], "big") & _FREE_FORMAT_FIXED == fixed

    second = next((at for at in range(4, min(len(head) - 3, _FREE_FORMAT_LONGEST + 1)) if alike(at)), None)
    if second is None:
        return len(head) <= _FREE_FORMAT_LONGEST
    third = [at for at in (2 * second - 1, 2 * second, 2 * second + 1) if at + 4 <= len(head)]
    return not third or any(alike(at) for at in third)


#: The bits of an MPEG audio header a free-format stream keeps from frame to frame: the sync, version,
#: layer, a bit rate index of 0 and the sample rate.
_FREE_FORMAT_FIXED = 0xFFFEFC00
#: The longest free-format frame FFmpeg reads, in bytes: Layer III at 640 kbit/s and 32 kHz is 2,880.
_FREE_FORMAT_LONGEST = 2881


def _frames_in_a_row(head: bytes) -> bool:
    """Whether `head` holds `_FRAMES_IN_A_ROW` MPEG audio or ADTS frames back to back (same version, layer
    and sample rate; for ADTS, same profile, sample rate and channels), as a raw MP3, MP2 or AAC stream does
    from wherever it was begun, and is not an archive's or a cut multiplex's (`_multiplexed_or_archived`)."""
    match = _FRAME_HEADER.search(head)
    while match is not None:
        if _run_from(head, match.start()):
            return not _multiplexed_or_archived(head)
        match = _FRAME_HEADER.search(head, match.start() + 1)  # the next place, even within this match
    return False


def _run_from(head: bytes, at: int) -> bool:
    """Whether `_FRAMES_IN_A_ROW` frame headers alike follow each other from `at`, each where the frame
    before it ends."""
    first = _frame_header(head, at)
    if first is None:
        return False
    fixed, length = first
    for _ in range(_FRAMES_IN_A_ROW - 1):
        at += length
        header = _frame_header(head, at)
        if header is None or header[0] != fixed:
            return False
        length = header[1]
    return True


def _frame_header(head: bytes, at: int, *, layer_one: bool = False) -> tuple[int, int] | None:
    """The fields of the MPEG audio or ADTS frame header at `at` that stay the same from frame to frame, and
    the frame's length; None when there is none (or it lies past `head`), or it is a Layer I header and not
    `layer_one` (looked for only where a file opens)."""
    if len(head) < at + 7:
        return None
    header = int.from_bytes(head[at : at + 4], "big")
    if header >> 16 & 0xFFF6 == 0xFFF0:  # ADTS: its length, 13 bits, counts its 7 or 9 header bytes
        length = (header & 3) << 11 | head[at + 4] << 3 | head[at + 5] >> 5
        smallest = 7 if header & 0x10000 else 9  # protection_absent, or a CRC
        sample_rate = header >> 10 & 15
        return (header & 0xFFFFFFF0, length) if length >= smallest and sample_rate <= 12 else None
    if header >> 21 != 0x7FF:
        return None
    version, layer = header >> 19 & 3, 4 - (header >> 17 & 3)  # version 3: MPEG-1, 2: MPEG-2, 0: MPEG-2.5
    bit_rate, sample_rate = header >> 12 & 15, header >> 10 & 3
    if (
        version == 1
        or layer == 4
        or (layer == 1 and not layer_one)
        or bit_rate in (0, 15)
        or sample_rate == 3
    ):
        # Reserved, free format (whose frames have no length a header tells), or Layer I mid-stream: no one
        # streams it any more, and its short frames of 4-byte words programs' jump tables mimic: 267 of
        # the x86-64 programs and libraries of a Debian system held four in a row (`ff ff 25 ..` every 64
        # bytes).
        return None
    kbps = _MPEG_BIT_RATES[version == 3, layer][bit_rate - 1]
    rate = _MPEG_SAMPLE_RATES[sample_rate] >> (3 - version if version else 2)
    padding = header >> 9 & 1
    if layer == 1:
        length = (12000 * kbps // rate + padding) * 4
    else:  # MPEG-2 and 2.5 put half the samples in a layer III frame
        length = (144000 if layer == 2 or version == 3 else 72000) * kbps // rate + padding
    return header & 0xFFFE0C00, length


def _multiplexed_or_archived(head: bytes) -> bool:
    """Whether `head` is an archive's (which may store MP3 files as they are) or a program's or library's
    (`_NOT_A_STREAM_MAGIC`), or a program or transport stream's cut so that its signature is gone: it holds
    a pack header, or the sync byte of transport
    packets comes every 188 (or an M2TS's 192) bytes from somewhere in the first packet to the end of
    `head`, at least three times."""
    if head.startswith(_NOT_A_STREAM_MAGIC) or head[257:262] == b"ustar" or _PACK_START in head:
        return True
    for size in (TS_PACKET, M2TS_PACKET):
        for at in range(size):
            syncs = head[at::size]
            if len(syncs) >= 3 and syncs == b"\x47" * len(syncs):
                return True
    return False


#: The header object GUID every ASF file (WMV, WMA) opens with, and the stream type GUID of a video
#: stream (each in the file's byte order).
_ASF_GUID = bytes.fromhex("3026b2758e66cf11a6d900aa0062ce6c")
_ASF_VIDEO_STREAM = bytes.fromhex("c0ef19bc4d5bcf11a8fd00805f5c442b")


def _asf(head: bytes) -> FileKind:
    """An ASF file's kind: video when its header lists a video stream (WMV), else audio (WMA). The stream
    properties objects are in its header, within the first kilobytes."""
    return FileKind.VIDEO if _ASF_VIDEO_STREAM in head else FileKind.AUDIO


def _dolby_sync(head: bytes) -> bool:
    """Whether `head` opens with an AC-3 or E-AC-3 frame: the sync word 0B 77, a sample rate code that is
    not the reserved one, and a bitstream id of AC-3 (up to 10) or E-AC-3 (11 to 16). Two bytes alone
    would take one file in 65,536 of any other kind for audio."""
    if len(head) < 6 or head[:2] != b"\x0b\x77":
        return False
    bsid = head[5] >> 3
    if bsid <= 10:
        return head[4] >> 6 != 3  # AC-3's sample rate code (E-AC-3 uses 3 for its reduced rates)
    return bsid <= 16


#: An Annex B start code (H.264 and HEVC elementary streams: `.h264`, `.264`, `.hevc`, `.265`).
_START_CODE = re.compile(rb"\x00\x00\x00?\x01")
#: The NAL units a raw stream opens with. H.264 (one header byte, its top bit 0): SEI 6 and access unit
#: delimiter 9 with nal_ref_idc 0, a sequence parameter set 7 with it not 0. HEVC (two bytes, forbidden and
#: top layer bits 0, temporal id + 1 at least 1): VPS 32, SPS 33, AUD 35, prefix SEI 39.
_H264_OPENERS = frozenset({0x06, 0x09, 0x27, 0x47, 0x67})
_HEVC_OPENERS = frozenset({32, 33, 35, 39})


def _annex_b(head: bytes) -> bool:
    """Whether `head` is the start of a raw H.264 or HEVC stream: a start code at byte 0 and a NAL unit such
    a stream opens with, then another start code (its next parameter set or slice) within `head`."""
    opened = _START_CODE.match(head)
    if opened is None or len(head) < opened.end() + 2:
        return False
    first, second = head[opened.end()], head[opened.end() + 1]
    h264 = first in _H264_OPENERS
    hevc = first & 0x81 == 0 and (first >> 1) in _HEVC_OPENERS and second & 0xF8 == 0 and second & 0x07 != 0
    return (h264 or hevc) and _START_CODE.search(head, opened.end()) is not None


def text_encoding(head: bytes) -> TextEncoding | None:
    """The encoding of a text file whose first bytes are `head`: `utf-16` by its byte-order mark, `utf-8`
    when they decode as such (a character cut at the end allowed), else `latin-1` when they hold no control
    character but tab and line ends (spreadsheets still export Latin-1 and Windows-1252, whose signs in
    0x80-0x9F the data service reads as Windows-1252's); None when they are not text."""
    if head.startswith(_UTF16_BOMS):
        return "utf-16"
    if b"\x00" in head:
        return None
    try:
        codecs.getincrementaldecoder("utf-8")(errors="strict").decode(head)
    except UnicodeDecodeError:
        return "latin-1" if not _CONTROL.search(head) else None
    return "utf-8"


#: The start of a JSON array of objects: `[`, blanks, `{` (a CSV's first line cannot start so).
_JSON_ARRAY = re.compile(r"\[\s*\{")


def _looks_like_table_text(head: bytes) -> bool:
    """Decodable text whose first lines are JSON objects or rows of a consistent CSV dialect."""
    encoding = text_encoding(head)
    if encoding is None:
        return False
    if encoding == "utf-16":
        head = head[: len(head) // 2 * 2]  # a code unit cut at the end
    decoder = codecs.getincrementaldecoder(encoding)(errors="strict")
    try:
        text = decoder.decode(head).removeprefix("\ufeff")
    except UnicodeDecodeError:
        return False
    lines = [line for line in text.splitlines() if line.strip()]
    if len(head) == SNIFF_BYTES and len(lines) > 1:
        lines = lines[:-1]  # the last line may be cut in the middle
    if not lines:
        return False
    if all(line.lstrip().startswith("{") for line in lines) or _JSON_ARRAY.match(text.lstrip()):
        return True  # JSON lines, or a JSON array of objects (which the data service reads as well)
    try:
        dialect = csv.Sniffer().sniff("\n".join(lines[:20]), delimiters=",;\t|")
    except csv.Error:
        return len(lines) > 1  # one column: no delimiter for the sniffer to find
    rows = list(csv.reader(lines[:20], dialect))
    return len({len(row) for row in rows}) == 1
