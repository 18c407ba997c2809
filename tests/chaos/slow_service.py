"""A video service for the chaos suite: `video.probe` jobs that take a while, and a poison input.

Each job works for `CHAOS_JOB_S` seconds in small steps (reporting progress, so it can be cancelled)
before it probes its input for real; an input whose SHA-256 is `CHAOS_LONG_SHA256` works for
`CHAOS_LONG_S` seconds instead; an input whose SHA-256 is `CHAOS_POISON_SHA256` kills the worker process
outright (SIGKILL) every time it is tried, as a crashing decoder would.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal

from medialens_shared.contracts import VideoProbeResult
from medialens_shared.tasks import JobContext
from medialens_shared.worker import serve
from medialens_video.probe import probe_video


async def slow_probe(ctx: JobContext) -> VideoProbeResult:
    path = ctx.require_input()
    if hashlib.sha256(path.read_bytes()).hexdigest() == os.environ.get("CHAOS_POISON_SHA256"):
        os.kill(os.getpid(), signal.SIGKILL)
    duration = float(os.environ.get("CHAOS_JOB_S", "1.0"))
    if hashlib.sha256(path.read_bytes()).hexdigest() == os.environ.get("CHAOS_LONG_SHA256"):
        duration = float(os.environ.get("CHAOS_LONG_S", "75"))
    steps = max(1, int(duration / 0.1))
    for step in range(steps):
        await asyncio.sleep(duration / steps)
        await ctx.progress(step / steps, f"working {step}/{steps}")
        ctx.check_cancelled()
    return await ctx.run_cpu(probe_video, path)


def main() -> None:
    serve("video", {"video.probe": slow_probe})


if __name__ == "__main__":
    main()
