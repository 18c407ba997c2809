"""`make dev`: run the whole stack as local processes, in the foreground, until Ctrl-C.

Checks that PostgreSQL, Redis and RabbitMQ answer (naming the missing one and how to start it), finds or
starts a MongoDB-wire server, applies the migrations, then runs the gateway, the relay and the three
services under honcho with `name | line` prefixed logs. Ctrl-C or SIGTERM sends SIGTERM to each of them,
waits up to 30 s for them to finish their running job, then kills what is left.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shlex
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any, NamedTuple, TextIO
from unittest import mock
from urllib.parse import urlsplit

import honcho.manager
from honcho.manager import Manager
from sqlalchemy.engine import make_url

from medialens_shared import devmongo
from medialens_shared.migrate import upgrade
from medialens_shared.settings import Settings

PROCESSES = ("gateway", "relay", "video", "audio", "data")
DEV_MONGO_PORT = 27017
DEV_MONGO_DIR = Path(".dev/mongo")
#: Seconds the processes get to finish their running job after SIGTERM before they are killed.
STOP_GRACE_S = 30
#: How to start each server on Debian (the packages' own scripts; no systemd in containers).
START_COMMANDS = {
    "PostgreSQL": "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start",
    "Redis": 'redis-server --daemonize yes --port 6379 --save "" --appendonly no',
    "RabbitMQ": "rabbitmq-server -detached",
}


class Server(NamedTuple):
    name: str
    host: str  # a Unix socket's path when `port` is None
    port: int | None
    how_to_start: str

    @property
    def where(self) -> str:
        return self.host if self.port is None else f"{self.host}:{self.port}"


def required_servers(settings: Settings) -> list[Server]:
    """PostgreSQL, Redis and RabbitMQ where the settings point, with the command that starts each: a host
    and port, or a Unix socket's path (PostgreSQL's `?host=/dir` or a socket directory as its host, libpq's
    `.s.PGSQL.<port>` in it; Redis's `unix://` URL), which was checked as 127.0.0.1's default port."""
    postgres = make_url(settings.postgres.url.get_secret_value())
    query_host = postgres.query.get("host")
    pg_host = postgres.host or (query_host if isinstance(query_host, str) else None) or "127.0.0.1"
    query_port = postgres.query.get("port")
    pg_port = postgres.port or (int(query_port) if isinstance(query_port, str) else 5432)
    servers = [
        Server("PostgreSQL", f"{pg_host}/.s.PGSQL.{pg_port}", None, START_COMMANDS["PostgreSQL"])
        if pg_host.startswith("/")
        else Server("PostgreSQL", pg_host, pg_port, START_COMMANDS["PostgreSQL"])
    ]
    redis = urlsplit(settings.redis.url.get_secret_value())
    if redis.scheme == "unix":
        servers.append(Server("Redis", redis.path, None, START_COMMANDS["Redis"]))
    else:
        servers.append(
            Server("Redis", redis.hostname or "127.0.0.1", redis.port or 6379, START_COMMANDS["Redis"])
        )
    rabbitmq = urlsplit(settings.rabbitmq.url.get_secret_value())
    servers.append(
        Server(
            "RabbitMQ", rabbitmq.hostname or "127.0.0.1", rabbitmq.port or 5672, START_COMMANDS["RabbitMQ"]
        )
    )
    return servers


def answers(host: str, port: int | None, timeout: float = 1.0) -> bool:
    """True when something accepts a connection on host:port (a Unix socket at the path `host` when `port`
    is None) within `timeout` seconds."""
    try:
        if port is None:
            with socket.socket(socket.AF_UNIX) as unix:
                unix.settimeout(timeout)
                unix.connect(host)
                return True
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


#: The local servers `make dev` expects, as Docker containers (the compose file's servers publish no port
#: and have passwords: they are for the compose stack, not for a stack on this machine).
DOCKER_SERVERS = (
    "docker run -d --name medialens-postgres -p 5432:5432 -e POSTGRES_HOST_AUTH_METHOD=trust postgres:16",
    "docker run -d --name medialens-redis -p 6379:6379 redis:7",
    "docker run -d --name medialens-rabbitmq -p 5672:5672 -p 15672:15672 rabbitmq:3.13-management",
)


def missing_servers_message(missing: list[Server]) -> str:
    lines = [f"{s.name} does not answer on {s.where}. Start it with:  {s.how_to_start}" for s in missing]
    lines.append("or, with Docker (each on its default port, with the development defaults' accounts):")
    lines.extend(f"  {command}" for command in DOCKER_SERVERS)
    return "\n".join(lines)


@contextlib.contextmanager
def mongodb(settings: Settings) -> Iterator[str]:
    """The MongoDB URL to use: MEDIALENS_MONGODB_URL, else a server on 127.0.0.1:27017, else a dev one."""
    if "mongodb" in settings.model_fields_set and "url" in settings.mongodb.model_fields_set:
        yield settings.mongodb.url.get_secret_value()
        return
    if answers("127.0.0.1", DEV_MONGO_PORT):
        yield f"mongodb://127.0.0.1:{DEV_MONGO_PORT}"
        return
    # In its own session, so a Ctrl-C in the terminal does not stop it while the services still use it:
    # it is stopped last, once they are down.
    in_own_session = functools.partial(subprocess.Popen, start_new_session=True)
    with mock.patch.object(subprocess, "Popen", in_own_session):
        server = devmongo.start(port=DEV_MONGO_PORT, data_dir=DEV_MONGO_DIR)
    print(f"started nx-27017 (MongoDB-wire, for development) on {server.url}, log: {server.log_path}")
    try:
        yield server.url
    finally:
        server.stop()
        print("stopped nx-27017")


class PrefixPrinter:
    """honcho's printer, as `name | line` with the name coloured when the output is a terminal."""

    def __init__(self, output: TextIO) -> None:
        self.output = output
        self.width = 0
        self.colour = output.isatty() and "NO_COLOR" not in os.environ

    def write(self, message: Any) -> None:
        data = message.data.decode("utf-8", "replace") if isinstance(message.data, bytes) else message.data
        prefix = f"{(message.name or '').ljust(self.width)} | "
        if self.colour and message.colour:
            prefix = f"\033[{message.colour}m{prefix}\033[0m"
        for line in data.splitlines():
            print(prefix + line, file=self.output, flush=True)


