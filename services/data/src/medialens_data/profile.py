"""`data.profile`: row and column counts and per-column statistics of a CSV, Parquet or JSON-lines table.

Everything is computed inside DuckDB (see `engine`); Python only ever sees aggregates. SQL is assembled
from `ident`/`literal`-quoted names (DuckDB cannot bind identifiers or table-function arguments), hence
the `S608` exemptions.

Passes over the data: CSV and JSON lines are parsed once into a DuckDB table (where parse errors surface,
with the line; the table spills to the job's scratch directory past the memory limit), on all the job's
threads; Parquet is queried in place, unless it has more than `WIDE_COLUMNS` columns: DuckDB binds a view
of a Parquet file of 1,500 columns in 30 ms (a table in 1), and each statistics query binds it again, so
such a file, small beside the job's memory, is read into a table first (1,500 columns of 3 rows took 30 s
to profile, now 5). Then the statistics are independent queries spread over `threads` lanes, one thread
each (see `Watchdog.fetch_each`): one query per batch of columns computes their counts, extremes, moments
and quantiles (scanning only those columns; batches are narrower for longer tables, as quantiles hold
every value of their column), and one `GROUP BY` per column gives both its distinct count and its most
frequent values. On one thread a `GROUP BY` skips the partitioning and merging of DuckDB's parallel hash
aggregation, which on a 1M-row column costs more than the second thread gains; two such queries side by
side use both threads without it. A table with more rows than the exact limit computes HyperLogLog
estimates with the aggregates first, and counts its values only once they are known.

Distinct counts: exact (`distinct_approx` false) for every column whose HyperLogLog estimate is at most
`APPROX_MARGIN` above `DISTINCT_EXACT_LIMIT` (1,000,000), so any column with up to that many distinct
values is counted exactly, whatever the estimate's error (a table of at most that many rows is counted
without estimates). Beyond, `distinct_count` is DuckDB's
`approx_count_distinct` (HyperLogLog, typically within 2 %) with `distinct_approx` true, and the top values
are the candidates of `approx_top_k` with their exact counts: exact whenever the frequent values stand out,
arbitrary among ties (such as a column of unique ids, where every count is 1).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import duckdb

from medialens_data.engine import (
    Limits,
    Report,
    Watchdog,
    as_text,
    connect,
    count_label,
    finite,
    ident,
    json_value,
    literal,
    lock,
    open_lanes,
)
from medialens_data.source import Source, expose, input_failure, inspect
from medialens_shared.contracts import ColumnProfile, DataProfileParams, DataProfileResult, TopValue

#: How many most frequent values each column reports.
TOP_K = 10
#: Characters of a text value (a min, a max, a top value) a profile shows at most: the rest is cut and
#: marked "…". A column of long texts (articles, JSON blobs) made a profile past MongoDB's 16 MB for a
#: stored result, and the job failed.
SHOWN_TEXT_CHARS = 1000
#: Bytes the shown texts of a whole profile may take (its 12 texts a column, 4 bytes a character at
#: most in UTF-8): a wide table's texts are cut shorter (`shown_chars`), never below SHOWN_TEXT_MIN_CHARS.
SHOWN_TEXT_BUDGET = 8 * 2**20
SHOWN_TEXT_MIN_CHARS = 16
#: Distinct counts are exact up to this many distinct values (API.md), approximate beyond.
DISTINCT_EXACT_LIMIT = 1_000_000
#: Headroom over the limit for HyperLogLog's error, so no column within the limit is estimated.
APPROX_MARGIN = 0.1
#: Most columns per aggregate query.
AGGREGATE_BATCH = 64
#: Bytes a quantile holds per value (the value and its share of sort state), to size the batches.
QUANTILE_BYTES_PER_VALUE = 16

#: Parquet files of more columns than this are read into a table before they are profiled (see above),
#: when they take no more than this share of the job's memory limit uncompressed.
WIDE_COLUMNS = 200
WIDE_TABLE_MEMORY_SHARE = 0.125

_TABLE = "t"
#: The view of a wide Parquet file that its table is read from.
_FILE = "t_file"
#: Share of the job's progress that parsing a CSV or JSON-lines file takes.
_READ_SHARE = 0.45

_INT_TYPES = frozenset(
    {"TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT", "UTINYINT", "USMALLINT", "UINTEGER", "UBIGINT",
     "UHUGEINT"}
)  # fmt: skip
_FLOAT_TYPES = frozenset({"FLOAT", "DOUBLE"})
_TEMPORAL_TYPES = frozenset(
    {"DATE", "TIME", "TIMESTAMP", "TIMESTAMP_S", "TIMESTAMP_MS", "TIMESTAMP_NS", "TIMESTAMP WITH TIME ZONE",
     "TIME WITH TIME ZONE", "TIMESTAMPTZ_NS", "TIME_NS"}
)  # fmt: skip
_UNORDERED_PREFIXES = ("MAP", "UNION")

Kind = Literal["int", "float", "decimal", "temporal", "unordered", "other"]


def profile_table(
    path: Path,
    *,
    params: DataProfileParams,
    memory_limit: str = "512MB",
    threads: int = 2,
    temp_dir: Path | None = None,
    spill_limit: str | None = None,
    report: Report | None = None,
    cancelled: Callable[[], bool] | None = None,
    distinct_exact_limit: int = DISTINCT_EXACT_LIMIT,
) -> DataProfileResult:
    """Profile the table at `path`; `UnsupportedInput` when it is not a readable table of `params.format`.

    `report` gets progress from a watchdog thread (and may raise `JobCancelled`); `cancelled` is polled
    as well. Either one stops the running query within `WATCH_INTERVAL_S`, raising `JobCancelled`.
    """
    limits = Limits(memory_limit=memory_limit, threads=threads, temp_dir=temp_dir, spill_limit=spill_limit)
    source = inspect(path, fmt=params.format, scratch=temp_dir, header=params.header)
    con = connect(paths=source.paths, limits=limits, keep_order=False)
    try:
        lanes = open_lanes(con, limits.threads)
        with Watchdog(con, report=report, cancelled=cancelled, lanes=lanes) as watch:
            start = 0.0
            if source.format != "parquet":
                watch.stage(lambda p: (_READ_SHARE * (p or 0.0), source.describe_read(p)))
                start = _READ_SHARE
            expose(con, source, name=_TABLE, materialize=source.format != "parquet", watch=watch)
            if source.format == "parquet" and _wide_and_small(con, source, limits.memory_bytes):
                _read_whole(con, source, watch)
            # The statistics run as one-thread queries side by side on the lanes: DuckDB's parallel hash
            # aggregation partitions and merges its tables, which costs more than a second thread gains.
            con.execute("SET threads = 1")
            lock(con)
            profiler = _Profiler(
                watch,
                memory_bytes=limits.memory_bytes,
                exact_limit=distinct_exact_limit,
                lanes=len(lanes),
                start=start,
            )
            try:
                return profiler.run()
            except duckdb.Error as exc:
                # Parquet is read in place, so a damaged page surfaces only now.
                failure = input_failure(exc, source, _TABLE, watch)
                if failure is None:
                    raise
                raise failure from exc
    finally:
        con.close()


def _wide_and_small(con: Any, source: Source, memory_bytes: int) -> bool:
    """Whether the Parquet file exposed as `_TABLE` has more than `WIDE_COLUMNS` columns and takes, as its
    footer states it uncompressed, at most `WIDE_TABLE_MEMORY_SHARE` of the job's memory: a larger one
    (1,000 columns of 20,000 rows) ran out of memory as a table, and is profiled in place as before."""
    if len(con.execute(f"DESCRIBE {_TABLE}").fetchall()) <= WIDE_COLUMNS:
        return False
    size = con.execute(
        f"SELECT sum(total_uncompressed_size) FROM parquet_metadata({literal(str(source.path.resolve()))})"  # noqa: S608
    ).fetchone()[0]
    return size is not None and int(size) <= memory_bytes * WIDE_TABLE_MEMORY_SHARE


def _read_whole(con: Any, source: Source, watch: Watchdog) -> None:
    """The wide Parquet file exposed as the view `_TABLE` read into a table of that name (on all the job's
    threads); a damaged one fails as `input_failure` says, as it would while profiled in place."""
    con.execute(f"ALTER VIEW {_TABLE} RENAME TO {_FILE}")
    try:
        watch.fetch(f"CREATE TABLE {_TABLE} AS SELECT * FROM {_FILE}")  # noqa: S608
    except duckdb.Error as exc:
        failure = input_failure(exc, source, _FILE, watch)
        if failure is None:
            raise
        raise failure from exc


def _kind(dtype: str) -> Kind:
    if dtype in _INT_TYPES:
        return "int"
    if dtype in _FLOAT_TYPES:
        return "float"
    if dtype.startswith("DECIMAL"):
        return "decimal"
    if dtype in _TEMPORAL_TYPES:
        return "temporal"
    if dtype.startswith(_UNORDERED_PREFIXES):
        return "unordered"
    return "other"


@dataclass(frozen=True, slots=True)
class _Summary:
    """One column's aggregates: everything but its distinct count and top values."""

    name: str
    dtype: str
    non_null: int
    min: Any = None
    max: Any = None
    mean: float | None = None
    std: float | None = None
    quartiles: tuple[Any, Any, Any] = (None, None, None)
    #: The HyperLogLog estimate of the distinct count, computed only when it may pass the exact limit.
    approx: int | None = None


