"""File kinds told from their first bytes."""

from __future__ import annotations

import codecs
import tarfile
import zipfile
from pathlib import Path

import av
import numpy as np
import pytest

from medialens_shared.contracts import FileKind
from medialens_shared.sniff import SNIFF_BYTES, sniff
from scripts.samples import make_audio_only, make_video


def ftyp(brand: bytes) -> bytes:
    return b"\x00\x00\x00\x20ftyp" + brand + b"\x00\x00\x02\x00isomiso2mp41" + b"\x00" * 32


TS_PACKET = b"\x47\x40\x00\x10" + b"\xff" * 184


@pytest.mark.parametrize(
    ("head", "kind"),
    [
        (ftyp(b"isom"), FileKind.VIDEO),
        (ftyp(b"mp42"), FileKind.VIDEO),
        (ftyp(b"qt  "), FileKind.VIDEO),
        (ftyp(b"M4A "), FileKind.AUDIO),
        (ftyp(b"M4B "), FileKind.AUDIO),
        (ftyp(b"heic"), FileKind.UNKNOWN),
        (ftyp(b"avif"), FileKind.UNKNOWN),
        (b"\x00\x00\x00\x08moov" + b"\x00" * 16, FileKind.VIDEO),
        (b"\x1a\x45\xdf\xa3\x9f\x42\x86\x81\x01webm", FileKind.VIDEO),
        (b"RIFF\x24\x00\x00\x00AVI LIST", FileKind.VIDEO),
        (b"RIFF\x24\x00\x00\x00WAVEfmt ", FileKind.AUDIO),
        (b"FLV\x01\x05\x00\x00\x00\x09", FileKind.VIDEO),
        (b"\x00\x00\x01\xba\x44\x00\x04", FileKind.VIDEO),
        (TS_PACKET * 4, FileKind.VIDEO),
        (b"ID3\x04\x00\x00\x00\x00\x00\x00", FileKind.AUDIO),
        (b"\xff\xfb\x90\x64" + b"\x00" * 60, FileKind.AUDIO),
        (b"\xff\xf1\x50\x80\x2e\x7f\xfc" + b"\x00" * 57, FileKind.AUDIO),  # a 371-byte frame
        (b"fLaC\x00\x00\x00\x22", FileKind.AUDIO),
        (b"OggS\x00\x02" + b"\x00" * 20, FileKind.AUDIO),
        (b"FORM\x00\x00\x00\x00AIFF", FileKind.AUDIO),
        (b"PAR1\x15\x04\x15", FileKind.TABLE),
        (b"\x1f\x8b\x08\x00\x00\x00\x00\x00", FileKind.TABLE),
        (b"\x28\xb5\x2f\xfd\x04\x58", FileKind.TABLE),
    ],
    ids=[
        "mp4-isom",
        "mp4-mp42",
        "mov-qt",
        "m4a",
        "m4b",
        "heic-photo",
        "avif-picture",
        "quicktime-moov",
        "mkv",
        "avi",
        "wav",
        "flv",
        "mpeg-ps",
        "mpeg-ts",
        "mp3-id3",
        "mp3-frame-sync",
        "aac-adts",
        "flac",
        "ogg",
        "aiff",
        "parquet",
        "gzip",
        "zstd",
    ],
)
def test_binary_signatures(head: bytes, kind: FileKind) -> None:
    """Each container's magic number gives its kind."""
    assert sniff(head) is kind


