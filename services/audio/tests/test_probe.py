"""Unit tests of `probe_audio` against generated media whose properties are known exactly."""

from __future__ import annotations

import io
import shutil
import struct
import subprocess
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest

from medialens_audio import decode
from medialens_audio.decode import WAV_PROBE_BYTES, _mp3_length_header, _ogg_chain_starts
from medialens_audio.loudness import measure_loudness
from medialens_audio.probe import probe_audio
from medialens_audio.waveform import compute_waveform
from medialens_shared.contracts import AudioWaveformParams, FileKind
from medialens_shared.errors import InputNotFound, MediaDecodeError, UnsupportedInput
from medialens_shared.sniff import SNIFF_BYTES, sniff
from scripts.samples import corrupt, faststart, make_audio, make_audio_only, make_csv, make_video, truncate
from tests.fixtures.memory import resident_bytes_left_per_call
from tests.fixtures.pictures import mux_black_picture

from .signals import noise, sine, write, write_late_audio

#: Samples per frame of each codec: the tolerance on a lossy file's duration.
FRAME = {"pcm_s16le": 1, "flac": 4608, "mp3": 1152, "aac": 1024}


@pytest.mark.parametrize(
    ("name", "codec", "sample_rate", "channels"),
    [
        ("a.wav", "pcm_s16le", 48000, 2),
        ("a.flac", "flac", 44100, 1),
        ("a.mp3", "mp3", 44100, 2),
        ("a.m4a", "aac", 48000, 2),
        ("mono.m4a", "aac", 22050, 1),
    ],
)
def test_reads_exact_audio_metadata(
    tmp_path: Path, name: str, codec: str, sample_rate: int, channels: int
) -> None:
    """Each audio format reports its exact codec, rate and channels, and its duration to a frame."""
    path = tmp_path / name
    make_audio(path, duration_s=1.5, sample_rate=sample_rate, channels=channels)
    result = probe_audio(path)
    assert (result.codec, result.sample_rate, result.channels) == (codec, sample_rate, channels)
    assert result.duration_s == pytest.approx(1.5, abs=FRAME[codec] / sample_rate)
    assert result.bit_rate is not None
    assert result.bit_rate > 0


@pytest.mark.parametrize(("codec", "named"), [("mp2", "mp2"), ("libmp3lame", "mp3")])
def test_mpeg_audio_in_a_transport_stream_is_named_by_its_layer(
    tmp_path: Path, codec: str, named: str
) -> None:
    """FFmpeg 8's MPEG-TS demuxer names every MPEG audio stream `mp3`: a radio recording's MP2 (DVB's sound)
    was probed as `mp3`, where ffprobe says `mp2`. Its frames' headers say which layer it is."""
    path = tmp_path / "radio.ts"
    make_audio_only(path, container_format="mpegts", codec=codec)
    assert probe_audio(path).codec == named


def test_wav_bit_rate_is_exact(tmp_path: Path) -> None:
    """A 16-bit PCM WAV's bit rate is sample rate x channels x 16."""
    path = tmp_path / "a.wav"
    make_audio(path, duration_s=0.5, sample_rate=16000, channels=1)
    assert probe_audio(path).bit_rate == 16000 * 16


def test_audio_track_of_a_video(tmp_path: Path) -> None:
    """A video file with an audio track is probed through its first audio stream."""
    path = tmp_path / "v.mp4"
    make_video(path, duration_s=1.0, with_audio=True, audio_sample_rate=44100, audio_channels=1)
    result = probe_audio(path)
    assert (result.codec, result.sample_rate, result.channels) == ("aac", 44100, 1)
    assert result.duration_s == pytest.approx(1.0, abs=1024 / 44100)


@pytest.mark.parametrize(
    ("name", "codec", "start_s", "video_s"),
    [
        ("late.mkv", "pcm_s16le", 1.5, 4.0),
        ("late.mp4", "flac", 1.5, 4.0),
        ("short.mkv", "pcm_s16le", 0.0, 4.0),
        ("long.mkv", "pcm_s16le", 0.0, 1.0),
    ],
)
def test_the_duration_is_the_soundtracks_own(
    tmp_path: Path, name: str, codec: str, start_s: float, video_s: float
) -> None:
    """A 2.5 s soundtrack lasts 2.5 s, as ffprobe reports its stream's duration, whether it comes in 1.5 s
    after the video or stops before the video does: an MKV (which states no stream duration) read the
    container's 4.0 s. Audio that outlasts its video spans the container, as before."""
    path = write_late_audio(tmp_path / name, noise(-20.0, 2.5), start_s=start_s, video_s=video_s, codec=codec)
    assert probe_audio(path).duration_s == pytest.approx(2.5, abs=1e-6)


