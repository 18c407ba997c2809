"""Benchmark of `data.profile` against the tools data teams profile tables with by hand.

    uv run --group bench python -m bench.data [--rows 1000000] [--no-big] [--tools medialens,pandas,...]
        [--repeat 3]

One generated table of `--rows` rows and 12 columns (integers, floats with nulls, text, timestamps,
dates, booleans), as CSV and as Parquet, is profiled by our profiler (`profile_table` with the service's
default limits: 512 MB, 2 threads), ydata-profiling in minimal mode (its analysis only, no report),
pandas `describe(include="all")` and Polars `describe()`. Each run is a fresh subprocess, so imports,
caches and memory do not carry over; wall time covers reading the file and the analysis (not the
imports), CPU time is the child's user and system time over the same span (all its threads), peak
memory is the child's peak resident set (imports included). With `--repeat N` each tool runs N times on
each input, the tools taking turns, and the run of median wall time is reported (with every run's
time): on a shared machine one run says little. The numbers "agree" when
every tool's row count, and the mean, min and max of four numeric columns, equal ours (relative
tolerance 1e-6). Unless
`--no-big`, our profiler also profiles a 10-million-row CSV (about 1.3 GB) under a 1 GB memory limit.

Writes `bench/results/data.json` and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results" / "data.json"
TOOLS = ("medialens", "ydata", "pandas", "polars")
#: Columns whose mean, min and max every tool must agree on.
CHECKED = ("id", "amount", "quantity", "score")
BIG_ROWS = 10_000_000
_MODULES = {
    "medialens": ("duckdb", "medialens_data.profile"),
    "ydata": ("pandas", "ydata_profiling"),
    "pandas": ("pandas",),
    "polars": ("polars",),
}
TOLERANCE = 1e-6

_TABLE_SQL = """
SELECT
  range AS id,
  hash(range, 1) % 100000 AS user_id,
  CASE WHEN range % 20 = 7 THEN NULL ELSE round((hash(range, 2) % 1000000) / 100.0, 2) END AS amount,
  (hash(range, 3) % 50)::INTEGER AS quantity,
  round((hash(range, 4) % 1000000) / 1000000.0 - 0.5, 6) AS score,
  ['alpha','beta','gamma','delta','epsilon','zeta','eta','theta'][1 + (hash(range, 5) % 8)::INTEGER]
    AS category,
  'C' || lpad((hash(range, 6) % 60)::VARCHAR, 2, '0') AS country,
  'customer name ' || (hash(range, 7) % 200000) AS name,
  'user' || (hash(range, 8) % 500000) || '@example.com' AS email,
  TIMESTAMP '2020-01-01' + to_seconds((hash(range, 9) % 157680000)::BIGINT) AS created_at,
  DATE '2020-01-01' + (hash(range, 10) % 1500)::INTEGER AS day,
  CASE WHEN range % 13 = 0 THEN NULL ELSE hash(range, 11) % 3 = 0 END AS active
