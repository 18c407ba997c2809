"""A container opened and its packets read, with PyAV, by the video and audio services.

The container and stream are PyAV's, taken as they come (`Any`): this package does not depend on PyAV
(the gateway does not decode), and nothing here calls it but `container.demux` and the opener each
service hands `probed`.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterable
from contextlib import closing
from typing import Any

#: FFmpeg's options for a second, longer look at a file in which its first one (its defaults: 5 s of media
#: and 5 MB) met no packet of a stream, so found no format for it: up to 60 s and 64 MiB (the packets it
#: reads are kept for the demuxer, so this is also the most memory the look takes; 64 MiB is 34 s of
#: broadcast 1080i at 15 Mb/s). An MPEG-TS lists its tracks before any of their packets, and a recording
#: that starts before its soundtrack does (a broadcast captured from mid-advert, a camera's audio
#: switched on late) had an audio track of 0 channels at 0 Hz: every audio job failed, `video.probe`
#: reported it so.
LATE_STREAM_PROBE: dict[str, str] = {"analyzeduration": str(60 * 1_000_000), "probesize": str(64 << 20)}


def probed(
    open_with: Callable[[dict[str, str]], Any],
    needed: Callable[[Any], Iterable[Any]],
    options: dict[str, str] | None = None,
) -> Any:
    """The container `open_with(options)` opens, opened again with `LATE_STREAM_PROBE` added when FFmpeg
    found no format for one of the streams the job reads, `needed(container)` (`unprobed`);
    `container.options` says which.

    Only the streams read count: a broadcast's table often lists a track that never has a packet (a
    second language, audio description), and a look past it on every open (a scene job opens its file
    once for each stretch it decodes) would cost each 64 MiB read, and held, for nothing.
    """
    options = dict(options or {})
    container = open_with(options)
    if not any(unprobed(stream) for stream in needed(container)):
        return container
    container.close()
    return open_with(options | LATE_STREAM_PROBE)


def unprobed(stream: Any) -> bool:
    """Whether `stream` is audio or video that FFmpeg can decode but found no format for (no rate, no
    channels, no picture size): it met no packet of it while it probed the file."""
    context = stream.codec_context
    if context is None:  # no decoder: nothing a second look would give
        return False
    if stream.type == "audio":
        return not context.sample_rate or not context.channels
    if stream.type == "video":
        return not context.width or not context.height
    return False


def demuxed(container: Any, stream: Any) -> closing[Generator[Any, None, None]]:
    """`packets_of(container, stream)` for a `with` block, which closes it however the block ends.

    Why: a PyAV demux generator dropped midway, instead of closed, leaves 0.2-1.6 KB behind for good
    (PyAV 18.1, measured over 5,000-20,000 opens of a file; none when it is closed, which runs its
    clean-up `finally`). Readers stop early (a probe's first frame, a chunk's end, a thumbnail found, an
    error), so every one goes through this.
    """
    return closing(packets_of(container, stream))


def packets_of(container: Any, stream: Any) -> Generator[Any, None, None]:
    """`container.demux(stream)`, whole where a stream appears while the file is read.

    An MPEG-TS may start a stream midway (a broadcast recording whose second soundtrack comes and goes,
    or a damaged file whose bytes seem to): FFmpeg adds it as it comes, and PyAV 18.1's demuxer, at its
    end, sends flush packets to the streams by FFmpeg's count of them, one it holds no stream for, and
    raises `IndexError` (INTERNAL_ERROR in loudness, scenes and quality). The streams there from the
    start come first: once the stream's own flush packet (empty) has been given, every packet has, and
    the error ends the packets; before it, it is raised.
    """
    packets = container.demux(stream)
    flushed = False
    try:
        for packet in packets:
            flushed = flushed or (not packet.size and packet.pts is None)  # not a frame shown again
            yield packet
    except IndexError:
        if not flushed:
            raise
    finally:
        packets.close()
