"""Load generators: wrk at saturation, and an open-loop client at a fixed rate.

The fixed-rate client schedules request i at `t0 + i / rate` and measures its latency from that scheduled
moment, not from when it could be sent: a slow answer delays no later request's clock, so queueing in the
server shows in the figures instead of being hidden (no coordinated omission). It speaks HTTP/1.1 over raw
asyncio streams with keep-alive and opens another connection whenever all are busy, so it costs little CPU
beside the server it measures (the machine has two cores).
"""

from __future__ import annotations

import asyncio
import gc
import json
import shutil
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

#: Seconds a connection may sit idle before we drop it ourselves (uvicorn closes them after 5 s).
KEEP_ALIVE_S = 4.0
#: wrk's done() hook writes this prefix and one JSON object.
_WRK_MARK = "WRK_JSON "
_WRK_DONE = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests":%d,"duration_us":%d,"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d,'
    .. '"p50_us":%.1f,"p99_us":%.1f,"p999_us":%.1f,"max_us":%.1f}\\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99), latency:percentile(99.9), latency.max))
end
"""


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""

    def head(self, host: str) -> bytes:
        lines = [f"{self.method} {self.path} HTTP/1.1", f"Host: {host}", f"Content-Length: {len(self.body)}"]
        lines += [f"{name}: {value}" for name, value in self.headers.items()]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


@dataclass
class Figures:
    """One measurement: what was asked, what came back, and how long it took."""

    requests: int
    errors: int
    seconds: float
    rps: float
    p50_ms: float
    p99_ms: float
    p999_ms: float
    statuses: dict[str, int] = field(default_factory=dict)
    #: Open loop only: the latest a request left after its scheduled moment (the client's own lag).
    send_lag_ms: float | None = None
    #: Requests that got no answer, by the exception met (timeouts, resets...).
    failures: dict[str, int] = field(default_factory=dict)

    def line(self, label: str) -> str:
        return (
            f"{label:<34} rps={self.rps:8.1f} p50={self.p50_ms:8.1f}ms p99={self.p99_ms:8.1f}ms "
            f"p99.9={self.p999_ms:8.1f}ms errors={self.errors}/{self.requests}"
        )


def figures_of(latencies_s: Sequence[float], statuses: Counter[int], seconds: float, ok: int) -> Figures:
    ms = np.asarray(latencies_s, dtype=float) * 1000 if latencies_s else np.zeros(1)
    p50, p99, p999 = (float(v) for v in np.percentile(ms, [50, 99, 99.9]))
    total = sum(statuses.values())
    return Figures(
        requests=total,
        errors=total - ok,
        seconds=round(seconds, 3),
        rps=round(ok / seconds, 1) if seconds > 0 else 0.0,
        p50_ms=round(p50, 2),
        p99_ms=round(p99, 2),
        p999_ms=round(p999, 2),
        statuses={str(code): count for code, count in sorted(statuses.items())},
    )


class HttpError(Exception):
    """The server closed the connection or answered something that is not HTTP/1.1."""


class Client:
    """Keep-alive HTTP/1.1 connections to one server, at most `limit` at a time."""

    def __init__(self, host: str, port: int, *, limit: int = 2048) -> None:
        self.host, self.port = host, port
        self._idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter, float]] = []
        self._slots = asyncio.Semaphore(limit)
        self.opened = 0

    async def request(self, request: Request) -> tuple[int, bytes]:
        async with self._slots:
            while True:
                reused = bool(self._idle)
                if reused:
                    reader, writer, idle_since = self._idle.pop()
                    if time.monotonic() - idle_since > KEEP_ALIVE_S:
                        writer.close()
                        continue
                else:
                    reader, writer = await asyncio.open_connection(self.host, self.port, limit=1 << 20)
                    self.opened += 1
                try:
                    status, body, keep = await self._round_trip(reader, writer, request)
                except (HttpError, ConnectionError):
                    writer.close()
                    if reused:  # the server closed it while it sat idle: send again on a fresh one
                        continue
                    raise
                except BaseException:
                    writer.close()
                    raise
                if keep:
                    self._idle.append((reader, writer, time.monotonic()))
                else:
                    writer.close()
                return status, body

    async def _round_trip(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: Request
    ) -> tuple[int, bytes, bool]:
        writer.write(request.head(f"{self.host}:{self.port}"))
        if request.body:
            writer.write(request.body)
        await writer.drain()
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError as exc:
            raise HttpError("the server closed the connection") from exc
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ", 2)
        if len(parts) < 2 or not parts[1].isdigit():
            raise HttpError(f"not an HTTP status line: {lines[0]!r}")
        headers = {
            k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)
        }
        keep = headers.get("connection", "").lower() != "close"
        if "content-length" in headers:
            body = await reader.readexactly(int(headers["content-length"]))
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            chunks = []
            while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
                chunks.append(await reader.readexactly(size))
                await reader.readexactly(2)
            await reader.readuntil(b"\r\n")
            body = b"".join(chunks)
        else:
            body, keep = await reader.read(), False
        return int(parts[1]), body, keep

    async def close(self) -> None:
        for _, writer, _ in self._idle:
            writer.close()
        self._idle.clear()


async def fixed_rate(
    client: Client,
    make: Callable[[int], Request],
    *,
    rate: float,
    duration_s: float,
    timeout_s: float = 30.0,
    expect: tuple[int, ...] = (200, 201, 202),
) -> Figures:
    """Send `rate * duration_s` requests on a fixed timetable; latency counts from each one's due time."""

    async def one(index: int) -> int:
        status, _ = await client.request(make(index))
        return status

    return await timetable(one, rate=rate, duration_s=duration_s, timeout_s=timeout_s, expect=expect)


