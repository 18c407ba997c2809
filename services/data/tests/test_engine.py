"""Unit tests of the engine: limits, the fenced connection, the watchdog and values as JSON."""

from __future__ import annotations

import datetime as dt
import decimal
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import duckdb
import pytest

from medialens_data import engine
from medialens_data.engine import Limits, Watchdog, connect, count_label, json_value, lock, open_lanes
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


def test_fetch_each_answers_in_the_order_asked() -> None:
    """Queries spread over two lanes come back in the order they were given, each with its own rows."""
    con = connect(paths=[], limits=Limits(threads=1))
    with Watchdog(con, lanes=open_lanes(con, 2)) as watch:
        answers = watch.fetch_each([f"SELECT {i}, sum(range) FROM range({i * 10_000})" for i in range(9)])
    assert answers == [[(i, sum(range(i * 10_000)) or None)] for i in range(9)]


def test_fetch_each_without_lanes_runs_on_the_connection() -> None:
    """Without lanes, fetch_each runs its queries one after the other on the watched connection."""
    con = connect(paths=[], limits=Limits())
    with Watchdog(con) as watch:
        assert watch.fetch_each(["SELECT 1", "SELECT 2"]) == [[(1,)], [(2,)]]


def test_fetch_each_raises_the_first_failure_and_stops_the_rest() -> None:
    """A failing query raises DuckDB's error, and the endless query on the other lane is interrupted."""
    con = connect(paths=[], limits=Limits(threads=1))
    started = time.monotonic()
    with Watchdog(con, lanes=open_lanes(con, 2)) as watch, pytest.raises(duckdb.Error, match="boom"):
        watch.fetch_each([SLOW, "SELECT error('boom') FROM range(1)"])
    assert time.monotonic() - started < 3


def test_cancel_interrupts_every_lane() -> None:
    """A cancel stops the queries running on all lanes and raises JobCancelled."""
    con = connect(paths=[], limits=Limits(threads=1))
    deadline = time.monotonic() + 0.3
    with (
        Watchdog(con, lanes=open_lanes(con, 2), cancelled=lambda: time.monotonic() > deadline) as watch,
        pytest.raises(JobCancelled),
    ):
        watch.fetch_each([SLOW, SLOW, SLOW])
    assert time.monotonic() - deadline < 2


def test_progress_never_goes_back() -> None:
    """Reported fractions only grow, even when the stage's own estimate falls back."""
    con = connect(paths=[], limits=Limits())
    estimates = iter([0.5, 0.2, 0.7, 0.1])
    seen: list[float] = []

    def report(fraction: float, message: str) -> None:
        seen.append(fraction)
        if len(seen) == 4:
            raise JobCancelled("cancelled on request")

    with Watchdog(con, report=report, interval_s=0.01) as watch:
        watch.stage(lambda p: (next(estimates), "crunching"))
        with pytest.raises(JobCancelled):
            watch.fetch(SLOW)
    assert seen == [0.5, 0.5, 0.7, 0.7]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (float("nan"), None),
        (float("inf"), None),
        (decimal.Decimal("1.50"), 1.5),
        (decimal.Decimal("12"), 12),  # a DECIMAL(p,0): an integer
        (2**63 - 1, 2**63 - 1),
        (2**63, "9223372036854775808"),  # past what a stored (BSON) result holds: exact text
        (-(2**63) - 1, "-9223372036854775809"),
        (decimal.Decimal(2**70), str(2**70)),
        # A decimal a float would round comes as its exact text (it came as 1.2345678901234568e16).
        (decimal.Decimal("12345678901234567.89"), "12345678901234567.89"),
        (decimal.Decimal("0.123456789012345678"), "0.123456789012345678"),
        (decimal.Decimal("-0.000000000000000001"), -1e-18),  # the same number as a float
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


def test_a_lane_thread_is_returned_once_its_work_has_begun() -> None:
    """`_start_running` returns the thread only after its target started, which then runs to its end."""
    seen: list[str] = []
    release = threading.Event()

    def work(label: str) -> None:
        seen.append(label)
        release.wait(5)

    thread = engine._start_running(work, "lane-0", name="test-lane")
    assert seen == ["lane-0"]
    release.set()
    thread.join(5)
    assert not thread.is_alive()


def test_a_lane_thread_that_dies_starting_raises_instead_of_being_waited_for(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A thread that ends before its target begins (as CPython 3.11 ends one whose start-up trace collides
    with another's) is an error at once, not a wait for ever."""

    class DiesStarting(threading.Thread):
        def run(self) -> None:  # ends without calling its target
            return None

    # The engine's view of the module only: other threads of the test run are left alone.
    monkeypatch.setattr(engine, "threading", SimpleNamespace(Thread=DiesStarting, Event=threading.Event))
    with pytest.raises(RuntimeError, match="ended before it began"):
        engine._start_running(lambda: None, name="test-lane")


def test_a_connection_keeps_times_in_utc_whatever_the_hosts_zone(tmp_path: Path) -> None:
    """On a host whose zone is Tokyo, a TIMESTAMPTZ comes in UTC, a query's `CAST(t AS DATE)` is the UTC
    day and a converted CSV writes `+00`: they followed the host's zone (`2024-01-02`, `+09`), so the same
    job answered differently from one worker to the next."""
    source = tmp_path / "events.csv"
    source.write_text("t\n2024-01-01 20:00:00+00\n", encoding="utf-8")
    script = (
        "import json, sys\n"
        "from pathlib import Path\n"
        "from medialens_data.convert import convert_table\n"
        "from medialens_data.query import run_query\n"
        "from medialens_shared.contracts import DataConvertParams, DataQueryParams\n"
        "source, out = Path(sys.argv[1]), Path(sys.argv[2])\n"
        "sql = 'SELECT t, CAST(t AS DATE) AS day, hour(t) AS h FROM data'\n"
        "answer = run_query(source, params=DataQueryParams(sql=sql), out_path=out / 'answer.parquet')\n"
        "csv = convert_table(source, params=DataConvertParams(to='csv'), out_dir=out)\n"
        "print(json.dumps([answer.rows, csv.path.read_text(encoding='utf-8')]))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(source), str(tmp_path / "out")],
        env={**os.environ, "TZ": "Asia/Tokyo"},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    rows, csv = json.loads(done.stdout)
    assert rows == [["2024-01-01T20:00:00+00:00", "2024-01-01", 20]]
    assert csv == "t\n2024-01-01 20:00:00+00\n"
