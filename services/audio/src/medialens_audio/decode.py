"""Streamed decoding of a file's first audio stream into float32 blocks of shape (channels, samples).

Every analyser reads its input through `open_audio`: the file is checked (missing, empty, a table), opened
with PyAV and decoded frame by frame; frames are gathered into blocks of about one second and converted
to float32 in [-1, 1] at the native rate, so memory does not depend on the file's length. After each
block the caller's `report(fraction, message)` is called: it publishes progress and raises `JobCancelled`
when the job was cancelled, so a cancel takes effect within a second of media.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import av
import av.error
import numpy as np
import numpy.typing as npt

from medialens_shared.errors import MediaDecodeError, UnsupportedInput
from medialens_shared.sniff import ffmpeg_reason, inspect_media, unreadable_media

Block = npt.NDArray[np.float32]
#: `report(fraction, message)`: progress of a job from a worker thread; raises `JobCancelled` on cancel.
Report = Callable[[float, str], None]

#: Full scale of each integer sample format, so samples become floats in [-1, 1).
_INT_SCALE = {"s16": 2.0**15, "s32": 2.0**31, "s64": 2.0**63}


#: FFmpeg's WAV reader looks through up to `probesize` bytes of samples for an S/PDIF stream (AC-3 or DTS
#: carried as PCM): with the default 5 MB, opening one second of CD audio took 7 ms, most of a probe job's
#: work. S/PDIF bursts repeat every 2 to 8 KB, so 32 KB still finds one; other formats keep the default.
WAV_PROBE_BYTES = 32 * 1024


@contextlib.contextmanager
def open_container(path: Path) -> Iterator[tuple[Any, Any]]:
    """The open container and its first audio stream; domain errors for files that are not audio."""
    path = Path(path)
    kind = inspect_media(path, noun="audio")
    options = {"probesize": str(WAV_PROBE_BYTES)} if _is_wav(path) else {}
    try:
        container = av.open(str(path), mode="r", options=options)
    except av.error.FFmpegError as exc:
        raise unreadable_media(exc, kind, not_readable_as="audio or video") from exc
    with container:
        if not container.streams.audio:
            raise UnsupportedInput(
                "The file has no audio stream"
                + (" (it holds only video or pictures)." if container.streams.video else ".")
            )
        yield container, container.streams.audio[0]


def _is_wav(path: Path) -> bool:
    with path.open("rb") as handle:
        head = handle.read(12)
    return head[:4] == b"RIFF" and head[8:12] == b"WAVE"


@dataclass
class AudioInput:
    """A file's first audio stream, ready to be read once as float32 blocks."""

    sample_rate: int
    #: FFmpeg's name of the channel layout ("stereo", "5.1", ...); its default one for the channel count
    #: when the file does not say.
    layout: str
    #: FFmpeg's channel names in stream order (FL, FR, FC, LFE, BL, BR, SL, SR, ...).
    channel_names: tuple[str, ...]
    #: The duration the metadata announces (for progress only); None when unknown.
    duration_s: float | None
    _container: Any
    _stream: Any
    #: Samples per channel handed out so far.
    samples: int = field(default=0)

    @property
    def channels(self) -> int:
        return len(self.channel_names)

    def blocks(self, report: Report, *, action: str, block_s: float = 1.0) -> Iterator[Block]:
        """The decoded samples as (channels, n) float32 blocks of about `block_s` seconds each.

        A thread decodes up to two blocks ahead, so decoding overlaps the caller's analysis (FFmpeg and
        NumPy release the GIL). Calls `report` after each block with the fraction read and `action`
        ("measuring loudness"). Raises `MediaDecodeError` when a packet cannot be decoded or the stream
        holds no samples.
        """
        target = max(1, round(block_s * self.sample_rate))
        with contextlib.closing(_read_ahead(self._decoded(target), depth=2)) as decoded:
            for block in decoded:
                yield self._hand_out(block, report, action)
        if self.samples == 0:
            raise MediaDecodeError(
                "The audio stream holds no decodable samples; the file is probably damaged."
            )

    def _decoded(self, target: int) -> Iterator[Block]:
        pending: list[Block] = []
        pending_samples = decoded = 0
        try:
            for frame in self._container.decode(self._stream):
                samples = _as_float(frame, self.channels)
                if samples.shape[1] == 0:
                    continue
                pending.append(samples)
                pending_samples += samples.shape[1]
                if pending_samples >= target:
                    yield pending[0] if len(pending) == 1 else np.concatenate(pending, axis=1)
                    decoded += pending_samples
                    pending, pending_samples = [], 0
        except av.error.FFmpegError as exc:
            raise MediaDecodeError(
                f"The audio stream stops decoding after {decoded / self.sample_rate:.1f} s; "
                f"the file is damaged ({ffmpeg_reason(exc)})."
            ) from exc
        if pending:
            yield np.concatenate(pending, axis=1)

    def _hand_out(self, block: Block, report: Report, action: str) -> Block:
        self.samples += block.shape[1]
        done_s = self.samples / self.sample_rate
        if self.duration_s:
            fraction = min(done_s / self.duration_s, 0.99)
            report(fraction, f"{action}: {_clock(done_s)} of {_clock(self.duration_s)}")
        else:
            report(0.0, f"{action}: {_clock(done_s)} read")
        return block


