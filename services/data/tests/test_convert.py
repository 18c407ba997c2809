"""Unit tests of `convert_table`: outputs read back with the stdlib (CSV, JSON lines) or DuckDB (Parquet)."""

from __future__ import annotations

import csv
import gzip
import json
from pathlib import Path
from typing import Any

import duckdb
import pytest

from medialens_data.convert import convert_table, output_name
from medialens_data.profile import profile_table
from medialens_shared.contracts import DataConvertParams, DataProfileParams
from medialens_shared.errors import UnsupportedInput, disk_full
from tests.fixtures.disk import small_disk

HEADER = ["id", "price", "name", "day"]
ROWS: list[list[Any]] = [
    [
        i,
        None if i % 4 == 1 else i * 1.25,
        ["Zoë", "a, b", 'say "hi"', "東京"][i % 4],
        f"2024-01-{i % 28 + 1:02d}",
    ]
    for i in range(50)
]


def write_source(path: Path) -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(HEADER)
        writer.writerows(["" if value is None else value for value in row] for row in ROWS)
    return path


def as_text(row: list[Any]) -> list[str]:
    """A row as the CSV writer would spell it."""
    return ["" if value is None else str(value) for value in row]


def test_round_trip_parquet_csv_jsonl_keeps_every_row(tmp_path: Path) -> None:
    """CSV to Parquet to CSV to JSON lines keeps the same rows, in order, with their nulls."""
    source = write_source(tmp_path / "sales.csv")

    parquet = convert_table(source, params=DataConvertParams(to="parquet"), out_dir=tmp_path / "p")
    assert (parquet.path.name, parquet.row_count) == ("sales.parquet", 50)
    assert parquet.size_bytes == parquet.path.stat().st_size
    assert parquet.content_type == "application/vnd.apache.parquet"
    with duckdb.connect() as con:
        stored = con.execute(f"SELECT * FROM read_parquet('{parquet.path}')").fetchall()
        codecs = {
            c
            for (c,) in con.execute(f"SELECT compression FROM parquet_metadata('{parquet.path}')").fetchall()
        }
    assert [as_text([v.isoformat() if hasattr(v, "isoformat") else v for v in row]) for row in stored] == [
        as_text(row) for row in ROWS
    ]
    assert codecs == {"ZSTD"}

    back = convert_table(parquet.path, params=DataConvertParams(to="csv"), out_dir=tmp_path / "c")
    assert (back.path.name, back.row_count, back.content_type) == ("sales.csv", 50, "text/csv; charset=utf-8")
    with back.path.open(newline="", encoding="utf-8") as handle:
        lines = list(csv.reader(handle))
    assert lines[0] == HEADER
    assert lines[1:] == [as_text(row) for row in ROWS]

    lines_out = convert_table(back.path, params=DataConvertParams(to="jsonl"), out_dir=tmp_path / "j")
    assert (lines_out.path.name, lines_out.row_count) == ("sales.jsonl", 50)
    records = [json.loads(line) for line in lines_out.path.read_text(encoding="utf-8").splitlines()]
    assert [list(record) for record in records] == [HEADER] * 50
    assert [list(record.values()) for record in records] == ROWS


def test_gzip_csv_converts(tmp_path: Path) -> None:
    """A gzip-compressed CSV converts to Parquet, its name losing the compression suffix."""
    packed = tmp_path / "sales.csv.gz"
    packed.write_bytes(gzip.compress(write_source(tmp_path / "plain.csv").read_bytes()))
    converted = convert_table(packed, params=DataConvertParams(to="parquet"), out_dir=tmp_path / "out")
    assert (converted.path.name, converted.row_count) == ("sales.parquet", 50)


def test_late_type_change_is_read_with_all_rows(tmp_path: Path) -> None:
    """A text value after 30,000 sampled integers makes the column text instead of failing the copy."""
    path = tmp_path / "late.csv"
    path.write_text("a\n" + "".join(f"{i}\n" for i in range(30_000)) + "oops\n", encoding="utf-8")
    converted = convert_table(path, params=DataConvertParams(to="jsonl"), out_dir=tmp_path / "out")
    assert converted.row_count == 30_001
    assert converted.path.read_text(encoding="utf-8").splitlines()[-1] == '{"a":"oops"}'


