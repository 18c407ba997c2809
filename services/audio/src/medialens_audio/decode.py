"""Streamed decoding of a file's first audio stream into float32 blocks of shape (channels, samples).

Every analyser reads its input through `open_audio`: the file is checked (missing, empty, a table), opened
with PyAV for its metadata, then decoded by FFmpeg into float32 blocks of one second in [-1, 1] at
the native rate, so memory does not depend on the file's length. After each
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


#: The most channels a block crosses between FFmpeg and NumPy as planar samples (`fltp`). PyAV 18 counts a
#: planar frame's planes by reading FFmpeg's data pointers until a null one, past the end of the 8 a frame
#: holds (`AV_NUM_DATA_POINTERS`), so a frame of 8 or more planar channels (7.1 and up) crashes the process
#: (SIGSEGV in `to_ndarray`, `from_ndarray`). Those blocks cross packed (`flt`, interleaved: one plane
#: whatever the count) instead, and are transposed; fewer channels stay planar and skip that copy.
PLANAR_CHANNELS_MAX = 7


def sample_format(channels: int) -> str:
    """The float32 sample format blocks of `channels` channels cross PyAV in (see PLANAR_CHANNELS_MAX)."""
    return "fltp" if channels <= PLANAR_CHANNELS_MAX else "flt"


def block_of(frame: Any, channels: int) -> Block:
    """A frame in `sample_format(channels)` as a (channels, n) float32 block."""
    array: Block = frame.to_ndarray()
    if channels <= PLANAR_CHANNELS_MAX:
        return array
    return np.ascontiguousarray(array.reshape(-1, channels).T)


def frame_of(block: Block, layout: str) -> Any:
    """A (channels, n) float32 block as a frame in `sample_format(channels)`."""
    channels = block.shape[0]
    if channels <= PLANAR_CHANNELS_MAX:
        return av.AudioFrame.from_ndarray(np.ascontiguousarray(block), format="fltp", layout=layout)
    packed = np.ascontiguousarray(block.T).reshape(1, -1)
    return av.AudioFrame.from_ndarray(packed, format="flt", layout=layout)


#: How far FFmpeg reads a WAV's samples ahead when opening it (`probesize`; other formats keep the
#: default 5 MB). The default read one second of CD audio whole: 7.5 ms of CPU, most of a probe job's work;
#: 32 KB took 1.0 ms, 4 KB 0.46, every field the same. It does not bound the search for S/PDIF (AC-3 or
#: DTS carried as PCM samples): FFmpeg's WAV reader looks for it in a window of its own at the start of
#: the samples (measured: an AC-3 stream behind 20 KB of silence is found with the default, 32 KB and
#: 4 KB alike, one behind 40 KB with none of them).
WAV_PROBE_BYTES = 4 * 1024


@contextlib.contextmanager
def open_container(path: Path) -> Iterator[tuple[Any, Any]]:
    """The open container and its first audio stream; domain errors for files that are not audio."""
    path = Path(path)
    kind = inspect_media(path, noun="audio")
    with path.open("rb") as handle:
        head = handle.read(12)
    wav = head[:4] == b"RIFF" and head[8:12] == b"WAVE"
    if wav:
        _require_whole_wav(path, riff_size=int.from_bytes(head[4:8], "little"))
    options = {"probesize": str(WAV_PROBE_BYTES)} if wav else {}
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


#: RIFF sizes at or above this say "unknown" (writers to a pipe, which cannot go back to fill it in).
_RIFF_SIZE_UNKNOWN = 0x7FFFF000


def _require_whole_wav(path: Path, *, riff_size: int) -> None:
    """`MediaDecodeError` when a WAV holds fewer bytes than its RIFF header declares (`riff_size`, the
    bytes after its first 8): FFmpeg reads such a file quietly to where it ends, so a probe would report
    the rest's duration and an analysis measure a fragment of the sound, and both succeed."""
    declared = riff_size + 8
    size = path.stat().st_size
    if riff_size < _RIFF_SIZE_UNKNOWN and size < declared:
        raise MediaDecodeError(
            f"The WAV file holds {size:,} bytes of the {declared:,} its header declares: it is truncated "
            "(a download or copy that stopped early)."
        )


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
    _path: Path
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
        decoded = 0
        try:
            graph = _decoding_graph(self._path, self._stream.index, target, self.channels)
            while True:
                try:
                    block = block_of(graph.pull(), self.channels)
                except av.error.EOFError:
                    return
                decoded += block.shape[1]
                yield block
        except av.error.FFmpegError as exc:
            raise MediaDecodeError(
                f"The audio stream stops decoding after {decoded / self.sample_rate:.1f} s; "
                f"the file is damaged ({ffmpeg_reason(exc)})."
            ) from exc

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
            _path=path,
            _stream=stream,
        )


def _read_ahead(source: Iterator[Block], *, depth: int) -> Generator[Block, None, None]:
    """`source`'s items, produced by a thread at most `depth` items ahead; its errors raised here.

    Closing the iterator (or leaving it by an exception, such as a cancel) stops and joins the thread,
    so the file is never closed under it.
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


def _decoding_graph(path: Path, stream_index: int, size: int, channels: int) -> Any:
    """A filter graph whose every pull is the next `size` samples of the stream, as float32 (planar up
    to PLANAR_CHANNELS_MAX channels).

    FFmpeg's `amovie` source demuxes and decodes, `aformat` converts any sample format to float32 in
    [-1, 1], and the sink gathers the codec's small frames into blocks (the last one shorter): a whole
    block per call, in C, without the GIL, so the decoding thread does not contend with the analysis
    for it once per codec frame (26,000 times in ten minutes of MP3), as a loop over PyAV's frames would.
    """
    graph = av.filter.Graph()
    graph.threads = 1
    source = graph.add("amovie", filename=str(path), streams=str(stream_index))
    floats = graph.add("aformat", sample_fmts=sample_format(channels))
    source.link_to(floats)
    floats.link_to(graph.add("abuffersink"))
    graph.configure()
    graph.set_audio_frame_size(size)
    return graph


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


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"
