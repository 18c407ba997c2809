"""The settings model: environment parsing, refusals in production, pool sizing."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import ValidationError
from sqlalchemy import text

from medialens_shared import migrate
from medialens_shared.db import DatabaseManager
from medialens_shared.settings import SSL_MODES, DevSettings, Settings, load_settings, unknown_variables
from tests.fixtures.servers import SERVERS

SAFE_PRODUCTION = {
    "environment": "production",
    "postgres": {"url": "postgresql+asyncpg://app:pw@db.internal:5432/medialens"},
    "rabbitmq": {"url": "amqp://app:pw@mq.internal:5672/"},
}


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for key in list(os.environ):
        if key.startswith("MEDIALENS_"):
            monkeypatch.delenv(key)


def test_pool_size_is_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """MEDIALENS_POSTGRES_POOL_SIZE sets postgres.pool_size as an int."""
    monkeypatch.setenv("MEDIALENS_POSTGRES_POOL_SIZE", "17")
    assert Settings().postgres.pool_size == 17


def test_mongodb_url_is_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """MEDIALENS_MONGODB_URL sets mongodb.url and leaves the database name at its default."""
    monkeypatch.setenv("MEDIALENS_MONGODB_URL", "mongodb://mongo.example:27018")
    settings = Settings()
    assert settings.mongodb.url.get_secret_value() == "mongodb://mongo.example:27018"
    assert settings.mongodb.database == "medialens"


def test_dev_api_keys_are_read_and_split_into_pairs(monkeypatch: pytest.MonkeyPatch) -> None:
    """MEDIALENS_DEV_API_KEYS is parsed into (tenant, key) pairs, blanks ignored."""
    monkeypatch.setenv("MEDIALENS_DEV_API_KEYS", " acme:k1 , beta:k2,, ")
    assert Settings().dev.pairs() == [("acme", "k1"), ("beta", "k2")]


def test_a_field_name_with_underscores_keeps_them(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only the first underscore after the group splits: MEDIALENS_WORKER_MAX_ATTEMPTS is max_attempts."""
    monkeypatch.setenv("MEDIALENS_WORKER_MAX_ATTEMPTS", "7")
    monkeypatch.setenv("MEDIALENS_ENVIRONMENT", "test")
    settings = Settings()
    assert settings.worker.max_attempts == 7
    assert settings.environment == "test"


@pytest.mark.parametrize("size", ["0", "1"])
def test_an_out_of_range_pool_size_is_refused(monkeypatch: pytest.MonkeyPatch, size: str) -> None:
    """A pool size below 2 (one connection for sessions, one for bare statements) fails at start."""
    monkeypatch.setenv("MEDIALENS_POSTGRES_POOL_SIZE", size)
    with pytest.raises(ValidationError, match="pool_size"):
        Settings()


@pytest.mark.parametrize("bad", ["nocolon", "tenant:", ":key", "a:b,broken"])
def test_a_malformed_dev_key_pair_is_refused(bad: str) -> None:
    """A dev key that is not tenant:key makes the settings invalid, naming the item."""
    with pytest.raises(ValidationError, match="not of the form tenant:key"):
        Settings(dev=DevSettings(api_keys=bad))


def test_production_refuses_the_guest_rabbitmq_account() -> None:
    """In production the guest:guest RabbitMQ URL is refused."""
    values = {**SAFE_PRODUCTION, "rabbitmq": {"url": "amqp://guest:guest@mq:5672/"}}
    with pytest.raises(ValidationError, match="guest account") as caught:
        Settings(**values)
    assert "POSTGRES" not in str(caught.value)


def test_production_refuses_the_default_postgres_url() -> None:
    """In production the development PostgreSQL URL is refused."""
    values = {k: v for k, v in SAFE_PRODUCTION.items() if k != "postgres"}
    with pytest.raises(
        ValidationError, match="MEDIALENS_POSTGRES_URL logs in as the superuser without a pass"
    ):
        Settings(**values)


def test_production_defaults_name_both_unsafe_settings() -> None:
    """Production with every default lists both the guest account and the default database."""
    with pytest.raises(ValidationError) as caught:
        Settings(environment="production")
    assert "guest account" in str(caught.value)
    assert "superuser without a password" in str(caught.value)


@pytest.mark.parametrize(
    ("group", "url", "named"),
    [
        ("rabbitmq", "amqp://guest@mq:5672/", "MEDIALENS_RABBITMQ_URL"),  # the client fills in guest
        ("rabbitmq", "amqp://mq:5672/", "MEDIALENS_RABBITMQ_URL"),
        ("postgres", "postgresql+asyncpg://postgres@localhost:5432/medialens", "MEDIALENS_POSTGRES_URL"),
        ("postgres", "postgresql+asyncpg://db.internal/medialens", "MEDIALENS_POSTGRES_URL"),
    ],
)
def test_production_refuses_the_defaults_however_they_are_spelt(group: str, url: str, named: str) -> None:
    """The checks read the URLs, not their text: a guest login the client fills in, or the passwordless
    superuser on `localhost` rather than `127.0.0.1`, passed them."""
    with pytest.raises(ValidationError, match=named):
        Settings(**{**SAFE_PRODUCTION, group: {"url": url}})


