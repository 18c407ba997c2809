"""Unit tests of `run_query`: answers checked against Python, and the sandbox against escape attempts."""

from __future__ import annotations

import csv
import decimal
import re
import time
from collections import defaultdict
from functools import partial
from pathlib import Path
from typing import Any

import duckdb
import pytest

from medialens_data.engine import NESTED_SQL_BUDGET, STOP_GRACE_S, Limits, as_text
from medialens_data.query import INLINE_ROWS_BYTES, check_sql, run_query
from medialens_shared.contracts import DataQueryParams
from medialens_shared.errors import InvalidParams, JobCancelled, JobTimeout, disk_full
from medialens_shared.isolation import OverMemoryCap, run_in_child
from tests.fixtures.disk import small_disk

ROWS = [(i, ["north", "south", "east"][i % 3], i * 0.5) for i in range(300)]


@pytest.fixture
def table(tmp_path: Path) -> Path:
    path = tmp_path / "input.csv"
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "region", "amount"])
        writer.writerows(ROWS)
    return path


def ask(table: Path, sql: str, **kwargs: Any) -> Any:
    out = table.parent / "out" / "answer.parquet"
    return run_query(
        table, params=DataQueryParams(sql=sql, limit=kwargs.pop("limit", 1000)), out_path=out, **kwargs
    )


def test_group_by_answer_matches_python(table: Path) -> None:
    """A GROUP BY over `data` gives Python's sums, its columns typed, and the whole answer as Parquet."""
    answer = ask(
        table, "SELECT region, count(*) AS n, sum(amount) AS total FROM data GROUP BY region ORDER BY region"
    )
    totals: dict[str, list[float]] = defaultdict(list)
    for _, region, amount in ROWS:
        totals[region].append(amount)
    expected = [[region, len(v), sum(v)] for region, v in sorted(totals.items())]
    assert answer.rows == expected
    assert answer.row_count == 3
    assert [(c.name, c.dtype) for c in answer.columns] == [
        ("region", "VARCHAR"),
        ("n", "BIGINT"),
        ("total", "DOUBLE"),
    ]
    with duckdb.connect() as con:
        assert [
            list(r) for r in con.execute(f"SELECT * FROM read_parquet('{answer.path}')").fetchall()
        ] == expected


def test_sums_of_integers_are_exact_integers(table: Path) -> None:
    """A sum of integers (DuckDB's HUGEINT) comes back as an exact integer, inline and in the Parquet file:
    it was written as a DOUBLE (9007199254740995 read 9007199254740996.0). Past 64 bits, where a stored
    result holds no integer, it comes as its decimal text; names may repeat."""
    answer = ask(
        table,
        "SELECT sum(id) AS s, sum(x) AS big, sum(x) * 100000 AS s, 'a' AS s "
        "FROM data, (VALUES (9007199254740993::BIGINT)) v(x) WHERE id < 2",
    )
    # ids 0 and 1: sum(id) 1; x twice: 18014398509481986; times 1e5 is past 2**63.
    assert answer.rows == [[1, 18014398509481986, "1801439850948198600000", "a"]]
    assert [(c.name, c.dtype) for c in answer.columns] == [
        ("s", "HUGEINT"),
        ("big", "HUGEINT"),
        ("s", "HUGEINT"),
        ("s", "VARCHAR"),
    ]
    with duckdb.connect() as con:
        stored = con.execute(f"SELECT big FROM read_parquet('{answer.path}')").fetchall()
    assert stored == [(decimal.Decimal(18014398509481986),)]


@pytest.mark.parametrize(
    "ending", ["", ";", "; -- the total", " -- the total", " /* total */ ;  ", "\n-- a note\n;\n"]
)
def test_a_rewritten_answer_takes_the_query_as_written(table: Path, ending: str) -> None:
    """An answer written with casts (a sum of integers, an interval) takes the query as the user ended it:
    a `;`, a trailing comment, both; a `;` or `--` inside a string is the string's."""
    answer = ask(table, f"SELECT sum(id) AS total, 'a;--b' AS s FROM data WHERE id < 3{ending}")
    assert answer.rows == [[3, "a;--b"]]


def test_intervals_come_as_their_text_negative_ones_too(table: Path) -> None:
    """A time difference that goes back (a negative INTERVAL) no longer fails the query (Parquet holds no
    negative interval); intervals come as DuckDB's text, a month as a month (not Python's 30 days)."""
    answer = ask(
        table,
        "SELECT TIMESTAMP '2024-01-01 00:00' - TIMESTAMP '2024-01-02 06:00' AS back, "
        "INTERVAL '1 month 2 days 03:04:05.5' AS mixed",
    )
    assert answer.rows == [["-1 day -06:00:00", "1 month 2 days 03:04:05.5"]]
    assert [(c.name, c.dtype) for c in answer.columns] == [("back", "INTERVAL"), ("mixed", "INTERVAL")]


def test_intervals_and_128_bit_integers_inside_lists_structs_and_maps_are_exact(table: Path) -> None:
    """The rules hold at any depth: a negative interval in a list failed the whole query, a 128-bit
    integer in a list or struct came back rounded (9007199254740993 as 9007199254740992.0), an interval
    there as Python's days (a month as 30)."""
    answer = ask(
        table,
        "SELECT [INTERVAL '-1 day', INTERVAL '1 month'] AS back, "
        "{'n': 9007199254740993::HUGEINT, 'm': [170141183460469231731687303715884105727::HUGEINT]} AS s, "
        "MAP {'k': INTERVAL '2 days'} AS m, [9007199254740993::UHUGEINT]::UHUGEINT[1] AS a",
    )
    [[back, struct, mapping, array]] = answer.rows
    assert back == ["-1 day", "1 month"]
    # Past 64 bits (here past 38 digits, the column written as text) its decimal text, as at the top level.
    assert struct == {"n": 9007199254740993, "m": ["170141183460469231731687303715884105727"]}
    assert mapping == {"k": "2 days"}
    assert array == [9007199254740993]
    assert [c.dtype for c in answer.columns] == [
        "INTERVAL[]", "STRUCT(n HUGEINT, m HUGEINT[])", "MAP(VARCHAR, INTERVAL)", "UHUGEINT[1]",
    ]  # fmt: skip


