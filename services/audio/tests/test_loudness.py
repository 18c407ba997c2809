"""`audio.loudness` against EBU Tech 3341 / 3342 cases and BS.1770-4, on signals with known truth."""

from __future__ import annotations

import threading
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest

from medialens_audio.loudness import (
    TRUE_PEAK_PHASES,
    LoudnessMeter,
    TruePeakMeter,
    integrated_loudness,
    k_weighting,
    loudness_range,
    measure_loudness,
)
from medialens_shared.contracts import AudioLoudnessResult
from medialens_shared.errors import JobCancelled, MediaDecodeError, UnsupportedInput
from scripts.samples import corrupt, make_audio, make_video, truncate

from .signals import noise, sequence, sine, write, write_late_audio


def meter_result(samples: np.ndarray, *, rate: int = 48000, layout: str = "stereo") -> AudioLoudnessResult:
    with LoudnessMeter(rate, layout) as meter:
        for start in range(0, samples.shape[1], rate):
            meter.feed(samples[:, start : start + rate])
        return meter.result()


def no_report(fraction: float, message: str) -> None:
    """A progress callback that discards what it is told."""


def test_k_weighting_matches_bs1770_coefficients() -> None:
    """At 48 kHz the derived K-weighting filter has the coefficients BS.1770-4 publishes."""
    expected = [
        [1.53512485958697, -2.69169618940638, 1.19839281085285, 1.0, -1.69065929318241, 0.73248077421585],
        [1.0, -2.0, 1.0, 1.0, -1.99004745483398, 0.99007225036621],
    ]
    assert k_weighting(48000) == pytest.approx(np.array(expected), abs=1e-8)


@pytest.mark.parametrize(("level", "expected"), [(-23.0, -23.0), (-33.0, -33.0)])
def test_tech3341_cases_1_and_2_steady_sine(level: float, expected: float) -> None:
    """A stereo 1 kHz sine at -23 (-33) dBFS measures -23.0 (-33.0) LUFS, integrated and short-term."""
    result = meter_result(sine(level, 10.0))
    assert result.integrated_lufs == pytest.approx(expected, abs=0.1)
    assert all(point.lufs == pytest.approx(expected, abs=0.1) for point in result.short_term)
    assert result.loudness_range_lu == pytest.approx(0.0, abs=0.1)


@pytest.mark.parametrize(
    "parts",
    [
        pytest.param([(-36.0, 5.0), (-23.0, 30.0), (-36.0, 5.0)], id="case3-relative-gate"),
        pytest.param(
            [(-72.0, 5.0), (-36.0, 5.0), (-23.0, 30.0), (-36.0, 5.0), (-72.0, 5.0)], id="case4-both-gates"
        ),
        pytest.param([(-26.0, 10.0), (-20.0, 10.05), (-26.0, 10.0)], id="case5-no-gating"),
    ],
)
def test_tech3341_gated_sequences(parts: list[tuple[float, float]]) -> None:
    """Tech 3341 cases 3-5 (durations halved or shortened, proportions kept) measure -23.0 LUFS."""
    assert meter_result(sequence(*parts)).integrated_lufs == pytest.approx(-23.0, abs=0.1)


def test_tech3341_case6_surround_weights() -> None:
    """Case 6 in 5.1: L, R at -28, C at -24, Ls, Rs at -30 dBFS (and a loud LFE, excluded) is -23.0 LUFS."""
    levels = [-28.0, -28.0, -24.0, -6.0, -30.0, -30.0]  # FL FR FC LFE BL BR
    samples = np.concatenate([sine(level, 6.0, channels=1) for level in levels])
    assert meter_result(samples, layout="5.1").integrated_lufs == pytest.approx(-23.0, abs=0.1)


def test_other_sample_rate() -> None:
    """At 44.1 kHz the filters are re-derived: a -23 dBFS stereo sine still measures -23.0 LUFS."""
    result = meter_result(sine(-23.0, 6.0, rate=44100), rate=44100)
    assert result.integrated_lufs == pytest.approx(-23.0, abs=0.1)


