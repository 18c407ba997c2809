"""Audio or video by the tracks a container's headers list: ISO (MP4, MOV) read as its bytes stream past,
Matroska and WebM within their first bytes, Ogg by its first pages."""

from __future__ import annotations

import os
import random
from pathlib import Path

import av
import numpy as np
import pytest

from medialens_shared.contracts import FileKind
from medialens_shared.sniff import SNIFF_BYTES, Sniffer, sniff
from medialens_shared.tracklist import MATROSKA_HEAD_BYTES, IsoTracks
from scripts.samples import make_audio_only, make_numbered_video, make_video, scheduling_kept


def streamed(data: bytes, chunk: int) -> FileKind:
    """The kind a `Sniffer` tells of `data` fed `chunk` bytes at a time, as an upload arrives."""
    sniffer = Sniffer()
    for start in range(0, len(data), chunk):
        sniffer.feed(data[start : start + chunk])
    return sniffer.kind


@pytest.mark.parametrize(
    ("name", "container_format", "codec", "options"),
    [
        ("tone.mp4", "mp4", "aac", None),
        ("tone.mov", "mov", "aac", None),
        ("tone-faststart.mp4", "mp4", "aac", {"movflags": "faststart"}),
        ("tone.webm", "webm", "libopus", None),
        ("tone.mka", "matroska", "libopus", None),
    ],
)
def test_a_soundtrack_alone_in_a_video_container_is_audio(
    tmp_path: Path, name: str, container_format: str, codec: str, options: dict[str, str] | None
) -> None:
    """FFmpeg writes a soundtrack alone as `isom` MP4, QuickTime, WebM or Matroska: audio, by its tracks (it
    was "video": video jobs took it, then failed UNSUPPORTED_INPUT), in whatever chunks its bytes come."""
    path = tmp_path / name
    make_audio_only(path, container_format=container_format, codec=codec, options=options)
    data = path.read_bytes()
    for chunk in (1, 7, 4096, len(data)):
        assert streamed(data, chunk) is FileKind.AUDIO, chunk


@pytest.mark.parametrize("codec", ["aac", "mp2", "ac3", "eac3", "libopus"])
def test_a_soundtrack_alone_in_a_transport_stream_is_audio(tmp_path: Path, codec: str) -> None:
    """An MPEG-TS whose program map lists soundtracks alone is audio: by their stream types (AAC, MP2, and
    E-/AC-3 as FFmpeg writes them, with their registration too), or for Opus, a private stream, by its
    registration descriptor. It was "video" (video jobs took it, then failed UNSUPPORTED_INPUT)."""
    path = tmp_path / "tone.ts"
    make_audio_only(path, container_format="mpegts", codec=codec)
    assert sniff(path.read_bytes()[:SNIFF_BYTES]) is FileKind.AUDIO


def test_an_m2ts_is_read_as_a_transport_stream(tmp_path: Path) -> None:
    """An M2TS (AVCHD camcorders' `.mts`, Blu-ray), each packet after a 4-byte arrival time, is a video or,
    by its tables, audio: it was none of the kinds (415 for every job on a camcorder's clip)."""
    video, sound = tmp_path / "camera.m2ts", tmp_path / "sound.m2ts"
    make_video(video, duration_s=0.4, width=64, height=48, fps=10)
    make_audio_only(sound, container_format="mpegts", codec="ac3", options={"mpegts_m2ts_mode": "1"})
    assert [path.read_bytes()[4::192][:3] for path in (video, sound)] == [b"GGG", b"GGG"]  # 0x47: sync
    assert sniff(video.read_bytes()[:SNIFF_BYTES]) is FileKind.VIDEO
    assert sniff(sound.read_bytes()[:SNIFF_BYTES]) is FileKind.AUDIO


def test_a_transport_stream_stays_video_unless_its_tables_say_audio(tmp_path: Path) -> None:
    """A picture beside a soundtrack, or tables not within the first bytes (cut off; a recording begun
    between two of them), leave a transport stream a video."""
    path = tmp_path / "clip.ts"
    make_numbered_video(path, frame_count=10, audio_s=0.5)
    assert sniff(path.read_bytes()[:SNIFF_BYTES]) is FileKind.VIDEO
    make_audio_only(path, container_format="mpegts")
    data = path.read_bytes()
    pmt = 2 * 188  # FFmpeg writes its service table, then the PAT, then the PMT
    assert data[pmt + 5] == 0x02
    assert sniff(data[: pmt + 188 + 188]) is FileKind.AUDIO
    assert sniff(data[: pmt + 20]) is FileKind.VIDEO  # the PMT cut by the end of the bytes looked at
    assert sniff(data[pmt : pmt + 188] + data[pmt + 188 : pmt + 188 * 3]) is FileKind.VIDEO  # no PAT before
    short = bytearray(data[:SNIFF_BYTES])
    short[pmt + 6 : pmt + 8] = (short[pmt + 6] & 0xF0, 5)  # a PMT section too short for its own header
    assert sniff(bytes(short)) is FileKind.VIDEO  # it was an IndexError (a 500 for the upload)