def test_a_struct_of_128_bit_integers_written_as_text_is_read_back_whole(table: Path) -> None:
    """One value past 38 digits writes a column's 128-bit integers as text, read back as the integers they
    are, at any depth: a DECIMAL(38,0) beside them in the struct stopped that (`{'n': '5'}`)."""
    answer = ask(
        table,
        "SELECT {'n': h, 'd': 1::DECIMAL(38,0)} AS s FROM (VALUES "
        "(170141183460469231731687303715884105727::HUGEINT), (5::HUGEINT)) v(h) ORDER BY h",
    )
    assert answer.rows == [[{"n": 5, "d": 1}], [{"n": "170141183460469231731687303715884105727", "d": 1}]]


def test_limit_caps_the_rows_not_the_count(table: Path) -> None:
    """Only `limit` rows come back, while row_count and the Parquet file hold the whole answer."""
    answer = ask(table, "SELECT id FROM data WHERE id % 2 = 0 ORDER BY id DESC", limit=5)
    assert answer.rows == [[298], [296], [294], [292], [290]]
    assert answer.row_count == 150
    with duckdb.connect() as con:
        assert con.execute(f"SELECT count(*) FROM read_parquet('{answer.path}')").fetchall() == [(150,)]


def test_a_wide_answer_comes_inline_only_as_far_as_a_stored_result_may_hold(table: Path) -> None:
    """200 rows of 100 KB each (20 MB, more than a stored result may hold): fewer rows come inline, within
    `INLINE_ROWS_BYTES`, while row_count and the Parquet file hold the whole answer."""
    answer = ask(table, "SELECT i, repeat('x', 100000) AS wide FROM range(200) t(i)", limit=1000)
    assert answer.row_count == 200
    fits = INLINE_ROWS_BYTES // 100_000
    assert fits - 2 <= len(answer.rows) <= fits
    assert [row[0] for row in answer.rows] == list(range(len(answer.rows)))
    assert all(len(row[1]) == 100_000 for row in answer.rows)
    with duckdb.connect() as con:
        assert con.execute(f"SELECT count(*) FROM read_parquet('{answer.path}')").fetchall() == [(200,)]


