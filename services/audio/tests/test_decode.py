"""The streamed decode every analyser reads through: blocks, progress, early exits."""

from __future__ import annotations

import threading
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import numpy.typing as npt
import pytest

from medialens_audio.decode import frame_of, open_audio
from medialens_audio.loudness import measure_loudness
from medialens_audio.probe import probe_audio
from medialens_audio.silence import detect_silence
from medialens_audio.waveform import compute_waveform
from medialens_shared.contracts import AudioSilenceParams, AudioWaveformParams
from medialens_shared.errors import JobCancelled, MediaDecodeError, UnsupportedInput

from .signals import amplitude, sequence, sine, write, write_late_audio


def no_report(fraction: float, message: str) -> None:
    """A progress callback that discards what it is told."""


@pytest.mark.parametrize(("channels", "suffix"), [(8, ".wav"), (8, ".flac"), (16, ".wav")])
def test_eight_channels_and_more_decode_in_place(tmp_path: Path, channels: int, suffix: str) -> None:
    """7.1 and wider audio reaches the analysers each channel in its row (PyAV crashed the process on a
    planar frame of 8 or more channels): silence and peaks where they were written, per channel."""
    samples = sine(-6.0, 3.0, channels=channels)
    samples[:, 48000:96000] = 0.0  # a silent second
    samples *= np.arange(1, channels + 1, dtype=np.float32)[:, None] / channels  # channel k at k/channels
    path = write(tmp_path / f"wide{suffix}", samples)
    with open_audio(path) as audio:
        blocks = list(audio.blocks(no_report, action="reading"))
    peaks = np.concatenate(blocks, axis=1).max(axis=1)
    assert peaks == pytest.approx(samples.max(axis=1), abs=1e-3)
    _assert_silent_second_and_waveform(path, samples)


def _assert_silent_second_and_waveform(path: Path, samples: npt.NDArray[np.float32]) -> None:
    """`path`, of `samples` silent in their second second, has that second's silence found and a waveform
    of one point a second that is the channels' mean."""
    silence = detect_silence(path, AudioSilenceParams(threshold_db=-50.0, min_duration_s=0.5), no_report)
    assert [(s.start_s, s.end_s) for s in silence.segments] == [pytest.approx((1.0, 2.0), abs=0.01)]
    waveform = compute_waveform(path, AudioWaveformParams(points_per_second=1), no_report)
    mean_peak = float(samples.mean(axis=0).max())
    expected = [(-mean_peak, mean_peak), (0.0, 0.0), (-mean_peak, mean_peak)]
    assert np.asarray(waveform.peaks) == pytest.approx(np.asarray(expected), abs=1e-3)


@pytest.mark.parametrize("channels", [9, 32])
def test_channels_in_no_named_layout_are_read_and_not_weighed(tmp_path: Path, channels: int) -> None:
    """A WAV of a channel count FFmpeg names no layout for (second-order ambisonics' 9, a 32-track desk
    recording) is probed, and its silence and waveform read, each channel in its row (every job failed
    UNSUPPORTED_INPUT); loudness alone, which weighs channels by position, refuses it saying why."""
    samples = sine(-6.0, 3.0, channels=channels)
    samples[:, 48000:96000] = 0.0  # a silent second
    samples *= np.arange(1, channels + 1, dtype=np.float32)[:, None] / channels  # channel k at k/channels
    path = write(tmp_path / "desk.wav", samples, layout=f"{channels} channels")
    assert probe_audio(path).channels == channels
    with open_audio(path) as audio:
        assert (audio.layout, audio.channel_names) == (f"{channels} channels", ("NONE",) * channels)
        peaks = np.concatenate(list(audio.blocks(no_report, action="reading")), axis=1).max(axis=1)
    assert peaks == pytest.approx(samples.max(axis=1), abs=1e-3)
    _assert_silent_second_and_waveform(path, samples)
    with pytest.raises(UnsupportedInput, match=f"{channels} channels in no known layout, so loudness"):
        measure_loudness(path, None, no_report)


@pytest.mark.parametrize(("suffix", "slack"), [(".wav", 0), (".flac", 0), (".mp3", 1152)])
def test_blocks_cover_the_stream_in_seconds(tmp_path: Path, suffix: str, slack: int) -> None:
    """Blocks are float32 (channels, ~1 s) and add up to the stream's length (to a codec frame)."""
    path = write(tmp_path / f"tone{suffix}", sine(-6.0, 3.5, rate=44100, channels=2), rate=44100)
    with open_audio(path) as audio:
        blocks = list(audio.blocks(no_report, action="reading"))
        assert (audio.sample_rate, audio.layout, audio.channel_names) == (44100, "stereo", ("FL", "FR"))
        assert audio.samples == sum(block.shape[1] for block in blocks)
    assert all(block.dtype.name == "float32" and block.shape[0] == 2 for block in blocks)
    assert all(44100 <= block.shape[1] < 44100 + 4608 for block in blocks[:-1])
    assert abs(sum(block.shape[1] for block in blocks) - round(3.5 * 44100)) <= slack


def test_a_cancel_stops_the_decoding_thread(tmp_path: Path) -> None:
    """When `report` raises JobCancelled the error reaches the caller and the decode thread is gone."""
    path = write(tmp_path / "tone.wav", sine(-6.0, 6.0))

    def cancel_at_two_seconds(fraction: float, message: str) -> None:
        if fraction > 0.3:
            raise JobCancelled("cancelled on request")

    with open_audio(path) as audio, pytest.raises(JobCancelled):
        for _block in audio.blocks(cancel_at_two_seconds, action="reading"):
            pass
    assert 2 * 48000 <= audio.samples < 2 * (48000 + 4608)  # stopped after the second block
    assert not [thread for thread in threading.enumerate() if thread.name == "audio-decode"]