def test_a_fraction_past_the_sample_converts_as_it_is(tmp_path: Path) -> None:
    """A price of 19.99 after 30,000 whole ones is 19.99 in the converted file (it was 20: DuckDB's scanner
    rounds a value it casts to the sampled BIGINT)."""
    path = tmp_path / "prices.csv"
    path.write_text("price\n" + "".join(f"{i % 100}\n" for i in range(30_000)) + "19.99\n", encoding="utf-8")
    converted = convert_table(path, params=DataConvertParams(to="jsonl"), out_dir=tmp_path / "out")
    assert converted.row_count == 30_001
    assert converted.path.read_text(encoding="utf-8").splitlines()[-1] == '{"price":19.99}'


def test_ragged_file_fails_naming_the_line(tmp_path: Path) -> None:
    """A CSV whose third line lacks a field fails with UnsupportedInput naming line 3."""
    path = tmp_path / "ragged.csv"
    path.write_text("a,b,c\n1,2,3\n4,5\n6,7,8\n", encoding="utf-8")
    with pytest.raises(UnsupportedInput, match=r"line 3\b"):
        convert_table(path, params=DataConvertParams(to="parquet"), out_dir=tmp_path / "out")


@pytest.mark.parametrize(
    ("name", "to", "expected"),
    [
        ("sales.csv", "parquet", "sales.parquet"),
        ("a.b.jsonl.zst", "csv", "a.b.csv"),
        ("upload.gz", "jsonl", "upload.jsonl"),
    ],
)
def test_output_name_drops_format_and_compression(name: str, to: Any, expected: str) -> None:
    """The output is named after the input's stem, without its compression suffix."""
    assert output_name(name, to) == expected


@pytest.mark.parametrize("job", ["profile", "convert"])
def test_a_table_past_the_memory_limit_fails_as_the_jobs_own_error(tmp_path: Path, job: str) -> None:
    """A table that needs more memory than the job's limit, even spilling, fails UNSUPPORTED_INPUT saying
    so and naming the setting (DuckDB's out-of-memory error escaped: the job failed INTERNAL_ERROR)."""
    table = tmp_path / "wide.parquet"
    with duckdb.connect() as con:  # 2,000 rows of 20 KB text: 2 MB of Parquet, 40 MB of text
        con.execute(
            "COPY (SELECT i, repeat(chr((65 + i % 26)::INTEGER), 20000) || i AS t FROM range(2000) r(i)) "
            f"TO '{table}' (FORMAT parquet)"
        )
    limits: dict[str, Any] = {"memory_limit": "8MB", "temp_dir": tmp_path / "spill"}
    run = {
        "profile": lambda: profile_table(table, params=DataProfileParams(), **limits),
        "convert": lambda: convert_table(
            table, params=DataConvertParams(to="csv"), out_dir=tmp_path / "out", **limits
        ),
    }[job]
    with pytest.raises(UnsupportedInput, match="MEDIALENS_WORKER_TABLE_MEMORY_LIMIT") as caught:
        run()
    assert caught.value.error_code == "UNSUPPORTED_INPUT"
    assert "more memory than a data job may use" in str(caught.value)


def test_a_jsonl_key_first_met_past_the_sample_converts(tmp_path: Path) -> None:
    """A key first met after DuckDB's 20,480 sampled objects is a column of the output, not a failed job."""
    path = tmp_path / "events.jsonl"
    lines = [json.dumps({"a": i}) for i in range(25_000)] + [json.dumps({"a": 25_000, "late": "here"})]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    converted = convert_table(path, params=DataConvertParams(to="csv"), out_dir=tmp_path / "out")
    assert converted.row_count == 25_001
    text = converted.path.read_text(encoding="utf-8").splitlines()
    assert (text[0], text[1], text[-1]) == ("a,late", "0,", "25000,here")


@pytest.mark.parametrize("to", ["parquet", "csv"])
def test_a_full_disk_is_not_blamed_on_the_input(tmp_path: Path, to: str) -> None:
    """A conversion whose output has no room (its directory on a real 256 KB disk) raises the disk's error,
    which the job runner retries (`errors.disk_full`), rather than failing the job as an unreadable input
    (UNSUPPORTED_INPUT: it was the worker's disk, not the table)."""
    path = tmp_path / "big.csv"
    path.write_text(
        "a,b\n" + "".join(f"{i * 7919 % 1_000_003},{i * 104729 % 999_983}\n" for i in range(100_000)),
        encoding="utf-8",
    )
    with small_disk(tmp_path / "disk", 256 * 1024) as disk, pytest.raises(duckdb.Error) as raised:
        convert_table(path, params=DataConvertParams(to=to), out_dir=disk.path / "out")
    assert disk_full(raised.value), raised.value


