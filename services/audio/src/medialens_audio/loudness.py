"""`audio.loudness`: EBU R128 / ITU-R BS.1770-4 loudness in one streamed pass.

    samples ─┬─ K-weighting (two biquads in double precision, state carried across blocks; helper thread)
             │    └─ Σ channel weight x square, summed per 100 ms step  ──▶  energies (10 floats per second)
             │          ├─ 400 ms blocks (75 % overlap) ─ absolute + relative gate ─▶ integrated loudness
             │          └─ 3 s windows every 100 ms ─ Tech 3342 gates, 10th-95th percentile ─▶ loudness range
             │                                    every 1 s ─▶ short-term series
             └─ |x| max ─▶ sample peak;  4x polyphase FIR (windowed sinc) ─▶ true peak (caller's thread)

Short-term times (`t_s`, where each 3 s window ends) lie on the media's timeline: a soundtrack that comes
in 1.5 s after its video has its first value at 4.5 s (`AudioInput.start_s`).

Only the per-100 ms energies are kept (36,000 floats for an hour), never the samples. Channel weights
follow BS.1770: 1.0 for front channels, 0 for LFE, 1.41 for surround (side and back) channels, as FFmpeg's
`ebur128` filter weighs them.

The biquads run in FFmpeg's `biquad` filter through PyAV rather than `scipy.signal.sosfilt`: the same
numbers (within 3e-8, their output being rounded to float32), several times faster, and without SciPy's
80 MB of libraries in every worker.
"""

from __future__ import annotations

import math
from concurrent.futures import Future, ThreadPoolExecutor
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import av.error
import av.filter
import numpy as np
import numpy.typing as npt
from numpy.lib.stride_tricks import sliding_window_view
from pydantic import BaseModel

from medialens_audio.decode import Block, Report, block_of, frame_of, open_audio, sample_format
from medialens_shared.contracts import AudioLoudnessResult, ShortTermPoint
from medialens_shared.errors import UnsupportedInput

Floats = npt.NDArray[np.float64]

#: BS.1770's offset: loudness = -0.691 + 10 log10(weighted mean square of the K-weighted signal).
OFFSET_LU = -0.691
ABSOLUTE_GATE_LUFS = -70.0
RELATIVE_GATE_LU = -10.0
#: EBU Tech 3342: the relative gate of the loudness range, and the percentiles it spans.
LRA_RELATIVE_GATE_LU = -20.0
LRA_PERCENTILES = (0.10, 0.95)
#: Short-term values quieter than this are digital silence: reported as null.
SHORT_TERM_FLOOR_LUFS = -120.0

_STEPS_PER_S = 10  # energies are kept per 100 ms
_BLOCK_STEPS = 4  # 400 ms gating blocks
_SHORT_TERM_STEPS = 30  # 3 s windows

_LFE = frozenset({"LFE", "LFE2", "LFE3", "LOW_FREQUENCY", "LOW_FREQUENCY_2"})
_SURROUND = frozenset({"BL", "BR", "BC", "SL", "SR", "TBL", "TBR", "TBC", "SDL", "SDR", "LSD", "RSD"})


