"""CSV null markers (`NA`, `N/A`, `null`, `-`, `nan`...): missing values in a column of numbers, dates or
booleans, which then has that type in a profile, a converted Parquet file and a query; values in a column of
text (`NA` for Namibia), and in a column of nothing but markers, as DuckDB reads them."""

from __future__ import annotations

import csv
import datetime
import gzip
import statistics
from pathlib import Path
from typing import Any

import duckdb
import pytest

from medialens_data.convert import convert_table
from medialens_data.profile import profile_table
from medialens_data.query import run_query
from medialens_shared.contracts import (
    ColumnProfile,
    DataConvertParams,
    DataProfileParams,
    DataProfileResult,
    DataQueryParams,
)

AUTO = DataProfileParams()
#: Rows past the 20,480 DuckDB guesses a CSV's types from.
PAST_THE_SAMPLE = 25_000


def write_csv(path: Path, header: list[str], rows: list[list[Any]], *, encoding: str = "utf-8") -> Path:
    with path.open("w", newline="", encoding=encoding) as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def column(result: DataProfileResult, name: str) -> ColumnProfile:
    return next(col for col in result.columns if col.name == name)


def parquet_of(path: Path, tmp_path: Path) -> tuple[list[tuple[str, str]], list[tuple[Any, ...]]]:
    """The input converted to Parquet: its columns' types and its rows."""
    converted = convert_table(
        path, params=DataConvertParams(to="parquet"), out_dir=tmp_path / "out", temp_dir=tmp_path / "spill"
    )
    with duckdb.connect() as con:
        relation = con.sql(f"SELECT * FROM read_parquet('{converted.path}')")
        types = [(str(name), str(kind)) for name, kind in zip(relation.columns, relation.types, strict=True)]
        return types, relation.fetchall()


def answer(path: Path, tmp_path: Path, sql: str) -> list[list[Any]]:
    return run_query(
        path,
        params=DataQueryParams(sql=sql),
        out_path=tmp_path / "answer.parquet",
        temp_dir=tmp_path / "spill",
    ).rows


@pytest.fixture
def survey(tmp_path: Path) -> tuple[Path, list[list[Any]]]:
    """Integers with R's `NA`, decimals with `N/A` and `nan`, booleans with `null`, a country code that is
    `NA` (Namibia) among `FR` and `DE`, and a column of nothing but `NA`."""
    rows: list[list[Any]] = [
        [
            "NA" if i % 7 == 0 else i * 3,
            "N/A" if i % 5 == 0 else "nan" if i % 11 == 0 else f"{i / 4}",
            "null" if i % 6 == 0 else "true" if i % 2 else "false",
            ["FR", "DE", "NA"][i % 3],
            "NA",
        ]
        for i in range(60)
    ]
    return write_csv(tmp_path / "survey.csv", ["n", "x", "ok", "country", "empty"], rows), rows


def test_markers_are_missing_values_of_numbers_and_booleans(survey: tuple[Path, list[list[Any]]]) -> None:
    """The numbers' and booleans' markers count as nulls, and their statistics are the other values'; the
    country `NA` and the column of markers only stay text, `NA` a value."""
    path, rows = survey
    result = profile_table(path, params=AUTO)
    numbers = [row[0] for row in rows if row[0] != "NA"]
    n = column(result, "n")
    assert (n.dtype, n.null_count, n.min, n.max) == ("BIGINT", 60 - len(numbers), 3, 177)
    assert n.mean == pytest.approx(statistics.mean(numbers))
    decimals = [float(row[1]) for row in rows if row[1] not in ("N/A", "nan")]
    x = column(result, "x")
    assert (x.dtype, x.null_count, x.min, x.max) == ("DOUBLE", 60 - len(decimals), 0.25, 14.75)
    assert x.mean == pytest.approx(statistics.mean(decimals))
    ok = column(result, "ok")
    assert (ok.dtype, ok.null_count, ok.min, ok.max) == ("BOOLEAN", 10, False, True)
    country = column(result, "country")
    assert (country.dtype, country.null_count, country.distinct_count) == ("VARCHAR", 0, 3)
    assert [(top.value, top.count) for top in country.top_values] == [("DE", 20), ("FR", 20), ("NA", 20)]
    empty = column(result, "empty")
    assert (empty.dtype, empty.null_count, empty.top_values[0].value) == ("VARCHAR", 0, "NA")