@pytest.mark.parametrize(
    ("programs", "kind"),
    [
        ({1: (0x100, [0x0F])}, FileKind.AUDIO),
        ({1: (0x100, [0x0F, 0x03]), 2: (0x101, [0x81])}, FileKind.AUDIO),  # two radio stations
        ({1: (0x100, [0x0F]), 2: (0x101, [0x1B, 0x0F])}, FileKind.VIDEO),  # a radio and a TV station
        # Programs may share the packet ID of their maps: each is read (the first one read was taken for all).
        ({1: (0x100, [0x0F]), 2: (0x100, [0x1B, 0x0F])}, FileKind.VIDEO),
        ({1: (0x100, [0x0F]), 2: (0x100, [0x04])}, FileKind.AUDIO),
        ({1: (0x100, [0x0F, 0x06])}, FileKind.VIDEO),  # a private stream that says not what it holds
        ({1: (0x100, [0x0F, 0x15])}, FileKind.AUDIO),  # an HLS audio rendition: AAC and timed ID3 metadata
        ({1: (0x100, [0x1B, 0x15])}, FileKind.VIDEO),
        ({1: (0x100, [0x15, 0x86])}, FileKind.VIDEO),  # metadata and ad breaks, no sound
    ],
)
def test_every_program_of_a_transport_stream_counts(
    programs: dict[int, tuple[int, list[int]]], kind: FileKind
) -> None:
    """A multiplex of programs (a broadcaster's) is audio when every program's map lists soundtracks alone."""
    pat = b"".join(
        number.to_bytes(2, "big") + (0xE000 | pid).to_bytes(2, "big") for number, (pid, _) in programs.items()
    )
    packets = [_ts_packet(0, _section(0x00, 1, pat))]
    for number, (pid, types) in programs.items():
        streams = b"".join(
            bytes([kind_]) + (0xE200 + i).to_bytes(2, "big") + b"\xf0\x00" for i, kind_ in enumerate(types)
        )
        packets.append(_ts_packet(pid, _section(0x02, number, b"\xe2\x00\xf0\x00" + streams)))
    packets += [_ts_packet(0x1FFF, b"")] * 3  # null packets
    assert sniff(b"".join(packets)) is kind


def test_only_the_tables_in_force_and_whole_count() -> None:
    """A PAT sent ahead of the one in force (current_next_indicator 0), naming a radio station, does not
    count; nor does a PAT in several sections, read from its first alone (the radio, with a TV station in
    the second): both leave a video, which they were called audio before."""
    radio, tv = (1).to_bytes(2, "big") + b"\xe1\x00", (2).to_bytes(2, "big") + b"\xe1\x01"
    maps = [
        _ts_packet(0x100, _section(0x02, 1, b"\xe2\x00\xf0\x00\x0f\xe2\x00\xf0\x00")),
        _ts_packet(0x101, _section(0x02, 2, b"\xe2\x00\xf0\x00\x1b\xe2\x01\xf0\x00")),
    ]
    nulls = [_ts_packet(0x1FFF, b"")] * 3
    ahead = [
        _ts_packet(0, _section(0x00, 1, radio, state=b"\xc0\x00\x00")),
        _ts_packet(0, _section(0x00, 1, tv)),
    ]
    assert sniff(b"".join(ahead + maps + nulls)) is FileKind.VIDEO
    split = [_ts_packet(0, _section(0x00, 1, radio, state=b"\xc1\x00\x01"))]
    assert sniff(b"".join(split + maps + nulls)) is FileKind.VIDEO
    whole = [_ts_packet(0, _section(0x00, 1, radio))]
    assert sniff(b"".join(whole + maps + nulls)) is FileKind.AUDIO  # the radio alone: audio