def test_a_name_with_filter_syntax_decodes(tmp_path: Path) -> None:
    """A file named with the characters of FFmpeg's filter syntax (: , ' [ ] ; =) decodes whole."""
    path = write(tmp_path / "a:b,c'd[e];f=g h.wav", sine(-6.0, 1.5))
    with open_audio(path) as audio:
        blocks = list(audio.blocks(no_report, action="reading"))
    assert sum(block.shape[1] for block in blocks) == 72000


def read_all(path: Path) -> tuple[int, str, np.ndarray]:
    """The rate, layout and every sample of a file as the analysers read it."""
    with open_audio(path) as audio:
        blocks = list(audio.blocks(no_report, action="reading"))
        return audio.sample_rate, audio.layout, np.concatenate(blocks, axis=1)


def test_mp2_decoded_in_another_format_than_declared_is_read(tmp_path: Path) -> None:
    """An MP2 file, which FFmpeg declares as float samples while its decoder gives 16-bit ones, is measured
    like its source (it failed at 0.0 s: FFmpeg's `amovie` takes only the declared format)."""
    path = write(tmp_path / "tone.mp2", sine(-23.0, 3.0))
    assert measure_loudness(path, None, no_report).integrated_lufs == pytest.approx(-23.0, abs=0.2)
    assert detect_silence(path, AudioSilenceParams(), no_report).segments == []
    waveform = compute_waveform(path, AudioWaveformParams(points_per_second=1), no_report)
    assert np.abs(waveform.peaks)[:3] == pytest.approx(amplitude(-23.0), rel=0.02)


def rate_change(tmp_path: Path) -> Path:
    """Two MP3s joined byte by byte: 3 s of a -20 dBFS tone at 44.1 kHz, then 3 s at -10 dBFS and 48 kHz."""
    first = write(tmp_path / "a.mp3", sine(-20.0, 3.0, rate=44100, channels=1), rate=44100, bare=True)
    second = write(tmp_path / "b.mp3", sine(-10.0, 3.0, rate=48000, channels=1), rate=48000, bare=True)
    joined = tmp_path / "joined.mp3"
    joined.write_bytes(first.read_bytes() + second.read_bytes())
    return joined


def test_a_rate_change_midway_is_resampled_to_the_first_rate(tmp_path: Path) -> None:
    """Two MP3s joined byte by byte (`rate_change`) read as one stream at 44.1 kHz: 6 s long (not 6.27, as
    the 48 kHz samples taken for 44.1 kHz ones would last), each part at its level, without a seam (it
    failed after 3 s)."""
    joined = rate_change(tmp_path)
    rate, layout, samples = read_all(joined)
    assert (rate, layout) == (44100, "mono")
    assert samples.shape[1] / rate == pytest.approx(6.0, abs=0.1)
    half = rate // 2
    peaks = np.abs(samples[0, : 11 * half]).reshape(11, half).max(axis=1)  # per half second to 5.5 s
    # LAME lowers a tone's level by about 0.3 dB; the half seconds around the join hold both levels.
    assert peaks[:5] == pytest.approx(amplitude(-20.0), rel=0.06)
    assert peaks[7:] == pytest.approx(amplitude(-10.0), rel=0.06)
    short_term = [point.lufs for point in measure_loudness(joined, None, no_report).short_term]
    # A mono 1 kHz tone at L dBFS is L - 3 LUFS (less LAME's 0.3 dB): 0-3 s and 3-6 s.
    assert (short_term[0], short_term[-1]) == pytest.approx((-23.3, -13.3), abs=0.2)


def test_a_channel_change_midway_is_remixed_to_the_first_layout(tmp_path: Path) -> None:
    """ADTS AAC going from mono to stereo (4 s each of a -23 dBFS tone) reads as mono throughout: the stereo
    part is folded to mono at -3 dB per channel, which keeps its loudness (-23 LUFS, as stereo measures it;
    the mono part -26) and duration (it failed after 4 s)."""
    mono = write(tmp_path / "mono.aac", sine(-23.0, 4.0, channels=1))
    stereo = write(tmp_path / "stereo.aac", sine(-23.0, 4.0, channels=2))
    joined = tmp_path / "joined.aac"
    joined.write_bytes(mono.read_bytes() + stereo.read_bytes())
    rate, layout, samples = read_all(joined)
    assert (rate, layout, samples.shape[0]) == (48000, "mono", 1)
    assert samples.shape[1] / rate == pytest.approx(8.0, abs=0.1)
    short_term = {point.t_s: point.lufs for point in measure_loudness(joined, None, no_report).short_term}
    assert (short_term[4.0], short_term[8.0]) == pytest.approx((-26.0, -23.0), abs=0.2)
    waveform = compute_waveform(joined, AudioWaveformParams(points_per_second=1), no_report)
    assert np.abs(waveform.peaks)[5:8] == pytest.approx(amplitude(-23.0) * np.sqrt(2.0), rel=0.02)


#: An ID3v1 tag (128 bytes: title, artist, album, year, comment, genre), as taggers append to MP3s.
ID3V1 = b"TAG" + b"".join(field.ljust(30, b"\0") for field in (b"Title", b"Artist", b"Album"))
ID3V1 += b"2020" + b"Comment".ljust(30, b"\0") + b"\x0c"
#: A Lyrics3 version 2 tag (its fields, their size in six digits, `LYRICS200`), which goes before ID3v1.
LYRICS = b"LYRICSBEGIN" + b"IND00003110" + b"LYR00005hello"
LYRICS3 = LYRICS + str(len(LYRICS)).zfill(6).encode() + b"LYRICS200"


