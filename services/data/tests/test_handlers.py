"""The data service's job types end to end: uploaded, run by the in-process stack, read back over the API."""

from __future__ import annotations

import csv
import json
import zlib
from pathlib import Path

import duckdb
import httpx
import pytest

from tests.fixtures.stack import cancel_within, result_of, run_job, submit, upload, wait_for

pytestmark = pytest.mark.integration

HEADER = ["id", "city", "amount"]
ROWS = [[i, ["Zürich", "a, b", "東京"][i % 3], round(i * 0.25, 2)] for i in range(120)]


@pytest.fixture
def table(tmp_path: Path) -> Path:
    path = tmp_path / "sales.csv"
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(HEADER)
        writer.writerows(ROWS)
    return path


async def content(api: httpx.AsyncClient, file_id: str) -> bytes:
    response = await api.get(f"/v1/files/{file_id}/content")
    assert response.status_code == 200, response.text
    return response.content


async def test_profile_reports_the_table(api: httpx.AsyncClient, table: Path) -> None:
    """A profiled CSV reports its rows, columns and the sum-derived mean of a column."""
    job = await run_job(api, "data.profile", table)
    assert job["status"] == "succeeded", job
    result = await result_of(api, job["id"])
    assert (result["row_count"], result["column_count"]) == (120, 3)
    amount = next(col for col in result["columns"] if col["name"] == "amount")
    assert amount["mean"] == pytest.approx(sum(row[2] for row in ROWS) / 120)
    assert amount["distinct_approx"] is False


@pytest.mark.parametrize(
    ("encoding", "pad_rows"),
    [("utf-16", 0), ("latin-1", 0), ("latin-1", 5000), ("cp1252", 0)],
    ids=["utf-16", "latin-1", "latin-1-accents-past-the-head", "windows-1252"],
)
async def test_a_csv_in_utf16_or_latin1_is_profiled_with_its_text_intact(
    api: httpx.AsyncClient, tmp_path: Path, encoding: str, pad_rows: int
) -> None:
    """Spreadsheets export UTF-16 and Latin-1: such a CSV is accepted at submission (it was a 415 or taken
    for audio) and read with its accents intact, also when the first accent comes after the bytes the
    encoding is told from (then DuckDB's complaint about UTF-8 makes it read again as Latin-1), and with
    the signs Windows-1252 puts where Latin-1 has control characters."""
    cities = ["Zürich", "Köln", "São Paulo"] + (
        ["\u2018Zoë\u2019 \u2013 \u20ac5"] if encoding == "cp1252" else []
    )
    rows = [["plain", "Bern"]] * pad_rows + [[f"name{i}", cities[i % len(cities)]] for i in range(30)]
    path = tmp_path / f"{encoding}.csv"
    with path.open("w", newline="", encoding=encoding) as handle:
        writer = csv.writer(handle)
        writer.writerow(["name", "city"])
        writer.writerows(rows)
    job = await run_job(
        api, "data.query", path, params={"sql": "SELECT DISTINCT city FROM data ORDER BY city"}
    )
    assert job["status"] == "succeeded", job
    result = await result_of(api, job["id"])
    assert [row[0] for row in result["rows"]] == sorted({*cities, *(["Bern"] if pad_rows else [])})


async def test_convert_output_is_a_readable_file(api: httpx.AsyncClient, table: Path) -> None:
    """A CSV converted to JSON lines is stored as a file whose content holds every row."""
    job = await run_job(api, "data.convert", table, params={"to": "jsonl"})
    assert job["status"] == "succeeded", job
    result = await result_of(api, job["id"])
    assert result["row_count"] == 120
    body = await content(api, result["file_id"])
    assert len(body) == result["size_bytes"]
    records = [json.loads(line) for line in body.decode("utf-8").splitlines()]
    assert [[r[name] for name in HEADER] for r in records] == ROWS
    meta = (await api.get(f"/v1/files/{result['file_id']}")).json()["data"]
    assert meta["filename"].endswith(".jsonl")