@pytest.mark.parametrize(
    ("parts", "expected"),
    [
        pytest.param([(-20.0, 20.0), (-30.0, 20.0)], 10.0, id="case1"),
        pytest.param([(-20.0, 20.0), (-15.0, 20.0)], 5.0, id="case2"),
        pytest.param([(-40.0, 20.0), (-20.0, 20.0)], 20.0, id="case3"),
        pytest.param(
            [(-50.0, 20.0), (-35.0, 20.0), (-20.0, 20.0), (-35.0, 20.0), (-50.0, 20.0)], 15.0, id="case4"
        ),
    ],
)
def test_tech3342_loudness_range(parts: list[tuple[float, float]], expected: float) -> None:
    """EBU Tech 3342 cases 1-4 give their loudness range within 1 LU (mono, which LRA does not depend on)."""
    result = meter_result(sequence(*parts, channels=1), layout="mono")
    assert result.loudness_range_lu == pytest.approx(expected, abs=1.0)


def test_true_peak_above_sample_peak() -> None:
    """A sine at fs/4 sampled 45 degrees off its crests: sample peak -9.0 dBFS, true peak -6.0 dBTP."""
    result = meter_result(sine(-6.0, 2.0, freq_hz=12000.0, phase=np.pi / 4))
    assert result.sample_peak_dbfs == pytest.approx(-9.01, abs=0.02)
    assert result.true_peak_dbtp == pytest.approx(-6.0, abs=0.3)


def dense_true_peak(samples: np.ndarray) -> float:
    """The true peak (linear) by brute force: every phase of the interpolator at every point whose 24
    samples all lie in the signal (none beyond its edges), and the samples themselves."""
    taps = TRUE_PEAK_PHASES.shape[1]
    dense = max(
        (
            np.abs(np.convolve(samples[channel].astype(np.float64), phase, mode="valid")).max()
            for channel in range(samples.shape[0])
            for phase in TRUE_PEAK_PHASES
        )
        if samples.shape[1] >= taps
        else [0.0]
    )
    return float(max(dense, np.abs(samples).max()))


def test_true_peak_equals_dense_interpolation() -> None:
    """The pruned true-peak search finds the maximum of the fully oversampled signal, wherever it lies."""
    # Loud noise, quiet noise, then a sine whose true (not sample) peak beats the noise's peak.
    samples = np.concatenate(
        [noise(-20.0, 1.5, seed=7), noise(-40.0, 1.2), sine(-5.0, 1.0, freq_hz=12000.0, phase=np.pi / 4)],
        axis=1,
    )
    expected = 20 * np.log10(dense_true_peak(samples))
    assert expected == pytest.approx(-5.0, abs=0.3)
    assert meter_result(samples).true_peak_dbtp == pytest.approx(expected, abs=0.01)


@pytest.mark.parametrize(
    "samples",
    [
        pytest.param(noise(-12.0, 1.0, seed=3), id="noise"),
        pytest.param(sine(-3.0, 1.0, freq_hz=50.0), id="low-sine"),
        pytest.param(sine(-6.0, 1.0, freq_hz=12000.0, phase=np.pi / 4), id="inter-sample-peak"),
        pytest.param(
            np.concatenate([noise(-40.0, 0.7, seed=4), sine(-9.0, 0.2, freq_hz=11025.0, phase=1.0)], axis=1),
            id="peak-after-quiet",
        ),
        pytest.param(sine(-18.0, 1.0, freq_hz=997.0), id="line-up-tone"),  # every window near the peak
        pytest.param(
            np.clip(noise(0.0, 1.0, seed=6) * 4, -0.9, 0.9), id="limited"
        ),  # every beat at the ceiling
        pytest.param(np.zeros((2, 1000), dtype=np.float32), id="silence"),
        pytest.param(noise(-6.0, 5 / 48000, channels=1, seed=5), id="five-samples"),
    ],
)
@pytest.mark.parametrize("block", [7, 255, 257, 4800, 48000])
def test_pruned_true_peak_equals_brute_force(samples: np.ndarray, block: int) -> None:
    """Whatever the signal and the block size (even under the filter's 23 samples of history), the
    screened search equals the brute-force true peak, and so does interpolating a whole block where most
    windows come near the peak (a tone, a limited master)."""
    meter = TruePeakMeter(samples.shape[0])
    for start in range(0, samples.shape[1], block):
        meter.feed(samples[:, start : start + block])
    assert meter.finish() == pytest.approx(dense_true_peak(samples), rel=1e-6, abs=1e-12)
    assert meter.sample_peak == float(np.abs(samples).max())


