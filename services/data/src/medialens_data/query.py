"""`data.query`: one read-only SQL query over the input, exposed as the table `data`, in a sandbox.

The sandbox, in the order it is built:

1. The SQL must parse (`duckdb.extract_statements`) as exactly one statement of type SELECT, which covers
   `SELECT`, `WITH`, `VALUES`, `FROM data`, `DESCRIBE`/`SUMMARIZE`/`SHOW`; anything else (`COPY`,
   `ATTACH`, `INSTALL`/`LOAD`, `SET`/`RESET`, `PRAGMA`, `CALL`, `EXPLAIN`, DDL, DML, two statements) is
   refused before any data is read. A SELECT can hold statements of its own: a CTE may be a `COPY ... TO`,
   an `INSERT`, `UPDATE` or `DELETE ... RETURNING` (`WITH x AS (COPY ... TO 'file') SELECT 1`), which
   the statement's type does not show, and a `COPY` there writes any file the fence lets it reach, the
   input among them (a kept input is shared by the jobs of the same bytes). So the query's whole syntax
   tree, as DuckDB serializes it (`json_serialize_sql`), must hold query nodes only (`SELECT_NODE`,
   set operations, recursive CTEs): a node of a statement (`COPY_QUERY_NODE`, `DELETE_QUERY_NODE`...)
   anywhere in it is refused, and so is a query DuckDB cannot serialize, which it cannot vouch for.
   The tree's table functions must be among the few that make rows from their arguments
   (`_TABLE_FUNCTIONS`: `range`, `unnest`...): the others read files or the catalog, show the service's
   setup, or run SQL given as text, which the tree holds as a string it cannot check (`query`,
   `json_execute_serialized_sql`, and `destroy_external_resource`, which calls any function named in a
   string). Its tables must be `data` or its own CTEs: DuckDB's views (`pg_settings`) show the settings,
   the service's paths among them. Functions that show the service's own setup (`current_setting`: its
   paths and limits) are refused too, and so are DuckDB's macros that read its catalog (`pg_get_viewdef`).
2. The engine's connection (`engine.connect`) may touch only the input and the answer's file: external
   access is off, so a table function reading any other file (`read_csv('/etc/passwd')`, `glob`,
   `read_text`), the network or an extension fails; configuration is locked after the input is loaded,
   with the job's memory and thread limits.
3. A watchdog interrupts the query after `MEDIALENS_WORKER_QUERY_TIME_LIMIT_S` (`QUERY_TIME_LIMIT_S` when
   called without one; the job fails with `TIMEOUT`) or on cancel.

Errors of the query itself (a bad column, a refused file, a failed cast) fail with `INVALID_PARAMS` and
DuckDB's reason; a damaged Parquet input fails with `MEDIA_DECODE_ERROR`, as in the other table jobs. The
whole answer is written once, to zstd Parquet; its first `limit` rows and its row count are read back from
that file, so the query runs exactly once.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import duckdb
from pydantic_core import to_json

from medialens_data.engine import (
    PARQUET_HUGE,
    Limits,
    Report,
    Watchdog,
    as_text,
    connect,
    huge_parquet_types,
    ident,
    json_value,
    literal,
    lock,
    parquet_type,
    reason,
)
from medialens_data.source import damage, expose, inspect, read_fault
from medialens_shared.contracts import DataQueryParams, QueryColumn
from medialens_shared.errors import InvalidParams, disk_full

#: How long the user's query may run (the input's loading is not counted).
QUERY_TIME_LIMIT_S = 30.0
#: The name the input has in the query.
TABLE = "data"
#: JSON bytes of answer rows a result carries at most, whatever the `limit`: the whole answer is in its
#: Parquet file, and a stored result must stay under MongoDB's 16 MB document limit (`limit` rows of a
#: wide answer can pass it; then the result could not be stored and the job failed).
INLINE_ROWS_BYTES = 8 * 2**20
#: How DuckDB's serialized syntax tree names a node that is a statement (`COPY_QUERY_NODE`); the nodes of a
#: read-only query are `SELECT_NODE`, `SET_OPERATION_NODE`, `RECURSIVE_CTE_NODE`...
_STATEMENT_NODE = "_QUERY_NODE"
#: The table functions a query may call: each makes rows from its arguments alone. An allowlist: of
#: DuckDB's hundred others, some read files or the catalog (`read_csv`, `duckdb_views`), show the service's
#: paths (`duckdb_settings`), read raw pointers (`arrow_scan`), or run SQL given as a string, which the
#: syntax tree holds as a constant and so cannot check: `json_execute_serialized_sql` ran a serialized
#: `COPY ... TO` over the input itself (the input cache's copy, which other tenants' jobs read), `query`
#: runs a string that may call it in turn, and `destroy_external_resource` (DuckDB 2) calls any function
#: named in a string, which ran such a COPY, and a query the time limit did not stop, when it was refused
#: only by name.
_TABLE_FUNCTIONS = frozenset(
    {"range", "generate_series", "unnest", "json_each", "json_tree", "repeat", "repeat_row"}
)
#: The tables a query may read besides its own CTEs: the input, as `data` or `main.data` (the connection's
#: database is `memory`). DuckDB's own views (`pg_settings`, `duckdb_tables`, `information_schema.*`) show
#: its settings, the service's paths among them, and its catalog: they are refused as files are.
_TABLES = frozenset({TABLE, f"main.{TABLE}", f"memory.{TABLE}", f"memory.main.{TABLE}"})
#: Where a CTE's name may be qualified: not at all, or `recurring.` (a `USING KEY` CTE's rows so far).
_CTE_PLACES = frozenset({("", ""), ("", "recurring")})
#: What `SHOW` lists that is not a table's columns: the database's tables (the input, `data`, alone) and
#: databases; `SUMMARIZE` and `DESCRIBE` of a query show no name.
_SHOWN_LISTS = frozenset({"", "tables", "databases", "__show_tables_expanded"})


#: Functions that show the service's own setup: its paths, limits and secrets' directory
#: (`current_setting`), the statement that writes the answer's file (`current_query`), the engine's version
#: (`version`: which of DuckDB's published flaws an attacker may try), a plan of SQL given
#: as a string, which the check cannot see into and whose constants are folded (`json_serialize_plan` of
#: `SELECT current_setting('allowed_paths')` gave every path; `json_serialize_sql` beside it); and
#: DuckDB's macros that read its catalog in a query of their own, which the syntax tree does not show
#: (`pg_get_viewdef` showed the view that reads a Parquet input, with its path), found in DuckDB's list of
#: its macros.
def _catalog_macros() -> frozenset[str]:
    with duckdb.connect(":memory:") as con:
        rows = con.execute(
            "SELECT DISTINCT function_name FROM duckdb_functions() WHERE function_type IN ('macro', "
            "'table_macro') AND regexp_matches(lower(macro_definition), '\\bfrom\\b')"
        ).fetchall()
    return frozenset(str(name) for (name,) in rows)


_REVEALING_FUNCTIONS = (
    frozenset({"current_setting", "current_query", "version", "json_serialize_plan", "json_serialize_sql"})
    | _catalog_macros()
)
#: Share of the job's progress that loading the input takes.
_LOAD_SHARE = 0.5


@dataclass(frozen=True, slots=True)
class Answer:
    columns: list[QueryColumn]
    rows: list[list[Any]]
    row_count: int
    path: Path


def check_sql(sql: str, con: Any = None) -> str:
    """The one read-only statement in `sql`; `InvalidParams` saying why when there is anything else.

    `con` serializes its syntax tree: the job's own connection (a connection opened for it alone took
    15 ms, half of a small query's time); without one, one is opened here.
    """
    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error as exc:
        raise InvalidParams(f"the SQL does not parse: {reason(exc)}") from exc
    if len(statements) != 1:
        raise InvalidParams(
            f"give exactly one SQL statement, a query over the table `{TABLE}`; found {len(statements)}"
        )
    try:
        kind = statements[0].type
    except ValueError as exc:  # a kind DuckDB's Python module has no name for (`UPDATE EXTENSIONS`)
        raise InvalidParams(
            f"only a read-only query (SELECT, WITH or VALUES) over the table `{TABLE}` is allowed"
        ) from exc
    if kind == duckdb.StatementType.MULTI:  # a PIVOT that first reads its columns' values to name them
        raise InvalidParams(
            "a PIVOT must list the values it turns into columns (`PIVOT data ON region IN ('north', "
            "'south') USING sum(amount)`): without them, or with a subquery for them, it runs statements of "
            "its own first"
        )
    if kind != duckdb.StatementType.SELECT:
        raise InvalidParams(
            f"only a read-only query (SELECT, WITH or VALUES) over the table `{TABLE}` is allowed, "
            f"not a {kind.name} statement"
        )
    tree = _inside(sql, con)
    if tree.statements:
        raise InvalidParams(
            f"only a read-only query over the table `{TABLE}` is allowed: this one holds a "
            f"{', '.join(sorted(tree.statements))} statement (in a CTE or a subquery)"
        )
    if others := tree.tables - _TABLES:
        raise InvalidParams(
            f"the query may read only the table `{TABLE}` (and its own CTEs), no files, network or settings: "
            f"not {', '.join(sorted(others))}"
        )
    if refused := tree.table_functions - _TABLE_FUNCTIONS:
        raise InvalidParams(
            f"the query may read only the table `{TABLE}`, no files, network or settings: "
            f"{', '.join(f'{name}()' for name in sorted(refused))} is not among the table functions it may "
            f"call ({', '.join(sorted(_TABLE_FUNCTIONS))})"
        )
    if revealing := tree.functions & _REVEALING_FUNCTIONS:
        raise InvalidParams(
            f"{', '.join(f'{name}()' for name in sorted(revealing))} shows the service's own setup, not "
            f"the table `{TABLE}`: it may not be called"
        )
    return sql


@dataclass(slots=True)
class _Tree:
    """What a query's syntax tree holds (`_inside`)."""

    #: Kinds of statement nested in it (COPY, DELETE...).
    statements: set[str] = field(default_factory=set)
    #: Table functions it calls.
    table_functions: set[str] = field(default_factory=set)
    #: Every function it calls, table functions among them.
    functions: set[str] = field(default_factory=set)
    #: Tables and views it reads that are not a CTE of its own (`catalog.schema.name`, as written).
    tables: set[str] = field(default_factory=set)

    def note(self, node: dict[str, Any], ctes: _Scope) -> None:
        """What `node` itself holds, the CTEs of the names `ctes` in scope there."""
        kind = node.get("type")
        if isinstance(kind, str) and kind.endswith(_STATEMENT_NODE):
            self.statements.add(kind.removesuffix(_STATEMENT_NODE))
        function = node.get("function_name")
        if isinstance(function, str):
            self.functions.add(_folded(function))
        if kind == "TABLE_FUNCTION":
            self.table_functions.add(_folded(str(node.get("function", {}).get("function_name", ""))))
        if kind == "BASE_TABLE":
            name = _folded(str(node.get("table_name", "")))
            where = (_folded(str(node.get("catalog_name", ""))), _folded(str(node.get("schema_name", ""))))
            if name not in ctes or where not in _CTE_PLACES:
                self.tables.add(".".join(part for part in (*where, name) if part))
        if kind == "SHOW_REF":
            shown = _folded(str(node.get("table_name", ""))).strip('"')  # SHOW TABLES names `"tables"`
            if shown not in _SHOWN_LISTS:
                self.tables.add(shown)