def test_markers_convert_to_parquet_as_nulls_of_the_columns_type(
    survey: tuple[Path, list[list[Any]]], tmp_path: Path
) -> None:
    """The Parquet file has integers, doubles and booleans with nulls where the markers were, and the
    texts as they were written."""
    path, _ = survey
    types, rows = parquet_of(path, tmp_path)
    assert types == [
        ("n", "BIGINT"),
        ("x", "DOUBLE"),
        ("ok", "BOOLEAN"),
        ("country", "VARCHAR"),
        ("empty", "VARCHAR"),
    ]
    assert rows[:3] == [
        (None, None, None, "FR", "NA"),
        (3, 0.25, True, "DE", "NA"),
        (6, 0.5, False, "NA", "NA"),
    ]
    assert rows[11] == (33, None, True, "NA", "NA")  # nan among decimals


def test_a_query_sums_a_column_with_markers(survey: tuple[Path, list[list[Any]]], tmp_path: Path) -> None:
    path, rows = survey
    total = sum(row[0] for row in rows if row[0] != "NA")
    assert answer(path, tmp_path, "SELECT sum(n), count(n), count(*) FILTER (country = 'NA') FROM data") == [
        [total, 51, 20]
    ]


def test_a_marker_only_past_the_sample_is_a_missing_number(tmp_path: Path) -> None:
    """One `NA` past DuckDB's 20,480 sampled rows (which made the whole column text) is a null of the
    integers, in a profile, a conversion and a query alike."""
    rows: list[list[Any]] = [[i, i % 100] for i in range(30_000)]
    rows[PAST_THE_SAMPLE][1] = "NA"
    path = write_csv(tmp_path / "late.csv", ["id", "n"], rows)
    n = column(profile_table(path, params=AUTO), "n")
    total = sum(row[1] for row in rows if row[1] != "NA")
    assert (n.dtype, n.null_count, n.min, n.max) == ("BIGINT", 1, 0, 99)
    assert n.mean == pytest.approx(total / 29_999)
    types, converted = parquet_of(path, tmp_path)
    assert types == [("id", "BIGINT"), ("n", "BIGINT")]
    assert converted[PAST_THE_SAMPLE] == (PAST_THE_SAMPLE, None)
    assert answer(path, tmp_path, "SELECT sum(n) FROM data") == [[total]]


@pytest.mark.parametrize(
    ("late", "dtype", "extremes"),
    [("1.5", "DOUBLE", (1.0, 99.0)), ("n/k", "VARCHAR", ("1", "n/k"))],
    ids=["a-fraction", "a-text"],
)
def test_a_value_past_the_sample_that_its_type_does_not_read_decides_the_type(
    tmp_path: Path, late: str, dtype: str, extremes: tuple[Any, Any]
) -> None:
    """Integers with `NA` and a fraction past the sample are decimals (not integers that round it); with a
    text there, the column is text and its `NA` a value."""
    rows: list[list[Any]] = [["NA" if i % 10 == 0 else i % 100] for i in range(30_000)]
    rows[PAST_THE_SAMPLE + 1][0] = late
    path = write_csv(tmp_path / "late.csv", ["n"], rows)
    (n,) = profile_table(path, params=AUTO).columns
    assert (n.dtype, n.min, n.max) == (dtype, *extremes)
    assert n.null_count == (3_000 if dtype == "DOUBLE" else 0)


