"""`audio.silence`: the intervals where every channel stays below a level for a minimum duration.

A sample is silent when its magnitude on every channel is below `threshold_db` (dBFS, as FFmpeg's
`silencedetect` decides it), so boundaries are exact to the sample. Between two loud samples lies a
silence when the gap lasts at least `min_duration_s`; the gap after the last loud sample is closed at
the end of the stream. Only the last loud sample's position is carried across blocks.

Times lie on the media's timeline (`AudioInput.start_s`): the silences of a soundtrack that comes in 1.5 s
after the video start 1.5 s later than in the audio alone, beside the video jobs' times. The time before
the audio starts holds no audio, which is not silence: it is not reported.

A result is one MongoDB document, which cannot pass 16 MB: at most `MAX_SEGMENTS` silences are listed,
the first ones in time order (the list is complete up to the end of its last one). A detection past that
(a `min_duration_s` of 0.0001 s finds one in every zero crossing of a low tone: 2,000 in 10 s) counts every
silence in `segment_count` and `total_silence_s` and says so with `segments_truncated`; only the listed
ones are kept in memory.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel

from medialens_audio.decode import Block, Report, open_audio
from medialens_shared.contracts import AudioSilenceParams, AudioSilenceResult, SilenceSegment

#: The most silences one result lists: about 70 bytes each in BSON (3.5 MB at the cap), so the result
#: stays well inside a 16 MB MongoDB document, also beside the other results of a `media.analyze`.
MAX_SEGMENTS = 50_000


class SilenceDetector:
    """Silent intervals of a stream fed block by block, in samples; times from `start_s` on."""

    def __init__(
        self,
        sample_rate: int,
        *,
        threshold_db: float,
        min_duration_s: float,
        start_s: float = 0.0,
        max_segments: int | None = None,
    ) -> None:
        self.sample_rate = sample_rate
        self.start_s = start_s
        self.max_segments = MAX_SEGMENTS if max_segments is None else max_segments
        self._threshold = np.float32(10.0 ** (threshold_db / 20.0))
        self._min_samples = max(1, round(min_duration_s * sample_rate))
        self._samples = 0
        #: Index just after the last loud sample: where the current run of silence began.
        self._quiet_since = 0
        #: The first `max_segments` closed silences, as (first silent sample, first loud one after).
        self.segments: list[tuple[int, int]] = []
        #: Closed silences found, and their samples, listed or not.
        self.count = 0
        self._silent_samples = 0

    def feed(self, block: Block) -> None:
        loud = np.flatnonzero((np.abs(block) >= self._threshold).any(axis=0)) + self._samples
        self._samples += block.shape[1]
        if not loud.size:
            return
        starts = np.concatenate([[self._quiet_since], loud[:-1] + 1])
        long_enough = loud - starts >= self._min_samples
        self._add(starts[long_enough], loud[long_enough])
        self._quiet_since = int(loud[-1]) + 1

    def _add(self, starts: npt.NDArray[np.int64], ends: npt.NDArray[np.int64]) -> None:
        self.count += int(starts.size)
        self._silent_samples += int((ends - starts).sum())
        room = self.max_segments - len(self.segments)
        if room > 0:
            self.segments.extend(zip(starts[:room].tolist(), ends[:room].tolist(), strict=True))

    def result(self) -> AudioSilenceResult:
        segments = list(self.segments)
        count, silent = self.count, self._silent_samples
        if self._samples - self._quiet_since >= self._min_samples:
            count += 1
            silent += self._samples - self._quiet_since
            if len(segments) < self.max_segments:
                segments.append((self._quiet_since, self._samples))
        rate, origin = self.sample_rate, self.start_s
        found = [
            SilenceSegment(
                start_s=round(origin + start / rate, 4),
                end_s=round(origin + end / rate, 4),
                duration_s=round((end - start) / rate, 4),
            )
            for start, end in segments
        ]
        return AudioSilenceResult(
            segments=found,
            total_silence_s=round(silent / rate, 4),
            segment_count=count,
            segments_truncated=count > len(found),
        )


def detect_silence(path: Path, params: BaseModel | None, report: Report) -> AudioSilenceResult:
    """`audio.silence` of the file at `path`, reporting progress through `report`."""
    settings = params if isinstance(params, AudioSilenceParams) else AudioSilenceParams()
    with open_audio(path) as audio:
        detector = SilenceDetector(
            audio.sample_rate,
            threshold_db=settings.threshold_db,
            min_duration_s=settings.min_duration_s,
            start_s=audio.start_s,
        )
        for block in audio.blocks(report, action="finding silences"):
            detector.feed(block)
        return detector.result()
