"""The video service's job handlers: each turns a job's input into its result model.

The analysers are plain functions run in a worker thread (`ctx.run_cpu`), so the event loop keeps the
broker's heartbeats going; they report through `ctx.report`, which also stops them on a cancel. The
handlers then store the JPEGs the analysers wrote to the job's scratch directory as the tenant's files.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import cast

from medialens_shared.contracts import (
    Scene,
    Segment,
    Thumbnail,
    VideoProbeResult,
    VideoQualityParams,
    VideoQualityResult,
    VideoScenesParams,
    VideoScenesResult,
    VideoThumbnailsParams,
    VideoThumbnailsResult,
)
from medialens_shared.tasks import Handler, JobContext
from medialens_video.probe import probe_video
from medialens_video.quality import detect_quality
from medialens_video.scenes import detect_scenes
from medialens_video.thumbnails import extract_thumbnails

JPEG = "image/jpeg"


async def probe(ctx: JobContext) -> VideoProbeResult:
    """Milliseconds of work: its "running" (the claim's announce) is all the progress it reports."""
    # A header, one frame and, where the container states no frame count, a few packets: milliseconds.
    return await ctx.run_cpu(probe_video, ctx.require_input(), light=True)


async def scenes(ctx: JobContext) -> VideoScenesResult:
    params = cast(VideoScenesParams, ctx.params)
    analyse = partial(
        detect_scenes,
        ctx.require_input(),
        threshold=params.threshold,
        min_scene_len_s=params.min_scene_len_s,
        flash_suppression=params.flash_suppression,
        thumbnail_dir=ctx.scratch / "scenes" if params.thumbnails else None,
        report=ctx.report,
    )
    analysis = await ctx.run_cpu(analyse)
    found = len(analysis.scenes)
    result = []
    for index, span in enumerate(analysis.scenes):
        file_id = None
        if span.thumbnail is not None:
            await ctx.progress(0.95 + 0.05 * index / found, f"storing thumbnail {index + 1}/{found}")
            file_id = await _store(ctx, span.thumbnail, f"scene-{index:04d}.jpg")
        result.append(
            Scene(
                index=index,
                start_s=span.start_s,
                end_s=span.end_s,
                start_frame=span.start_frame,
                end_frame=span.end_frame,
                thumbnail_file_id=file_id,
            )
        )
    return VideoScenesResult(scenes=result, cut_count=found - 1, frames_analyzed=analysis.frames_analyzed)


async def quality(ctx: JobContext) -> VideoQualityResult:
    params = cast(VideoQualityParams, ctx.params)
    analyse = partial(
        detect_quality,
        ctx.require_input(),
        black_threshold=params.black_threshold,
        min_black_s=params.min_black_s,
        freeze_min_s=params.freeze_min_s,
        report=ctx.report,
    )
    analysis = await ctx.run_cpu(analyse)
    return VideoQualityResult(
        black_segments=[Segment(start_s=a, end_s=b) for a, b in analysis.black],
        frozen_segments=[Segment(start_s=a, end_s=b) for a, b in analysis.frozen],
    )


async def thumbnails(ctx: JobContext) -> VideoThumbnailsResult:
    params = cast(VideoThumbnailsParams, ctx.params)
    extract = partial(
        extract_thumbnails,
        ctx.require_input(),
        out_dir=ctx.scratch / "thumbnails",
        count=params.count,
        every_s=params.every_s,
        width=params.width,
        report=ctx.report,
    )
    images = await ctx.run_cpu(extract)
    stored = []
    for index, image in enumerate(images):
        await ctx.progress(0.95 + 0.05 * index / len(images), f"storing thumbnail {index + 1}/{len(images)}")
        file_id = await _store(ctx, image.path, f"thumbnail-{index:04d}.jpg")
        stored.append(Thumbnail(t_s=image.t_s, file_id=file_id, width=image.width, height=image.height))
    return VideoThumbnailsResult(thumbnails=stored)


async def _store(ctx: JobContext, path: Path, filename: str) -> str:
    ctx.check_cancelled()
    return await ctx.save_artifact(path, filename=filename, content_type=JPEG)


HANDLERS: dict[str, Handler] = {
    "video.probe": probe,
    "video.scenes": scenes,
    "video.quality": quality,
    "video.thumbnails": thumbnails,
}