def test_dates_with_markers_are_dates_when_their_order_is_told(tmp_path: Path) -> None:
    """ISO dates and day-first dates (13/02/2024 tells the order) with markers are dates; day-first dates
    that read as well month first stay text, markers and all, as they do without markers."""
    iso = write_csv(tmp_path / "iso.csv", ["iso"], [["2024-03-01"], ["NA"], ["2024-03-05"], ["null"]])
    (col,) = profile_table(iso, params=AUTO).columns
    assert (col.dtype, col.null_count, col.min, col.max) == ("DATE", 2, "2024-03-01", "2024-03-05")
    rows = [
        ["01/02/2024", "01/02/2024"],
        ["13/02/2024", "03/04/2024"],
        ["-", "NA"],
        ["05/03/2024", "05/06/2024"],
    ]
    path = write_csv(tmp_path / "dates.csv", ["told", "untold"], rows)
    told, untold = profile_table(path, params=AUTO).columns
    assert (told.dtype, told.null_count, told.min, told.max) == ("DATE", 1, "2024-02-01", "2024-03-05")
    assert (untold.dtype, untold.null_count, untold.min) == ("VARCHAR", 0, "01/02/2024")
    types, converted = parquet_of(path, tmp_path)
    assert types == [("told", "DATE"), ("untold", "VARCHAR")]
    assert converted == [
        (dt(2024, 2, 1), "01/02/2024"),
        (dt(2024, 2, 13), "03/04/2024"),
        (None, "NA"),
        (dt(2024, 3, 5), "05/06/2024"),
    ]


def dt(year: int, month: int, day: int) -> Any:
    import datetime

    return datetime.date(year, month, day)


def test_timestamps_with_markers_past_the_sample_are_timestamps(tmp_path: Path) -> None:
    rows = [[f"2024-01-{1 + i % 28:02d} {i % 24:02d}:00:00"] for i in range(30_000)]
    rows[PAST_THE_SAMPLE][0] = "None"
    path = write_csv(tmp_path / "times.csv", ["at"], rows)
    (at,) = profile_table(path, params=AUTO).columns
    assert (at.dtype, at.null_count, at.min, at.max) == (
        "TIMESTAMP",
        1,
        "2024-01-01T00:00:00",
        "2024-01-28T23:00:00",
    )


def utc(day: int, hour: int) -> datetime.datetime:
    return datetime.datetime(2024, 1, day, hour, tzinfo=datetime.UTC)


@pytest.mark.parametrize(
    ("stamps", "marker", "extremes"),
    [
        (["2024-01-02T10:00:00Z", "2024-01-03T11:00:00Z"], "NA", [utc(2, 10), utc(3, 11)]),
        (["2024-01-02 10:00:00+02:00", "2024-01-03 11:00:00+02:00"], "null", [utc(2, 8), utc(3, 9)]),
    ],
    ids=["Z-NA", "offset-null"],
)
def test_timestamps_with_offsets_and_markers_are_utc_timestamps(
    tmp_path: Path, stamps: list[str], marker: str, extremes: list[datetime.datetime]
) -> None:
    """ISO timestamps with `Z` or a UTC offset beside a marker were text (a max of `NA`, no null), where
    the same column without offsets was TIMESTAMP: they are TIMESTAMPTZ in UTC, the marker missing, in a
    profile, a conversion and a query."""
    path = write_csv(tmp_path / "zoned.csv", ["t", "v"], [[stamps[0], 1], [marker, 2], [stamps[1], 3]])
    low, high = extremes
    t, _ = profile_table(path, params=AUTO).columns
    assert (t.dtype, t.null_count, t.min, t.max) == (
        "TIMESTAMP WITH TIME ZONE",
        1,
        low.isoformat(),
        high.isoformat(),
    )
    types, converted = parquet_of(path, tmp_path)
    assert types[0] == ("t", "TIMESTAMP WITH TIME ZONE")
    assert [row[0] for row in converted] == [low, None, high]
    assert answer(path, tmp_path, "SELECT max(t), count(t) FROM data") == [[high.isoformat(), 2]]


def test_a_marker_past_the_sample_of_utc_timestamps_is_missing(tmp_path: Path) -> None:
    """One `NA` past the 20,480 sampled rows of `...Z` timestamps made the column text, its max `NA`."""
    rows: list[list[Any]] = [[f"2024-01-{1 + i % 28:02d}T{i % 24:02d}:00:00Z"] for i in range(30_000)]
    rows[PAST_THE_SAMPLE][0] = "NA"
    path = write_csv(tmp_path / "late.csv", ["seen"], rows)
    (seen,) = profile_table(path, params=AUTO).columns
    assert (seen.dtype, seen.null_count, seen.min, seen.max) == (
        "TIMESTAMP WITH TIME ZONE",
        1,
        "2024-01-01T00:00:00+00:00",
        "2024-01-28T23:00:00+00:00",
    )
    assert answer(path, tmp_path, "SELECT count(seen) FROM data") == [[29_999]]


