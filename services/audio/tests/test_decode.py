"""The streamed decode every analyser reads through: blocks, progress, early exits."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from medialens_audio.decode import open_audio
from medialens_audio.silence import detect_silence
from medialens_audio.waveform import compute_waveform
from medialens_shared.contracts import AudioSilenceParams, AudioWaveformParams
from medialens_shared.errors import JobCancelled

from .signals import sine, write


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
    silence = detect_silence(path, AudioSilenceParams(threshold_db=-50.0, min_duration_s=0.5), no_report)
    assert [(s.start_s, s.end_s) for s in silence.segments] == [pytest.approx((1.0, 2.0), abs=0.01)]
    waveform = compute_waveform(path, AudioWaveformParams(points_per_second=1), no_report)
    mean_peak = float(samples.mean(axis=0).max())
    expected = [(-mean_peak, mean_peak), (0.0, 0.0), (-mean_peak, mean_peak)]
    assert np.asarray(waveform.peaks) == pytest.approx(np.asarray(expected), abs=1e-3)


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
