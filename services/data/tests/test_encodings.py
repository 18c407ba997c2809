"""CSV text that is not UTF-8, read with every character intact: Latin-1 and Windows-1252, first seen in the
first bytes or only far past them, plain or gzip-compressed, by the table jobs that read a view (convert)
and a table (query)."""

from __future__ import annotations

import codecs
import gzip
import json
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import pytest

from medialens_data import source
from medialens_data.convert import convert_table
from medialens_data.profile import profile_table
from medialens_data.query import run_query
from medialens_shared.contracts import DataConvertParams, DataProfileParams, DataQueryParams
from medialens_shared.errors import UnsupportedInput

#: Windows-1252's signs in 0x80-0x9F (euro, curly quotes, dashes, ellipsis, a dagger), which Latin-1 reads
#: as control characters and DuckDB refuses as "not latin-1", beside what both encodings share.
WINDOWS_1252 = [
    "Caf\u00e9 \u2018Zo\u00eb\u2019",
    "\u201cquoted\u201d \u2013 \u20ac5\u2026",
    "\u2020 Z\u00fcrich",
]
LATIN_1 = ["Z\u00fcrich", "K\u00f6ln", "S\u00e3o Paulo"]
#: Plain rows before the first such character: past the rows DuckDB sniffs the encoding from.
PAST_THE_SAMPLE = 300_000


def write_table(path: Path, names: list[str], encoding: str, *, pad: int, compress: bool = False) -> Path:
    lines = ["id,name"] + [f"{i},plain" for i in range(pad)] + [f"{pad + i},{n}" for i, n in enumerate(names)]
    data = ("\r\n".join(lines) + "\r\n").encode(encoding)
    path.write_bytes(gzip.compress(data) if compress else data)
    return path


def converted(path: Path, tmp_path: Path) -> list[str]:
    result = convert_table(
        path, params=DataConvertParams(to="jsonl"), out_dir=tmp_path / "out", temp_dir=tmp_path / "spill"
    )
    return [record["name"] for record in map(json.loads, result.path.read_text("utf-8").splitlines())]


def queried(path: Path, tmp_path: Path) -> list[str]:
    answer = run_query(
        path,
        params=DataQueryParams(sql="SELECT name FROM data WHERE name <> 'plain' ORDER BY id"),
        out_path=tmp_path / "out" / "answer.parquet",
        temp_dir=tmp_path / "spill",
    )
    return [row[0] for row in answer.rows]


JOBS: dict[str, Callable[[Path, Path], list[str]]] = {"convert": converted, "query": queried}


@pytest.mark.parametrize("job", JOBS)
@pytest.mark.parametrize("pad", [0, PAST_THE_SAMPLE], ids=["in-the-head", "past-the-sample"])
@pytest.mark.parametrize("compress", [False, True], ids=["plain", "gzip"])
def test_a_windows_1252_csv_is_read_with_its_signs(
    tmp_path: Path, job: str, pad: int, compress: bool
) -> None:
    """Spreadsheets on Windows export Windows-1252: its curly quotes, dashes and euro sign were refused (the
    job failed UNSUPPORTED_INPUT, "File is not latin-1 encoded"); now they read as themselves."""
    path = write_table(tmp_path / "export.csv", WINDOWS_1252, "cp1252", pad=pad, compress=compress)
    names = JOBS[job](path, tmp_path)
    assert [name for name in names if name != "plain"] == WINDOWS_1252


def test_a_latin_1_csv_whose_accents_come_past_the_sample_converts(tmp_path: Path) -> None:
    """A conversion reads its input through a view, which DuckDB reads only at the copy: a Latin-1 accent
    past the rows sniffed failed there ("line 300002: Z?rich") instead of reading the text again."""
    path = write_table(tmp_path / "late.csv", LATIN_1, "latin-1", pad=PAST_THE_SAMPLE)
    assert converted(path, tmp_path)[-3:] == LATIN_1


def test_the_bytes_windows_1252_leaves_undefined_read_as_latin_1_does(tmp_path: Path) -> None:
    """0x81, 0x8D, 0x8F, 0x90 and 0x9D have no sign in Windows-1252: they read as the control characters
    Latin-1 gives them (as WHATWG's decoder does), beside a euro sign that makes the text Windows-1252."""
    path = tmp_path / "odd.csv"
    path.write_bytes(b"id,name\n1,a\x81b\x8d\x8f\x90\x9dc \x80\n")
    assert converted(path, tmp_path) == ["a\x81b\x8d\x8f\x90\x9dc \u20ac"]


@pytest.mark.skipif(shutil.which("zstd") is None, reason="needs the zstd command to compress the input")
def test_a_zstd_csv_in_windows_1252_is_refused_saying_what_to_give(tmp_path: Path) -> None:
    """Python 3.11 has no zstd decoder to copy it with: the job says so and what would be read."""
    path = write_table(tmp_path / "export.csv", WINDOWS_1252, "cp1252", pad=0)
    subprocess.run(["zstd", "-q", "--rm", str(path)], check=True)
    with pytest.raises(
        UnsupportedInput, match=r"zstd-compressed CSV in Windows-1252.*gzip-compressed or in UTF-8"
    ):
        converted(tmp_path / "export.csv.zst", tmp_path)