def full_scale_sine_cut(edges: str) -> np.ndarray:
    """A full-scale 1 kHz sine (true peak 0 dBTP) starting on a crest, ending at 0.99 of full scale; the
    edges not named are faded over 100 ms instead."""
    samples = sine(0.0, 1.0, phase=np.pi / 2)
    ramp = np.linspace(0.0, 1.0, 4800, dtype=np.float32)
    if "start" not in edges:
        samples[:, :4800] *= ramp
    if "end" not in edges:
        samples[:, -4800:] *= ramp[::-1]
    return samples


@pytest.mark.parametrize("edges", ["start", "end", "start-and-end", "neither"])
def test_a_cut_edge_adds_no_true_peak(tmp_path: Path, edges: str) -> None:
    """A full-scale sine cut abruptly at its start, its end or both reads 0.0 dBTP, as FFmpeg's
    `ebur128=peak=true` reads it (0.00 in each case): only points with all 24 of the interpolator's
    samples inside the file count, where zeros beyond its edges made steps that read +0.99 dB (start) and
    +0.89 dB (end)."""
    path = write(tmp_path / "cut.wav", full_scale_sine_cut(edges), codec="pcm_f32le")
    result = measure_loudness(path, None, no_report)
    assert result.true_peak_dbtp == pytest.approx(0.0, abs=0.05)
    assert result.sample_peak_dbfs == pytest.approx(0.0, abs=0.01)


def test_k_weighting_thread_errors_reach_the_caller() -> None:
    """An error on the K-weighting thread is raised by the next call, and leaving the meter stops it."""
    with LoudnessMeter(48000, "stereo") as meter:
        meter.feed(sine(-23.0, 1.0).astype(np.float64))  # the true peak takes it; the filter wants float32
        with pytest.raises(ValueError, match="float32"):
            meter.result()
    assert not [t for t in threading.enumerate() if t.name.startswith("loudness-k-weighting")]


def test_a_cancel_stops_the_k_weighting_thread(tmp_path: Path) -> None:
    """A cancel raised by `report` ends the measurement, and no helper thread is left running."""
    path = write(tmp_path / "tone.wav", sine(-23.0, 6.0))

    def cancel_at_two_seconds(fraction: float, message: str) -> None:
        if fraction > 0.3:
            raise JobCancelled("cancelled on request")

    with pytest.raises(JobCancelled):
        measure_loudness(path, None, cancel_at_two_seconds)
    assert not [
        t for t in threading.enumerate() if t.name.startswith(("loudness-k-weighting", "audio-decode"))
    ]


def test_short_term_series_steps_one_second() -> None:
    """The short-term series has one 3 s value per whole second from 3 s on, tracking a level step."""
    result = meter_result(sequence((-23.0, 6.0), (-33.0, 6.0)))
    assert [point.t_s for point in result.short_term] == [float(t) for t in range(3, 13)]
    assert result.short_term[2].lufs == pytest.approx(-23.0, abs=0.1)  # 2-5 s
    assert result.short_term[-1].lufs == pytest.approx(-33.0, abs=0.1)  # 9-12 s


@pytest.mark.parametrize(("name", "codec"), [("late.mkv", "pcm_s16le"), ("late.mp4", "flac")])
def test_short_term_times_lie_on_the_media_timeline(tmp_path: Path, name: str, codec: str) -> None:
    """The soundtrack of a video that comes in 1.5 s after it has its short-term values 1.5 s later than
    the audio alone (4.5 s, the end of its first 3 s, and on), levels unchanged."""
    path = write_late_audio(
        tmp_path / name, sequence((-23.0, 6.0), (-33.0, 6.0)), start_s=1.5, video_s=13.5, codec=codec
    )
    result = measure_loudness(path, None, no_report)
    assert [point.t_s for point in result.short_term] == [t + 1.5 for t in range(3, 13)]
    assert result.short_term[2].lufs == pytest.approx(-23.0, abs=0.1)  # 3.5-6.5 s on the media's clock
    assert result.short_term[-1].lufs == pytest.approx(-33.0, abs=0.1)


def test_silence_has_no_integrated_loudness() -> None:
    """Digital silence is below the absolute gate: integrated, range and peaks are null."""
    result = meter_result(np.zeros((2, 48000 * 4), dtype=np.float32))
    assert (result.integrated_lufs, result.loudness_range_lu, result.true_peak_dbtp) == (None, None, None)
    assert [point.lufs for point in result.short_term] == [None, None]


