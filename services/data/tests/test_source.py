"""Unit tests of `inspect`: formats and compression detected by content, and row counts estimated."""

from __future__ import annotations

import csv
import gzip
import io
import re
from pathlib import Path
from typing import Literal

import pytest

from medialens_data.convert import convert_table
from medialens_data.profile import profile_table
from medialens_data.query import Answer, run_query
from medialens_data.source import SAMPLE_ROWS, inspect
from medialens_shared.contracts import DataConvertParams, DataProfileParams, DataQueryParams
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
        (gzip.compress(b"", mtime=0), "auto", "csv table: the file is empty"),
        (gzip.compress(b"\n\n", mtime=0), "jsonl", "jsonl table: the file is empty (not even an object)"),
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
        ("\ufeff\r\nid,label\r\n1,a\r\n2,b\r\n", False, "utf-16-le"),  # with its byte-order mark
        ("\ufeff  \n\t\nid,label\n1,a\n2,b\n", True, "utf-16-le"),
        ("\r \rid,label\r1,a\r2,b\r", False, "utf-8"),  # lines ending in CR alone (the classic Mac's)
        ("\ufeff\r\rid,label\r1,a\r2,b\r", True, "utf-16-le"),
    ],
    ids=[
        "lf",
        "crlf",
        "blank-and-gzip",
        "windows-1252",
        "utf-16",
        "utf-16-blank-and-gzip",
        "cr",
        "utf-16-cr-and-gzip",
    ],
)
def test_blank_lines_before_the_header_are_skipped(
    tmp_path: Path, content: str, compress: bool, encoding: str
) -> None:
    """A CSV that opens with blank lines (an export's empty first line) is read from its header, as pandas
    and spreadsheets read it: DuckDB took the header for data and failed ("line 2: Error when converting
    column \\"id\\""; in UTF-16 "line 2: id,label")."""
    data = content.encode(encoding)
    path = tmp_path / "upload"
    path.write_bytes(gzip.compress(data) if compress else data)
    result = profile_table(path, params=DataProfileParams(format="csv"), temp_dir=tmp_path / "scratch")
    assert (result.row_count, [column.name for column in result.columns]) == (2, ["id", "label"])
    assert [column.dtype for column in result.columns] == ["BIGINT", "VARCHAR"]


def queried(path: Path, sql: str) -> Answer:
    """The answer of `sql` over the CSV at `path`, its file and spill beside the CSV."""
    return run_query(
        path,
        params=DataQueryParams(sql=sql),
        out_path=path.parent / "out" / "answer.parquet",
        temp_dir=path.parent / "spill",
    )


#: Rows before a CSV's first quoted field: past the 20,480 DuckDB's sniffer picks a quote character from.
PAST_THE_SAMPLE = SAMPLE_ROWS + 4_000


