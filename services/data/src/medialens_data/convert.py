"""`data.convert`: the input table in another format (zstd Parquet, CSV with a header, or JSON lines).

One streamed `COPY` from the input, read as a view, to a file in the job's scratch directory; DuckDB keeps
the rows in their order and spills past the memory limit. The handler stores the file as a new file of
the job's tenant. A CSV holds nested values (structs, lists, maps: JSON objects and arrays, nested
Parquet) as their JSON text (`_copied`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import duckdb

from medialens_data.engine import (
    FLOAT_AS_WRITTEN,
    HUGE_INTEGERS,
    PARQUET_HUGE,
    Limits,
    Report,
    Watchdog,
    connect,
    count_label,
    each_leaf,
    huge_parquet_types,
    ident,
    literal,
    lock,
    nested,
)
from medialens_data.source import (
    Source,
    expose,
    input_failure,
    inspect,
    reread,
    resample,
    without_white_lines,
)
from medialens_shared.contracts import DataConvertParams

Target = Literal["parquet", "csv", "jsonl"]

#: DuckDB's `COPY` options for each output format.
COPY_OPTIONS: dict[Target, str] = {
    "parquet": "FORMAT parquet, COMPRESSION zstd",
    "csv": "FORMAT csv, HEADER true",
    "jsonl": "FORMAT json",
}
CONTENT_TYPES: dict[Target, str] = {
    "parquet": "application/vnd.apache.parquet",
    "csv": "text/csv; charset=utf-8",  # DuckDB writes UTF-8; a download says so (text/* has no default)
    "jsonl": "application/x-ndjson",
}
_COMPRESSED_SUFFIXES = (".gz", ".gzip", ".zst", ".zstd")
_VIEW = "data"


@dataclass(frozen=True, slots=True)
class Converted:
    path: Path
    row_count: int
    size_bytes: int
    content_type: str


def output_name(input_name: str, to: Target) -> str:
    """`sales.csv.gz` converted to Parquet is `sales.parquet`."""
    name = Path(input_name)
    if name.suffix.lower() in _COMPRESSED_SUFFIXES:
        name = name.with_suffix("")
    return f"{name.stem or 'table'}.{to}"


def convert_table(
    path: Path,
    *,
    params: DataConvertParams,
    out_dir: Path,
    memory_limit: str = "512MB",
    threads: int = 2,
    temp_dir: Path | None = None,
    spill_limit: str | None = None,
    report: Report | None = None,
    cancelled: Callable[[], bool] | None = None,
) -> Converted:
    """Write the table at `path` as `params.to` into `out_dir`; `UnsupportedInput` for an unreadable table."""
    limits = Limits(memory_limit=memory_limit, threads=threads, temp_dir=temp_dir, spill_limit=spill_limit)
    source = inspect(path, fmt=params.format, scratch=temp_dir, header=params.header)
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / output_name(path.name, params.to)
    con = connect(paths=[*source.paths, target], limits=limits)
    try:
        with Watchdog(con, report=report, cancelled=cancelled) as watch:
            json_kept = params.to == "jsonl"  # a JSON key's values each of its kind, as written
            source = expose(con, source, name=_VIEW, materialize=False, watch=watch, json_kept=json_kept)
            lock(con)
            total = _row_estimate(watch, source)
            watch.stage(lambda p: (p or 0.0, _note(p, total)))
            full_sample = False
            huge = PARQUET_HUGE
            to = f"TO {literal(str(target.resolve()))} ({COPY_OPTIONS[params.to]})"
            while True:
                try:
                    # Built again after each reading: guessing the types from every row may change them.
                    copy = f"COPY {_copied(con, source, params.to, huge=huge)} {to}"
                    row_count = int(watch.fetch(copy)[0][0])
                    break
                except duckdb.Error as exc:
                    if params.to == "parquet" and huge == PARQUET_HUGE != huge_parquet_types(exc):
                        huge = huge_parquet_types(exc)  # an integer of 39 digits: those columns as text
                        continue
                    # The view is read only now, so what its creation could not see surfaces here: a row
                    # past the sniffed sample that disagrees with the guessed types (guess from all rows),
                    # a byte past the first ones that is not in the encoding they told (read it again), a
                    # damaged page of a Parquet file.
                    again = reread(source, exc)
                    if again is None and source.format != "parquet" and resample(exc) and not full_sample:
                        again, full_sample = source, True
                    if again is None and (again := without_white_lines(con, source, exc, watch)) is not None:
                        full_sample = False  # the rows that disagreed with their types may be those lines
                    if again is None:
                        failure = input_failure(exc, source, _VIEW, watch, target)
                        if failure is None:
                            raise
                        raise failure from exc
                    source = expose(
                        con,
                        again,
                        name=_VIEW,
                        materialize=False,
                        full_sample=full_sample,
                        watch=watch,
                        json_kept=json_kept,
                    )
    finally:
        con.close()
    return Converted(
        path=target,
        row_count=row_count,
        size_bytes=target.stat().st_size,
        content_type=CONTENT_TYPES[params.to],
    )


def _copied(con: Any, source: Source, to: Target, *, huge: str = PARQUET_HUGE) -> str:
    """What `COPY` writes: the view, its columns that the output's writer would not give back as they are
    rewritten (`_rewritten`). A CSV into CSV is the view itself: a CSV input has no nested values, and
    its view is not described, which would sniff the file again.
    """
    if to == "csv" and source.format == "csv":
        return _VIEW
    read = con.sql(f"SELECT * FROM {_VIEW}")  # noqa: S608 - bound, not run
    replaced = [
        f"{expr} AS {ident(name)}"
        for name, kind in zip(read.columns, read.types, strict=True)
        if (expr := _rewritten(ident(name), kind, to, huge=huge)) is not None
    ]
    if not replaced:
        return _VIEW
    return f"(SELECT * REPLACE ({', '.join(replaced)}) FROM {_VIEW})"  # noqa: S608 - quoted names


def _rewritten(column: str, kind: Any, to: Target, *, huge: str) -> str | None:
    """The SQL that writes `column` (quoted) of the DuckDB type `kind` as the `to` output can hold it
    exactly; None where its writer gives it back as it is.

    DuckDB's CSV writer spells a struct, a list or a map in its own notation, which no reader takes back
    and which loses what a value is: `{'sku': a, 'q': 2}`, `[x, NULL]`, `{k=1}`, where the string "NULL"
    and a null, or a string holding `, ` and two values, read the same. As JSON they are
    `{"sku":"a","q":2}`, `["x",null]`, `{"k":1}`, as the JSON lines output writes them.

    Its Parquet writer stores a 128-bit integer (HUGEINT: a CSV column of integers past 64 bits) as a
    DOUBLE: 123456789012345678901234567 was written as 1.2345678901234568e+26, silently. `huge` is
    `engine.PARQUET_HUGE`, exact to 38 digits, or where a value has more, text: for all such columns,
    DuckDB's error not saying which one (`engine.huge_parquet_types`).

    Its JSON writer writes NaN and the infinities as the words `NaN`, `Infinity` and `-Infinity`, which
    JSON does not have (JavaScript's `JSON.parse` rejects the line): they are null, as `JSON.stringify`
    writes them and as `data.query`'s rows give them. A 32-bit float is written as its shortest text
    (`0.1`, as in CSV), not as the double it widens to (`0.10000000149011612`).

    A BLOB is its bytes in hexadecimal (`616200ff`), as `data.query`'s rows and `data.profile` give it,
    where DuckDB's writers gave its own escaped text (`ab\\x00\\xFF`), which only DuckDB reads back. In
    JSON lines and a CSV's JSON cells these rules hold at any depth (`_as_json`).
    """
    dtype = str(kind)
    if to == "parquet":
        return f"CAST({column} AS {huge})" if dtype in HUGE_INTEGERS else None
    if to == "csv" and nested(dtype):
        return f"CAST(to_json({_as_json(column, kind) or column}) AS VARCHAR)"
    if to == "csv":
        return f"lower(hex({column}))" if dtype == "BLOB" else None
    return _as_json(column, kind)


def _as_json(expr: str, kind: Any) -> str | None:
    """`expr`, of the DuckDB type `kind` (a `DuckDBPyType`), as JSON can hold it, however deep in lists,
    arrays, structs and maps' values (`engine.each_leaf`): each NaN and infinity null, each 32-bit float
    its shortest text's double, each BLOB its bytes in hexadecimal; None when it holds none of them.
    DuckDB's JSON writer wrote `[1.5,NaN]`, which no JSON reader but Python's takes, and `["ab\\x00"]`;
    `[1.5,null]` and `["616200"]` now, as at the top level."""
    return each_leaf(expr, kind, _json_leaf)


def _json_leaf(expr: str, kind: Any) -> str | None:
    match kind.id:
        case "double":
            return f"CASE WHEN isfinite({expr}) THEN {expr} END"
        case "float":
            return f"CASE WHEN isfinite({expr}) THEN {FLOAT_AS_WRITTEN.format(expr)} END"
        case "blob":
            return f"lower(hex({expr}))"
        case _:
            return None


def _row_estimate(watch: Watchdog, source: Source) -> int | None:
    if source.format != "parquet":
        return source.estimated_rows
    rows = watch.fetch(
        f"SELECT sum(num_rows) FROM parquet_file_metadata({literal(str(source.path.resolve()))})"  # noqa: S608
    )
    return int(rows[0][0] or 0)


def _note(progress: float | None, total: int | None) -> str:
    if progress is None:
        return "converting the table"
    if total is None:
        return f"converted {progress:.0%} of the table"
    return f"converted {count_label(progress * total)} of ~{count_label(total)} rows"