@pytest.mark.skipif(
    shutil.which("mkvmerge") is None, reason="mkvmerge (Debian's mkvtoolnix) is not installed"
)
def test_the_duration_of_a_late_soundtrack_muxed_by_mkvmerge_is_its_own(tmp_path: Path) -> None:
    """mkvmerge writes a track's length in its DURATION tag (FFmpeg's muxer its end time): the same 2.5 s
    soundtrack starting at 1.5 s, remuxed by mkvmerge, lasts 2.5 s (read as an end time, it lasted 1.0 s)."""
    made = write_late_audio(tmp_path / "late.mkv", noise(-20.0, 2.5), start_s=1.5, video_s=4.0, codec="flac")
    remuxed = tmp_path / "mkvmerge.mkv"
    subprocess.run(["mkvmerge", "-q", "-o", str(remuxed), str(made)], check=True)
    with av.open(str(remuxed)) as container:
        tags = container.streams.audio[0].metadata
    assert tags["DURATION"].startswith("00:00:02.5")
    assert "mkvmerge" in tags["_STATISTICS_WRITING_APP"]
    assert probe_audio(remuxed).duration_s == pytest.approx(2.5, abs=1e-3)


def test_silent_video_is_unsupported(tmp_path: Path) -> None:
    """A video without an audio track is rejected as unsupported input."""
    path = tmp_path / "v.mp4"
    make_video(path, duration_s=0.4)
    with pytest.raises(UnsupportedInput, match="no audio stream"):
        probe_audio(path)


def test_csv_is_unsupported(tmp_path: Path) -> None:
    """A CSV table is rejected as unsupported input."""
    path = tmp_path / "t.csv"
    make_csv(path, rows=20)
    with pytest.raises(UnsupportedInput):
        probe_audio(path)


def test_empty_file_is_unsupported(tmp_path: Path) -> None:
    """An empty file is rejected as unsupported input, not as damaged media."""
    path = tmp_path / "empty.wav"
    path.write_bytes(b"")
    with pytest.raises(UnsupportedInput, match="empty"):
        probe_audio(path)


def test_truncated_m4a_is_a_decode_error(tmp_path: Path) -> None:
    """An M4A cut short loses its index and is reported as damaged media."""
    path = tmp_path / "a.m4a"
    make_audio(path, duration_s=1.0)
    damaged = tmp_path / "cut.m4a"
    truncate(path, damaged, keep_fraction=0.5)
    with pytest.raises(MediaDecodeError):
        probe_audio(damaged)


@pytest.mark.parametrize("keep_fraction", [0.3, 0.9])
def test_a_streaming_m4a_cut_short_is_a_decode_error(tmp_path: Path, keep_fraction: float) -> None:
    """An M4A whose index comes first (made for streaming) still opens when cut short, its index listing
    sound the file no longer holds: the probe reported the whole duration and the loudness measured what
    was left, both succeeding. It is MEDIA_DECODE_ERROR; the whole file reads as before."""
    plain, streaming, damaged = tmp_path / "a.m4a", tmp_path / "fast.m4a", tmp_path / "cut.m4a"
    make_audio(plain, duration_s=3.0)
    faststart(plain, streaming)
    truncate(streaming, damaged, keep_fraction=keep_fraction)
    assert probe_audio(streaming).duration_s == pytest.approx(3.0, abs=0.05)
    with pytest.raises(MediaDecodeError, match="truncated"):
        probe_audio(damaged)
    with pytest.raises(MediaDecodeError, match="truncated"):
        measure_loudness(damaged, None, lambda _f, _m: None)


@pytest.mark.parametrize("keep_fraction", [0.01, 0.5, 0.99])
def test_a_truncated_wav_is_a_decode_error(tmp_path: Path, keep_fraction: float) -> None:
    """A WAV holding fewer bytes than its header declares is a truncated upload, MEDIA_DECODE_ERROR: FFmpeg
    reads it quietly to where it ends, and the probe reported the rest's duration (and an analysis measured
    a fragment) as if the file were whole."""
    path = tmp_path / "a.wav"
    make_audio(path, duration_s=2.0)
    damaged = tmp_path / "cut.wav"
    truncate(path, damaged, keep_fraction=keep_fraction)
    with pytest.raises(MediaDecodeError, match="truncated"):
        probe_audio(damaged)