def test_rows_too_large_to_read_back_together_come_inline_as_far_as_they_fit(table: Path) -> None:
    """1,000 rows of 1 MB (a Parquet file of kilobytes: the value repeats) read back at once passed the
    job's memory, and the job failed saying the table needed more: they are read fewer at a time, and
    those within `INLINE_ROWS_BYTES` come inline, the whole answer in its file."""
    answer = ask(table, "SELECT i, repeat('x', 1000000) AS s FROM range(1000) t(i)", memory_limit="256MB")
    assert answer.row_count == 1000
    assert [row[0] for row in answer.rows] == list(range(INLINE_ROWS_BYTES // 1_000_000))
    assert all(len(row[1]) == 1_000_000 for row in answer.rows)


@pytest.mark.parametrize(
    ("nested", "why"),
    [
        ("[" * 300 + "1" + "]" * 300, "the answer cannot be read back from its Parquet file"),
        ("{'a': " * 300 + "1" + "}" * 300, "the answer cannot be read back from its Parquet file"),
        ("[" * 200 + "1" + "]" * 200, "the answer's first row cannot be read back"),
    ],
    ids=["list-300", "struct-300", "list-200"],
)
def test_an_answer_nested_too_deep_to_read_back_is_invalid_params(table: Path, nested: str, why: str) -> None:
    """A value nested 300 deep is written as Parquet but not read back (DuckDB reads 500 levels of schema,
    and a struct that deep breaks its reader): INVALID_PARAMS, not INTERNAL_ERROR with the scratch path. A
    list 200 deep runs out of memory read back even alone: not an answer without rows either."""
    with pytest.raises(InvalidParams, match=why) as caught:
        ask(table, f"SELECT {nested} AS v")
    assert str(table.parent) not in caught.value.message


@pytest.mark.parametrize(
    ("sql", "rows"),
    [
        ("WITH big AS (SELECT * FROM data WHERE id >= 298) SELECT id FROM big ORDER BY id", [[298], [299]]),
        ("VALUES (1, 'a'), (2, 'b')", [[1, "a"], [2, "b"]]),
        ("FROM data SELECT max(id)", [[299]]),
        ("SELECT DATE '2024-01-02' AS d, 'nan'::DOUBLE AS f;", [["2024-01-02", None]]),
    ],
)
def test_read_only_query_forms_are_allowed(table: Path, sql: str, rows: list[list[Any]]) -> None:
    """WITH, VALUES and FROM-first queries run; dates come back as ISO text and NaN as null."""
    assert ask(table, sql).rows == rows


@pytest.mark.parametrize(
    ("sql", "why"),
    [
        ("COPY data TO '{dir}/leak.csv'", "not a COPY statement"),
        ("ATTACH '{dir}/leak.db' AS other", "not a ATTACH statement"),
        ("INSTALL httpfs", "not a LOAD statement"),
        ("LOAD httpfs", "not a LOAD statement"),
        ("SET threads = 64", "not a SET statement"),
        ("RESET memory_limit", "not a"),
        ("PRAGMA version", "not a PRAGMA statement"),
        ("CREATE TABLE t AS SELECT 1", "not a CREATE"),
        ("DROP TABLE data", "not a DROP statement"),
        ("EXPLAIN SELECT 1", "not a EXPLAIN statement"),
        ("SELECT 1; SELECT 2", r"exactly one SQL statement.*found 2"),
        ("SELECT * FROM data; COPY data TO '{dir}/leak.csv'", r"exactly one SQL statement.*found 2"),
        ("SELEC 1", "does not parse"),
        (
            "WITH x AS (COPY (SELECT 'p' AS id) TO '{dir}/leak.csv' (USE_TMP_FILE false)) SELECT 1",
            r"holds a COPY statement",
        ),
        ("WITH x AS (COPY (SELECT 'p' AS id) TO '{input}' (USE_TMP_FILE false)) SELECT 1", "holds a COPY"),
        ("WITH x AS (DELETE FROM data RETURNING *) SELECT count(*) FROM x", "holds a DELETE statement"),
        ("WITH x AS (UPDATE data SET id = 0 RETURNING *) SELECT 1", "holds a UPDATE statement"),
        ("WITH x AS (INSERT INTO data SELECT * FROM data RETURNING *) SELECT 1", "holds a INSERT statement"),
        ("FROM (WITH x AS (DELETE FROM data RETURNING *) SELECT * FROM x)", "holds a DELETE statement"),
    ],
)
def test_statements_other_than_one_query_are_refused(table: Path, sql: str, why: str) -> None:
    """Every statement but a single query, a statement inside a query's CTE or subquery too (a COPY there
    wrote any file the fence let it reach, the shared input among them), is refused with INVALID_PARAMS
    before anything runs."""
    before = table.read_bytes()
    with pytest.raises(InvalidParams, match=why) as caught:
        ask(table, sql.format(dir=table.parent, input=table))
    assert caught.value.error_code == "INVALID_PARAMS"
    assert not list(table.parent.glob("leak*"))
    assert table.read_bytes() == before
    assert not (table.parent / "out" / "answer.parquet").exists()


def test_a_rewritten_answer_runs_the_query_checked_whatever_its_characters(table: Path) -> None:
    """A sum of integers makes the query run again inside a cast (`_exact_parquet`), its trailing `;` and
    comments cut off by the tokenizer's positions, which count bytes: counted as characters, non-ASCII
    text before the end cut the query short or broke it, or failed it with an IndexError (INTERNAL_ERROR).
    The second answer is written over the first's file, which DuckDB did through a path the fence refused."""
    pad = "/*" + "é" * 40 + "*/ "
    sql = pad + "SELECT sum(id) AS s FROM data --" + ";" * 45 + "\n"
    sql += "".join(f"{token} /*{';' * 45}*/\n" for token in ("WHERE", "id", "<", "3"))
    assert ask(table, sql).rows == [[3]]
    assert ask(table, "SELECT 'ééé' AS t, sum(id) AS s FROM data;").rows == [["ééé", 44850]]


@pytest.mark.parametrize("runner", ["json_execute_serialized_sql", "query", "destroy_external_resource"])
def test_sql_run_from_text_is_refused(table: Path, runner: str) -> None:
    """Table functions that run SQL held as a string, which the syntax tree cannot check: a COPY in a CTE
    (which the check refuses written out) overwrote the input, the input cache's copy other tenants' jobs
    read, through `json_execute_serialized_sql`, through `query` calling it, and through DuckDB 2's
    `destroy_external_resource`, which calls any function named in a string (it got past a check by name).
    Only the table functions that make rows from their arguments may be called."""
    before = table.read_bytes()
    statement = (
        f"WITH x AS (COPY (SELECT 'evil' AS id) TO '{table}' (FORMAT csv, USE_TMP_FILE false)) SELECT 1"
    )
    serialized = duckdb.sql("SELECT json_serialize_sql(?)", params=[statement]).fetchall()[0][0]
    quoted = serialized.replace("'", "''")
    sql = {
        "json_execute_serialized_sql": f"SELECT * FROM json_execute_serialized_sql('{quoted}')",
        "query": "SELECT * FROM query('SELECT * FROM json_execute_serialized_sql(''"
        + quoted.replace("'", "''")
        + "'')')",
        "destroy_external_resource": (
            f"SELECT * FROM destroy_external_resource('json_execute_serialized_sql', '{quoted}')"
        ),
    }[runner]
    with pytest.raises(InvalidParams, match=rf"{runner}\(\) is not among the table functions it may call"):
        ask(table, sql)
    assert table.read_bytes() == before


@pytest.mark.parametrize(
    ("sql", "rows"),
    [
        ("SELECT sum(i) FROM range(4) t(i)", [[6]]),
        ("SELECT count(*) FROM generate_series(1, 10)", [[10]]),
        ("SELECT x FROM data, unnest([7]) u(x) WHERE id = 0", [[7]]),
        ("SELECT key, value FROM json_each('{\"a\": 1}')", [["a", "1"]]),
        ("SELECT count(*) FROM json_tree('[1, [2]]')", [[4]]),
        ("SELECT * FROM repeat(5, 2)", [[5], [5]]),
        ("SELECT count(*) FROM repeat_row(1, 2, num_rows := 3)", [[3]]),
        ("PIVOT (SELECT region FROM data) ON region IN ('north', 'east') USING count(*)", [[100, 100]]),
        ("SELECT generate_subscripts([5, 6], 1) AS i", [[1], [2]]),
        ("WITH d AS (FROM main.data), e AS (FROM d WHERE id < 2) SELECT count(*) FROM e", [[2]]),
        (
            "WITH RECURSIVE t(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM t WHERE n < 3) FROM t",
            [[1], [2], [3]],
        ),
        ("SELECT count(*) FROM memory.main.DATA", [[300]]),
        ("SELECT count(*) FROM memory.data", [[300]]),
        (
            "WITH RECURSIVE t(n, m) USING KEY (n) AS (SELECT 1, 1 UNION SELECT n, m + 1 FROM recurring.t "
            "WHERE m < 3) FROM t",
            [[1, 3]],
        ),
        ("SHOW TABLES", [["data"]]),
        ("SELECT column_name FROM (DESCRIBE data)", [["id"], ["region"], ["amount"]]),
        ("SELECT count(*) FROM (SUMMARIZE data)", [[3]]),
    ],
)
def test_table_functions_making_rows_from_their_arguments_may_be_called(
    table: Path, sql: str, rows: list[list[Any]]
) -> None:
    """The table functions a query may call, a PIVOT naming its values, CTEs (one reading another, a
    recursive one), `data` named with its schema, and DESCRIBE and SUMMARIZE of it run."""
    assert ask(table, sql).rows == rows


@pytest.mark.parametrize(
    ("sql", "why"),
    [
        ("SELECT current_setting('allowed_paths')", r"current_setting\(\) shows the service's own setup"),
        ("SELECT current_query()", r"current_query\(\) shows the service's own setup"),
        ("SELECT VERSION() FROM data", r"version\(\) shows the service's own setup"),
        ("SELECT * FROM duckdb_settings()", r"duckdb_settings\(\) is not among"),
        ("SELECT * FROM duckdb_views()", r"duckdb_views\(\) is not among"),
        ("SELECT * FROM duckdb_extensions()", r"duckdb_extensions\(\) is not among"),
        ("SELECT * FROM data WHERE id IN (FROM arrow_scan(0, 0, 0))", r"arrow_scan\(\) is not among"),
        ("PIVOT data ON region USING count(*)", "a PIVOT must list the values"),
        ("PIVOT data ON region IN (SELECT DISTINCT region FROM data) USING count(*)", "or with a subquery"),
        ("SELECT setting FROM pg_settings WHERE name = 'allowed_paths'", "not pg_settings"),
        ("SUMMARIZE pg_settings", "not pg_settings"),
        ("SELECT * FROM duckdb_tables", "not duckdb_tables"),
        ("SELECT * FROM information_schema.tables", "not information_schema.tables"),
        ("SELECT * FROM system.main.duckdb_settings", "not system.main.duckdb_settings"),
        ("SELECT * FROM (WITH pg_settings AS (SELECT 1) FROM pg_settings), pg_settings", "not pg_settings"),
        ("WITH a AS (FROM pg_settings), pg_settings AS (SELECT 1) FROM a", "not pg_settings"),
        ("WITH pg_settings AS (SELECT * FROM pg_settings) FROM pg_settings", "not pg_settings"),
        ("WITH RECURSIVE pg_settings AS (SELECT name FROM pg_settings) FROM pg_settings", "not pg_settings"),
        (
            "WITH RECURSIVE pg_settings AS (SELECT name FROM pg_settings UNION ALL "
            "SELECT name FROM pg_settings WHERE false) FROM pg_settings",
            "not pg_settings",
        ),
        (
            "FROM data WHERE EXISTS (WITH pg_settings AS (FROM pg_settings) FROM pg_settings)",
            "not pg_settings",
        ),
        ('WITH "duc\u212adb_views" AS (SELECT 1) SELECT sql FROM duckdb_views', "not duckdb_views"),
        (
            "SELECT pg_get_viewdef(o) FROM range(0, 10) r(o)",
            r"pg_get_viewdef\(\) shows the service's own setup",
        ),
        ("SHOW pg_settings", "not pg_settings"),
        (
            "SELECT json_serialize_plan('SELECT current_setting(''allowed_paths'') AS v', optimize := true)",
            r"json_serialize_plan\(\) shows the service's own setup",
        ),
        (
            "SELECT json_serialize_sql('SELECT current_setting(''temp_directory'')')",
            r"json_serialize_sql\(\) shows the service's own setup",
        ),
    ],
)
def test_what_shows_the_services_setup_is_refused(table: Path, sql: str, why: str) -> None:
    """Functions and DuckDB's own views showing the service's paths (the input cache's, the job's scratch
    directory: `pg_settings` showed them past the check of table functions), its statements or its catalog
    are refused before anything runs, naming nothing of the server's, a CTE of such a name counting only
    where it is in scope; so is a PIVOT that would run statements of its own."""
    with pytest.raises(InvalidParams, match=why) as caught:
        ask(table, sql)
    assert str(table.parent) not in caught.value.message


def test_check_sql_returns_the_query() -> None:
    """A single query passes the check unchanged."""
    assert check_sql("SELECT 1") == "SELECT 1"


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT * FROM read_csv('/etc/passwd')",
        "SELECT * FROM read_text('{dir}/secret.txt')",
        "SELECT * FROM '{dir}/secret.txt'",
        "SELECT * FROM glob('{dir}/*')",
        "SELECT * FROM read_blob('/proc/self/environ')",
        "SELECT * FROM query('SELECT * FROM read_text(''{dir}/secret.txt'')')",
    ],
)
def test_queries_reading_other_files_are_refused(table: Path, sql: str) -> None:
    """Table functions reading any file but the input fail with INVALID_PARAMS and reveal nothing."""
    secret = table.parent / "secret.txt"
    secret.write_text("TOP-SECRET-CONTENT", encoding="utf-8")
    with pytest.raises(InvalidParams) as caught:
        ask(table, sql.format(dir=table.parent))
    assert "TOP-SECRET" not in caught.value.message
    assert caught.value.error_code == "INVALID_PARAMS"