def _section(table: int, number: int, body: bytes, *, state: bytes = b"\xc1\x00\x00") -> bytes:
    """A PSI section: its header (`number`: the PAT's stream ID, the PMT's program; `state`: its version
    and current_next_indicator, its section number and the last one), `body`, a CRC."""
    rest = number.to_bytes(2, "big") + state + body + bytes(4)
    return bytes([table]) + (0xB000 | len(rest)).to_bytes(2, "big") + rest


def _ts_packet(pid: int, section: bytes) -> bytes:
    """A transport packet of `pid` opening with `section` (pointer field 0), padded with 0xFF."""
    header = bytes([0x47, 0x40 | pid >> 8, pid & 0xFF, 0x10]) + (b"\x00" if section else b"")
    return (header + section).ljust(188, b"\xff")


def test_damaged_transport_stream_tables_are_read_without_error(tmp_path: Path) -> None:
    """Bytes changed in an audio-only transport stream's PAT and PMT packets, cut anywhere: the upload's
    sniff answers a kind each time (it is in the gateway's upload path, where an error would be a 500; a PMT
    too short for its header raised IndexError)."""
    path = tmp_path / "tone.ts"
    make_audio_only(path, container_format="mpegts", codec="libopus")
    head = path.read_bytes()[:SNIFF_BYTES]
    rng = random.Random(7)
    for _ in range(3000):
        damaged = bytearray(head)
        for _ in range(rng.randint(1, 6)):
            damaged[rng.choice((188, 376)) + rng.randrange(40)] = rng.randrange(256)  # in the PAT or the PMT
        sniff(bytes(damaged[: rng.choice([len(damaged), rng.randrange(len(damaged))])]))  # raises nothing


def test_an_mp4_track_list_past_the_first_bytes_is_read_as_they_stream() -> None:
    """An MP4 not written for streaming keeps its track list after the media data: past what `sniff` sees
    (a video, then), read by the `Sniffer` the bytes go through (the upload's)."""
    data = _iso(_box(b"ftyp", b"isom\x00\x00\x02\x00isommp41"), _box(b"mdat", os.urandom(3 * SNIFF_BYTES)))
    data += _moov(b"soun")
    assert sniff(data[:SNIFF_BYTES]) is FileKind.VIDEO
    assert streamed(data, 1000) is FileKind.AUDIO


@pytest.mark.parametrize(
    ("name", "codec"), [("clip.mp4", "libx264"), ("clip.mov", "libx264"), ("clip.webm", "libvpx")]
)
def test_a_video_stays_video(tmp_path: Path, name: str, codec: str) -> None:
    path = tmp_path / name
    make_video(path, duration_s=0.5, fps=10, width=64, height=48, codec=codec)
    data = path.read_bytes()
    assert streamed(data, 7) is FileKind.VIDEO
    assert streamed(data, len(data)) is FileKind.VIDEO


def test_a_picture_track_beside_a_soundtrack_is_video() -> None:
    """Every track is read: a picture track after a soundtrack makes a video."""
    data = _iso(_box(b"ftyp", b"isom\x00\x00\x02\x00"), _moov(b"soun", b"vide"))
    assert streamed(data, 3) is FileKind.VIDEO
    assert (
        streamed(_iso(_box(b"ftyp", b"isom\x00\x00\x02\x00"), _moov(b"soun", b"text")), 3) is FileKind.AUDIO
    )


@pytest.mark.parametrize(
    "cut",
    ["in-the-track-list", "a-box-shorter-than-its-header", "a-box-past-its-parent", "not-boxes"],
)
def test_a_track_list_not_read_whole_leaves_a_video(cut: str) -> None:
    """A track list cut before its end (a picture track may follow), damaged, or not boxes at all is not
    taken for audio: the file counts as a video (video jobs take it and tell; audio jobs take videos too)."""
    ftyp = _box(b"ftyp", b"isom\x00\x00\x02\x00")
    moov = _moov(b"soun")
    data = {
        "in-the-track-list": ftyp + _moov(b"soun", b"vide")[:-700],  # before the second track's handler
        "a-box-shorter-than-its-header": ftyp + b"\x00\x00\x00\x04moov" + moov[8:],
        "a-box-past-its-parent": ftyp + _box(b"moov", b"\xff\xff\xff\xfftrak" + bytes(16)),
        "not-boxes": ftyp + os.urandom(4096),
    }[cut]
    assert streamed(data, 5) is FileKind.VIDEO
    tracks = IsoTracks()
    tracks.feed(data)
    assert not tracks.complete