@dataclass(frozen=True, slots=True)
class _Scope:
    """The names of the CTEs in scope at a node of a query's syntax tree: those of one `WITH` (`names`, each
    at its position there) before the position `upto`, and those of the scope around it (`outer`).

    A chain, not a set per node: a query of 5,000 CTEs (within the 100,000 characters a query may have)
    gave each CTE a set of the names before it, which took 1.6 s of CPU before the query was even run."""

    outer: _Scope | None = None
    names: dict[str, int] = field(default_factory=dict)
    upto: int = 0

    def __contains__(self, name: object) -> bool:
        scope: _Scope | None = self
        while scope is not None:
            if scope.names.get(str(name), scope.upto) < scope.upto:
                return True
            scope = scope.outer
        return False

    def within(self, names: list[str]) -> _Scope:
        """This scope with the CTEs `names` of one `WITH` in it too (`before` gives fewer of them)."""
        positions: dict[str, int] = {}
        for position, name in enumerate(names):
            positions.setdefault(name, position)
        return _Scope(self, positions, len(names)) if names else self

    def before(self, upto: int) -> _Scope:
        """This scope with only its own `WITH`'s CTEs before position `upto` (those a CTE there sees)."""
        return _Scope(self.outer, self.names, upto)


def _inside(sql: str, con: Any = None) -> _Tree:
    """What the query `sql`'s syntax tree holds (`_Tree`).

    A table's name is a CTE's where one of that name is in scope, as DuckDB resolves it: in the query that
    defines it and in the CTEs defined after it there; in its own body only in a recursive CTE's recursive
    part (elsewhere `WITH pg_settings AS (FROM pg_settings)` reads the catalog's). Names are compared as
    DuckDB folds them, ASCII letters only (Python's `lower` turns the Kelvin sign into `k`, and a CTE so
    named hid a catalog view of the ASCII name). `SHOW name` is a table's name too.
    """
    with (
        duckdb.connect(":memory:", config={"enable_external_access": False})
        if con is None
        else contextlib.nullcontext(con)
    ) as serializer:
        serialized = serializer.execute("SELECT json_serialize_sql(?)", [sql]).fetchall()[0][0]
    try:
        tree = json.loads(serialized)
    except RecursionError as exc:  # DuckDB parses 1,000 levels; Python's reader stops before
        raise InvalidParams(
            "the query nests too deeply to be checked (lists, structs or expressions)"
        ) from exc
    if tree.get("error"):
        raise InvalidParams(f"the query could not be checked as read-only: {tree.get('error_message', '')}")
    found = _Tree()
    pending: list[tuple[Any, _Scope]] = [(tree, _Scope())]
    while pending:
        node, ctes = pending.pop()
        if isinstance(node, list):
            pending.extend((item, ctes) for item in node)
            continue
        if not isinstance(node, dict):
            continue
        found.note(node, ctes)
        kind = node.get("type")
        defined = [entry for entry in (node.get("cte_map") or {}).get("map", []) if isinstance(entry, dict)]
        names = [_folded(str(entry.get("key", ""))) for entry in defined]
        ctes = ctes.within(names)
        for k, entry in enumerate(defined):
            pending.append((entry.get("value"), ctes.before(k)))
        for key, value in node.items():
            if key == "cte_map":
                continue
            if kind == "RECURSIVE_CTE_NODE" and key == "right":  # the recursive part reads the CTE itself
                pending.append((value, ctes.within([_folded(str(node.get("cte_name", "")))])))
            else:
                pending.append((value, ctes))
    return found


