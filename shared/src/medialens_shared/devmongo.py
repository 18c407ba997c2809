"""A throwaway MongoDB-wire server (nx-27017, SQLite-backed) for development and tests.

    with devmongo.start() as mongo:          # free port, temporary data directory
        client = AsyncMongoClient(mongo.url)

`python -m medialens_shared.devmongo [--port 27017] [--data-dir DIR]` runs one in the foreground until
SIGINT/SIGTERM, to run one by hand (`make dev` starts its own with `start`). The server logs every command
at INFO level, so its stdout/stderr go to `<data_dir>/nx-27017.log`, never to a pipe that could fill up
and block it.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from pymongo import MongoClient
from pymongo.errors import PyMongoError

STARTUP_TIMEOUT_S = 15.0
LOG_NAME = "nx-27017.log"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class DevMongo:
    """A running nx-27017 child process; `stop()` it, or use it as a context manager."""

    process: subprocess.Popen[bytes]
    port: int
    data_dir: Path
    owns_dir: bool  # a temporary directory that stop() removes

    @property
    def url(self) -> str:
        return f"mongodb://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.data_dir / LOG_NAME

    def log_tail(self, lines: int = 30) -> str:
        """The last lines of the server's output, for error messages."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM (the server checkpoints SQLite and exits), wait, SIGKILL if needed; idempotent."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.owns_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> DevMongo:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        self.stop()


def _answers_ping(url: str) -> bool:
    client: MongoClient[dict[str, Any]] = MongoClient(url, serverSelectionTimeoutMS=300, connectTimeoutMS=300)
    try:
        client.admin.command("ping")
    except PyMongoError:
        return False
    else:
        return True
    finally:
        client.close()


def start(port: int | None = None, data_dir: Path | None = None) -> DevMongo:
    """Start nx-27017 on 127.0.0.1, wait until it answers `ping`; RuntimeError if it does not within 15 s.

    `data_dir` (one SQLite file per database) is kept; None: a temporary one that `stop()` removes.
    """
    owns_dir = data_dir is None
    directory = Path(tempfile.mkdtemp(prefix="medialens-mongo-")) if data_dir is None else data_dir
    directory.mkdir(parents=True, exist_ok=True)
    port = free_port() if port is None else port
    # Own pid file: with the shared default (/tmp/nx_27017.pid) a second server refuses to start;
    # a stale one (left by a SIGKILL) whose pid got reused would do the same.
    pid_file = directory / "nx-27017.pid"
    pid_file.unlink(missing_ok=True)
    command = [sys.executable, "-m", "nx_27017.nx_27017", "--host", "127.0.0.1", "--port", str(port)]
    command += ["--data-dir", str(directory), "--pid-file", str(pid_file)]
    command += ["--log-file", os.devnull]  # its output goes to LOG_NAME via stdout/stderr instead
    with (directory / LOG_NAME).open("ab") as log:
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)  # noqa: S603
    mongo = DevMongo(process, port, directory, owns_dir)
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    try:
        while time.monotonic() < deadline and process.poll() is None:
            if _answers_ping(mongo.url):
                return mongo
            time.sleep(0.1)
    except BaseException:  # Ctrl-C/SIGTERM while waiting: do not orphan the child
        mongo.stop()
        raise
    tail, status = mongo.log_tail(), process.poll()
    mongo.stop()
    reason = f"exited with code {status}" if status is not None else "did not answer ping in 15 s"
    raise RuntimeError(f"nx-27017 on port {port} {reason}; output tail:\n{tail}")


def main(argv: list[str] | None = None) -> None:
    """Run a dev server in the foreground until SIGINT/SIGTERM."""
    parser = argparse.ArgumentParser(prog="python -m medialens_shared.devmongo", description="Dev nx-27017.")
    parser.add_argument("--port", type=int, default=27017)
    parser.add_argument("--data-dir", type=Path, default=None, help="kept between runs (default: temporary)")
    args = parser.parse_args(argv)

    def _exit(_signum: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _exit)
    with start(args.port, args.data_dir) as mongo:
        sys.stdout.write(f"MEDIALENS_MONGODB_URL={mongo.url}  (log: {mongo.log_path})\n")
        sys.stdout.flush()
        try:
            while mongo.process.poll() is None:
                time.sleep(0.5)
            sys.stderr.write(f"nx-27017 exited with code {mongo.process.returncode}:\n{mongo.log_tail()}\n")
            raise SystemExit(1)
        except KeyboardInterrupt:
            sys.stdout.write("stopping nx-27017\n")


if __name__ == "__main__":
    main()