def test_reading_etc_passwd_says_why(table: Path) -> None:
    """`read_csv('/etc/passwd')` is refused with a message saying only `data` may be read."""
    with pytest.raises(InvalidParams, match="may read only the table `data`, no files") as caught:
        ask(table, "SELECT * FROM read_csv('/etc/passwd')")
    assert "root:" not in caught.value.message


def test_a_bad_column_is_invalid_params(table: Path) -> None:
    """A query naming a missing column fails with INVALID_PARAMS and DuckDB's reason."""
    with pytest.raises(InvalidParams, match=r"the query failed: .*nope"):
        ask(table, "SELECT nope FROM data")


def test_query_past_the_time_limit_times_out(table: Path) -> None:
    """A query running past its time limit is interrupted and fails with TIMEOUT."""
    started = time.monotonic()
    with pytest.raises(JobTimeout, match=r"time limit of 0\.5 s") as caught:
        ask(
            table,
            "SELECT sum(hash(a.range * b.range)) FROM range(1000000) a, range(1000000) b",
            time_limit_s=0.5,
        )
    assert caught.value.error_code == "TIMEOUT"
    assert time.monotonic() - started < 5


def test_a_query_in_a_capped_child_times_out_and_fails_for_memory_as_in_the_worker(table: Path) -> None:
    """The service runs a query in a child process with its memory capped (`Limits.resident_cap`): the time
    limit's TIMEOUT comes back as such, a value past the cap ends the child (the handler makes that an
    INVALID_PARAMS), not the worker, and a full disk's error is still one (retried, not the query's)."""
    limits = Limits(memory_limit="64MB")

    runs = iter(range(100))

    def in_child(sql: str, **kwargs: Any) -> Any:
        out = table.parent / f"out-{next(runs)}" / "answer.parquet"
        run = partial(
            run_query, table, params=DataQueryParams(sql=sql), out_path=out, memory_limit="64MB", **kwargs
        )
        return run_in_child(
            run, (), report=lambda *_: None, abandoned=lambda: False, memory_cap=limits.resident_cap
        )

    assert in_child("SELECT count(*) FROM data").rows == [[len(ROWS)]]
    with pytest.raises(JobTimeout, match=r"time limit of 0\.5 s") as caught:
        in_child(
            "SELECT sum(hash(a.range * b.range)) FROM range(1000000) a, range(1000000) b", time_limit_s=0.5
        )
    assert caught.value.error_code == "TIMEOUT"
    with pytest.raises(OverMemoryCap):
        in_child(f"SELECT length(repeat('x', {limits.resident_cap})) FROM data")
    sql = "SELECT md5(CAST(a.id * 1000 + b.id AS VARCHAR)) AS h FROM data AS a, data AS b"
    with small_disk(table.parent / "disk", 128 * 1024) as disk, pytest.raises(duckdb.Error) as raised:
        run_in_child(
            partial(run_query, table, params=DataQueryParams(sql=sql), out_path=disk.path / "answer.parquet"),
            (),
            report=lambda *_: None,
            abandoned=lambda: False,
            memory_cap=limits.resident_cap,
        )
    assert disk_full(raised.value), raised.value  # the runner's retry still knows the disk's error


