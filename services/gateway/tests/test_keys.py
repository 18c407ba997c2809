"""The operator's key command against the real database and gateway: a key it creates opens the API for
its tenant alone, a revoked one does not, and the keys themselves are never stored or listed; a database
it cannot use is one line and exit 3, not a traceback."""

from __future__ import annotations

import asyncio
import re
import secrets
import socket
import time
from collections.abc import AsyncIterator

import asyncpg
import pytest
from asgi_lifespan import LifespanManager
from sqlalchemy import select

from medialens_gateway.keys import main_async
from medialens_gateway.main import create_app
from medialens_shared.db import DatabaseManager
from medialens_shared.tables import api_keys, tenants
from tests.fixtures.servers import POSTGRES_ADMIN, SERVERS, drop_database, settings_env
from tests.fixtures.stack import Stack, api_client


@pytest.fixture(autouse=True)
def command_env(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    """The command's environment pointing at this run's servers, as an operator's would."""
    for key, value in settings_env(stack.settings).items():
        monkeypatch.setenv(key, value)


@pytest.fixture(autouse=True)
def _logging_put_back(restore_root_logging: None) -> None:
    """The command sets up the process's logging (to the test's captured stderr): the root's put back."""


@pytest.fixture
async def unmigrated_database() -> AsyncIterator[str]:
    """The URL of a database that exists but was never migrated; dropped afterwards."""
    name = f"medialens_test_unmigrated_{secrets.token_hex(4)}"
    conn = await asyncpg.connect(POSTGRES_ADMIN)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    try:
        yield f"postgresql+asyncpg://{SERVERS.postgres}/{name}"
    finally:
        await drop_database(name)


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def _create(tenant: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    assert await main_async(["create", tenant]) == 0
    header, key = capsys.readouterr().out.strip().splitlines()
    return int(header.split()[1]), key


async def test_a_created_key_opens_the_api_for_its_tenant_alone(
    stack: Stack, db: DatabaseManager, capsys: pytest.CaptureFixture[str]
) -> None:
    """`create` makes the tenant and a key, printed once; the key is accepted (and sees none of another
    tenant's jobs), the database holds only its hash, and `list` shows its id, not the key."""
    tenant = f"ops-{secrets.token_hex(4)}"
    key_id, key = await _create(tenant, capsys)
    async with api_client(stack.asgi, key=key) as client:
        response = await client.get("/v1/jobs")
    assert response.status_code == 200, response.text
    assert response.json()["data"]["items"] == []
    async with db.session() as session:
        stored = (await session.execute(select(api_keys).where(api_keys.c.id == key_id))).one()
    assert stored.tenant_id == tenant
    assert key not in stored.key_hash
    assert len(stored.key_hash) == 64
    assert await main_async(["list", tenant]) == 0
    listing = capsys.readouterr().out
    assert str(key_id) in listing
    assert tenant in listing
    assert key not in listing


async def test_a_revoked_key_is_refused(stack: Stack, capsys: pytest.CaptureFixture[str]) -> None:
    """`revoke` makes the key refused (401 in the envelope) and listed as revoked; an id that does not
    exist is an error (exit 1), the known ones beside it revoked all the same."""
    tenant = f"ops-{secrets.token_hex(4)}"
    key_id, key = await _create(tenant, capsys)
    assert await main_async(["revoke", str(key_id)]) == 0
    assert f"revoked key {key_id}" in capsys.readouterr().out
    async with api_client(stack.asgi, key=key) as client:
        response = await client.get("/v1/jobs")
    assert response.status_code == 401
    assert response.json()["error_code"] == "UNAUTHORIZED"
    assert await main_async(["list", tenant]) == 0
    assert "revoked" in capsys.readouterr().out
    assert await main_async(["revoke", str(key_id), "999999999"]) == 1
    assert "999999999" in capsys.readouterr().err


async def test_revoking_a_key_again_says_when_it_was_revoked_and_succeeds(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A revocation run again (a retried script, a second operator) is not an error: the key is said to be
    revoked already, with when, and the exit is 0; only an unknown id stays an error."""
    key_id, _ = await _create(f"ops-{secrets.token_hex(4)}", capsys)
    assert await main_async(["revoke", str(key_id)]) == 0
    capsys.readouterr()
    assert await main_async(["revoke", str(key_id)]) == 0
    again = capsys.readouterr()
    assert f"key {key_id} already revoked (at 20" in again.out
    assert command_lines(again.err) == []
    assert await main_async(["revoke", str(key_id), "999999999"]) == 1
    mixed = capsys.readouterr()
    assert f"key {key_id} already revoked" in mixed.out
    assert command_lines(mixed.err) == ["no such key: 999999999"]


#: A log record's line as the test processes print it (`HH:MM:SS LEVEL logger: message`).
_LOG_LINE = re.compile(r"\d\d:\d\d:\d\d (DEBUG|INFO|WARNING|ERROR|CRITICAL) +\S+: ")


def command_lines(err: str) -> list[str]:
    """What the command itself wrote to stderr: every line but other tests' log records (a stack's broker
    reconnecting in this process logs there too, and failed a check that stderr was exactly the command's
    line), after checking it printed no traceback."""
    assert "Traceback" not in err, err
    return [line for line in err.splitlines() if not _LOG_LINE.match(line)]


def own_lines(err: str) -> list[str]:
    """The command's own lines of what went to stderr, after checking it printed no traceback: other tests'
    clients still running in this process (a stack's broker reconnecting) log there too."""
    assert "Traceback" not in err, err
    return [line for line in err.splitlines() if line.startswith("medialens-keys: ")]


async def test_an_unreachable_database_is_one_line_and_exit_3(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """With nothing listening at MEDIALENS_POSTGRES_URL the command says where it could not reach and what
    to check, in one line (it ended in a traceback), and exits 3."""
    port = _closed_port()
    monkeypatch.setenv("MEDIALENS_POSTGRES_URL", f"postgresql+asyncpg://postgres@127.0.0.1:{port}/medialens")
    assert await main_async(["list"]) == 3
    (line,) = own_lines(capsys.readouterr().err)
    assert line.startswith(f"medialens-keys: PostgreSQL at 127.0.0.1:{port}/medialens cannot be reached (")
    assert "MEDIALENS_POSTGRES_URL" in line


async def test_a_database_never_migrated_is_one_line_naming_medialens_migrate(
    unmigrated_database: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A database that exists without the schema stops every command before it writes, in one line saying
    to run medialens-migrate (a traceback of an undefined table), with exit 3."""
    monkeypatch.setenv("MEDIALENS_POSTGRES_URL", unmigrated_database)
    for command in (["list"], ["create", "acme"], ["revoke", "1"]):
        assert await main_async(command) == 3
        (line,) = own_lines(capsys.readouterr().err)
        assert "never migrated" in line
        assert "run medialens-migrate" in line


async def test_a_variable_that_names_no_setting_is_warned_of(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A misspelt MEDIALENS_* variable is named in a warning, as at every service's start: the command
    otherwise ran with that setting's default without a word."""
    monkeypatch.setenv("MEDIALENS_POSTGRES_CONECT_TIMEOUT", "30")
    assert await main_async(["list", "no-such-tenant"]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip() == "no keys"
    assert "MEDIALENS_POSTGRES_CONECT_TIMEOUT names no setting" in captured.err


async def test_a_key_revoked_after_its_use_is_refused_once_the_key_cache_forgets_it(
    stack: Stack, capsys: pytest.CaptureFixture[str]
) -> None:
    """A gateway that verified a key keeps it for `key_cache_ttl_s` (no database look per request): revoked
    meanwhile, the key is still served in that window, as documented, and refused after it."""
    ttl_s = 3.0
    gateway = stack.settings.gateway.model_copy(update={"key_cache_ttl_s": ttl_s})
    app = create_app(stack.settings.model_copy(update={"gateway": gateway}))
    tenant = f"ops-{secrets.token_hex(4)}"
    key_id, key = await _create(tenant, capsys)
    async with (
        LifespanManager(app, startup_timeout=30) as manager,
        api_client(manager.app, key=key) as client,
    ):
        asked = time.monotonic()
        assert (await client.get("/v1/jobs")).status_code == 200  # verified, and cached meanwhile
        cached = time.monotonic()
        assert await main_async(["revoke", str(key_id)]) == 0
        within = await client.get("/v1/jobs")
        assert time.monotonic() - asked < ttl_s, "too slow to see the cached window"
        assert within.status_code == 200
        await asyncio.sleep(cached + ttl_s - time.monotonic())
        after = await client.get("/v1/jobs")
    assert after.status_code == 401
    assert after.json()["error_code"] == "UNAUTHORIZED"


async def test_a_tenant_id_that_could_not_name_its_data_is_refused(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Tenant ids are checked before anything is written: spaces, slashes or an empty id stop the command."""
    for bad in ("", "has space", "a/b", ".hidden", "x" * 65):
        with pytest.raises(SystemExit) as stopped:
            await main_async(["create", bad])
        assert stopped.value.code == 2
        assert "tenant id" in capsys.readouterr().err


async def test_a_tenants_webhook_secret_is_shown_and_rotated(
    stack: Stack, capsys: pytest.CaptureFixture[str]
) -> None:
    """`secret` prints the secret the tenant's webhooks are signed with (no command showed it: only psql
    could), `--rotate` replaces it, and an unknown tenant is an error."""
    tenant = f"ops-{secrets.token_hex(4)}"
    await _create(tenant, capsys)
    assert await main_async(["secret", tenant]) == 0
    shown = capsys.readouterr().out.strip()
    async with stack.db.session() as session:
        stored = await session.scalar(select(tenants.c.webhook_secret).where(tenants.c.id == tenant))
    assert shown == stored
    assert await main_async(["secret", tenant, "--rotate"]) == 0
    rotated = capsys.readouterr().out.strip()
    assert len(rotated) == 64
    assert rotated != shown
    assert await main_async(["secret", "no-such-tenant"]) == 1


async def test_a_production_gateway_refuses_a_database_where_development_keys_work(stack: Stack) -> None:
    """A development stack promoted to production kept its development keys (`dev-key`) working: a
    production gateway does not start while one of `MEDIALENS_DEV_API_KEYS` is a valid key."""
    production = stack.settings.model_copy(update={"environment": "production"})
    with pytest.raises(RuntimeError, match=r"development API keys .* are valid in this database"):
        async with LifespanManager(create_app(production), startup_timeout=30):
            pass
