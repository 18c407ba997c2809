"""The choice of servers in tests/fixtures/servers.py: local, testcontainers (no Docker engine here), or the
servers the environment names (docker-compose.test.yml), whose vhosts come from RabbitMQ's management API."""

from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr

from medialens_shared.bus import Topology, declare, make_broker
from medialens_shared.settings import Settings
from tests.fixtures import servers

ROOT = Path(__file__).resolve().parents[1]
NO_ENGINE = {"DOCKER_HOST": "unix:///nonexistent/docker.sock"}


def test_unset_means_the_local_servers() -> None:
    for environ in ({}, {servers.CONTAINERS_VARIABLE: ""}, {servers.CONTAINERS_VARIABLE: "0"}):
        chosen = servers.choose_servers(environ)
        assert chosen == servers.Servers()
        assert chosen.postgres == "postgres@127.0.0.1:5432"
        assert chosen.rabbit == ("127.0.0.1", 5672)
        assert chosen.mongo_url is None
        assert chosen.redis_url is None


def test_missing_engine_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", NO_ENGINE["DOCKER_HOST"])
    with pytest.raises(servers.ContainersUnavailable) as raised:
        servers.choose_servers({servers.CONTAINERS_VARIABLE: "1"})
    message = str(raised.value)
    assert "MEDIALENS_TEST_CONTAINERS=1" in message
    assert "no Docker engine answers" in message
    assert "unset MEDIALENS_TEST_CONTAINERS" in message


def test_missing_engine_fails_fast_at_import() -> None:
    env = os.environ | NO_ENGINE | {servers.CONTAINERS_VARIABLE: "1"}
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", "import tests.fixtures.servers"],
        check=False,
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert "ContainersUnavailable" in done.stderr
    assert "no Docker engine answers" in done.stderr
    assert time.monotonic() - started < 30


COMPOSE_ENV = {
    servers.SERVERS_VARIABLE: "env",
    "MEDIALENS_POSTGRES_URL": "postgresql+asyncpg://postgres@postgres:5432/postgres",
    "MEDIALENS_RABBITMQ_URL": "amqp://guest:guest@rabbitmq:5672/",
    "MEDIALENS_MONGODB_URL": "mongodb://mongo:27017",
    "MEDIALENS_REDIS_URL": "redis://redis:6379/0",
}
LOCAL_API = "http://guest:guest@127.0.0.1:15672"


def test_env_means_the_servers_the_settings_variables_name() -> None:
    """docker-compose.test.yml's variables give its servers, with vhosts through the management API."""
    chosen = servers.choose_servers(COMPOSE_ENV)
    assert chosen.postgres == "postgres@postgres:5432"
    assert chosen.rabbit == ("rabbitmq", 5672)
    assert chosen.mongo_url == "mongodb://mongo:27017"
    assert chosen.redis_url == "redis://redis:6379/0"
    assert isinstance(chosen.admin, servers.ApiAdmin)
    assert chosen.admin.base == "http://rabbitmq:15672/api"
    assert chosen.admin.auth == ("guest", "guest")
    assert chosen.admin.local is False
    other = servers.choose_servers(COMPOSE_ENV | {servers.API_VARIABLE: "http://ops:s%40cret@mq:15999"})
    assert isinstance(other.admin, servers.ApiAdmin)
    assert (other.admin.base, other.admin.auth) == ("http://mq:15999/api", ("ops", "s@cret"))


def test_env_keeps_a_postgres_password_and_an_ipv6_host() -> None:
    """The PostgreSQL login is kept as written, password and percent-encoding included (it was reduced to
    its user name, so a server that asks for a password refused every test), and an IPv6 host stays
    bracketed."""
    url = "postgresql+asyncpg://app:p%40ss@[::1]:5433/postgres"
    chosen = servers.choose_servers(COMPOSE_ENV | {"MEDIALENS_POSTGRES_URL": url})
    assert chosen.postgres == "app:p%40ss@[::1]:5433"


def test_env_without_the_urls_is_a_clear_error() -> None:
    with pytest.raises(servers.ServersUnavailable, match="needs MEDIALENS_MONGODB_URL, MEDIALENS_REDIS_URL"):
        servers.choose_servers(
            {key: value for key, value in COMPOSE_ENV.items() if "MONGO" not in key and "REDIS" not in key}
        )


def test_the_compose_test_service_asks_for_env_servers() -> None:
    """The compose file's tests service sets what `choose_servers` needs to find its servers."""
    text = (ROOT / "docker-compose.test.yml").read_text()
    for key, value in COMPOSE_ENV.items():
        assert f"{key}: {value}" in text, key
    assert "rabbitmq:3.13-management" in text


@pytest.mark.skipif(not servers.SERVERS.admin.local, reason="compares with the local broker's rabbitmqctl")
async def test_the_management_api_admin_does_what_rabbitmqctl_does(settings: Settings) -> None:
    """On the real broker: a vhost made through the API takes the topology, both admins list the same
    queues with the same types and arguments, and the API removes the vhost again."""
    async with httpx.AsyncClient(timeout=5) as client:
        try:
            await client.get("http://127.0.0.1:15672/api/overview")
        except httpx.TransportError:
            pytest.fail(
                "RabbitMQ's management API does not answer: rabbitmq-plugins enable rabbitmq_management"
            )
    api = servers.ApiAdmin(LOCAL_API)
    vhost = f"medialens-admin-{secrets.token_hex(3)}"
    await asyncio.to_thread(api.add_vhost, vhost)
    try:
        url = SecretStr(f"amqp://guest:guest@{servers.RABBIT_HOST[0]}:{servers.RABBIT_HOST[1]}/{vhost}")
        own = settings.model_copy(update={"rabbitmq": settings.rabbitmq.model_copy(update={"url": url})})
        broker = make_broker(own, name="admin-tests")
        await broker.connect()
        try:
            await declare(broker, Topology(own), services=("video",))
        finally:
            await broker.stop()
        by_api = await asyncio.to_thread(api.queues, vhost)
        assert by_api == await asyncio.to_thread(servers.LOCAL_ADMIN.queues, vhost)
        kind, arguments = by_api[f"{own.rabbitmq.exchange}.video"]
        assert (kind, arguments["x-delivery-limit"]) == ("quorum", own.rabbitmq.delivery_limit)
    finally:
        await asyncio.to_thread(api.delete_vhost, vhost)
    async with httpx.AsyncClient(auth=api.auth, timeout=10) as client:
        names = [row["name"] for row in (await client.get(api.base + "/vhosts")).json()]
    assert vhost not in names