@pytest.mark.parametrize(
    ("channels", "layout", "expected"),
    [(1, "mono", -26.0), (2, "stereo", -23.0), (6, "5.1", -18.36), (8, "7.1", -16.65)],
)
def test_wav_channel_layouts(tmp_path: Path, channels: int, layout: str, expected: float) -> None:
    """The same -23 dBFS sine on 1, 2, 5.1 and 7.1 channels adds up as BS.1770 weighs the channels."""
    path = write(tmp_path / "tone.wav", sine(-23.0, 4.0, channels=channels), layout=layout)
    result = measure_loudness(path, None, no_report)
    # One channel of it is -26.01 LUFS; 5.1 weighs FL, FR, FC 1, LFE 0, BL, BR 1.41: + 10 log10(5.82);
    # 7.1 adds SL, SR at 1.41: + 10 log10(8.64) (FFmpeg's ebur128 reads -16.6 too).
    assert result.integrated_lufs == pytest.approx(expected, abs=0.1)


@pytest.mark.parametrize("suffix", [".mp3", ".m4a"])
def test_lossy_encodings_match_the_wav(tmp_path: Path, suffix: str) -> None:
    """MP3 and AAC encodings of two tones over faint noise measure within 0.3 LU of the source WAV."""
    # Loud white noise would not do: the encoders' low-pass removes high frequencies K-weighting boosts.
    chord = sine(-26.0, 6.0, freq_hz=440.0) + sine(-26.0, 6.0) + noise(-50.0, 6.0)
    reference = measure_loudness(write(tmp_path / "chord.wav", chord), None, no_report)
    encoded = measure_loudness(write(tmp_path / f"chord{suffix}", chord), None, no_report)
    assert reference.integrated_lufs is not None
    assert encoded.integrated_lufs == pytest.approx(reference.integrated_lufs, abs=0.3)
    # Lossy coding moves peaks (LAME here also lowers the level by 0.27 dB, as FFmpeg's meter confirms).
    assert encoded.true_peak_dbtp == pytest.approx(reference.true_peak_dbtp, abs=1.0)


def test_flac_is_lossless(tmp_path: Path) -> None:
    """A FLAC of a signal measures what the in-memory signal measures, to a hundredth of a LU."""
    chord = sine(-20.0, 4.0) + noise(-30.0, 4.0)
    expected = meter_result(chord).integrated_lufs
    assert expected is not None
    result = measure_loudness(write(tmp_path / "chord.flac", chord), None, no_report)
    assert result.integrated_lufs == pytest.approx(expected, abs=0.02)


def test_progress_is_reported_per_second(tmp_path: Path) -> None:
    """The analyser reports a rising fraction and a clock message about once per second of media."""
    path = tmp_path / "tone.wav"
    make_audio(path, duration_s=4.0)
    seen: list[tuple[float, str]] = []
    measure_loudness(path, None, lambda fraction, message: seen.append((fraction, message)))
    assert len(seen) == 4
    assert [fraction for fraction, _ in seen] == sorted(fraction for fraction, _ in seen)
    assert seen[0][1] == "measuring loudness: 0:01 of 0:04"


def test_empty_file_is_unsupported(tmp_path: Path) -> None:
    """An empty file is unsupported input."""
    path = tmp_path / "empty.wav"
    path.write_bytes(b"")
    with pytest.raises(UnsupportedInput):
        measure_loudness(path, None, no_report)


def test_damaged_files_are_decode_errors(tmp_path: Path) -> None:
    """A WAV with garbled headers and an M4A cut in half are damaged media."""
    wav, m4a = tmp_path / "a.wav", tmp_path / "a.m4a"
    make_audio(wav, duration_s=1.0)
    make_audio(m4a, duration_s=1.0)
    corrupt(wav, tmp_path / "bad.wav", start_fraction=0.0, keep_head_bytes=12)
    truncate(m4a, tmp_path / "cut.m4a", keep_fraction=0.5)
    for damaged in (tmp_path / "bad.wav", tmp_path / "cut.m4a"):
        with pytest.raises(MediaDecodeError):
            measure_loudness(damaged, None, no_report)


def test_audio_track_of_a_video(tmp_path: Path) -> None:
    """The AAC track of an MP4 (a -23 dBFS stereo sine) measures -23.0 LUFS."""
    path = tmp_path / "clip.mp4"
    make_video(path, duration_s=4.0, width=64, height=48, with_audio=True)
    assert measure_loudness(path, None, no_report).integrated_lufs == pytest.approx(-23.0, abs=0.1)


