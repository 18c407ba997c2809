"""A damaged Parquet input fails every table job the same way, `MediaDecodeError` (API.md: a file of the
right kind that turns out damaged): Parquet is read in
place, so the damage surfaces inside the job's own queries, where DuckDB's reader fails with whatever it
met (a bare `duckdb.Error` "don't know what type", or "ZSTD Decompression failure")."""

from __future__ import annotations

import gzip
from collections.abc import Callable
from pathlib import Path

import duckdb
import pytest

from medialens_data import profile
from medialens_data.convert import convert_table
from medialens_data.profile import profile_table
from medialens_data.query import run_query
from medialens_shared.contracts import DataConvertParams, DataProfileParams, DataQueryParams
from medialens_shared.errors import InvalidParams, MediaDecodeError, UnsupportedInput


def write_parquet(path: Path) -> Path:
    duckdb.sql(
        "COPY (SELECT range AS id, 'name' || range AS name, range * 0.5 AS x FROM range(200000)) "
        f"TO '{path}' (FORMAT parquet, COMPRESSION zstd, ROW_GROUP_SIZE 50000)"
    )
    return path


@pytest.fixture
def damaged(tmp_path: Path) -> Path:
    """A Parquet file whose footer is intact (it opens, its columns bind) and whose pages are not."""
    path = write_parquet(tmp_path / "damaged.parquet")
    data = bytearray(path.read_bytes())
    for offset in range(len(data) // 4, len(data) * 3 // 4):
        data[offset] ^= 0x5A
    path.write_bytes(bytes(data))
    return path


def query(path: Path, tmp_path: Path, sql: str = "SELECT sum(x), max(name) FROM data") -> object:
    return run_query(path, params=DataQueryParams(sql=sql), out_path=tmp_path / "out" / "answer.parquet")


JOBS: dict[str, Callable[[Path, Path], object]] = {
    "query": query,
    "profile": lambda path, _tmp: profile_table(path, params=DataProfileParams()),
    "convert": lambda path, tmp: convert_table(path, params=DataConvertParams(to="csv"), out_dir=tmp / "out"),
}


@pytest.mark.parametrize("job", JOBS)
def test_a_damaged_parquet_file_is_a_decode_error(damaged: Path, tmp_path: Path, job: str) -> None:
    """It was INVALID_PARAMS from a query ("the query failed: don't know what type") and, by the error the
    reader met first, INTERNAL_ERROR or UNSUPPORTED_INPUT from a conversion or a profile."""
    with pytest.raises(MediaDecodeError, match=r"the parquet file is damaged: \S"):
        JOBS[job](damaged, tmp_path)


def test_a_query_failing_on_an_intact_parquet_file_is_still_the_querys_fault(tmp_path: Path) -> None:
    """The file is read whole to tell: when it reads, the failure is the query's (a cast that fails)."""
    path = write_parquet(tmp_path / "intact.parquet")
    with pytest.raises(InvalidParams, match=r"the query failed: .*Could not convert"):
        query(path, tmp_path, "SELECT CAST(name AS INTEGER) FROM data")


def test_a_typo_in_a_query_over_damaged_parquet_is_the_querys_fault_with_no_full_read(
    damaged: Path, tmp_path: Path
) -> None:
    """A misspelt column is the binder's error, which reading cannot raise: it answers INVALID_PARAMS at
    once, without the full read that tells damage (which counted against the query's time limit, so a
    typo over a large file failed TIMEOUT)."""
    with pytest.raises(InvalidParams, match=r"the query failed: .*nmae"):
        query(damaged, tmp_path, "SELECT nmae FROM data")


def test_a_damaged_wide_parquet_file_read_into_a_table_is_a_decode_error(
    damaged: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Parquet file wide enough to be read into a table before it is profiled (`WIDE_COLUMNS`, lowered
    here to its 3 columns' width) fails the same way when the reading meets the damage."""
    monkeypatch.setattr(profile, "WIDE_COLUMNS", 2)
    with pytest.raises(MediaDecodeError, match=r"the parquet file is damaged: \S"):
        profile_table(damaged, params=DataProfileParams())


@pytest.mark.parametrize("job", JOBS)
def test_a_parquet_file_cut_short_is_a_decode_error(tmp_path: Path, job: str) -> None:
    """A Parquet file that lost its end (an upload that stopped) is a damaged file of the right kind, not
    another kind of file: it was UNSUPPORTED_INPUT ("No magic bytes found at end of file")."""
    whole = write_parquet(tmp_path / "whole.parquet").read_bytes()
    cut = tmp_path / "cut.parquet"
    cut.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(MediaDecodeError, match="the parquet file is truncated"):
        JOBS[job](cut, tmp_path)


def test_a_file_that_is_not_parquet_read_as_parquet_is_still_the_wrong_kind(tmp_path: Path) -> None:
    """Only a file that begins as Parquet does is truncated Parquet: a CSV read with format=parquet is not."""
    path = tmp_path / "t.csv"
    path.write_text("a,b\n1,2\n")
    with pytest.raises(UnsupportedInput, match="not a readable parquet table"):
        profile_table(path, params=DataProfileParams(format="parquet"))


@pytest.mark.parametrize("job", JOBS)
def test_a_gzip_table_cut_short_is_a_decode_error(tmp_path: Path, job: str) -> None:
    """A gzip-compressed CSV whose stream stops midway is truncated (MEDIA_DECODE_ERROR), whether it stops
    in the first bytes or far past what the types are guessed from."""
    text = b"id,name\n" + b"".join(b"%d,name%d\n" % (i, i) for i in range(300_000))
    packed = gzip.compress(text)
    for keep in (len(packed) // 50, len(packed) * 9 // 10):
        cut = tmp_path / f"cut{keep}.csv.gz"
        cut.write_bytes(packed[:keep])
        with pytest.raises(MediaDecodeError, match="the gzip-compressed csv is truncated"):
            JOBS[job](cut, tmp_path / f"out{keep}")
