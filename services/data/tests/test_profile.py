"""Unit tests of `profile_table`: tables written and expected statistics computed with the stdlib."""

from __future__ import annotations

import csv
import datetime as dt
import gzip
import json
import math
import os
import statistics
import time
from collections import Counter
from pathlib import Path
from typing import Any

import duckdb
import pytest

from medialens_data import profile
from medialens_data.convert import convert_table
from medialens_data.profile import profile_table
from medialens_shared.contracts import ColumnProfile, DataConvertParams, DataProfileParams, DataProfileResult
from medialens_shared.errors import InvalidParams, UnsupportedInput

AUTO = DataProfileParams()


def write_csv(path: Path, header: list[str], rows: list[list[Any]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(["" if value is None else value for value in row] for row in rows)
    return path


def write_jsonl(path: Path, records: list[dict[str, Any]]) -> Path:
    with path.open("w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    return path


def expected_top(values: list[Any]) -> list[tuple[Any, int]]:
    counts = Counter(value for value in values if value is not None)
    return sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:10]


def quartiles_cont(values: list[float]) -> list[float]:
    return statistics.quantiles(values, n=4, method="inclusive")


def quantile_disc(values: list[Any], q: float) -> Any:
    ordered = sorted(values)
    return ordered[max(math.ceil(len(ordered) * q) - 1, 0)]


def column(result: DataProfileResult, name: str) -> ColumnProfile:
    return next(col for col in result.columns if col.name == name)


def assert_common(col: ColumnProfile, values: list[Any]) -> None:
    present = [value for value in values if value is not None]
    assert col.null_count == len(values) - len(present)
    assert col.distinct_count == len(set(present))
    assert col.distinct_approx is False
    assert [(top.value, top.count) for top in col.top_values] == expected_top(values)


def assert_numeric(col: ColumnProfile, values: list[Any]) -> None:
    assert_common(col, values)
    present = [value for value in values if value is not None]
    assert col.min == min(present)
    assert col.max == max(present)
    assert col.mean == pytest.approx(statistics.mean(present))
    assert col.std == pytest.approx(statistics.stdev(present))
    assert [col.p25, col.p50, col.p75] == pytest.approx(quartiles_cont(present))


def mixed_rows() -> tuple[list[str], list[list[Any]]]:
    """Integers, floats with gaps, unicode text with quoted separators, dates and booleans."""
    header = ["id", "price", "name", "day", "flag"]
    names = ["Zoë", "a, b", "naïve", "東京", 'say "hi"', "a, b", "Zoë", "a, b"]
    rows = []
    for i in range(40):
        price = None if i % 7 == 3 else round((i * 37 % 101) / 4, 2)
        name = None if i % 11 == 5 else names[i % len(names)]
        day = (dt.date(2024, 1, 1) + dt.timedelta(days=i * 3 % 50)).isoformat()
        rows.append([i * 3 % 17, price, name, day, "true" if i % 3 else "false"])
    return header, rows


def test_mixed_csv_matches_stdlib_statistics(tmp_path: Path) -> None:
    """A CSV of mixed types with nulls, unicode and quoted separators profiles to the stdlib's statistics."""
    header, rows = mixed_rows()
    result = profile_table(write_csv(tmp_path / "mixed.csv", header, rows), params=AUTO)

    assert result.row_count == 40
    assert result.column_count == 5
    assert [(col.name, col.dtype) for col in result.columns] == [
        ("id", "BIGINT"),
        ("price", "DOUBLE"),
        ("name", "VARCHAR"),
        ("day", "DATE"),
        ("flag", "BOOLEAN"),
    ]
    assert_numeric(column(result, "id"), [row[0] for row in rows])
    assert_numeric(column(result, "price"), [row[1] for row in rows])

    names = [row[2] for row in rows]
    name = column(result, "name")
    assert_common(name, names)
    assert name.min == min(n for n in names if n is not None)
    assert name.max == max(n for n in names if n is not None)
    assert (name.mean, name.std, name.p25, name.p50, name.p75) == (None, None, None, None, None)
    assert name.top_values[0].value == "a, b"

    days = [row[3] for row in rows]
    day = column(result, "day")
    assert_common(day, days)
    assert (day.min, day.max) == (min(days), max(days))
    assert [day.p25, day.p50, day.p75] == [quantile_disc(days, q) for q in (0.25, 0.5, 0.75)]
    assert day.mean is None

    flags = [row[4] == "true" for row in rows]
    flag = column(result, "flag")
    assert_common(flag, flags)
    assert (flag.min, flag.max) == (False, True)


def test_result_is_json_serialisable(tmp_path: Path) -> None:
    """The result dumps to strict JSON: dates as ISO strings and no NaN or infinity anywhere."""
    header, rows = mixed_rows()
    result = profile_table(write_csv(tmp_path / "mixed.csv", header, rows), params=AUTO)
    json.dumps(result.model_dump(mode="json"), allow_nan=False)


def test_twenty_digit_ids_profile_exactly_and_can_be_stored(tmp_path: Path) -> None:
    """Integers past 64 bits (20-digit ids: DuckDB reads them as HUGEINT) come as exact decimal text, and
    the result encodes as BSON (a stored result: an int past 2**63 failed the job with INTERNAL_ERROR)."""
    import bson

    path = tmp_path / "ids.csv"
    path.write_text("id\n12345678901234567890\n12345678901234567891\n12345678901234567891\n")
    result = profile_table(path, params=DataProfileParams())
    (column,) = result.columns
    assert (column.dtype, column.min, column.max) == (
        "HUGEINT",
        "12345678901234567890",
        "12345678901234567891",
    )
    assert [(top.value, top.count) for top in column.top_values] == [
        ("12345678901234567891", 2),
        ("12345678901234567890", 1),
    ]
    bson.encode(result.model_dump(mode="json"))


def test_a_json_array_profiles_its_objects(tmp_path: Path) -> None:
    """A JSON array of objects, one line or many, profiles one row an object (it was read as a CSV: no
    rows, junk columns)."""
    path = tmp_path / "export.json"
    path.write_text('[{"id": 1, "name": "x"}, {"id": 2, "name": null},\n {"id": 3, "name": "z"}]')
    result = profile_table(path, params=DataProfileParams())
    assert result.row_count == 3
    assert [(c.name, c.dtype, c.null_count, c.min, c.max) for c in result.columns] == [
        ("id", "BIGINT", 0, 1, 3),
        ("name", "VARCHAR", 1, "x", "z"),
    ]


@pytest.mark.parametrize("text", ["[[1, 2], [3, 4]]", ' \n[ ["a", "b"],\n ["c", "d"]]'])
def test_a_json_array_of_arrays_is_refused_saying_why(tmp_path: Path, text: str) -> None:
    """A JSON array of arrays (rows without column names) fails UNSUPPORTED_INPUT saying what to give: it
    was read as a CSV, and "succeeded" as a table of no rows with columns named `[[1`, `2]`."""
    path = tmp_path / "rows.json"
    path.write_text(text)
    with pytest.raises(UnsupportedInput, match="a JSON array of arrays"):
        profile_table(path, params=DataProfileParams())


def test_a_wide_profile_shows_shorter_texts_to_stay_storable() -> None:
    """Texts are shown at 1,000 characters in a narrow table, shorter in a wide one, so that a profile's
    texts (12 a column, 4 bytes a character at most) stay within SHOWN_TEXT_BUDGET whatever the width:
    450 columns of long CJK texts at 1,000 characters passed MongoDB's 16 MB."""
    from medialens_data.profile import SHOWN_TEXT_BUDGET, shown_chars

    assert shown_chars(1) == shown_chars(100) == 1000
    for columns in (450, 1000, 5000):
        chars = shown_chars(columns)
        assert chars < 1000
        assert columns * 12 * (chars + 1) * 4 <= SHOWN_TEXT_BUDGET * 1.01
    assert shown_chars(10**6) == 16


def test_one_thread_profiles_as_two_do(tmp_path: Path) -> None:
    """With one thread (one lane for the statistics) the profile is the same as with two."""
    header, rows = mixed_rows()
    path = write_csv(tmp_path / "mixed.csv", header, rows)
    assert profile_table(path, params=AUTO, threads=1) == profile_table(path, params=AUTO, threads=2)


def test_nan_and_infinity_stay_out_of_the_statistics_and_of_json(tmp_path: Path) -> None:
    """A CSV's `nan` is a missing value and its `inf` is left out of the statistics (it made the max,
    mean and std null); the profile is JSON without NaN or infinities."""
    path = write_csv(tmp_path / "nan.csv", ["x"], [["1.5"], ["nan"], ["inf"], ["2.5"]])
    col = profile_table(path, params=AUTO).columns[0]
    assert col.dtype == "DOUBLE"
    assert (col.min, col.max, col.mean, col.null_count) == (1.5, 2.5, 2.0, 1)
    assert col.std == pytest.approx(statistics.stdev([1.5, 2.5]))
    json.dumps(col.model_dump(mode="json"), allow_nan=False)


def test_32_bit_floats_show_as_written(tmp_path: Path) -> None:
    """A Parquet FLOAT column's 0.1 showed as 0.10000000149011612, the double it widens to, where the CSV
    output, NumPy and Arrow write 0.1: its values (min, max, top values) are the double of their shortest
    text; its statistics are computed over the stored values."""
    path = tmp_path / "floats.parquet"
    duckdb.sql(f"COPY (SELECT 0.1::FLOAT AS f FROM range(3) UNION ALL SELECT 1.7::FLOAT) TO '{path}'")
    (column,) = profile_table(path, params=DataProfileParams()).columns
    assert (column.dtype, column.min, column.max) == ("FLOAT", 0.1, 1.7)
    assert [(top.value, top.count) for top in column.top_values] == [(0.1, 3), (1.7, 1)]


def test_header_only_file_has_zero_rows_and_no_stats(tmp_path: Path) -> None:
    """A header-only CSV gives zero rows, its column names and types, zero nulls and no statistics."""
    path = tmp_path / "empty.csv"
    path.write_text("a,b,c\n", encoding="utf-8")
    result = profile_table(path, params=AUTO)
    assert (result.row_count, result.column_count) == (0, 3)
    for col, name in zip(result.columns, "abc", strict=True):
        assert col.name == name
        assert col.dtype == "VARCHAR"
        assert col.null_count == 0
        assert col.distinct_count == 0
        assert (col.min, col.max, col.mean, col.std, col.p25, col.p50, col.p75) == (None,) * 7
        assert col.top_values == []


def test_single_column_file(tmp_path: Path) -> None:
    """A one-column CSV (values holding commas, quoted) is one column, not a ragged table."""
    values = ["x, y", "plain", "x, y", "ünïcode", "plain", "x, y"]
    path = write_csv(tmp_path / "one.csv", ["label, full"], [[value] for value in values])
    result = profile_table(path, params=AUTO)
    assert (result.row_count, result.column_count) == (6, 1)
    col = result.columns[0]
    assert (col.name, col.dtype) == ("label, full", "VARCHAR")
    assert_common(col, values)


def test_top_values_keep_ten_and_break_ties_by_value(tmp_path: Path) -> None:
    """Top values are the ten most frequent, equal counts ordered by value ascending."""
    values = [n for n in range(15) for _ in range(1 + (n % 3))]
    path = write_csv(tmp_path / "top.csv", ["n"], [[value] for value in values])
    col = profile_table(path, params=AUTO).columns[0]
    assert len(col.top_values) == 10
    assert [(top.value, top.count) for top in col.top_values] == expected_top(values)


def test_wide_file_finishes_quickly(tmp_path: Path) -> None:
    """A 500-column, 5-row CSV is profiled column by column within a few seconds."""
    header = [f"c{i}" for i in range(500)]
    rows = [[(r * 7 + i) % 5 for i in range(500)] for r in range(5)]
    path = write_csv(tmp_path / "wide.csv", header, rows)
    started = time.monotonic()
    result = profile_table(path, params=AUTO)
    assert time.monotonic() - started < 20
    assert (result.row_count, result.column_count) == (5, 500)
    for i in (0, 123, 499):
        assert_numeric(column(result, f"c{i}"), [row[i] for row in rows])


def test_ragged_file_fails_naming_the_line(tmp_path: Path) -> None:
    """A CSV whose third line has a missing field fails with UnsupportedInput naming line 3."""
    path = tmp_path / "ragged.csv"
    path.write_text("a,b,c\n1,2,3\n4,5\n6,7,8\n", encoding="utf-8")
    with pytest.raises(UnsupportedInput, match=r"line 3\b.*expected 3 fields, found 2"):
        profile_table(path, params=AUTO)


def test_ragged_line_beyond_the_sniff_sample_fails(tmp_path: Path) -> None:
    """A row with an extra field far past DuckDB's sniffing sample still fails, naming its line."""
    rows = [[i, i * 2, f"x{i}"] for i in range(30_000)]
    path = write_csv(tmp_path / "late.csv", ["a", "b", "c"], rows)
    with path.open("a", encoding="utf-8") as handle:
        handle.write("1,2,3,4\r\n")  # csv.writer ends lines with CRLF
    with pytest.raises(UnsupportedInput, match=r"line 30002\b"):
        profile_table(path, params=AUTO)


def test_a_ragged_line_that_speaks_of_a_full_disk_is_still_the_inputs_fault(tmp_path: Path) -> None:
    """A log whose ragged line says "No space left on device" fails naming the line (DuckDB quotes it in
    its error: read as a full disk, the job was retried and failed RETRIES_EXHAUSTED)."""
    rows = [[i, f"ok {i}"] for i in range(30_000)]
    path = write_csv(tmp_path / "log.csv", ["n", "message"], rows)
    with path.open("a", encoding="utf-8") as handle:
        handle.write("30000,write failed: No space left on device,extra\r\n")
    with pytest.raises(UnsupportedInput, match=r"line 30002\b"):
        profile_table(path, params=AUTO)


def test_late_type_change_widens_the_column(tmp_path: Path) -> None:
    """A text value after the sampled integers makes the column VARCHAR rather than failing."""
    rows: list[list[Any]] = [[i] for i in range(30_000)] + [["oops"]]
    path = write_csv(tmp_path / "late_type.csv", ["a"], rows)
    result = profile_table(path, params=AUTO)
    assert result.row_count == 30_001
    assert result.columns[0].dtype == "VARCHAR"


@pytest.mark.parametrize(
    ("late", "dtype", "extremes"),
    [
        ("-1.5", "DOUBLE", (-1.5, 9999)),
        ("0070000", "VARCHAR", ("0", "9999")),  # a code whose zeros count
        ("2024-03-01 13:45:00", "TIMESTAMP", ("2024-01-01T00:00:00", "2024-03-01T13:45:00")),
    ],
    ids=["fraction", "leading-zeros", "time-in-dates"],
)
def test_a_value_past_the_sample_that_its_type_would_change_changes_the_type(
    tmp_path: Path, late: str, dtype: str, extremes: tuple[Any, Any]
) -> None:
    """A value past DuckDB's 20,480 sampled rows that its column's sampled type would silently change (the
    scanner casts more loosely than the sniffer: DuckDB issue 25824) makes the column a type that holds it:
    1.5 after integers read 2, a zero-padded code 70000, a time after dates was dropped."""
    dates = late.startswith("2024")
    rows = [[f"2024-01-{1 + i % 28:02d}" if dates else str(i % 10_000)] for i in range(30_000)] + [[late]]
    path = write_csv(tmp_path / "late.csv", ["a"], rows)
    result = profile_table(path, params=AUTO)
    (a,) = result.columns
    assert (result.row_count, a.dtype, (a.min, a.max)) == (30_001, dtype, extremes)


def test_a_csv_whose_later_values_fit_their_sampled_types_keeps_them(tmp_path: Path) -> None:
    """Integers and dates all through the file stay BIGINT and DATE (the check reads them again, and finds
    every text is its value's own)."""
    rows = [[str(i - 15_000), f"2024-01-{1 + i % 28:02d}"] for i in range(30_000)]
    path = write_csv(tmp_path / "fits.csv", ["n", "d"], rows)
    result = profile_table(path, params=AUTO)
    assert [(c.name, c.dtype) for c in result.columns] == [("n", "BIGINT"), ("d", "DATE")]
    assert (result.columns[0].min, result.columns[0].max) == (-15_000, 14_999)


def test_binary_garbage_is_unsupported(tmp_path: Path) -> None:
    """Random bytes are not a table: UnsupportedInput."""
    path = tmp_path / "garbage.bin"
    path.write_bytes(os.urandom(4096))
    with pytest.raises(UnsupportedInput):
        profile_table(path, params=AUTO)


def test_binary_garbage_without_nul_bytes_is_unsupported(tmp_path: Path) -> None:
    """Undecodable bytes without NULs reach DuckDB, whose refusal becomes UnsupportedInput."""
    path = tmp_path / "garbage.bin"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(1, 256)) * 20)
    with pytest.raises(UnsupportedInput, match="not a readable csv table"):
        profile_table(path, params=AUTO)


