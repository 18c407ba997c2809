"""The data service's job handlers: each turns a job's input into its result model."""

from __future__ import annotations

from functools import partial

from medialens_data.profile import profile_table
from medialens_shared.contracts import DataProfileParams, DataProfileResult
from medialens_shared.tasks import Handler, JobContext


async def profile(ctx: JobContext) -> DataProfileResult:
    assert isinstance(ctx.params, DataProfileParams)
    worker = ctx.settings.worker
    await ctx.progress(0.05, "profiling the table", force=True)
    run = partial(
        profile_table,
        ctx.require_input(),
        params=ctx.params,
        memory_limit=worker.table_memory_limit,
        threads=worker.table_threads,
        temp_dir=ctx.scratch,
    )
    return await ctx.run_cpu(run)


HANDLERS: dict[str, Handler] = {"data.profile": profile}
