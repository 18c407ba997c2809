"""`data.profile`: row and column counts and per-column statistics of a CSV, Parquet or JSON-lines table.

Everything is computed inside DuckDB (see `engine`); Python only ever sees aggregates. SQL is assembled
from `ident`/`literal`-quoted names (DuckDB cannot bind identifiers or table-function arguments), hence
the `S608` exemptions.

Passes over the data: CSV and JSON lines are parsed once into a DuckDB table (where parse errors surface,
with the line; the table spills to the job's scratch directory past the memory limit); Parquet is queried
in place. Then one query per batch of columns computes their counts, extremes, moments, quantiles and
HyperLogLog distinct estimates (scanning only those columns; batches are narrower for longer tables, as
quantiles hold every value of their column), and one `GROUP BY` per column gives both its distinct count
and its most frequent values.

Distinct counts: exact (`distinct_approx` false) for every column whose HyperLogLog estimate is at most
`APPROX_MARGIN` above `DISTINCT_EXACT_LIMIT` (1,000,000), so any column with up to that many distinct
values is counted exactly, whatever the estimate's error. Beyond, `distinct_count` is DuckDB's
`approx_count_distinct` (HyperLogLog, typically within 2 %) with `distinct_approx` true, and the top values
are the candidates of `approx_top_k` with their exact counts: exact whenever the frequent values stand out,
arbitrary among ties (such as a column of unique ids, where every count is 1).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Literal

from medialens_data.engine import (
    Limits,
    Report,
    Watchdog,
    connect,
    count_label,
    finite,
    ident,
    json_value,
    lock,
    reason,
)
from medialens_data.source import READ_ERRORS, expose, inspect
from medialens_shared.contracts import ColumnProfile, DataProfileParams, DataProfileResult, TopValue
from medialens_shared.errors import UnsupportedInput

#: How many most frequent values each column reports.
TOP_K = 10
#: Distinct counts are exact up to this many distinct values (API.md), approximate beyond.
DISTINCT_EXACT_LIMIT = 1_000_000
#: Headroom over the limit for HyperLogLog's error, so no column within the limit is estimated.
APPROX_MARGIN = 0.1
#: Most columns per aggregate query.
AGGREGATE_BATCH = 64
#: Bytes a quantile holds per value (the value and its share of sort state), to size the batches.
QUANTILE_BYTES_PER_VALUE = 16

_TABLE = "t"
#: Share of the job's progress that parsing a CSV or JSON-lines file takes.
_READ_SHARE = 0.45

_INT_TYPES = frozenset(
    {"TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT", "UTINYINT", "USMALLINT", "UINTEGER", "UBIGINT",
     "UHUGEINT"}
)  # fmt: skip
_FLOAT_TYPES = frozenset({"FLOAT", "DOUBLE"})
_TEMPORAL_TYPES = frozenset(
    {"DATE", "TIME", "TIMESTAMP", "TIMESTAMP_S", "TIMESTAMP_MS", "TIMESTAMP_NS", "TIMESTAMP WITH TIME ZONE",
     "TIME WITH TIME ZONE"}
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
    report: Report | None = None,
    cancelled: Callable[[], bool] | None = None,
    distinct_exact_limit: int = DISTINCT_EXACT_LIMIT,
) -> DataProfileResult:
    """Profile the table at `path`; `UnsupportedInput` when it is not a readable table of `params.format`.

    `report` gets progress from a watchdog thread (and may raise `JobCancelled`); `cancelled` is polled
    as well. Either one stops the running query within `WATCH_INTERVAL_S`, raising `JobCancelled`.
    """
    limits = Limits(memory_limit=memory_limit, threads=threads, temp_dir=temp_dir)
    source = inspect(path, fmt=params.format)
    con = connect(paths=[path], limits=limits, keep_order=False)
    try:
        with Watchdog(con, report=report, cancelled=cancelled) as watch:
            start = 0.0
            if source.format != "parquet":
                watch.stage(lambda p: (_READ_SHARE * (p or 0.0), source.describe_read(p)))
                start = _READ_SHARE
            expose(con, source, name=_TABLE, materialize=source.format != "parquet", watch=watch)
            lock(con)
            profiler = _Profiler(
                watch, memory_bytes=limits.memory_bytes, exact_limit=distinct_exact_limit, start=start
            )
            try:
                return profiler.run()
            except READ_ERRORS as exc:
                # Parquet is read in place, so a damaged page surfaces only now.
                raise UnsupportedInput(f"not a readable {source.format} table: {reason(exc, path)}") from exc
    finally:
        con.close()


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


class _Profiler:
    """The statistics passes over table `t`, reporting "profiled 3.2M of 10M rows" as they go."""

    def __init__(self, watch: Watchdog, *, memory_bytes: int, exact_limit: int, start: float) -> None:
        self.watch = watch
        self.memory_bytes = memory_bytes
        self.exact_limit = exact_limit
        self.start = start
        self.row_count = 0
        self.column_count = 0
        #: Steps done: a column's aggregates count one step, its frequencies another.
        self.done = 0

    def run(self) -> DataProfileResult:
        columns = [(str(row[0]), str(row[1])) for row in self.watch.fetch(f"DESCRIBE {_TABLE}")]
        self.column_count = len(columns)
        self.row_count = int(self.watch.fetch(f"SELECT count(*) FROM {_TABLE}")[0][0])  # noqa: S608
        # Quantiles keep every value of their column: narrower batches for longer tables, so a batch's
        # quantile state stays within a quarter of the memory limit.
        per_column = max(self.row_count, 1) * QUANTILE_BYTES_PER_VALUE
        batch = max(1, min(AGGREGATE_BATCH, self.memory_bytes // 4 // per_column))
        profiles: list[ColumnProfile] = []
        for first in range(0, len(columns), batch):
            profiles += self._batch(columns[first : first + batch], first)
        return DataProfileResult(row_count=self.row_count, column_count=len(columns), columns=profiles)

    def _progress(self, steps: int, note: Callable[[float], str] | str) -> None:
        """Describe the next `steps` steps to the watchdog, by a fixed note or one made from progress."""
        total = max(2 * self.column_count, 1)

        def stage(p: float | None) -> tuple[float, str]:
            share = (self.done + steps * (p or 0.0)) / total
            return self.start + (1 - self.start) * share, note if isinstance(note, str) else note(p or 0.0)

        self.watch.stage(stage)

    def _batch(self, columns: list[tuple[str, str]], first: int) -> list[ColumnProfile]:
        """Profile some columns: one aggregate query for all of them, then one `GROUP BY` per column."""
        select: list[str] = []
        slots: list[dict[str, int]] = []
        for name, dtype in columns:
            col = ident(name)
            kind = _kind(dtype)
            slot: dict[str, int] = {}

            def add(expr: str, key: str, slot: dict[str, int] = slot) -> None:
                slot[key] = len(select)
                select.append(expr)

            add(f"count({col})", "non_null")
            if kind != "unordered":
                add(f"min({col})", "min")
                add(f"max({col})", "max")
                add(f"approx_count_distinct({col})", "approx")
            if kind in ("int", "float", "decimal"):
                add(f"avg({col}::DOUBLE)", "mean")
                add(f"stddev_samp({col}::DOUBLE)", "std")
                add(f"quantile_cont({col}::DOUBLE, [0.25, 0.5, 0.75])", "quantiles")
            elif kind == "temporal":
                add(f"quantile_disc({col}, [0.25, 0.5, 0.75])", "quantiles")
            slots.append(slot)

        rows, total, last = count_label(self.row_count), self.column_count, first + len(columns)
        self._progress(
            len(columns),
            lambda p: (
                f"profiled {count_label(p * self.row_count)} of {rows} rows (columns {first + 1}-{last} "
                f"of {total})"
            ),
        )
        row = self.watch.fetch(f"SELECT {', '.join(select)} FROM {_TABLE}")[0]  # noqa: S608
        self.done += len(columns)

        profiles = []
        for index, ((name, dtype), slot) in enumerate(zip(columns, slots, strict=True), start=first + 1):
            self._progress(1, f"counting the values of column {index} of {total}")
            non_null = int(row[slot["non_null"]])
            approx = int(row[slot["approx"]]) if "approx" in slot else None
            distinct, estimated, top_values = self._frequencies(name, non_null, approx)
            self.done += 1
            quantiles = row[slot["quantiles"]] if "quantiles" in slot else None
            p25, p50, p75 = (json_value(q) for q in quantiles) if quantiles else (None, None, None)
            profiles.append(
                ColumnProfile(
                    name=name,
                    dtype=dtype,
                    null_count=self.row_count - non_null,
                    distinct_count=distinct,
                    distinct_approx=estimated,
                    min=json_value(row[slot["min"]]) if "min" in slot else None,
                    max=json_value(row[slot["max"]]) if "max" in slot else None,
                    mean=finite(row[slot["mean"]]) if "mean" in slot else None,
                    std=finite(row[slot["std"]]) if "std" in slot else None,
                    p25=p25,
                    p50=p50,
                    p75=p75,
                    top_values=top_values,
                )
            )
        return profiles

    def _frequencies(
        self, name: str, non_null: int, approx: int | None
    ) -> tuple[int | None, bool, list[TopValue]]:
        """The distinct count of a column, whether it is estimated, and its `TOP_K` most frequent values.

        Exact: one `GROUP BY`, whose number of groups is the distinct count (a window over the groups) and
        whose largest groups, ties broken by value ascending, are the top values. Past the limit: the
        HyperLogLog estimate, and `approx_top_k`'s candidates counted exactly.
        """
        if non_null == 0:
            return 0, False, []
        col = ident(name)
        if approx is not None and approx > self.exact_limit * (1 + APPROX_MARGIN):
            rows = self.watch.fetch(
                f"WITH top AS (SELECT unnest(approx_top_k({col}, {TOP_K})) AS v FROM {_TABLE}) "  # noqa: S608
                f"SELECT {col}, count(*) FROM {_TABLE} WHERE {col} IN (SELECT v FROM top) "
                f"GROUP BY {col} ORDER BY 2 DESC, 1 ASC LIMIT {TOP_K}"
            )
            return approx, True, [TopValue(value=json_value(v), count=int(n)) for v, n in rows]
        rows = self.watch.fetch(
            f"SELECT {col}, count(*), count(*) OVER () FROM {_TABLE} WHERE {col} IS NOT NULL "  # noqa: S608
            f"GROUP BY {col} ORDER BY 2 DESC, 1 ASC LIMIT {TOP_K}"
        )
        distinct = int(rows[0][2]) if rows else 0
        return distinct, False, [TopValue(value=json_value(v), count=int(n)) for v, n, _ in rows]