@pytest.mark.parametrize(
    "head",
    [
        b"BW64\xff\xff\xff\xffWAVEds64",  # EBU's BW64 (no FFmpeg muxer writes one to test with)
        b"DSD \x1c\x00\x00\x00\x00\x00\x00\x00",  # DSF (no FFmpeg encoder for DSD)
        b"\x7f\xfe\x80\x01" + b"\x00" * 12,  # DTS (PyAV's FFmpeg has no DTS encoder)
        b"\xfe\x7f\x01\x80" + b"\x00" * 12,  # DTS, little-endian
        b"\x1f\xff\xe8\x00" + b"\x00" * 12,  # DTS, 14-bit big-endian
        b"\xff\x1f\x00\xe8" + b"\x00" * 12,  # DTS, 14-bit little-endian
    ],
    ids=["bw64", "dsf", "dts", "dts-le", "dts-14-be", "dts-14-le"],
)
def test_audio_signatures_no_encoder_here_writes(head: bytes) -> None:
    """Audio FFmpeg reads but writes no file of here (the others are encoded in the audio service's tests)."""
    assert sniff(head) is FileKind.AUDIO


@pytest.mark.parametrize(
    "head",
    [
        b"\x0b\x77\x00\x00\xc0\x40" + b"\x00" * 10,  # AC-3's bitstream id with the reserved sample rate
        b"\x0b\x77\x00\x00\x00\xf8" + b"\x00" * 10,  # a bitstream id past E-AC-3's (31)
    ],
    ids=["ac3-reserved-rate", "bsid-31"],
)
def test_a_dolby_sync_word_alone_is_not_audio(head: bytes) -> None:
    """0B 77 opens one file in 65,536 of any kind: an AC-3 or E-AC-3 frame's header must follow."""
    assert sniff(head) is FileKind.UNKNOWN


@pytest.mark.parametrize(
    "text",
    [
        b"name,age,city\nada,36,london\nalan,41,wilmslow\n",
        b"name\tage\nada\t36\nalan\t41\n",
        b"name;age\nada;36\nalan;41\n",
        b"value\n1\n2\n3\n",
        b'{"a": 1, "b": "x"}\n{"a": 2, "b": "y"}\n',
        codecs.BOM_UTF8 + b"col1,col2\n1,2\n3,4\n",
        "name,city\nJosé,Zürich\nAnn,Köln\n".encode("utf-16"),
        codecs.BOM_UTF16_BE + "name,city\nJosé,Zürich\n".encode("utf-16-be"),
        "name;city\nJosé;Zürich\nAnn;Köln\n".encode("latin-1"),
        b'[\n  {\n    "a": 1,\n    "tags": ["x", "y", "z"],\n    "b": {"c": 1}\n  },\n  {"a": 2}\n]\n',
        # Header lines that open with an audio format's four letters (CAF, DSF, AIFF, ID3, AU, TTA, APE).
        b"caffeine_mg,sleep_h\n95,7\n120,6\n",
        b"DSD Region,count\nnorth,3\nsouth,4\n",
        b"FORMAT,size\nA4,2\nA5,1\n",
        b"ID3,name\n1,a\n2,b\n",
        b".snd,file\n1,a.wav\n2,b.wav\n",
        b"TTA1,TTA2\n1,2\n3,4\n",
        b"MAC address,vendor\n00:1a,acme\n00:1b,globex\n",
    ],
    ids=[
        "csv",
        "tsv",
        "semicolon",
        "one-column",
        "jsonl",
        "bom-csv",
        "utf16-le",
        "utf16-be",
        "latin1",
        "json-array",
        "caff-header",
        "dsd-header",
        "form-header",
        "id3-header",
        "snd-header",
        "tta-header",
        "mac-header",
    ],
)
def test_table_text_is_a_table(text: bytes) -> None:
    """CSV, TSV, one-column CSV, JSON lines and BOM-prefixed CSV are tables; so is a CSV in UTF-16 (its
    byte-order mark FF FE was taken for an MPEG audio frame sync) or in Latin-1 (it was unknown), and one
    whose header opens with an audio format's four letters (`caffeine_mg` was taken for CAF, `FORMAT` for
    AIFF)."""
    assert sniff(text) is FileKind.TABLE


def test_a_head_cut_mid_line_is_still_a_table() -> None:
    """A full SNIFF_BYTES head whose last row is cut short is judged on its complete rows."""
    rows = b"id,name,score\n" + b"".join(b"%d,name%d,%d.5\n" % (i, i, i) for i in range(2000))
    head = rows[:SNIFF_BYTES]
    assert not head.endswith(b"\n")
    assert sniff(head) is FileKind.TABLE


