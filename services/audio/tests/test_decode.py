"""The streamed decode every analyser reads through: blocks, progress, early exits."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from medialens_audio.decode import open_audio
from medialens_shared.errors import JobCancelled

from .signals import sine, write


def no_report(fraction: float, message: str) -> None:
    """A progress callback that discards what it is told."""


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
