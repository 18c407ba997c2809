"""The processes under test, each run isolated on the local servers, and what the servers see of them.

`Stack` runs the five MediaLens programs as `make dev` does, with the e2e tests' isolated configuration
(`make_settings`: a database, a vhost, a MongoDB database and a Redis prefix of this run) but the product's
own pool sizes, relay poll and progress interval. `Baseline` runs the Celery worker (prefork, 2 processes)
and its FastAPI front on a vhost and a database of their own. Both remove what they created on exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import asyncpg
import httpx
import psutil  # type: ignore[import-untyped]  # no stubs in the workspace
from redis.asyncio import Redis

from medialens_shared import devmongo, migrate

# The e2e tests' isolated configuration, reused as is. Imported by name so that mypy, run on bench/, does
# not type-check the test tree (whose settings are checked by its own tools).
_servers: Any = importlib.import_module("tests.fixtures.servers")
POSTGRES_ADMIN: str = _servers.POSTGRES_ADMIN
make_settings = _servers.make_settings
settings_env = _servers.settings_env

ROOT = Path(__file__).resolve().parents[2]
PROGRAMS = {
    "gateway": "medialens_gateway.main",
    "relay": "medialens_gateway.relay",
    "video": "medialens_video",
    "audio": "medialens_audio",
    "data": "medialens_data",
}
SERVICES = ("video", "audio", "data")
READY_TIMEOUT_S = 120.0
#: make_settings' test values we drop, so the product's defaults apply (each process's own pool size and
#: overflow, relay 0.2 s, ...). The test overflow (6) once stayed: the gateway then ran 30 + 6, and under
#: wrk opened and closed its overflow connections request after request (a dozen new ones a second).
PRODUCT_DEFAULTS = (
    "MEDIALENS_POSTGRES_POOL_SIZE",
    "MEDIALENS_POSTGRES_MAX_OVERFLOW",
    "MEDIALENS_RELAY_POLL_INTERVAL_S",
    "MEDIALENS_WORKER_PROGRESS_INTERVAL_S",
    "MEDIALENS_GATEWAY_MAX_UPLOAD_BYTES",
)
API_KEY: str = _servers.TENANT_KEYS["tenant-a"]


free_port = _servers.free_port


def program_of(name: str) -> str:
    """The program a process name runs: `audio-2`, a second audio process, runs `audio`."""
    return name if name in PROGRAMS else name.rpartition("-")[0]


def rabbitmqctl(*args: str) -> str:
    ctl = shutil.which("rabbitmqctl")
    if ctl is None:
        raise RuntimeError("rabbitmqctl is needed (run as root, with rabbitmq-server installed)")
    return subprocess.run([ctl, "-q", *args], check=True, capture_output=True, text=True, timeout=120).stdout


async def _admin(sql: str) -> None:
    conn = await asyncpg.connect(POSTGRES_ADMIN)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def rss_mb(pid: int) -> float:
    """Resident memory of `pid` and its children, in MB (0 when it is gone)."""
    try:
        proc = psutil.Process(pid)
        total = proc.memory_info().rss
        for child in proc.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                total += child.memory_info().rss
    except psutil.Error:
        return 0.0
    return round(float(total) / 2**20, 1)


def client_ports(pid: int, server_port: int) -> set[int]:
    """Local ports of the TCP connections `pid` (and its children) hold to `server_port`."""
    ports: set[int] = set()
    with contextlib.suppress(psutil.Error):
        proc = psutil.Process(pid)
        for member in (proc, *proc.children(recursive=True)):
            with contextlib.suppress(psutil.Error):
                ports |= {
                    c.laddr.port
                    for c in member.net_connections(kind="tcp")
                    if c.raddr and c.raddr.port == server_port and c.status == psutil.CONN_ESTABLISHED
                }
    return ports


class PeakSampler:
    """Samples the resident memory of some processes every `interval_s` in a thread; keeps the peaks."""

    def __init__(self, pids: dict[str, int], *, interval_s: float = 0.5) -> None:
        self.pids, self.interval_s = pids, interval_s
        self.peaks: dict[str, float] = dict.fromkeys(pids, 0.0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for name, pid in self.pids.items():
                self.peaks[name] = max(self.peaks[name], rss_mb(pid))
            self._stop.wait(self.interval_s)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


#: The local servers by process name, whose CPU a pipeline's figures count beside the programs' own.
SERVER_PROCESSES = {"postgres": "postgres", "rabbitmq": "beam.smp", "redis": "redis-server"}


def cpu_s(pid: int) -> float:
    """User plus system CPU seconds of `pid` and its live children (0 when it is gone)."""
    total = 0.0
    with contextlib.suppress(psutil.Error):
        proc = psutil.Process(pid)
        for member in (proc, *proc.children(recursive=True)):
            with contextlib.suppress(psutil.Error):
                times = member.cpu_times()
                total += times.user + times.system
    return total


def server_cpu_s() -> dict[str, float]:
    """CPU seconds so far of every process of each local server (PostgreSQL's backends come and go: a
    backend that exited during a measurement is missed, which the pipeline's pools make rare)."""
    totals = dict.fromkeys(SERVER_PROCESSES, 0.0)
    by_process = {process: name for name, process in SERVER_PROCESSES.items()}
    for proc in psutil.process_iter(["name", "cpu_times"]):
        name = by_process.get(proc.info["name"] or "")
        if name is not None and proc.info["cpu_times"] is not None:
            totals[name] += proc.info["cpu_times"].user + proc.info["cpu_times"].system
    return totals


class CpuMeter:
    """CPU milliseconds per job of each program and local server over a block: where a job's cost goes on
    a machine whose cores every process shares (the pipeline's bound here is CPU, not waiting)."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self._start: dict[str, float] = {}
        self.seconds: dict[str, float] = {}

    def _now(self) -> dict[str, float]:
        return {name: cpu_s(pid) for name, pid in self.pids.items()} | server_cpu_s()

    def __enter__(self) -> Self:
        self._start = self._now()
        return self

    def __exit__(self, *_: object) -> None:
        end = self._now()
        self.seconds = {name: end[name] - self._start.get(name, 0.0) for name in end}

    def per_job_ms(self, jobs: int) -> dict[str, float]:
        per_job = {name: round(1000 * s / jobs, 2) for name, s in self.seconds.items()}
        return per_job | {"total": round(sum(per_job.values()), 2)}


@dataclass
class Stack:
    """The five MediaLens programs on this run's database, vhost, MongoDB database and Redis prefix."""

    workdir: Path
    run_id: str = field(default_factory=lambda: secrets.token_hex(4))
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    env: dict[str, str] = field(default_factory=dict)
    _mongo: devmongo.DevMongo | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def vhost(self) -> str:
        return f"medialens-bench-{self.run_id}"

    @property
    def database(self) -> str:
        return f"medialens_test_{self.run_id}"

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:5432/{self.database}"

    @property
    def redis_prefix(self) -> str:
        return f"medialens-test-{self.run_id}"

    @property
    def amqp_url(self) -> str:
        """This run's vhost on the local RabbitMQ (set once the stack is entered)."""
        return self.env["MEDIALENS_RABBITMQ_URL"]

    @property
    def mongo_url(self) -> str:
        """MEDIALENS_MONGODB_URL, or the nx-27017 dev server started here (set once the stack is entered)."""
        return self.env["MEDIALENS_MONGODB_URL"]

    @property
    def mongo_database(self) -> str:
        return self.env["MEDIALENS_MONGODB_DATABASE"]

    def __enter__(self) -> Self:
        rabbitmqctl("add_vhost", self.vhost)
        rabbitmqctl("set_permissions", "-p", self.vhost, "guest", ".*", ".*", ".*")
        mongo_url = os.environ.get("MEDIALENS_MONGODB_URL")
        if not mongo_url:
            self._mongo = devmongo.start(data_dir=self.workdir / "mongo")
            mongo_url = self._mongo.url
        settings = make_settings(run_id=self.run_id, mongo_url=mongo_url, vhost=self.vhost)
        migrate.upgrade(settings.postgres.url.get_secret_value())
        env = settings_env(settings)
        for name in PRODUCT_DEFAULTS:
            env.pop(name, None)
        env |= {
            "MEDIALENS_GATEWAY_HOST": "127.0.0.1",
            "MEDIALENS_GATEWAY_PORT": str(self.port),
            "MEDIALENS_GATEWAY_MAX_UPLOAD_BYTES": str(200 * 2**20),
            "MEDIALENS_LOG_FORMAT": "text",
            "MEDIALENS_LOG_LEVEL": "INFO",
            # The pipeline's probes mostly wait on the databases: a service overlaps several (the default,
            # 1, is for heavy media jobs), as Celery's prefork pool runs 2 and prefetches 8.
            "MEDIALENS_WORKER_CONCURRENCY": "8",
            "PYTHONUNBUFFERED": "1",
            "PYTHONPYCACHEPREFIX": str(self.workdir / "pycache"),
        }
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        # For A/B runs: the stack's processes import another checkout first (e.g. a `git worktree` of the
        # commit before a change: `MEDIALENS_BENCH_PYTHONPATH=<tree>/shared/src:<tree>/services/audio/src`).
        if os.environ.get("MEDIALENS_BENCH_PYTHONPATH"):
            env["PYTHONPATH"] = os.environ["MEDIALENS_BENCH_PYTHONPATH"]
        self.env = env
        warm_up = "import " + ", ".join(f"{m}.__main__" if "." not in m else m for m in PROGRAMS.values())
        subprocess.run([sys.executable, "-W", "ignore", "-c", warm_up], env=env, check=True, timeout=300)
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop(*self.procs)
        if self._mongo is not None:
            self._mongo.stop()
        with contextlib.suppress(Exception):
            asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)'))
        with contextlib.suppress(Exception):
            rabbitmqctl("delete_vhost", self.vhost)

    def log(self, name: str) -> Path:
        return self.workdir / f"{name}.log"

    def start(self, *names: str) -> None:
        """Start programs by name; `audio-2` is a second process of the audio service (a replica)."""
        for name in names:
            self._spawn(name)
        deadline = time.monotonic() + READY_TIMEOUT_S
        waiting = set(names)
        while waiting:
            for name in list(waiting):
                if self.procs[name].poll() is not None:
                    tail = self.log(name).read_text(errors="replace")[-3000:]
                    if "too many clients" not in tail or time.monotonic() > deadline:
                        raise RuntimeError(f"{name} exited during start-up:\n{tail}")
                    # PostgreSQL is shared with other work on this machine; wait for a free slot.
                    print(f"{name}: PostgreSQL has no free connection slot; starting it again", flush=True)
                    time.sleep(5)
                    self._spawn(name)
                if self._ready(name):
                    waiting.discard(name)
            if time.monotonic() > deadline:
                raise RuntimeError(f"not ready within {READY_TIMEOUT_S} s: {sorted(waiting)}")
            time.sleep(0.25)

    def _spawn(self, name: str) -> None:
        env = self.env
        if name not in PROGRAMS:  # a replica: its own operations port
            env = env | {"MEDIALENS_WORKER_HTTP_PORT": str(free_port())}
        with self.log(name).open("ab") as out:
            self.procs[name] = subprocess.Popen(
                [sys.executable, "-m", PROGRAMS[program_of(name)]], env=env, cwd=ROOT, stdout=out, stderr=out
            )

    def _ready(self, name: str) -> bool:
        if name == "gateway":
            try:
                return httpx.get(f"{self.base_url}/health/ready", timeout=5).status_code == 200
            except httpx.TransportError:
                return False
        text = self.log(name).read_text(errors="replace")
        return "service consuming" in text if program_of(name) in SERVICES else "database pools ready" in text

    def stop(self, *names: str) -> None:
        for name in names:
            if (proc := self.procs.get(name)) and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for name in names:
            if (proc := self.procs.get(name)) and proc.poll() is None:
                try:
                    proc.wait(timeout=40)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=10)

    def pids(self) -> dict[str, int]:
        return {name: proc.pid for name, proc in self.procs.items() if proc.poll() is None}

    def server_pids(self) -> dict[str, int]:
        """The local servers this stack started itself: the nx-27017 MongoDB (none with a MongoDB URL)."""
        return {"mongodb": self._mongo.process.pid} if self._mongo is not None else {}

    def rss(self) -> dict[str, float]:
        return {name: rss_mb(pid) for name, pid in self.pids().items()}

    def purge_work_queues(self) -> None:
        """Drop the messages no worker has taken (the saturation runs' jobs stay `queued` in the table)."""
        for service in SERVICES:
            with contextlib.suppress(subprocess.CalledProcessError):
                rabbitmqctl("purge_queue", "-p", self.vhost, f"medialens.jobs.{service}")

    async def connections(self) -> dict[str, dict[str, int]]:
        """Per program, what the servers count: PostgreSQL backends, Redis clients, AMQP connections and
        channels (matched to the program by the client's local port)."""
        pids = self.pids()
        pg_ports = {name: client_ports(pid, 5432) for name, pid in pids.items()}
        redis_ports = {name: client_ports(pid, 6379) for name, pid in pids.items()}
        amqp_ports = {name: client_ports(pid, 5672) for name, pid in pids.items()}
        conn = await asyncpg.connect(POSTGRES_ADMIN)
        try:
            # Idle in a transaction for over a second: a transaction left open, not one caught between two
            # of its statements (the relay's polls are, for a moment, several times a second).
            rows = await conn.fetch(
                "select client_port, state = 'idle in transaction' and now() - state_change > interval '1 s'"
                " as stuck from pg_stat_activity where datname = $1",
                self.database,
            )
        finally:
            await conn.close()
        redis = Redis()
        try:
            clients = await redis.client_list()
        finally:
            await redis.aclose()
        redis_client_ports = [int(c["addr"].rsplit(":", 1)[1]) for c in clients]
        listing = rabbitmqctl(
            "list_connections", "-p", self.vhost, "peer_port", "channels", "--no-table-headers"
        )
        amqp_conns: Counter[int] = Counter()
        amqp_channels: Counter[int] = Counter()
        for line in listing.splitlines():
            fields = line.split()
            if len(fields) == 2 and fields[0].isdigit() and fields[1].isdigit():
                amqp_conns[int(fields[0])] += 1
                amqp_channels[int(fields[0])] += int(fields[1])
        counts: dict[str, dict[str, int]] = {}
        for name in pids:
            counts[name] = {
                "postgres": sum(1 for r in rows if r["client_port"] in pg_ports[name]),
                "postgres_idle_in_tx": sum(
                    1 for r in rows if r["client_port"] in pg_ports[name] and r["stuck"]
                ),
                "redis": sum(1 for p in redis_client_ports if p in redis_ports[name]),
                "amqp_connections": sum(n for p, n in amqp_conns.items() if p in amqp_ports[name]),
                "amqp_channels": sum(n for p, n in amqp_channels.items() if p in amqp_ports[name]),
            }
        return counts


