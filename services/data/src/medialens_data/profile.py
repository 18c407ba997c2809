"""`data.profile`: row and column counts and per-column statistics of a CSV, Parquet or JSON-lines table.

Everything is computed inside DuckDB; Python only ever sees aggregates. Each call opens a fresh in-memory
connection that may read the one input file and nothing else (`allowed_paths` plus
`enable_external_access=false`, then `lock_configuration`), so a crafted file or column name cannot reach
the rest of the disk. SQL is assembled from `_ident`/`_literal`-quoted names (DuckDB cannot bind
identifiers or table-function arguments as parameters), hence the `S608` exemptions.

Passes over the data: CSV and JSON lines are parsed once into a DuckDB table (where parse errors surface,
with the line); Parquet is queried in place. Then one query per batch of `AGGREGATE_BATCH` columns
computes their counts, extremes, moments and quantiles (scanning only those columns), and one `GROUP BY`
per column gives both its exact distinct count and its most frequent values.
"""

from __future__ import annotations

import csv
import datetime as dt
import decimal
import math
import re
import uuid
import zlib
from pathlib import Path
from typing import Any, Literal

import duckdb

from medialens_shared.contracts import ColumnProfile, DataProfileParams, DataProfileResult, TopValue
from medialens_shared.errors import InputNotFound, InvalidParams, UnsupportedInput

Format = Literal["csv", "parquet", "jsonl"]
Compression = Literal["none", "gzip", "zstd"]

#: Leading bytes read to detect the format.
HEAD_BYTES = 8192
#: How many most frequent values each column reports.
TOP_K = 10
#: Columns per aggregate query: quantiles keep every value of their column, so a query over hundreds of
#: columns could exceed the memory limit where a few passes over fewer columns do not.
AGGREGATE_BATCH = 64

_GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_PARQUET_MAGIC = b"PAR1"
_DELIMITERS = (",", ";", "\t", "|")
#: A ragged or damaged CSV must fail, never lose or pad rows: no skipped leading lines, no null padding,
#: no ignored errors, strict quoting.
_CSV_STRICT = "skip=0, strict_mode=true, null_padding=false, ignore_errors=false"
_TABLE = "t"

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


def profile_table(
    path: Path,
    *,
    params: DataProfileParams,
    memory_limit: str = "512MB",
    threads: int = 2,
    temp_dir: Path | None = None,
) -> DataProfileResult:
    """Profile the table at `path`; `UnsupportedInput` when it is not a readable table of `params.format`."""
    if threads < 1:
        raise InvalidParams(f"threads must be at least 1, not {threads}")
    try:
        with path.open("rb") as handle:
            head = handle.read(HEAD_BYTES)
    except FileNotFoundError as exc:
        raise InputNotFound(f"input file {path.name} does not exist") from exc
    compression: Compression = (
        "gzip" if head.startswith(_GZIP_MAGIC) else "zstd" if head.startswith(_ZSTD_MAGIC) else "none"
    )
    fmt: Format = _detect_format(head, compression) if params.format == "auto" else params.format
    if compression == "none" and fmt != "parquet" and b"\x00" in head:
        raise UnsupportedInput("not a text table: the file contains NUL bytes")

    con = _connect(path, memory_limit=memory_limit, threads=threads, temp_dir=temp_dir)
    try:
        try:
            _load(con, path, fmt, compression)
            return _profile(con)
        except (
            duckdb.InvalidInputException,
            duckdb.ConversionException,
            duckdb.IOException,
            duckdb.NotImplementedException,
        ) as exc:
            raise UnsupportedInput(f"not a readable {fmt} table: {_reason(exc, path)}") from exc
    finally:
        con.close()


# --- setup ------------------------------------------------------------------------------------------


def _detect_format(head: bytes, compression: Compression) -> Format:
    """Parquet by its magic, JSON lines when the first non-blank character is `{`, else CSV."""
    if head.startswith(_PARQUET_MAGIC):
        return "parquet"
    text = head
    if compression == "gzip":
        # Peek inside: a gzip stream may hold JSON lines as well as CSV. (zstd has no stdlib decoder on
        # Python 3.11, so zstd input is taken to be CSV.)
        try:
            text = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS).decompress(head, HEAD_BYTES)
        except zlib.error:
            return "csv"
    elif compression == "zstd":
        return "csv"
    stripped = text.removeprefix(b"\xef\xbb\xbf").lstrip()
    return "jsonl" if stripped.startswith(b"{") else "csv"


def _connect(path: Path, *, memory_limit: str, threads: int, temp_dir: Path | None) -> Any:
    """A fresh in-memory connection limited to reading `path`, its configuration locked."""
    config: dict[str, Any] = {
        "memory_limit": memory_limit,
        "threads": threads,
        "autoinstall_known_extensions": False,
        "autoload_known_extensions": False,
    }
    if temp_dir is not None:
        config["temp_directory"] = str(temp_dir)
    try:
        con = duckdb.connect(":memory:", config=config)
    except duckdb.Error as exc:
        raise InvalidParams(f"bad DuckDB settings: {_first_line(str(exc))}") from exc
    try:
        con.execute("SET allowed_paths = ?", [[str(path.resolve())]])
        con.execute("SET enable_external_access = false")
        con.execute("SET lock_configuration = true")
    except BaseException:
        con.close()
        raise
    return con


