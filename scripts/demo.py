"""`make demo`: one job of each service through the public API, with a live progress bar per job.

Talks to the gateway at `MEDIALENS_DEMO_URL` (default http://127.0.0.1:8000) with the API key
`MEDIALENS_DEMO_KEY` (default dev-key). When no gateway answers there it starts the stack itself
(`python -m scripts.dev`, its output in `.dev/demo-stack.log`) and stops it at the end; one that answers
but is not ready yet is waited for.
Exits 1 when a job does not succeed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from scripts import samples

ROOT = Path(__file__).resolve().parents[1]
STACK_LOG = ROOT / ".dev" / "demo-stack.log"
READY_TIMEOUT_S = 90.0
JOB_TIMEOUT_S = 120.0
BAR_WIDTH = 30

Json = dict[str, Any]


class DemoFailed(Exception):
    """The demo cannot go on; the message says why."""


def readiness(client: httpx.Client) -> httpx.Response | None:
    """The gateway's answer to `/health/ready`, or None when nothing answers."""
    try:
        return client.get("/health/ready", timeout=2.0)
    except httpx.TransportError:
        return None


def is_ready(client: httpx.Client) -> bool:
    return _ready(readiness(client))


def _ready(answer: httpx.Response | None) -> bool:
    return answer is not None and answer.status_code == 200


def wait_ready(client: httpx.Client, *, gone: Callable[[], bool] = lambda: False) -> httpx.Response | None:
    """Look at `/health/ready` every half second until it answers 200, `READY_TIMEOUT_S` pass or `gone()`
    (the stack's process ended); the last answer (None: nothing answered)."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while not _ready(answer := readiness(client)) and not gone() and time.monotonic() < deadline:
        time.sleep(0.5)
    return answer


def start_stack() -> subprocess.Popen[bytes]:
    """`scripts.dev` in the background, its output in `STACK_LOG`."""
    STACK_LOG.parent.mkdir(parents=True, exist_ok=True)
    with STACK_LOG.open("wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "scripts.dev"],
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # the demo's own Ctrl-C must not reach it: `stack` stops it
        )


@contextmanager
def stack(client: httpx.Client) -> Iterator[None]:
    """Use the running stack, or start `scripts.dev` for the demo's duration.

    A gateway that answers but is not ready (still starting, or a server it needs is down) is waited for,
    never joined by a second stack, whose processes could not take its ports anyway."""
    answer = readiness(client)
    if answer is not None:
        if not _ready(answer):
            print(f"the gateway at {client.base_url} is not ready ({answer.status_code}); waiting for it")
            answer = wait_ready(client)
        if not _ready(answer):
            said = "no answer" if answer is None else f"{answer.status_code}: {answer.text[:300]}"
            raise DemoFailed(
                f"the gateway at {client.base_url} is not ready after {READY_TIMEOUT_S:g} s ({said})"
            )
        yield
        return
    print(f"no gateway at {client.base_url}: starting the stack (log: {STACK_LOG})")
    process = start_stack()
    try:
        if not _ready(wait_ready(client, gone=lambda: process.poll() is not None)):
            tail = "\n".join(STACK_LOG.read_text(errors="replace").splitlines()[-20:])
            raise DemoFailed(f"the stack did not become ready; last lines of {STACK_LOG}:\n{tail}")
        print("stack ready")
        yield
    finally:
        print("stopping the stack")
        process.send_signal(signal.SIGINT)
        try:
            process.wait(45)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def data_of(response: httpx.Response) -> Json:
    """The envelope's `data`, or DemoFailed with the envelope's error."""
    try:
        body = response.json()
    except ValueError:
        body = {"message": response.text[:200]}
    if response.is_error or not body.get("success"):
        code = body.get("error_code") or response.status_code
        raise DemoFailed(
            f"{response.request.method} {response.request.url.path}: {code}: {body.get('message')}"
        )
    data: Json = body["data"]
    return data


def upload(client: httpx.Client, path: Path, content_type: str) -> Json:
    with path.open("rb") as handle:
        return data_of(client.post("/v1/files", files={"file": (path.name, handle, content_type)}))


def submit(client: httpx.Client, job_type: str, file_id: str) -> Json:
    return data_of(client.post("/v1/jobs", json={"type": job_type, "file_id": file_id}))


def draw(job: Json, *, final: bool) -> None:
    """One line per job: its type, a bar, the percentage and its current message."""
    progress = float(job.get("progress") or 0.0)
    done = round(progress * BAR_WIDTH)
    bar = "#" * done + "-" * (BAR_WIDTH - done)
    line = f"{job['type']:<13} [{bar}] {progress:4.0%} {job['status']:<9} {job.get('message') or ''}"
    if sys.stdout.isatty():
        print(f"\r\033[K{line[:120]}", end="\n" if final else "", flush=True)
    elif final:
        print(line)


def follow(client: httpx.Client, job: Json) -> Json:
    """Follow the job's SSE stream until its `done` event; the terminal job object."""
    draw(job, final=False)
    deadline = time.monotonic() + JOB_TIMEOUT_S
    event, data = "", ""
    timeout = httpx.Timeout(10.0, read=30.0)  # the gateway sends a keep-alive every 10 s
    with client.stream("GET", f"/v1/jobs/{job['id']}/events", timeout=timeout) as response:
        if response.is_error:
            response.read()
            data_of(response)
        for line in response.iter_lines():
            if time.monotonic() > deadline:
                raise DemoFailed(f"{job['type']} ({job['id']}) did not finish in {JOB_TIMEOUT_S:.0f} s")
            if line.startswith("event:"):
                event = line.removeprefix("event:").strip()
            elif line.startswith("data:"):
                data += line.removeprefix("data:").strip()
            elif not line and data:
                job = json.loads(data)
                draw(job, final=event == "done")
                if event == "done":
                    return job
                event, data = "", ""
    raise DemoFailed(f"the event stream of {job['id']} closed before its `done` event")