@pytest.mark.parametrize(
    ("sql", "why"),
    [
        ("UPDATE EXTENSIONS", r"only a read-only query \(SELECT, WITH or VALUES\)"),
        ("SELECT " + "[" * 700 + "1" + "]" * 700, "nests too deeply to be checked"),
        ("SELECT " + "{'a': " * 700 + "1" + "}" * 700, "nests too deeply to be checked"),
    ],
    ids=["a-statement-kind-without-a-name", "lists-700-deep", "structs-700-deep"],
)
def test_what_the_check_cannot_read_is_invalid_params(table: Path, sql: str, why: str) -> None:
    """A statement of a kind DuckDB's Python module has no name for, and a query nested deeper than
    Python's JSON reader goes (DuckDB parses 1,000 levels), failed the check itself: INTERNAL_ERROR."""
    with pytest.raises(InvalidParams, match=why):
        ask(table, sql)


def test_a_query_planned_past_the_time_limit_ends_its_child_with_timeout(table: Path) -> None:
    """DuckDB's optimizer heeds no interrupt: 14 CTEs, each filtering on the one before and not
    materialized (1 KB of SQL), were planned for 150-200 s past a 1 s limit, the job's only bound its hour.
    The child process ends with TIMEOUT once the interrupt has gone unheeded for `STOP_GRACE_S`."""
    ctes = [
        "a0 AS (SELECT 1 AS x)",
        *(
            f"a{i} AS NOT MATERIALIZED (SELECT x FROM a{i - 1} WHERE x IN (SELECT x FROM a{i - 1}))"
            for i in range(1, 14)
        ),
    ]
    run = partial(
        run_query,
        table,
        params=DataQueryParams(sql=f"WITH {', '.join(ctes)} SELECT count(*) FROM a13"),
        out_path=table.parent / "planned" / "answer.parquet",
        time_limit_s=1.0,
    )
    started = time.monotonic()
    with pytest.raises(JobTimeout, match=r"time limit of 1 s"):
        run_in_child(run, (), report=lambda *_: None, abandoned=lambda: False)
    # Far below the 150 s of planning; the slack is the child's start, 4-6 s under CI's coverage (the run
    # took 8.01 s against a slack of 5 s once).
    assert time.monotonic() - started < 1.0 + STOP_GRACE_S + 20


def test_cancel_stops_a_running_query(table: Path) -> None:
    """A cancel asked for while the query runs stops it with JobCancelled."""
    deadline = time.monotonic() + 0.5
    with pytest.raises(JobCancelled):
        ask(
            table,
            "SELECT sum(hash(a.range * b.range)) FROM range(1000000) a, range(1000000) b",
            cancelled=lambda: time.monotonic() > deadline,
        )
    assert time.monotonic() - deadline < 2


def test_an_answer_past_the_size_it_may_be_stored_as_is_refused(table: Path) -> None:
    """A few bytes of SQL can ask for gigabytes: an answer whose Parquet passes `max_answer_bytes` fails
    with INVALID_PARAMS and is not kept; one within it is stored whole."""
    sql = "SELECT i, md5(i::VARCHAR) AS h FROM range(20000) t(i)"  # ~700 KB of Parquet: md5 barely packs
    with pytest.raises(
        InvalidParams, match="more than the 100,000 bytes of Parquet a query may store"
    ) as caught:
        ask(table, sql, max_answer_bytes=100_000)
    assert caught.value.error_code == "INVALID_PARAMS"
    assert not (table.parent / "out" / "answer.parquet").exists()
    assert ask(table, sql, max_answer_bytes=10_000_000).row_count == 20000


def test_an_answer_growing_past_its_size_is_stopped_while_it_is_written(table: Path) -> None:
    """The answer's size is watched as it is written: 40 million rows (860 MB of Parquet, written whole in
    28 s before being refused) stop within a few megabytes of the limit."""
    sql = "SELECT i, md5(i::VARCHAR) || md5((i + 1)::VARCHAR) AS h FROM range(40000000) t(i)"
    with pytest.raises(InvalidParams, match="more than the 1,000,000 bytes of Parquet") as caught:
        ask(table, sql, max_answer_bytes=1_000_000)
    written = re.search(r"\(([\d,]+) written\)", caught.value.message)
    assert written is not None
    assert 1_000_000 < int(written[1].replace(",", "")) < 50_000_000
    assert not (table.parent / "out" / "answer.parquet").exists()


