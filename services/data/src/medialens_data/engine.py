"""The DuckDB engine every data job runs on: a fenced connection, a watchdog, and DuckDB values as JSON.

A job opens one fresh in-memory connection with `connect`. It may read and write only the paths it is
given (`allowed_paths` with `enable_external_access=false`), it spills to the job's scratch directory
when it passes its memory limit, it never installs or loads extensions, and its configuration is locked
once the job's own setup is done, so neither a crafted file nor a user's SQL can reach the rest of the
disk, the network or the settings.

A `Watchdog` thread sits beside the thread that runs the queries: every `WATCH_INTERVAL_S` it reads the
running query's progress and reports it, and it interrupts the query (`connection.interrupt()`, which
DuckDB allows from another thread) once a cancel is asked for, a time limit passes or a file the queries
write grows past its limit. The interrupted query raises in the worker thread, and the watchdog turns that
into `JobCancelled`, `JobTimeout` or the file limit's own error.

Independent queries can also run side by side on `lanes`, more connections to the same database, one
thread each (`Watchdog.fetch_each`); the watchdog then sums their progress and interrupts them all.
"""

from __future__ import annotations

import datetime as dt
import decimal
import math
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, NoReturn

import duckdb

from medialens_shared.errors import InvalidParams, JobCancelled, JobError, JobTimeout, UnsupportedInput
from medialens_shared.isolation import end_child
from medialens_shared.settings import MEMORY_SIZE

#: `(fraction 0..1, message)`; may raise `JobCancelled` (as `JobContext.report` does).
Report = Callable[[float, str], None]
#: Maps the running query's progress (0..1, None when DuckDB cannot tell) to `(fraction, message)`.
Stage = Callable[[float | None], tuple[float, str]]

#: How often the watchdog looks at the query: well inside the 2 s the API promises for cancellation.
WATCH_INTERVAL_S = 0.2
#: How long the queries may go on after an interrupt for a time or size limit before a job's child process
#: ends with the error (`isolation.end_child`): DuckDB heeds one within milliseconds but in its optimizer.
STOP_GRACE_S = 2.0

#: Memory a table job's child process may hold beyond its engine's memory limit (`Limits.resident_cap`):
#: the interpreter and libraries (mostly pages shared with the fork server), DuckDB's own beyond its limit,
#: and the answer's first rows read into Python.
RESIDENT_SLACK = 512 * 2**20

