"""The five scenarios of the platform benchmark. Each returns its figures as a dict and prints one line."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import httpx
import numpy as np
from redis.asyncio import Redis

from bench.platform.httpload import Client, Figures, Request, all_at_once, fixed_rate, wrk
from bench.platform.stack import API_KEY, Baseline, CpuMeter, PeakSampler, Stack

AUTH = {"Authorization": f"Bearer {API_KEY}"}
JSON = AUTH | {"Content-Type": "application/json"}
TERMINAL = ("succeeded", "failed", "cancelled")


def client_for(base_url: str, *, limit: int = 2048) -> Client:
    parts = urlsplit(base_url)
    return Client(parts.hostname or "127.0.0.1", parts.port or 80, limit=limit)


def _ratio(value: float, ceiling: float) -> float | None:
    return round(value / ceiling, 3) if ceiling else None


# --- 1. the ceiling -------------------------------------------------------------------------------------


#: Measurements of the ceiling, the best of which counts: on this shared machine one measurement of 6 s
#: came out anywhere from 3.6k to 8.2k req/s (the same command, minutes apart), and a ceiling caught low
#: flatters every ratio to it.
CEILING_RUNS = 3


def ceiling(
    base_url: str,
    *,
    duration_s: float,
    connections: int,
    label: str = "ceiling GET (bare FastAPI)",
    runs: int = CEILING_RUNS,
) -> dict[str, Any]:
    """The bare endpoint at saturation `runs` times; the best run (the most this machine served), with the
    requests per second of every run."""
    measured = []
    for _ in range(runs):
        figures = wrk(base_url, Request("GET", "/v1/ping"), duration_s=duration_s, connections=connections)
        print(figures.line(label), flush=True)
        measured.append(figures)
    best = max(measured, key=lambda figures: figures.rps)
    return {"bare FastAPI GET envelope": asdict(best) | {"runs_rps": [round(f.rps, 1) for f in measured]}}


# --- 2. the gateway ---------------------------------------------------------------------------------------


def upload_request(size: int, name: str) -> Request:
    headers = AUTH | {"Content-Type": "application/octet-stream", "X-Filename": name}
    return Request("POST", "/v1/files", headers, os.urandom(size))


async def seed(stack: Stack, wav: Path) -> tuple[str, str]:
    """Upload the WAV and submit one job on it: (file_id, job_id)."""
    async with httpx.AsyncClient(base_url=stack.base_url, headers=AUTH, timeout=60) as http:
        headers = {"Content-Type": "audio/wav", "X-Filename": wav.name}
        content = await asyncio.to_thread(wav.read_bytes)
        response = await http.post("/v1/files", content=content, headers=headers)
        response.raise_for_status()
        file_id: str = response.json()["data"]["id"]
        response = await http.post("/v1/jobs", json={"type": "audio.probe", "file_id": file_id})
        response.raise_for_status()
        return file_id, response.json()["data"]["id"]


def gateway_cases(file_id: str, job_id: str) -> dict[str, tuple[Request, int, float, float]]:
    """Label -> (request, wrk connections, fixed rate per s, fixed-rate duration factor)."""
    job = json.dumps({"type": "audio.probe", "file_id": file_id, "labels": {"bench": "gateway"}}).encode()
    return {
        "POST /v1/jobs": (Request("POST", "/v1/jobs", JSON, job), 50, 400.0, 1.0),
        "GET /v1/jobs/{id}": (Request("GET", f"/v1/jobs/{job_id}", AUTH), 50, 400.0, 1.0),
        "GET /v1/jobs?limit=50": (Request("GET", "/v1/jobs?limit=50", AUTH), 50, 400.0, 1.0),
        "POST /v1/files (1 MB)": (upload_request(2**20, "one.bin"), 4, 10.0, 1.0),
        "POST /v1/files (100 MB)": (upload_request(100 * 2**20, "hundred.bin"), 1, 0.2, 1.5),
    }


def _always(request: Request) -> Callable[[int], Request]:
    return lambda _index: request


PROFILED = ("POST /v1/jobs", "GET /v1/jobs/{id}")


def start_profile(pid: int, seconds: float, out: Path) -> subprocess.Popen[bytes]:
    """py-spy sampling `pid` for `seconds` into collapsed stacks at `out` (py-spy from PyPI, via uv)."""
    command = ["uv", "run", "--with", "py-spy", "py-spy", "record", "--pid", str(pid), "--nonblocking"]
    command += ["--duration", str(max(1, round(seconds))), "--format", "raw", "--output", str(out)]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def hot_frames(collapsed: Path, *, top: int = 12) -> list[tuple[str, float]]:
    """The frames with the largest share of samples, counted once per stack (inclusive time)."""
    total, inclusive = 0, Counter[str]()
    for line in collapsed.read_text().splitlines():
        stack_text, _, count_text = line.rpartition(" ")
        if not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        for frame in set(stack_text.split(";")):
            if "medialens" in frame or "sqlalchemy" in frame or "pydantic" in frame or "json" in frame:
                inclusive[frame] += count
    return [(frame, round(100 * n / total, 1)) for frame, n in inclusive.most_common(top)] if total else []


async def gateway(
    stack: Stack,
    *,
    file_id: str,
    job_id: str,
    duration_s: float,
    rate: float,
    ceiling_rps: float,
    profile_dir: Path | None = None,
) -> dict[str, Any]:
    """Each endpoint at saturation (wrk) and at a fixed rate (400/s for the JSON endpoints)."""
    out: dict[str, Any] = {}
    client = client_for(stack.base_url)
    try:
        for label, (request, connections, case_rate, factor) in gateway_cases(file_id, job_id).items():
            fixed = rate if case_rate == 400.0 else case_rate
            seconds = duration_s if len(request.body) < 2**24 else max(duration_s, 30)  # 100 MB takes seconds
            saturated = await asyncio.to_thread(
                wrk, stack.base_url, request, duration_s=seconds, connections=connections, timeout_s=60
            )
            print(saturated.line(f"gateway {label} saturation"), flush=True)
            alone = None
            if label == ALONE:
                alone = await _gateway_alone(stack, request, seconds, connections)
                print(alone.line(f"gateway {label} saturation, relay stopped"), flush=True)
            backlog, drained_s = await drain_outbox(stack)
            if backlog:
                print(f"gateway {label}: {backlog} outbox entries sent in {drained_s:.1f} s", flush=True)
            held_s = max(duration_s * factor, 3 / fixed)
            held = await fixed_rate(client, _always(request), rate=fixed, duration_s=held_s)
            print(held.line(f"gateway {label} @{fixed:g}/s"), flush=True)
            floors = {}
            if label == ALONE:
                floors = await _commit_floors(stack, rate=fixed, duration_s=held_s)
            if profile_dir is not None and label in PROFILED:
                hot = await _profiled(stack, request, seconds, profile_dir / _profile_name(label))
                out.setdefault("profiles", {})[label] = hot
            out[label] = {
                "saturation": asdict(saturated) | {"ratio_to_ceiling": _ratio(saturated.rps, ceiling_rps)},
                "fixed_rate": asdict(held) | {"rate": fixed},
                "outbox_backlog": {"entries": backlog, "drained_s": round(drained_s, 2)},
            }
            if floors:
                out[label]["commit_floor"] = floors
            if alone is not None:
                out[label]["saturation_relay_stopped"] = asdict(alone) | {
                    "ratio_to_ceiling": _ratio(alone.rps, ceiling_rps)
                }
    finally:
        await client.close()
    return out


#: The endpoint also measured with the relay stopped.
ALONE = "POST /v1/jobs"


async def _gateway_alone(stack: Stack, request: Request, seconds: float, connections: int) -> Figures:
    """`request` at saturation with the relay stopped: the gateway's own capacity. With the relay running,
    its publishing and RabbitMQ's share of the same two cores take as much CPU per job as the gateway's
    POST itself (measured: relay 0.35 ms, gateway 0.46 ms per job); in a deployment they run elsewhere.
    The relay starts again afterwards and sends what piled up."""
    await asyncio.to_thread(stack.stop, "relay")
    try:
        return await asyncio.to_thread(
            wrk, stack.base_url, request, duration_s=seconds, connections=connections, timeout_s=60
        )
    finally:
        await asyncio.to_thread(stack.start, "relay")


async def _commit_floors(stack: Stack, *, rate: float, duration_s: float) -> dict[str, Any]:
    """Bare PostgreSQL commits at the rate a submission was just measured at, as durable as its own and
    then with `synchronous_commit` off: the floor under its latency, and how much of it is the disk's."""
    from bench.platform import calibrate  # it imports this module

    floors = {}
    for setting in ("on", "off"):
        floor = await calibrate.commit_floor(
            stack.dsn, rate=rate, duration_s=duration_s, synchronous_commit=setting
        )
        print(floor.line(f"PostgreSQL commit @{rate:g}/s, synchronous_commit {setting}"), flush=True)
        floors[setting] = asdict(floor)
    return floors