@pytest.mark.parametrize(
    "url",
    [
        "postgresql+asyncpg://postgres@db.internal/medialens?password=s3cret",
        "postgresql+asyncpg:///medialens?host=/run/postgresql",
        "postgresql+asyncpg:///medialens?host=/run/postgresql&user=postgres",
    ],
)
def test_production_takes_a_login_asyncpg_reads_from_the_query_or_a_socket(url: str) -> None:
    """A password in the query, or a Unix socket's peer authentication (no password to give), is no
    passwordless superuser: both were refused as the default."""
    assert Settings(**{**SAFE_PRODUCTION, "postgres": {"url": url}}).environment == "production"


def test_production_refuses_webhooks_to_private_addresses() -> None:
    """`callback_allow_private` (the settings table: never in production) is refused there."""
    with pytest.raises(ValidationError, match="MEDIALENS_GATEWAY_CALLBACK_ALLOW_PRIVATE"):
        Settings(**SAFE_PRODUCTION, gateway={"callback_allow_private": True})


@pytest.mark.parametrize(
    ("variable", "value", "said"),
    [
        (
            "MEDIALENS_POSTGRES_POOL_SIZE",
            "abc",
            "MEDIALENS_POSTGRES_POOL_SIZE: Input should be a valid integer",
        ),
        (
            "MEDIALENS_RELAY_SENT_RETENTION_S",
            "inf",
            "MEDIALENS_RELAY_SENT_RETENTION_S: Input should be a finite",
        ),
        (
            "MEDIALENS_WORKER_TABLE_MEMORY_LIMIT",
            "lots",
            "MEDIALENS_WORKER_TABLE_MEMORY_LIMIT: give a size such as",
        ),
        ("MEDIALENS_LOG_LEVEL", "verbose", "MEDIALENS_LOG_LEVEL: give one of DEBUG"),
    ],
)
def test_a_bad_setting_stops_the_process_naming_its_variable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], variable: str, value: str, said: str
) -> None:
    """A bad setting ends the process at once with exit code 2 and one line naming its variable: it was a
    traceback naming `postgres.pool_size`, or (a memory limit, `inf`, a log level) passed start-up and
    failed every job or round."""
    monkeypatch.setenv(variable, value)
    with pytest.raises(SystemExit) as stopped:
        load_settings()
    assert stopped.value.code == 2
    assert said in capsys.readouterr().err