async def test_query_answer_and_its_parquet_file(api: httpx.AsyncClient, table: Path, tmp_path: Path) -> None:
    """A query's rows come in the result and its whole answer as a Parquet file readable over the API."""
    sql = "SELECT city, count(*) AS n, sum(amount) AS total FROM data GROUP BY city ORDER BY city"
    job = await run_job(api, "data.query", table, params={"sql": sql, "limit": 2})
    assert job["status"] == "succeeded", job
    result = await result_of(api, job["id"])
    expected = sorted(
        [city, sum(1 for r in ROWS if r[1] == city), sum(r[2] for r in ROWS if r[1] == city)]
        for city in {r[1] for r in ROWS}
    )
    assert result["row_count"] == 3
    assert [c["name"] for c in result["columns"]] == ["city", "n", "total"]
    assert result["rows"] == [[c, n, pytest.approx(t)] for c, n, t in expected[:2]]
    answer = tmp_path / "answer.parquet"
    answer.write_bytes(await content(api, result["file_id"]))
    with duckdb.connect() as con:
        stored = con.execute(f"SELECT * FROM read_parquet('{answer}')").fetchall()
    assert [list(row) for row in stored] == [[c, n, pytest.approx(t)] for c, n, t in expected]


async def test_sandbox_escape_fails_with_invalid_params(api: httpx.AsyncClient, table: Path) -> None:
    """A query reading /etc/passwd fails the job with INVALID_PARAMS saying only `data` may be read."""
    job = await run_job(api, "data.query", table, params={"sql": "SELECT * FROM read_csv('/etc/passwd')"})
    assert (job["status"], job["error_code"]) == ("failed", "INVALID_PARAMS")
    assert "may read only the table `data`" in job["error_message"]


async def test_a_query_asking_for_unbounded_memory_fails_and_the_service_goes_on(
    api: httpx.AsyncClient, table: Path
) -> None:
    """One value of 2 GB is memory DuckDB's `memory_limit` does not count (it took 4 GB and 22 s, in the
    worker's own process, where the kernel's OOM killer would have taken the jobs beside it along): the query
    runs in a child whose memory is capped, fails INVALID_PARAMS at once, and the next query runs."""
    sql = "SELECT length(repeat('x', 2000000000)) AS n FROM data LIMIT 1"
    job = await run_job(api, "data.query", table, params={"sql": sql})
    assert (job["status"], job["error_code"]) == ("failed", "INVALID_PARAMS"), job
    assert "needs more memory than this service allows" in job["error_message"]
    job = await run_job(api, "data.query", table, params={"sql": "SELECT count(*) AS n FROM data"})
    assert job["status"] == "succeeded", job
    assert (await result_of(api, job["id"]))["rows"] == [[len(ROWS)]]


async def test_cancel_stops_a_running_query_within_two_seconds(api: httpx.AsyncClient, table: Path) -> None:
    """A query runs in a child process: a cancel while its SQL runs ends the job `cancelled` within 2 s,
    and its progress came back from the child while it ran."""
    sql = "SELECT sum(hash(i)) AS h FROM range(1000000000000) AS t(i), data LIMIT 1"
    job = await submit(api, "data.query", await upload(api, table), params={"sql": sql})
    running = await wait_for(
        api, job["id"], until=lambda j: j["status"] == "running" and j["message"] == "running the query"
    )
    assert running["progress"] >= 0.5
    await cancel_within(api, job["id"])


async def test_ragged_file_fails_with_unsupported_input(api: httpx.AsyncClient, tmp_path: Path) -> None:
    """A ragged CSV fails with UNSUPPORTED_INPUT and a message naming its bad line."""
    path = tmp_path / "ragged.csv"
    path.write_text("a,b,c\n1,2,3\n4,5\n6,7,8\n", encoding="utf-8")
    job = await run_job(api, "data.profile", path)
    assert (job["status"], job["error_code"]) == ("failed", "UNSUPPORTED_INPUT")
    assert "line 3" in job["error_message"]


async def test_cancel_stops_a_running_profile_within_two_seconds(
    api: httpx.AsyncClient, tmp_path: Path
) -> None:
    """POST /cancel on a profile that is reading a large gzip CSV ends it `cancelled` within 2 s."""
    # 8 million rows in a few hundred kilobytes: the rows repeat every 100 lines, which gzip folds away.
    block = "".join(f"{k},{k * 3},label {k}\n" for k in range(100)).encode()
    packer = zlib.compressobj(wbits=16 + zlib.MAX_WBITS)
    path = tmp_path / "big.csv.gz"
    with path.open("wb") as handle:
        handle.write(packer.compress(b"i,k,s\n"))
        for _ in range(80):
            handle.write(packer.compress(block * 1000))
        handle.write(packer.flush())
    job = await submit(api, "data.profile", await upload(api, path))
    running = await wait_for(api, job["id"], until=lambda j: j["status"] == "running" and j["progress"] > 0)
    assert running["message"].startswith("read ")
    await cancel_within(api, job["id"])