def _folded(name: str) -> str:
    """`name` as DuckDB compares names: its ASCII letters in lower case, every other character as it is."""
    return name.encode().lower().decode()


def run_query(
    path: Path,
    *,
    params: DataQueryParams,
    out_path: Path,
    memory_limit: str = "512MB",
    threads: int = 2,
    temp_dir: Path | None = None,
    spill_limit: str | None = None,
    report: Report | None = None,
    cancelled: Callable[[], bool] | None = None,
    time_limit_s: float = QUERY_TIME_LIMIT_S,
    max_answer_bytes: int | None = None,
) -> Answer:
    """Answer `params.sql` over the table at `path`; the whole answer is written to `out_path` as Parquet.

    An answer whose file passes `max_answer_bytes` fails with `InvalidParams`: a few bytes of SQL can ask
    for gigabytes (`SELECT repeat('x', 10000) FROM range(100000)`), which would be stored for the tenant.
    The file is watched as it is written and the query stopped once it passes (it wrote 860 MB in 28 s
    against a limit of 10 MB when only its end was looked at).
    """
    limits = Limits(memory_limit=memory_limit, threads=threads, temp_dir=temp_dir, spill_limit=spill_limit)
    source = inspect(path, fmt=params.format, scratch=temp_dir, header=params.header)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    # DuckDB writes over a file through `tmp_<name>` beside it, a path the fence refuses (and names).
    out_path.unlink(missing_ok=True)
    con = connect(paths=[*source.paths, out_path], limits=limits)
    try:
        sql = check_sql(params.sql, con)  # before any of the input is read
        with Watchdog(con, report=report, cancelled=cancelled) as watch:
            if source.format != "parquet":
                watch.stage(lambda p: (_LOAD_SHARE * (p or 0.0), source.describe_read(p)))
            expose(con, source, name=TABLE, materialize=True, watch=watch)
            lock(con)
            watch.stage(lambda p: (_LOAD_SHARE + (1 - _LOAD_SHARE) * (p or 0.0), "running the query"))
            watch.time_limit(time_limit_s)
            if max_answer_bytes is not None:
                watch.size_limit(out_path, max_answer_bytes, partial(_too_large, limit=max_answer_bytes))
            try:
                columns = _answer(con, watch, sql, out_path, path, in_place=source.format == "parquet")
                size = out_path.stat().st_size
                if max_answer_bytes is not None and size > max_answer_bytes:  # grown since the last look
                    raise _too_large(size, limit=max_answer_bytes)
            except InvalidParams:
                out_path.unlink(missing_ok=True)
                raise
            row_count, rows = _read_back(watch, out_path.resolve(), columns, limit=params.limit)
    finally:
        con.close()
    return Answer(columns=columns, rows=rows, row_count=row_count, path=out_path)