def test_nan_in_a_column_of_decimals_is_missing(tmp_path: Path) -> None:
    """`nan` and `NaN`, which DuckDB reads as the float NaN (so a mean of NaN, shown as none), are missing
    values as the other markers are; an infinity stays a value (left out of the statistics, a top value)."""
    path = write_csv(tmp_path / "nan.csv", ["x"], [["1.5"], ["nan"], ["NaN"], ["2.5"], ["inf"], ["-1"]])
    (x,) = profile_table(path, params=AUTO).columns
    assert (x.dtype, x.null_count, x.min, x.max) == ("DOUBLE", 2, -1.0, 2.5)
    assert "Infinity" in [top.value for top in x.top_values]
    path = write_csv(tmp_path / "finite.csv", ["x"], [["1.5"], ["nan"], ["2.5"]])
    (x,) = profile_table(path, params=AUTO).columns
    assert (x.null_count, x.min, x.max, x.mean) == (1, 1.5, 2.5, 2.0)
    assert parquet_of(path, tmp_path)[1] == [(1.5,), (None,), (2.5,)]


def test_markers_in_a_gzip_windows_1252_csv(tmp_path: Path) -> None:
    """A Windows-1252 CSV (read from a UTF-8 copy), gzip-compressed, whose markers and curly quotes come
    past the sample: the numbers are integers with a null, the text keeps its signs and its `NA`."""
    rows: list[list[Any]] = [[i % 50, "plain"] for i in range(30_000)]
    rows[PAST_THE_SAMPLE] = ["NA", "\u201cNA\u201d \u20ac"]
    rows[PAST_THE_SAMPLE + 1] = [7, "NA"]
    text = write_csv(tmp_path / "cp1252.csv", ["n", "label"], rows, encoding="cp1252")
    path = tmp_path / "cp1252.csv.gz"
    path.write_bytes(gzip.compress(text.read_bytes()))
    result = profile_table(path, params=AUTO, temp_dir=tmp_path / "spill")
    n, label = result.columns
    assert (n.dtype, n.null_count, n.max) == ("BIGINT", 1, 49)
    assert (label.dtype, label.null_count, label.max) == ("VARCHAR", 0, "\u201cNA\u201d \u20ac")
    types, converted = parquet_of(path, tmp_path)
    assert types == [("n", "BIGINT"), ("label", "VARCHAR")]
    assert converted[PAST_THE_SAMPLE : PAST_THE_SAMPLE + 2] == [(None, "\u201cNA\u201d \u20ac"), (7, "NA")]


def test_ambiguous_dates_in_a_long_table_with_integers_are_text(tmp_path: Path) -> None:
    """Dates whose day and month cannot be told apart (read as text) beside integers, in a table longer
    than the sample: the integers' check read the file with a second `types` argument, which DuckDB
    refused (a binder error, the job failed)."""
    rows = [[f"{1 + i % 12:02d}/{1 + (i * 5) % 12:02d}/2024", i] for i in range(30_000)]
    path = write_csv(tmp_path / "dates.csv", ["day", "n"], rows)
    day, n = profile_table(path, params=AUTO).columns
    assert (day.dtype, n.dtype, n.max) == ("VARCHAR", "BIGINT", 29_999)


def test_markers_in_a_column_whose_header_reads_as_a_value(tmp_path: Path) -> None:
    """A column headed `f` (a boolean's spelling) of `true`, `NA`, `false`: with the markers as NULL the
    sniffer takes the file for one without a header, and its columns were matched by name (`column0`):
    the markers stayed text. Matched by position, the column is a boolean with one missing value."""
    path = tmp_path / "flags.csv"
    path.write_text("f\ntrue\nNA\nfalse\n")
    result = profile_table(path, params=AUTO)
    flag = column(result, "f")
    assert (result.row_count, flag.dtype, flag.null_count) == (3, "BOOLEAN", 1)