def test_nested_values_convert_to_csv_as_json_text(tmp_path: Path) -> None:
    """JSON lines of nested objects, lists of objects and nulls, and a Parquet file with a map, convert to a
    CSV whose nested cells are their JSON text, which reads back to the same values: DuckDB's own notation
    (`[{'sku': a, 'q': 2}]`, `[x, NULL]`, `{k=1}`) lost the quotes, so the string "NULL" read as a null and
    a string holding ", " as two values."""
    records: list[dict[str, Any]] = [
        {"id": 1, "items": [{"sku": "a, b", "q": 2}, {"sku": "NULL", "q": None}], "tags": ["x", None]},
        {"id": 2, "items": [], "tags": ['it\'s "quoted"']},
        {"id": 3, "items": None, "tags": None},
    ]
    path = tmp_path / "orders.jsonl"
    path.write_text("".join(json.dumps(record) + "\n" for record in records), encoding="utf-8")
    converted = convert_table(path, params=DataConvertParams(to="csv"), out_dir=tmp_path / "out")
    assert converted.row_count == 3
    with converted.path.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert [
        {
            "id": int(row["id"]),
            "items": json.loads(row["items"]) if row["items"] else None,
            "tags": json.loads(row["tags"]) if row["tags"] else None,
        }
        for row in rows
    ] == records

    parquet = tmp_path / "maps.parquet"
    with duckdb.connect() as con:
        con.execute(
            f"COPY (SELECT 1 AS id, MAP {{'k': 1, 'l': NULL}} AS m, {{'a': [1, 2]}} AS s) TO '{parquet}'"
        )
    out = convert_table(parquet, params=DataConvertParams(to="csv"), out_dir=tmp_path / "out2")
    assert out.path.read_text(encoding="utf-8").splitlines() == [
        "id,m,s",
        '1,"{""k"":1,""l"":null}","{""a"":[1,2]}"',
    ]


def test_integers_past_64_bits_convert_to_parquet_exactly(tmp_path: Path) -> None:
    """DuckDB reads such a CSV column as HUGEINT, which its Parquet writer stores as a DOUBLE:
    123456789012345678901234567 came out as 1.2345678901234568e+26, silently. Written as DECIMAL(38,0)
    they stay exact; where a value has 39 digits, past any Parquet decimal DuckDB writes, the file's
    128-bit columns are written as their text, exact too."""
    big = 123456789012345678901234567
    path = tmp_path / "big.csv"
    path.write_text(f"id,big\n1,{big}\n2,-{big}\n", encoding="utf-8")
    converted = convert_table(path, params=DataConvertParams(to="parquet"), out_dir=tmp_path / "out")
    rows = duckdb.sql(f"SELECT id, big::VARCHAR, typeof(big) FROM '{converted.path}'").fetchall()
    assert rows == [(1, str(big), "DECIMAL(38,0)"), (2, f"-{big}", "DECIMAL(38,0)")]
    widest = 170141183460469231731687303715884105727  # the largest HUGEINT
    path.write_text(f"id,big,bigger\n1,{big},{widest}\n", encoding="utf-8")
    converted = convert_table(path, params=DataConvertParams(to="parquet"), out_dir=tmp_path / "widest")
    rows = duckdb.sql(f"SELECT id, big, bigger FROM '{converted.path}'").fetchall()
    assert rows == [(1, str(big), str(widest))]


def test_json_integers_past_64_bits_convert_exactly_each_beside_its_row(tmp_path: Path) -> None:
    """DuckDB's JSON reader rounded such integers to doubles (ids 10**22 + n all 1e+22 in CSV, Parquet and
    JSON lines): they are read again as their text, each beside the row it came from (the reading is
    joined by position, so 200,000 objects check the order), and written exactly into every format."""
    base = 10**22
    path = tmp_path / "ids.jsonl"
    path.write_text("".join(f'{{"n": {n}, "id": {base + n}}}\n' for n in range(200_000)), encoding="utf-8")
    parquet = convert_table(path, params=DataConvertParams(to="parquet"), out_dir=tmp_path / "parquet")
    rows = duckdb.sql(
        f"SELECT count(*), count(*) FILTER (id - n = {base}), min(typeof(id)) FROM '{parquet.path}'"
    ).fetchall()
    assert rows == [(200_000, 200_000, "DECIMAL(38,0)")]
    as_csv = convert_table(path, params=DataConvertParams(to="csv"), out_dir=tmp_path / "csv")
    lines = as_csv.path.read_text(encoding="utf-8").splitlines()
    assert lines[:3] == ["n,id", f"0,{base}", f"1,{base + 1}"]
    assert all(int(i) - int(n) == base for n, i in (line.split(",") for line in lines[1:]))
    jsonl = convert_table(path, params=DataConvertParams(to="jsonl"), out_dir=tmp_path / "jsonl")
    objects = [json.loads(line) for line in jsonl.path.read_text(encoding="utf-8").splitlines()]
    assert all(o["id"] - o["n"] == base for o in objects)
    assert len(objects) == 200_000


