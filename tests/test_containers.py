"""The choice of servers in tests/fixtures/servers.py: local, or testcontainers (no Docker engine here)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

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