_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12}
_UNITS |= {"KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


@dataclass(frozen=True, slots=True)
class Limits:
    """What one job's engine may use: memory before spilling, threads, and where it spills."""

    memory_limit: str = "512MB"
    threads: int = 2
    temp_dir: Path | None = None
    #: The most it may spill (DuckDB's `max_temp_directory_size`); None: DuckDB's own, 90% of the free
    #: space of the disk it spills to, which in a pod is the node's, not the scratch volume's.
    spill_limit: str | None = None

    @property
    def memory_bytes(self) -> int:
        match = MEMORY_SIZE.fullmatch(self.memory_limit)
        if match is None:
            raise InvalidParams(f"bad memory limit {self.memory_limit!r}: give e.g. 512MB or 1GB")
        return int(float(match[1]) * _UNITS[(match[2] or "").upper()])

    @property
    def resident_cap(self) -> int:
        """The memory a job's process may hold when the job runs in a child of its own
        (`JobContext.run_cpu(memory_cap=...)`): `memory_limit` and what DuckDB does not count in it.

        Measured at a 512MB limit, in such a child: a sort of a 400-column CSV held 705-724 MB, a sort, a
        window and a group-by over 20 million rows less; `RESIDENT_SLACK` leaves room above those.
        """
        return self.memory_bytes + RESIDENT_SLACK


def connect(*, paths: Sequence[Path], limits: Limits, keep_order: bool = True) -> Any:
    """A fresh in-memory connection that may touch only `paths` (and its spill directory).

    The caller loads its input, then calls `lock`. `keep_order=False` lets DuckDB reorder rows, which
    saves memory when loading a table whose row order does not matter.
    """
    if limits.threads < 1:
        raise InvalidParams(f"threads must be at least 1, not {limits.threads}")
    limits.memory_bytes  # noqa: B018 -- validates the limit before DuckDB sees it
    config: dict[str, Any] = {
        "memory_limit": limits.memory_limit,
        "threads": limits.threads,
        "autoinstall_known_extensions": False,
        "autoload_known_extensions": False,
        "allow_community_extensions": False,
        "preserve_insertion_order": keep_order,
    }
    if limits.temp_dir is not None:
        limits.temp_dir.mkdir(parents=True, exist_ok=True)
        config["temp_directory"] = str(limits.temp_dir)
    if limits.spill_limit is not None:
        config["max_temp_directory_size"] = limits.spill_limit
    try:
        con = duckdb.connect(":memory:", config=config)
    except duckdb.Error as exc:
        raise InvalidParams(f"bad DuckDB settings: {first_line(str(exc))}") from exc
    try:
        # Progress is what the watchdog reads; printing it would write to the worker's stdout.
        con.execute("SET enable_progress_bar = true")
        con.execute("SET enable_progress_bar_print = false")
        # DuckDB takes the host's zone (TZ) otherwise: a TIMESTAMPTZ would print with the host's offset in
        # a converted CSV, and a query's `CAST(t AS DATE)` or `date_trunc('day', t)` would answer
        # differently from one worker to the next. Every job sees times in UTC, as API.md gives them.
        con.execute("SET TimeZone = 'UTC'")
        con.execute("SET allowed_paths = ?", [[str(path.resolve()) for path in paths]])
        con.execute("SET enable_external_access = false")
    except BaseException:
        con.close()
        raise
    return con


def open_lanes(con: Any, count: int) -> list[Any]:
    """`count` more connections to `con`'s database, for `Watchdog.fetch_each`.

    Open them before `lock`: whether a connection tracks its queries' progress is its own setting.
    """
    lanes = []
    for _ in range(count):
        lane = con.cursor()
        lanes.append(lane)
        lane.execute("SET enable_progress_bar = true")
        lane.execute("SET enable_progress_bar_print = false")
    return lanes


def lock(con: Any) -> None:
    """Freeze the connection's configuration: no later statement can widen its access or limits."""
    con.execute("SET lock_configuration = true")


class Watchdog:
    """Reports a connection's progress from a thread, and interrupts it on cancel or past a time limit.

    Use it as a context manager around the queries, and run them through `fetch` (or wrap them in
    `guard`), so an interrupted query raises `JobCancelled` or `JobTimeout` rather than DuckDB's error.
    """

    def __init__(
        self,
        con: Any,
        *,
        report: Report | None = None,
        cancelled: Callable[[], bool] | None = None,
        interval_s: float = WATCH_INTERVAL_S,
        lanes: Sequence[Any] = (),
    ) -> None:
        self._con = con
        self._lanes = list(lanes)
        #: The running work's progress (0..1, None when unknown): the connection's query, or `fetch_each`'s.
        self._progress: Callable[[], float | None] = lambda: _query_progress(con)
        #: The last fraction reported: progress never goes back.
        self._reported = 0.0
        #: A query of `fetch_each` failed: the lanes' other queries are interrupted.
        self._halting = False
        self._report = report
        self._cancelled = cancelled
        self._interval_s = interval_s
        self._stage: Stage | None = None
        self._deadline: float | None = None
        self._time_limit_s = 0.0
        #: A file the queries write, the size it may reach, and the error once it passes it.
        self._file_limit: tuple[Path, int, Callable[[int], JobError]] | None = None
        self._refusal: JobError | None = None
        self.reason: Literal["cancelled", "timeout", "refused"] | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="duckdb-watchdog", daemon=True)

    def __enter__(self) -> Watchdog:
        self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        self._thread.join()
        if isinstance(exc, duckdb.OutOfMemoryException):
            # Past the memory limit even spilling to disk (a table too wide or too long for the job's
            # share): the job's own failure, in plain words, not an INTERNAL_ERROR.
            raise UnsupportedInput(
                "the table needs more memory than a data job may use here, even spilling to disk (raise "
                f"MEDIALENS_WORKER_TABLE_MEMORY_LIMIT, or give a smaller table): {first_line(str(exc))}"
            ) from exc

    def stage(self, stage: Stage) -> None:
        """How to describe the queries that follow; the watchdog reports `stage(progress)`."""
        self._stage = stage

    def time_limit(self, seconds: float) -> None:
        """Interrupt the queries that run more than `seconds` from now."""
        self._time_limit_s = seconds
        self._deadline = time.monotonic() + seconds

    def size_limit(self, path: Path, max_bytes: int, refusal: Callable[[int], JobError]) -> None:
        """Interrupt the queries once the file at `path` is larger than `max_bytes`; they raise
        `refusal(size)`. Looked at every tick, so the file may pass the limit by what is written in one."""
        self._file_limit = (path, max_bytes, refusal)

    @contextmanager
    def following(self, progress: Callable[[], float | None]) -> Iterator[None]:
        """Report `progress` (0..1, None when unknown) rather than the connection's query while the work
        inside runs: work done outside DuckDB, or on other connections."""
        self._progress = progress
        try:
            yield
        finally:
            self._progress = lambda: _query_progress(self._con)

    def checkpoint(self) -> None:
        """Raise now if the job was cancelled or ran out of time (between queries)."""
        if self.reason is not None:
            self._raise()

    def fetch(self, sql: str, params: Sequence[Any] | None = None) -> list[tuple[Any, ...]]:
        """Run one query to its end under watch; its rows."""
        with self.guard():
            rows: list[tuple[Any, ...]] = self._con.execute(sql, params).fetchall()
        return rows

    def fetch_each(self, queries: Sequence[str]) -> list[list[tuple[Any, ...]]]:
        """Run independent queries side by side, each lane taking the next one when it is free; their rows,
        in the order of `queries`. Without lanes they run one after the other on the connection.

        Their progress is the share of them done, the running ones counted by their own progress. The first
        failure stops the others and is raised; an interruption raises as it does from `fetch`.
        """
        if not self._lanes:
            return [self.fetch(sql) for sql in queries]
        results: list[list[tuple[Any, ...]]] = [[] for _ in queries]
        pending = list(enumerate(queries))[::-1]
        busy: set[Any] = set()
        failures: list[BaseException] = []
        taking = threading.Lock()

        def drain(lane: Any) -> None:
            while True:
                with taking:
                    if failures or self.reason is not None or not pending:
                        return
                    index, sql = pending.pop()
                    busy.add(lane)
                try:
                    results[index] = lane.execute(sql).fetchall()
                except BaseException as exc:
                    with taking:
                        failures.append(exc)
                        busy.discard(lane)
                        others = list(busy)
                    # Now for the running queries; the watchdog repeats it for any that had not started.
                    self._halting = True
                    for other in others:
                        other.interrupt()
                    return
                with taking:
                    busy.discard(lane)

        def progress() -> float:
            with taking:
                running = [_query_progress(lane) or 0.0 for lane in busy]
                done = len(queries) - len(pending) - len(busy)
            return (done + sum(running)) / max(len(queries), 1)

        self.checkpoint()
        try:
            with self.following(progress):
                workers = [
                    _start_running(drain, lane, name=f"duckdb-lane-{number}")
                    for number, lane in enumerate(self._lanes[: len(queries)])
                ]
                for worker in workers:
                    worker.join()
        finally:
            self._halting = False
        with self.guard():
            if failures:
                raise failures[0]
        self.checkpoint()
        return results

    @contextmanager
    def guard(self) -> Iterator[None]:
        """Turn an interruption of the queries inside into `JobCancelled` or `JobTimeout`."""
        self.checkpoint()
        try:
            yield
        except duckdb.InterruptException:
            self._raise()

    def _raise(self) -> NoReturn:
        raise self._error()

    def _error(self) -> JobError:
        if self._refusal is not None:
            return self._refusal
        if self.reason == "timeout":
            return JobTimeout(f"the query ran past its time limit of {self._time_limit_s:g} s")
        return JobCancelled("cancelled on request")

    def _watch(self) -> None:
        stopped_at: float | None = None
        while not self._stop.wait(self._interval_s):
            if self.reason is None:
                self._look()
            # Repeated on every tick: an interrupt between two queries would otherwise be lost.
            if self.reason is not None:
                for con in (self._con, *self._lanes):
                    con.interrupt()
                stopped_at = stopped_at or time.monotonic()
                if time.monotonic() - stopped_at > STOP_GRACE_S:
                    # DuckDB's optimizer does not heed an interrupt: 1 KB of CTEs planned for minutes past
                    # a 2 s limit. A job's child process ends here with the error (a cancel kills it anyway).
                    end_child(self._error())
            elif self._halting:
                for lane in self._lanes:
                    lane.interrupt()

    def _look(self) -> None:
        if self._cancelled is not None and self._cancelled():
            self.reason = "cancelled"
            return
        if self._deadline is not None and time.monotonic() > self._deadline:
            self.reason = "timeout"
            return
        if self._file_limit is not None:
            path, max_bytes, refusal = self._file_limit
            size = _size(path)
            if size > max_bytes:
                self._refusal = refusal(size)
                self.reason = "refused"
                return
        if self._report is None or self._stage is None:
            return
        progress = self._progress()
        fraction, message = self._stage(None if progress is None else min(progress, 1.0))
        self._reported = min(max(fraction, self._reported), 1.0)
        try:
            self._report(self._reported, message)
        except JobCancelled:
            self.reason = "cancelled"