def same_samples(read: npt.NDArray[np.float32], expected: npt.NDArray[np.float32]) -> None:
    """`read == pytest.approx(expected)` (its tolerances), in NumPy: approx compares 300,000 samples one
    by one in Python, 3 s a clip (13 to 20 s under coverage)."""
    np.testing.assert_allclose(read, expected, rtol=1e-6, atol=1e-12)


def id3v2(picture_bytes: int = 0) -> bytes:
    """An ID3v2.3 tag with a title and, of `picture_bytes`, a cover picture (random bytes, so holding
    what reads as MPEG frame syncs: FFmpeg's MP3 reader splits such a tag over several packets)."""
    frames = b"TIT2" + (6).to_bytes(4, "big") + b"\0\0" + b"\x00Title"
    if picture_bytes:
        picture = b"\x00image/jpeg\x00\x03\x00" + np.random.default_rng(0).bytes(picture_bytes)
        frames += b"APIC" + len(picture).to_bytes(4, "big") + b"\0\0" + picture
    size = len(frames)
    return b"ID3\x03\x00\x00" + bytes((size >> shift) & 0x7F for shift in (21, 14, 7, 0)) + frames


@pytest.mark.parametrize(
    ("name", "codec", "trailer"),
    [
        ("lyrics.mp3", "libmp3lame", LYRICS3 + ID3V1),
        ("padded.mp3", "libmp3lame", bytes(256)),
        ("id3v2_last.mp3", "libmp3lame", id3v2()),
        # The AC-3 reader glues what follows the last frame to it, and the decoder refuses the frame with
        # it (`ffmpeg` loses that frame's 32 ms): the frame is decoded alone, all of it kept.
        ("tagged.ac3", "ac3", ID3V1),
        ("padded.ac3", "ac3", bytes(1000)),
        ("padded more.ac3", "ac3", bytes(3000)),
        ("padded.eac3", "eac3", bytes(3000)),
    ],
    ids=[
        "lyrics3 and id3v1",
        "zero padding",
        "id3v2",
        "ac3 and id3v1",
        "ac3 and 1000 zeros",
        "ac3 and 3000 zeros",
        "eac3 and 3000 zeros",
    ],
)
def test_tags_and_padding_after_the_last_frame_are_passed_over(
    tmp_path: Path, name: str, codec: str, trailer: bytes
) -> None:
    """Tags or zero padding after the sound's last frame, which the reader hands the decoder as a packet
    that it refuses, are passed over: every job reads the sound as without them, to its last sample (they
    failed MEDIA_DECODE_ERROR "stops decoding after 3.0 s; the file is damaged", where `ffmpeg` reads on;
    an AC-3 with an ID3v1 tag lost its last frame)."""
    whole = write(tmp_path / f"whole{Path(name).suffix}", sine(-23.0, 3.2), codec=codec)
    tagged = tmp_path / name
    tagged.write_bytes(whole.read_bytes() + trailer)
    _, _, samples = read_all(whole)
    _, _, read = read_all(tagged)
    assert read.shape == samples.shape
    same_samples(read, samples)
    loudness = measure_loudness(tagged, None, no_report).integrated_lufs
    assert loudness == pytest.approx(measure_loudness(whole, None, no_report).integrated_lufs, abs=0.02)
    assert loudness == pytest.approx(-23.0, abs=0.5)  # a stereo 1 kHz tone at L dBFS is L LUFS
    assert detect_silence(tagged, AudioSilenceParams(), no_report).segments == []


def tone_with_a_pause() -> npt.NDArray[np.float32]:
    """A -23 dBFS 1 kHz tone for 3.5 s, silent from 1.5 to 2.5 s."""
    samples = sine(-23.0, 3.5)
    samples[:, 72000:120000] = 0.0
    return samples


@pytest.mark.parametrize(
    ("name", "padding"),
    [
        ("declared.mp3", 64 * 1024),  # its Xing header says where its sound ends: zeros after it, any length
        ("declared more.mp3", 256 * 1024),
        ("bare.mp3", 64 * 1024),  # no Xing header: up to 64 KiB
        ("bare.mp2", 16 * 1024),
        ("padded.ac3", 64 * 1024),
    ],
)
def test_long_zero_padding_after_the_sound_is_passed_over(tmp_path: Path, name: str, padding: int) -> None:
    """Zero padding of 8 to 64 KiB after the sound, as a CD rip or a broadcast capture padded out to a
    block carries (more after an MP3 whose header declares where its sound ends), reads as the sound
    without it: its samples, loudness and silence (over 4 KiB failed every job MEDIA_DECODE_ERROR "stops
    decoding after 3.0 s; the file is damaged")."""
    suffix = Path(name).suffix
    codec = {".mp3": "libmp3lame", ".mp2": "mp2", ".ac3": "ac3"}[suffix]
    whole = write(tmp_path / f"whole{suffix}", tone_with_a_pause(), codec=codec, bare=name.startswith("bare"))
    padded = tmp_path / name
    padded.write_bytes(whole.read_bytes() + bytes(padding))
    _, _, samples = read_all(whole)
    _, _, read = read_all(padded)
    # FFmpeg drops an MP3's Xing frame count when the file is longer than it declares by a sixteenth
    # ("invalid concatenated file"), and with it the trim of LAME's padding at the end (less than a frame),
    # as `ffmpeg` reads it.
    assert 0 <= read.shape[1] - samples.shape[1] < (1152 if name.startswith("declared") else 1)
    same_samples(read[:, : samples.shape[1]], samples)
    loudness = measure_loudness(padded, None, no_report).integrated_lufs
    assert loudness == pytest.approx(measure_loudness(whole, None, no_report).integrated_lufs, abs=0.02)
    # A stereo 1 kHz tone at L dBFS is L LUFS; the blocks over the pause's edges lower it a little.
    assert loudness == pytest.approx(-23.5, abs=0.5)
    silences = detect_silence(padded, AudioSilenceParams(), no_report).segments
    assert [(s.start_s, s.end_s) for s in silences] == [pytest.approx((1.5, 2.5), abs=0.05)]