def _profile_name(label: str) -> str:
    method, path = label.split(maxsplit=1)
    return f"profile-{method.lower()}-{path.rsplit('/', maxsplit=1)[-1][:4]}.txt"


async def _profiled(
    stack: Stack, request: Request, seconds: float, collapsed: Path
) -> list[tuple[str, float]]:
    """The gateway's hottest frames under wrk, in a pass of its own: py-spy takes CPU from the same two
    cores, so the measured passes run without it."""
    profiler = start_profile(stack.pids()["gateway"], seconds, collapsed)
    await asyncio.to_thread(wrk, stack.base_url, request, duration_s=seconds, connections=50, timeout_s=60)
    await asyncio.to_thread(profiler.wait, 120)
    await drain_outbox(stack)
    hot = await asyncio.to_thread(lambda: hot_frames(collapsed) if collapsed.exists() else [])
    top = "; ".join(f"{frame} {share}%" for frame, share in hot[:6])
    print(f"profile {request.method} {request.path}: {top}", flush=True)
    return hot


async def drain_outbox(stack: Stack, *, timeout_s: float = 300.0) -> tuple[int, float]:
    """Wait until the relay has sent every outbox entry: (entries it had left, seconds it took).

    Saturating `POST /v1/jobs` leaves thousands of entries for the relay, whose catching up shares the
    two cores with the gateway and PostgreSQL: measured at 400/s straight after, a POST's p99 was 120 ms,
    then 9.9 ms in the next run once the backlog was gone (8.8 ms with none before). The fixed rate is
    the steady state at that load, so it starts once the backlog is sent; the wait is reported beside it.
    """
    conn = await asyncpg.connect(stack.dsn)
    try:
        start = time.monotonic()
        backlog: int = await conn.fetchval(PENDING)

        async def drained() -> tuple[bool, int]:
            pending: int = await conn.fetchval(PENDING)
            return pending == 0, pending

        if backlog:
            await wait_until(drained, timeout_s=timeout_s, what=f"the relay to send {backlog} entries")
        return backlog, time.monotonic() - start
    finally:
        await conn.close()