class _Profiler:
    """The statistics passes over table `t`, reporting "profiled 3.2M of 10M rows" as they go.

    Independent queries spread over the watchdog's lanes: the aggregates of batches of columns and one
    frequency query per column, all in one round, or in two when the aggregates' estimates must first
    choose between counting a column's values and estimating them.
    """

    def __init__(
        self, watch: Watchdog, *, memory_bytes: int, exact_limit: int, lanes: int, start: float
    ) -> None:
        self.watch = watch
        self.memory_bytes = memory_bytes
        self.exact_limit = exact_limit
        self.lanes = max(lanes, 1)
        self.start = start
        self.row_count = 0

    def run(self) -> DataProfileResult:
        columns = [(str(row[0]), str(row[1])) for row in self.watch.fetch(f"DESCRIBE {_TABLE}")]
        self.row_count = int(self.watch.fetch(f"SELECT count(*) FROM {_TABLE}")[0][0])  # noqa: S608
        # No column has more distinct values than rows: only a longer table needs estimates, and there each
        # column's HyperLogLog sketch (an aggregate) decides how its values are counted.
        estimate = self.row_count > self.exact_limit
        batches = self._batches(columns)
        built = [_aggregate_query(batch, estimate=estimate) for batch in batches]
        aggregates = [sql for sql, _ in built]
        rows, total = count_label(self.row_count), len(columns)
        if estimate:
            self._stage(0.0, 0.5, lambda p: f"profiled {count_label(p * self.row_count)} of {rows} rows")
            summaries = _summaries(batches, built, self.watch.fetch_each(aggregates))
            self._stage(0.5, 1.0, lambda p: f"counted the values of {round(p * total)} of {total} columns")
            frequencies = self.watch.fetch_each(
                [
                    self._frequency_query(summary.name, summary.dtype, estimated=self._estimated(summary))
                    for summary in summaries
                ]
            )
        else:
            # Nothing to decide first: the aggregates and the counts run in one round.
            self._stage(0.0, 1.0, lambda p: f"profiled {count_label(p * self.row_count)} of {rows} rows")
            answers = self.watch.fetch_each(
                aggregates + [self._frequency_query(name, dtype, estimated=False) for name, dtype in columns]
            )
            summaries = _summaries(batches, built, answers[: len(aggregates)])
            frequencies = answers[len(aggregates) :]
        chars = shown_chars(total)
        profiles = [
            _cut(self._profile(summary, counted), chars)
            for summary, counted in zip(summaries, frequencies, strict=True)
        ]
        return DataProfileResult(row_count=self.row_count, column_count=total, columns=profiles)

    def _batches(self, columns: list[tuple[str, str]]) -> list[list[tuple[str, str]]]:
        """The columns in batches, one aggregate query each: at least one batch per lane, so the lanes share
        the work, and narrower batches for longer tables, so the quantile state of the batches running at
        once (quantiles keep every value of their column) stays within a quarter of the memory limit."""
        per_column = max(self.row_count, 1) * QUANTILE_BYTES_PER_VALUE
        size = min(
            AGGREGATE_BATCH,
            self.memory_bytes // 4 // self.lanes // per_column,
            math.ceil(len(columns) / self.lanes),
        )
        size = max(size, 1)
        return [columns[first : first + size] for first in range(0, len(columns), size)]

    def _stage(self, begin: float, end: float, note: Callable[[float], str]) -> None:
        """Describe the queries that take the share `begin`..`end` of the work after the read."""

        def stage(p: float | None) -> tuple[float, str]:
            share = begin + (end - begin) * (p or 0.0)
            return self.start + (1 - self.start) * share, note(p or 0.0)

        self.watch.stage(stage)

    def _estimated(self, summary: _Summary) -> bool:
        return summary.approx is not None and summary.approx > self.exact_limit * (1 + APPROX_MARGIN)

    def _frequency_query(self, name: str, dtype: str, *, estimated: bool) -> str:
        """The query of a column's `TOP_K` most frequent values (ties by value ascending), each with its
        count, as rows `(false, value, count)`, and its distinct count as a row `(true, NULL, count)`.

        Exact: one `GROUP BY`, whose groups are counted and whose largest ones are the top values. Past
        the limit: `approx_top_k`'s candidates counted exactly (the distinct count is the estimate).
        Values Python cannot hold exactly come as their text (`engine.as_text`), ordered as values.
        """
        col = ident(name)
        if estimated:
            query = (
                f"WITH top AS (SELECT unnest(approx_top_k({col}, {TOP_K})) AS v FROM {_TABLE}) "  # noqa: S608
                f"SELECT false AS total, {col} AS v, count(*) AS n FROM {_TABLE} "
                f"WHERE {col} IN (SELECT v FROM top) GROUP BY {col} ORDER BY n DESC, v ASC LIMIT {TOP_K}"
            )
        else:
            # The groups are kept (MATERIALIZED) and read twice, which costs less than a window over them.
            query = (
                f"WITH groups AS MATERIALIZED (SELECT {col} AS v, count(*) AS n FROM {_TABLE} "  # noqa: S608
                f"WHERE {col} IS NOT NULL GROUP BY {col}) "
                "SELECT * FROM (SELECT false AS total, v, n FROM groups "
                f"ORDER BY n DESC, v ASC LIMIT {TOP_K}) "
                "UNION ALL SELECT true, NULL, count(*) FROM groups "
                "ORDER BY total, n DESC, v ASC"
            )
        if as_text("v", dtype) == "v":
            return query
        # Named apart from `v`, so that the order is the values' and not their text's.
        return f"SELECT total, {as_text('v', dtype)} AS shown, n FROM ({query}) ORDER BY total, n DESC, v ASC"  # noqa: S608

    def _profile(self, summary: _Summary, counted: list[tuple[Any, ...]]) -> ColumnProfile:
        estimated = self._estimated(summary)
        top_values = [TopValue(value=_top_value(v), count=int(n)) for total, v, n in counted if not total]
        distinct = summary.approx if estimated else next((int(n) for total, _, n in counted if total), 0)
        p25, p50, p75 = summary.quartiles
        return ColumnProfile(
            name=summary.name,
            dtype=summary.dtype,
            null_count=self.row_count - summary.non_null,
            distinct_count=distinct,
            distinct_approx=estimated,
            min=summary.min,
            max=summary.max,
            mean=summary.mean,
            std=summary.std,
            p25=p25,
            p50=p50,
            p75=p75,
            top_values=top_values,
        )