def test_jsonl_is_detected_and_profiled(tmp_path: Path) -> None:
    """JSON lines are detected by their leading brace and profiled like any table, missing keys as nulls."""
    records: list[dict[str, Any]] = [
        {"n": i % 4, "s": f"é{i % 3}", "x": i / 2} if i % 5 else {"n": i % 4, "s": None} for i in range(23)
    ]
    result = profile_table(write_jsonl(tmp_path / "rows.data", records), params=AUTO)
    assert (result.row_count, result.column_count) == (23, 3)
    assert [(c.name, c.dtype) for c in result.columns] == [("n", "BIGINT"), ("s", "VARCHAR"), ("x", "DOUBLE")]
    assert_numeric(column(result, "n"), [r["n"] for r in records])
    assert_common(column(result, "s"), [r["s"] for r in records])
    assert_numeric(column(result, "x"), [r.get("x") for r in records])


def test_parquet_is_detected_and_profiled(tmp_path: Path) -> None:
    """A Parquet file written by DuckDB's COPY is detected by its magic and profiled."""
    duckdb = pytest.importorskip("duckdb")
    header, rows = mixed_rows()
    source = write_csv(tmp_path / "mixed.csv", header, rows)
    target = tmp_path / "mixed.bin"
    with duckdb.connect() as con:
        con.execute(f"COPY (SELECT * FROM read_csv('{source}')) TO '{target}' (FORMAT parquet)")
    result = profile_table(target, params=AUTO)
    assert (result.row_count, result.column_count) == (40, 5)
    assert column(result, "day").dtype == "DATE"
    assert_numeric(column(result, "id"), [row[0] for row in rows])
    assert_numeric(column(result, "price"), [row[1] for row in rows])
    assert_common(column(result, "name"), [row[2] for row in rows])