PENDING = "select count(*) from outbox where sent_at is null and not dead"


# --- 5. pool stress ---------------------------------------------------------------------------------------

_POOL_LINE = re.compile(
    r'^medialens_db_pool_connections\{(?=[^}]*process="gateway")(?=[^}]*pool="postgres")'
    r'[^}]*state="(\w+)"[^}]*\}\s+([0-9.e+]+)',
    re.MULTILINE,
)


async def gateway_pool(stack: Stack) -> dict[str, float]:
    async with httpx.AsyncClient(base_url=stack.base_url, timeout=10) as http:
        text = (await http.get("/metrics")).text
    return {state: float(value) for state, value in _POOL_LINE.findall(text)}


async def pool_stress(
    stack: Stack, *, file_id: str, job_id: str, concurrency: int, rounds: int
) -> dict[str, Any]:
    """`concurrency` requests at one moment (reads, lists and submits), `rounds` times over; then the pool."""
    job = json.dumps({"type": "audio.probe", "file_id": file_id, "labels": {"bench": "pool"}}).encode()
    kinds = (
        Request("GET", f"/v1/jobs/{job_id}", AUTH),
        Request("GET", "/v1/jobs?limit=50", AUTH),
        Request("POST", "/v1/jobs", JSON, job),
    )
    requests = [kinds[0 if i % 10 < 6 else 1 if i % 10 < 9 else 2] for i in range(concurrency)]
    before = await gateway_pool(stack)
    log_size = stack.log("gateway").stat().st_size
    rounds_out = []
    for _ in range(rounds):
        client = client_for(stack.base_url, limit=concurrency)
        try:
            figures, answers = await all_at_once(client, requests, timeout_s=120)
        finally:
            await client.close()
        codes = {json.loads(body).get("error_code") for status, body in answers if status >= 500}
        rounds_out.append(asdict(figures) | {"error_codes": sorted(str(c) for c in codes)})
        print(figures.line(f"pool stress {concurrency} at once"), flush=True)
    await asyncio.sleep(1.0)
    after = await gateway_pool(stack)
    server = await stack.connections()
    with stack.log("gateway").open("rb") as handle:
        handle.seek(log_size)
        new_log = handle.read().decode(errors="replace")
    timeouts = len(re.findall(r"QueuePool limit|TimeoutError|pool timeout", new_log, flags=re.IGNORECASE))
    result = {
        "concurrency": concurrency,
        "rounds": rounds_out,
        "errors": sum(r["errors"] for r in rounds_out),
        "pool_timeouts_in_log": timeouts,
        "pool_before": before,
        "pool_after": after,
        "checked_out_after": after.get("checked_out"),
        "gateway_pg_backends_after": server.get("gateway", {}).get("postgres"),
        "gateway_idle_in_transaction_after": server.get("gateway", {}).get("postgres_idle_in_tx"),
    }
    print(
        f"pool stress result: errors={result['errors']} pool_timeouts={timeouts} "
        f"checked_out_after={after.get('checked_out')} capacity={after.get('capacity')} "
        f"pg_backends_after={result['gateway_pg_backends_after']}",
        flush=True,
    )
    return result


