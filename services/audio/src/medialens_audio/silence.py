"""`audio.silence`: the intervals where every channel stays below a level for a minimum duration.

A sample is silent when its magnitude on every channel is below `threshold_db` (dBFS, as FFmpeg's
`silencedetect` decides it), so boundaries are exact to the sample. Between two loud samples lies a
silence when the gap lasts at least `min_duration_s`; the gap after the last loud sample is closed at
the end of the stream. Only the last loud sample's position is carried across blocks.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydantic import BaseModel

from medialens_audio.decode import Block, Report, open_audio
from medialens_shared.contracts import AudioSilenceParams, AudioSilenceResult, SilenceSegment


class SilenceDetector:
    """Silent intervals of a stream fed block by block, in samples."""

    def __init__(self, sample_rate: int, *, threshold_db: float, min_duration_s: float) -> None:
        self.sample_rate = sample_rate
        self._threshold = np.float32(10.0 ** (threshold_db / 20.0))
        self._min_samples = max(1, round(min_duration_s * sample_rate))
        self._samples = 0
        #: Index just after the last loud sample: where the current run of silence began.
        self._quiet_since = 0
        self.segments: list[tuple[int, int]] = []

    def feed(self, block: Block) -> None:
        loud = np.flatnonzero((np.abs(block) >= self._threshold).any(axis=0)) + self._samples
        self._samples += block.shape[1]
        if not loud.size:
            return
        starts = np.concatenate([[self._quiet_since], loud[:-1] + 1])
        long_enough = loud - starts >= self._min_samples
        self.segments.extend(zip(starts[long_enough].tolist(), loud[long_enough].tolist(), strict=True))
        self._quiet_since = int(loud[-1]) + 1

    def result(self) -> AudioSilenceResult:
        segments = list(self.segments)
        if self._samples - self._quiet_since >= self._min_samples:
            segments.append((self._quiet_since, self._samples))
        rate = self.sample_rate
        found = [
            SilenceSegment(
                start_s=round(start / rate, 4),
                end_s=round(end / rate, 4),
                duration_s=round((end - start) / rate, 4),
            )
            for start, end in segments
        ]
        total = sum(end - start for start, end in segments) / rate
        return AudioSilenceResult(segments=found, total_silence_s=round(total, 4))


def detect_silence(path: Path, params: BaseModel | None, report: Report) -> AudioSilenceResult:
    """`audio.silence` of the file at `path`, reporting progress through `report`."""
    settings = params if isinstance(params, AudioSilenceParams) else AudioSilenceParams()
    with open_audio(path) as audio:
        detector = SilenceDetector(
            audio.sample_rate, threshold_db=settings.threshold_db, min_duration_s=settings.min_duration_s
        )
        for block in audio.blocks(report, action="finding silences"):
            detector.feed(block)
        return detector.result()