def describe(job_type: str, result: Json) -> str:
    """A short, readable account of a result."""
    if job_type == "video.probe":
        video, fmt = result.get("video") or {}, result.get("format") or {}
        line = (
            f"video {video.get('codec')} {video.get('width')}x{video.get('height')} "
            f"{video.get('fps'):.2f} fps, {video.get('frame_count')} frames, {fmt.get('duration_s'):.2f} s"
        )
        tracks = [f"{a['codec']} {a['sample_rate']} Hz {a['channels']} ch" for a in result.get("audio") or []]
        return line + (f"; audio {', '.join(tracks)}" if tracks else "; no audio")
    if job_type == "audio.probe":
        return (
            f"audio {result['codec']} {result['sample_rate']} Hz, {result['channels']} ch, "
            f"{result['duration_s']:.2f} s"
        )
    lines = [f"table {result['row_count']} rows x {result['column_count']} columns"]
    lines.append(f"  {'column':<10} {'dtype':<8} {'nulls':>5}  {'min':>12} {'max':>12} {'mean':>10}")
    for column in result["columns"]:
        mean = column.get("mean")
        lines.append(
            f"  {column['name']:<10} {column['dtype']:<8} {column['null_count']:>5}  "
            f"{_short(column.get('min')):>12} {_short(column.get('max')):>12} "
            f"{'' if mean is None else f'{mean:.3f}':>10}"
        )
    return "\n".join(lines)


def _short(value: object) -> str:
    return "" if value is None else str(value)[:12]


def run(client: httpx.Client) -> int:
    with tempfile.TemporaryDirectory(prefix="medialens-demo-") as tmp:
        folder = Path(tmp)
        video, audio, table = folder / "demo.mp4", folder / "demo.wav", folder / "demo.csv"
        samples.make_video(video, duration_s=2.0, with_audio=True)
        samples.make_audio(audio, duration_s=3.0)
        samples.make_csv(table, rows=500)
        inputs = [
            ("video.probe", video, "video/mp4"),
            ("audio.probe", audio, "audio/wav"),
            ("data.profile", table, "text/csv"),
        ]
        jobs = []
        for job_type, path, content_type in inputs:
            file = upload(client, path, content_type)
            print(f"uploaded {path.name} ({file['size_bytes']} bytes) as {file['id']}")
            jobs.append(submit(client, job_type, file["id"]))
    print()
    finished = [follow(client, job) for job in jobs]
    print()
    failures = 0
    for job in finished:
        if job["status"] != "succeeded":
            failures += 1
            print(f"{job['type']} FAILED ({job['id']}): {job.get('error_code')}: {job.get('error_message')}")
            continue
        result = data_of(client.get(f"/v1/jobs/{job['id']}/result"))
        print(f"{job['type']}: {describe(job['type'], result)}")
    return 1 if failures else 0


def main() -> None:
    base_url = os.environ.get("MEDIALENS_DEMO_URL", "http://127.0.0.1:8000")
    key = os.environ.get("MEDIALENS_DEMO_KEY", "dev-key")
    headers = {"Authorization": f"Bearer {key}"}
    with httpx.Client(base_url=base_url, headers=headers, timeout=30.0) as client:
        try:
            with stack(client):
                code = run(client)
        except DemoFailed as exc:
            print(f"demo failed: {exc}", file=sys.stderr)
            code = 1
        except KeyboardInterrupt:
            code = 130
    raise SystemExit(code)


if __name__ == "__main__":
    main()