def _top_value(value: Any) -> Any:
    """A top value as JSON; a float's NaN or infinity by its name (`NaN`, `Infinity`, `-Infinity`), as
    JSON has no number for it: as null it read as the missing values, which are not counted there."""
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    return json_value(value)


def _aggregate_query(columns: list[tuple[str, str]], *, estimate: bool) -> tuple[str, list[dict[str, int]]]:
    """One query of the aggregates of `columns`, and where each column's aggregates are in its row."""
    select: list[str] = []
    slots: list[dict[str, int]] = []
    for name, dtype in columns:
        col = ident(name)
        kind = _kind(dtype)
        slot: dict[str, int] = {}

        def add(expr: str, key: str, slot: dict[str, int] = slot) -> None:
            slot[key] = len(select)
            select.append(expr)

        # A float column's statistics leave NaN and the infinities out: one NaN made its max, mean, std and
        # upper quartile NaN, shown null, and its median the mean of a value and NaN's place.
        finite_only = f" FILTER (WHERE isfinite({col}))" if kind == "float" else ""
        add(f"count({col})", "non_null")
        if kind != "unordered":
            add(as_text(f"min({col}){finite_only}", dtype), "min")
            add(as_text(f"max({col}){finite_only}", dtype), "max")
            if estimate:
                add(f"approx_count_distinct({col})", "approx")
        if kind in ("int", "float", "decimal"):
            add(f"avg({col}::DOUBLE){finite_only}", "mean")
            add(f"stddev_samp({col}::DOUBLE){finite_only}", "std")
            add(f"quantile_cont({col}::DOUBLE, [0.25, 0.5, 0.75]){finite_only}", "quartiles")
        elif kind == "temporal":
            quartiles = f"quantile_disc({col}, [0.25, 0.5, 0.75])"
            if (
                as_text(quartiles, dtype) != quartiles
            ):  # one aggregate (DuckDB computes it once), each as text
                quartiles = f"[{', '.join(as_text(f'({quartiles})[{i}]', dtype) for i in (1, 2, 3))}]"
            add(quartiles, "quartiles")
        slots.append(slot)
    return f"SELECT {', '.join(select)} FROM {_TABLE}", slots  # noqa: S608