def _size(path: Path) -> int:
    """The size of the file at `path`, 0 while there is none (or it cannot be looked at)."""
    try:
        return path.stat().st_size
    except OSError:  # none yet; or none to look at, which must not end the watch (and its time limit)
        return 0


def _query_progress(con: Any) -> float | None:
    """The share of its running query `con` has done, None when DuckDB cannot tell or none runs."""
    percent = float(con.query_progress())
    return percent / 100 if percent >= 0 else None


# --- SQL text and values ----------------------------------------------------------------------------


def literal(value: str) -> str:
    """A SQL string literal (DuckDB cannot bind table-function arguments as parameters)."""
    return "'" + value.replace("'", "''") + "'"


def ident(name: str) -> str:
    """A quoted SQL identifier (DuckDB cannot bind identifiers as parameters)."""
    return '"' + name.replace('"', '""') + '"'


def finite(value: Any) -> float | None:
    """A float, or None for a missing, NaN or infinite number (JSON has none of those)."""
    if value is None:
        return None
    number = float(value)
    return number if math.isfinite(number) else None


#: The 128-bit integer types (the type of a `sum` of integers, of a CSV column of integers past 64 bits),
#: which DuckDB's Parquet writer stores as DOUBLE, inexact past 2**53 (9007199254740995 read back as
#: 9007199254740996.0), silently: a Parquet file of ours holds them as `PARQUET_HUGE`, exact to 38
#: digits, or where a value has more (up to 39), as their text (`huge_parquet_types`).
HUGE_INTEGERS = frozenset({"HUGEINT", "UHUGEINT"})
PARQUET_HUGE = "DECIMAL(38,0)"
#: DuckDB's error for a value past `PARQUET_HUGE`: cast from a column, or (the cast pushed into a CSV's
#: reader) from its text.
_PAST_PARQUET_HUGE = re.compile(r"Could not (cast|convert) .* to '?DECIMAL")