# --- 3. the pipeline, ours and Celery's --------------------------------------------------------------------


async def submit_all(
    base_url: str, requests: list[Request], *, concurrency: int, rate: float | None = None
) -> tuple[list[str], float]:
    """Submit every request with `concurrency` in flight, or with `rate` on a fixed timetable; the job ids
    and the seconds it took."""
    client = client_for(base_url, limit=concurrency)
    start = time.monotonic()
    try:
        _, answers = await all_at_once(client, requests, timeout_s=600, rate=rate)
    finally:
        await client.close()
    seconds = time.monotonic() - start
    bad = [(status, body[:200]) for status, body in answers if status not in (200, 202)]
    if bad:
        raise RuntimeError(f"{len(bad)} submissions failed, e.g. {bad[:3]}")
    return [json.loads(body)["data"]["id"] for _, body in answers], seconds


def pipeline_figures(
    label: str, times: list[tuple[datetime, datetime, str]], *, submit_s: float
) -> dict[str, Any]:
    created = [c for c, _, _ in times]
    done = [d for _, d, _ in times]
    latencies = np.asarray([(d - c).total_seconds() for c, d, _ in times])
    span = (max(done) - min(created)).total_seconds()
    statuses: dict[str, int] = {}
    for _, _, status in times:
        statuses[status] = statuses.get(status, 0) + 1
    result = {
        "jobs": len(times),
        "jobs_per_s": round(len(times) / span, 1) if span > 0 else 0.0,
        "p50_s": round(float(np.percentile(latencies, 50)), 4),
        "p99_s": round(float(np.percentile(latencies, 99)), 4),
        "seconds": round(span, 2),
        "submit_s": round(submit_s, 2),
        "statuses": statuses,
    }
    print(
        f"pipeline {label:<10} jobs={len(times)} jobs/s={result['jobs_per_s']:7.1f} "
        f"p50={result['p50_s']:6.2f}s p99={result['p99_s']:6.2f}s statuses={statuses}",
        flush=True,
    )
    return result


