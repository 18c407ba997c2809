"""Test signals with known loudness, peaks and silences, and a writer for any of them.

Levels are peak levels in dBFS (a sine at -23 dBFS has amplitude 10 ** (-23 / 20)), as EBU Tech 3341 and
3342 state their test signals.
"""

from __future__ import annotations

import contextlib
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
import numpy.typing as npt

from medialens_audio.decode import frame_of

Signal = npt.NDArray[np.float32]

CODECS = {
    ".wav": "pcm_s16le",
    ".flac": "flac",
    ".mp3": "libmp3lame",
    ".m4a": "aac",
    ".aac": "aac",  # ADTS: AAC frames one after the other, no index
    ".mp2": "mp2",
}


def amplitude(level_dbfs: float) -> float:
    return float(10.0 ** (level_dbfs / 20.0))


def sine(
    level_dbfs: float,
    seconds: float,
    *,
    rate: int = 48000,
    freq_hz: float = 1000.0,
    channels: int = 2,
    phase: float = 0.0,
) -> Signal:
    """A sine on every channel: shape (channels, round(seconds * rate))."""
    t = np.arange(round(seconds * rate)) / rate
    tone = amplitude(level_dbfs) * np.sin(2.0 * np.pi * freq_hz * t + phase)
    return np.tile(tone.astype(np.float32), (channels, 1))


def sequence(*parts: tuple[float, float], rate: int = 48000, channels: int = 2) -> Signal:
    """1 kHz sines of (level_dbfs, seconds) one after the other, phase-continuous."""
    total = sum(round(seconds * rate) for _, seconds in parts)
    t = np.arange(total) / rate
    levels = np.concatenate([np.full(round(seconds * rate), amplitude(level)) for level, seconds in parts])
    tone = (levels * np.sin(2.0 * np.pi * 1000.0 * t)).astype(np.float32)
    return np.tile(tone, (channels, 1))


def noise(
    level_dbfs: float, seconds: float, *, rate: int = 48000, channels: int = 2, seed: int = 0
) -> Signal:
    """Gaussian noise whose RMS is `level_dbfs`, clipped to full scale."""
    rng = np.random.default_rng(seed)
    values = rng.standard_normal((channels, round(seconds * rate))) * amplitude(level_dbfs)
    return np.clip(values, -1.0, 1.0).astype(np.float32)


def write(
    path: Path,
    samples: Signal,
    *,
    rate: int = 48000,
    layout: str | None = None,
    codec: str | None = None,
    bare: bool = False,
    xing: bool = True,
    codec_options: dict[str, str] | None = None,
    piped: bool = False,
) -> Path:
    """Encode (channels, n) float samples to `path`; the codec follows the suffix (see `CODECS`) unless
    named. A `bare` MP3 has no ID3 tag nor Xing header, so two of them joined byte by byte are one stream
    (as `cat a.mp3 b.mp3` makes from such files); one without `xing` only has no Xing header.
    `codec_options` go to the encoder (`{"abr": "1"}`: LAME's average bit rate, which varies per frame).
    A `piped` file is written as to a pipe, which the muxer cannot go back in: a WebM or Matroska states
    no duration (as a browser's MediaRecorder writes one), a FLAC no sample count."""
    codec = codec or CODECS[path.suffix]
    channels = samples.shape[0]
    layout = layout or {1: "mono", 2: "stereo", 6: "5.1", 8: "7.1"}.get(channels, f"{channels}c")
    options = None
    if codec == "libmp3lame":
        options = {"write_xing": "0", "id3v2_version": "0"} if bare else {"write_xing": str(int(xing))}
    sink: Any = _Pipe(path) if piped else contextlib.nullcontext(str(path))
    muxer = PIPED_FORMATS[path.suffix] if piped else None
    with sink as target, av.open(target, mode="w", format=muxer, options=options) as container:
        stream = container.add_stream(codec, rate=rate, options=codec_options)
        stream.layout = layout
        if codec in ("libmp3lame", "aac"):
            stream.bit_rate = 192_000
        chunk = rate  # one-second frames: PyAV re-cuts them to the codec's frame size
        for offset in range(0, samples.shape[1], chunk):
            frame = frame_of(samples[:, offset : offset + chunk], layout)  # 8 channels and more: packed
            frame.sample_rate = rate
            frame.pts = offset
            frame.time_base = Fraction(1, rate)
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


#: The muxer of each suffix `write` can write `piped`.
PIPED_FORMATS = {".webm": "webm", ".mka": "matroska", ".flac": "flac", ".ogg": "ogg"}


class _Pipe:
    """A file that can only be written on, as a pipe: no `seek`, so a muxer cannot go back."""

    def __init__(self, path: Path) -> None:
        self._file = path.open("wb")

    def write(self, data: bytes) -> int:
        return self._file.write(data)

    def __enter__(self) -> _Pipe:
        return self

    def __exit__(self, *_exc: object) -> None:
        self._file.close()


def write_late_audio(
    path: Path,
    samples: Signal,
    *,
    start_s: float,
    video_s: float,
    codec: str,
    rate: int = 48000,
) -> Path:
    """A small grey video from 0 to `video_s` (25 fps, H.264) with `samples` as its soundtrack from
    `start_s` on: the audio stream starts later than the container (its first packets' times are
    `start_s`), as in a recording whose sound came in late. The container follows the suffix."""
    with av.open(str(path), mode="w") as container:
        video = container.add_stream("libx264", rate=25)
        video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
        audio = container.add_stream(codec, rate=rate)
        audio.layout = {1: "mono", 2: "stereo"}[samples.shape[0]]
        grey = np.full((48, 64, 3), 128, dtype=np.uint8)
        for index in range(round(video_s * 25)):
            picture = av.VideoFrame.from_ndarray(grey, format="rgb24")
            picture.pts, picture.time_base = index, Fraction(1, 25)
            container.mux(video.encode(picture))
        container.mux(video.encode(None))
        lead = round(start_s * rate)
        for offset in range(0, samples.shape[1], 1024):
            frame = frame_of(samples[:, offset : offset + 1024], audio.layout.name)
            frame.sample_rate, frame.pts, frame.time_base = rate, lead + offset, Fraction(1, rate)
            container.mux(audio.encode(frame))
        container.mux(audio.encode(None))
    return path