def test_a_matroska_track_list_past_the_sniffed_bytes_is_read() -> None:
    """A Matroska file whose track list comes after 20 KB of other elements (a Void, as muxers reserve for
    their seek head) is read up to `MATROSKA_HEAD_BYTES`; past that, it counts as a video."""
    audio_entry = _ebml(0xAE, _ebml(0xD7, b"\x01") + _ebml(0x83, b"\x02"))
    tracks = _ebml(0x1654AE6B, audio_entry)
    cluster = bytes.fromhex("1f43b675") + b"\x01\xff\xff\xff\xff\xff\xff\xff" + os.urandom(64)
    header = _ebml(0x1A45DFA3, _ebml(0x4282, b"matroska"))
    segment = bytes.fromhex("18538067") + b"\x01\xff\xff\xff\xff\xff\xff\xff"  # unknown size, as live
    near = header + segment + _ebml(0xEC, bytes(20_000)) + tracks + cluster
    assert sniff(near[:SNIFF_BYTES]) is FileKind.VIDEO
    for chunk in (4096, 17_704, len(near)):  # an upload's first chunk may be larger than SNIFF_BYTES
        assert streamed(near, chunk) is FileKind.AUDIO, chunk
    far = header + segment + _ebml(0xEC, bytes(MATROSKA_HEAD_BYTES)) + tracks + cluster
    assert streamed(far, 4096) is FileKind.VIDEO


def test_an_ogg_theora_video_is_video() -> None:
    """Ogg holds Theora (and VP8) video as well as Vorbis, Opus and FLAC: a Theora stream begun on the first
    pages makes a video (it was "audio": video jobs refused it with 415). No encoder of PyAV's writes
    Theora, so the pages are laid out as the Ogg and Theora specifications give them."""
    theora = _ogg_page(b"\x80theora\x03\x02\x01" + bytes(33))
    vorbis = _ogg_page(b"\x01vorbis" + bytes(23))
    assert sniff(theora + vorbis + bytes(200)) is FileKind.VIDEO
    assert sniff(vorbis + theora + bytes(200)) is FileKind.VIDEO
    assert sniff(_ogg_page(b"OVP80\x01\x01\x00" + bytes(18)) + bytes(200)) is FileKind.VIDEO  # VP8
    assert sniff(vorbis + bytes(200)) is FileKind.AUDIO


def _ogg_page(packet: bytes) -> bytes:
    """A beginning-of-stream Ogg page holding one packet (under 255 bytes); its checksum is not read."""
    return b"OggS\x00\x02" + bytes(8) + os.urandom(4) + bytes(8) + bytes([1, len(packet)]) + packet


def _box(kind: bytes, body: bytes) -> bytes:
    return (8 + len(body)).to_bytes(4, "big") + kind + body


def _moov(*handlers: bytes) -> bytes:
    """A `moov` box listing a track for each handler type, each with its header and a sample table."""
    traks = b"".join(
        _box(
            b"trak",
            _box(b"tkhd", bytes(84))
            + _box(
                b"mdia",
                _box(b"mdhd", bytes(24))
                + _box(b"hdlr", bytes(8) + handler + bytes(13))
                + _box(b"minf", _box(b"stbl", bytes(600))),
            ),
        )
        for handler in handlers
    )
    return _box(b"moov", _box(b"mvhd", bytes(100)) + traks)


def _iso(*boxes: bytes) -> bytes:
    return b"".join(boxes)


def _ebml(ident: int, body: bytes) -> bytes:
    """An EBML element: its ID as written, its size as an 8-byte variable-length integer, its body."""
    return (
        ident.to_bytes((ident.bit_length() + 7) // 8, "big") + (len(body) | 1 << 56).to_bytes(8, "big") + body
    )


def test_an_avif_picture_is_no_video(tmp_path: Path) -> None:
    """A HEIF or AVIF picture (phones save photos so) is an ISO file without a track list: it was a video,
    taken by video jobs to fail; none of the kinds a job takes now (415 for every job)."""
    path = tmp_path / "photo.avif"
    encoder = "libaom-av1" if "libaom-av1" in av.codecs_available else "libsvtav1"
    with scheduling_kept(), av.open(str(path), "w", format="avif") as out:
        stream = out.add_stream(encoder, rate=1)
        stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
        picture = av.VideoFrame.from_ndarray(np.zeros((64, 64, 3), np.uint8), format="rgb24")
        out.mux(stream.encode(picture.reformat(format="yuv420p")))
        out.mux(stream.encode(None))
    assert streamed(path.read_bytes(), 4096) is FileKind.UNKNOWN
