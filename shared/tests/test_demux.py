"""`packets_of`: PyAV's demuxer ends its packets where it fails to flush a stream added while reading, and
only there (its own flush packet given). The container is a stand-in: PyAV's failure hangs on what its
memory holds past an array's end, and the audio tests meet it with a real file."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from medialens_shared.demux import demuxed


@dataclass
class _Packet:
    size: int
    pts: int | None = None


class _Container:
    """Gives `packets`, then raises IndexError as PyAV 18.1 does; notes whether it was closed."""

    def __init__(self, packets: list[_Packet]) -> None:
        self.packets, self.closed = packets, False

    def demux(self, _stream: object) -> Iterator[_Packet]:
        try:
            yield from self.packets
            raise IndexError("list index out of range")
        finally:
            self.closed = True


def test_the_error_after_the_streams_flush_packet_ends_the_packets() -> None:
    container = _Container([_Packet(10), _Packet(12), _Packet(0)])
    with demuxed(container, None) as packets:
        assert [p.size for p in packets] == [10, 12, 0]
    assert container.closed


@pytest.mark.parametrize(
    "packets",
    [[_Packet(10), _Packet(12)], [_Packet(10), _Packet(0, pts=1), _Packet(12, pts=2)]],
    ids=["none-empty", "an-empty-packet-with-a-time"],
)
def test_the_error_before_the_streams_flush_packet_is_raised(packets: list[_Packet]) -> None:
    """An empty packet with a time is a frame shown again (libtheora's), not the flush packet."""
    container = _Container(packets)
    with pytest.raises(IndexError), demuxed(container, None) as read:
        list(read)
    assert container.closed