@pytest.mark.parametrize(
    "head",
    [
        b"",
        b"\x00\x01\x02\x03garbage\x00\xfe\xff",
        b"\xc3\x28 not utf-8 \xa0\xa1",
        b"just one line of prose",
        b"   \n\t\n",
    ],
    ids=["empty", "binary-garbage", "bad-utf8", "one-line-prose", "blank"],
)
def test_unknown(head: bytes) -> None:
    """Empty input, binary garbage, undecodable bytes and text that is no table are unknown."""
    assert sniff(head) is FileKind.UNKNOWN


@pytest.mark.parametrize(("name", "codec"), [("clip.h264", "libx264"), ("clip.hevc", "libx265")])
def test_a_raw_video_stream_is_video(tmp_path: Path, name: str, codec: str) -> None:
    """A raw H.264 or HEVC stream (Annex B: start codes, no container), as cameras and pipelines hand them
    out and the video service reads them, is video (it was unknown: every video job refused it with 415)."""
    path = tmp_path / name
    make_video(path, duration_s=0.5, fps=10, width=160, height=120, codec=codec)
    assert sniff(path.read_bytes()[:SNIFF_BYTES]) is FileKind.VIDEO


@pytest.mark.parametrize(
    ("name", "codec", "size"),
    [
        ("clip.mxf", "mpeg2video", (720, 576)),  # broadcast and professional cameras
        ("clip.ivf", "libvpx", (160, 120)),  # VP8/VP9/AV1 frames as libvpx and libaom write them
        ("clip.y4m", "rawvideo", (160, 120)),  # raw frames between programs of a pipeline
        ("clip.dv", "dvvideo", (720, 576)),  # DV camcorders (PAL)
        ("clip.nut", "libx264", (160, 120)),
    ],
)
def test_video_containers_known_by_their_signature(
    tmp_path: Path, name: str, codec: str, size: tuple[int, int]
) -> None:
    """MXF, IVF, YUV4MPEG2, DV and NUT files, which the video service reads, are video: they were unknown
    (every video job refused them with 415)."""
    path = tmp_path / name
    make_video(path, duration_s=0.4, fps=25, width=size[0], height=size[1], codec=codec)
    assert sniff(path.read_bytes()[:SNIFF_BYTES]) is FileKind.VIDEO


@pytest.mark.parametrize(
    "head",
    [
        b"\x00\x00\x01\x00\x01\x00\x10\x10",  # an ICO file: a start code, but no NAL unit a stream opens with
        b"\x00\x00\x00\x01\x67\x42\x00\x1e" + b"\x11" * 64,  # an SPS and no second start code
        b"\x00\x00\x00\x01\x40",  # cut after the first header byte
    ],
    ids=["ico", "one-nal-unit", "cut"],
)
def test_a_start_code_alone_is_not_video(head: bytes) -> None:
    assert sniff(head) is FileKind.UNKNOWN


@pytest.mark.parametrize(("codec", "kind"), [("wmav2", FileKind.AUDIO), ("wmv2", FileKind.VIDEO)])
def test_asf_is_audio_or_video_by_its_streams(tmp_path: Path, codec: str, kind: FileKind) -> None:
    """An ASF file is WMA (audio) or WMV (video) by the streams its header lists."""
    path = tmp_path / "a.asf"
    with av.open(str(path), mode="w", format="asf") as container:
        if kind is FileKind.VIDEO:
            stream = container.add_stream(codec, rate=25)
            stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
            frame = av.VideoFrame.from_ndarray(np.zeros((48, 64, 3), np.uint8), format="rgb24")
            frame = frame.reformat(format="yuv420p")
        else:
            stream = container.add_stream(codec, rate=44100, options={"b": "128000"})
            stream.layout = "stereo"
            frame = av.AudioFrame.from_ndarray(
                np.zeros((2, 4096), np.float32), format="fltp", layout="stereo"
            )
            frame.sample_rate = 44100
        container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    assert sniff(path.read_bytes()[:SNIFF_BYTES]) is kind


