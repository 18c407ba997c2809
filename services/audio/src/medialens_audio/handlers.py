"""The audio service's job handlers: each turns a job's input into its result model."""

from __future__ import annotations

from medialens_audio.probe import probe_audio
from medialens_shared.contracts import AudioProbeResult
from medialens_shared.tasks import Handler, JobContext


async def probe(ctx: JobContext) -> AudioProbeResult:
    await ctx.progress(0.1, "reading the audio stream's metadata", force=True)
    return await ctx.run_cpu(probe_audio, ctx.require_input())


HANDLERS: dict[str, Handler] = {"audio.probe": probe}