def test_csv_timestamps_with_nanoseconds_convert_with_every_digit(tmp_path: Path) -> None:
    """DuckDB's CSV reader cut them to microseconds (a TIMESTAMP): TIMESTAMP_NS keeps all nine digits in
    Parquet and in CSV."""
    path = tmp_path / "ticks.csv"
    path.write_text(
        "id,t\n1,2024-01-01 10:00:00.123456789\n2,2024-01-01 10:00:00.000000001\n", encoding="utf-8"
    )
    parquet = convert_table(path, params=DataConvertParams(to="parquet"), out_dir=tmp_path / "parquet")
    rows = duckdb.sql(f"SELECT epoch_ns(t), typeof(t) FROM '{parquet.path}' ORDER BY id").fetchall()
    assert rows == [(1704103200123456789, "TIMESTAMP_NS"), (1704103200000000001, "TIMESTAMP_NS")]
    as_csv = convert_table(path, params=DataConvertParams(to="csv"), out_dir=tmp_path / "csv")
    assert as_csv.path.read_text(encoding="utf-8").splitlines()[1:] == [
        "1,2024-01-01 10:00:00.123456789",
        "2,2024-01-01 10:00:00.000000001",
    ]


def test_a_late_type_change_converts_to_parquet_with_all_rows(tmp_path: Path) -> None:
    """The rows past the sample are read again for Parquet as for the other outputs."""
    path = tmp_path / "late.csv"
    path.write_text("a\n" + "".join(f"{i}\n" for i in range(30_000)) + "oops\n", encoding="utf-8")
    converted = convert_table(path, params=DataConvertParams(to="parquet"), out_dir=tmp_path / "out")
    assert converted.row_count == 30_001
    assert duckdb.sql(f"SELECT a FROM '{converted.path}' WHERE a = 'oops'").fetchall() == [("oops",)]


def test_nan_and_infinities_convert_to_json_lines_as_null(tmp_path: Path) -> None:
    """DuckDB's JSON writer wrote `Infinity`, `-Infinity` and `NaN`, which JSON does not have (JavaScript's
    JSON.parse rejects such a line): they are null, as JSON.stringify writes them; finite values stay."""
    path = tmp_path / "floats.csv"
    path.write_text("id,x\n1,1.5\n2,inf\n3,-inf\n4,2.5\n", encoding="utf-8")
    converted = convert_table(path, params=DataConvertParams(to="jsonl"), out_dir=tmp_path / "out")

    def refuse(word: str) -> None:
        raise AssertionError(f"{word} is not JSON")

    rows = [json.loads(line, parse_constant=refuse) for line in converted.path.read_text().splitlines()]
    assert rows == [{"id": 1, "x": 1.5}, {"id": 2, "x": None}, {"id": 3, "x": None}, {"id": 4, "x": 2.5}]