def _read_back(
    watch: Watchdog, path: Path, columns: list[QueryColumn], *, limit: int
) -> tuple[int, list[list[Any]]]:
    """The answer's row count and its first rows (`_inline`), read from its Parquet file at `path`.

    Rows too large for the job's memory together are read fewer at a time, down to one:
    `SELECT repeat('x', 1000000) FROM range(1000)` stores a few kilobytes, and its 1,000 rows read back at
    once failed the job saying the table needed more memory. An answer DuckDB writes but cannot read back
    (a value nested past 500 levels, or one 200 deep, which it reads within no memory) is the query's
    error, not an internal one, nor an answer without rows."""
    target = literal(str(path))
    try:
        row_count = int(
            watch.fetch(f"SELECT sum(num_rows) FROM parquet_file_metadata({target})")[0][0] or 0  # noqa: S608
        )
        shown = _shown(watch, target, columns)
        while True:
            try:
                first = watch.fetch(f"SELECT {shown} FROM read_parquet({target}) LIMIT {limit}")  # noqa: S608
                return row_count, _inline(first)
            except duckdb.OutOfMemoryException as exc:
                if limit <= 1:
                    raise InvalidParams(
                        "the answer's first row cannot be read back within the memory a job may use (a value "
                        f"too large or nested too deep): {reason(exc)}"
                    ) from exc
                limit = max(1, limit // 8)
    except (duckdb.InvalidInputException, duckdb.InternalException) as exc:
        why = reason(exc).replace(f' in file "{path}"', "").replace(str(path), "the file")  # no scratch path
        raise InvalidParams(f"the answer cannot be read back from its Parquet file: {why}") from exc


def _too_large(size: int, *, limit: int) -> InvalidParams:
    return InvalidParams(
        f"the answer takes more than the {limit:,} bytes of Parquet a query may store here ({size:,} "
        "written): narrow it (WHERE, fewer columns, LIMIT)"
    )


def _shown(watch: Watchdog, target: str, columns: list[QueryColumn]) -> str:
    """The select list that reads the answer's file (`target`, quoted) exactly into Python: its columns,
    by position (names may repeat), those of temporal or interval types as their text (`as_text`), the
    answer's 128-bit integers written as text (`engine.huge_parquet_types`) as the integers they are."""
    dtypes = [str(row[1]) for row in watch.fetch(f"DESCRIBE SELECT * FROM read_parquet({target})")]  # noqa: S608
    picks = [
        _huge_read_back(f"#{n}", column.dtype)
        if _huge_as_text(column.dtype, dtype)
        else as_text(f"#{n}", dtype)
        for n, (column, dtype) in enumerate(zip(columns, dtypes, strict=True), start=1)
    ]
    return "*" if picks == [f"#{n}" for n in range(1, len(picks) + 1)] else ", ".join(picks)


def _huge_as_text(dtype: str, written: str) -> bool:
    """Whether a column of the answer's type `dtype` holds 128-bit integers written as their text (one of
    them past 38 digits: `engine.huge_parquet_types`), at any depth: the file's type `written` is `dtype`
    with them as VARCHAR (and its intervals so; an array Parquet holds as a list)."""
    if "HUGEINT" not in dtype:
        return False
    as_text = parquet_type(duckdb.sqltype(dtype), "VARCHAR")
    return as_text is not None and _as_lists(as_text) == _as_lists(written)


def _as_lists(type_text: str) -> str:
    """A type's text as DuckDB spells it, its fixed-size arrays as lists (as Parquet holds them)."""
    return str(duckdb.sqltype(_ARRAY_SIZE.sub("[]", type_text)))


#: The size of a fixed-size array in a type's text (`INTEGER[3]`).
_ARRAY_SIZE = re.compile(r"\[\d+\]")


def _huge_read_back(expr: str, dtype: str) -> str:
    """`expr`, a column of the answer's type `dtype` whose 128-bit integers were written as text, read back
    as its own type, but for its intervals, which stay text (`engine.parquet_type`), and then as the other
    values Python cannot hold exactly (`as_text`)."""
    read_as = parquet_type(duckdb.sqltype(dtype), None) or dtype
    return as_text(f"CAST({expr} AS {read_as})", read_as)


def _inline(first: list[tuple[Any, ...]]) -> list[list[Any]]:
    """The answer's first rows as JSON values, as many as fit `INLINE_ROWS_BYTES` (as JSON)."""
    rows: list[list[Any]] = []
    size = 0
    for row in first:
        values = [json_value(value) for value in row]
        size += len(to_json(values))
        if size > INLINE_ROWS_BYTES:
            break
        rows.append(values)
    return rows


def _exact_parquet(
    con: Any, relation: Any, sql: str, columns: list[QueryColumn], *, huge: str = PARQUET_HUGE
) -> Any:
    """The query `sql`'s `relation` (bound once, by `_answer`) as Parquet can hold it, exactly and whatever
    the values.

    DuckDB's Parquet writer stores a 128-bit integer (HUGEINT, the type of every `sum` of integers) as a
    DOUBLE, so `sum(id)` came back as 9007199254740996.0 for 9007199254740995: those values are written
    as `huge` (`engine.huge_parquet_types`: exact to 38 digits, or text). It refuses a negative INTERVAL
    (any difference of two times that goes back), failing the whole query, and Python reads a month as
    30 days: intervals are written as DuckDB's text (`1 month 2 days 03:04:05.5`, `-1 day`). Both at any
    depth (`engine.parquet_type`: `[INTERVAL '-1 day']` failed the query, a list's HUGEINT was rounded).
    Columns are picked by position (`#n`), since an answer's names may repeat; other answers are written
    as they are.
    """
    written = [parquet_type(kind, huge) for kind in relation.types]
    if not any(written):
        return relation
    picks = ", ".join(
        f"CAST(#{n} AS {as_type}) AS {ident(c.name)}" if as_type else f"#{n} AS {ident(c.name)}"
        for n, (c, as_type) in enumerate(zip(columns, written, strict=True), start=1)
    )
    return con.sql(f"SELECT {picks} FROM (\n{_body(sql)}\n) AS answer")  # noqa: S608 - checked, quoted


def _body(sql: str) -> str:
    """The one statement of `sql` without what may follow it: its `;` and trailing comments (which would
    end the subquery `_exact_parquet` puts it in), found by DuckDB's tokenizer, not by the text.

    The tokenizer's positions count the UTF-8 bytes, not the characters: counted as characters, a query
    with non-ASCII text before a comment holding `;` was cut short (what ran was not what was checked),
    and one ending `'é';` failed with an IndexError."""
    text = sql.encode()
    end = len(text)
    for position, kind in reversed(duckdb.tokenize(sql)):
        if kind != duckdb.token_type.comment and text[position : position + 1] != b";":
            break
        end = position
    return text[:end].decode()


def _answer(
    con: Any, watch: Watchdog, sql: str, out_path: Path, path: Path, *, in_place: bool
) -> list[QueryColumn]:
    """Run the query once, writing its whole answer to `out_path`; the answer's columns.

    An input read `in_place` (Parquet: the query reads the file itself) is only read now, so a failure may
    be the file's: when the error is one reading may raise (`source.read_fault`), the file is read whole
    (`source.damage`), and if that fails too the job fails `MediaDecodeError`, as the other table jobs do
    on a damaged file, not `InvalidParams`; a typo or a cast of the query's own costs no such read.
    """
    try:
        with watch.guard():
            relation = con.sql(sql)
            columns = [
                QueryColumn(name=str(name), dtype=str(dtype))
                for name, dtype in zip(relation.columns, relation.types, strict=True)
            ]
            try:
                exact = _exact_parquet(con, relation, sql, columns)
                exact.write_parquet(str(out_path.resolve()), compression="zstd")
            except duckdb.ConversionException as exc:  # an integer of 39 digits: those columns as text
                # 128-bit integers at any depth (`UHUGEINT[]`, `STRUCT(...)`) are in the column's type text.
                if huge_parquet_types(exc) == PARQUET_HUGE or not any("HUGEINT" in c.dtype for c in columns):
                    raise
                out_path.unlink(missing_ok=True)
                exact = _exact_parquet(con, relation, sql, columns, huge=huge_parquet_types(exc))
                exact.write_parquet(str(out_path.resolve()), compression="zstd")
    except duckdb.PermissionException as exc:
        raise InvalidParams(
            f"the query may read only the table `{TABLE}`, no files, network or settings: "
            f"{reason(exc, path, out_path)}"
        ) from exc
    except duckdb.OutOfMemoryException as exc:
        raise InvalidParams(
            f"the query needs more memory than this service allows: {reason(exc, path, out_path)}"
        ) from exc
    except duckdb.Error as exc:
        if disk_full(exc):  # the answer's file or a spill had no room: the worker's, retried
            raise
        # A typo or a bad cast is the query's: only what reading may raise sends the file to a full read.
        failure = damage(watch, TABLE, path) if in_place and read_fault(exc) else None
        if failure is not None:
            raise failure from exc
        raise InvalidParams(f"the query failed: {reason(exc, path, out_path)}") from exc
    return columns