def _literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


# --- reading ----------------------------------------------------------------------------------------


def _load(con: Any, path: Path, fmt: Format, compression: Compression) -> None:
    """Expose the table as `t`: a view over Parquet, a table parsed once from CSV or JSON lines."""
    source = _literal(str(path.resolve()))
    if fmt == "parquet":
        con.execute(f"CREATE VIEW {_TABLE} AS SELECT * FROM read_parquet({source})")  # noqa: S608
        # Binding reads the footer: a non-Parquet file fails here.
        con.execute(f"DESCRIBE {_TABLE}").fetchall()
        return
    codec = "" if compression == "none" else f", compression='{compression}'"
    if fmt == "jsonl":
        reader = f"read_json({source}, format='newline_delimited'{codec}"
    else:
        reader = f"read_csv({source}, {_CSV_STRICT}{codec}"
    try:
        con.execute(f"CREATE TABLE {_TABLE} AS SELECT * FROM {reader})")  # noqa: S608
    except duckdb.ConversionException:
        # The types were guessed from a sample and a later row disagrees: guess from every row instead.
        con.execute(f"CREATE OR REPLACE TABLE {_TABLE} AS SELECT * FROM {reader}, sample_size=-1)")  # noqa: S608
    if fmt == "csv":
        _reject_ragged_single_column(con, source, codec)


def _reject_ragged_single_column(con: Any, source: str, codec: str) -> None:
    """Fail on a delimited file whose rows disagree, which DuckDB's sniffer reads as one column of lines.

    When no delimiter gives every sampled row the same field count, DuckDB 2.0 does not fail: it falls back
    to a dialect where each whole line is one field. So a one-column result whose first lines split on
    another delimiter is re-read strictly with that delimiter, which fails naming the first bad line.
    """
    columns = _describe(con)
    if len(columns) != 1:
        return
    sniffed = con.execute(
        f"SELECT Delimiter, HasHeader FROM sniff_csv({source}, {_CSV_STRICT}{codec})"  # noqa: S608
    ).fetchall()[0]
    delimiter, has_header = sniffed[0], bool(sniffed[1])
    name = columns[0][0]
    col = _ident(name)
    sample = [
        row[0]
        for row in con.execute(
            f"SELECT CAST({col} AS VARCHAR) FROM {_TABLE} WHERE {col} IS NOT NULL LIMIT 20"  # noqa: S608
        ).fetchall()
    ]
    lines = ([name] if has_header else []) + sample
    if not lines:
        return
    for candidate in _DELIMITERS:
        if candidate == delimiter:
            continue
        widths = [len(next(csv.reader([line], delimiter=candidate), [])) for line in lines]
        if widths[0] < 2 and sum(width > 1 for width in widths) < 2:
            continue
        try:
            con.execute(
                f"SELECT 1 FROM sniff_csv({source}, delim={_literal(candidate)}, {_CSV_STRICT}{codec})"  # noqa: S608
            ).fetchall()
        except duckdb.InvalidInputException:
            pass  # no consistent dialect with this delimiter: the rows are ragged
        else:
            continue
        expected = max(widths[0], 1)
        columns_spec = "{" + ", ".join(f"'c{i}': 'VARCHAR'" for i in range(expected)) + "}"
        con.execute(
            f"SELECT count(*) FROM read_csv({source}, auto_detect=false, header=false, "  # noqa: S608
            f"delim={_literal(candidate)}, quote='\"', escape='\"', columns={columns_spec}, "
            f"{_CSV_STRICT}{codec})"
        ).fetchall()
        shown = "tab" if candidate == "\t" else repr(candidate)
        raise UnsupportedInput(f"not a readable csv table: rows disagree on their number of {shown} fields")


# --- statistics -------------------------------------------------------------------------------------


def _describe(con: Any) -> list[tuple[str, str]]:
    return [(str(row[0]), str(row[1])) for row in con.execute(f"DESCRIBE {_TABLE}").fetchall()]


def _kind(dtype: str) -> Literal["int", "float", "decimal", "temporal", "unordered", "other"]:
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


def _profile(con: Any) -> DataProfileResult:
    columns = _describe(con)
    row_count = int(con.execute(f"SELECT count(*) FROM {_TABLE}").fetchall()[0][0])  # noqa: S608
    profiles = []
    for start in range(0, len(columns), AGGREGATE_BATCH):
        profiles += _profile_batch(con, columns[start : start + AGGREGATE_BATCH], row_count)
    return DataProfileResult(row_count=row_count, column_count=len(columns), columns=profiles)


