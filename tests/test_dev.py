"""`make dev`'s check of the servers it needs, against real listening sockets (TCP and Unix)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from medialens_shared.settings import Settings
from scripts import dev


def _settings(monkeypatch: pytest.MonkeyPatch, **urls: str) -> Settings:
    for name, url in urls.items():
        monkeypatch.setenv(f"MEDIALENS_{name.upper()}_URL", url)
    return Settings()


def _listening_unix(path: Path) -> socket.socket:
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))
    server.listen()
    return server


def test_a_postgresql_unix_socket_is_checked_where_it_is(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A PostgreSQL URL naming a socket directory (`?host=/dir`, libpq's form) is checked at that directory's
    `.s.PGSQL.<port>`, and a Redis `unix://` URL at its path; both were checked as TCP on 127.0.0.1 (a stack
    on sockets alone was refused, or one with nothing there passed)."""
    with _listening_unix(tmp_path / ".s.PGSQL.6543"), _listening_unix(tmp_path / "redis.sock"):
        settings = _settings(
            monkeypatch,
            postgres=f"postgresql://postgres@/medialens?host={tmp_path}&port=6543",
            redis=f"unix://{tmp_path}/redis.sock",
        )
        postgres, redis, _ = dev.required_servers(settings)
        assert (postgres.host, postgres.port) == (f"{tmp_path}/.s.PGSQL.6543", None)
        assert (redis.host, redis.port) == (f"{tmp_path}/redis.sock", None)
        assert dev.answers(postgres.host, postgres.port)
        assert dev.answers(redis.host, redis.port)
    assert not dev.answers(postgres.host, postgres.port)
    message = dev.missing_servers_message([postgres])
    assert message.startswith(f"PostgreSQL does not answer on {tmp_path}/.s.PGSQL.6543. Start it with:")


def test_tcp_servers_are_checked_at_their_host_and_port(monkeypatch: pytest.MonkeyPatch) -> None:
    """Host and port come from each URL, the protocol's default port when it names none."""
    with socket.create_server(("127.0.0.1", 0)) as listening:
        port = listening.getsockname()[1]
        settings = _settings(
            monkeypatch,
            postgres=f"postgresql+asyncpg://postgres@127.0.0.1:{port}/medialens",
            redis="redis://localhost/0",
            rabbitmq="amqp://guest:guest@127.0.0.1/",
        )
        postgres, redis, rabbitmq = dev.required_servers(settings)
        assert (postgres.host, postgres.port) == ("127.0.0.1", port)
        assert (redis.host, redis.port) == ("localhost", 6379)
        assert (rabbitmq.host, rabbitmq.port) == ("127.0.0.1", 5672)
        assert dev.answers(postgres.host, postgres.port)
    assert not dev.answers(postgres.host, postgres.port)