def _begins_on_a_frame_sync(head: bytes) -> bool:
    """Whether `head` opens with the 11 set bits of an MPEG audio or ADTS frame sync (audio before the run
    of frames is looked for)."""
    return head[0] == 0xFF and head[1] & 0xE0 == 0xE0


@pytest.mark.parametrize(
    ("container_format", "codec"), [("mp3", "libmp3lame"), ("adts", "aac"), ("mp2", "mp2")]
)
def test_a_raw_stream_begun_mid_frame_is_audio(tmp_path: Path, container_format: str, codec: str) -> None:
    """A raw MP3, ADTS AAC or MP2 stream begun mid-frame (a stream recorded as it went by, a file cut with
    `tail -c` or `dd`) is audio by the frames that follow each other after its first bytes: it was unknown,
    415 for every audio job, though FFmpeg and the analysers read it."""
    path = tmp_path / f"tone.{container_format}"
    make_audio_only(path, container_format=container_format, codec=codec)
    data = path.read_bytes()
    heads = [data[cut : cut + SNIFF_BYTES] for cut in range(1000, 3000, 97)]
    heads = [head for head in heads if not _begins_on_a_frame_sync(head)]
    assert len(heads) > 15
    assert [sniff(head) for head in heads] == [FileKind.AUDIO] * len(heads)


@pytest.mark.parametrize("zeros", [1, 16, 2048])
def test_an_mp3_after_zero_bytes_is_audio(tmp_path: Path, zeros: int) -> None:
    """A raw MP3 (no ID3 tag, no Xing header) after zero bytes, as a capture or a disk image leaves one, is
    audio: it was unknown (415 for every audio job)."""
    path = tmp_path / "tone.mp3"
    make_audio_only(path, container_format="mp3", codec="libmp3lame", options={"id3v2_version": "0"})
    assert sniff(b"\x00" * zeros + path.read_bytes()[: SNIFF_BYTES - zeros]) is FileKind.AUDIO


@pytest.mark.parametrize(
    ("name", "audio_codec", "kind"),
    [
        ("clip.avi", "libmp3lame", FileKind.VIDEO),
        ("clip.mkv", "libmp3lame", FileKind.VIDEO),
        ("clip.mp4", "libmp3lame", FileKind.VIDEO),
        ("clip.ts", "libmp3lame", FileKind.VIDEO),
        ("clip.mpg", "mp2", FileKind.VIDEO),
    ],
)
def test_a_container_of_mpeg_audio_frames_keeps_its_kind(
    tmp_path: Path, name: str, audio_codec: str, kind: FileKind
) -> None:
    """A video whose soundtrack is MP3 or MP2 frames, as AVI, Matroska, MP4, MPEG-TS and MPEG-PS carry
    them, stays a video: its signature is read before any run of frames is looked for."""
    path = tmp_path / name
    make_video(path, duration_s=0.4, fps=10, width=64, height=48, with_audio=True, audio_codec=audio_codec)
    assert sniff(path.read_bytes()[:SNIFF_BYTES]) is kind


def test_mp3_in_a_wav_stays_audio(tmp_path: Path) -> None:
    """A WAV holding MP3 frames is audio by its RIFF header, as it was."""
    path = tmp_path / "tone.wav"
    make_audio_only(path, container_format="wav", codec="libmp3lame")
    assert sniff(path.read_bytes()[:SNIFF_BYTES]) is FileKind.AUDIO