def _summaries(
    batches: list[list[tuple[str, str]]],
    built: list[tuple[str, list[dict[str, int]]]],
    answers: list[list[tuple[Any, ...]]],
) -> list[_Summary]:
    """Each column's summary, from the answers to the batches' aggregate queries."""
    return [
        _summary(name, dtype, answer[0], slot)
        for batch, (_, slots), answer in zip(batches, built, answers, strict=True)
        for (name, dtype), slot in zip(batch, slots, strict=True)
    ]


def shown_chars(columns: int) -> int:
    """Characters a text value of a profile of `columns` columns shows at most: SHOWN_TEXT_CHARS, or fewer
    where that many would pass SHOWN_TEXT_BUDGET."""
    texts = max(columns, 1) * (TOP_K + 2)
    return max(SHOWN_TEXT_MIN_CHARS, min(SHOWN_TEXT_CHARS, SHOWN_TEXT_BUDGET // (4 * texts)))


def _cut(profile: ColumnProfile, chars: int) -> ColumnProfile:
    """The profile with its texts (min, max, top values) longer than `chars` cut there and marked "…"."""

    def shown(value: Any) -> Any:
        return value[:chars] + "…" if isinstance(value, str) and len(value) > chars else value

    return profile.model_copy(
        update={
            "min": shown(profile.min),
            "max": shown(profile.max),
            "top_values": [top.model_copy(update={"value": shown(top.value)}) for top in profile.top_values],
        }
    )


def _summary(name: str, dtype: str, row: tuple[Any, ...], slot: dict[str, int]) -> _Summary:
    def value(key: str) -> Any:
        return row[slot[key]] if key in slot else None

    quartiles = value("quartiles")
    p25, p50, p75 = (json_value(q) for q in quartiles) if quartiles else (None, None, None)
    approx = value("approx")
    return _Summary(
        name=name,
        dtype=dtype,
        non_null=int(value("non_null")),
        min=json_value(value("min")),
        max=json_value(value("max")),
        mean=finite(value("mean")),
        std=finite(value("std")),
        quartiles=(p25, p50, p75),
        approx=None if approx is None else int(approx),
    )