def huge_parquet_types(exc: duckdb.Error | None) -> str:
    """What the 128-bit integer columns of a Parquet file are written as: `PARQUET_HUGE`, or after `exc`,
    an error writing them so that says a value passes it, their text."""
    return "VARCHAR" if exc is not None and _PAST_PARQUET_HUGE.search(str(exc)) else PARQUET_HUGE


def parquet_type(kind: Any, huge: str | None) -> str | None:
    """The type a value of the DuckDB type `kind` (a `DuckDBPyType`) is written to Parquet as, to be read
    back exactly, at any depth in lists, arrays, structs, maps and unions: a 128-bit integer as `huge`
    (see `HUGE_INTEGERS`; None: as it is), an INTERVAL as its text (Parquet refuses a negative one,
    failing the whole query, and Python reads a month as 30 days); None when nothing in it changes."""
    children = dict(kind.children) if kind.id in _NESTED_IDS else {}
    match kind.id:
        case "hugeint" | "uhugeint":
            return huge
        case "interval":
            return "VARCHAR"
        case "list" | "array":
            inner = parquet_type(children["child"], huge)
            size = f"[{children['size']}]" if kind.id == "array" else "[]"
            return None if inner is None else f"{inner}{size}"
        case "map":
            key, value = (parquet_type(children[part], huge) for part in ("key", "value"))
            if key is None and value is None:
                return None
            return f"MAP({key or children['key']}, {value or children['value']})"
        case "struct" | "union":
            fields = [(name, child, parquet_type(child, huge)) for name, child in kind.children if name]
            if all(written is None for _, _, written in fields):
                return None
            listed = ", ".join(f"{ident(name)} {written or child}" for name, child, written in fields)
            return f"{kind.id.upper()}({listed})"
        case _:
            return None