def test_short_term_times_do_not_drift_at_a_rate_that_is_no_multiple_of_ten() -> None:
    """At 11025 Hz a 100 ms step is 1102.5 samples: steps alternate 1102 and 1103, so after 10 minutes the
    point at t = 603 s covers 600-603 s exactly (steps of 1102 put it 0.3 s early, reading 0.4 dB low)."""
    rate = 11025
    samples = sequence((-60.0, 600.0), (-23.0, 10.0), rate=rate)
    points = {point.t_s: point.lufs for point in meter_result(samples, rate=rate).short_term}
    steady = points[609.0]  # wholly inside the loud part (-23 dBFS at 1 kHz reads -22.95 LUFS here)
    assert steady == pytest.approx(-23.0, abs=0.1)
    assert points[603.0] == pytest.approx(steady, abs=0.02)
    assert points[600.0] == pytest.approx(-60.0, abs=0.1)
    assert max(points) == 610.0


def test_gates_that_pass_nothing_give_no_value() -> None:
    """An infinite energy lifts the relative gate to infinity, where no block passes it: integrated loudness
    and loudness range are None, not -inf and an IndexError."""
    energies = np.array([10 ** ((-23.0 + 0.691) / 10)] * 40 + [np.inf])
    assert integrated_loudness(energies) is None
    assert loudness_range(energies) is None
    assert (integrated_loudness(energies[:-1]), loudness_range(energies[:-1])) == pytest.approx((-23.0, 0.0))


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
def test_a_sample_past_float_range_is_measured_without_error(tmp_path: Path) -> None:
    """A float WAV with one sample at 1e30 (its square overflows float32) measures its peaks (600 dB) and
    gives no integrated loudness nor range, instead of failing with an IndexError; no value is infinite
    (JSON cannot carry one)."""
    samples = sine(-23.0, 5.0)
    samples[:, 2 * 48000] = 1e30
    path = write(tmp_path / "float.wav", samples, codec="pcm_f32le")
    result = measure_loudness(path, None, no_report)
    assert (result.integrated_lufs, result.loudness_range_lu) == (None, None)
    assert (result.sample_peak_dbfs, result.true_peak_dbtp) == pytest.approx((600.0, 600.0), abs=0.1)
    assert [point.lufs for point in result.short_term] == [None, None, None]


@pytest.mark.parametrize("rate", [5, 3000])
def test_a_rate_too_low_for_k_weighting_is_unsupported_input(tmp_path: Path, rate: int) -> None:
    """Below twice the K-weighting shelf's 1,682 Hz the filter is not one: 3 kHz gave a null loudness for
    a loud tone (FFmpeg's ebur128 says +3 LUFS), 5 Hz an IndexError (INTERNAL_ERROR). Such a file fails
    UNSUPPORTED_INPUT saying why; 4 kHz, the lowest rate taken, agrees with a tone's known level."""
    low = write(tmp_path / "low.wav", sine(-20.0, 10.0, rate=rate, freq_hz=min(300.0, rate / 4)), rate=rate)
    with pytest.raises(UnsupportedInput, match=f"sample rate, {rate:,} Hz, is too low for loudness"):
        measure_loudness(low, None, lambda _f, _m: None)
    lowest = write(tmp_path / "4k.wav", sine(-20.0, 10.0, rate=4000, freq_hz=1000.0), rate=4000)
    assert measure_loudness(lowest, None, lambda _f, _m: None).integrated_lufs == pytest.approx(
        -20.0, abs=0.3
    )


def _ts_segment(path: Path, *, seconds: int, soundtracks: int, start_s: int) -> bytes:
    """An MPEG-TS of `seconds` of video and `soundtracks` MP2 streams of a -20 dBFS 440 Hz sine, its
    timestamps from `start_s`; its bytes."""
    with av.open(str(path), mode="w", format="mpegts") as container:
        video = container.add_stream("libx264", rate=25)
        video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
        audio = [container.add_stream("mp2", rate=48000) for _ in range(soundtracks)]
        for stream in audio:
            stream.layout = "mono"
        for i in range(seconds * 25):
            picture = np.full((48, 64, 3), i % 255, np.uint8)
            frame = av.VideoFrame.from_ndarray(picture, format="rgb24").reformat(format="yuv420p")
            frame.pts, frame.time_base = start_s * 25 + i, Fraction(1, 25)
            container.mux(video.encode(frame))
            tone = sine(-20.0, 0.04, freq_hz=440.0, channels=1, phase=2 * np.pi * 440.0 * 0.04 * i)
            for stream in audio:
                sound = av.AudioFrame.from_ndarray(tone, format="fltp", layout="mono")
                sound.sample_rate, sound.pts = 48000, (start_s * 25 + i) * 1920
                container.mux(stream.encode(sound))
        for stream in [video, *audio]:
            container.mux(stream.encode(None))
    return path.read_bytes()