def test_nanoseconds_intervals_and_decimals_come_exactly(tmp_path: Path) -> None:
    """`SELECT *` over a Parquet file of nanosecond timestamps and times, intervals and wide decimals gives
    each value exactly: the nanoseconds were cut (one before 1970 read as 1970 itself), and a DECIMAL(38,2)
    came as a rounded float."""
    path = tmp_path / "input.parquet"
    with duckdb.connect() as con:
        con.execute(
            "COPY (SELECT * FROM (VALUES "
            "(TIMESTAMP_NS '1969-12-31 23:59:59.999999999', "
            " TIMESTAMPTZ_NS '2024-01-01 12:00:00.123456789+00', TIME_NS '01:02:03.000000001', "
            " INTERVAL '1 month 2 days', '12345678901234567.89'::DECIMAL(38,2))"
            f") v(ts, tz, tm, iv, amount)) TO '{path}' (FORMAT parquet)"
        )
    answer = ask(path, "SELECT * FROM data")
    assert answer.rows == [
        [
            "1969-12-31T23:59:59.999999999",
            "2024-01-01T12:00:00.123456789+00:00",
            "01:02:03.000000001",
            "1 month 2 days",
            "12345678901234567.89",
        ]
    ]
    assert [c.dtype for c in answer.columns] == [
        "TIMESTAMP_NS",
        "TIMESTAMPTZ_NS",
        "TIME_NS",
        "INTERVAL",
        "DECIMAL(38,2)",
    ]


def test_an_answer_with_no_room_on_the_disk_is_not_blamed_on_the_query(table: Path, tmp_path: Path) -> None:
    """A query whose answer's file has no room (a real 128 KB disk) raises the disk's error, which the job
    runner retries, rather than failing INVALID_PARAMS as a query that "failed"."""
    sql = "SELECT md5(CAST(a.id * 1000 + b.id AS VARCHAR)) AS h FROM data AS a, data AS b"
    with small_disk(tmp_path / "disk", 128 * 1024) as disk, pytest.raises(duckdb.Error) as raised:
        run_query(table, params=DataQueryParams(sql=sql, limit=10), out_path=disk.path / "answer.parquet")
    assert disk_full(raised.value), raised.value


def test_a_query_spilling_past_the_spill_limit_fails_as_the_querys(table: Path, tmp_path: Path) -> None:
    """A sort that must spill more than `spill_limit` (DuckDB's `max_temp_directory_size`) fails with
    INVALID_PARAMS: without a limit DuckDB spills up to 90% of the disk's free space, which in a pod is the
    node's, past the scratch volume (the pod is evicted). The same sort with room to spill succeeds."""
    sql = "SELECT count(*) FROM (SELECT range, md5(range::VARCHAR) AS h FROM range(3000000) ORDER BY h)"
    with pytest.raises(InvalidParams, match="more memory than this service allows"):
        ask(table, sql, memory_limit="64MB", temp_dir=tmp_path / "spill", spill_limit="20MB")
    assert ask(table, sql, memory_limit="64MB", temp_dir=tmp_path / "spill", spill_limit="1GB") is not None


def test_infinite_dates_and_timestamps_come_as_infinity(tmp_path: Path) -> None:
    """`infinity` and `-infinity` dates and timestamps (an open-ended validity in a PostgreSQL export) come
    as such: they came as 9999-12-31 and 0001-01-01, real dates. Finite ones come as Python writes them, at
    every precision, with microseconds only when there are any."""
    path = tmp_path / "input.csv"
    path.write_text(
        "id,valid_to,seen_at\n1,infinity,2024-01-02 03:04:05\n2,-infinity,2024-01-02 03:04:05.25\n"
        "3,2024-05-06,-infinity\n",
        encoding="utf-8",
    )
    answer = ask(
        path,
        "SELECT id, valid_to::DATE AS d, t, t::TIMESTAMPTZ AS tz, t::TIMESTAMP_MS AS ms, t::TIMESTAMP_S AS s "
        "FROM (SELECT *, seen_at::VARCHAR::TIMESTAMP AS t FROM data) ORDER BY id",
    )
    assert [c.dtype for c in answer.columns][1:] == [
        "DATE",
        "TIMESTAMP",
        "TIMESTAMP WITH TIME ZONE",
        "TIMESTAMP_MS",
        "TIMESTAMP_S",
    ]
    whole, quarter = "2024-01-02T03:04:05", "2024-01-02T03:04:05.250000"
    assert answer.rows == [
        [1, "infinity", whole, f"{whole}+00:00", whole, whole],
        [2, "-infinity", quarter, f"{quarter}+00:00", quarter, whole],
        [3, "2024-05-06", "-infinity", "-infinity", "-infinity", "-infinity"],
    ]


def test_an_integer_of_39_digits_comes_back_as_text_instead_of_failing_the_query(tmp_path: Path) -> None:
    """A CSV column holding the largest 128-bit integer (39 digits) failed even `SELECT * FROM data`
    ("Could not cast value ... to DECIMAL(38,0)", INVALID_PARAMS, for a query with nothing wrong): its
    answer's 128-bit columns are written as their text then, exact; narrower ones stay DECIMAL(38,0)."""
    widest = 170141183460469231731687303715884105727
    path = tmp_path / "wide.csv"
    path.write_text(f"id,big\n1,{widest}\n2,-5\n", encoding="utf-8")
    answer = run_query(
        path, params=DataQueryParams(sql="SELECT * FROM data"), out_path=tmp_path / "a.parquet"
    )
    assert answer.rows == [[1, str(widest)], [2, -5]]
    with duckdb.connect() as con:
        stored = con.execute(f"SELECT id, big, typeof(big) FROM read_parquet('{answer.path}')").fetchall()
    assert stored == [(1, str(widest), "VARCHAR"), (2, "-5", "VARCHAR")]


def test_a_json_key_of_several_kinds_is_text_as_written(tmp_path: Path) -> None:
    """A key holding a number here and a string there (codes, ids) was DuckDB's JSON type: the string
    A-7 read `"A-7"`, quotes and all, and `WHERE code = 'A-7'` failed. It is text, each value as written."""
    path = tmp_path / "codes.jsonl"
    path.write_text('{"code": 101}\n{"code": "A-7"}\n{"code": "007"}\n{"code": true}\n', encoding="utf-8")
    answer = run_query(
        path, params=DataQueryParams(sql="SELECT code FROM data"), out_path=tmp_path / "a.parquet"
    )
    assert [(c.name, c.dtype) for c in answer.columns] == [("code", "VARCHAR")]
    assert answer.rows == [["101"], ["A-7"], ["007"], ["true"]]
    found = run_query(
        path,
        params=DataQueryParams(sql="SELECT count(*) AS n FROM data WHERE code = 'A-7'"),
        out_path=tmp_path / "b.parquet",
    )
    assert found.rows == [[1]]