def test_nan_and_infinities_inside_lists_structs_and_maps_convert_to_json_as_null(tmp_path: Path) -> None:
    """DuckDB's JSON writer wrote them as the words `NaN` and `Infinity` at any depth (`[1.5,NaN]`), which no
    JSON reader but Python's takes, in JSON lines and in a CSV's JSON cells: null there too, the rest kept
    (a string "NaN" is a string; a null struct stays null; a 32-bit float as written)."""
    path = tmp_path / "nested.parquet"
    duckdb.sql(
        f"""COPY (
            SELECT 1 AS i, [1.5, 'nan'::DOUBLE, 'inf'::DOUBLE] AS l,
                {{'a b': '-inf'::DOUBLE, 'b': 'NaN', 'c': [0.1::FLOAT, 'nan'::FLOAT]}} AS s,
                MAP {{'k': 'nan'::DOUBLE, 'j': 2.5::DOUBLE}} AS m, [{{'x': 'nan'::DOUBLE}}] AS ls,
                NULL::STRUCT(x DOUBLE) AS n
            UNION ALL SELECT 2, NULL, NULL, NULL, NULL, {{'x': 1.0}}
        ) TO '{path}'"""
    )

    def refuse(word: str) -> None:
        raise AssertionError(f"{word} is not JSON")

    jsonl = convert_table(path, params=DataConvertParams(to="jsonl"), out_dir=tmp_path / "jsonl")
    rows = [json.loads(line, parse_constant=refuse) for line in jsonl.path.read_text().splitlines()]
    assert rows == [
        {
            "i": 1,
            "l": [1.5, None, None],
            "s": {"a b": None, "b": "NaN", "c": [0.1, None]},
            "m": {"k": None, "j": 2.5},
            "ls": [{"x": None}],
            "n": None,
        },
        {"i": 2, "l": None, "s": None, "m": None, "ls": None, "n": {"x": 1.0}},
    ]
    as_csv = convert_table(path, params=DataConvertParams(to="csv"), out_dir=tmp_path / "csv")
    with as_csv.path.open(newline="", encoding="utf-8") as handle:
        first = next(iter(csv.DictReader(handle)))
    assert json.loads(first["s"], parse_constant=refuse) == {"a b": None, "b": "NaN", "c": [0.1, None]}
    assert json.loads(first["ls"], parse_constant=refuse) == [{"x": None}]


def test_32_bit_floats_convert_to_json_lines_as_written(tmp_path: Path) -> None:
    """As in CSV: 0.1, not the double it widens to (0.10000000149011612); NaN null, as for doubles."""
    path = tmp_path / "floats.parquet"
    duckdb.sql(f"COPY (SELECT 0.1::FLOAT AS f UNION ALL SELECT 'nan'::FLOAT) TO '{path}'")
    converted = convert_table(path, params=DataConvertParams(to="jsonl"), out_dir=tmp_path / "out")
    assert converted.path.read_text().splitlines() == ['{"f":0.1}', '{"f":null}']


def test_bytes_convert_to_text_outputs_as_the_rows_give_them(tmp_path: Path) -> None:
    """DuckDB's CSV and JSON writers wrote a BLOB as its own escaped text (`ab\\x00\\xFF`), where the
    query rows and the profile give hexadecimal: both text outputs write hexadecimal, at any depth of
    lists and structs too (found in review), and Parquet the bytes."""
    path = tmp_path / "bytes.parquet"
    duckdb.sql(
        f"COPY (SELECT '\\x61\\x62\\x00\\xFF'::BLOB AS b, ['\\x61\\x00'::BLOB] AS l, "
        f"{{'x': '\\x61'::BLOB}} AS s) TO '{path}'"
    )
    as_csv = convert_table(path, params=DataConvertParams(to="csv"), out_dir=tmp_path / "csv")
    assert as_csv.path.read_text().splitlines() == ["b,l,s", '616200ff,"[""6100""]","{""x"":""61""}"']
    jsonl = convert_table(path, params=DataConvertParams(to="jsonl"), out_dir=tmp_path / "jsonl")
    assert [json.loads(line) for line in jsonl.path.read_text().splitlines()] == [
        {"b": "616200ff", "l": ["6100"], "s": {"x": "61"}}
    ]
    parquet = convert_table(path, params=DataConvertParams(to="parquet"), out_dir=tmp_path / "parquet")
    assert duckdb.sql(f"SELECT b FROM '{parquet.path}'").fetchall() == [(b"ab\x00\xff",)]


def test_a_json_key_of_several_kinds_converts_each_value_as_written(tmp_path: Path) -> None:
    """Into JSON lines each value keeps its kind (a number, a string, a boolean); into CSV each is its
    text, a string without the JSON quotes DuckDB's JSON type gave it (`"A-7"` in the cell)."""
    path = tmp_path / "codes.jsonl"
    path.write_text('{"code": 101}\n{"code": "A-7"}\n{"code": true}\n', encoding="utf-8")
    jsonl = convert_table(path, params=DataConvertParams(to="jsonl"), out_dir=tmp_path / "jsonl")
    assert [json.loads(line) for line in jsonl.path.read_text().splitlines()] == [
        {"code": 101},
        {"code": "A-7"},
        {"code": True},
    ]
    as_csv = convert_table(path, params=DataConvertParams(to="csv"), out_dir=tmp_path / "csv")
    assert as_csv.path.read_text().splitlines() == ["code", "101", "A-7", "true"]
