"""The video service's job handlers: each turns a job's input into its result model."""

from __future__ import annotations

from medialens_shared.contracts import VideoProbeResult
from medialens_shared.tasks import Handler, JobContext
from medialens_video.probe import probe_video


async def probe(ctx: JobContext) -> VideoProbeResult:
    await ctx.progress(0.1, "reading the container's metadata", force=True)
    return await ctx.run_cpu(probe_video, ctx.require_input())


HANDLERS: dict[str, Handler] = {"video.probe": probe}