@pytest.mark.parametrize("bit_rate", ["constant", "variable"])
def test_an_mp3_cut_short_is_a_decode_error(tmp_path: Path, bit_rate: str) -> None:
    """An MP3 whose Xing or Info header (LAME's, in most MP3s) declares more bytes than the file holds is
    truncated: FFmpeg takes the duration from the header and reads the rest quietly, so the probe said
    10 s of a file holding 5 and the analyses measured the half there. A whole one, and one cut by less
    than a frame, read as before."""
    options = {"abr": "1"} if bit_rate == "variable" else None
    path = write(tmp_path / "a.mp3", noise(-20.0, 10.0, rate=44100), rate=44100, codec_options=options)
    assert probe_audio(path).duration_s == pytest.approx(10.0, abs=0.05)
    damaged = tmp_path / "cut.mp3"
    truncate(path, damaged, keep_fraction=0.5)
    with pytest.raises(MediaDecodeError, match="truncated"):
        probe_audio(damaged)
    with pytest.raises(MediaDecodeError, match="truncated"):
        measure_loudness(damaged, None, lambda _f, _m: None)
    nearly = tmp_path / "nearly.mp3"
    nearly.write_bytes(path.read_bytes()[:-200])
    assert probe_audio(nearly).codec == "mp3"


def test_a_low_rate_mp3_cut_short_is_a_decode_error(tmp_path: Path) -> None:
    """At 8 kb/s (a phone's voice memo) a frame is 72 bytes: a file of 6 s cut to 40% lacks fewer bytes than
    the fixed 4 KB a writer's last frame was allowed (found in review), yet most of its sound. The bytes
    allowed follow the file's own frame size; the whole file reads."""
    path = tmp_path / "memo.mp3"
    with av.open(str(path), "w") as container:
        sound = container.add_stream("libmp3lame", rate=8000)
        sound.layout, sound.bit_rate = "mono", 8000
        _mux_samples(container, sound, noise(-20.0, 6.0, rate=8000, channels=1), rate=8000, layout="mono")
    assert probe_audio(path).duration_s == pytest.approx(6.0, abs=0.1)
    damaged = tmp_path / "cut.mp3"
    truncate(path, damaged, keep_fraction=0.4)
    assert path.stat().st_size - damaged.stat().st_size < 4096
    with pytest.raises(MediaDecodeError, match="truncated"):
        probe_audio(damaged)


def test_a_wav_written_to_a_pipe_is_read_whole(tmp_path: Path) -> None:
    """A WAV whose RIFF size says "unknown" (a writer to a pipe leaves 0xFFFFFFFF) is not taken for a
    truncated one: its samples are read to the end."""
    path = tmp_path / "a.wav"
    make_audio(path, duration_s=1.0)
    data = bytearray(path.read_bytes())
    data[4:8] = b"\xff\xff\xff\xff"
    piped = tmp_path / "piped.wav"
    piped.write_bytes(bytes(data))
    assert probe_audio(piped).duration_s == pytest.approx(1.0, abs=0.01)


@pytest.mark.parametrize("writer_bug", ["riff-size-of-the-whole-file", "no-pad-byte"])
def test_a_complete_wav_with_a_wrong_riff_size_is_read_whole(tmp_path: Path, writer_bug: str) -> None:
    """A WAV whose samples are all there is read whole whatever its RIFF size says: the size of the whole
    file (8 bytes too many, a known writer bug), or one counting the pad byte an odd-sized `data` chunk
    ends with when the writer left it out. Only a `data` chunk running past the end of the file is a
    truncation (both were rejected as truncated)."""
    path = write(tmp_path / "a.wav", sine(-20.0, 1.0, rate=8001, channels=1), rate=8001, codec="pcm_u8")
    data = path.read_bytes()
    at = data.index(b"data")
    assert (int.from_bytes(data[at + 4 : at + 8], "little"), len(data)) == (8001, at + 8 + 8001 + 1)  # padded
    if writer_bug == "riff-size-of-the-whole-file":
        data = data[:4] + len(data).to_bytes(4, "little") + data[8:]
    else:
        data = data[:-1]
    whole = tmp_path / "whole.wav"
    whole.write_bytes(data)
    assert probe_audio(whole).duration_s == pytest.approx(1.0)
    result = measure_loudness(whole, None, lambda _fraction, _message: None)
    assert result.sample_peak_dbfs == pytest.approx(-20.0, abs=0.2)  # to 8 bits


def test_corrupted_wav_still_probes(tmp_path: Path) -> None:
    """Garbage in a PCM WAV's samples is just noise: the probe succeeds with the original values."""
    path = tmp_path / "a.wav"
    make_audio(path, duration_s=1.0)
    damaged = tmp_path / "garbled.wav"
    corrupt(path, damaged, start_fraction=0.0)
    result = probe_audio(damaged)
    assert (result.codec, result.sample_rate, result.channels) == ("pcm_s16le", 48000, 2)
    assert result.duration_s == pytest.approx(1.0)


