"""The data service's job handlers: each turns a job's input into its result model.

The work runs in a thread (`ctx.run_cpu`) on a DuckDB connection limited by the worker's settings
(`table_memory_limit`, `table_threads`), spilling to the job's scratch directory, which the task base
removes afterwards. Progress and cancellation reach the thread through `ctx.report`. A query runs in a
child process whose memory is capped (`Limits.resident_cap`; a cancel ends the child): its SQL is the
client's, and can ask for memory that no DuckDB setting bounds.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import TypedDict

from medialens_data.convert import convert_table
from medialens_data.engine import Limits, Report
from medialens_data.profile import profile_table
from medialens_data.query import run_query
from medialens_shared.contracts import (
    DataConvertParams,
    DataConvertResult,
    DataProfileParams,
    DataProfileResult,
    DataQueryParams,
    DataQueryResult,
)
from medialens_shared.errors import InvalidParams
from medialens_shared.isolation import KilledForMemory, OverMemoryCap
from medialens_shared.tasks import Handler, JobContext

_PARQUET = "application/vnd.apache.parquet"


class _EngineOptions(TypedDict):
    memory_limit: str
    threads: int
    temp_dir: Path
    spill_limit: str | None
    report: Report


def _engine_options(ctx: JobContext) -> _EngineOptions:
    worker = ctx.settings.worker
    return {
        "memory_limit": worker.table_memory_limit,
        "threads": worker.table_threads,
        "temp_dir": ctx.scratch / "spill",
        "spill_limit": worker.table_spill_limit,
        "report": ctx.report,
    }


async def profile(ctx: JobContext) -> DataProfileResult:
    assert isinstance(ctx.params, DataProfileParams)
    await ctx.progress(0.0, "profiling the table", force=True)
    run = partial(profile_table, ctx.require_input(), params=ctx.params, **_engine_options(ctx))
    return await ctx.run_cpu(run)


async def convert(ctx: JobContext) -> DataConvertResult:
    assert isinstance(ctx.params, DataConvertParams)
    await ctx.progress(0.0, f"converting the table to {ctx.params.to}", force=True)
    run = partial(
        convert_table,
        ctx.require_input(),
        params=ctx.params,
        out_dir=ctx.scratch / "out",
        **_engine_options(ctx),
    )
    converted = await ctx.run_cpu(run)
    await ctx.progress(0.99, f"storing {converted.row_count} rows", force=True)
    file_id = await ctx.save_artifact(
        converted.path, filename=converted.path.name, content_type=converted.content_type
    )
    return DataConvertResult(file_id=file_id, row_count=converted.row_count, size_bytes=converted.size_bytes)


async def query(ctx: JobContext) -> DataQueryResult:
    assert isinstance(ctx.params, DataQueryParams)
    await ctx.progress(0.0, "loading the table", force=True)
    out_path = ctx.scratch / "out" / "answer.parquet"
    run = partial(
        run_query,
        ctx.require_input(),
        params=ctx.params,
        out_path=out_path,
        time_limit_s=ctx.settings.worker.query_time_limit_s,
        max_answer_bytes=ctx.settings.worker.query_max_answer_bytes,
        **_engine_options(ctx),
    )
    # In a child process with its memory capped: a few bytes of SQL can ask for more memory than DuckDB's
    # limit counts (one huge value), and the worker, with the jobs beside it, must not be the one to die.
    limits = Limits(memory_limit=ctx.settings.worker.table_memory_limit)
    try:
        answer = await ctx.run_cpu(run, memory_cap=limits.resident_cap)
    except (OverMemoryCap, KilledForMemory) as exc:  # the query's doing, as DuckDB's own out-of-memory is
        raise InvalidParams(f"the query needs more memory than this service allows: {exc.message}") from exc
    await ctx.progress(0.99, f"storing the answer's {answer.row_count} rows", force=True)
    file_id = await ctx.save_artifact(answer.path, filename=answer.path.name, content_type=_PARQUET)
    return DataQueryResult(
        columns=answer.columns, rows=answer.rows, row_count=answer.row_count, file_id=file_id
    )


HANDLERS: dict[str, Handler] = {"data.profile": profile, "data.convert": convert, "data.query": query}
