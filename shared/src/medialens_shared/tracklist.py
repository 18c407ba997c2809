"""Whether a container holds a picture track, read from its own headers: the part of `sniff` that a
signature alone cannot tell.

An MP4, MOV, 3GP, Matroska, WebM, Ogg or MPEG-TS file is audio or video by the tracks it lists: FFmpeg
writes a soundtrack alone as `isom` MP4 (no `M4A ` brand), Opus or Vorbis alone as WebM or Matroska, a radio
recording is a transport stream of soundtracks, and Ogg holds Theora video as well as Vorbis, Opus and
FLAC. Told by signature alone, a soundtrack was a "video" (video jobs took it, then failed
UNSUPPORTED_INPUT) and a Theora video "audio" (video jobs refused it with 415).

Only headers are read, no media data: PyAV would want the whole file, and the gateway tells a file's kind
while its bytes stream into GridFS. An ISO file's track list (its `moov` box) lies past the media data in
any file not written for streaming, so `IsoTracks` reads box headers as the bytes go by, keeping none of
them. A Matroska file lists its tracks before its first cluster, an Ogg file opens every stream on its
first pages and a transport stream repeats its program tables every 100 ms (FFmpeg writes them first), so
for those the first bytes are enough. Where a list is not (wholly) read, the file counts as video: video
jobs then take it and tell, and audio jobs take video files anyway.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

#: How far into a Matroska file its track list is looked for (its header, seek head, info and tracks come
#: first; a Vorbis track carries its codec's setup, some kilobytes, in the list).
MATROSKA_HEAD_BYTES = 256 * 1024

#: The box types an ISO file's track handlers are reached through: each parent's child descended into.
_ISO_PATH = {b"": b"moov", b"moov": b"trak", b"trak": b"mdia"}
#: A box type at the levels walked: four printable ASCII characters.
_BOX_TYPE = re.compile(rb"[\x20-\x7e]{4}")


class IsoTracks:
    """The handler types (`vide`, `soun`, `text`, ...) of an ISO file's tracks, read a chunk at a time from
    its bytes in order: box headers alone, descending `moov` → `trak` → `mdia` to each track's `hdlr`;
    everything else (the media data above all) is skipped without being held. Gives up, with what it has
    read, on bytes that are not ISO boxes."""

    def __init__(self) -> None:
        self.handlers: list[bytes] = []
        #: Whether the `moov` box was walked to its end, so that `handlers` lists every track.
        self.complete = False
        self._fed = 0  # bytes fed so far
        self._next = 0  # where the next box header starts
        self._open: list[tuple[bytes, int]] = []  # (type, end) of the boxes being descended
        self._header = bytearray()
        self._stopped = False

    def feed(self, data: bytes) -> None:
        start = self._fed
        self._fed += len(data)
        at = max(start, self._next) if not self._header else start
        while not self._stopped and at < self._fed:
            need = self._need()
            taken = data[at - start : at - start + need - len(self._header)]
            self._header += taken
            at += len(taken)
            if len(self._header) < self._need():
                continue  # a header cut by the chunk's end, or a hdlr's handler type still to come
            self._box()
            self._header.clear()
            at = max(at, self._next)

    def _need(self) -> int:
        """How many bytes of the box at `_next` are needed: its header, and for a track's `hdlr` its
        handler type (after version, flags and a reserved word)."""
        header = self._header
        if len(header) < 8:
            return 8
        length = 16 if header[:4] == b"\x00\x00\x00\x01" else 8
        if header[4:8] == b"hdlr" and self._parent() == b"mdia":
            return length + 12
        return length

    def _parent(self) -> bytes:
        return self._open[-1][0] if self._open else b""

    def _box(self) -> None:
        header, at = bytes(self._header), self._next
        kind, size, length = header[4:8], int.from_bytes(header[:4], "big"), 8
        if size == 1:
            size, length = int.from_bytes(header[8:16], "big"), 16
        parent_end = self._open[-1][1] if self._open else None
        end = at + size if size else parent_end  # 0: the box runs to its parent's end (the file's)
        if (
            not _BOX_TYPE.fullmatch(kind)
            or (size and size < len(header))
            or (end is not None and parent_end is not None and end > parent_end)
        ):
            self._stopped = True  # not an ISO file, or a damaged one: what was read stands
            return
        if kind == b"hdlr" and self._parent() == b"mdia":
            self.handlers.append(header[length + 8 : length + 12])
        if _ISO_PATH.get(self._parent()) == kind and end is not None:
            self._open.append((kind, end))
            self._next = at + length
        elif end is None:
            self._stopped = True  # the rest of the file is this box
            return
        else:
            self._next = end
        while self._open and self._next >= self._open[-1][1]:
            if self._open.pop()[0] == b"moov":
                self.complete = self._stopped = True


def iso_is_audio(tracks: IsoTracks) -> bool:
    """Whether an ISO file read by `tracks` lists a soundtrack and no picture track."""
    return tracks.complete and b"soun" in tracks.handlers and b"vide" not in tracks.handlers


_EBML = 0x1A45DFA3
_SEGMENT = 0x18538067
_CLUSTER = 0x1F43B675
_TRACKS = 0x1654AE6B
_TRACK_ENTRY = 0xAE
_TRACK_TYPE = 0x83
_VIDEO_TRACK, _AUDIO_TRACK = 1, 2


@dataclass(frozen=True, slots=True)
class _Element:
    id: int
    data: int  # where its content starts
    end: int | None  # where it ends; None for an unknown size (a live stream's segment or cluster)


class _Cut(Exception):
    """The element runs past the bytes at hand, or is not one."""


def matroska_is_audio(head: bytes) -> bool:
    """Whether a Matroska or WebM file opening with `head` lists audio tracks and no video track in a
    `Tracks` element wholly within `head`."""
    try:
        kinds = _matroska_track_types(head)
    except _Cut:
        return False
    return _AUDIO_TRACK in kinds and _VIDEO_TRACK not in kinds


def _matroska_track_types(head: bytes) -> set[int]:
    header = _element(head, 0)
    if header.id != _EBML or header.end is None:
        raise _Cut
    segment = _element(head, header.end)
    if segment.id != _SEGMENT:
        raise _Cut
    for child in _children(head, segment):
        if child.id == _TRACKS:
            return {
                int.from_bytes(head[field.data : field.end], "big")
                for entry in _children(head, child)
                if entry.id == _TRACK_ENTRY
                for field in _children(head, entry)
                if field.id == _TRACK_TYPE
            }
        if child.id == _CLUSTER:
            break  # media data: no track list came before it
    raise _Cut


def _children(head: bytes, parent: _Element) -> Iterator[_Element]:
    """The elements within `parent` (up to the end of `head` for a parent of unknown size), each wholly
    within `head` but one of unknown size (a live stream's cluster), after which nothing can be told."""
    at = parent.data
    while at < (len(head) if parent.end is None else parent.end):
        child = _element(head, at)
        if child.end is not None and child.end > len(head):
            raise _Cut
        yield child
        if child.end is None:
            raise _Cut
        at = child.end


def _element(head: bytes, at: int) -> _Element:
    """The EBML element at `at`: its ID and its size, each a variable-length integer whose leading zero bits
    tell its length; an ID is named with its length marker kept, a size read without it (all ones:
    unknown)."""
    ident, _, at = _vint(head, at)
    size, length, at = _vint(head, at)
    value_bits = 7 * length
    value = size ^ (1 << value_bits)
    return _Element(ident, at, None if value == (1 << value_bits) - 1 else at + value)


def _vint(head: bytes, at: int) -> tuple[int, int, int]:
    """The variable-length integer at `at` as written (its marker kept), its length, and where it ends."""
    if at >= len(head) or head[at] == 0:
        raise _Cut
    length = 9 - head[at].bit_length()
    if at + length > len(head):
        raise _Cut
    return int.from_bytes(head[at : at + length], "big"), length, at + length


def ogg_is_video(head: bytes) -> bool:
    """Whether an Ogg file opening with `head` begins a Theora, Dirac or VP8 stream on one of its first
    pages (every stream's beginning-of-stream page comes before any other page)."""
    at = 0
    while head.startswith(b"OggS", at) and at + 27 <= len(head) and head[at + 5] & 0x02:
        segments = head[at + 26]
        body = at + 27 + segments
        if head.startswith((b"\x80theora", b"BBCD\x00", b"OVP80"), body):
            return True
        at = body + sum(head[at + 27 : body])
    return False


#: A transport stream's packet size; an M2TS (Blu-ray, AVCHD camcorders' `.mts`) puts a 4-byte arrival
#: time before each, `M2TS_PACKET` bytes in all.
TS_PACKET = 188
M2TS_PACKET = 192
#: The stream types (ISO 13818-1 and ATSC) of a program's soundtracks: MPEG-1/2 audio, AAC in ADTS and in
#: LATM, MPEG-4 audio, AC-3 and E-AC-3.
_TS_AUDIO_TYPES = frozenset({0x03, 0x04, 0x0F, 0x11, 0x1C, 0x81, 0x87})
#: Streams that are neither sound nor picture beside soundtracks: metadata in PES packets (the timed ID3 of
#: an HLS audio rendition) and SCTE-35 splice information (ad breaks).
_TS_NEITHER_TYPES = frozenset({0x15, 0x86})
#: A private stream (type 0x06) is audio by its descriptors: DVB's AC-3, E-AC-3, DTS and AAC descriptors...
_TS_AUDIO_DESCRIPTORS = frozenset({0x6A, 0x7A, 0x7B, 0x7C})
#: ... or a registration descriptor (0x05) with one of these format identifiers (FFmpeg writes Opus so).
_TS_AUDIO_FORMATS = frozenset({b"Opus", b"AC-3", b"EAC3", b"DTS1", b"DTS2", b"DTS3", b"mlpa"})


def transport_packets(head: bytes) -> bytes | None:
    """`head` as 188-byte transport packets when it opens an MPEG transport stream (the sync byte at the
    start of three packets in a row), an M2TS's with their arrival times taken out; None for another file."""
    for size, skip in ((TS_PACKET, 0), (M2TS_PACKET, M2TS_PACKET - TS_PACKET)):
        if len(head) > skip + 2 * size and all(head[skip + n * size] == 0x47 for n in range(3)):
            return b"".join(head[at + skip : at + size] for at in range(0, len(head) - size + 1, size))
    return None


def ts_is_audio(head: bytes) -> bool:
    """Whether a transport stream opening with `head` (188-byte packets, as `transport_packets` gives) holds
    soundtracks alone: its program table (PAT) and every program's map (PMT) lie within `head`, and the
    streams they list are audio by their type or descriptors, or metadata beside it. Anything else (a table
    not found, cut by the end of `head`, a stream type not known to be audio: subtitles as much as a
    picture) leaves a video.

    FFmpeg writes the tables first and repeats them every 100 ms; a recording cut from a broadcast may begin
    between two, and so stays a video."""
    sections: dict[int, bytearray] = {}
    programs: dict[int, int] | None = None  # each program's number and the packet ID of its map
    maps: dict[int, bytes] = {}  # each program's map by its number (programs may share a packet ID)
    for at in range(0, len(head) - TS_PACKET + 1, TS_PACKET):
        packet = head[at : at + TS_PACKET]
        if packet[0] != 0x47:
            return False
        pid = (packet[1] & 0x1F) << 8 | packet[2]
        if pid != 0 and (programs is None or pid not in programs.values()):
            continue
        payload = _ts_payload(packet)
        if packet[1] & 0x40:  # a section starts here, after its pointer field
            sections[pid] = bytearray(payload[1 + payload[0] :]) if payload else bytearray()
        elif pid in sections:
            sections[pid] += payload
        section = _whole_section(sections.get(pid))
        if section is None or len(section) < 8 or not section[5] & 0x01:
            continue  # not all come, or a table sent ahead of the one in force (current_next_indicator 0)
        if section[6] or section[7]:
            return False  # a table in several sections (a PAT of hundreds of programs): not read
        if pid == 0 and section[0] == 0x00:
            programs = _programs(section)
        elif pid != 0 and section[0] == 0x02 and programs is not None:
            number = int.from_bytes(section[3:5], "big")
            if programs.get(number) == pid:
                maps[number] = section
        if programs is not None and maps.keys() >= programs.keys():
            kinds = [kind for pmt in maps.values() for kind in _pmt_streams(pmt)]
            return True in kinds and False not in kinds
    return False


def _ts_payload(packet: bytes) -> bytes:
    """A transport packet's payload: what follows its header and adaptation field."""
    control = packet[3] >> 4 & 0x3
    if not control & 0x1:
        return b""
    start = 4 + (1 + packet[4] if control & 0x2 else 0)
    return packet[start:]


def _whole_section(data: bytearray | None) -> bytes | None:
    """The table section `data` opens with, once all of it has come (its length is in its header)."""
    if data is None or len(data) < 3:
        return None
    end = 3 + ((data[1] & 0x0F) << 8 | data[2])
    return bytes(data[:end]) if len(data) >= end else None


def _programs(pat: bytes) -> dict[int, int]:
    """The programs a program association section lists, each number with the packet ID of its map
    (program 0 is the network's information table, not a program)."""
    entries = pat[8 : len(pat) - 4]  # after the header, before the CRC
    return {
        int.from_bytes(entries[i : i + 2], "big"): (entries[i + 2] & 0x1F) << 8 | entries[i + 3]
        for i in range(0, len(entries) - 3, 4)
        if entries[i : i + 2] != b"\x00\x00"
    }


def _pmt_streams(pmt: bytes) -> Iterator[bool | None]:
    """For each stream a program map section lists, whether it is a soundtrack; None for one that is neither
    sound nor picture (`_TS_NEITHER_TYPES`). A section too short for its header lists one that is not."""
    if len(pmt) < 16:
        yield False
        return
    at = 12 + ((pmt[10] & 0x0F) << 8 | pmt[11])
    end = len(pmt) - 4  # the CRC
    while at + 5 <= end:
        kind = pmt[at]
        info_end = at + 5 + ((pmt[at + 3] & 0x0F) << 8 | pmt[at + 4])
        descriptors = pmt[at + 5 : info_end]
        if kind in _TS_NEITHER_TYPES:
            yield None
        else:
            yield kind in _TS_AUDIO_TYPES or (kind == 0x06 and _private_audio(descriptors))
        at = info_end


def _private_audio(descriptors: bytes) -> bool:
    """Whether a private stream's descriptors name an audio format."""
    at = 0
    while at + 2 <= len(descriptors):
        tag, length = descriptors[at], descriptors[at + 1]
        body = descriptors[at + 2 : at + 2 + length]
        if tag in _TS_AUDIO_DESCRIPTORS or (tag == 0x05 and body[:4] in _TS_AUDIO_FORMATS):
            return True
        at += 2 + length
    return False