def test_a_json_key_null_in_the_sample_keeps_its_later_values(tmp_path: Path) -> None:
    """A key null in all of the first 20,480 objects was typed NULL, and its later values were dropped
    without a word: they read now, whatever their kind."""
    path = tmp_path / "late.jsonl"
    head = "".join(f'{{"a": {i}, "b": null}}\n' for i in range(21_000))
    path.write_text(head + '{"a": 1, "b": 5}\n{"a": 2, "b": 7}\n', encoding="utf-8")
    answer = run_query(
        path,
        params=DataQueryParams(sql="SELECT b FROM data WHERE b IS NOT NULL ORDER BY b"),
        out_path=tmp_path / "a.parquet",
    )
    assert answer.rows == [[5], [7]]


def test_a_mixed_key_beside_day_first_dates_and_keys_differing_by_case_reads_every_column(
    tmp_path: Path,
) -> None:
    """Reading a key of several kinds as text keeps the rest of the table as it was read: a day-first
    date stays a date, and of two keys differing only by case the second (renamed `ID_1`) keeps its
    values (a reading with the types given lost both)."""
    path = tmp_path / "mixed.jsonl"
    path.write_text(
        '{"d": "13-01-2024", "id": 1, "ID": 2, "code": 101}\n'
        '{"d": "14-01-2024", "id": 3, "ID": 4, "code": "A-7"}\n',
        encoding="utf-8",
    )
    answer = run_query(
        path, params=DataQueryParams(sql="SELECT * FROM data"), out_path=tmp_path / "a.parquet"
    )
    assert [c.dtype for c in answer.columns] == ["DATE", "BIGINT", "BIGINT", "VARCHAR"]
    assert answer.rows == [["2024-01-13", 1, 2, "101"], ["2024-01-14", 3, 4, "A-7"]]


def test_json_integers_past_64_bits_are_exact(tmp_path: Path) -> None:
    """DuckDB's JSON reader types a key of integers past 64 bits DOUBLE and rounds each to 16 digits:
    neighbouring ids became one (`count(DISTINCT id)` 1 of 3) and `WHERE id = ...` found nothing. They are
    HUGEINT now, or BIGNUM past its 39 digits, as a CSV's are; a key with a fraction stays a double. A long
    id first met past the sampled objects is exact too, every row beside its own values."""
    base = 12345678901234567890123
    forty = 10**39 + 7
    path = tmp_path / "ids.jsonl"
    lines = [f'{{"n": {n}, "id": {base + n}, "wide": {forty + n}, "x": {base + n}.5}}\n' for n in range(3)]
    # A key absent from an object, or null there, leaves it HUGEINT (it made the column BIGNUM).
    lines += ['{"n": 3, "id": null, "wide": null, "x": null}\n', '{"n": 4}\n']
    path.write_text("".join(lines), encoding="utf-8")
    answer = run_query(
        path,
        params=DataQueryParams(
            sql=f"SELECT count(DISTINCT id) AS ids, max(wide) AS w, * FROM data"
            f" WHERE id = {base + 1} GROUP BY ALL"
        ),
        out_path=tmp_path / "a.parquet",
    )
    assert [(c.name, c.dtype) for c in answer.columns] == [
        ("ids", "BIGINT"),
        ("w", "BIGNUM"),
        ("n", "BIGINT"),
        ("id", "HUGEINT"),
        ("wide", "BIGNUM"),
        ("x", "DOUBLE"),
    ]
    assert answer.rows == [[1, str(forty + 1), 1, str(base + 1), str(forty + 1), float(base)]]
    late = tmp_path / "late.jsonl"
    rows = 30_000
    late.write_text(
        "".join(f'{{"n": {n}, "id": {n}}}\n' for n in range(rows - 2))
        + "".join(f'{{"n": {n}, "id": {base + n}}}\n' for n in range(rows - 2, rows)),
        encoding="utf-8",
    )
    answer = run_query(
        late,
        params=DataQueryParams(
            sql="SELECT count(*) FILTER (id = n), min(id - n) FILTER (id <> n), max(id - n) FILTER (id <> n)"
            " FROM data"
        ),
        out_path=tmp_path / "b.parquet",
    )
    assert answer.rows == [[rows - 2, str(base), str(base)]]


@pytest.mark.parametrize("among", ["", "NA", "infinity", "2024-01-02"])
def test_a_csv_timestamps_offset_past_the_sample_and_its_nanoseconds_are_kept(
    tmp_path: Path, among: str
) -> None:
    """DuckDB types a CSV column TIMESTAMP from its sample, and then dropped a UTC offset first met past
    it (`10:00:00+02:00` read 10:00, two hours wrong, even with types guessed from every row), and cut
    every timestamp to microseconds (pandas writes nanoseconds). Such a column is TIMESTAMPTZ (a time
    without an offset read as UTC, as DuckDB reads one beside offsets) or TIMESTAMP_NS; so is one holding
    a null marker, `infinity` or a date alone (found in review: those kept the offset dropped)."""
    late = tmp_path / "late.csv"
    rows = [f"{i},2024-01-01 10:00:00" for i in range(21_000)] + ["21000,2024-01-01 10:00:00+02:00"]
    if among:
        rows.append(f"21001,{among}")
    late.write_text("id,t\n" + "\n".join(rows) + "\n", encoding="utf-8")
    answer = run_query(
        late,
        params=DataQueryParams(sql="SELECT t FROM data WHERE id IN (0, 21000) ORDER BY id"),
        out_path=tmp_path / "a.parquet",
    )
    assert [c.dtype for c in answer.columns] == ["TIMESTAMP WITH TIME ZONE"]
    assert answer.rows == [["2024-01-01T10:00:00+00:00"], ["2024-01-01T08:00:00+00:00"]]
    fine = tmp_path / "fine.csv"
    among = "" if among == "infinity" else among  # in a sample, DuckDB types the column TIMESTAMPTZ itself
    fine.write_text(
        f"id,t\n1,2024-01-01T10:00:00.123456789\n2,2024-01-01 10:00:00.5\n3,{among}\n", encoding="utf-8"
    )
    answer = run_query(
        fine,
        params=DataQueryParams(sql="SELECT t, epoch_ns(t) % 1000 AS ns FROM data WHERE id < 3 ORDER BY id"),
        out_path=tmp_path / "b.parquet",
    )
    assert [c.dtype for c in answer.columns] == ["TIMESTAMP_NS", "BIGINT"]
    assert answer.rows == [["2024-01-01T10:00:00.123456789", 789], ["2024-01-01T10:00:00.500000000", 0]]