_NESTED_IDS = frozenset({"list", "array", "map", "struct", "union"})


#: The integers a stored result can hold: MongoDB's BSON has 64-bit integers. Wider ones (HUGEINT,
#: UBIGINT past 2**63: 20-digit ids) come as their decimal text, exact, where storing them failed.
_INT64 = range(-(2**63), 2**63)


def json_value(value: Any) -> Any:
    """A DuckDB value as JSON: numbers, strings, ISO strings for temporal values; NaN and inf as None;
    integers beyond 64 bits as decimal text.

    A DECIMAL comes as a float when the float is the same number (`1.50` as 1.5), else as its exact decimal
    text (`12345678901234567.89`, `0.123456789012345678`), as integers past 64 bits do: a float would round
    it, and a stored result (BSON, read back as JSON) has no exact decimal type.
    """
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, int):
        return value if value in _INT64 else str(value)
    if isinstance(value, decimal.Decimal) and value.is_finite():
        if _whole(value):
            return json_value(int(value))  # a DECIMAL(p,0): an integer, exact, not a rounded float
        number = float(value)
        return number if decimal.Decimal(repr(number)) == value else format(value, "f")
    if isinstance(value, float | decimal.Decimal):
        return finite(value)
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).hex()
    if isinstance(value, list | tuple):
        return [json_value(item) for item in value]
    if isinstance(value, dict):
        return {str(key): json_value(item) for key, item in value.items()}
    if isinstance(value, uuid.UUID | dt.timedelta):
        return str(value)
    return str(value)


#: The SQL that writes a value of these types as its exact text, for `as_text`: Python cannot hold them
#: (its datetimes and times stop at microseconds, dropping the nanoseconds, and its timedelta counts a
#: month as 30 days). TIMESTAMPTZ_NS is written in UTC, the zone `connect` gives every connection.
#: Dates and timestamps of the other precisions come as Python's `isoformat` writes them (microseconds only
#: when there are any), and `infinity` and `-infinity` as such: Python has no infinite date, and DuckDB's
#: client gave 9999-12-31 and 0001-01-01 for them (an open-ended validity, `valid_to = 'infinity'` in a
#: PostgreSQL export, read as a real date); dates before year 1 or after 9999 come as DuckDB writes them.
#: The value is named once (`strftime` writes `infinity` and `-infinity` as such, whatever the format, and
#: the zero microseconds are cut from its text): named four times, a struct of a thousand timestamps took
#: DuckDB seconds to bind.
_ISO = r"regexp_replace(strftime({0}, '%Y-%m-%dT%H:%M:%S.%f'), '\.000000$', '')"
_ISO_UTC = r"regexp_replace(strftime({0}, '%Y-%m-%dT%H:%M:%S.%f+00:00'), '\.000000(\+00:00)$', '\1')"
#: A 32-bit float as the double its shortest text is (`0.1`, as DuckDB's CSV writer, NumPy and Arrow
#: write it), not the double it widens to exactly (`0.10000000149011612`), which names a value no one wrote.
FLOAT_AS_WRITTEN = "CAST(CAST({0} AS VARCHAR) AS DOUBLE)"
_AS_TEXT = {
    "TIMESTAMP_NS": "strftime({0}, '%Y-%m-%dT%H:%M:%S.%n')",
    "TIMESTAMPTZ_NS": "strftime({0}, '%Y-%m-%dT%H:%M:%S.%n+00:00')",
    "TIME_NS": "CAST({0} AS VARCHAR)",
    "INTERVAL": "CAST({0} AS VARCHAR)",
    "DATE": "CAST({0} AS VARCHAR)",
    **dict.fromkeys(("TIMESTAMP", "TIMESTAMP_S", "TIMESTAMP_MS"), _ISO),
    "TIMESTAMP WITH TIME ZONE": _ISO_UTC,
    "FLOAT": FLOAT_AS_WRITTEN,
}