@pytest.mark.parametrize(
    ("name", "damage"),
    [
        # Padding's length, but sound follows it: a hole.
        ("padding between.mp3", lambda data: data[:40_000] + bytes(16 * 1024) + data[40_000:]),
        ("padding between.ac3", lambda data: data[:40_000] + bytes(64 * 1024) + data[40_000:]),
        # No header says where the sound ends: more zeros than a block holds are sound never written.
        ("never finished.mp3", lambda data: data[:20_000] + bytes(max(len(data) - 20_000, 64 * 1024 + 1))),
        ("never finished.ac3", lambda data: data[:20_000] + bytes(max(len(data) - 20_000, 64 * 1024 + 1))),
    ],
    ids=lambda value: value if isinstance(value, str) else "",
)
def test_long_zeros_within_the_sound_or_for_it_are_still_damage(
    tmp_path: Path, name: str, damage: Callable[[bytes], bytes]
) -> None:
    """Zeros as long as padding with sound after them (two recordings joined, the first padded; a block of
    a download lost), or more zeros than padding after the sound of a stream that declares no length (a
    download allocated whole and never finished), fail MEDIA_DECODE_ERROR: passing long padding over
    left them damage."""
    suffix = Path(name).suffix
    codec = {".mp3": "libmp3lame", ".ac3": "ac3"}[suffix]
    whole = write(tmp_path / f"whole{suffix}", sine(-23.0, 4.0), codec=codec, bare=True)
    damaged = tmp_path / name
    damaged.write_bytes(damage(whole.read_bytes()))
    with pytest.raises(MediaDecodeError, match=r"stops decoding after .* the file is damaged"):
        measure_loudness(damaged, None, no_report)


def test_an_unfinished_mp3_behind_a_cover_picture_is_still_damage(tmp_path: Path) -> None:
    """An MP3 with a Xing header behind a 300 KB ID3v2 tag (a cover picture), whose last 150 KB were never
    written (a download allocated whole: zeros, its size intact), fails MEDIA_DECODE_ERROR: where its sound
    ends is counted from its first frame, past the tag. Counted from the file's start, those zeros lay past
    it and passed as padding: every job read 13.8 s of 20 and succeeded."""
    encoded = write(tmp_path / "whole.mp3", sine(-23.0, 20.0), codec="libmp3lame").read_bytes()
    tagged = id3v2(300_000) + encoded.removeprefix(id3v2_of(encoded))
    unfinished = tmp_path / "unfinished.mp3"
    unfinished.write_bytes(tagged[: len(tagged) - 150_000] + bytes(150_000))
    with pytest.raises(MediaDecodeError, match=r"stops decoding after 1[34]\.0 s; the file is damaged"):
        measure_loudness(unfinished, None, no_report)
    whole = tmp_path / "tagged.mp3"
    whole.write_bytes(tagged + bytes(64 * 1024))  # padding after the whole sound still passes
    assert measure_loudness(whole, None, no_report).integrated_lufs == pytest.approx(-23.3, abs=0.3)


@pytest.mark.parametrize("picture_bytes", [0, 30_000])
def test_mp3s_joined_with_cat_each_with_its_tags_read_whole(tmp_path: Path, picture_bytes: int) -> None:
    """Two MP3s as encoders write them (an ID3v2 tag, a Xing header), joined with `cat`: the second's tag,
    a cover picture's too, is passed over and both parts read, 3 s at -20 dBFS then 3 s at -10 (they
    failed MEDIA_DECODE_ERROR at 3.0 s, the first part's end)."""
    first = write(tmp_path / "a.mp3", sine(-20.0, 3.0, rate=44100), rate=44100)
    second = write(tmp_path / "b.mp3", sine(-10.0, 3.0, rate=44100), rate=44100).read_bytes()
    if picture_bytes:  # the encoder's tag replaced by one holding a cover picture
        second = id3v2(picture_bytes) + second.removeprefix(id3v2_of(second))
    assert second[:3] == b"ID3"
    joined = tmp_path / "joined.mp3"
    joined.write_bytes(first.read_bytes() + second)
    rate, _, samples = read_all(joined)
    assert samples.shape[1] / rate == pytest.approx(6.0, abs=0.1)
    waveform = compute_waveform(joined, AudioWaveformParams(points_per_second=1), no_report)
    peaks = np.asarray(waveform.peaks)[:, 1]
    # LAME lowers a tone's level by about 0.3 dB.
    assert peaks[:3] == pytest.approx(amplitude(-20.0), rel=0.06)
    assert peaks[3:] == pytest.approx(amplitude(-10.0), rel=0.06)
    short_term = [point.lufs for point in measure_loudness(joined, None, no_report).short_term]
    # A stereo 1 kHz tone at L dBFS is L LUFS (less LAME's 0.3 dB): 0-3 s and 3-6 s.
    assert (short_term[0], short_term[-1]) == pytest.approx((-20.3, -10.3), abs=0.2)


def id3v2_of(mp3: bytes) -> bytes:
    """The ID3v2 tag (without a footer) that `mp3` starts with."""
    size = mp3[6] << 21 | mp3[7] << 14 | mp3[8] << 7 | mp3[9]
    return mp3[: 10 + size]