async def timetable(
    call: Callable[[int], Awaitable[int]],
    *,
    rate: float,
    duration_s: float,
    timeout_s: float = 30.0,
    expect: tuple[int, ...] = (200, 201, 202),
) -> Figures:
    """Start `call(i)` (which returns a status) at `t0 + i / rate`, `rate * duration_s` times, each without
    waiting for the others; latency counts from each one's due time (the open loop of `fixed_rate`)."""
    count = max(1, round(rate * duration_s))
    loop = asyncio.get_running_loop()
    latencies: list[float] = []
    statuses: Counter[int] = Counter()
    failures: Counter[str] = Counter()
    lag = 0.0

    async def one(index: int, due: float) -> None:
        try:
            async with asyncio.timeout(timeout_s):
                status = await call(index)
        except (OSError, HttpError, TimeoutError, asyncio.IncompleteReadError) as exc:
            status = 0
            failures[type(exc).__name__] += 1
        statuses[status] += 1
        latencies.append(loop.time() - due)

    start = loop.time() + 0.05
    tasks = []
    # No collection in this process meanwhile: a full pass stopped it for 80-130 ms (gc.callbacks), which
    # counted as the server's latency of every request due then (a POST's p99 at 400/s: 68 ms, 12-14 ms in
    # the runs without one). Cycles made meanwhile wait until the end of the run.
    gc.disable()
    try:
        for index in range(count):
            due = start + index / rate
            if (wait := due - loop.time()) > 0:
                await asyncio.sleep(wait)
            lag = max(lag, loop.time() - due)
            tasks.append(asyncio.create_task(one(index, due)))
        await asyncio.gather(*tasks)
    finally:
        gc.enable()
    ok = sum(n for code, n in statuses.items() if code in expect)
    result = figures_of(latencies, statuses, loop.time() - start, ok)
    result.send_lag_ms = round(lag * 1000, 2)
    result.failures = dict(failures)
    return result


