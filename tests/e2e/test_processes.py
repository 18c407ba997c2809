"""The stack as real processes, as `make dev` runs it: the five console programs on this run's servers,
driven over real HTTP, and stopped with SIGTERM as an orchestrator would."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import psutil
import pytest

from medialens_shared import migrate
from medialens_shared.settings import Settings
from scripts.samples import make_audio, make_csv, make_video
from tests.fixtures.servers import (
    POSTGRES_ADMIN,
    SERVERS,
    TENANT_KEYS,
    drop_database,
    free_port,
    make_settings,
    settings_env,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

#: Program name -> the module it runs, as the console scripts of the workspace do.
PROGRAMS = {
    "gateway": "medialens_gateway.main",
    "relay": "medialens_gateway.relay",
    "video": "medialens_video",
    "audio": "medialens_audio",
    "data": "medialens_data",
}
#: From start to ready, once the bytecode is compiled (the CI machine may be shared and loaded).
READY_TIMEOUT_S = 90.0
WARM_UP_TIMEOUT_S = 300.0
STOP_TIMEOUT_S = 30.0


@dataclass
class Processes:
    base_url: str
    logs: dict[str, Path]
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    #: Program -> the port of its operations server (the gateway's is `base_url`'s).
    ops_ports: dict[str, int] = field(default_factory=dict)
    #: PostgreSQL backend pids serving each program, found while they ran.
    backends: dict[str, set[int]] = field(default_factory=dict)
    exit_codes: dict[str, int | None] = field(default_factory=dict)

    def log_tails(self, lines: int = 40) -> str:
        parts = []
        for name, path in self.logs.items():
            text = path.read_text(errors="replace").splitlines() if path.exists() else []
            parts.append(f"--- {name} ({path}) ---\n" + "\n".join(text[-lines:]))
        return "\n".join(parts)

    def kill_leftovers(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)


@pytest.fixture(scope="module")
def settings(run_id: str, mongo_url: str) -> Iterator[Settings]:
    """A database, a vhost and a Redis prefix of the process stack's own (this module's `database` and
    `settings` stand in for the session's): the session's in-process stack, once a test started it,
    consumes the session's queues, and would take the processes' jobs and run them itself, so these tests
    could pass with a process service broken."""
    own = f"{run_id}p"
    vhost = f"medialens-test-{own}"
    SERVERS.admin.add_vhost(vhost)
    try:
        yield make_settings(run_id=own, mongo_url=mongo_url, vhost=vhost)
    finally:
        SERVERS.admin.delete_vhost(vhost)


@pytest.fixture(scope="module")
def database(settings: Settings) -> Iterator[str]:
    """The process stack's own PostgreSQL database, migrated; dropped at the end."""
    url = settings.postgres.url.get_secret_value()
    migrate.upgrade(url)
    yield url
    asyncio.run(drop_database(url.rsplit("/", 1)[1]))


