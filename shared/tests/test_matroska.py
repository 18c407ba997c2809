"""Matroska's DURATION tag, read as the muxer that wrote it means it."""

from __future__ import annotations

from fractions import Fraction

import pytest

from medialens_shared.matroska import DurationTag, duration_tag


def test_ffmpegs_tag_is_where_the_track_ends() -> None:
    tag = duration_tag({"DURATION": "00:00:04.023000000", "ENCODER": "Lavc61.19.101 flac"})
    assert tag == DurationTag(Fraction("4.023"), is_length=False)
    assert tag.end(Fraction(3, 2)) == Fraction("4.023")


def test_mkvmerges_tag_is_the_tracks_length() -> None:
    tag = duration_tag({"DURATION": "01:02:03.500000000", "_STATISTICS_WRITING_APP": "mkvmerge v74.0.0"})
    assert tag == DurationTag(Fraction(3723 * 2 + 1, 2), is_length=True)
    assert tag.end(Fraction(3, 2)) == Fraction(3723 * 2 + 1, 2) + Fraction(3, 2)


@pytest.mark.parametrize("text", ["", "4.0", "00:61:00.0", "N/A"])
def test_anything_else_is_no_tag(text: str) -> None:
    assert duration_tag({"DURATION": text}) is None
    assert duration_tag({}) is None