def _profile_batch(con: Any, columns: list[tuple[str, str]], row_count: int) -> list[ColumnProfile]:
    """Profile some columns: one aggregate query for all of them, then one `GROUP BY` per column."""
    select: list[str] = []
    slots: list[dict[str, int]] = []
    for name, dtype in columns:
        col = _ident(name)
        kind = _kind(dtype)
        slot: dict[str, int] = {}

        def add(expr: str, key: str, slot: dict[str, int] = slot) -> None:
            slot[key] = len(select)
            select.append(expr)

        add(f"count({col})", "non_null")
        if kind != "unordered":
            add(f"min({col})", "min")
            add(f"max({col})", "max")
        if kind in ("int", "float", "decimal"):
            add(f"avg({col}::DOUBLE)", "mean")
            add(f"stddev_samp({col}::DOUBLE)", "std")
            add(f"quantile_cont({col}::DOUBLE, [0.25, 0.5, 0.75])", "quantiles")
        elif kind == "temporal":
            add(f"quantile_disc({col}, [0.25, 0.5, 0.75])", "quantiles")
        slots.append(slot)
    row = con.execute(f"SELECT {', '.join(select)} FROM {_TABLE}").fetchall()[0]  # noqa: S608

    profiles = []
    for (name, dtype), slot in zip(columns, slots, strict=True):
        non_null = int(row[slot["non_null"]])
        distinct, top_values = _frequencies(con, name) if non_null else (0, [])
        quantiles = row[slot["quantiles"]] if "quantiles" in slot else None
        p25, p50, p75 = (_jsonable(q) for q in quantiles) if quantiles else (None, None, None)
        profiles.append(
            ColumnProfile(
                name=name,
                dtype=dtype,
                null_count=row_count - non_null,
                distinct_count=distinct,
                distinct_approx=False,
                min=_jsonable(row[slot["min"]]) if "min" in slot else None,
                max=_jsonable(row[slot["max"]]) if "max" in slot else None,
                mean=_finite(row[slot["mean"]]) if "mean" in slot else None,
                std=_finite(row[slot["std"]]) if "std" in slot else None,
                p25=p25,
                p50=p50,
                p75=p75,
                top_values=top_values,
            )
        )
    return profiles


def _frequencies(con: Any, name: str) -> tuple[int, list[TopValue]]:
    """The exact number of distinct non-null values, and the `TOP_K` most frequent of them.

    One `GROUP BY`: its number of groups is the distinct count (a window over the groups), and its largest
    groups, ties broken by value ascending, are the top values.
    """
    col = _ident(name)
    rows = con.execute(
        f"SELECT {col}, count(*), count(*) OVER () FROM {_TABLE} WHERE {col} IS NOT NULL "  # noqa: S608
        f"GROUP BY {col} ORDER BY 2 DESC, 1 ASC LIMIT {TOP_K}"
    ).fetchall()
    if not rows:
        return 0, []
    return int(rows[0][2]), [TopValue(value=_jsonable(value), count=int(count)) for value, count, _ in rows]


def _finite(value: Any) -> float | None:
    if value is None:
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _jsonable(value: Any) -> Any:
    """A DuckDB value as JSON: numbers, strings, ISO strings for temporal values; NaN and inf as None."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float | decimal.Decimal):
        return _finite(value)
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).hex()
    if isinstance(value, list | tuple):
        return [_jsonable(item) for item in value]
    if isinstance(value, dict):
        return {str(key): _jsonable(item) for key, item in value.items()}
    if isinstance(value, uuid.UUID | dt.timedelta):
        return str(value)
    return str(value)


# --- errors -----------------------------------------------------------------------------------------

_ERROR_PREFIX = re.compile(r"^[A-Za-z ]*Error: ")
_CSV_LINE = re.compile(r"CSV Error on Line: (\d+)")
_COLUMNS = re.compile(r"Expected Number of Columns: (\d+) Found: (\d+)")


def _first_line(message: str) -> str:
    return message.strip().splitlines()[0] if message.strip() else "unknown error"


def _reason(exc: Exception, path: Path) -> str:
    """DuckDB's reason in one short sentence, naming the line when DuckDB gives one."""
    message = _ERROR_PREFIX.sub("", str(exc).replace(str(path.resolve()), path.name).strip(), count=1)
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    if not lines:
        return "unknown error"
    line_match = _CSV_LINE.match(lines[0])
    if line_match:
        detail = next(
            (line for line in lines[1:] if not line.startswith(("Original Line", "Possible", "*"))), ""
        )
        columns = _COLUMNS.match(detail)
        if columns:
            detail = f"expected {columns[1]} field{'' if columns[1] == '1' else 's'}, found {columns[2]}"
        return f"line {line_match[1]}: {_sentence(detail)}" if detail else f"line {line_match[1]}"
    if lines[0].startswith("Error when sniffing file") and len(lines) > 1:
        return _sentence(lines[1])
    return _sentence(lines[0])


def _sentence(text: str, limit: int = 200) -> str:
    sentence = re.split(r"(?<=[.!?])\s", text, maxsplit=1)[0].rstrip(". ")
    return sentence if len(sentence) <= limit else sentence[: limit - 1] + "…"
