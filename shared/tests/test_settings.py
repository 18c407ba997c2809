"""The settings model: environment parsing, refusals in production, pool sizing."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from medialens_shared.settings import DevSettings, Settings, load_settings, unknown_variables

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
    deploy = [path for path in (root / "deploy").rglob("*") if path.suffix != ".py"]  # config, not code
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