def _interrupt(_signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def run(settings: Settings) -> int:
    missing = [s for s in required_servers(settings) if not answers(s.host, s.port)]
    if missing:
        print(missing_servers_message(missing), file=sys.stderr)
        return 1
    with mongodb(settings) as mongo_url:
        print("applying migrations")
        upgrade(settings.postgres.url.get_secret_value())
        env = os.environ | {"MEDIALENS_MONGODB_URL": mongo_url, "PYTHONUNBUFFERED": "1"}
        bin_dir = Path(sys.executable).parent
        manager = Manager(printer=PrefixPrinter(sys.stdout))
        for name in PROCESSES:
            manager.add_process(name, "exec " + shlex.quote(str(bin_dir / f"medialens-{name}")), env=env)
        keys = ", ".join(key for _, key in settings.dev.pairs()) or "(none: MEDIALENS_DEV_API_KEYS is empty)"
        print(f"API: http://{settings.gateway.host}:{settings.gateway.port}/docs   dev API key: {keys}")
        print(f"MongoDB: {mongo_url}   Ctrl-C stops everything")
        manager.loop()
        if manager.returncode in (130, 143):  # honcho's codes for "stopped by SIGINT / SIGTERM"
            print("all processes stopped")
            return 0
        print(
            "a process exited by itself, so the stack was stopped (see its last lines above)", file=sys.stderr
        )
        return 1


def main() -> None:
    # Until honcho takes the signals over, SIGTERM unwinds like Ctrl-C so the dev MongoDB is stopped.
    signal.signal(signal.SIGTERM, _interrupt)
    honcho.manager.KILL_WAIT = STOP_GRACE_S
    try:
        code = run(Settings())
    except KeyboardInterrupt:
        code = 0
    raise SystemExit(code)


if __name__ == "__main__":
    main()