@pytest.mark.parametrize("delimiter", [",", ";", "|"], ids=["comma", "semicolon", "pipe"])
@pytest.mark.parametrize(
    "value", ["Smith{} John", '12" pizza', "two\nlines"], ids=["delimiter", "quote", "newline"]
)
def test_a_field_first_quoted_past_the_sample_reads_as_written(
    tmp_path: Path, delimiter: str, value: str
) -> None:
    """A CSV that quotes a field only where it must (Python's csv module, spreadsheets), its first quoted
    field past DuckDB's sample, reads it as written: a delimiter or a line end in it failed the job
    ("expected 2 fields, found 3"), and `"12"" pizza"` read with its quotes, without a word. (Not a
    tab-separated file: `test_a_tab_separated_file_is_read_without_quoting`.)"""
    value = value.format(delimiter)
    text = io.StringIO()
    writer = csv.writer(text, delimiter=delimiter, lineterminator="\n")
    writer.writerow(["id", "product"])
    writer.writerows([i, value if i == PAST_THE_SAMPLE else f"item {i}"] for i in range(PAST_THE_SAMPLE + 10))
    path = tmp_path / "upload.csv"
    path.write_text(text.getvalue(), encoding="utf-8")
    written = list(csv.reader(path.open(newline=""), delimiter=delimiter))
    answer = queried(path, f"SELECT count(*), max(product) FILTER (id = {PAST_THE_SAMPLE}) FROM data")
    assert answer.rows == [[len(written) - 1, written[PAST_THE_SAMPLE + 1][1]]]
    assert written[PAST_THE_SAMPLE + 1][1] == value


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("id,name\n1,'Smith, John'\n2,plain\n", [1, "Smith, John"]),
        ('id,name\n1,"say \\"hi\\", then go"\n2,plain\n', [1, 'say "hi", then go']),
        ('id,name\n1,"12"" pizza"\n2,plain\n', [1, '12" pizza']),
    ],
    ids=["single-quotes", "backslash-escape", "rfc-4180"],
)
def test_a_quote_the_sniffer_finds_is_kept(tmp_path: Path, text: str, expected: list[object]) -> None:
    """A CSV whose sample quotes in `'`, or escapes a quote with a backslash, reads in that dialect, as
    DuckDB's sniffer found it."""
    path = tmp_path / "upload.csv"
    path.write_text(text, encoding="utf-8")
    answer = queried(path, "SELECT id, name FROM data ORDER BY id")
    assert answer.rows == [expected, [2, "plain"]]


