"""The audio service's job handlers: each turns a job's input into its result model.

The analysers are plain functions run in a worker thread (`ctx.run_cpu`); they call `ctx.report` about
once a second of media, which publishes progress and stops them when the job is cancelled.
"""

from __future__ import annotations

from medialens_audio.loudness import measure_loudness
from medialens_audio.probe import probe_audio
from medialens_audio.silence import detect_silence
from medialens_audio.waveform import compute_waveform
from medialens_shared.contracts import (
    AudioLoudnessResult,
    AudioProbeResult,
    AudioSilenceResult,
    AudioWaveformResult,
)
from medialens_shared.tasks import Handler, JobContext


async def probe(ctx: JobContext) -> AudioProbeResult:
    """Milliseconds of work: its "running" (the claim's announce) is all the progress it reports."""
    return await ctx.run_cpu(probe_audio, ctx.require_input(), light=True)  # a header and one frame


async def loudness(ctx: JobContext) -> AudioLoudnessResult:
    await ctx.progress(0.0, "measuring loudness", force=True)
    return await ctx.run_cpu(measure_loudness, ctx.require_input(), ctx.params, ctx.report)


async def silence(ctx: JobContext) -> AudioSilenceResult:
    await ctx.progress(0.0, "finding silences", force=True)
    return await ctx.run_cpu(detect_silence, ctx.require_input(), ctx.params, ctx.report)


async def waveform(ctx: JobContext) -> AudioWaveformResult:
    await ctx.progress(0.0, "drawing the waveform", force=True)
    return await ctx.run_cpu(compute_waveform, ctx.require_input(), ctx.params, ctx.report)


HANDLERS: dict[str, Handler] = {
    "audio.probe": probe,
    "audio.loudness": loudness,
    "audio.silence": silence,
    "audio.waveform": waveform,
}