def test_wav_with_garbled_header_is_a_decode_error(tmp_path: Path) -> None:
    """A WAV whose chunk headers are garbage still sniffs as audio, so it is reported as damaged media."""
    path = tmp_path / "a.wav"
    make_audio(path, duration_s=1.0)
    damaged = tmp_path / "garbled.wav"
    corrupt(path, damaged, start_fraction=0.0, keep_head_bytes=12)
    with pytest.raises(MediaDecodeError, match="damaged"):
        probe_audio(damaged)


def test_missing_file(tmp_path: Path) -> None:
    """A path with no file behind it raises InputNotFound."""
    with pytest.raises(InputNotFound):
        probe_audio(tmp_path / "nothing.wav")


def write_spdif_wav(path: Path, *, seconds: float, silence_bytes: int = 0) -> None:
    """A WAV whose PCM samples carry an AC-3 stream as S/PDIF (IEC 61937) bursts, as DVD rips do, after
    `silence_bytes` of zero samples."""
    bitstream = io.BytesIO()
    with av.open(bitstream, "w", format="spdif") as out:
        stream = out.add_stream("ac3", rate=48000, layout="stereo")
        samples = int(48000 * seconds)
        tone = (0.3 * np.sin(2 * np.pi * 440 * np.arange(samples) / 48000)).astype(np.float32)
        for start in range(0, samples, 1536):
            frame = av.AudioFrame.from_ndarray(
                np.tile(tone[start : start + 1536], (2, 1)), format="fltp", layout="stereo"
            )
            frame.sample_rate, frame.pts = 48000, start
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    data = bytes(silence_bytes) + bitstream.getvalue()
    fmt = struct.pack("<IHHIIHH", 16, 1, 2, 48000, 48000 * 4, 4, 16)
    path.write_bytes(
        b"RIFF" + struct.pack("<I", 36 + len(data)) + b"WAVE" + b"fmt " + fmt
        + b"data" + struct.pack("<I", len(data)) + data
    )  # fmt: skip


def test_ac3_carried_in_a_wav_is_found_within_the_shortened_probe(tmp_path: Path) -> None:
    """A WAV is opened reading only WAV_PROBE_BYTES ahead, which still finds an S/PDIF stream in it."""
    path = tmp_path / "dvd.wav"
    write_spdif_wav(path, seconds=2.0)
    assert path.stat().st_size > 10 * WAV_PROBE_BYTES
    result = probe_audio(path)
    assert (result.codec, result.sample_rate, result.channels) == ("ac3", 48000, 2)


@pytest.mark.parametrize(
    "kind", ["cd", "mono-8k", "six-channels-96k", "ac3-in-pcm", "ac3-after-20-kb-of-silence"]
)
def test_a_wav_read_with_the_short_probe_reads_as_with_ffmpegs_default(tmp_path: Path, kind: str) -> None:
    """A WAV is opened reading WAV_PROBE_BYTES ahead: every field as FFmpeg's default open (5 MB ahead)
    reads it, for PCM and for S/PDIF carried in PCM, even behind silence."""
    path = tmp_path / f"{kind}.wav"
    if kind.startswith("ac3"):
        write_spdif_wav(path, seconds=2.0, silence_bytes=20_000 if "silence" in kind else 0)
    else:
        rate, channels = {"cd": (44100, 2), "mono-8k": (8000, 1), "six-channels-96k": (96000, 6)}[kind]
        make_audio(path, duration_s=1.0, sample_rate=rate, channels=channels)
    result = probe_audio(path)
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        expected = (
            stream.codec_context.codec.canonical_name,
            stream.codec_context.sample_rate,
            stream.codec_context.channels,
            float(stream.duration * stream.time_base),
            stream.bit_rate,
        )
    assert (result.codec, result.sample_rate, result.channels, result.duration_s, result.bit_rate) == expected
    assert result.codec == ("ac3" if kind.startswith("ac3") else "pcm_s16le")


def test_probing_leaves_no_memory_behind(tmp_path: Path) -> None:
    """A probe stops at the first frame: the demuxer it leaves midway must be closed, not dropped, or
    PyAV keeps 250 bytes or more of each probe (the audio service's soak grew by about that per job)."""
    path = tmp_path / "tone.wav"
    make_audio(path, duration_s=1.0, sample_rate=44100, channels=2)
    assert resident_bytes_left_per_call(lambda: probe_audio(path), calls=3000) < 50