async def wait_until(check: Callable[[], Any], *, timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        done, value = await check()
        if done:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not done within {timeout_s:.0f} s ({value})")
        await asyncio.sleep(0.25)


async def pipeline_ours(
    stack: Stack,
    *,
    file_id: str,
    jobs: int,
    concurrency: int,
    label: str = "medialens",
    rate: float | None = None,
) -> dict[str, Any]:
    """`jobs` probes submitted at once (`concurrency` in flight), or at `rate` a second, until all are
    terminal."""
    body = json.dumps({"type": "audio.probe", "file_id": file_id, "labels": {"bench": label}}).encode()
    ids, submit_s = await submit_all(
        stack.base_url, [Request("POST", "/v1/jobs", JSON, body)] * jobs, concurrency=concurrency, rate=rate
    )
    conn = await asyncpg.connect(stack.dsn)
    try:

        async def terminal() -> tuple[bool, int]:
            count = await conn.fetchval(
                "select count(*) from jobs where id = any($1) and status = any($2)", ids, list(TERMINAL)
            )
            return count == len(ids), count

        await wait_until(terminal, timeout_s=max(600.0, jobs), what=f"{jobs} MediaLens jobs")
        rows = await conn.fetch("select created_at, finished_at, status from jobs where id = any($1)", ids)
        lag = await conn.fetchval(RELAY_LAG, ids)
    finally:
        await conn.close()
    figures = pipeline_figures(
        label, [(r["created_at"], r["finished_at"], r["status"]) for r in rows], submit_s=submit_s
    )
    # The relay's lag under this load: from the submit's commit to the broker's confirm of its message.
    figures["relay_lag_p50_s"], figures["relay_lag_p99_s"] = (round(float(q), 3) for q in lag)
    print(f"pipeline {label:<10} relay lag p50={lag[0]:.3f}s p99={lag[1]:.3f}s", flush=True)
    return figures


#: Percentiles 50 and 99 of the outbox's lag (created to sent) of the first message of each job.
RELAY_LAG = """
    select percentile_cont(array[0.5, 0.99]) within group (order by extract(epoch from sent_at - created_at))
    from outbox where job_id = any($1) and delay_s = 0 and not dead and sent_at is not null
"""


async def pipeline_celery(
    baseline: Baseline,
    *,
    wav: Path,
    jobs: int,
    concurrency: int,
    plain: bool = False,
    rate: float | None = None,
    label: str = "",
) -> dict[str, Any]:
    """`jobs` probes through the Celery baseline: `probe_audio`, or with `plain` FFmpeg's default open;
    submitted at once, or at `rate` a second."""
    body = json.dumps({"path": str(wav), "plain": plain}).encode()
    ids, submit_s = await submit_all(
        baseline.base_url,
        [Request("POST", "/jobs", {"Content-Type": "application/json"}, body)] * jobs,
        concurrency=concurrency,
        rate=rate,
    )
    redis = Redis()
    keys = [f"{baseline.prefix}celery-task-meta-{job_id}" for job_id in ids]
    try:

        async def stored() -> tuple[bool, int]:
            count = int(await redis.exists(*keys))
            return count == len(keys), count

        await wait_until(stored, timeout_s=max(600.0, jobs), what=f"{jobs} Celery tasks")
        metas = [json.loads(raw or "{}") for raw in await redis.mget(keys)]
    finally:
        await redis.aclose()
    conn = await asyncpg.connect(baseline.dsn)
    try:
        created = {r["id"]: r["created_at"] for r in await conn.fetch("select id, created_at from jobs")}
    finally:
        await conn.close()
    times = []
    for job_id, meta in zip(ids, metas, strict=True):
        done = datetime.fromisoformat(meta["date_done"])
        if done.tzinfo is None:
            done = done.replace(tzinfo=created[job_id].tzinfo)
        times.append((created[job_id], done, str(meta["status"]).lower()))
    return pipeline_figures(label or ("celery, plain probe" if plain else "celery"), times, submit_s=submit_s)


async def pipeline_with_memory(
    run: Callable[[], Any], pids: dict[str, int], *, servers: dict[str, int] | None = None
) -> tuple[dict[str, Any], dict[str, float]]:
    """`run`'s figures with the CPU per job of `pids` and `servers` (the local nx-27017, whose work is ours
    too), and the peak memory of `pids`."""
    with PeakSampler(pids) as sampler, CpuMeter(pids | (servers or {})) as cpu:
        figures = await run()
    figures["cpu_ms_per_job"] = cpu.per_job_ms(figures["jobs"])
    print(f"pipeline cpu ms/job {figures['cpu_ms_per_job']}", flush=True)
    return figures, sampler.peaks