def _voice_memo_mp3(path: Path, container_format: str) -> bytes:
    """Two seconds of a tone as MP3 at 8 kb/s and 12 kHz (48-byte frames, several of which fit in a row into
    one transport packet) in `container_format`, its frames gathered into packets as the ffmpeg command
    line does (its 0.7 s `-muxdelay`)."""
    rate = 12000
    tone = 0.1 * np.sin(2 * np.pi * 440 * np.arange(2 * rate) / rate)
    with av.open(str(path), "w", format=container_format, options={"max_delay": "700000"}) as container:
        sound = container.add_stream("libmp3lame", rate=rate)
        sound.layout, sound.bit_rate = "mono", 8000
        frame = av.AudioFrame.from_ndarray(tone.astype(np.float32)[None, :], format="fltp", layout="mono")
        frame.sample_rate = rate
        container.mux(sound.encode(frame))
        container.mux(sound.encode(None))
    return path.read_bytes()


def _jump_table(entries: int) -> bytes:
    """An x86-64 program's procedure linkage table, as a linker writes it: 16-byte entries of `jmp *rel(%rip)`
    (`ff 25`), `push index` (`68`), `jmp back` (`e9`), whose bytes across entries read as MPEG audio
    Layer I frame headers every 64 bytes."""
    return b"".join(
        b"\xff\x25"
        + (0x2EE2 - 8 * index).to_bytes(4, "little")
        + b"\x68"
        + index.to_bytes(4, "little")
        + b"\xe9"
        + ((-16 * (index + 2)) & 0xFFFFFFFF).to_bytes(4, "little")
        for index in range(entries)
    )


@pytest.mark.parametrize("start", [b"\x7fELF\x02\x01\x01" + bytes(57), bytes(64)], ids=["elf", "code"])
def test_a_programs_jump_table_is_not_audio(start: bytes) -> None:
    """A program or library (or a piece of one) is not audio for the frame headers its jump table mimics:
    267 of the x86-64 programs and libraries of a Debian system were, and audio jobs on them were taken and
    failed MEDIA_DECODE_ERROR rather than refused with 415."""
    head = (start + bytes(4096 - len(start)) + _jump_table(200))[:SNIFF_BYTES]
    assert sniff(head) is FileKind.UNKNOWN


@pytest.mark.parametrize("archive", ["zip", "tar"])
def test_an_archive_storing_an_mp3_is_not_audio(tmp_path: Path, archive: str) -> None:
    """A ZIP or tar archive storing an MP3 as it is holds its frames in a row, but is no raw stream: it
    stays unknown, as it was."""
    mp3, path = tmp_path / "tone.mp3", tmp_path / f"songs.{archive}"
    make_audio_only(mp3, container_format="mp3", codec="libmp3lame", options={"id3v2_version": "0"})
    if archive == "zip":
        with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as stored:
            stored.write(mp3, "tone.mp3")
    else:
        with tarfile.open(path, "w") as stored:
            stored.add(mp3, "tone.mp3")
    assert sniff(path.read_bytes()[:SNIFF_BYTES]) is FileKind.UNKNOWN


