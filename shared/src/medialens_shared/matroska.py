"""Matroska's per-track `DURATION` tag, which the two common muxers write two ways.

FFmpeg's muxer writes where the track ends (the end of its last block, from the file's time 0). mkvmerge
writes it among its statistics tags (`_STATISTICS_WRITING_APP` names the writer) as the track's own
length, from its first timestamp to the end of its last block (as mkvtoolnix's author describes it,
mbunkus/mkvtoolnix#1494). The two agree for a track that starts at 0, not for one delayed (mkvmerge's
`--sync`): read as an end, mkvmerge's 2.5 s soundtrack starting at 1.5 s lasted 1.0 s. The video and audio
services both read the tag (a Matroska track states no duration of its own), through `duration_tag`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from fractions import Fraction

#: The tag mkvmerge writes beside its statistics tags, `DURATION` among them.
MKVMERGE_STATISTICS = "_STATISTICS_WRITING_APP"
#: The tag's form: hours, minutes and seconds with a fraction (`00:00:04.023000000`).
_CLOCK = re.compile(r"(\d+):([0-5]\d):([0-5]\d(?:\.\d+)?)")


@dataclass(frozen=True, slots=True)
class DurationTag:
    """A track's `DURATION` tag read: `seconds`, and whether they are its length (mkvmerge's) rather than
    its end time (FFmpeg's)."""

    seconds: Fraction
    is_length: bool

    def end(self, start_s: Fraction) -> Fraction:
        """Where the track ends, in seconds from the file's time 0, for a track starting at `start_s`."""
        return start_s + self.seconds if self.is_length else self.seconds


def duration_tag(metadata: Mapping[str, str]) -> DurationTag | None:
    """The `DURATION` tag among a Matroska track's tags (PyAV's `stream.metadata`); None without one, or
    with one not in the tag's form."""
    match = _CLOCK.fullmatch(str(metadata.get("DURATION", "")).strip())
    if match is None:
        return None
    hours, minutes, secs = match.groups()
    seconds = int(hours) * 3600 + int(minutes) * 60 + Fraction(secs)
    return DurationTag(seconds, is_length=MKVMERGE_STATISTICS in metadata)