@pytest.mark.parametrize(
    ("name", "write_options"),
    [
        ("abr.mp3", {"bare": True, "codec_options": {"abr": "1"}}),  # raw: no ID3 tag, no Xing header
        ("tagged-abr.mp3", {"xing": False, "codec_options": {"abr": "1"}}),  # an ID3v2 tag, no Xing header
        ("adts.aac", {}),
    ],
)
def test_a_raw_stream_at_a_variable_bit_rate_has_its_frames_counted(
    tmp_path: Path, name: str, write_options: dict[str, Any]
) -> None:
    """A raw MP3 with no Xing header, or ADTS AAC, holds no length: FFmpeg estimates one from the first
    frames' bit rate. 10 s starting with 3 s of silence read 44.5 s (MP3) and 302.6 s (AAC) and so did
    every analysis's progress; the frames are counted now."""
    rate = 44100
    samples = np.concatenate([sine(-120.0, 3.0, rate=rate), noise(-10.0, 7.0, rate=rate)], axis=1)
    path = write(tmp_path / name, samples, rate=rate, **write_options)
    with av.open(str(path)) as container:
        assert container.duration / 1_000_000 > 20  # FFmpeg's estimate: what the file is about
    result = probe_audio(path)
    assert result.duration_s == pytest.approx(10.0, abs=2 * 1152 / rate)
    # Its bit rate over that length, not the quiet first frames' (32,000 b/s for the MP3, 3,919 the AAC).
    assert result.bit_rate == pytest.approx(path.stat().st_size * 8 / result.duration_s, rel=0.01)


@pytest.mark.parametrize("codec", ["libopus", "vorbis"])
def test_chained_ogg_lasts_every_chain(tmp_path: Path, codec: str) -> None:
    """Two Ogg Opus or Vorbis files joined byte by byte (as `cat` joins them, as an internet radio's
    recording holds its programmes) state only the last chain's length, 1 s of 3: its packets are counted,
    so the probe says 3 s, its bit rate is over 3 s, and a waveform held to fewer points than 3 s at the
    asked rate lowers its rate (it failed as longer than its metadata says). Vorbis was taken for one
    chain, the check looking for a second Opus header."""
    options = {"strict": "experimental"} if codec == "vorbis" else None  # FFmpeg's own Vorbis encoder
    first = write(tmp_path / "a.ogg", sine(-20.0, 2.0), codec=codec, codec_options=options)
    second = write(tmp_path / "b.ogg", sine(-10.0, 1.0), codec=codec, codec_options=options)
    chained = tmp_path / "chained.ogg"
    chained.write_bytes(first.read_bytes() + second.read_bytes())
    result = probe_audio(chained)
    assert result.duration_s == pytest.approx(3.0, abs=0.05)  # Vorbis: a last block of 2,048 samples
    assert result.bit_rate == pytest.approx(chained.stat().st_size * 8 / result.duration_s, rel=0.01)
    waveform = compute_waveform(
        chained, AudioWaveformParams(points_per_second=100), lambda _f, _m: None, max_points=250
    )
    assert waveform.duration_s == pytest.approx(3.0, abs=0.05)  # Vorbis: a last block of 2,048 samples
    assert len(waveform.peaks) <= 250