@pytest.mark.parametrize(("container_format", "packet"), [("mpeg", 2048), ("mpegts", 188)])
def test_a_multiplex_cut_where_its_signature_does_not_show_is_not_audio(
    tmp_path: Path, container_format: str, packet: int
) -> None:
    """An MPEG-PS or MPEG-TS cut mid-packet may hold a few MP3 frames in a row within one packet, but its
    packs or packets make it no raw stream: it stays unknown, as it was (FFmpeg reads it as a multiplex)."""
    data = _voice_memo_mp3(tmp_path / "memo", container_format)
    heads = [data[cut : cut + SNIFF_BYTES] for cut in range(packet // 2, len(data) // 2, 37)]
    heads = [head for head in heads if not _begins_on_a_frame_sync(head) and head[0] != 0x47]
    assert len(heads) > 20
    assert [sniff(head) for head in heads] == [FileKind.UNKNOWN] * len(heads)


def test_random_bytes_hold_no_run_of_frames() -> None:
    """Random bytes, and random bytes one in eight of which are FF (the first byte of a frame sync), are
    unknown: four frame headers alike, each where the one before ends, are not found by chance."""
    rng = np.random.default_rng(0)
    heads = [b"\x00" + rng.bytes(SNIFF_BYTES - 1) for _ in range(300)]
    for _ in range(300):
        head = np.frombuffer(rng.bytes(SNIFF_BYTES), np.uint8).copy()
        head[rng.random(SNIFF_BYTES) < 1 / 8] = 0xFF
        head[0] = 0
        heads.append(head.tobytes())
    assert {sniff(head) for head in heads} == {FileKind.UNKNOWN}


def test_a_frame_sync_alone_does_not_make_audio() -> None:
    """Random bytes opening with the 11 set bits of a frame sync (`FF Ex`: about one random file in 1,300)
    are not audio: they were, and audio jobs then failed them MEDIA_DECODE_ERROR rather than refusing them
    with 415. A frame header must be followed by the next one where its frame ends."""
    rng = np.random.default_rng(1)
    heads = [
        b"\xff" + bytes([0xE0 | int(rng.integers(32))]) + rng.bytes(SNIFF_BYTES - 2) for _ in range(2000)
    ]
    assert {sniff(head) for head in heads} == {FileKind.UNKNOWN}


@pytest.mark.parametrize(
    ("container_format", "codec", "options"),
    [
        ("mp3", "libmp3lame", {"id3v2_version": "0", "write_xing": "0"}),
        ("mp2", "mp2", {}),
        ("adts", "aac", {}),
    ],
)
def test_a_raw_stream_opening_on_a_frame_is_audio(
    tmp_path: Path, container_format: str, codec: str, options: dict[str, str]
) -> None:
    """A raw MP3 (no tag, no Xing frame), MP2 or ADTS AAC stream opening on a frame is audio, whole, cut to
    its first frame alone, or cut anywhere after its second frame's header."""
    path = tmp_path / f"tone.{container_format}"
    make_audio_only(path, container_format=container_format, codec=codec, options=options)
    data = path.read_bytes()
    assert _begins_on_a_frame_sync(data)
    first = _first_frame_length(path)
    heads = [data[:SNIFF_BYTES], data[:first], *(data[:cut] for cut in range(first + 7, first + 400, 31))]
    assert [sniff(head) for head in heads] == [FileKind.AUDIO] * len(heads)


def _first_frame_length(path: Path) -> int:
    """Where the second frame of a raw MPEG audio or ADTS stream starts, as FFmpeg's demuxer reads it."""
    with av.open(str(path)) as container:
        packets = (packet for packet in container.demux(audio=0) if packet.size)
        next(packets)
        return int(next(packets).pos)


@pytest.mark.parametrize("length", [417, 1044, 2880])
def test_a_free_format_stream_is_audio(length: int) -> None:
    """A free-format MP3 (bit rate index 0, as LAME's `--freeformat` writes), whose frames' length no header
    gives, is audio by the header alike that follows where the first frame ends; padded frames may be a byte
    longer. Its header before random bytes alone is not."""
    rng = np.random.default_rng(2)
    frames = b"".join(
        b"\xff\xfb"
        + (b"\x02" if index % 3 == 2 else b"\x00")
        + b"\x64"
        + rng.bytes(length - 4 + (index % 3 == 2))
        for index in range(10)
    )
    assert sniff(frames[:SNIFF_BYTES]) is FileKind.AUDIO
    assert sniff(frames[:4] + rng.bytes(SNIFF_BYTES - 4)) is FileKind.UNKNOWN


def test_a_layer_one_stream_opening_on_a_frame_is_audio() -> None:
    """An MPEG-1 Layer I stream (no encoder here writes one) opening on a frame is audio: its 288 kb/s frames
    at 44.1 kHz are (12 * 288000 // 44100) * 4 = 312 bytes, each header where the one before ends."""
    rng = np.random.default_rng(3)
    frames = b"".join(b"\xff\xff\x90\x00" + rng.bytes(308) for _ in range(30))
    assert sniff(frames[:SNIFF_BYTES]) is FileKind.AUDIO
    assert sniff(frames[:4] + rng.bytes(SNIFF_BYTES - 4)) is FileKind.UNKNOWN