def test_32_bit_floats_come_as_written(tmp_path: Path) -> None:
    """A Parquet FLOAT's 0.1 came as 0.10000000149011612 in the rows, the double it widens to: it comes as
    0.1, as the CSV output writes it; arithmetic on it is DuckDB's, in doubles; the file keeps the FLOAT."""
    path = tmp_path / "floats.parquet"
    duckdb.sql(f"COPY (SELECT 0.1::FLOAT AS f, 'nan'::FLOAT AS g) TO '{path}'")
    answer = run_query(
        path,
        params=DataQueryParams(sql="SELECT f, g, f::DOUBLE AS d FROM data"),
        out_path=tmp_path / "a.parquet",
    )
    assert answer.rows == [[0.1, None, 0.10000000149011612]]
    assert duckdb.sql(f"SELECT typeof(f) FROM '{answer.path}'").fetchall() == [("FLOAT",)]


def test_json_uuids_in_capitals_keep_their_text(tmp_path: Path) -> None:
    """DuckDB's JSON reader types a key of UUIDs UUID and gives them back in lower case: a SQL Server
    export's ids no longer matched their source. Written with capitals they are text as written (as a
    CSV's are); lower-case ones stay UUID. A key named like the columns read beside the rows is a key."""
    guid = "6F9619FF-8B86-D011-B42D-00C04FC964FF"
    path = tmp_path / "guids.jsonl"
    path.write_text(
        f'{{"medialens exact 0": 1, "u": "{guid}", "v": "{guid.lower()}"}}\n'
        f'{{"medialens exact 0": 2, "u": "{guid.lower()}", "v": "{guid.lower()}"}}\n',
        encoding="utf-8",
    )
    answer = run_query(
        path,
        params=DataQueryParams(sql=f"SELECT * FROM data WHERE u = '{guid}' OR u = '{guid.lower()}'"),
        out_path=tmp_path / "a.parquet",
    )
    assert [(c.name, c.dtype) for c in answer.columns] == [
        ("medialens exact 0", "BIGINT"),
        ("u", "VARCHAR"),
        ("v", "UUID"),
    ]
    assert answer.rows == [[1, guid, guid.lower()], [2, guid.lower(), guid.lower()]]


def test_nested_values_come_as_exactly_as_top_level_ones(tmp_path: Path) -> None:
    """Timestamps, dates, times and 32-bit floats in lists, arrays, structs and maps (`list(ts)` of a
    GROUP BY) come as they do at the top level: `[TIMESTAMP 'infinity']` came as 9999-12-31T23:59:59.999999,
    a nested TIMESTAMP_NS without its nanoseconds, a nested 0.1 FLOAT as 0.10000000149011612. A list of
    them with a 128-bit integer past 38 digits beside (written as text, then read back) too."""
    path = tmp_path / "input.parquet"
    with duckdb.connect() as con:
        con.execute(
            "COPY (SELECT [TIMESTAMP 'infinity', TIMESTAMP '2024-01-02 03:04:05.25', NULL] AS ts, "
            "[TIMESTAMP_NS '1969-12-31 23:59:59.999999999']::TIMESTAMP_NS[1] AS ns, "
            "{'until': DATE '-infinity', 'at': TIME_NS '01:02:03.000000001', 'f': 0.1::FLOAT} AS s, "
            "MAP {'a': [TIMESTAMPTZ_NS '2024-01-01 12:00:00.123456789+00']} AS m, "
            "[[0.1::FLOAT]] AS deep, CAST(NULL AS STRUCT(t TIMESTAMP)) AS gone"
            f") TO '{path}' (FORMAT parquet)"
        )
    answer = ask(path, "SELECT * FROM data")
    assert answer.rows == [
        [
            ["infinity", "2024-01-02T03:04:05.250000", None],
            ["1969-12-31T23:59:59.999999999"],
            {"until": "-infinity", "at": "01:02:03.000000001", "f": 0.1},
            {"a": ["2024-01-01T12:00:00.123456789+00:00"]},
            [[0.1]],
            None,
        ]
    ]
    widest = 170141183460469231731687303715884105727
    huge = ask(path, f"SELECT [{widest}::HUGEINT] AS big, [TIMESTAMP_NS '2024-01-01 00:00:00.5'] AS ns")
    assert huge.rows == [[[str(widest)], ["2024-01-01T00:00:00.500000000"]]]


def test_a_deeply_nested_value_is_read_within_a_bounded_rewriting(tmp_path: Path) -> None:
    """A struct of structs ten levels deep holding 1,024 timestamps is answered, its values as DuckDB's
    client reads them: writing each timestamp exactly took 520 KB of SQL, which DuckDB took 11 s to bind
    (`SELECT * FROM data` ran past a 5 s limit, for an input of 82 KB). Nested values stay exact below the
    bound (`test_nested_values_come_as_exactly_as_top_level_ones`)."""
    value = "TIMESTAMP '2020-01-01 00:00:00.5'"
    for _ in range(10):
        value = f"{{'a': {value}, 'b': {value}}}"
    path = tmp_path / "deep.parquet"
    with duckdb.connect() as con:
        con.execute(f"COPY (SELECT {value} AS c) TO '{path}' (FORMAT parquet)")
        dtype = str(con.sql(f"SELECT {value}").types[0])
    assert as_text("c", dtype) == "c"  # past NESTED_SQL_BUDGET: left to DuckDB's client
    answer = ask(path, "SELECT * FROM data")
    leaf = answer.rows[0][0]
    for _ in range(10):
        leaf = leaf["b"]
    assert leaf == "2020-01-01T00:00:00.500000"
    small = "TIMESTAMP 'infinity'"
    for _ in range(3):
        small = f"{{'a': {small}, 'b': {small}}}"
    written = as_text("c", str(duckdb.sql(f"SELECT {small}").types[0]))
    assert written != "c"
    assert len(written) <= NESTED_SQL_BUDGET
