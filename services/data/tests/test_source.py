"""Unit tests of `inspect`: formats and compression detected by content, and row counts estimated."""

from __future__ import annotations

import gzip
import re
from pathlib import Path
from typing import Literal

import pytest

from medialens_data.profile import profile_table
from medialens_data.source import inspect
from medialens_shared.contracts import DataProfileParams
from medialens_shared.errors import InputNotFound, UnsupportedInput


def write_rows(path: Path, rows: int) -> bytes:
    text = "id,label\n" + "".join(f"{i},label number {i % 97}\n" for i in range(rows))
    path.write_text(text, encoding="utf-8")
    return text.encode()


def test_plain_csv_row_estimate_is_close(tmp_path: Path) -> None:
    """A CSV larger than the sample gets a row estimate within 10 % of its true row count."""
    write_rows(tmp_path / "t.csv", 50_000)
    source = inspect(tmp_path / "t.csv", fmt="auto")
    assert (source.format, source.compression) == ("csv", "none")
    assert source.estimated_rows == pytest.approx(50_000, rel=0.1)


def test_small_csv_row_estimate_is_exact(tmp_path: Path) -> None:
    """A CSV that fits in the sample is counted exactly, less its header."""
    write_rows(tmp_path / "t.csv", 30)
    assert inspect(tmp_path / "t.csv", fmt="auto").estimated_rows == 30


def test_gzip_csv_row_estimate_uses_the_compression_ratio(tmp_path: Path) -> None:
    """A gzip CSV's row estimate scales the sample by the compression ratio, within 25 %."""
    packed = tmp_path / "upload"
    packed.write_bytes(gzip.compress(write_rows(tmp_path / "t.csv", 200_000)))
    source = inspect(packed, fmt="auto")
    assert (source.format, source.compression) == ("csv", "gzip")
    assert source.estimated_rows == pytest.approx(200_000, rel=0.25)


def test_progress_note_counts_rows(tmp_path: Path) -> None:
    """The read note says how many of the estimated rows were read."""
    write_rows(tmp_path / "t.csv", 50_000)
    source = inspect(tmp_path / "t.csv", fmt="auto")
    assert source.describe_read(None) == "reading the table"
    assert source.describe_read(0.5).startswith("read 2")
    assert source.describe_read(0.5).endswith(" rows")


def test_missing_file_is_input_not_found(tmp_path: Path) -> None:
    """A missing input raises InputNotFound."""
    with pytest.raises(InputNotFound):
        inspect(tmp_path / "nope.csv", fmt="auto")


@pytest.mark.parametrize(
    ("content", "fmt", "expected"),
    [
        (b"", "auto", "csv table: the file is empty (not even a header line)"),
        (b" \n\r\n\t\n", "csv", "csv table: the file is empty (not even a header line)"),
        (b"\xef\xbb\xbf\n", "auto", "csv table: the file is empty"),  # a byte-order mark and a line end
        (gzip.compress(b""), "auto", "csv table: the file is empty"),
        (gzip.compress(b"\n\n"), "jsonl", "jsonl table: the file is empty (not even an object)"),
        (b"", "jsonl", "jsonl table: the file is empty (not even an object)"),
    ],
)
def test_an_empty_text_table_is_refused_saying_so(
    tmp_path: Path, content: bytes, fmt: Literal["auto", "csv", "jsonl"], expected: str
) -> None:
    """A file with no text but white space, compressed or not, is refused as empty: DuckDB read it as a
    table of no rows and one VARCHAR column it named `column0` (CSV) or `json` (JSON lines), and a
    profile described that column."""
    path = tmp_path / "upload"
    path.write_bytes(content)
    with pytest.raises(UnsupportedInput, match=re.escape(f"not a readable {expected}")):
        inspect(path, fmt=fmt)


def test_a_gzip_of_a_blank_member_then_rows_is_no_empty_file(tmp_path: Path) -> None:
    """gzip files joined (`cat a.gz b.gz`: one stream of their texts) are read whole: a first member of
    white space followed by one of rows is no empty file."""
    path = tmp_path / "upload"
    path.write_bytes(gzip.compress(b" ") + gzip.compress(b"a,b\n1,2\n"))
    source = inspect(path, fmt="auto")
    assert (source.format, source.compression) == ("csv", "gzip")


def test_a_header_alone_is_a_table_of_no_rows(tmp_path: Path) -> None:
    """A CSV of its header line only is no empty file: its columns, none of its rows."""
    path = tmp_path / "t.csv"
    path.write_bytes(b"id,label\n")
    result = profile_table(path, params=DataProfileParams(format="csv"))
    assert (result.row_count, [column.name for column in result.columns]) == (0, ["id", "label"])


def test_nul_bytes_are_not_a_text_table(tmp_path: Path) -> None:
    """A file with NUL bytes that is not Parquet is refused as UnsupportedInput before DuckDB reads it."""
    path = tmp_path / "bin"
    path.write_bytes(b"a,b\n\x00\x01\n")
    with pytest.raises(UnsupportedInput, match="NUL bytes"):
        inspect(path, fmt="auto")


@pytest.mark.parametrize(
    ("text", "fmt", "array"),
    [
        ('[{"a": 1}, {"a": 2}]', "jsonl", True),
        ('\ufeff  [\n  {"a": 1}\n]', "jsonl", True),
        ("[]", "jsonl", True),
        ('{"a": 1}\n{"a": 2}\n', "jsonl", False),
        ("[id],[name]\n1,x\n", "csv", False),
    ],
)
def test_a_json_array_of_objects_is_json(tmp_path: Path, text: str, fmt: str, array: bool) -> None:
    """A JSON array of objects (as many exports write) is JSON read as an array, not a CSV; a CSV whose
    header starts with `[` stays a CSV."""
    path = tmp_path / "upload"
    path.write_text(text, encoding="utf-8")
    source = inspect(path, fmt="auto")
    assert (source.format, source.json_array) == (fmt, array)


@pytest.mark.parametrize(
    ("content", "compress", "encoding"),
    [
        ("\nid,label\n1,a\n2,b\n", False, "utf-8"),
        ("\r\n\r\nid,label\r\n1,a\r\n2,b\r\n", False, "utf-8"),
        ("  \n\t\nid,label\n1,a\n2,b\n", True, "utf-8"),
        ("\nid,label\n1,caf\u00e9 \u2013 \u20ac\n2,b\n", False, "cp1252"),  # read from its UTF-8 copy
    ],
    ids=["lf", "crlf", "blank-and-gzip", "windows-1252"],
)
def test_blank_lines_before_the_header_are_skipped(
    tmp_path: Path, content: str, compress: bool, encoding: str
) -> None:
    """A CSV that opens with blank lines (an export's empty first line) is read from its header, as pandas
    and spreadsheets read it: DuckDB took the header for data and failed ("line 2: Error when converting
    column \\"id\\"")."""
    data = content.encode(encoding)
    path = tmp_path / "upload"
    path.write_bytes(gzip.compress(data) if compress else data)
    result = profile_table(path, params=DataProfileParams(format="csv"), temp_dir=tmp_path / "scratch")
    assert (result.row_count, [column.name for column in result.columns]) == (2, ["id", "label"])
    assert [column.dtype for column in result.columns] == ["BIGINT", "VARCHAR"]