@pytest.mark.parametrize("at", [3, SAMPLE_ROWS + 3000], ids=["in-the-sample", "past-the-sample"])
@pytest.mark.parametrize("spelled", ["0x80070005", "0b101", "1_000"])
def test_integers_spelled_otherwise_stay_as_written(tmp_path: Path, at: int, spelled: str) -> None:
    """A column of integers holding one written in hexadecimal or binary, in the sample or past it, reads
    as text, each value as written: DuckDB's sniffer and cast took `0x80070005` for 2147942405 and `0b101`
    for 5 (0x10 and 16 one value), where pandas and Python's csv keep the text. (`1_000`, which the
    sniffer reads as text itself, stays so.) A column of plain integers stays BIGINT."""
    rows = [(index, index % 97, index) for index in range(SAMPLE_ROWS + 5000)]
    rows[at] = (at, spelled, at)
    path = tmp_path / "codes.csv"
    with path.open("w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows([("id", "code", "n"), *rows])
    answer = queried(path, f"SELECT code, n FROM data WHERE id IN (1, {at}) ORDER BY id")
    assert [(c.name, c.dtype) for c in answer.columns] == [("code", "VARCHAR"), ("n", "BIGINT")]
    assert answer.rows == [["1", 1], [spelled, at]]


def test_a_tab_separated_file_is_read_without_quoting(tmp_path: Path) -> None:
    """A tab-separated file, whose convention has no quoting (IMDb's dumps), keeps a field that opens with a
    quote as written, past the sample too: read with RFC 4180's quoting, a `"Weird Al Live` and a `The 12"`
    50 rows on made the lines between them one field, 50 rows lost without a word."""
    rows = [(index, f"title {index}", 1900 + index % 100) for index in range(SAMPLE_ROWS + 5000)]
    rows[SAMPLE_ROWS + 100] = (SAMPLE_ROWS + 100, '"Weird Al Live', 1999)
    rows[SAMPLE_ROWS + 150] = (SAMPLE_ROWS + 150, 'The 12"', 1985)
    path = tmp_path / "titles.tsv"
    path.write_text("id\ttitle\tyear\n" + "".join(f"{i}\t{t}\t{y}\n" for i, t, y in rows), encoding="utf-8")
    answer = queried(
        path,
        f"SELECT count(*), max(title) FILTER (id = {SAMPLE_ROWS + 100}), "
        f"max(title) FILTER (id = {SAMPLE_ROWS + 150}) FROM data",
    )
    assert answer.rows == [[len(rows), '"Weird Al Live', 'The 12"']]


@pytest.mark.parametrize("at", [3, SAMPLE_ROWS + 3000], ids=["in-the-sample", "past-the-sample"])
def test_integers_spelled_otherwise_beside_null_markers_stay_as_written(tmp_path: Path, at: int) -> None:
    """A column of integers with `NA` among them and one written in hexadecimal is text, as it is without
    the marker: read with its markers as NULL, `0x10` was 16."""
    rows: list[tuple[int, object]] = [(index, index % 97) for index in range(SAMPLE_ROWS + 5000)]
    rows[5], rows[at] = (5, "NA"), (at, "0x10")
    path = tmp_path / "codes.csv"
    with path.open("w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows([("id", "code"), *rows])
    answer = queried(path, f"SELECT code FROM data WHERE id IN (5, {at}) ORDER BY id")
    assert [(c.name, c.dtype) for c in answer.columns] == [("code", "VARCHAR")]
    assert answer.rows == [[value] for _, value in sorted([(5, "NA"), (at, "0x10")])]


@pytest.mark.parametrize("to", ["query", "csv"])
def test_an_order_told_past_the_sample_reads_the_dates_so(tmp_path: Path, to: str) -> None:
    """American dates whose first 20,480 rows have days up to 12 (read day first there) and whose order a
    later `01/13/2024` tells are dates, month first, in a query and a conversion, as a day-first file is:
    they were text."""
    rows = [(f"{1 + index * 12 // 25_000:02d}/{1 + index % 12:02d}/2024", index) for index in range(25_000)]
    rows[24_990] = ("01/13/2024", 24_990)
    path = tmp_path / "us.csv"
    with path.open("w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows([("day", "n"), *rows])
    if to == "csv":
        converted = convert_table(
            path, params=DataConvertParams(to="csv"), out_dir=tmp_path / "out", temp_dir=tmp_path / "spill"
        )
        lines = converted.path.read_text(encoding="utf-8").splitlines()
        assert (lines[1], lines[24_991]) == ("2024-01-01,0", "2024-01-13,24990")
        return
    answer = queried(path, "SELECT day, n FROM data WHERE n IN (13, 24990) ORDER BY n")
    assert [(c.name, c.dtype) for c in answer.columns] == [("day", "DATE"), ("n", "BIGINT")]
    assert answer.rows == [["2024-01-02", 13], ["2024-01-13", 24990]]


@pytest.mark.parametrize("to", ["query", "jsonl"])
def test_a_quote_never_closed_past_the_sample_reads_as_written(tmp_path: Path, to: str) -> None:
    """A CSV that quotes nothing in its sample and later has a field opening with a quote it never closes
    (`"Best" of year`, written by hand) reads that field as written, as it did before quoting was given
    to CSVs that quote nothing in their sample: it failed "unterminated quote"."""
    rows = [f"{index},title {index}" for index in range(SAMPLE_ROWS + 5000)]
    rows[SAMPLE_ROWS + 100] = f'{SAMPLE_ROWS + 100},"Best" of year'
    path = tmp_path / "titles.csv"
    path.write_text("id,title\n" + "\n".join(rows) + "\n", encoding="utf-8")
    if to == "jsonl":
        converted = convert_table(
            path, params=DataConvertParams(to="jsonl"), out_dir=tmp_path / "out", temp_dir=tmp_path / "spill"
        )
        lines = converted.path.read_text(encoding="utf-8").splitlines()
        assert (converted.row_count, lines[SAMPLE_ROWS + 100]) == (
            len(rows),
            f'{{"id":{SAMPLE_ROWS + 100},"title":"\\"Best\\" of year"}}',
        )
        return
    answer = queried(path, f"SELECT count(*), max(title) FILTER (id = {SAMPLE_ROWS + 100}) FROM data")
    assert answer.rows == [[len(rows), '"Best" of year']]


def write_text(path: Path, text: str, layout: str) -> None:
    """`text` (lines ending in `\\n`) written to `path` in `layout`: as it is, with CRLF line ends or CR
    alone (the classic Mac's), gzip-compressed, in UTF-16 (with its byte-order mark) or in Windows-1252."""
    encoding = {"utf-16": "utf-16", "windows-1252": "cp1252"}.get(layout, "utf-8")
    ends = {"crlf": "\r\n", "cr": "\r"}.get(layout, "\n")
    data = text.replace("\n", ends).encode(encoding)
    path.write_bytes(gzip.compress(data) if layout == "gzip" else data)


#: Where a line of white space is put among a CSV's rows: after the header's first row, in the rows
#: DuckDB's sniffer reads, and past them.
WHITE_AT = [1, 1_000, PAST_THE_SAMPLE]


@pytest.mark.parametrize("at", WHITE_AT, ids=["first-row", "in-the-sample", "past-the-sample"])
@pytest.mark.parametrize("layout", ["lf", "crlf", "cr", "gzip", "tsv", "utf-16", "windows-1252"])
def test_a_line_of_white_space_among_the_rows_is_skipped(tmp_path: Path, at: int, layout: str) -> None:
    """A line of nothing but spaces (or tabs, in a CSV) among a CSV's rows is skipped, as an empty line is
    (and as pandas' `skip_blank_lines` skips it): DuckDB read it as a row of one field, and the job failed
    ("line 3: expected 2 fields, found 1"; in the sniffer's rows, "not possible to automatically detect
    the CSV parsing dialect")."""
    delimiter = "\t" if layout == "tsv" else ","
    rows = [f"{i}{delimiter}caf\u00e9 {i % 97}{delimiter}{i % 7}" for i in range(PAST_THE_SAMPLE + 5000)]
    rows.insert(at, "   ")
    rows.insert(at + 3, "  " if layout == "tsv" else " \t ")
    path = tmp_path / "upload.csv"
    write_text(path, delimiter.join(["id", "label", "n"]) + "\n" + "\n".join(rows) + "\n", layout)
    answer = queried(path, f"SELECT count(*), count(id), sum(id), max(label) FILTER (id = {at}) FROM data")
    count = PAST_THE_SAMPLE + 5000
    assert answer.rows == [[count, count, count * (count - 1) // 2, f"caf\u00e9 {at % 97}"]]


@pytest.mark.parametrize("at", WHITE_AT[1:], ids=["in-the-sample", "past-the-sample"])
@pytest.mark.parametrize("job", ["profile", "csv"])
def test_the_table_jobs_skip_a_line_of_white_space(tmp_path: Path, at: int, job: str) -> None:
    """A profile and a conversion skip a line of white space among the rows too (a conversion reads its
    input as a view: what fails is its `COPY`)."""
    rows = [f"{i},label {i % 97},{i / 4}" for i in range(PAST_THE_SAMPLE + 5000)]
    rows.insert(at, "    ")
    path = tmp_path / "upload.csv"
    path.write_text("id,label,x\n" + "\n".join(rows) + "\n", encoding="utf-8")
    if job == "csv":
        converted = convert_table(
            path, params=DataConvertParams(to="csv"), out_dir=tmp_path / "out", temp_dir=tmp_path / "spill"
        )
        lines = converted.path.read_text(encoding="utf-8").splitlines()
        assert (converted.row_count, len(lines), lines[at], lines[at + 1]) == (
            len(rows) - 1,
            len(rows),
            f"{at - 1},label {(at - 1) % 97},{(at - 1) / 4}",
            f"{at},label {at % 97},{at / 4}",
        )
        return
    result = profile_table(path, params=DataProfileParams(), temp_dir=tmp_path / "spill")
    assert result.row_count == len(rows) - 1
    assert [(c.name, c.dtype, c.null_count) for c in result.columns] == [
        ("id", "BIGINT", 0),
        ("label", "VARCHAR", 0),
        ("x", "DOUBLE", 0),
    ]


def test_a_line_of_delimiters_is_a_row_of_nulls(tmp_path: Path) -> None:
    """A line of delimiters alone (`,,`; tabs alone in a tab-separated file) is a row of empty fields, read
    as nulls, beside a line of white space that is skipped."""
    rows = [f"{i},{i % 5}" for i in range(PAST_THE_SAMPLE + 100)]
    rows[PAST_THE_SAMPLE : PAST_THE_SAMPLE + 1] = [",", "  "]
    path = tmp_path / "upload.csv"
    path.write_text("id,n\n" + "\n".join(rows) + "\n", encoding="utf-8")
    answer = queried(path, "SELECT count(*), count(id), count(n) FROM data")
    assert answer.rows == [[len(rows) - 1, len(rows) - 2, len(rows) - 2]]
    tsv = tmp_path / "tsv" / "tabs.tsv"  # a job of its own: its scratch directory too
    tsv.parent.mkdir()
    tsv.write_text("id\tname\tn\n1\ta\t2\n\t\t\n   \n3\tc\t4\n", encoding="utf-8")
    answer = queried(tsv, "SELECT id, name, n FROM data")
    assert answer.rows == [[1, "a", 2], [None, None, None], [3, "c", 4]]


@pytest.mark.parametrize("quote", ['"', "'"])
def test_a_line_of_spaces_in_a_quoted_field_is_its_text(tmp_path: Path, quote: str) -> None:
    """A line of spaces inside a field quoted over several lines is that field's text, kept as written,
    while one between rows is skipped."""
    q = quote
    text = f"id,note\n1,{q}line one, then\n   \nline three{q}\n2,{q}x, y{q}\n   \n3,plain\n"
    path = tmp_path / "upload.csv"
    path.write_text(text, encoding="utf-8")
    answer = queried(path, "SELECT id, note FROM data ORDER BY id")
    assert answer.rows == [[1, "line one, then\n   \nline three"], [2, "x, y"], [3, "plain"]]


def test_a_single_column_keeps_a_line_of_spaces_as_its_value(tmp_path: Path) -> None:
    """In a CSV of one column a line of spaces is a field, nothing telling it from a value written so: it is
    read as those spaces, as DuckDB reads it (no row is lost)."""
    path = tmp_path / "names.csv"
    path.write_text("name\nAda\n   \nGrace\n", encoding="utf-8")
    answer = queried(path, "SELECT name FROM data")
    assert answer.rows == [["Ada"], ["   "], ["Grace"]]


def test_a_ragged_row_after_a_line_of_white_space_is_named_by_its_line(tmp_path: Path) -> None:
    """A ragged row still fails the job past a line of white space, naming its line in the file as written
    (the line of white space is emptied, not dropped, in the copy read)."""
    rows = [f"{i},label {i}" for i in range(PAST_THE_SAMPLE + 100)]
    rows.insert(3, "   ")
    rows[PAST_THE_SAMPLE] = "7,label 7,extra"
    path = tmp_path / "upload.csv"
    path.write_text("id,label\n" + "\n".join(rows) + "\n", encoding="utf-8")
    with pytest.raises(UnsupportedInput, match=f"line {PAST_THE_SAMPLE + 2}: expected 2 fields, found 3"):
        queried(path, "SELECT count(*) FROM data")


@pytest.mark.parametrize("chunk", [1, 3, 7])
def test_lines_of_white_space_are_found_across_the_chunks_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, chunk: int
) -> None:
    """The text is read a chunk at a time for its lines of white space: a line, a line end or a quoted
    field cut between two chunks is read as it is written (blank lines before the header, CRLF, a line of
    spaces in a quoted field, one last without a line end)."""
    monkeypatch.setattr("medialens_data.source._COPY_CHUNK", chunk)
    text = '\r\n  \r\nid,note\r\n1,"a\r\n   \r\nb"\r\n \t \r\n2,c\r\n\t\r\n3,"d, e"\r\n   '
    path = tmp_path / "upload.csv"
    path.write_text(text, encoding="utf-8", newline="")
    answer = queried(path, "SELECT id, note FROM data ORDER BY id")
    assert answer.rows == [[1, "a\r\n   \r\nb"], [2, "c"], [3, "d, e"]]


@pytest.mark.parametrize("layout", ["lf", "gzip"])
@pytest.mark.parametrize("job", ["profile", "query", "csv"])
def test_a_header_of_numbers_is_read_as_one_when_the_params_say_so(
    tmp_path: Path, job: str, layout: str
) -> None:
    """`header: true` reads a CSV's first line as its columns' names where DuckDB's sniffer takes it for a
    row (a line of numbers over rows of numbers, as a table of years has: nothing tells it from a matrix
    without a header); not given, the file reads as it did, the years a row of columns `column0`..."""
    path = tmp_path / "years.csv"
    write_text(path, "2019,2020,2021\n10,20,30\n11,21,31\n", layout)
    years, data = ["2019", "2020", "2021"], [[10, 20, 30], [11, 21, 31]]
    if job == "profile":
        for header, names, rows in [(True, years, 2), (None, ["column0", "column1", "column2"], 3)]:
            params = DataProfileParams(header=header)
            result = profile_table(path, params=params, temp_dir=tmp_path / f"spill-{header}")
            assert (result.row_count, [(c.name, c.dtype) for c in result.columns]) == (
                rows,
                [(name, "BIGINT") for name in names],
            )
        return
    if job == "csv":
        converted = convert_table(
            path,
            params=DataConvertParams(to="csv", header=True),
            out_dir=tmp_path / "out",
            temp_dir=tmp_path / "spill",
        )
        written = converted.path.read_text(encoding="utf-8")
        assert (converted.row_count, written) == (2, "2019,2020,2021\n10,20,30\n11,21,31\n")
        return
    answer = run_query(
        path,
        params=DataQueryParams(sql='SELECT "2019", "2021" FROM data ORDER BY 1', header=True),
        out_path=tmp_path / "out" / "answer.parquet",
        temp_dir=tmp_path / "spill",
    )
    assert [(c.name, c.dtype) for c in answer.columns] == [("2019", "BIGINT"), ("2021", "BIGINT")]
    assert answer.rows == [[row[0], row[2]] for row in data]


def test_header_false_reads_the_first_line_as_a_row(tmp_path: Path) -> None:
    """`header: false` reads a CSV's first line as a row, its columns `column0`... (a headerless file whose
    first row the sniffer would take for names, as its values are text over numbers); past blank lines
    before it too."""
    path = tmp_path / "upload.csv"
    path.write_text("\nred,blue\n1,2\n3,4\n", encoding="utf-8")
    answer = run_query(
        path,
        params=DataQueryParams(sql="SELECT * FROM data", header=False),
        out_path=tmp_path / "out" / "answer.parquet",
        temp_dir=tmp_path / "spill",
    )
    assert [(c.name, c.dtype) for c in answer.columns] == [("column0", "VARCHAR"), ("column1", "VARCHAR")]
    assert answer.rows == [["red", "blue"], ["1", "2"], ["3", "4"]]
    assert queried(path, "SELECT * FROM data").rows == [[1, 2], [3, 4]]  # not given: the sniffer's header


@pytest.mark.parametrize("header", [True, False])
def test_header_is_no_matter_for_a_file_auto_finds_to_be_json(tmp_path: Path, header: bool) -> None:
    """`header` says how a CSV's first line reads: a file `auto` finds to be JSON lines (or Parquet), which
    names its columns itself, reads as it does without it."""
    path = tmp_path / "upload"
    path.write_text('{"a": 1, "b": "x"}\n{"a": 2, "b": "y"}\n', encoding="utf-8")
    result = profile_table(path, params=DataProfileParams(header=header), temp_dir=tmp_path / "spill")
    assert (result.row_count, [c.name for c in result.columns]) == (2, ["a", "b"])