def test_a_refusal_never_prints_a_secret(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """pydantic quotes the input of a model's refusal: the database password and the dev API keys were
    printed to the log with it."""
    monkeypatch.setenv("MEDIALENS_ENVIRONMENT", "production")
    monkeypatch.setenv("MEDIALENS_POSTGRES_URL", "postgresql+asyncpg://app:Pg-S3cret-pw@pg/ml")
    monkeypatch.setenv("MEDIALENS_DEV_API_KEYS", "acme:k-very-secret-1234")
    with pytest.raises(SystemExit):
        load_settings()
    err = capsys.readouterr().err
    assert "guest account" in err
    assert "Pg-S3cret-pw" not in err
    assert "k-very-secret-1234" not in err


@pytest.mark.parametrize(
    "url",
    [
        "postgres://app:pw@db:5432/ml",
        "postgresql://app:pw@db:5432/ml",
        "POSTGRESQL+asyncpg://app:pw@db:5432/ml",
    ],
)
def test_a_postgres_url_without_the_driver_is_read_with_asyncpg(
    monkeypatch: pytest.MonkeyPatch, url: str
) -> None:
    """`postgres://` and `postgresql://`, as providers hand them out, name the asyncpg driver: they failed
    at the first connect (no plugin `postgres`, no module psycopg)."""
    monkeypatch.setenv("MEDIALENS_POSTGRES_URL", url)
    assert Settings().postgres.url.get_secret_value() == "postgresql+asyncpg://app:pw@db:5432/ml"


@pytest.mark.parametrize("mode", SSL_MODES)
def test_libpq_sslmode_becomes_asyncpgs_ssl(monkeypatch: pytest.MonkeyPatch, mode: str) -> None:
    """libpq's `sslmode=` is asyncpg's `ssl=`, same mode, the rest of the query kept: asyncpg refused
    `sslmode` as an unexpected keyword argument at the first connect."""
    monkeypatch.setenv(
        "MEDIALENS_POSTGRES_URL", f"postgresql+asyncpg://app:pw@db/ml?sslmode={mode}&timeout=3"
    )
    assert (
        Settings().postgres.url.get_secret_value()
        == f"postgresql+asyncpg://app:pw@db/ml?ssl={mode}&timeout=3"
    )


@pytest.mark.parametrize(
    ("group", "url", "normal"),
    [
        ("mongodb", "MONGODB+SRV://app:pw@cluster.example/", "mongodb+srv://app:pw@cluster.example/"),
        ("redis", "Rediss://:pw@cache:6380/0", "rediss://:pw@cache:6380/0"),
        ("redis", "UNIX:///run/redis.sock?db=0", "unix:///run/redis.sock?db=0"),
        ("rabbitmq", "AMQPS://app:pw@mq:5671/%2F", "amqps://app:pw@mq:5671/%2F"),
    ],
)
def test_every_scheme_a_client_takes_is_accepted_in_lowercase(
    monkeypatch: pytest.MonkeyPatch, group: str, url: str, normal: str
) -> None:
    """Each URL's scheme is lowercased (schemes are case-insensitive; PyMongo refused `MONGODB://`)."""
    monkeypatch.setenv(f"MEDIALENS_{group.upper()}_URL", url)
    assert getattr(Settings(), group).url.get_secret_value() == normal


#: What a refused PostgreSQL scheme is told, and the start of a URL with a password.
POSTGRES_SCHEMES = "postgresql+asyncpg://, postgresql:// or postgres://"
PG = "postgres://app:S3cret-pw@db/ml"


@pytest.mark.parametrize(
    ("variable", "url", "said"),
    [
        ("POSTGRES", "postgresql+psycopg://app:S3cret-pw@db/ml", POSTGRES_SCHEMES),
        ("POSTGRES", "http://app:S3cret-pw@db/ml", POSTGRES_SCHEMES),
        ("POSTGRES", "app:S3cret-pw@db/ml", POSTGRES_SCHEMES),
        ("POSTGRES", "postgresql://app:S3cret-pw@db:5432x/ml", "not a URL SQLAlchemy can read"),
        ("POSTGRES", f"{PG}?sslmode=required", "takes one of disable, allow, prefer, require, verify-ca"),
        ("POSTGRES", "postgresql+asyncpg://app:S3cret-pw@db/ml?ssl=true", "takes one of disable, allow"),
        (
            "POSTGRES",
            f"{PG}?sslmode=require&ssl=require",
            "give asyncpg's ssl= or libpq's sslmode=, not both",
        ),
        ("POSTGRES", f"{PG}?sslmode=require&channel_binding=require", "no query parameter channel_binding"),
        ("POSTGRES", f"{PG}?server_settings=x", "no query parameter server_settings"),
        ("POSTGRES", "postgres://app:S3cret@pw@db/ml", "must be written %40"),
        ("POSTGRES", "postgres://app:S3cret-pw@db1:5432,db2:5432/ml", "?host=h1:5432&host=h2:5433"),
        (
            "POSTGRES",
            f"{PG}?sslmode=verify-ca&sslrootcert=/ca.pem",
            "reads PGSSLROOTCERT from the environment",
        ),
        (
            "REDIS",
            "http://:S3cret-pw@cache:6379/0",
            "give a URL starting with redis://, rediss:// or unix://",
        ),
        ("RABBITMQ", "redis://:S3cret-pw@cache:6379/0", "give a URL starting with amqp:// or amqps://"),
        ("RABBITMQ", "app:S3cret-pw@mq:5672", "give a URL starting with amqp:// or amqps://"),
        (
            "MONGODB",
            "http://app:S3cret-pw@mongo:27017",
            "give a URL starting with mongodb:// or mongodb+srv://",
        ),
    ],
)
def test_a_url_its_client_cannot_read_stops_the_process_naming_its_variable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], variable: str, url: str, said: str
) -> None:
    """A URL of the wrong scheme (or a PostgreSQL query asyncpg cannot take) stops the start, naming the
    variable and what it takes, never the password: it failed later, as an obscure error, or not at all
    (FastStream read a Redis URL as AMQP)."""
    monkeypatch.setenv(f"MEDIALENS_{variable}_URL", url)
    with pytest.raises(SystemExit) as stopped:
        load_settings()
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert f"MEDIALENS_{variable}_URL: " in err
    assert said in err
    assert "S3cret-pw" not in err