def test_a_damaged_gzip_in_windows_1252_is_unsupported_input(tmp_path: Path) -> None:
    """A stream that DuckDB reads but Python's decoder refuses while copying (DuckDB does not check the
    CRC) is the input's fault, said as such, not an internal error."""
    path = write_table(tmp_path / "export.csv", WINDOWS_1252, "cp1252", pad=0, compress=True)
    damaged = bytearray(path.read_bytes())
    damaged[-8] ^= 0xFF  # the CRC-32 of the trailer
    path.write_bytes(bytes(damaged))
    with pytest.raises(UnsupportedInput, match="damaged gzip data"):
        queried(path, tmp_path)


def test_a_copy_past_half_the_free_disk_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The UTF-8 copy of a gzip input is written whole: it stops at half the disk's free space, refusing
    the input in words, rather than fill the disk the node's other jobs spill to (here the disk is made to
    report 2 MB free; the text is 3 MB)."""
    monkeypatch.setattr(source.shutil, "disk_usage", lambda _path: SimpleNamespace(free=2 * 10**6))
    path = write_table(tmp_path / "big.csv", WINDOWS_1252 * 50_000, "cp1252", pad=0, compress=True)
    with pytest.raises(UnsupportedInput, match="scratch space its UTF-8 copy may take here"):
        queried(path, tmp_path)


#: A table of each kind of column, with accents and a character past 16 bits (a surrogate pair in UTF-16);
#: its long form has more rows than DuckDB's 20,480 sampled ones and more than the 1 MiB the UTF-8 copy is
#: made a piece at a time from.
UTF16_ROWS = [
    f"{i},Zo\u00eb \U0001f3a7 {i % 7},{i / 4},2024-01-{1 + i % 28:02d},{i % 2 == 0}" for i in range(30_000)
]


def utf16_table(path: Path, rows: list[str], *, byte_order: str, compress: bool) -> Path:
    """`rows` under a header, in UTF-16 of `byte_order` (`le`, `be`) after its byte-order mark."""
    text = "\r\n".join(["id,name,amount,day,even", *rows]) + "\r\n"
    bom = codecs.BOM_UTF16_BE if byte_order == "be" else codecs.BOM_UTF16_LE
    data = bom + text.encode(f"utf-16-{byte_order}")
    path.write_bytes(gzip.compress(data) if compress else data)
    return path


@pytest.mark.parametrize("count", [3, len(UTF16_ROWS)], ids=["short", "long"])
@pytest.mark.parametrize("compress", [False, True], ids=["plain", "gzip"])
def test_a_big_endian_utf_16_csv_reads_as_the_little_endian_one_does(
    tmp_path: Path, count: int, compress: bool
) -> None:
    """A UTF-16 CSV with a big-endian byte-order mark (FE FF) was read as little-endian: a short one gave 0
    rows and one column of mojibake in every job, without a word; a long one failed on a line past 2 MB. It
    reads as the same table in little-endian does: its rows, names and types in a profile, a conversion and
    a query."""
    rows = UTF16_ROWS[:count]
    tables = {
        order: utf16_table(tmp_path / f"{order}.csv", rows, byte_order=order, compress=compress)
        for order in ("le", "be")
    }
    profiles = {
        order: profile_table(path, params=DataProfileParams(), temp_dir=tmp_path / order / "profile")
        for order, path in tables.items()
    }
    columns = [(col.name, col.dtype) for col in profiles["be"].columns]
    assert columns == [
        ("id", "BIGINT"),
        ("name", "VARCHAR"),
        ("amount", "DOUBLE"),
        ("day", "DATE"),
        ("even", "BOOLEAN"),
    ]
    assert profiles["be"].row_count == count
    assert profiles["be"].model_dump() == profiles["le"].model_dump()
    lines = {
        order: convert_table(
            path,
            params=DataConvertParams(to="csv"),
            out_dir=tmp_path / order / "out",
            temp_dir=tmp_path / order / "convert",
        )
        .path.read_text("utf-8")
        .splitlines()
        for order, path in tables.items()
    }
    written = [row.replace("True", "true").replace("False", "false") for row in rows]
    assert lines["be"][1:] == lines["le"][1:] == written
    sql = "SELECT count(*), max(name), sum(amount) FROM data"
    answers = {
        order: run_query(
            path,
            params=DataQueryParams(sql=sql),
            out_path=tmp_path / order / "answer.parquet",
            temp_dir=tmp_path / order / "query",
        ).rows
        for order, path in tables.items()
    }
    most = f"Zo\u00eb \U0001f3a7 {max(i % 7 for i in range(count))}"
    assert answers["be"] == answers["le"] == [[count, most, sum(range(count)) / 4]]


def test_a_big_endian_utf_16_csv_with_a_lone_surrogate_is_unsupported_input(tmp_path: Path) -> None:
    """Big-endian text that is not UTF-16 (half of a surrogate pair) fails the job as the input's fault,
    as DuckDB fails such little-endian text (it was read as little-endian, a row of mojibake)."""
    path = tmp_path / "broken.csv"
    path.write_bytes(
        codecs.BOM_UTF16_BE + "id,name\r\n1,a".encode("utf-16-be") + b"\xd8\x3c" + "\r\n".encode("utf-16-be")
    )
    with pytest.raises(UnsupportedInput, match="not big-endian UTF-16 text"):
        queried(path, tmp_path)