def test_a_single_ogg_opus_is_not_demuxed_to_count_its_packets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only a file where a stream begins after another's pages is counted: one of a single chain keeps its
    stated length without a demux of the whole file on every open (which took 0.4 s for an hour)."""
    single = write(tmp_path / "a.ogg", sine(-20.0, 2.0), codec="libopus")
    chained = tmp_path / "chained.ogg"
    chained.write_bytes(single.read_bytes() * 2)
    assert len(_ogg_chain_starts(single)) == 1
    assert _ogg_chain_starts(chained) == [0, single.stat().st_size]
    multiplexed = tmp_path / "two-streams.ogg"  # both begin on the first pages: not chained
    with av.open(str(multiplexed), mode="w") as container:
        streams = [container.add_stream("libopus", rate=48000) for _ in range(2)]
        for stream in streams:
            stream.layout = "mono"
        for k in range(50):
            for stream in streams:
                frame = av.AudioFrame.from_ndarray(
                    np.zeros((1, 960), np.float32), format="flt", layout="mono"
                )
                frame.sample_rate, frame.pts = 48000, k * 960
                container.mux(stream.encode(frame))
        for stream in streams:
            container.mux(stream.encode(None))
    assert _ogg_chain_starts(multiplexed) == [0]
    counted: list[str] = []
    monkeypatch.setattr(decode, "_counted_duration", lambda path, _index: counted.append(path))
    assert probe_audio(single).duration_s == pytest.approx(2.0, abs=0.001)
    assert counted == []


def test_an_mp3_with_a_xing_header_keeps_its_stated_length(tmp_path: Path) -> None:
    """An MP3 written as LAME and FFmpeg write one (an ID3v2 tag, then a Xing frame with the frame count)
    is not counted: FFmpeg reads its length there."""
    path = write(tmp_path / "a.mp3", noise(-10.0, 2.0, rate=44100), rate=44100, codec_options={"abr": "1"})
    assert path.read_bytes()[:3] == b"ID3"
    assert _mp3_length_header(path)
    assert not _mp3_length_header(write(tmp_path / "raw.mp3", noise(-10.0, 2.0), bare=True))
    assert probe_audio(path).duration_s == pytest.approx(2.0, abs=2 * 1152 / 44100)


@pytest.mark.parametrize(
    ("name", "codec"),
    [("recorded.webm", "libopus"), ("recorded.mka", "flac"), ("piped.flac", "flac")],
)
def test_a_file_that_states_no_length_has_its_packets_counted(tmp_path: Path, name: str, codec: str) -> None:
    """A WebM or Matroska written as it is recorded (a browser's MediaRecorder, any writer to a pipe) states
    no duration, nor a FLAC written to a pipe: FFmpeg gives none, and the probe said null for 10 s of
    audio, with no bit rate. The packets are counted, and the bit rate is the file's size over that."""
    path = write(tmp_path / name, sine(-20.0, 10.0), codec=codec, piped=True)
    with av.open(str(path)) as container:
        assert container.duration is None
    result = probe_audio(path)
    assert result.duration_s == pytest.approx(10.0, abs=1e-3)
    assert result.bit_rate == pytest.approx(path.stat().st_size * 8 / 10.0, rel=1e-3)


@pytest.mark.parametrize("rate", [48000, 16000])
def test_the_duration_of_ogg_opus_leaves_out_its_pre_skip(tmp_path: Path, rate: int) -> None:
    """Ogg Opus states its length as its last page's granule position, which counts the pre-skip the decoder
    drops (312 samples for libopus; RFC 7845 section 4.5): 2 s read 2.0065 s, as FFmpeg takes it. The
    duration is that of the samples decoded, whatever the rate of the input (Opus decodes at 48 kHz)."""
    path = write(tmp_path / "tone.ogg", sine(-20.0, 2.0, rate=rate), rate=rate, codec="libopus")
    with av.open(str(path)) as container:
        decoded = sum(frame.samples for frame in container.decode(audio=0))
    assert decoded == 96000
    result = probe_audio(path)
    assert (result.sample_rate, result.duration_s) == (48000, pytest.approx(2.0, abs=1e-6))


#: Audio formats FFmpeg writes and reads whose files the gateway's sniffing took for unknown (a 415 for every
#: audio job): (name, muxer, codec, muxer options, codec options, the kind sniffed now).
UNSNIFFED_FORMATS = [
    ("rf64.wav", "wav", "pcm_s16le", {"rf64": "always"}, {}, FileKind.AUDIO),
    ("a.w64", "w64", "pcm_s16le", {}, {}, FileKind.AUDIO),
    ("a.caf", "caf", "pcm_s16le", {}, {}, FileKind.AUDIO),
    ("a.au", "au", "pcm_s16be", {}, {}, FileKind.AUDIO),
    ("a.tta", "tta", "tta", {}, {}, FileKind.AUDIO),
    ("a.ac3", "ac3", "ac3", {}, {}, FileKind.AUDIO),
    ("a.eac3", "eac3", "eac3", {}, {}, FileKind.AUDIO),
    ("a.wma", "asf", "wmav2", {}, {"b": "128000"}, FileKind.AUDIO),
]


@pytest.mark.parametrize(
    ("name", "muxer", "codec", "muxer_options", "codec_options", "kind"),
    UNSNIFFED_FORMATS,
    ids=[entry[0] for entry in UNSNIFFED_FORMATS],
)
def test_audio_formats_ffmpeg_reads_are_sniffed_as_media_and_probed(
    tmp_path: Path,
    name: str,
    muxer: str,
    codec: str,
    muxer_options: dict[str, str],
    codec_options: dict[str, str],
    kind: FileKind,
) -> None:
    """RF64 (WAV past 4 GB), Wave64, CAF, AU, TTA, raw AC-3 and E-AC-3, and WMA (ASF): the audio
    service reads each, and uploads of them are now audio by their first bytes, which the audio jobs take
    (an ASF file with no video stream is WMA)."""
    rate = 48000
    samples = sine(-20.0, 1.0, rate=rate)
    path = tmp_path / name
    with av.open(str(path), mode="w", format=muxer, options=muxer_options) as container:
        stream = container.add_stream(codec, rate=rate, options=codec_options)
        stream.layout = "stereo"
        frame = av.AudioFrame.from_ndarray(samples, format="fltp", layout="stereo")
        frame.sample_rate = rate
        container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    assert sniff(path.read_bytes()[:SNIFF_BYTES]) is kind
    result = probe_audio(path)
    assert result.sample_rate == rate
    assert result.duration_s == pytest.approx(1.0, abs=0.05)


def test_a_tag_that_is_not_utf8_is_read_with_the_rest_of_the_file(tmp_path: Path) -> None:
    """A WAV titled in Latin-1 (as Windows tools write their tags) is probed and measured: opening it
    failed every audio job with a UnicodeDecodeError, an INTERNAL_ERROR, PyAV reading tags strictly."""
    path = write(tmp_path / "tagged.wav", sine(-20.0, 2.0))
    data = path.read_bytes()
    title = b"INAM" + struct.pack("<I", 6) + "Café!\0".encode("latin-1")
    info = b"LIST" + struct.pack("<I", 4 + len(title)) + b"INFO" + title
    path.write_bytes(data[:4] + struct.pack("<I", len(data) - 8 + len(info)) + data[8:] + info)
    with av.open(str(path), metadata_errors="replace") as container:
        assert container.metadata["title"] == "Caf\ufffd!"  # the tag is there, and not UTF-8
    result = probe_audio(path)
    assert result.duration_s == pytest.approx(2.0, abs=1e-3)
    assert measure_loudness(path, None, lambda _f, _m: None).integrated_lufs == pytest.approx(-20.0, abs=0.1)


def test_a_codec_with_no_decoder_is_unsupported_input(tmp_path: Path) -> None:
    """A WAV whose format tag names a codec FFmpeg has no decoder for fails UNSUPPORTED_INPUT: PyAV gives
    its stream no codec context, and every audio job failed with an AttributeError (an INTERNAL_ERROR)."""
    path = write(tmp_path / "plain.wav", sine(-20.0, 1.0))
    data = path.read_bytes()
    assert data[20:22] == struct.pack("<H", 1)  # WAVE_FORMAT_PCM
    unknown = tmp_path / "unknown.wav"
    unknown.write_bytes(data[:20] + struct.pack("<H", 0x1234) + data[22:])
    with pytest.raises(UnsupportedInput, match="audio is in a codec this service cannot decode"):
        probe_audio(unknown)
    with pytest.raises(UnsupportedInput, match="audio is in a codec this service cannot decode"):
        measure_loudness(unknown, None, lambda _f, _m: None)


def test_a_track_in_a_codec_with_no_decoder_before_a_readable_one_is_passed_over(tmp_path: Path) -> None:
    """Of a Matroska file's two soundtracks, the first in a codec FFmpeg has no decoder for, the jobs read
    the second: they took the first and failed UNSUPPORTED_INPUT, though the file holds readable audio."""
    made, path = tmp_path / "two.mka", tmp_path / "first-unknown.mka"
    with av.open(str(made), mode="w") as container:
        tracks = [container.add_stream(codec, rate=48000) for codec in ("aac", "libopus")]
        for track in tracks:
            track.layout = "mono"
        tone = sine(-20.0, 2.0, channels=1)
        for k in range(0, tone.shape[1], 960):
            for track in tracks:
                frame = av.AudioFrame.from_ndarray(tone[:, k : k + 960], format="fltp", layout="mono")
                frame.sample_rate, frame.pts = 48000, k
                container.mux(track.encode(frame))
        for track in tracks:
            container.mux(track.encode(None))
    data = made.read_bytes()
    assert data.count(b"A_AAC") == 1
    path.write_bytes(data.replace(b"A_AAC", b"A_ZZZ"))
    result = probe_audio(path)
    assert (result.codec, result.duration_s) == ("opus", pytest.approx(2.0, abs=0.03))
    assert measure_loudness(path, None, lambda _f, _m: None).integrated_lufs is not None


def test_the_bit_rate_of_a_soundtrack_that_states_none_is_unknown_not_the_files(tmp_path: Path) -> None:
    """Opus in Matroska states no bit rate of its own: the probe gave the container's, which counts the
    video beside it; it says null, as ffprobe does. A soundtrack that
    states one (AAC in MP4) keeps it."""
    for name, codec in (("opus.mkv", "libopus"), ("aac.mp4", "aac")):
        path = write_late_audio(tmp_path / name, noise(-20.0, 2.0), start_s=0.0, video_s=2.0, codec=codec)
        with av.open(str(path)) as container:
            stated = container.streams.audio[0].bit_rate or None
        assert probe_audio(path).bit_rate == stated
        assert (stated is None) == (codec == "libopus")


def _mux_samples(
    container: Any, sound: Any, samples: np.ndarray, *, rate: int = 48000, layout: str = "stereo"
) -> None:
    """Encode `samples` (stereo at 48 kHz unless told) on `sound`, a stream of the open `container`, in
    blocks of a tenth of a second, and flush it."""
    step = rate // 10
    for start in range(0, samples.shape[1], step):
        frame = av.AudioFrame.from_ndarray(
            np.ascontiguousarray(samples[:, start : start + step]), format="fltp", layout=layout
        )
        frame.sample_rate, frame.pts = rate, start
        container.mux(sound.encode(frame))
    container.mux(sound.encode(None))


def _flac_with_cover(path: Path, *, level_dbfs: float, grain_side: int | None = None) -> Path:
    """3 s of stereo noise at `level_dbfs` in a FLAC with a cover picture: black, 64 x 48, or a square of
    random pixels `grain_side` wide (a JPEG of hundreds of KB)."""
    with av.open(str(path), "w") as container:
        sound = container.add_stream("flac", rate=48000)
        sound.layout = "stereo"
        cover = container.add_stream("mjpeg", rate=1)
        cover.width, cover.height = (grain_side, grain_side) if grain_side else (64, 48)
        cover.pix_fmt = "yuvj420p"
        cover.disposition = av.stream.Disposition.attached_pic
        if grain_side is None:
            mux_black_picture(container, cover)
        else:
            grain = np.random.default_rng(8).integers(0, 256, (grain_side, grain_side, 3), dtype=np.uint8)
            picture = av.VideoFrame.from_ndarray(grain, format="rgb24").reformat(format="yuvj420p")
            picture.pts, picture.time_base = 0, Fraction(1, 1)
            container.mux(cover.encode(picture))
            container.mux(cover.encode(None))
        _mux_samples(container, sound, noise(level_dbfs, 3.0))
    return path


def test_a_cover_picture_does_not_make_the_bit_rate_unknown(tmp_path: Path) -> None:
    """A FLAC with its cover art (a picture FFmpeg shows as a stream): the audio is all there is to time,
    so its bit rate is the file's, as without the cover; taken for video, it was null."""
    path = _flac_with_cover(tmp_path / "cover.flac", level_dbfs=-20.0)
    assert probe_audio(path).bit_rate == pytest.approx(path.stat().st_size * 8 / 3.0, rel=0.02)


def _packets_bit_rate(path: Path, duration_s: float) -> float:
    """The first audio stream's packets' bytes over `duration_s`: its real average bit rate."""
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        return sum(packet.size for packet in container.demux(stream)) * 8 / duration_s


def test_a_large_cover_picture_is_not_counted_in_the_bit_rate(tmp_path: Path) -> None:
    """A FLAC states no bit rate, and the file's counted its cover: a 800 x 800 picture beside 3 s of quiet
    sound read several times the sound's rate. The stream's packets are counted then."""
    path = _flac_with_cover(tmp_path / "cover.flac", level_dbfs=-50.0, grain_side=800)
    real = _packets_bit_rate(path, 3.0)
    assert path.stat().st_size * 8 / 3.0 > 1.5 * real  # the picture weighs in the file
    assert probe_audio(path).bit_rate == pytest.approx(real, rel=0.001)


def _with_nominal_rate(data: bytes, rate: int) -> bytes:
    """An Ogg Vorbis file whose identification header states `rate` as its nominal bit rate (an encoder's
    target, which libvorbis writes and FFmpeg's own encoder leaves 0), its page's checksum made again."""
    patched = bytearray(data)
    at = patched.index(b"\x01vorbis")
    patched[at + 20 : at + 24] = struct.pack("<i", rate)
    page = patched.rindex(b"OggS", 0, at)
    segments = patched[page + 26]
    end = page + 27 + segments + sum(patched[page + 27 : page + 27 + segments])
    patched[page + 22 : page + 26] = bytes(4)
    crc = 0  # Ogg's CRC-32: polynomial 0x04C11DB7, not reflected, starting at 0
    for byte in patched[page:end]:
        crc ^= byte << 24
        for _ in range(8):
            crc = (crc << 1) ^ 0x04C11DB7 if crc & 0x80000000 else crc << 1
            crc &= 0xFFFFFFFF
    patched[page + 22 : page + 26] = struct.pack("<I", crc)
    return bytes(patched)


def test_vorbis_bit_rate_is_the_streams_not_its_nominal_one(tmp_path: Path) -> None:
    """Vorbis states its encoder's nominal rate (160,000 b/s for speech that took 88,911): the stream's
    packets are counted instead, as for an Opus or a VBR MP3, whose stated rate is their real one."""
    made = tmp_path / "made.ogg"
    with av.open(str(made), "w") as container:
        sound = container.add_stream("vorbis", rate=48000, options={"strict": "experimental"})
        sound.layout = "stereo"
        _mux_samples(container, sound, noise(-40.0, 4.0))
    path = tmp_path / "nominal.ogg"
    path.write_bytes(_with_nominal_rate(made.read_bytes(), 160_000))
    with av.open(str(path)) as container:
        assert container.streams.audio[0].bit_rate == 160_000  # what FFmpeg states
    result = probe_audio(path)
    assert result.bit_rate == pytest.approx(_packets_bit_rate(path, 4.0), rel=0.001)
    assert result.bit_rate is not None
    assert abs(result.bit_rate - 160_000) > 10_000
