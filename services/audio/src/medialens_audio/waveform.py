"""`audio.waveform`: min/max pairs of the mono mix (the mean of the channels) at `points_per_second`.

Point i covers samples [i * rate // pps, (i + 1) * rate // pps), so there are ceil(duration * pps)
points and none straddles two seconds unevenly. Blocks are reduced with `minimum.reduceat` and
`maximum.reduceat`; only the point a block ends inside is carried over to the next.

A result is one MongoDB document, which cannot pass 16 MB: at most `MAX_POINTS` pairs (about 9 MB) are
drawn. When the announced duration (1% and 0.1 s more: decoders give a little more than announced) at the
asked rate would need more, the rate is lowered to fit (the result's `points_per_second` says which rate
was drawn); audio found longer than that fails with UNSUPPORTED_INPUT instead of producing a result that
cannot be stored.

The points lie on the media's timeline, as a player's seek bar does: point i covers i / pps seconds from
the file's start, whatever stream starts it. A soundtrack that comes in 1.5 s after the video
(`AudioInput.start_s`) is drawn after 1.5 s of (0, 0), the silence played there, and `duration_s` is where
the audio ends (1.5 s plus its length), so a client drawing `peaks` under a video player from time 0 needs
no offset that the result would have to carry.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydantic import BaseModel

from medialens_audio.decode import Block, Report, open_audio
from medialens_shared.contracts import AudioWaveformParams, AudioWaveformResult
from medialens_shared.errors import UnsupportedInput

#: Decimals kept per value: finer than any screen draws, and it keeps the document small.
DECIMALS = 4
#: The most (min, max) pairs in one result: about 35 bytes each in BSON, well inside a 16 MB document.
MAX_POINTS = 250_000


#: How much longer than announced the audio is planned for when the rate is lowered to fit: decoders give
#: a little more than the metadata says (AAC's and MP3's padding, ~20 ms), and a rate fitted exactly (400
#: a second for 625 s at 1000 asked) refused such a file as "longer than its metadata says".
DURATION_SLACK = (1.01, 0.1)  # x 1.01, + 0.1 s


def fitting_rate(points_per_second: int, duration_s: float | None, *, max_points: int = MAX_POINTS) -> int:
    """The asked rate, or the highest lower one whose points for `duration_s` (and `DURATION_SLACK` more)
    fit in `max_points`."""
    if not duration_s:
        return points_per_second
    factor, extra_s = DURATION_SLACK
    return max(1, min(points_per_second, int(max_points // (duration_s * factor + extra_s))))


class PeakBinner:
    """Min/max of the mono mix per point, for a stream fed block by block."""

    def __init__(
        self, sample_rate: int, points_per_second: int, *, max_points: int = MAX_POINTS, start_s: float = 0.0
    ) -> None:
        self.sample_rate = sample_rate
        self.points_per_second = points_per_second
        self.max_points = max_points
        #: Samples of the timeline so far: the silence before the audio's start, then the audio's.
        self._samples = round(start_s * sample_rate)
        lead_points = self._point_of(self._samples - 1) + 1 if self._samples else 0
        self._mins: list[float] = [0.0] * lead_points
        self._maxs: list[float] = [0.0] * lead_points
        self._check_size()

    def _point_of(self, sample: int) -> int:
        """The point whose span holds `sample`: the largest i with i * rate // pps <= sample."""
        return -(-(sample + 1) * self.points_per_second // self.sample_rate) - 1

    def feed(self, block: Block) -> None:
        if not block.shape[1]:
            return
        mono = block.mean(axis=0)
        offset = self._samples
        first, last = self._point_of(offset), self._point_of(offset + mono.size - 1)
        bounds = np.arange(first, last + 1, dtype=np.int64) * self.sample_rate // self.points_per_second
        starts = np.maximum(bounds - offset, 0)
        mins = np.minimum.reduceat(mono, starts).tolist()
        maxs = np.maximum.reduceat(mono, starts).tolist()
        if first < len(self._mins):  # the block continues the point the last one ended in
            mins[0] = min(mins[0], self._mins.pop())
            maxs[0] = max(maxs[0], self._maxs.pop())
        self._mins.extend(mins)
        self._maxs.extend(maxs)
        self._samples += mono.size
        self._check_size()

    def _check_size(self) -> None:
        if len(self._mins) > self.max_points:
            raise UnsupportedInput(
                f"the audio is longer than its metadata says: more than {self.max_points} waveform points at "
                f"{self.points_per_second} per second do not fit in a result; ask for fewer points_per_second"
            )

    def result(self) -> AudioWaveformResult:
        # Float files may hold samples past full scale; both ends are clipped to -1..1 alike, so a point
        # lying wholly above 1 reads (1, 1), not a minimum above its maximum.
        peaks = [
            (round(_full_scale(low), DECIMALS), round(_full_scale(high), DECIMALS))
            for low, high in zip(self._mins, self._maxs, strict=True)
        ]
        return AudioWaveformResult(
            points_per_second=self.points_per_second,
            duration_s=round(self._samples / self.sample_rate, 6),
            peaks=peaks,
        )


def _full_scale(value: float) -> float:
    return min(max(value, -1.0), 1.0)


def compute_waveform(
    path: Path, params: BaseModel | None, report: Report, *, max_points: int = MAX_POINTS
) -> AudioWaveformResult:
    """`audio.waveform` of the file at `path`, reporting progress through `report`."""
    settings = params if isinstance(params, AudioWaveformParams) else AudioWaveformParams()
    with open_audio(path) as audio:
        end_s = audio.start_s + audio.duration_s if audio.duration_s else None
        rate = fitting_rate(settings.points_per_second, end_s, max_points=max_points)
        binner = PeakBinner(audio.sample_rate, rate, max_points=max_points, start_s=audio.start_s)
        for block in audio.blocks(report, action="drawing the waveform"):
            binner.feed(block)
        return binner.result()
