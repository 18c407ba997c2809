"""The chaos suite's stack: real processes (gateway, relay, several workers) on a database, vhost and
Redis prefix of their own, reaching RabbitMQ through a TCP proxy the suite can cut, plus the ledger.

The proxy runs in a thread with its own event loop, so the processes keep talking through it whatever the
test's own loop is doing.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import select, text

from medialens_shared.db import DatabaseManager
from medialens_shared.settings import Settings
from medialens_shared.tables import jobs
from medialens_shared.tasks import RESULT_WRITES
from tests.fixtures.proxy import TcpProxy
from tests.fixtures.servers import settings_env

ROOT = Path(__file__).parents[2]
PROGRAMS = {"gateway": "medialens_gateway.main", "relay": "medialens_gateway.relay"}
WORKER_MODULE = "tests.chaos.slow_service"


class ThreadedProxy:
    """A `TcpProxy` on a loop of its own thread."""

    def __init__(self, host: str, port: int) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="chaos-proxy", daemon=True)
        self.thread.start()
        self.proxy = TcpProxy(host, port)
        self._call(self.proxy.start())

    def _call(self, coro: Any) -> None:
        asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=30)

    @property
    def port(self) -> int:
        return self.proxy.port

    def cut(self) -> None:
        self._call(self.proxy.cut())

    def restore(self) -> None:
        self._call(self.proxy.restore())

    def blackhole(self) -> None:
        self.loop.call_soon_threadsafe(self.proxy.blackhole)

    def close(self) -> None:
        self._call(self.proxy.cut())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)


@dataclass
class ChaosStack:
    settings: Settings
    env: dict[str, str]
    base_url: str
    log_dir: Path
    proxy: ThreadedProxy
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    exits: list[tuple[str, int | None, float]] = field(default_factory=list)
    #: Each program's current log and when it was started.
    started: dict[str, tuple[Path, float]] = field(default_factory=dict)
    _serial: int = 0

    # --- processes ----------------------------------------------------------------------------------

    def start(self, name: str) -> None:
        module = PROGRAMS.get(name, WORKER_MODULE)
        self._serial += 1
        log = self.log_dir / f"{name}-{self._serial}.log"
        # Each worker keeps its name across restarts, as a pod does, so a restarted one hands back at once
        # what its killed predecessor was running.
        env = self.env | {"MEDIALENS_WORKER_NAME": name}
        with log.open("wb") as out:
            self.procs[name] = subprocess.Popen(
                [sys.executable, "-m", module], env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT
            )
        self.started[name] = (log, time.monotonic())

    def restart_stuck_workers(self, *, after_s: float) -> list[str]:
        """Restart the workers that have not started consuming `after_s` seconds after their start, as an
        orchestrator's failing probe would; each first dumps its threads' stacks into its log (SIGABRT with
        faulthandler on), so the cause stays on record. The names restarted."""
        stuck = []
        for name in self.workers:
            log, since = self.started[name]
            consuming = "service consuming" in log.read_text(errors="replace")
            if self.procs[name].poll() is not None:  # it died (its watchdog, or a crash): start another
                self.start(name)
                stuck.append(name)
            elif not consuming and time.monotonic() - since > after_s:
                self.procs[name].send_signal(signal.SIGABRT)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.procs[name].wait(timeout=5)
                self.kill9(name)
                self.start(name)
                stuck.append(name)
        return stuck

    @property
    def workers(self) -> list[str]:
        return sorted(name for name in self.procs if name.startswith("worker"))

    def kill9(self, name: str) -> None:
        self.procs[name].kill()
        self.procs[name].wait(timeout=10)

    def terminate(self, name: str, *, grace_s: float) -> tuple[int | None, float]:
        """SIGTERM `name` and wait for it: its exit code and how long it took."""
        started = time.monotonic()
        proc = self.procs[name]
        proc.send_signal(signal.SIGTERM)
        try:
            code: int | None = proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = None
        took = time.monotonic() - started
        self.exits.append((name, code, took))
        return code, took

    def stop_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=40)
            except subprocess.TimeoutExpired:
                proc.kill()

    def log_tails(self, lines: int = 30) -> str:
        parts = []
        for path in sorted(self.log_dir.glob("*.log")):
            text = path.read_text(errors="replace").splitlines()
            parts.append(f"--- {path.name} ---\n" + "\n".join(text[-lines:]))
        return "\n".join(parts)

    # --- the API ------------------------------------------------------------------------------------

    async def wait_ready(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        async with httpx.AsyncClient(base_url=self.base_url, timeout=5) as client:
            while True:
                with contextlib.suppress(httpx.TransportError):
                    if (await client.get("/health/ready")).status_code == 200:
                        return
                if time.monotonic() > deadline:
                    raise AssertionError(f"the chaos stack was not ready\n{self.log_tails()}")
                await asyncio.sleep(0.5)

    async def submit(self, client: httpx.AsyncClient, file_id: str, count: int) -> list[str]:
        """Submit `count` jobs, retrying a submission the gateway could not take (restarting, 503)."""
        ids: list[str] = []
        for _ in range(count):
            for _attempt in range(120):
                try:
                    response = await client.post("/v1/jobs", json={"type": "video.probe", "file_id": file_id})
                except httpx.TransportError:
                    await asyncio.sleep(0.25)
                    continue
                assert response.status_code != 500, response.text  # never a bug's 500, even mid-fault
                if response.status_code == 202:
                    ids.append(response.json()["data"]["id"])
                    break
                await asyncio.sleep(0.25)
            else:
                raise AssertionError("the gateway did not take a submission for 30 s")
        return ids


@dataclass
class Ledger:
    scenario: str
    submitted: int
    succeeded: int
    failed: int
    cancelled: int
    lost: int
    duplicates: int
    dead: int
    recover_s: float
    #: Jobs that ran more than once (`attempts` > 1): those a fault interrupted and the system ran again.
    rerun: int = 0
    #: The failed jobs' error codes, with how many failed with each.
    errors: dict[str, int] = field(default_factory=dict)
    #: The relay's lag (submit's commit to confirmed publish) of the jobs' first messages: p99, seconds.
    relay_p99_s: float = 0.0

    def line(self) -> str:
        errors = ",".join(f"{code}:{count}" for code, count in sorted(self.errors.items())) or "-"
        return (
            f"scenario={self.scenario} submitted={self.submitted} succeeded={self.succeeded} "
            f"failed={self.failed} lost={self.lost} dup={self.duplicates} dead={self.dead} "
            f"rerun={self.rerun} errors={errors} "
            f"recover_s={self.recover_s:.1f} relay_p99_s={self.relay_p99_s:.2f}"
        )


async def ledger(
    db: DatabaseManager, scenario: str, job_ids: Iterable[str], *, since: float, timeout: float
) -> Ledger:
    """Wait (up to `timeout`) until every job is terminal, then count what happened to them."""
    ids = list(job_ids)
    deadline = time.monotonic() + timeout
    while True:
        async with db.session() as session:
            rows = (await session.execute(select(jobs).where(jobs.c.id.in_(ids)))).mappings().all()
        open_jobs = [row for row in rows if row["status"] not in ("succeeded", "failed", "cancelled")]
        if not open_jobs or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.5)
    recover_s = time.monotonic() - since
    writes = {
        doc["_id"]: doc.get(RESULT_WRITES, 1)
        async for doc in db.collection("results").find({"_id": {"$in": ids}}, {RESULT_WRITES: 1})
    }
    async with db.session() as session:
        relay_p99 = await session.scalar(RELAY_P99, {"ids": ids})
        dead = await session.scalar(DEAD_LETTERED, {"ids": ids})
    count = {status: sum(1 for row in rows if row["status"] == status) for status in ("succeeded", "failed")}
    return Ledger(
        scenario=scenario,
        submitted=len(ids),
        succeeded=count["succeeded"],
        failed=count["failed"],
        cancelled=sum(1 for row in rows if row["status"] == "cancelled"),
        lost=len(ids) - len(rows) + len(open_jobs),
        duplicates=sum(1 for value in writes.values() if value > 1),
        dead=int(dead or 0),
        recover_s=recover_s,
        relay_p99_s=float(relay_p99 or 0.0),
        rerun=sum(1 for row in rows if row["attempts"] > 1),
        errors=dict(Counter(row["error_code"] for row in rows if row["status"] == "failed")),
    )


DEAD_LETTERED = text("select count(distinct job_id) from outbox where job_id = any(:ids) and dead")
RELAY_P99 = text("""
    select percentile_cont(0.99) within group (order by extract(epoch from sent_at - created_at))
    from outbox where job_id = any(:ids) and delay_s = 0 and not dead and sent_at is not null
""")


def chaos_env(settings: Settings, *, gateway_port: int, job_s: float, poison_sha256: str) -> dict[str, str]:
    env = settings_env(settings) | {
        "MEDIALENS_GATEWAY_PORT": str(gateway_port),
        "MEDIALENS_LOG_FORMAT": "text",
        "PYTHONUNBUFFERED": "1",
        "PYTHONFAULTHANDLER": "1",
        "CHAOS_JOB_S": str(job_s),
        "CHAOS_POISON_SHA256": poison_sha256,
    }
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env
