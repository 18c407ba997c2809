"""A video service for the chaos suite: `video.probe` jobs that take a while, and a poison input.

Each job works for `CHAOS_JOB_S` seconds in small steps (reporting progress, so it can be cancelled)
before it probes its input for real; an input whose SHA-256 is `CHAOS_LONG_SHA256` works for
`CHAOS_LONG_S` seconds instead; an input whose SHA-256 is `CHAOS_POISON_SHA256` kills the process that
decodes it (SIGKILL) every time, as a crashing decoder would: the worker on its first attempt, the child
process its rerun decodes in (`medialens_shared.isolation`) after that.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
from pathlib import Path

from medialens_shared.contracts import VideoProbeResult
from medialens_shared.tasks import JobContext
from medialens_shared.worker import serve
from medialens_video.probe import probe_video


def crashing_probe(path: Path) -> VideoProbeResult:
    """`probe_video`, but the poison input crashes the process, as a decoder with a bug would."""
    if hashlib.sha256(path.read_bytes()).hexdigest() == os.environ.get("CHAOS_POISON_SHA256"):
        os.kill(os.getpid(), signal.SIGKILL)
    return probe_video(path)


async def slow_probe(ctx: JobContext) -> VideoProbeResult:
    path = ctx.require_input()
    duration = float(os.environ.get("CHAOS_JOB_S", "1.0"))
    if hashlib.sha256(path.read_bytes()).hexdigest() == os.environ.get("CHAOS_LONG_SHA256"):
        duration = float(os.environ.get("CHAOS_LONG_S", "75"))
    steps = max(1, int(duration / 0.1))
    for step in range(steps):
        await asyncio.sleep(duration / steps)
        await ctx.progress(step / steps, f"working {step}/{steps}")
        ctx.check_cancelled()
    return await ctx.run_cpu(crashing_probe, path)


def main() -> None:
    serve("video", {"video.probe": slow_probe})


if __name__ == "__main__":
    main()