def test_gzip_csv_is_detected_and_profiled(tmp_path: Path) -> None:
    """A gzip-compressed CSV without a telling file name is decompressed and profiled."""
    header, rows = mixed_rows()
    plain = write_csv(tmp_path / "mixed.csv", header, rows)
    packed = tmp_path / "upload"
    packed.write_bytes(gzip.compress(plain.read_bytes()))
    result = profile_table(packed, params=AUTO)
    assert (result.row_count, result.column_count) == (40, 5)
    assert_numeric(column(result, "price"), [row[1] for row in rows])
    assert_common(column(result, "name"), [row[2] for row in rows])


def test_gzip_jsonl_is_detected(tmp_path: Path) -> None:
    """A gzip-compressed JSON-lines file is recognised as JSON lines by peeking inside the stream."""
    records = [{"k": i % 3} for i in range(9)]
    packed = tmp_path / "upload"
    packed.write_bytes(gzip.compress(write_jsonl(tmp_path / "r.jsonl", records).read_bytes()))
    result = profile_table(packed, params=AUTO)
    assert (result.row_count, result.column_count) == (9, 1)
    assert_numeric(result.columns[0], [r["k"] for r in records])


def test_forced_parquet_on_csv_is_unsupported(tmp_path: Path) -> None:
    """Forcing format=parquet on a CSV fails with UnsupportedInput that names the format."""
    header, rows = mixed_rows()
    path = write_csv(tmp_path / "mixed.csv", header, rows)
    with pytest.raises(UnsupportedInput, match="not a readable parquet table"):
        profile_table(path, params=DataProfileParams(format="parquet"))