@pytest.fixture(scope="module")
def processes(
    settings: Settings, database: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Processes]:
    """The gateway, the relay and the three services as child processes, ready; killed if still alive."""
    port = free_port()
    env = settings_env(settings) | {
        "MEDIALENS_GATEWAY_HOST": "127.0.0.1",
        "MEDIALENS_GATEWAY_PORT": str(port),
        "MEDIALENS_LOG_FORMAT": "text",
        "MEDIALENS_LOG_LEVEL": "INFO",
        "PYTHONUNBUFFERED": "1",
        "PYTHONFAULTHANDLER": "1",
    }
    # The environment may forbid bytecode files; compiling every import in five processes at once, on a
    # loaded machine, can outlast the readiness budget. So compile once, into a private cache.
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPYCACHEPREFIX"] = str(tmp_path_factory.mktemp("pycache"))
    warm_up = "import " + ", ".join(
        f"{module}.__main__" if "." not in module else module for module in PROGRAMS.values()
    )
    subprocess.run(
        [sys.executable, "-W", "ignore", "-c", warm_up], env=env, check=True, timeout=WARM_UP_TIMEOUT_S
    )
    log_dir = tmp_path_factory.mktemp("processes")
    running = Processes(
        base_url=f"http://127.0.0.1:{port}", logs={name: log_dir / f"{name}.log" for name in PROGRAMS}
    )
    try:
        for name, module in PROGRAMS.items():
            running.ops_ports[name] = port if name == "gateway" else free_port()
            with running.logs[name].open("wb") as out:
                running.procs[name] = subprocess.Popen(
                    [sys.executable, "-m", module],
                    env=env | {"MEDIALENS_WORKER_HTTP_PORT": str(running.ops_ports[name])},
                    cwd=Path(__file__).parents[2],
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
        wait_ready(running)
        yield running
    finally:
        running.kill_leftovers()


def wait_ready(running: Processes) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while True:
        dead = {name: proc.returncode for name, proc in running.procs.items() if proc.poll() is not None}
        if dead:
            pytest.fail(f"processes exited during start-up: {dead}\n{running.log_tails()}")
        try:
            response = httpx.get(f"{running.base_url}/health/ready", timeout=5)
            if response.status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            for proc in running.procs.values():
                proc.send_signal(signal.SIGABRT)  # faulthandler writes where each one is stuck to its log
            time.sleep(2)
            pytest.fail(f"the gateway was not ready within {READY_TIMEOUT_S} s\n{running.log_tails()}")
        time.sleep(0.25)


async def pg_backends(database: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(POSTGRES_ADMIN)
    try:
        return await conn.fetch(
            "select pid, application_name, client_port from pg_stat_activity where datname = $1",
            database.rsplit("/", 1)[1],
        )
    finally:
        await conn.close()


def postgres_ports(pid: int) -> set[int]:
    """Local ports of `pid`'s TCP connections to PostgreSQL (port 5432)."""
    return {
        conn.laddr.port
        for conn in psutil.Process(pid).net_connections(kind="tcp")
        if conn.raddr and conn.raddr.port == 5432
    }


async def poll(client: httpx.AsyncClient, job_id: str, *, timeout: float = 90.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        response = await client.get(f"/v1/jobs/{job_id}")
        assert response.status_code == 200, response.text
        job: dict[str, Any] = response.json()["data"]
        if job["status"] in ("succeeded", "failed", "cancelled"):
            return job
        assert time.monotonic() < deadline, f"job {job_id} not finished within {timeout} s: {job}"
        await asyncio.sleep(0.1)


async def upload(client: httpx.AsyncClient, path: Path, content_type: str) -> str:
    with path.open("rb") as handle:
        response = await client.post("/v1/files", files={"file": (path.name, handle, content_type)})
    assert response.status_code == 201, response.text
    file_id: str = response.json()["data"]["id"]
    return file_id


async def follow_events(client: httpx.AsyncClient, job_id: str) -> list[tuple[str, dict[str, Any]]]:
    """Read the job's SSE stream line by line until its `done` event; the events seen."""
    events: list[tuple[str, dict[str, Any]]] = []
    event = ""
    async with client.stream("GET", f"/v1/jobs/{job_id}/events", timeout=httpx.Timeout(90)) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        async for line in response.aiter_lines():
            if line.startswith("event: "):
                event = line.removeprefix("event: ")
            elif line.startswith("data: "):
                events.append((event, json.loads(line.removeprefix("data: "))))
                if event == "done":
                    break
    return events


async def test_jobs_of_every_service_run_on_the_process_stack(
    processes: Processes, database: str, tmp_path: Path
) -> None:
    """Over real HTTP, a video, an audio file and a CSV uploaded to the process stack are probed and
    profiled with the values they were generated with, and one job's progress streams live as SSE."""
    video, audio, table = tmp_path / "clip.mp4", tmp_path / "tone.wav", tmp_path / "table.csv"
    make_video(video, duration_s=2.0, fps=25, width=320, height=240)
    make_audio(audio, duration_s=1.5, sample_rate=44100, channels=2)
    truth = make_csv(table, rows=300)
    headers = {"Authorization": f"Bearer {TENANT_KEYS['tenant-a']}"}
    async with httpx.AsyncClient(base_url=processes.base_url, headers=headers, timeout=60) as client:
        submitted = {}
        for job_type, path, content_type in (
            ("video.probe", video, "video/mp4"),
            ("audio.probe", audio, "audio/wav"),
            ("data.profile", table, "text/csv"),
        ):
            file_id = await upload(client, path, content_type)
            response = await client.post("/v1/jobs", json={"type": job_type, "file_id": file_id})
            assert response.status_code == 202, response.text
            assert response.headers["location"] == f"/v1/jobs/{response.json()['data']['id']}"
            submitted[job_type] = response.json()["data"]["id"]

        events = await follow_events(client, submitted["video.probe"])
        assert events, "no event before the stream closed"
        assert events[-1][0] == "done"
        assert events[-1][1]["status"] == "succeeded", events[-1]
        assert all(name == "progress" for name, _ in events[:-1]), events

        jobs = {job_type: await poll(client, job_id) for job_type, job_id in submitted.items()}
        for job in jobs.values():
            assert job["status"] == "succeeded", job
        results = {}
        for job_type, job_id in submitted.items():
            response = await client.get(f"/v1/jobs/{job_id}/result")
            assert response.status_code == 200, response.text
            results[job_type] = response.json()["data"]

    probe = results["video.probe"]
    assert (probe["video"]["width"], probe["video"]["height"]) == (320, 240)
    assert probe["video"]["frame_count"] == 50
    assert probe["video"]["fps"] == pytest.approx(25.0)
    assert probe["format"]["size_bytes"] == video.stat().st_size
    assert probe["audio"] == []
    sound = results["audio.probe"]
    assert (sound["sample_rate"], sound["channels"]) == (44100, 2)
    assert sound["duration_s"] == pytest.approx(1.5, abs=0.01)
    profile = results["data.profile"]
    assert (profile["row_count"], profile["column_count"]) == (300, 5)
    columns = {column["name"]: column for column in profile["columns"]}
    assert list(columns) == truth["columns"]
    for name in ("id", "quantity", "price"):
        stats = truth["stats"][name]
        assert columns[name]["null_count"] == stats["null_count"], name
        assert columns[name]["min"] == pytest.approx(stats["min"]), name
        assert columns[name]["max"] == pytest.approx(stats["max"]), name
        assert columns[name]["mean"] == pytest.approx(stats["mean"]), name

    # Which PostgreSQL backends serve which program, matched by the client's local port, for the next test.
    backends = await pg_backends(database)
    for name, proc in processes.procs.items():
        ports = postgres_ports(proc.pid)
        processes.backends[name] = {row["pid"] for row in backends if row["client_port"] in ports}
        assert processes.backends[name], f"{name} holds no PostgreSQL connection: its pool is not warm"
        names = {row["application_name"] for row in backends if row["pid"] in processes.backends[name]}
        assert names == {f"medialens-{name}"}, names


async def test_every_process_runs_with_its_start_up_heap_frozen(processes: Processes) -> None:
    """Each program, once started, keeps its start-up objects out of the collector's full passes
    (`memtrim.frozen_startup_heap`; 80-280 ms pauses under load without it), as its metrics say."""
    async with httpx.AsyncClient(timeout=30) as client:
        for name, port in processes.ops_ports.items():
            for _ in range(50):  # a service enters the block once its consumer runs, just after it is ready
                text = (await client.get(f"http://127.0.0.1:{port}/metrics")).text
                frozen = float(text.split("\nmedialens_gc_frozen_objects ", 1)[1].split()[0])
                if frozen:
                    break
                await asyncio.sleep(0.2)
            # Each has well over 10,000 objects from start-up alone (FastStream, pydantic, SQLAlchemy...).
            assert frozen > 10_000, (name, frozen)


async def test_sigterm_stops_every_process_cleanly(processes: Processes, database: str) -> None:
    """On SIGTERM every program stops within 30 s, the relay and the services with exit code 0, each having
    closed its pools, and none of their PostgreSQL connections is left on the server."""
    for proc in processes.procs.values():
        proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT_S
    for name, proc in processes.procs.items():
        try:
            processes.exit_codes[name] = await asyncio.to_thread(
                proc.wait, max(0.1, deadline - time.monotonic())
            )
        except subprocess.TimeoutExpired:
            processes.exit_codes[name] = None
    assert None not in processes.exit_codes.values(), f"still running after 30 s: {processes.exit_codes}"
    others = {name: code for name, code in processes.exit_codes.items() if name != "gateway"}
    assert others == dict.fromkeys(others, 0), processes.exit_codes
    # The gateway's exit code has its own test below; its graceful shutdown is checked here.
    assert processes.exit_codes["gateway"] in (0, -signal.SIGTERM), processes.exit_codes

    for name in PROGRAMS:
        assert f"database pools closed for {name}" in processes.logs[name].read_text(), name

    # Matched by backend pid, whoever else may connect to the database.
    ours = set().union(*processes.backends.values())
    assert ours, "the first test found no PostgreSQL connection of the programs"
    left: list[asyncpg.Record] = []
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        left = [row for row in await pg_backends(database) if row["pid"] in ours]
        if not left:
            break
        await asyncio.sleep(0.2)
    assert not left, f"connections of the stopped programs remain: {left}"


def test_gateway_exits_with_code_zero_on_sigterm(processes: Processes) -> None:
    """After its graceful shutdown on SIGTERM the gateway exits with code 0, like the other programs."""
    assert processes.exit_codes.get("gateway") == 0, processes.exit_codes