async def all_at_once(
    client: Client, requests: Sequence[Request], *, timeout_s: float = 60.0, rate: float | None = None
) -> tuple[Figures, list[tuple[int, bytes]]]:
    """Send every request at the same moment (the client's `limit` caps the connections), or with `rate`
    one every 1/rate s on a fixed timetable (a slow answer does not hold back the next, up to `limit` in
    flight); the answers."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    latencies: list[float] = []

    async def one(request: Request, index: int) -> tuple[int, bytes]:
        due = start if rate is None else start + index / rate  # latency counts from here
        if (wait := due - loop.time()) > 0:
            await asyncio.sleep(wait)
        try:
            async with asyncio.timeout(timeout_s):
                answer = await client.request(request)
        except (OSError, HttpError, TimeoutError, asyncio.IncompleteReadError) as exc:
            answer = (0, repr(exc).encode())
        latencies.append(loop.time() - due)
        return answer

    answers = await asyncio.gather(*(one(request, index) for index, request in enumerate(requests)))
    statuses = Counter(status for status, _ in answers)
    ok = sum(n for code, n in statuses.items() if 200 <= code < 300)
    return figures_of(latencies, statuses, loop.time() - start, ok), answers


# --- wrk ----------------------------------------------------------------------------------------------


def ensure_wrk() -> str:
    """wrk's path, installing Debian's package when it is missing (needs root)."""
    if path := shutil.which("wrk"):
        return path
    print("wrk is missing: apt-get install -y wrk")
    subprocess.run(["apt-get", "install", "-y", "wrk"], check=False, capture_output=True, timeout=600)
    if not (path := shutil.which("wrk")):
        subprocess.run(["apt-get", "update"], check=False, capture_output=True, timeout=600)
        subprocess.run(["apt-get", "install", "-y", "wrk"], check=True, capture_output=True, timeout=600)
        path = shutil.which("wrk")
    if not path:
        raise RuntimeError("wrk could not be installed; install it with `apt-get install -y wrk`")
    return path


def _lua(request: Request, body_file: Path | None) -> str:
    lines = [f"wrk.method = {json.dumps(request.method)}", f"wrk.path = {json.dumps(request.path)}"]
    lines += [f"wrk.headers[{json.dumps(k)}] = {json.dumps(v)}" for k, v in request.headers.items()]
    if body_file is not None:
        lines.append(
            f'local f = io.open({json.dumps(str(body_file))}, "rb")\nwrk.body = f:read("*a")\nf:close()'
        )
    return "\n".join(lines) + "\n" + _WRK_DONE


def wrk(
    base_url: str,
    request: Request,
    *,
    duration_s: float,
    connections: int,
    threads: int = 2,
    timeout_s: float = 30.0,
) -> Figures:
    """Closed-loop saturation with wrk: as many requests as `connections` keep-alive connections carry."""
    with tempfile.TemporaryDirectory(prefix="bench-wrk-") as tmp:
        body_file = None
        if request.body:
            body_file = Path(tmp) / "body"
            body_file.write_bytes(request.body)
        script = Path(tmp) / "request.lua"
        script.write_text(_lua(request, body_file))
        command = [
            ensure_wrk(),
            f"-t{min(threads, connections)}",
            f"-c{connections}",
            f"-d{max(1, round(duration_s))}s",
            f"--timeout={round(timeout_s)}s",
            "-s",
            str(script),
            base_url,
        ]
        run = subprocess.run(
            command, check=False, capture_output=True, text=True, timeout=duration_s + timeout_s + 60
        )
    marked = [line for line in run.stdout.splitlines() if line.startswith(_WRK_MARK)]
    if run.returncode != 0 or not marked:
        raise RuntimeError(f"wrk failed ({run.returncode}): {run.stdout[-2000:]} {run.stderr[-2000:]}")
    raw: dict[str, Any] = json.loads(marked[-1].removeprefix(_WRK_MARK))
    seconds = raw["duration_us"] / 1e6
    errors = raw["connect"] + raw["read"] + raw["write"] + raw["status"] + raw["timeout"]
    ok = max(raw["requests"] - raw["status"], 0)
    return Figures(
        requests=raw["requests"],
        errors=errors,
        seconds=round(seconds, 3),
        rps=round(ok / seconds, 1) if seconds else 0.0,
        p50_ms=round(raw["p50_us"] / 1000, 2),
        p99_ms=round(raw["p99_us"] / 1000, 2),
        p999_ms=round(raw["p999_us"] / 1000, 2),
        statuses={k: raw[k] for k in ("connect", "read", "write", "status", "timeout") if raw[k]},
    )