@pytest.mark.integration
@pytest.mark.parametrize(
    "url",
    [
        f"postgres://{SERVERS.postgres}/postgres",
        f"postgresql+asyncpg://{SERVERS.postgres}/postgres?sslmode=disable",
    ],
)
async def test_a_postgres_url_in_libpqs_spelling_connects(url: str) -> None:
    """The migrations and both pools of the database manager connect with a `postgres://` URL, and with
    libpq's `sslmode=`."""
    settings = Settings(postgres={"url": url})
    await migrate.create_database_if_missing(settings.postgres.url.get_secret_value())
    manager = DatabaseManager(settings, name="settings-test")
    try:
        async with manager.connection() as conn:
            assert await conn.fetchval("SELECT current_database()") == "postgres"
        async with manager.session() as session:
            assert await session.scalar(text("SELECT current_database()")) == "postgres"
    finally:
        await manager.close_all()


def test_production_with_safe_urls_starts() -> None:
    """Production with its own URLs is accepted and is not development."""
    settings = Settings(**SAFE_PRODUCTION)
    assert settings.environment == "production"
    assert settings.is_development is False
    assert Settings().is_development is True


def test_default_pools_fit_five_processes_under_max_connections() -> None:
    """The five processes at their default pool size and overflow stay within 90 of 100 connections."""
    pg = Settings().postgres
    sizes = {process: pg.pool_for(process) for process in ("gateway", "relay", "video", "audio", "data")}
    assert sizes == {"gateway": (30, 0), "relay": (2, 2), "video": (6, 0), "audio": (6, 0), "data": (6, 0)}
    assert sum(size + overflow for size, overflow in sizes.values()) <= 90


def test_a_pool_size_in_the_environment_applies_to_every_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """MEDIALENS_POSTGRES_POOL_SIZE and _MAX_OVERFLOW override each process's default; five such fit 90."""
    monkeypatch.setenv("MEDIALENS_POSTGRES_POOL_SIZE", "10")
    monkeypatch.setenv("MEDIALENS_POSTGRES_MAX_OVERFLOW", "5")
    pg = Settings().postgres
    assert pg.pool_for("gateway") == pg.pool_for("video") == (10, 5)
    assert 5 * (pg.pool_size + pg.max_overflow) <= 90


@pytest.mark.parametrize(
    ("pool_size", "bare"),
    [(None, {"gateway": 20, "relay": 1, "audio": 3}), (3, {"gateway": 2, "relay": 1, "audio": 1}),
     (2, {"gateway": 1, "relay": 1, "audio": 1})],
)  # fmt: skip
def test_the_bare_pool_takes_its_share_of_the_pool_size(pool_size: int | None, bare: dict[str, int]) -> None:
    """The bare pool takes its process's share of pool_size, rounded down, and always leaves the sessions
    at least one: the process's budget stays pool_size + max_overflow."""
    pg = Settings(postgres={"pool_size": pool_size}).postgres  # type: ignore[arg-type]
    assert {process: pg.bare_size_for(process) for process in bare} == bare


def test_ops_ports_default_per_process() -> None:
    """Each process has its own default operations port unless one is set."""
    worker = Settings().worker
    assert (worker.ops_port("video"), worker.ops_port("relay"), worker.ops_port("other")) == (
        8101,
        8104,
        8100,
    )
    assert Settings(worker={"http_port": 0}).worker.ops_port("video") == 0  # type: ignore[arg-type]


def test_settings_are_frozen() -> None:
    """Settings cannot be changed after start."""
    settings = Settings()
    with pytest.raises(ValidationError):
        settings.environment = "production"  # type: ignore[misc]


def test_every_variable_the_deployments_and_docs_set_names_a_setting() -> None:
    """The MEDIALENS_* variables in the Kubernetes manifests, the compose files, .env.example and the
    README each name a setting (or a tool's variable): a misspelt one would be ignored without a word."""
    root = Path(__file__).resolve().parents[2]
    # Config, not code (the checks name misspelt variables in the errors they expect); and not the fixtures
    # `make deploy-check` proves it rejects (misspelt on purpose).
    broken = root / "deploy" / "tests" / "broken"
    deploy = [
        path
        for path in (root / "deploy").rglob("*")
        if path.suffix not in {".py", ".sh"} and broken not in path.parents
    ]
    files = [*deploy, *root.glob("docker-compose*.yml"), root / ".env.example"]
    files.append(root / "README.md")
    named = {
        variable
        for path in files
        if path.is_file() and path.suffix not in {".png", ".json"}
        for variable in re.findall(r"\bMEDIALENS_[A-Z0-9_]*[A-Z0-9]", path.read_text(errors="replace"))
    }
    assert len(named) > 20  # the files were read
    assert unknown_variables(dict.fromkeys(named, "")) == []
    assert unknown_variables({"MEDIALENS_WORKER_SHUTDOWN_GRACE": ""}) == ["MEDIALENS_WORKER_SHUTDOWN_GRACE"]