def as_text(expr: str, dtype: str) -> str:
    """`expr`, an SQL expression of type `dtype`, as SQL whose value reaches Python exactly.

    Nanosecond timestamps come as ISO text with all nine decimals (`2024-01-01T12:00:00.123456789`, UTC ones
    ending `+00:00` as Python writes the others), nanosecond times with them when they have any, intervals
    as DuckDB's text (`1 month 2 days`), dates and other timestamps as Python writes them but `infinity`
    and `-infinity` as such, 32-bit floats as the double their shortest text is (`FLOAT_AS_WRITTEN`);
    other types are left as they are, for `json_value`. So at any depth in lists, arrays, structs and
    maps (`each_leaf`), within `NESTED_SQL_BUDGET`: DuckDB's client gave `[TIMESTAMP 'infinity']` as
    9999-12-31T23:59:59.999999, a nested TIMESTAMP_NS of 1969 as 1970-01-01 and a nested 0.1 FLOAT as
    0.10000000149011612.
    """
    if (text := _text_leaf(expr, dtype)) is not None:
        return text
    if not nested(dtype):
        return expr
    rewritten = each_leaf(expr, duckdb.sqltype(dtype), _text_leaf, keys=True)
    return rewritten if rewritten is not None and len(rewritten) <= NESTED_SQL_BUDGET else expr


#: The most SQL `as_text` writes for one nested value: past it (structs of structs of a thousand
#: timestamps), the value comes as DuckDB's client reads it. Each field is named by its whole path, so
#: the SQL grows with depth times fields, and DuckDB's time to bind it faster still: 0.7 s for 108 KB,
#: 11 s for 520 KB (ten levels of two), which ran `SELECT * FROM data` past its time limit.
NESTED_SQL_BUDGET = 32 * 1024


def _text_leaf(expr: str, kind: Any) -> str | None:
    """`expr`, of the DuckDB type `kind` (its name, or a `DuckDBPyType`), as its exact text (`_AS_TEXT`);
    None for a type Python reads exactly."""
    template = _AS_TEXT.get(str(kind))
    return None if template is None else template.format(expr)


#: The starts of the DuckDB types of nested values (a list's type ends with `[]`, an array's with `[n]`).
_NESTED_PREFIXES = ("STRUCT(", "MAP(", "UNION(")


def nested(dtype: str) -> bool:
    """Whether values of the DuckDB type named `dtype` hold others: lists, arrays, structs, maps, unions."""
    return dtype.startswith(_NESTED_PREFIXES) or dtype.endswith("]")