@dataclass
class Baseline:
    """The Celery worker (prefork, 2 processes) and its FastAPI front, on their own vhost and database."""

    workdir: Path
    run_id: str = field(default_factory=lambda: secrets.token_hex(4))
    port: int = field(default_factory=free_port)
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def vhost(self) -> str:
        return f"bench-celery-{self.run_id}"

    @property
    def database(self) -> str:
        return f"bench_celery_{self.run_id}"

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:5432/{self.database}"

    @property
    def prefix(self) -> str:
        return f"bench-celery-{self.run_id}:"

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, Any]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MEDIALENS_")}
        return env | {
            "BENCH_CELERY_BROKER": f"amqp://guest:guest@127.0.0.1:5672/{self.vhost}",
            "BENCH_CELERY_BACKEND": "redis://127.0.0.1:6379/0",
            "BENCH_CELERY_PREFIX": self.prefix,
            "BENCH_CELERY_POSTGRES": self.dsn,
            "PYTHONUNBUFFERED": "1",
        }

    def __enter__(self) -> Self:
        rabbitmqctl("add_vhost", self.vhost)
        rabbitmqctl("set_permissions", "-p", self.vhost, "guest", ".*", ".*", ".*")
        asyncio.run(_admin(f'CREATE DATABASE "{self.database}"'))
        env = self.env()
        celery = [sys.executable, "-m", "celery", "-A", "bench.platform.celery_app", "worker"]
        worker_args = ["--pool", "prefork", "--concurrency", "2", "--loglevel", "WARNING", "--without-gossip"]
        commands = {
            "celery-worker": [*celery, *worker_args, "--without-mingle"],
            "celery-api": [sys.executable, "-m", "bench.platform.celery_api", str(self.port)],
        }
        for name, command in commands.items():
            with (self.workdir / f"{name}.log").open("ab") as out:
                self.procs[name] = subprocess.Popen(command, env=env, cwd=ROOT, stdout=out, stderr=out)
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            dead = [name for name, proc in self.procs.items() if proc.poll() is not None]
            if dead:
                raise RuntimeError(f"{dead} exited at start; see {self.workdir}")
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{self.base_url}/docs", timeout=5).status_code == 200 and self._worker_ready():
                    return self
            if time.monotonic() > deadline:
                raise RuntimeError(f"the Celery baseline did not start; see {self.workdir}")
            time.sleep(0.5)

    def _worker_ready(self) -> bool:
        consumers = rabbitmqctl("list_consumers", "-p", self.vhost, "queue_name", "--no-table-headers")
        return "celery" in consumers

    def __exit__(self, *_: object) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        with contextlib.suppress(Exception):
            asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)'))
        with contextlib.suppress(Exception):
            rabbitmqctl("delete_vhost", self.vhost)
        with contextlib.suppress(Exception):
            asyncio.run(self._drop_results())

    async def _drop_results(self) -> None:
        redis = Redis()
        try:
            keys = [key async for key in redis.scan_iter(match=f"{self.prefix}*", count=1000)]
            for start in range(0, len(keys), 1000):
                await redis.delete(*keys[start : start + 1000])
        finally:
            await redis.aclose()

    def pids(self) -> dict[str, int]:
        return {name: proc.pid for name, proc in self.procs.items() if proc.poll() is None}


@contextlib.contextmanager
def ceiling_server(*, loop: str = "uvloop") -> Iterator[str]:
    """The bare FastAPI process (bench.platform.ceiling) on a free port, on `loop` (uvloop or asyncio);
    its base URL."""
    port = free_port()
    with tempfile.TemporaryFile() as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "bench.platform.ceiling", str(port), loop],
            cwd=ROOT,
            stdout=out,
            stderr=out,
        )
        try:
            deadline = time.monotonic() + 60
            while True:
                with contextlib.suppress(httpx.TransportError):
                    if httpx.get(f"http://127.0.0.1:{port}/v1/ping", timeout=2).status_code == 200:
                        break
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the ceiling server did not start")
                time.sleep(0.2)
            yield f"http://127.0.0.1:{port}"
        finally:
            proc.terminate()
            proc.wait(timeout=20)