def test_an_mpeg_ts_gaining_a_soundtrack_midway_is_measured_whole(tmp_path: Path) -> None:
    """A broadcast recording whose second soundtrack comes in for a while (its segments joined: 20 s with
    one, 12 s with two, 20 s with one): FFmpeg adds the stream as it comes, and PyAV's demuxer failed at its
    end with an IndexError (INTERNAL_ERROR). The first soundtrack is measured to its end."""
    path = tmp_path / "grown.ts"
    path.write_bytes(
        _ts_segment(tmp_path / "a.ts", seconds=20, soundtracks=1, start_s=0)
        + _ts_segment(tmp_path / "b.ts", seconds=12, soundtracks=2, start_s=20)
        + _ts_segment(tmp_path / "c.ts", seconds=20, soundtracks=1, start_s=32)
    )
    result = measure_loudness(path, None, lambda _f, _m: None)
    plain = write(tmp_path / "plain.wav", sine(-20.0, 52.0, freq_hz=440.0, channels=1))
    assert result.integrated_lufs == pytest.approx(
        measure_loudness(plain, None, lambda _f, _m: None).integrated_lufs, abs=0.1
    )
    assert result.short_term[-1].t_s == pytest.approx(52.0, abs=1.0)


def _oversampled_peak(samples: np.ndarray, factor: int = 16) -> float:
    """The peak (dB) of `samples` oversampled `factor` times by zero-padding its spectrum: the band-limited
    signal's own peak, to a few thousandths of a dB (its ends faded: the spectrum takes it as periodic)."""
    count = samples.shape[1]
    spectrum = np.fft.rfft(samples.astype(np.float64), axis=1)
    dense = np.fft.irfft(spectrum, n=count * factor, axis=1) * factor
    return float(20 * np.log10(np.abs(dense).max()))


def _mastered(rate: int, seed: int) -> np.ndarray:
    """2 s of loud music's stand-in: pink noise up to 0.45 of the rate, driven into a soft ceiling (tanh)
    at 0.9, as a limiter leaves a master: its peaks between samples stand 1.5-1.9 dB over its samples."""
    count = 2 * rate
    spectrum = np.fft.rfft(np.random.default_rng(seed).standard_normal((2, count)), axis=1)
    freqs = np.fft.rfftfreq(count, 1 / rate)
    shape = np.where((freqs > 20) & (freqs < 0.45 * rate), 1 / np.sqrt(np.maximum(freqs, 1.0)), 0.0)
    pink = np.fft.irfft(spectrum * shape, n=count, axis=1)
    return np.asarray(np.tanh(3 * pink / np.abs(pink).max()) * 0.9, dtype=np.float32)


@pytest.mark.parametrize(
    ("rate", "make", "within_db"),
    [
        pytest.param(
            11025, lambda: sine(-20.0, 2.0, freq_hz=997.0, rate=11025, phase=0.3), 0.05, id="tone-11k"
        ),
        *(
            pytest.param(
                rate, lambda rate=rate, seed=seed: _mastered(rate, seed), 0.08, id=f"master-{rate}-{seed}"
            )
            for rate in (44100, 48000)
            for seed in (1, 2, 3)
        ),
    ],
)
def test_true_peak_reads_the_band_limited_peak(rate: int, make: Any, within_db: float) -> None:
    """The true peak is the band-limited signal's within a few hundredths of a dB (EBU Tech 3341 allows
    -0.4..+0.2): BS.1770 Annex 2's example filter read a 997 Hz tone at 11,025 Hz 0.22 dB high and
    limited material 0.19-0.34 dB low (the truth taken here by oversampling 16 times through the
    spectrum)."""
    samples = make().astype(np.float32)
    fade = np.linspace(0.0, 1.0, rate // 100, dtype=np.float32)
    samples[:, : fade.size] *= fade
    samples[:, -fade.size :] *= fade[::-1]
    meter = TruePeakMeter(samples.shape[0])
    meter.feed(samples)
    assert 20 * np.log10(meter.finish()) == pytest.approx(_oversampled_peak(samples), abs=within_db)