@pytest.mark.parametrize(
    ("name", "damage"),
    [
        (
            "garbage within.mp3",
            lambda data: data[:30_000] + np.random.default_rng(0).bytes(3000) + data[33_000:],
        ),
        ("a hole within.mp3", lambda data: data[:30_000] + bytes(8192) + data[38_192:]),
        ("never finished.mp3", lambda data: data[: len(data) // 2] + bytes(len(data) - len(data) // 2)),
        ("garbage after.mp3", lambda data: data + np.random.default_rng(0).bytes(300)),
    ],
    ids=lambda value: value if isinstance(value, str) else "",
)
def test_garbage_or_a_hole_of_zeros_in_an_mp3_is_still_damage(
    tmp_path: Path, name: str, damage: Callable[[bytes], bytes]
) -> None:
    """Bytes the decoder refuses that are no tag nor padding fail MEDIA_DECODE_ERROR, as before: garbage
    within the sound or after it, a hole of zeros within it, or the second half of a download allocated
    whole and never finished (zeros where the Xing header says the sound goes on, fewer than the 64 KiB
    of padding taken after a stream that says nothing of its length)."""
    whole = write(tmp_path / "whole.mp3", sine(-23.0, 4.0))
    damaged = tmp_path / name
    damaged.write_bytes(damage(whole.read_bytes()))
    with pytest.raises(MediaDecodeError, match=r"stops decoding after .* the file is damaged"):
        measure_loudness(damaged, None, no_report)


@pytest.mark.parametrize(
    ("suffix", "codec", "damage"),
    [
        (".flac", "flac", "garbage"),
        (".flac", "flac", "zeros"),
        (".m4a", "aac", "zeros"),
        (".m4a", "aac", "garbage"),
        # The AC-3 reader glues the zeros or garbage to the frame before them; the zeros are passed over
        # as padding there, and then sound follows them.
        (".ac3", "ac3", "zeros"),
        (".ac3", "ac3", "garbage"),
    ],
)
def test_a_damaged_packet_within_the_sound_is_damage_in_any_codec(
    tmp_path: Path, suffix: str, codec: str, damage: str
) -> None:
    """One packet within the sound of a FLAC or an M4A overwritten with garbage or zeroed (a block of a
    download lost) fails MEDIA_DECODE_ERROR: passing tags over had made both succeed, without the packet's
    samples and without a word (FFmpeg's `amovie` refused it, and PyAV's reading, taken instead, passed
    FLAC's over unseen and took an M4A's zeros for padding)."""
    whole = write(tmp_path / f"whole{suffix}", sine(-23.0, 4.0), codec=codec)
    with av.open(str(whole)) as container:
        packets = [(p.pos, p.size) for p in container.demux(container.streams.audio[0]) if p.size]
    position, size = packets[len(packets) // 2]
    data = whole.read_bytes()
    bad = bytes(size) if damage == "zeros" else np.random.default_rng(3).bytes(size)
    damaged = tmp_path / f"damaged{suffix}"
    damaged.write_bytes(data[:position] + bad + data[position + size :])
    with pytest.raises(MediaDecodeError, match=r"stops decoding after .* the file is damaged"):
        measure_loudness(damaged, None, no_report)


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_samples_that_are_not_numbers_fail_every_analysis(tmp_path: Path, value: float) -> None:
    """One NaN or infinite sample in a float WAV fails loudness, silence and waveform with MEDIA_DECODE_ERROR
    saying where: it has no level (a NaN silenced the K-weighting for good, infinity made the peaks infinite,
    NaN put NaN in the waveform)."""
    samples = sine(-23.0, 3.0)
    samples[1, 48000 + 4800] = value
    path = write(tmp_path / "float.wav", samples, codec="pcm_f32le")
    analyses = [
        lambda: measure_loudness(path, None, no_report),
        lambda: detect_silence(path, AudioSilenceParams(), no_report),
        lambda: compute_waveform(path, AudioWaveformParams(), no_report),
    ]
    for analysis in analyses:
        with pytest.raises(MediaDecodeError, match=r"not numbers \(NaN or infinite\) from 1\.100 s"):
            analysis()


def test_leaving_the_input_stops_a_read_left_midway(tmp_path: Path) -> None:
    """Closing the input stops its decoding thread even while the caller still holds an unfinished read,
    so the file is never closed under the thread."""
    path = write(tmp_path / "tone.wav", sine(-6.0, 6.0))
    with open_audio(path) as audio:
        reading = audio.blocks(no_report, action="reading")
        next(reading)
    try:
        assert not [thread for thread in threading.enumerate() if thread.name == "audio-decode"]
    finally:
        reading.close()


def test_a_cancel_gets_through_while_the_part_before_a_format_change_is_read_again(tmp_path: Path) -> None:
    """Past a format change the decoder reads the stream again up to it; `report` is still called each
    second of that, so a cancel takes effect before any more audio is analysed."""
    reports: list[float] = []

    def cancel_on_a_report_without_new_audio(fraction: float, message: str) -> None:
        if reports and fraction == reports[-1]:
            raise JobCancelled("cancelled on request")
        reports.append(fraction)

    with open_audio(rate_change(tmp_path)) as audio, pytest.raises(JobCancelled):
        for _block in audio.blocks(cancel_on_a_report_without_new_audio, action="reading"):
            pass
    assert audio.samples / audio.sample_rate == pytest.approx(3.0, abs=0.1)  # the first part alone


@pytest.mark.parametrize(
    ("suffix", "codec"),
    [
        (".wav", None),
        (".flac", None),
        (".mp3", None),
        (".m4a", None),
        (".aac", None),
        (".mp2", None),
        (".mka", "libopus"),
        (".ogg", "libopus"),
        (".ts", "aac"),
    ],
)
def test_audio_that_starts_with_its_file_starts_at_zero(
    tmp_path: Path, suffix: str, codec: str | None
) -> None:
    """A file of audio alone starts at exactly 0.0 on the media's timeline whatever its codec's priming
    (MP3's LAME delay starts its stream at 23 ms, Opus's pre-skip before 0), so its times are as before."""
    path = write(tmp_path / f"tone{suffix}", sine(-6.0, 1.0), codec=codec)
    with open_audio(path) as audio:
        assert audio.start_s == 0.0


@pytest.mark.parametrize(("name", "codec"), [("late.mkv", "pcm_s16le"), ("late.mp4", "flac")])
def test_a_late_soundtrack_starts_where_the_container_says(tmp_path: Path, name: str, codec: str) -> None:
    """Audio whose first packets come 1.5 s after the video's starts at 1.5 s on the media's timeline,
    and progress runs over its own 2 s, not the file's 3.5."""
    path = write_late_audio(tmp_path / name, sine(-6.0, 2.0), start_s=1.5, video_s=3.5, codec=codec)
    seen: list[float] = []
    with open_audio(path) as audio:
        assert audio.start_s == 1.5
        assert audio.duration_s == pytest.approx(2.0)
        for _block in audio.blocks(lambda fraction, _message: seen.append(fraction), action="reading"):
            pass
    assert seen[0] == pytest.approx(0.5, abs=0.01)


@pytest.mark.parametrize(("name", "codec"), [("tone.m4a", "aac"), ("tone.mp4", "libopus")])
@pytest.mark.parametrize("seconds", [1.0, 0.01])
def test_mp4_audio_ends_where_its_edit_list_says(
    tmp_path: Path, name: str, codec: str, seconds: float
) -> None:
    """AAC and Opus in MP4 end within a padded frame, where the file says the sound stops: the samples
    handed out are those the stream plays (its stated duration), not the decoder's whole last frame (1 s of
    AAC read 1.0027 s, of Opus 1.0135 s; 10 ms of AAC 21 ms, of Opus 13.5 ms), so the waveform lasts what
    the probe says."""
    path = write(tmp_path / name, sine(-6.0, seconds), codec=codec)
    _rate, _layout, samples = read_all(path)
    assert samples.shape[1] == round(seconds * 48000)
    waveform = compute_waveform(path, AudioWaveformParams(points_per_second=100), no_report)
    assert waveform.duration_s == seconds
    assert len(waveform.peaks) == round(seconds * 100)


@pytest.mark.parametrize("start_s", [12.0, 70.0])
def test_an_mpeg_ts_soundtrack_whose_packets_come_late_is_read_by_every_job(
    tmp_path: Path, start_s: float
) -> None:
    """An MPEG-TS lists its tracks before any of their packets. Here every audio packet follows the
    video's (`start_s` + 5 s of it), so FFmpeg's look at the file's first 5 s met none and gave the track
    0 channels at 0 Hz: loudness, silence and waveform failed MEDIA_DECODE_ERROR ("stops decoding after
    0.0 s"). A longer look (`LATE_STREAM_PROBE`) finds it within 60 s; past that, PyAV's decoder, which
    takes the format from the packets, reads it. Every job measures the sound where it lies."""
    signal = sequence((-20.0, 2.0), (-120.0, 1.0), (-20.0, 2.0))
    path = write_late_audio(tmp_path / "late.ts", signal, start_s=start_s, video_s=start_s + 5.0, codec="mp2")
    probed = probe_audio(path)
    assert (probed.sample_rate, probed.channels) == (48000, 2)
    if start_s < 60:  # past the longer look, FFmpeg states the file's duration for the track
        assert probed.duration_s == pytest.approx(5.0, abs=0.05)
    loudness = measure_loudness(path, None, no_report)
    plain = measure_loudness(write(tmp_path / "plain.wav", signal), None, no_report)
    assert loudness.integrated_lufs == pytest.approx(plain.integrated_lufs, abs=0.2)
    assert loudness.short_term[0].t_s == pytest.approx(start_s + 3.0, abs=0.05)
    silence = detect_silence(path, AudioSilenceParams(), no_report)
    assert [(gap.start_s, gap.end_s) for gap in silence.segments] == [
        (pytest.approx(start_s + 2.0, abs=0.05), pytest.approx(start_s + 3.0, abs=0.05))
    ]
    waveform = compute_waveform(path, AudioWaveformParams(points_per_second=10), no_report)
    quiet = waveform.peaks[round((start_s + 2.2) * 10) : round((start_s + 2.8) * 10)]
    loud = waveform.peaks[round((start_s + 0.2) * 10) : round((start_s + 1.8) * 10)]
    assert len(quiet) == 6
    assert max(high for _low, high in quiet) < 0.01
    assert len(loud) == 16
    assert min(high for _low, high in loud) == pytest.approx(amplitude(-20.0), abs=0.01)


def test_a_chained_ogg_whose_chains_change_codec_rate_and_channels_is_read_whole(tmp_path: Path) -> None:
    """Two Ogg files joined byte by byte (an internet radio's recording): 2 s of stereo Opus at 48 kHz,
    then 1 s of silence and 2 s of a tone in mono FLAC at 44.1 kHz. FFmpeg's demuxer stops at a chain
    that changes codec or channels, and every job measured the first 2 s and said nothing of the rest;
    read chain by chain, each job covers the 5 s: the silence where it lies, the mono part remixed onto
    both channels at -3 dB each (loudness kept), as a WAV of the same sound measures."""
    stereo = sine(-20.0, 2.0)
    mono = sequence((-120.0, 1.0), (-10.0, 2.0), rate=44100, channels=1)
    first = write(tmp_path / "a.ogg", stereo, codec="libopus")
    second = write(tmp_path / "b.ogg", mono, rate=44100, codec="flac")
    chained = tmp_path / "chained.ogg"
    chained.write_bytes(first.read_bytes() + second.read_bytes())
    as_played = np.concatenate(
        [stereo, np.tile(sequence((-120.0, 1.0), (-13.0103, 2.0), channels=1), (2, 1))], axis=1
    )
    plain = write(tmp_path / "plain.wav", as_played)

    assert probe_audio(chained).duration_s == pytest.approx(5.0, abs=0.03)
    loudness = measure_loudness(chained, None, no_report)
    assert loudness.integrated_lufs == pytest.approx(
        measure_loudness(plain, None, no_report).integrated_lufs, abs=0.2
    )
    assert loudness.short_term[-1].t_s == pytest.approx(5.0, abs=0.03)
    silence = detect_silence(chained, AudioSilenceParams(), no_report)
    assert [(gap.start_s, gap.end_s) for gap in silence.segments] == [
        (pytest.approx(2.0, abs=0.03), pytest.approx(3.0, abs=0.03))
    ]
    waveform = compute_waveform(chained, AudioWaveformParams(points_per_second=10), no_report)
    assert waveform.duration_s == pytest.approx(5.0, abs=0.03)
    assert max(high for _low, high in waveform.peaks[32:48]) == pytest.approx(amplitude(-13.0103), abs=0.01)


def test_a_chained_ogg_cut_short_in_its_last_chains_first_pages_is_read_to_there(tmp_path: Path) -> None:
    """A radio recording stopped as a programme began: the last chain is only a few bytes of its first
    page, which cannot be opened on its own. The chains before it are read, as FFmpeg reads the whole
    file to there, instead of failing every job."""
    first = write(tmp_path / "a.ogg", sine(-20.0, 2.0), codec="libopus")
    second = write(tmp_path / "b.ogg", sine(-20.0, 1.0, channels=1, rate=44100), rate=44100, codec="flac")
    chained = tmp_path / "cut.ogg"
    chained.write_bytes(first.read_bytes() + first.read_bytes() + second.read_bytes()[:40])
    assert probe_audio(chained).duration_s == pytest.approx(4.0, abs=0.03)
    waveform = compute_waveform(chained, AudioWaveformParams(points_per_second=10), no_report)
    assert waveform.duration_s == pytest.approx(4.0, abs=0.03)


def _ts_listing_an_empty_track(path: Path, *, playing: bool) -> Path:
    """4 s of MPEG-TS whose table lists an MP2 track that never has a packet, then (when `playing`) one
    of 2 s of a -20 dBFS tone, 1 s of silence and 1 s of tone."""
    with av.open(str(path), mode="w", format="mpegts") as container:
        video = container.add_stream("libx264", rate=25)
        video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
        tracks = [container.add_stream("mp2", rate=48000) for _ in range(2 if playing else 1)]
        for track in tracks:
            track.layout = "stereo"
        tone = sequence((-20.0, 2.0), (-120.0, 1.0), (-20.0, 1.0))
        for index in range(4 * 25):
            picture = av.VideoFrame.from_ndarray(np.full((48, 64, 3), 128, np.uint8), format="rgb24")
            picture.pts, picture.time_base = index, Fraction(1, 25)
            container.mux(video.encode(picture))
            if playing:
                sound = frame_of(tone[:, index * 1920 : (index + 1) * 1920], "stereo")
                sound.sample_rate, sound.pts, sound.time_base = 48000, index * 1920, Fraction(1, 48000)
                container.mux(tracks[1].encode(sound))
        for stream in [video, *tracks[1:]]:
            container.mux(stream.encode(None))
    return path


def test_an_mpeg_ts_track_that_never_has_a_packet_is_passed_over(tmp_path: Path) -> None:
    """A broadcast's table can list an audio track that never has a packet (a second language, audio
    description) before the one that plays. The jobs read the first one FFmpeg found the format of,
    without the longer look (`LATE_STREAM_PROBE`, 64 MiB read and held on every open) at the empty one.
    Before, they read the empty one: the probe failed as damaged, loudness as sampled at 0 Hz, silence
    and waveform with a ZeroDivisionError (INTERNAL_ERROR)."""
    path = _ts_listing_an_empty_track(tmp_path / "listed.ts", playing=True)
    with open_audio(path) as audio:
        assert audio._stream_index == 2
        assert "analyzeduration" not in audio._format_options
    assert probe_audio(path).sample_rate == 48000
    silence = detect_silence(path, AudioSilenceParams(), no_report)
    assert [(gap.start_s, gap.end_s) for gap in silence.segments] == [
        (pytest.approx(2.0, abs=0.05), pytest.approx(3.0, abs=0.05))
    ]


def test_an_mpeg_ts_whose_only_audio_track_never_has_a_packet_is_unsupported_input(tmp_path: Path) -> None:
    """With no other audio, every job says there is no sound to read (UNSUPPORTED_INPUT), as for a file
    without an audio track; they said damaged, sampled at 0 Hz, or failed INTERNAL_ERROR."""
    path = _ts_listing_an_empty_track(tmp_path / "empty.ts", playing=False)
    for job in (
        lambda: probe_audio(path),
        lambda: measure_loudness(path, None, no_report),
        lambda: detect_silence(path, None, no_report),
        lambda: compute_waveform(path, None, no_report),
    ):
        with pytest.raises(UnsupportedInput, match="lists an audio track but holds none of its sound"):
            job()


def _with_dropout(path: Path, codec: str, *, lost: tuple[float, float] | None, later_s: float = 0.0) -> Path:
    """20 s of small video beside a -20 dBFS 1 kHz tone, truly silent at 14-16 s, in the container of
    `path`'s suffix; the audio frames of the `lost` stretch left out, the times after it kept (a
    broadcast's dropout, a paused browser recording), or from 10 s on, timed `later_s` later (recordings
    joined across a break)."""
    tone = sequence((-20.0, 14.0), (-120.0, 2.0), (-20.0, 4.0))
    with av.open(str(path), mode="w") as container:
        video = container.add_stream("libx264", rate=25)
        video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
        audio = container.add_stream(codec, rate=48000)
        audio.layout = "stereo"
        for index in range(20 * 25):
            picture = av.VideoFrame.from_ndarray(np.full((48, 64, 3), 128, np.uint8), format="rgb24")
            picture.pts, picture.time_base = index, Fraction(1, 25)
            container.mux(video.encode(picture))
            if lost and lost[0] <= index / 25 < lost[1]:
                continue
            sound = frame_of(tone[:, index * 1920 : (index + 1) * 1920], "stereo")
            sound.sample_rate, sound.time_base = 48000, Fraction(1, 48000)
            sound.pts = index * 1920 + (round(later_s * 48000) if index >= 250 else 0)
            container.mux(audio.encode(sound))
        container.mux(video.encode(None))
        container.mux(audio.encode(None))
    return path


@pytest.mark.parametrize(("name", "codec"), [("mp2.ts", "mp2"), ("aac.ts", "aac"), ("opus.mkv", "libopus")])
def test_a_gap_in_the_sound_is_silence_and_the_times_after_it_stay_on_the_media_timeline(
    tmp_path: Path, name: str, codec: str
) -> None:
    """A broadcast's dropout (the audio of 8-12 s lost, the times after it kept) or a browser recording
    paused: the jobs counted samples, so the silence at 14-16 s came at 10-12 s, the waveform and the
    loudness ended at 16 s. The gap is silence now, where it lies, and every time after it stays (as
    `ffmpeg`'s silencedetect reads them); MP2 goes through PyAV's frames (`_converted`), AAC and Opus
    through `amovie` (`_filtered`)."""
    path = _with_dropout(tmp_path / name, codec, lost=(8.0, 12.0))
    silence = detect_silence(path, AudioSilenceParams(), no_report)
    assert [(gap.start_s, gap.end_s) for gap in silence.segments] == [
        (pytest.approx(8.0, abs=0.05), pytest.approx(12.0, abs=0.05)),
        (pytest.approx(14.0, abs=0.05), pytest.approx(16.0, abs=0.05)),
    ]
    assert compute_waveform(path, None, no_report).duration_s == pytest.approx(20.0, abs=0.05)
    assert measure_loudness(path, None, no_report).short_term[-1].t_s == pytest.approx(20.0, abs=0.05)


@pytest.mark.parametrize("codec", ["mp2", "aac"])
def test_segments_joined_with_their_times_from_zero_again_follow_on(tmp_path: Path, codec: str) -> None:
    """Two recordings joined byte by byte, each timed from 0 (a recorder restarted, HLS segments across
    a discontinuity): the second follows the first, as `ffmpeg` reads it, with no silence put in nor
    sound dropped where the times go back (FFmpeg's `aresample` alone drops 20 s there)."""
    one = _with_dropout(tmp_path / "one.ts", codec, lost=None)
    joined = tmp_path / "joined.ts"
    joined.write_bytes(one.read_bytes() * 2)
    silence = detect_silence(joined, AudioSilenceParams(), no_report)
    assert [(gap.start_s, gap.end_s) for gap in silence.segments] == [
        (pytest.approx(14.0, abs=0.05), pytest.approx(16.0, abs=0.05)),
        (pytest.approx(34.0, abs=0.1), pytest.approx(36.0, abs=0.1)),
    ]


@pytest.mark.parametrize("codec", ["mp2", "aac"])
def test_a_jump_past_the_longest_gap_is_a_break_read_on_not_silence(tmp_path: Path, codec: str) -> None:
    """The audio's times jump a minute ahead at 10 s (recordings joined across a break, a wild time after
    a reception error): past `LONGEST_GAP_S` that is no dropout, and the sound reads on from where it was,
    as `ffmpeg` reads an MPEG-TS. Filled, an hour's jump held 3.1 GB in FFmpeg's resampler."""
    path = _with_dropout(tmp_path / f"{codec}.ts", codec, lost=None, later_s=60.0)
    silence = detect_silence(path, AudioSilenceParams(), no_report)
    assert [(gap.start_s, gap.end_s) for gap in silence.segments] == [
        (pytest.approx(14.0, abs=0.05), pytest.approx(16.0, abs=0.05))
    ]
    assert compute_waveform(path, None, no_report).duration_s == pytest.approx(20.0, abs=0.05)


def test_a_long_frame_after_short_ones_is_no_gap(tmp_path: Path) -> None:
    """PCM in Matroska in blocks of 20 ms with one of 500 ms every 2 s, times continuous (a capture's
    uneven blocks): a block is awaited where the one before it ends, not that block's length after its
    start (which read each long block 480 ms late and filled the difference with silence: 10.4 s)."""
    path = tmp_path / "uneven.mkv"
    tone = sine(-20.0, 10.0, channels=1)
    with av.open(str(path), mode="w") as container:
        audio = container.add_stream("pcm_s16le", rate=48000)
        audio.layout = "mono"
        start = block = 0
        while start < tone.shape[1]:
            size = 24000 if block % 100 == 99 else 960
            sound = frame_of(tone[:, start : start + size], "mono")
            sound.sample_rate, sound.pts, sound.time_base = 48000, start, Fraction(1, 48000)
            container.mux(audio.encode(sound))
            start, block = start + size, block + 1
        container.mux(audio.encode(None))
    assert detect_silence(path, AudioSilenceParams(), no_report).segments == []
    assert compute_waveform(path, None, no_report).duration_s == pytest.approx(10.0, abs=0.01)