FROM range({rows})
"""


def make_table(directory: Path, rows: int) -> tuple[Path, Path]:
    """The generated table as CSV and as Parquet (made once, reused by later runs)."""
    import duckdb

    csv_path, parquet_path = directory / f"table-{rows}.csv", directory / f"table-{rows}.parquet"
    with duckdb.connect() as con:
        if not csv_path.exists():
            con.execute(f"COPY ({_TABLE_SQL.format(rows=rows)}) TO '{csv_path}.part' (HEADER)")
            Path(f"{csv_path}.part").rename(csv_path)
        if not parquet_path.exists():
            con.execute(
                f"COPY (SELECT * FROM read_csv('{csv_path}')) TO '{parquet_path}' "
                "(FORMAT parquet, COMPRESSION zstd)"
            )
    return csv_path, parquet_path


# --- one tool, in a child process -------------------------------------------------------------------


def _stats_of_ours(path: Path, memory_limit: str, scratch: Path) -> tuple[int, dict[str, dict[str, float]]]:
    from medialens_data.profile import profile_table
    from medialens_shared.contracts import DataProfileParams

    result = profile_table(
        path, params=DataProfileParams(), memory_limit=memory_limit, threads=2, temp_dir=scratch
    )
    stats = {
        col.name: {"mean": col.mean, "min": col.min, "max": col.max}
        for col in result.columns
        if col.name in CHECKED
    }
    return result.row_count, stats


def _read_pandas(path: Path) -> Any:
    import pandas as pd  # type: ignore[import-untyped, import-not-found, unused-ignore]

    return pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)


def _stats_of_pandas(path: Path) -> tuple[int, dict[str, dict[str, float]]]:
    frame = _read_pandas(path)
    described = frame.describe(include="all")
    return len(frame), {
        name: {key: float(described.loc[key, name]) for key in ("mean", "min", "max")} for name in CHECKED
    }


def _stats_of_polars(path: Path) -> tuple[int, dict[str, dict[str, float]]]:
    import polars as pl  # type: ignore[import-untyped, import-not-found, unused-ignore]

    frame = pl.read_parquet(path) if path.suffix == ".parquet" else pl.read_csv(path, try_parse_dates=True)
    described = frame.describe()
    keys = described.get_column("statistic").to_list()
    stats = {
        name: {key: float(described.get_column(name)[keys.index(key)]) for key in ("mean", "min", "max")}
        for name in CHECKED
    }
    return frame.height, stats


def _stats_of_ydata(path: Path) -> tuple[int, dict[str, dict[str, float]]]:
    from ydata_profiling import ProfileReport  # type: ignore[import-untyped, import-not-found, unused-ignore]

    report = ProfileReport(_read_pandas(path), minimal=True, progress_bar=False)
    description = report.get_description()
    variables = description.variables
    stats = {name: {key: float(variables[name][key]) for key in ("mean", "min", "max")} for name in CHECKED}
    return int(description.table["n"]), stats


def _peak_mb() -> int:
    """This process's peak resident set. Not `ru_maxrss`: Linux carries that over from the parent at
    fork, so a child would never report less than its parent held."""
    for line in Path("/proc/self/status").read_text(encoding="utf-8").splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_child(tool: str, path: Path, memory_limit: str, out: Path) -> None:
    """Profile `path` with `tool`, writing wall time, peak memory and the checked numbers to `out`."""
    # Imports are not what is measured: load the tool's modules before the clock starts.
    for module in _MODULES[tool]:
        importlib.import_module(module)
    started, cpu_started = time.perf_counter(), _cpu_s()
    record: dict[str, Any] = {"tool": tool, "input": path.name}
    try:
        if tool == "medialens":
            with tempfile.TemporaryDirectory(dir=path.parent) as scratch:
                rows, stats = _stats_of_ours(path, memory_limit, Path(scratch))
        else:
            rows, stats = {"pandas": _stats_of_pandas, "polars": _stats_of_polars, "ydata": _stats_of_ydata}[
                tool
            ](path)
        record |= {"row_count": rows, "stats": stats}
    except Exception as exc:  # a tool that breaks is reported, not fatal to the run
        record["error"] = f"{type(exc).__name__}: {exc}"[:300]
    record["wall_s"] = round(time.perf_counter() - started, 2)
    record["cpu_s"] = round(_cpu_s() - cpu_started, 2)
    record["peak_mb"] = _peak_mb()
    out.write_text(json.dumps(record), encoding="utf-8")


# --- the run ----------------------------------------------------------------------------------------


def measure(tool: str, path: Path, *, memory_limit: str = "512MB") -> dict[str, Any]:
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as handle:
        out = Path(handle.name)
    command = [sys.executable, "-m", "bench.data", "--child", tool, str(path), memory_limit, str(out)]
    print(f"… {tool} on {path.name}", file=sys.stderr, flush=True)
    done = subprocess.run(command, check=False, capture_output=True, text=True)
    try:
        record: dict[str, Any] = json.loads(out.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        record = {"tool": tool, "input": path.name, "error": done.stderr.strip().splitlines()[-1:]}
    finally:
        out.unlink(missing_ok=True)
    record["memory_limit"] = memory_limit if tool == "medialens" else None
    return record


def measure_repeated(tools: list[str], path: Path, repeat: int) -> list[dict[str, Any]]:
    """Each tool's run of median wall time out of `repeat`, the tools taking turns, with all the times."""
    runs: dict[str, list[dict[str, Any]]] = {tool: [] for tool in tools}
    for _ in range(repeat):
        for tool in tools:
            runs[tool].append(measure(tool, path))
    chosen = []
    for tool in tools:
        timed = sorted(runs[tool], key=lambda record: record.get("wall_s", math.inf))
        record = timed[(len(timed) - 1) // 2]
        record["wall_runs_s"] = [run.get("wall_s") for run in runs[tool]]
        chosen.append(record)
    return chosen


def agrees(record: dict[str, Any], reference: dict[str, Any]) -> bool | None:
    if "error" in record or "error" in reference:
        return None
    if record["row_count"] != reference["row_count"]:
        return False
    for name in CHECKED:
        for key in ("mean", "min", "max"):
            ours, theirs = reference["stats"][name][key], record["stats"][name][key]
            if not math.isclose(float(ours), float(theirs), rel_tol=TOLERANCE, abs_tol=TOLERANCE):
                return False
    return True


def table(records: list[dict[str, Any]]) -> str:
    lines = [
        "| input | tool | wall (s) | CPU (s) | peak memory (MB) | rows | numbers agree with ours |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for record in records:
        agree = {True: "yes", False: "**no**", None: "—"}[record.get("agrees")]
        if "error" in record:
            agree = f"failed: {record['error']}"
        tool = record["tool"] + (f" ({record['memory_limit']} limit)" if record.get("memory_limit") else "")
        wall = str(record.get("wall_s", "—"))
        if len(record.get("wall_runs_s", [])) > 1:
            wall += " (" + ", ".join(str(run) for run in record["wall_runs_s"]) + ")"
        lines.append(
            f"| {record['input']} | {tool} | {wall} | {record.get('cpu_s', '—')} "
            f"| {record.get('peak_mb', '—')} | {record.get('row_count', '—')} | {agree} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument(
        "--tools", default=",".join(TOOLS), help="comma-separated subset of " + ", ".join(TOOLS)
    )
    parser.add_argument("--no-big", action="store_true", help="skip the 10M-row CSV under a 1 GB limit")
    parser.add_argument(
        "--repeat", type=int, default=1, help="runs per tool and input; the median's is reported"
    )
    parser.add_argument("--data-dir", type=Path, default=Path(tempfile.gettempdir()) / "medialens-bench-data")
    parser.add_argument("--child", nargs=4, metavar=("TOOL", "PATH", "MEMORY", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        tool, path, memory_limit, out = args.child
        run_child(tool, Path(path), memory_limit, Path(out))
        return

    args.data_dir.mkdir(parents=True, exist_ok=True)
    tools = [tool for tool in TOOLS if tool in args.tools.split(",")]
    records: list[dict[str, Any]] = []
    for path in make_table(args.data_dir, args.rows):
        runs = measure_repeated(tools, path, max(args.repeat, 1))
        reference = next((r for r in runs if r["tool"] == "medialens"), None)
        for record in runs:
            record["agrees"] = agrees(record, reference) if reference and record is not reference else None
            record["size_mb"] = round(path.stat().st_size / 10**6)
        records += runs
    if not args.no_big and "medialens" in tools:
        big_csv, _ = make_table(args.data_dir, BIG_ROWS)
        record = measure("medialens", big_csv, memory_limit="1GB")
        record["size_mb"] = round(big_csv.stat().st_size / 10**6)
        records.append(record)

    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps({"rows": args.rows, "repeat": args.repeat, "runs": records}, indent=2), encoding="utf-8"
    )
    print(table(records))
    print(f"\nwritten to {RESULTS}")


if __name__ == "__main__":
    main()