@contextlib.contextmanager
def open_audio(path: Path) -> Iterator[AudioInput]:
    """Open the first audio stream of the file at `path` for one streamed read.

    Raises `InputNotFound`, `UnsupportedInput` (empty, a table, no audio stream) or `MediaDecodeError`
    (media that cannot be opened).
    """
    with open_container(path) as (container, stream):
        layout = _named_layout(stream.layout, int(stream.codec_context.channels))
        if stream.duration and stream.time_base is not None:
            duration_s: float | None = float(stream.duration * stream.time_base)
        elif container.duration:
            duration_s = container.duration / av.time_base
        else:
            duration_s = None
        yield AudioInput(
            sample_rate=int(stream.codec_context.sample_rate),
            layout=layout.name,
            channel_names=tuple(channel.name for channel in layout.channels),
            duration_s=duration_s,
            _container=container,
            _stream=stream,
        )


def _read_ahead(source: Iterator[Block], *, depth: int) -> Generator[Block, None, None]:
    """`source`'s items, produced by a thread at most `depth` items ahead; its errors raised here.

    Closing the iterator (or leaving it by an exception, such as a cancel) stops and joins the thread,
    so the container is never closed under it.
    """
    items: queue.Queue[tuple[Block | None, BaseException | None]] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: tuple[Block | None, BaseException | None]) -> bool:
        while not stop.is_set():
            try:
                items.put(item, timeout=0.1)
            except queue.Full:
                continue
            return True
        return False

    def produce() -> None:
        try:
            for block in source:
                if not put((block, None)):
                    return
        except BaseException as exc:
            put((None, exc))
            return
        put((None, None))

    thread = threading.Thread(target=produce, name="audio-decode", daemon=True)
    thread.start()
    try:
        while True:
            block, error = items.get()
            if error is not None:
                raise error
            if block is None:
                return
            yield block
    finally:
        stop.set()
        thread.join()


def _named_layout(layout: Any, channels: int) -> Any:
    """The stream's layout, or FFmpeg's default one for its channel count when the file names none."""
    names = [channel.name for channel in layout.channels]
    if len(names) == channels and "NONE" not in names:
        return layout
    try:
        return av.AudioLayout(f"{channels}c")
    except ValueError as exc:
        raise UnsupportedInput(
            f"The audio has {channels} channels in no known layout, so they cannot be weighed."
        ) from exc


def _as_float(frame: Any, channels: int) -> Block:
    """A decoded frame as a (channels, n) float32 array in [-1, 1], whatever its sample format."""
    fmt = frame.format
    data: npt.NDArray[Any] = frame.to_ndarray()
    if not fmt.is_planar:
        data = data.reshape(-1, channels).T
    name = fmt.name.rstrip("p")
    if name in ("flt", "dbl"):
        return np.asarray(data, dtype=np.float32)
    if name == "u8":
        return np.asarray((data.astype(np.float32) - 128.0) * np.float32(1.0 / 128.0), dtype=np.float32)
    scale = _INT_SCALE.get(name)
    if scale is None:
        raise MediaDecodeError(f"The audio stream has a sample format this service cannot read ({fmt.name}).")
    return np.asarray(data.astype(np.float32) * np.float32(1.0 / scale), dtype=np.float32)


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"