def test_error_does_not_leak_the_directory(tmp_path: Path) -> None:
    """Error messages name the file but not the directory it is stored in."""
    path = tmp_path / "mixed.csv"
    path.write_text("a,b\n1,2\n", encoding="utf-8")
    with pytest.raises(UnsupportedInput) as caught:
        profile_table(path, params=DataProfileParams(format="parquet"))
    assert str(tmp_path) not in caught.value.message


def test_bad_settings_are_invalid_params(tmp_path: Path) -> None:
    """A nonsense memory limit or thread count raises InvalidParams."""
    path = write_csv(tmp_path / "t.csv", ["a"], [[1]])
    with pytest.raises(InvalidParams):
        profile_table(path, params=AUTO, memory_limit="lots")
    with pytest.raises(InvalidParams):
        profile_table(path, params=AUTO, threads=0)


def test_connection_reads_nothing_but_the_input(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The DuckDB connection is locked to the input file: reading another path is refused."""
    duckdb = pytest.importorskip("duckdb")
    from medialens_data import profile as module

    other = write_csv(tmp_path / "secret.csv", ["s"], [["x"]])
    path = write_csv(tmp_path / "t.csv", ["a"], [[1]])
    seen: list[Any] = []
    real_connect = module.connect

    def spy(*args: Any, **kwargs: Any) -> Any:
        con = real_connect(*args, **kwargs)
        seen.append(con)
        with pytest.raises(duckdb.PermissionException):
            con.execute(f"SELECT * FROM read_csv('{other}')")
        with pytest.raises(duckdb.InvalidInputException):
            con.execute("SET enable_external_access = true")
        return con

    monkeypatch.setattr(module, "connect", spy)
    assert profile_table(path, params=AUTO, temp_dir=tmp_path / "spill").row_count == 1
    assert len(seen) == 1


# --- long tables, approximate distinct counts, progress and cancellation ------------------------------

LONG_ROWS = 5_000_000


@pytest.fixture(scope="module")
def long_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """5,000,000 rows of three columns, written by DuckDB itself in about a second."""
    duckdb = pytest.importorskip("duckdb")
    path = tmp_path_factory.mktemp("long") / "long.csv"
    with duckdb.connect() as con:
        con.execute(
            "COPY (SELECT range AS i, CASE WHEN range % 10 = 0 THEN NULL ELSE range % 7 END AS m, "
            f"(range % 1000) / 8 AS x FROM range({LONG_ROWS})) TO '{path}' (HEADER)"
        )
    return path


# The slowest unit test of the data service (~6-20 s on two busy cores): 5 million rows under 256 MB.
def test_long_file_is_profiled_in_bounded_memory_with_progress(long_csv: Path, tmp_path: Path) -> None:
    """Five million rows profile under a 256 MB limit to closed-form statistics, reporting rows read."""
    notes: list[tuple[float, str]] = []
    result = profile_table(
        long_csv,
        params=AUTO,
        memory_limit="256MB",
        temp_dir=tmp_path / "spill",
        report=lambda fraction, message: notes.append((fraction, message)),
    )
    n = LONG_ROWS
    assert (result.row_count, result.column_count) == (n, 3)

    i = column(result, "i")
    assert (i.min, i.max, i.null_count) == (0, n - 1, 0)
    assert i.mean == pytest.approx((n - 1) / 2)
    assert i.std == pytest.approx(math.sqrt(n * (n + 1) / 12))
    assert i.p50 == pytest.approx((n - 1) / 2)
    # Five million distinct values are past the exact limit: a HyperLogLog estimate, flagged as such.
    assert i.distinct_approx is True
    assert i.distinct_count == pytest.approx(n, rel=0.05)

    m = column(result, "m")
    counts = Counter(k % 7 for k in range(n) if k % 10)
    assert m.null_count == n // 10
    assert (m.distinct_count, m.distinct_approx) == (7, False)
    assert [(t.value, t.count) for t in m.top_values] == sorted(
        counts.items(), key=lambda kv: (-kv[1], kv[0])
    )

    x = column(result, "x")
    assert (x.min, x.max) == (0.0, 999 / 8)
    assert x.mean == pytest.approx(statistics.mean(range(1000)) / 8)
    assert x.distinct_count == 1000

    assert any(message.startswith("read ") and " of ~" in message for _, message in notes)
    assert any(message.startswith("profiled ") for _, message in notes)
    fractions = [fraction for fraction, _ in notes]
    assert fractions == sorted(fractions)


def test_distinct_count_is_approximate_past_the_limit(tmp_path: Path) -> None:
    """Past a (small) exact limit the distinct count is estimated and flagged; top values stay exact."""
    rows = [["hot", i % 3] for i in range(500)] + [[f"v{i}", i % 3] for i in range(3000)]
    result = profile_table(
        write_csv(tmp_path / "d.csv", ["s", "k"], rows), params=AUTO, distinct_exact_limit=100
    )
    s = column(result, "s")
    assert s.distinct_approx is True
    assert s.distinct_count == pytest.approx(3001, rel=0.05)
    assert (s.top_values[0].value, s.top_values[0].count) == ("hot", 500)
    assert all(top.count == 1 for top in s.top_values[1:])
    k = column(result, "k")
    assert (k.distinct_count, k.distinct_approx) == (3, False)


def test_cancel_interrupts_a_running_profile(long_csv: Path) -> None:
    """A cancel asked for while the table is being read stops the profile within two seconds.

    The engine's watcher reads `cancelled` only while the profile runs, so the first look answers yes: a
    later one could come after a quiet machine had finished the five million rows."""
    from medialens_shared.errors import JobCancelled

    asked: list[float] = []

    def cancelled() -> bool:
        if not asked:
            asked.append(time.monotonic())
        return True

    with pytest.raises(JobCancelled):
        profile_table(long_csv, params=AUTO, cancelled=cancelled)
    assert time.monotonic() - asked[0] < 2.0


def test_report_raising_cancelled_interrupts_the_profile(long_csv: Path) -> None:
    """A report callback that raises JobCancelled (as JobContext.report does) stops the profile."""
    from medialens_shared.errors import JobCancelled

    started = time.monotonic()

    def report(fraction: float, message: str) -> None:
        if time.monotonic() - started > 0.5:
            raise JobCancelled("cancelled on request")

    with pytest.raises(JobCancelled):
        profile_table(long_csv, params=AUTO, report=report)
    assert time.monotonic() - started < 2.5


def test_zstd_csv_is_detected_and_profiled(tmp_path: Path) -> None:
    """A zstd-compressed CSV (written by DuckDB) is decompressed and profiled."""
    duckdb = pytest.importorskip("duckdb")
    header, rows = mixed_rows()
    plain = write_csv(tmp_path / "mixed.csv", header, rows)
    packed = tmp_path / "upload"
    with duckdb.connect() as con:
        con.execute(f"COPY (FROM read_csv('{plain}')) TO '{packed}' (FORMAT csv, HEADER, COMPRESSION zstd)")
    assert packed.read_bytes()[:4] == b"\x28\xb5\x2f\xfd"
    result = profile_table(packed, params=AUTO)
    assert (result.row_count, result.column_count) == (40, 5)
    assert_numeric(column(result, "price"), [row[1] for row in rows])
    assert_common(column(result, "name"), [row[2] for row in rows])


def test_long_texts_are_shown_cut_so_a_profile_stays_storable(tmp_path: Path) -> None:
    """A column of long texts (here 60 rows of 400 KB: a 24 MB CSV whose profile was past MongoDB's 16 MB
    for a stored result) shows its min, max and top values cut at SHOWN_TEXT_CHARS, marked with "…";
    short texts and counts are untouched."""
    import bson

    from medialens_data.profile import SHOWN_TEXT_CHARS

    path = tmp_path / "long.csv"
    with path.open("w", encoding="utf-8") as handle:
        handle.write("id,body,tag\n")
        for i in range(60):
            handle.write(f"{i},{chr(65 + i % 26) * 400_000},t{i % 3}\n")
    result = profile_table(path, params=DataProfileParams())
    body, tag = result.columns[1], result.columns[2]
    assert body.min == "A" * SHOWN_TEXT_CHARS + "…"
    assert body.max == "Z" * SHOWN_TEXT_CHARS + "…"
    assert {top.value for top in body.top_values} <= {chr(65 + i) * SHOWN_TEXT_CHARS + "…" for i in range(26)}
    assert (body.distinct_count, tag.min, tag.max) == (26, "t0", "t2")
    assert len(bson.encode(result.model_dump(mode="json"))) < 100_000


def write_parquet(path: Path, select: str) -> Path:
    """The rows of DuckDB's `select` as a Parquet file."""
    import duckdb

    with duckdb.connect() as con:
        con.execute(f"COPY ({select}) TO '{path}' (FORMAT parquet)")
    return path


def test_nanoseconds_and_intervals_are_shown_exactly(tmp_path: Path) -> None:
    """Nanosecond timestamps and times (pandas writes them) keep their nine decimals, ordered as values,
    and an interval is DuckDB's text, a month a month: they came through Python, which cut the
    nanoseconds (one before 1970 read as 1970 itself) and counted a month as 30 days."""
    path = write_parquet(
        tmp_path / "times.parquet",
        "SELECT * FROM (VALUES "
        "(TIMESTAMP_NS '2024-01-01 12:00:00.123456789', TIME_NS '01:02:03.000000001', "
        " TIMESTAMPTZ_NS '2024-01-01 12:00:00.123456789+00', INTERVAL '1 month 2 days 03:04:05.5'), "
        "(TIMESTAMP_NS '1969-12-31 23:59:59.999999999', TIME_NS '01:02:03.000000002', "
        " TIMESTAMPTZ_NS '1969-12-31 23:59:59.999999999+00', INTERVAL '1 day'), "
        "(TIMESTAMP_NS '2024-01-01 12:00:00.123456788', NULL, NULL, INTERVAL '1 day')"
        ") v(ts, tm, tz, iv)",
    )
    result = profile_table(path, params=AUTO)
    ts, tm, tz, iv = result.columns
    dtypes = [ts.dtype, tm.dtype, tz.dtype, iv.dtype]
    assert dtypes == ["TIMESTAMP_NS", "TIME_NS", "TIMESTAMPTZ_NS", "INTERVAL"]
    assert (ts.min, ts.max) == ("1969-12-31T23:59:59.999999999", "2024-01-01T12:00:00.123456789")
    assert [ts.p25, ts.p50, ts.p75] == [
        "1969-12-31T23:59:59.999999999",
        "2024-01-01T12:00:00.123456788",
        "2024-01-01T12:00:00.123456789",
    ]
    assert [top.value for top in ts.top_values] == [ts.min, ts.p50, ts.max]  # ties by value
    assert (tm.min, tm.max, tm.distinct_count) == ("01:02:03.000000001", "01:02:03.000000002", 2)
    assert (tz.min, tz.max) == ("1969-12-31T23:59:59.999999999+00:00", "2024-01-01T12:00:00.123456789+00:00")
    assert (iv.min, iv.max) == ("1 day", "1 month 2 days 03:04:05.5")
    top = [(top.value, top.count) for top in iv.top_values]
    assert top == [("1 day", 2), ("1 month 2 days 03:04:05.5", 1)]


def test_decimals_a_float_would_round_are_exact_text(tmp_path: Path) -> None:
    """A DECIMAL(38,2) amount shows as a number when a float holds it exactly, else as its exact text: its
    minimum, maximum and top values came as floats, 12345678901234567.89 as 1.2345678901234568e16."""
    path = write_parquet(
        tmp_path / "amounts.parquet",
        "SELECT v::DECIMAL(38,2) AS amount FROM (VALUES ('12345678901234567.89'), ('0.10'), ('-1.01')) t(v)",
    )
    amount = profile_table(path, params=AUTO).columns[0]
    assert (amount.min, amount.max) == (-1.01, "12345678901234567.89")
    assert [top.value for top in amount.top_values] == [-1.01, 0.1, "12345678901234567.89"]
    assert amount.mean == pytest.approx(12345678901234567.89 / 3)


def test_jsonl_keys_and_kinds_first_met_past_the_sample_are_read(tmp_path: Path) -> None:
    """A key first met after DuckDB's 20,480 sampled objects, or text where numbers were, makes the types
    be guessed from every object instead of failing the job as not a readable table."""
    records: list[dict[str, Any]] = [{"a": i, "s": {"x": i}} for i in range(25_000)]
    records += [{"a": 1, "s": {"x": 1, "y": "new"}, "late": "here"}, {"a": "text", "s": {"x": 2}}]
    result = profile_table(write_jsonl(tmp_path / "events.jsonl", records), params=AUTO)
    assert result.row_count == 25_002
    assert [c.name for c in result.columns] == ["a", "s", "late"]
    late = column(result, "late")
    assert (late.null_count, late.top_values[0].value) == (25_001, "here")
    assert column(result, "s").dtype == "STRUCT(x BIGINT, y VARCHAR)"


def test_jsonl_values_past_the_sample_that_their_types_would_change_change_the_types(tmp_path: Path) -> None:
    """Past DuckDB's 20,480 sampled objects, 1.5 among integers read 2, `true` among floats 1.0 and 7
    among booleans true, without a word (DuckDB issue 25786): now their columns' types are guessed from
    every object, and no value is changed; columns whose values all fit keep their sampled types."""
    records: list[dict[str, Any]] = [{"n": i, "x": i / 4, "ok": i % 2 == 0, "same": i} for i in range(25_000)]
    records.append({"n": -1.5, "x": True, "ok": 7, "same": 3})
    result = profile_table(write_jsonl(tmp_path / "late.jsonl", records), params=AUTO)
    n, x, ok, same = result.columns
    assert (n.dtype, n.min) == ("DOUBLE", -1.5)
    assert x.dtype != "DOUBLE"  # a mixed column: DuckDB's JSON type
    assert ok.dtype != "BOOLEAN"
    assert (same.dtype, same.min, same.max) == ("BIGINT", 0, 24_999)


def test_a_jsonl_of_many_or_rare_keys_has_a_column_a_key(tmp_path: Path) -> None:
    """Objects of 300 keys, or whose keys are each in few objects, make a column a key: DuckDB read each
    such file as one MAP column named `json`."""
    wide = [{f"k{i}": row * i for i in range(300)} for row in range(3)]
    result = profile_table(write_jsonl(tmp_path / "wide.jsonl", wide), params=AUTO)
    assert (result.row_count, result.column_count) == (3, 300)
    assert_numeric(column(result, "k299"), [row["k299"] for row in wide])
    sparse = [{"id": i, f"k{i}": i} for i in range(50)]
    result = profile_table(write_jsonl(tmp_path / "sparse.jsonl", sparse), params=AUTO)
    assert result.column_count == 51
    assert (column(result, "k7").null_count, column(result, "k7").max) == (49, 7)


def test_json_objects_keyed_by_ids_stay_one_map_column(tmp_path: Path) -> None:
    """Objects with a key a row (scores keyed by user id: 5,000 keys) stay DuckDB's one MAP column `json`
    (read a column a key, the profile ran out of memory), the whole profile small."""
    records = [{"id": i, "scores": 1, f"u{i}": i} for i in range(5_000)]
    result = profile_table(write_jsonl(tmp_path / "keyed.jsonl", records), params=AUTO)
    assert (result.row_count, result.column_count) == (5_000, 1)
    (folded,) = result.columns
    assert folded.name == "json"
    assert folded.dtype.startswith("MAP(")


def test_a_wide_parquet_file_profiles_as_it_does_in_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Parquet file past `WIDE_COLUMNS` is read into a table before it is profiled (binding a view of it
    for each statistics query made 1,500 columns of 3 rows take 30 s): the profile is the one made in
    place."""
    columns = ", ".join(
        f"range * {i} AS n{i}, 'v' || (range % {i + 2}) AS s{i}, DATE '2024-01-01' + range::INTEGER AS d{i}"
        for i in range(80)
    )
    path = write_parquet(tmp_path / "wide.parquet", f"SELECT {columns} FROM range(500)")
    monkeypatch.setattr(profile, "WIDE_COLUMNS", 10_000)
    in_place = profile_table(path, params=AUTO)
    monkeypatch.setattr(profile, "WIDE_COLUMNS", 200)
    read_whole = profile_table(path, params=AUTO)
    assert read_whole.column_count == 240
    assert read_whole == in_place


def test_a_wide_parquet_file_large_beside_the_memory_limit_is_profiled_in_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A wide Parquet file that would take more than its share of the job's memory as a table is profiled in
    place (read into a table, 1,000 columns of 20,000 rows ran out of a 512 MB limit): here 240 columns of
    40,000 rows under a 64 MB limit, where reading it into a table fails."""
    columns = ", ".join(f"range * {i} + {i} AS n{i}" for i in range(240))
    path = write_parquet(tmp_path / "wide.parquet", f"SELECT {columns} FROM range(40000)")
    result = profile_table(path, params=AUTO, memory_limit="64MB")
    assert (result.row_count, result.column_count) == (40_000, 240)
    assert (result.columns[239].min, result.columns[239].max) == (239, 39_999 * 239 + 239)


@pytest.mark.parametrize(
    ("dates", "dtype", "first"),
    [
        # Every value reads day first and month first, differently: no order can be told, so text.
        (["01/02/2024", "03/04/2024", "05/06/2024"], "VARCHAR", "01/02/2024"),
        (["01/02/24", "03/04/24", "05/06/24"], "VARCHAR", "01/02/24"),  # DuckDB read 2001-02-24
        (["01.02.2024 10:30:00", "03.04.2024 11:00:00"], "VARCHAR", "01.02.2024 10:30:00"),
        # A value tells the order: dates, the right way round.
        (["01/02/2024", "13/02/2024", "05/03/2024"], "DATE", "2024-02-01"),
        (["01/02/2024", "02/13/2024", "03/05/2024"], "DATE", "2024-01-02"),
        # Both orders read every value the same.
        (["01/01/2024", "02/02/2024"], "DATE", "2024-01-01"),
        (["2024-01-02", "2024-03-04"], "DATE", "2024-01-02"),
    ],
)
def test_dates_whose_day_and_month_cannot_be_told_apart_stay_text(
    tmp_path: Path, dates: list[str], dtype: str, first: str
) -> None:
    """A CSV of dates that read as well day first as month first is not read in the order DuckDB's sniffer
    happens to try first (an American 01/02/2024, January 2nd, read as February 1st without a word): the
    column stays text, as written; a value such as 13/02/2024 tells the order, and the dates are read so."""
    path = write_csv(tmp_path / "dates.csv", ["day", "n"], [[day, i] for i, day in enumerate(dates)])
    col = column(profile_table(path, params=AUTO), "day")
    assert (col.dtype, col.top_values[0].value if dtype == "VARCHAR" else col.min) == (dtype, first)


def test_dates_told_apart_only_past_the_sample_are_read_the_right_way(tmp_path: Path) -> None:
    """Day-first dates whose first 30,000 rows read the same in both orders (day and month alike) and only a
    later row tells the order (25/12/2024) are dates, read day first; without that row they are text."""
    days = [f"{1 + i % 12:02d}/{1 + i % 12:02d}/2024" for i in range(30_000)] + ["01/02/2024"]
    told = write_csv(tmp_path / "told.csv", ["day"], [[day] for day in [*days, "25/12/2024"]])
    col = column(profile_table(told, params=AUTO), "day")
    assert (col.dtype, col.min, col.max, col.distinct_count) == ("DATE", "2024-01-01", "2024-12-25", 14)
    converted = convert_table(told, params=DataConvertParams(to="csv"), out_dir=tmp_path / "out")
    assert converted.path.read_text(encoding="utf-8").splitlines()[-2:] == ["2024-02-01", "2024-12-25"]
    untold = write_csv(tmp_path / "untold.csv", ["day"], [[day] for day in days])
    assert column(profile_table(untold, params=AUTO), "day").dtype == "VARCHAR"


def test_infinite_dates_profile_as_infinity(tmp_path: Path) -> None:
    """A date column holding `infinity` (open-ended validities, as PostgreSQL exports them) has it as its
    max and among its top values: it read 9999-12-31, a real date."""
    path = write_csv(tmp_path / "validity.csv", ["valid_to"], [["infinity"], ["2024-05-06"], ["infinity"]])
    result = profile_table(path, params=AUTO)
    valid_to = column(result, "valid_to")
    assert (valid_to.dtype, valid_to.min, valid_to.max) == ("DATE", "2024-05-06", "infinity")
    assert [(top.value, top.count) for top in valid_to.top_values] == [("infinity", 2), ("2024-05-06", 1)]


def test_a_float_columns_nan_and_infinities_are_left_out_of_its_statistics(tmp_path: Path) -> None:
    """One NaN in a float column (JSON lines here) made its max, mean, std and upper quartile null and
    its median wrong (2 and NaN's place averaged); an infinity did the same. The statistics are the finite
    values' (Python's over them), and NaN and the infinities show in the top values by name, not null."""
    path = tmp_path / "floats.jsonl"
    path.write_text(
        "".join(f'{{"x": {v}}}\n' for v in ("1.0", "2.0", "NaN", "4.0", "null", "1e400", "-1e400")),
        encoding="utf-8",
    )
    (column,) = profile_table(path, params=DataProfileParams()).columns
    finite = [1.0, 2.0, 4.0]
    assert (column.min, column.max, column.p50) == (1.0, 4.0, 2.0)
    assert column.mean == pytest.approx(statistics.mean(finite))
    assert column.std == pytest.approx(statistics.stdev(finite))
    assert column.null_count == 1
    assert {top.value for top in column.top_values} == {1.0, 2.0, 4.0, "NaN", "Infinity", "-Infinity"}


def test_nested_values_profile_as_exactly_as_top_level_ones(tmp_path: Path) -> None:
    """A column of lists or structs of timestamps or 32-bit floats shows its top values, min and max as a
    column of them alone would: `[TIMESTAMP 'infinity']` showed as 9999-12-31T23:59:59.999999, a nested
    TIMESTAMP_NS of 1969 as 1970-01-01T00:00:00, a nested 0.1 FLOAT as 0.10000000149011612."""
    path = tmp_path / "nested.parquet"
    with duckdb.connect() as con:
        con.execute(
            "COPY (SELECT [TIMESTAMP 'infinity', TIMESTAMP '2024-01-02 03:04:05'] AS ts, [0.1::FLOAT] AS f, "
            "{'at': TIMESTAMP_NS '1969-12-31 23:59:59.999999999'} AS s FROM range(3)) "
            f"TO '{path}' (FORMAT parquet)"
        )
    result = profile_table(path, params=DataProfileParams())
    shown = {c.name: (c.min, c.max, [(top.value, top.count) for top in c.top_values]) for c in result.columns}
    ts, at = ["infinity", "2024-01-02T03:04:05"], {"at": "1969-12-31T23:59:59.999999999"}
    assert shown == {"ts": (ts, ts, [(ts, 3)]), "f": ([0.1], [0.1], [([0.1], 3)]), "s": (at, at, [(at, 3)])}
