"""Unit tests of the engine: limits, the fenced connection, the watchdog and values as JSON."""

from __future__ import annotations

import datetime as dt
import decimal
import time
from pathlib import Path

import duckdb
import pytest

from medialens_data.engine import Limits, Watchdog, connect, count_label, json_value, lock
from medialens_shared.errors import InvalidParams, JobCancelled, JobTimeout

SLOW = "SELECT sum(hash(a.range * b.range)) FROM range(1000000) a, range(1000000) b"


@pytest.mark.parametrize(
    ("limit", "expected"), [("512MB", 512 * 10**6), ("1GB", 10**9), ("1.5GiB", 3 * 2**29), ("100", 100)]
)
def test_memory_limit_is_parsed_to_bytes(limit: str, expected: int) -> None:
    """Memory limits in DuckDB's units are read as bytes."""
    assert Limits(memory_limit=limit).memory_bytes == expected


def test_bad_memory_limit_is_invalid_params() -> None:
    """A memory limit that is not a size raises InvalidParams."""
    with pytest.raises(InvalidParams, match="bad memory limit"):
        Limits(memory_limit="lots").memory_bytes  # noqa: B018


def test_connection_writes_only_where_allowed(tmp_path: Path) -> None:
    """A fenced connection writes its allowed path, refuses another, and its lock holds."""
    allowed, other = tmp_path / "ok.csv", tmp_path / "no.csv"
    con = connect(paths=[allowed], limits=Limits(temp_dir=tmp_path / "spill"))
    lock(con)
    con.execute(f"COPY (SELECT 1 AS x) TO '{allowed}'")
    with pytest.raises(duckdb.PermissionException):
        con.execute(f"COPY (SELECT 1 AS x) TO '{other}'")
    with pytest.raises(duckdb.InvalidInputException):
        con.execute("SET memory_limit = '64GB'")
    assert allowed.exists()
    assert not other.exists()
    assert (tmp_path / "spill").is_dir()


def test_watchdog_times_out_a_slow_query(tmp_path: Path) -> None:
    """A query past the watchdog's time limit is interrupted and raises JobTimeout."""
    con = connect(paths=[], limits=Limits())
    started = time.monotonic()
    with Watchdog(con) as watch:
        watch.time_limit(0.3)
        with pytest.raises(JobTimeout):
            watch.fetch(SLOW)
    assert time.monotonic() - started < 3


def test_watchdog_reports_progress_and_stops_on_a_raising_report() -> None:
    """The watchdog passes stage notes to report, and a report raising JobCancelled stops the query."""
    con = connect(paths=[], limits=Limits())
    seen: list[str] = []

    def report(fraction: float, message: str) -> None:
        seen.append(message)
        if len(seen) >= 3:
            raise JobCancelled("cancelled on request")

    with Watchdog(con, report=report) as watch:
        watch.stage(lambda p: (p or 0.0, "crunching"))
        with pytest.raises(JobCancelled):
            watch.fetch(SLOW)
    assert seen[:3] == ["crunching"] * 3


def test_watchdog_checkpoint_raises_between_queries() -> None:
    """Once cancelled, the next query is refused before it starts."""
    con = connect(paths=[], limits=Limits())
    with Watchdog(con, cancelled=lambda: True, interval_s=0.01) as watch:
        time.sleep(0.1)
        with pytest.raises(JobCancelled):
            watch.fetch("SELECT 1")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (float("nan"), None),
        (float("inf"), None),
        (decimal.Decimal("1.50"), 1.5),
        (dt.date(2024, 1, 2), "2024-01-02"),
        (b"\x01\xff", "01ff"),
        ([1, {"a": dt.time(1, 2)}], [1, {"a": "01:02:00"}]),
        (dt.timedelta(days=1), "1 day, 0:00:00"),
    ],
)
def test_json_value(value: object, expected: object) -> None:
    """DuckDB values become JSON-safe values."""
    assert json_value(value) == expected


@pytest.mark.parametrize(
    ("count", "label"), [(950, "950"), (12_400, "12k"), (999_700, "1M"), (3_240_000, "3.2M")]
)
def test_count_label(count: int, label: str) -> None:
    """Row counts read as 950, 12k, 1M, 3.2M in progress notes."""
    assert count_label(count) == label