def _interpolator(*, taps: int, beta: float, factor: int = 4) -> Floats:
    """A polyphase interpolator oversampling `factor` times: one row per point between two samples (at
    1/factor, 2/factor, ...; the samples themselves count as they are), each a Kaiser-windowed sinc of
    `taps` samples around its point (the point lies between samples taps/2 - 1 and taps/2 of the
    window), its gain 1 at 0 Hz, as a convolution kernel (reversed: y[n] = sum h[k] x[n - k])."""
    rows = []
    for point in range(1, factor):
        distance = np.arange(taps) - (taps // 2 - 1 + point / factor)
        window = np.i0(beta * np.sqrt(np.clip(1.0 - (distance / (taps / 2)) ** 2, 0.0, None))) / np.i0(beta)
        row = np.sinc(distance) * window
        rows.append(row[::-1] / row.sum())
    return np.array(rows)


#: The true-peak meter's interpolator: 4x oversampling, each of the three points between two samples a
#: Kaiser-windowed sinc of 24 samples (beta 5). BS.1770-4 Annex 2's example filter (12 taps a phase, the
#: points at odd eighths) reads loud material low and some tones high: a limited master 0.27 dB under an
#: 8x reference (soxr) and FFmpeg's `ebur128=peak=true` (which resamples to 192 kHz), an MP3 of it 0.19,
#: a 997 Hz tone at 11,025 Hz 0.20 dB over. This one reads them within 0.04 dB of the reference; a tone
#: at a quarter of the sample rate reads up to 0.17 dB low at the worst phase, 4x oversampling's own limit
#: (cos(pi/16)); BS.1770 and EBU Tech 3341, which allows -0.4..+0.2 dB, take the standard's filter as an
#: example.
TRUE_PEAK_PHASES = _interpolator(taps=24, beta=5.0)


#: The lowest sample rate loudness is measured at: the K-weighting's high shelf (1,682 Hz) must lie well
#: inside the band. At or below twice its frequency the filter is not one (3,000 Hz gave null, FFmpeg's
#: `ebur128` +3 LUFS for a -27 LUFS tone; 9 Hz an IndexError); at 3,500 Hz and up both agree with FFmpeg.
MIN_SAMPLE_RATE = 4000


def k_weighting(sample_rate: int) -> Floats:
    """The K-weighting filter (high shelf, then RLB high-pass) as second-order sections for a rate.

    Derived from the analogue prototypes, so at 48 kHz it gives BS.1770-4's published coefficients.
    """
    k = math.tan(math.pi * 1681.974450955533 / sample_rate)
    q = 0.7071752369554196
    vh = 10.0 ** (3.999843853973347 / 20.0)
    vb = vh**0.4996667741545416
    a0 = 1.0 + k / q + k * k
    shelf = [
        (vh + vb * k / q + k * k) / a0,
        2.0 * (k * k - vh) / a0,
        (vh - vb * k / q + k * k) / a0,
        1.0,
        2.0 * (k * k - 1.0) / a0,
        (1.0 - k / q + k * k) / a0,
    ]
    k = math.tan(math.pi * 38.13547087602444 / sample_rate)
    q = 0.5003270373238773
    a0 = 1.0 + k / q + k * k
    high_pass = [1.0, -2.0, 1.0, 1.0, 2.0 * (k * k - 1.0) / a0, (1.0 - k / q + k * k) / a0]
    return np.array([shelf, high_pass])


def channel_weights(names: tuple[str, ...]) -> Floats:
    """BS.1770 weights of channels named as FFmpeg names them."""
    return np.array([0.0 if n in _LFE else 1.41 if n in _SURROUND else 1.0 for n in names])


class KWeightingFilter:
    """The K-weighting filter applied block by block, its state carried from one block to the next.

    The sections run in double precision in the transposed direct form II (the shortest dependency
    chain of FFmpeg's forms, so the fastest); only their output is rounded to float32, which moves a
    100 ms energy by less than 1e-7 dB and halves what the energies read.
    """

    def __init__(self, sample_rate: int, layout: str) -> None:
        # A named layout: FFmpeg's biquad leaves the channels of an unnamed one ("2 channels") untouched.
        self.sample_rate = sample_rate
        self._layout = layout
        self._pts = 0
        self._channels = len(av.AudioLayout(layout).channels)
        floats = sample_format(self._channels)
        graph = av.filter.Graph()
        # One FFmpeg thread: the meter runs the filter on a helper thread, the second core already.
        graph.threads = 1
        node = graph.add_abuffer(
            format=floats, sample_rate=sample_rate, layout=self._layout, time_base=Fraction(1, sample_rate)
        )
        for section in k_weighting(sample_rate):
            b0, b1, b2, _a0, a1, a2 = (repr(float(value)) for value in section)
            biquad = graph.add(
                "biquad", f"b0={b0}:b1={b1}:b2={b2}:a0=1:a1={a1}:a2={a2}:precision=f64:transform=tdii"
            )
            node.link_to(biquad)
            node = biquad
        same_floats = graph.add("aformat", f"sample_fmts={floats}")
        node.link_to(same_floats)
        same_floats.link_to(graph.add("abuffersink"))
        graph.configure()
        self._graph: Any = graph

    def __call__(self, block: Block) -> Block:
        """The K-weighted samples of `block` (channels, n) as float32."""
        frame = frame_of(block, self._layout)
        frame.sample_rate = self.sample_rate
        frame.pts = self._pts
        self._pts += block.shape[1]
        self._graph.push(frame)
        filtered: list[Block] = []
        while True:
            try:
                filtered.append(block_of(self._graph.pull(), self._channels))
            except (av.error.BlockingIOError, av.error.EOFError):
                break
        return filtered[0] if len(filtered) == 1 else np.concatenate(filtered, axis=1)


class TruePeakMeter:
    """The maximum of |signal| oversampled 4x (`TRUE_PEAK_PHASES`), with state across blocks.

    Exact, yet cheap, because only windows of 24 samples that could beat the peak so far are
    interpolated. An interpolated value of phase p (taps h) is bounded three ways:

    * |y| <= sum|h| max|x| <= 2.36 max|x|: per segment of 256 windows, from the largest |x| the segment
      and the one after it hold (a window reaches 23 samples past its start). Most segments of real
      material lie more than 7.5 dB under the peak and cost one pass of |x| and a maximum;
    * |y| <= ||h|| ||x|| <= 0.985 ||x|| (Cauchy-Schwarz): skips most windows of noise-like sound;
    * |y| <= |sum h| |x_c| + sum|h_k| |k - c| max|x_k+1 - x_k| <= |x_c| + 4.2 max|dx|, with x_c the
      window's central sample: skips most windows of smooth (tonal, low-pitched) sound.

    The last two are evaluated per group of 4 windows, from per-group sums and maxima, only in the
    segments the first one keeps. The segment with the largest sample is interpolated in full first, so
    the peak to beat is as high as it can be before the others are screened.

    Where most windows come near the peak (a limited master, whose every beat touches its ceiling; a
    steady line-up tone), the screens let them through and copying them out costs more than interpolating
    all of them: a 2-minute tone took 1.5 s, 3x FFmpeg's `ebur128=peak=true`. When more than
    `dense_segments` of a block's segments pass the first screen, or `dense_groups` of the groups of
    windows screened pass the others, all of its windows are interpolated, one shifted sum per tap (about
    1.5 ms for a second of 48 kHz stereo). Sound whose every stretch comes near its peak (speech or noise
    bursts at one level) is interpolated whole so: 20 minutes of it took 1.9 s (the job 2.5 s, FFmpeg's
    `ebur128=peak=true` 4.0 s), where BS.1770's 12-tap filter, whose bounds are tighter, took 0.5 s.

    The file's edges: the value between samples k and k + 1 comes from samples k - 11 .. k + 12, so the
    first and last 11 gaps of a file have no whole window. Only whole windows are interpolated (the
    samples at the edges still count, through the sample peak): nothing is known of what lies beyond the
    file, and whatever stands in for it rings. Zeros (the filter's start state and its flush, as this
    meter had them) made a step where a file starts or stops loud (a cut, a loop, a segment of a longer
    programme): a full-scale 1 kHz sine (0 dBTP) cut at a crest read +0.99 dBTP at its start and +0.89 at
    its end, a 3 kHz one +1.10. FFmpeg's `ebur128=peak=true` reads those cuts 0.00, and so does this meter
    now. FFmpeg gets there another way: its resampler mirrors the start (x[-k] = x[k]) and is never
    flushed at the end. A mirror has a kink of its own: a full-scale 10 kHz sine cut at its start reads
    +0.28 dBTP in FFmpeg, 0.00 here; there FFmpeg over-reads, and this meter does not follow it.
    libebur128 (its filter starts from zeros and is not flushed) reads the end as this meter does, and
    the start +1.01 dB high, as this meter did.
    """

    taps = TRUE_PEAK_PHASES.shape[1]
    group = 4
    segment = 256
    #: The groups of 4 samples the windows of a group of 4 windows span: samples 4g .. 4g + taps + 2.
    span = (taps + 2) // group + 1
    #: The shares of a block's segments, and of the groups of windows screened in it, past which all of its
    #: windows are interpolated.
    dense_segments = 0.75
    dense_groups = 0.25

    def __init__(self, channels: int) -> None:
        # Reversed so a window of samples in time order times this matrix gives the phases.
        in_time_order = TRUE_PEAK_PHASES[:, ::-1]
        self._matrix = np.ascontiguousarray(in_time_order.T, dtype=np.float32)
        self._sum_bound = float(np.abs(in_time_order).sum(axis=1).max())
        self._norm_sq = float((in_time_order**2).sum(axis=1).max())
        centres = np.abs(in_time_order).argmax(axis=1)  # the samples either side of the point
        self._dc_gain = float(np.abs(in_time_order.sum(axis=1)).max())
        distance = np.abs(np.arange(self.taps)[None, :] - centres[:, None])
        self._slope_gain = float((np.abs(in_time_order) * distance).sum(axis=1).max())
        #: The groups of samples, after a group of windows' first, that hold those windows' centres.
        self._centre_groups = range(
            int(centres.min()) // self.group, (int(centres.max()) + 3) // self.group + 1
        )
        #: The last `taps - 1` samples, which the windows ending in the next block start in.
        self._history = np.zeros((channels, self.taps - 1), dtype=np.float32)
        #: The first samples, held (copied) until there are `taps` of them: the first whole window ends
        #: on the last of them. None once they have been fed.
        self._opening: list[Block] | None = []
        self._window = np.arange(self.taps)
        self._in_group = np.arange(self.group)
        self.peak = 0.0
        #: The largest |sample| fed so far (linear).
        self.sample_peak = 0.0

    def feed(self, block: Block) -> None:
        """Take the next samples (channels, n): windows ending in them are screened or interpolated."""
        if not block.shape[1]:
            return
        if self._opening is not None:
            if sum(part.shape[1] for part in self._opening) + block.shape[1] < self.taps:
                self._opening.append(np.array(block, dtype=np.float32))
                return
            if self._opening:
                block = np.concatenate([*self._opening, block.astype(np.float32, copy=False)], axis=1)
            self._opening = None
            edge = self.taps - 1
            self._history = np.ascontiguousarray(block[:, :edge], dtype=np.float32)
            self.sample_peak = max(self.sample_peak, float(np.abs(self._history).max()))
            block = block[:, edge:]
        self._screen(block)

    def _screen(self, block: Block) -> None:
        """Screen or interpolate the windows that end in `block`, which follows the history."""
        count = block.shape[1]
        history = self.taps - 1
        segments = -(-count // self.segment)
        # History, block and zeros up to one segment past the last window's start: segment j's windows
        # start at samples j * 256 .. j * 256 + 255 and reach into segment j + 1.
        padded = np.zeros((block.shape[0], (segments + 1) * self.segment), dtype=np.float32)
        padded[:, :history] = self._history
        padded[:, history : history + count] = block
        self._history = padded[:, count : count + history].copy()
        magnitude = np.abs(padded)
        self.sample_peak = max(self.sample_peak, float(magnitude[:, history : history + count].max()))
        # The result is never below the sample peak, so the peak so far may start there.
        self.peak = max(self.peak, self.sample_peak)
        if float(magnitude.max()) * self._sum_bound <= self._target():
            return
        largest = magnitude.reshape(block.shape[0], segments + 1, self.segment).max(axis=2)
        reach = np.maximum(largest[:, :-1], largest[:, 1:]) * np.float32(self._sum_bound)
        channel, segment = np.nonzero(reach > np.float32(self._target()))
        if not channel.size:
            return
        if channel.size > reach.size * self.dense_segments:
            self._interpolate_all(padded[:, : history + count], count)
            return
        rows = sliding_window_view(padded, self.segment + history, axis=1)[channel, segment * self.segment]
        windows_left = np.minimum(count - segment * self.segment, self.segment)
        first = int(reach[channel, segment].argmax())
        self._interpolate(rows, np.full(windows_left[first], first), np.arange(windows_left[first]))
        candidates = self._candidates(rows)
        row, group = np.nonzero(candidates)
        if row.size > candidates.size * self.dense_groups:
            self._interpolate_all(padded[:, : history + count], count)
            return
        starts = (group[:, None] * self.group + self._in_group).ravel()
        row = np.repeat(row, self.group)
        inside = starts < windows_left[row]
        self._interpolate(rows, row[inside], starts[inside])

    def _interpolate_all(self, samples: Block, count: int) -> None:
        """Raise the peak to the largest interpolated value of the `count` windows starting in `samples`:
        each phase a sum of the samples shifted by each tap (no window is copied out)."""
        for phase in self._matrix.T:
            value = samples[:, :count] * phase[0]
            for tap in range(1, self.taps):
                value += samples[:, tap : tap + count] * phase[tap]
            self.peak = max(self.peak, float(np.abs(value).max()))

    def _interpolate(self, rows: Block, row: npt.NDArray[np.intp], starts: npt.NDArray[np.intp]) -> None:
        """Raise the peak to the largest interpolated value of the windows of `rows` at (row, start)."""
        if starts.size:
            windows = rows[row[:, None], starts[:, None] + self._window]
            self.peak = max(self.peak, float(np.abs(windows @ self._matrix).max()))

    def _target(self) -> float:
        # The slack covers float32 rounding, so no window that could matter is skipped.
        return max(self.peak * (1.0 - 1e-4) - 1e-9, 0.0)

    def _candidates(self, rows: Block) -> npt.NDArray[np.bool_]:
        """Per row (a segment's samples and the `taps - 1` after) and group of 4 windows: may one beat the
        peak?"""
        count, size = rows.shape[0], rows.shape[1]
        groups = self.segment // self.group
        # Windows 4g..4g+3 span samples 4g..4g+taps+2 (sample groups g..g+span-1), differences within
        # them as well, and are centred on samples in `_centre_groups` after g.
        magnitude = np.zeros((count, (groups + self.span - 1) * self.group), dtype=np.float32)
        np.abs(rows, out=magnitude[:, :size])
        slope = np.zeros_like(magnitude)
        np.abs(np.diff(rows, axis=1), out=slope[:, : size - 1])
        squares = np.square(magnitude)
        norm_sq = _across(_per_group(squares, np.add), self.span, np.add)
        largest = _per_group(magnitude, np.maximum)
        centre = largest[:, self._centre_groups[0] : self._centre_groups[0] + groups]
        for k in self._centre_groups[1:]:
            centre = np.maximum(centre, largest[:, k : k + groups])
        steep = _across(_per_group(slope, np.maximum), self.span, np.maximum)
        target = self._target()
        by_norm = norm_sq * np.float32(self._norm_sq) > np.float32(target**2)
        by_slope = centre * np.float32(self._dc_gain) + steep * np.float32(self._slope_gain) > np.float32(
            target
        )
        return np.asarray(by_norm & by_slope)

    def finish(self) -> float:
        """The true peak (linear). Nothing is flushed: the last window ends on the last sample."""
        if self._opening:  # fewer samples than taps in all: no window is whole, the samples are the peak
            held = np.concatenate(self._opening, axis=1)
            self.sample_peak = max(self.sample_peak, float(np.abs(held).max()))
            self.peak = max(self.peak, self.sample_peak)
        return self.peak


class LoudnessMeter:
    """BS.1770-4 / EBU R128 measurements of a stream fed block by block.

    The K-weighting and the energies of a block run on a helper thread while the caller's thread
    searches the same block's true peak: FFmpeg's filters and NumPy release the GIL, so the two halves
    use two cores. One block at most is in flight, so memory stays that of a block. Use the meter as a
    context manager: leaving it stops the helper thread (after a cancel, too).
    """

    def __init__(self, sample_rate: int, layout: str, *, start_s: float = 0.0) -> None:
        channel_names = tuple(channel.name for channel in av.AudioLayout(layout).channels)
        self.sample_rate = sample_rate
        #: Where the first sample lies on the media's timeline (`AudioInput.start_s`): short-term times
        #: count from there.
        self.start_s = start_s
        self._k_weighting = KWeightingFilter(sample_rate, layout)
        self._weights = channel_weights(channel_names).astype(np.float32)
        #: Steps measured so far; step k spans samples [k * rate // 10, (k + 1) * rate // 10): at a rate
        #: that is no multiple of 10 (11025 Hz) steps differ by a sample, and the clock does not drift.
        self._steps = 0
        self._tail = np.zeros(0, dtype=np.float32)
        self._energies: list[Floats] = []
        self._true_peak = TruePeakMeter(len(channel_names))
        self._helper = ThreadPoolExecutor(max_workers=1, thread_name_prefix="loudness-k-weighting")
        self._in_flight: Future[None] | None = None

    def __enter__(self) -> LoudnessMeter:
        return self

    def __exit__(self, *_exc: object) -> None:
        self._helper.shutdown(wait=True, cancel_futures=True)

    def feed(self, block: Block) -> None:
        """Measure the next block (channels, n); the caller must not change it until the next call."""
        self._settle()
        self._in_flight = self._helper.submit(self._weigh, block)
        self._true_peak.feed(block)

    def _settle(self) -> None:
        """Wait for the block in flight; its error, if any, is raised here."""
        if self._in_flight is not None:
            in_flight, self._in_flight = self._in_flight, None
            in_flight.result()

    def _weigh(self, block: Block) -> None:
        filtered = self._k_weighting(block)
        weighted = self._weights @ np.square(filtered, out=filtered)
        if self._tail.size:
            weighted = np.concatenate([self._tail, weighted])
        rate, start = self.sample_rate, self._steps * self.sample_rate // _STEPS_PER_S
        # The last step edge within what is here: the largest k with k * rate // 10 <= start + size.
        last = (_STEPS_PER_S * (start + weighted.size + 1) - 1) // rate
        edges = np.arange(self._steps, last + 1, dtype=np.int64) * rate // _STEPS_PER_S - start
        if last > self._steps:
            sums = np.add.reduceat(weighted[: edges[-1]], edges[:-1], dtype=np.float64)
            self._energies.append(sums / np.diff(edges))
        self._tail = weighted[edges[-1] :]
        self._steps = last

    def result(self) -> AudioLoudnessResult:
        self._settle()
        energies = np.concatenate(self._energies) if self._energies else np.zeros(0)
        true_peak = self._true_peak.finish()
        blocks = _moving_mean(energies, _BLOCK_STEPS)
        short_term = _moving_mean(energies, _SHORT_TERM_STEPS)
        # Window k spans steps k..k+29 and ends at (k + 30) / 10 s: every tenth one ends on a whole second.
        every_second = short_term[::_STEPS_PER_S]
        first_end_s = _SHORT_TERM_STEPS // _STEPS_PER_S
        return AudioLoudnessResult(
            integrated_lufs=_rounded(integrated_loudness(blocks)),
            loudness_range_lu=_rounded(loudness_range(short_term)),
            true_peak_dbtp=_rounded(_decibels(true_peak)),
            sample_peak_dbfs=_rounded(_decibels(self._true_peak.sample_peak)),
            short_term=[
                ShortTermPoint(
                    t_s=round(self.start_s + first_end_s + index, 4), lufs=_short_term_value(energy)
                )
                for index, energy in enumerate(every_second)
            ],
        )


def _per_group(values: Block, combine: np.ufunc) -> Block:
    """`combine` over each group of 4 consecutive samples: strided slices, far faster than a reduce."""
    return np.asarray(
        combine(combine(values[:, 0::4], values[:, 1::4]), combine(values[:, 2::4], values[:, 3::4]))
    )


def _across(groups: Block, count: int, combine: np.ufunc) -> Block:
    """`combine` of groups g .. g + count - 1, for every g with count - 1 groups after it."""
    length = groups.shape[1] - count + 1
    combined = groups[:, :length]
    for k in range(1, count):
        combined = combine(combined, groups[:, k : k + length])
    return np.asarray(combined)


def integrated_loudness(block_energies: Floats) -> float | None:
    """Gated loudness (LUFS) of 400 ms block energies; None when no block passes the gates."""
    gated = _gated(block_energies, RELATIVE_GATE_LU)
    return _loudness(float(gated.mean())) if gated.size else None


def loudness_range(short_term_energies: Floats) -> float | None:
    """EBU Tech 3342 loudness range (LU) of 3 s window energies; None when no window passes the gates."""
    gated = np.sort(_gated(short_term_energies, LRA_RELATIVE_GATE_LU))
    if not gated.size:
        return None
    levels = OFFSET_LU + 10.0 * np.log10(gated)
    low, high = (levels[round((levels.size - 1) * p)] for p in LRA_PERCENTILES)
    return float(high - low)


def _gated(energies: Floats, relative_gate_lu: float) -> Floats:
    """The energies above the absolute gate and above the relative gate `relative_gate_lu` under their mean.

    Empty when none passes either: every energy under -70 LUFS, or an infinite one (a sample past 1.8e19,
    whose square float32 cannot hold) lifting the relative gate to infinity, where none passes it.
    """
    loud = energies[energies > _energy(ABSOLUTE_GATE_LUFS)]
    if not loud.size:
        return loud
    relative_gate = _loudness(float(loud.mean())) + relative_gate_lu
    return loud[loud > _energy(relative_gate)]


def measure_loudness(path: Path, _params: BaseModel | None, report: Report) -> AudioLoudnessResult:
    """`audio.loudness` of the file at `path` (the job type takes no params), reporting through `report`."""
    with open_audio(path) as audio:
        if audio.sample_rate < MIN_SAMPLE_RATE:
            raise UnsupportedInput(
                f"The audio's sample rate, {audio.sample_rate:,} Hz, is too low for loudness: EBU R128's "
                f"K-weighting needs at least {MIN_SAMPLE_RATE:,} Hz."
            )
        if "NONE" in audio.channel_names:
            # BS.1770 weighs a channel by its position, and FFmpeg's biquad passes unnamed ones unfiltered.
            raise UnsupportedInput(
                f"The audio has {audio.channels} channels in no known layout, so loudness cannot weigh them."
            )
        with LoudnessMeter(audio.sample_rate, audio.layout, start_s=audio.start_s) as meter:
            for block in audio.blocks(report, action="measuring loudness"):
                meter.feed(block)
            return meter.result()


def _moving_mean(energies: Floats, width: int) -> Floats:
    if energies.size < width:
        return np.zeros(0)
    # A direct sum, not a cumulative one, so quiet windows after loud ones keep their precision.
    return np.convolve(energies, np.full(width, 1.0 / width), mode="valid")


def _energy(lufs: float) -> float:
    return float(10.0 ** ((lufs - OFFSET_LU) / 10.0))


def _loudness(energy: float) -> float:
    return OFFSET_LU + 10.0 * math.log10(energy) if energy > 0 else -math.inf


def _short_term_value(energy: float) -> float | None:
    lufs = _loudness(float(energy))
    return _rounded(lufs) if lufs >= SHORT_TERM_FLOOR_LUFS else None


def _decibels(linear: float) -> float | None:
    return 20.0 * math.log10(linear) if linear > 0 else None


def _rounded(value: float | None) -> float | None:
    """`value` to a hundredth; None for an infinite one (energies of samples past 1.8e19 overflow float32),
    which is no measurement and which JSON cannot carry."""
    return None if value is None or not math.isfinite(value) else round(value, 2)
