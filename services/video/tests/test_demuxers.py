"""Every reader of the video service closes each demuxer it opens, however early it stops.

A PyAV demux generator dropped midway, rather than closed, keeps part of itself for good (`demux.demuxed`
says how much). A per-call memory test is practical only for the probes (a long decode per call): for the
scene chunks, their refinement, the scene thumbnails, `video.thumbnails` and `video.quality`, this counts
the demuxers instead. `av.open` hands the code a container whose `demux` is tracked; a demuxer counts as
closed only when `close()` is called on it (being garbage-collected does not count, as that is the leak).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import av
import pytest

from medialens_video import scenes
from medialens_video.probe import probe_video
from medialens_video.quality import detect_quality
from medialens_video.scenes import detect_scenes
from medialens_video.thumbnails import extract_thumbnails
from scripts.samples import make_video

from .test_scenes import B_RUN_CUTS, FIXED_PATTERN, b_run_clip

CUTS_S = [1.32, 2.2, 4.04, 5.68, 6.36]


class _Demuxer:
    """A demux generator that notes whether it was closed, and how many packets it gave."""

    def __init__(self, packets: Iterator[Any]) -> None:
        self.packets = packets
        self.given = 0
        self.closed = False

    def __iter__(self) -> _Demuxer:
        return self

    def __next__(self) -> Any:
        packet = next(self.packets)
        self.given += 1
        return packet

    def close(self) -> None:
        self.closed = True
        self.packets.close()  # type: ignore[attr-defined]  # a generator


class _Container:
    """The real container, its `demux` tracked."""

    def __init__(self, real: Any, demuxers: list[_Demuxer]) -> None:
        self._real, self._demuxers = real, demuxers

    def demux(self, *args: Any, **kwargs: Any) -> _Demuxer:
        demuxer = _Demuxer(self._real.demux(*args, **kwargs))
        self._demuxers.append(demuxer)
        return demuxer

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    def __enter__(self) -> _Container:
        self._real.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._real.__exit__(*exc)


@pytest.fixture
def demuxers(monkeypatch: pytest.MonkeyPatch) -> list[_Demuxer]:
    opened: list[_Demuxer] = []
    real_open = av.open

    def tracked_open(*args: Any, **kwargs: Any) -> Any:
        return _Container(real_open(*args, **kwargs), opened)

    monkeypatch.setattr(av, "open", tracked_open)
    return opened


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """8 s with five cuts, a keyframe every 12 frames: several chunks, and cuts mid-GOP."""
    path = tmp_path_factory.mktemp("demuxers") / "clip.mp4"
    make_video(path, duration_s=8.0, fps=25, width=320, height=180, cuts_s=CUTS_S, texture=True, keyint=12)
    return path


def _unclosed(demuxers: list[_Demuxer]) -> list[int]:
    return [k for k, demuxer in enumerate(demuxers) if not demuxer.closed]


def test_scene_chunks_refinement_and_thumbnails_close_their_demuxers(
    tmp_path: Path, demuxers: list[_Demuxer], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Cuts on skipped B-frames with the packet-size suspects off are found roughly and refined: the scan,
    every chunk (most stop at the next chunk's keyframe), every refinement and every scene thumbnail's read
    close their demuxers."""
    clip = b_run_clip(tmp_path / "b-runs.mp4", x264_params=FIXED_PATTERN)
    demuxers.clear()
    monkeypatch.setattr(scenes, "SPIKE_RATIO", float("inf"))
    refined: list[int] = []
    refine = scenes._refine_task

    def counted(*args: Any) -> Any:
        refined.append(1)
        return refine(*args)

    monkeypatch.setattr(scenes, "_refine_task", counted)
    analysis = detect_scenes(clip, thumbnail_dir=tmp_path / "thumbs")
    assert [scene.start_frame for scene in analysis.scenes[1:]] == B_RUN_CUTS
    assert all(scene.thumbnail is not None for scene in analysis.scenes)
    assert refined  # the refinement's reads are among those counted
    assert len(demuxers) >= 1 + 2 + len(refined) + 1  # the scan, chunks, refinements, thumbnails
    assert any(d.given < 150 for d in demuxers)  # some stopped early: the case that leaks
    assert _unclosed(demuxers) == []


def test_thumbnails_close_the_demuxer_of_each_seek(
    clip: Path, tmp_path: Path, demuxers: list[_Demuxer]
) -> None:
    """`video.thumbnails` seeks for far targets, dropping the demuxer midway each time: each is closed."""
    images = extract_thumbnails(clip, out_dir=tmp_path, count=3, width=64)
    assert len(images) == 3  # 2.7 s apart: a seek for each after the first
    assert len(demuxers) >= 2
    assert _unclosed(demuxers) == []


def test_quality_and_probe_close_their_demuxers(clip: Path, demuxers: list[_Demuxer]) -> None:
    detect_quality(clip)
    probe_video(clip)
    assert len(demuxers) >= 2
    assert _unclosed(demuxers) == []


def test_the_check_catches_a_demuxer_left_open(clip: Path, demuxers: list[_Demuxer]) -> None:
    """The tracking itself: a demuxer dropped after one packet is reported; a closed one is not."""
    with av.open(str(clip)) as container:
        next(iter(container.demux(video=0)))
        kept = container.demux(video=0)
        next(kept)
        kept.close()
    assert _unclosed(demuxers) == [0]


class _GrownContainer(_Container):
    """The real container, its demuxer ending as PyAV 18.1's does on an MPEG-TS that gained a stream while
    it was read: every packet given, the flush packets of the streams there from the start too, then
    `IndexError` (PyAV flushes streams by FFmpeg's count of them, one it holds no stream for)."""

    def demux(self, *args: Any, **kwargs: Any) -> Any:
        real = self._real.demux(*args, **kwargs)

        def grown() -> Iterator[Any]:
            try:
                yield from real
            finally:
                real.close()
            raise IndexError("list index out of range")

        return grown()


def test_a_stream_added_while_the_file_is_read_ends_its_packets_without_an_error(
    clip: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Scenes, quality and thumbnails read such a file to its end and find what is in it: they failed with
    the IndexError (INTERNAL_ERROR) on fuzzed MPEG-TS recordings whose bytes looked like a new stream."""
    real_open = av.open
    monkeypatch.setattr(av, "open", lambda *args, **kwargs: _GrownContainer(real_open(*args, **kwargs), []))
    analysis = detect_scenes(clip, thumbnail_dir=tmp_path / "thumbs")
    assert [round(scene.start_s, 2) for scene in analysis.scenes[1:]] == CUTS_S
    assert all(scene.thumbnail is not None for scene in analysis.scenes)
    assert detect_quality(clip).frames_analyzed == 200
    assert len(extract_thumbnails(clip, out_dir=tmp_path, every_s=7.9, width=64)) == 2