def each_leaf(
    expr: str, kind: Any, leaf: Callable[[str, Any], str | None], *, keys: bool = False, depth: int = 0
) -> str | None:
    """`expr`, of the DuckDB type `kind` (a `DuckDBPyType`), with each value in it rewritten by `leaf` (the
    SQL of one value, given that value's SQL and type; None to keep it as it is), however deep in lists,
    arrays (then lists), structs and maps (their keys too where `keys`); None when `leaf` rewrites nothing.
    A null struct stays null; a union's members are kept as they are (DuckDB has no expression that
    rewrites one member of a union and keeps its tag)."""
    match kind.id:
        case "list" | "array":
            item = f"item{depth}"
            inner = each_leaf(item, dict(kind.children)["child"], leaf, keys=keys, depth=depth + 1)
            return None if inner is None else f"list_transform({expr}, lambda {item}: {inner})"
        case "map":
            entry = f"entry{depth}"
            key, value = (
                each_leaf(f"{entry}.{part}", child, leaf, keys=keys, depth=depth + 1)
                if part == "value" or keys
                else None
                for part, child in kind.children
            )
            if key is None and value is None:
                return None
            pair = f"{{'key': {key or f'{entry}.key'}, 'value': {value or f'{entry}.value'}}}"
            return f"map_from_entries(list_transform(map_entries({expr}), lambda {entry}: {pair}))"
        case "struct":
            fields = [
                (name, f"struct_extract({expr}, {literal(name)})", child) for name, child in kind.children
            ]
            rewritten = [
                (name, each_leaf(field, child, leaf, keys=keys, depth=depth), field)
                for name, field, child in fields
            ]
            if all(value is None for _, value, _ in rewritten):
                return None
            packed = ", ".join(f"{ident(name)} := {value or field}" for name, value, field in rewritten)
            return f"CASE WHEN {expr} IS NOT NULL THEN struct_pack({packed}) END"
        case "union":
            return None
        case _:
            return leaf(expr, kind)


def _whole(value: decimal.Decimal) -> bool:
    exponent = value.as_tuple().exponent
    return isinstance(exponent, int) and exponent >= 0


def count_label(count: float) -> str:
    """A row count for a progress note: 950, 12k, 3.2M."""
    if count >= 999_500:
        return f"{count / 10**6:.1f}M".replace(".0M", "M")
    if count >= 10**4:
        return f"{count / 10**3:.0f}k"
    return f"{count:.0f}"


# --- DuckDB's errors in plain words -----------------------------------------------------------------

_ERROR_PREFIX = re.compile(r"^[A-Za-z ]*Error: ")
_CSV_LINE = re.compile(r"CSV Error on Line: (\d+)")
_COLUMNS = re.compile(r"Expected Number of Columns: (\d+) Found: (\d+)")


def first_line(message: str) -> str:
    return message.strip().splitlines()[0] if message.strip() else "unknown error"


def reason(exc: BaseException, *paths: Path) -> str:
    """DuckDB's reason in one short sentence, naming the CSV line when DuckDB gives one.

    `paths` are replaced by their names, so a message never shows the worker's directories.
    """
    message = str(exc)
    for path in paths:
        message = message.replace(str(path.resolve()), path.name)
    message = _ERROR_PREFIX.sub("", message.strip(), count=1)
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    if not lines:
        return "unknown error"
    line_match = _CSV_LINE.match(lines[0])
    if line_match:
        detail = next(
            (line for line in lines[1:] if not line.startswith(("Original Line", "Possible", "*"))), ""
        )
        columns = _COLUMNS.match(detail)
        if columns:
            detail = f"expected {columns[1]} field{'' if columns[1] == '1' else 's'}, found {columns[2]}"
        return f"line {line_match[1]}: {sentence(detail)}" if detail else f"line {line_match[1]}"
    if lines[0].startswith("Error when sniffing file") and len(lines) > 1:
        return sentence(lines[1])
    return sentence(lines[0])


def sentence(text: str, limit: int = 200) -> str:
    """The first sentence of `text`, at most `limit` characters."""
    first = re.split(r"(?<=[.!?])\s", text, maxsplit=1)[0].rstrip(". ")
    return first if len(first) <= limit else first[: limit - 1] + "…"


def _start_running(target: Callable[..., object], *args: Any, name: str) -> threading.Thread:
    """A thread running `target(*args)`, returned once `target` has begun.

    Started one at a time this way, threads never begin side by side: under a tracer that follows new
    threads (coverage's `threading.settrace`, in the tests) CPython 3.11 kills a thread whose start-up
    `sys.settrace` overlaps another's ("Cannot install a trace function while another trace function is
    being installed"), before its target runs. Outside a tracer the wait is a few microseconds.
    """
    begun = threading.Event()

    def run() -> None:
        begun.set()
        target(*args)

    thread = threading.Thread(target=run, name=name)
    thread.start()
    while not begun.wait(0.05):
        if not thread.is_alive():  # it died starting (that collision with a thread started elsewhere)
            raise RuntimeError(f"thread {name} ended before it began its work")
    return thread
