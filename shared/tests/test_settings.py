"""The settings model: environment parsing, refusals in production, pool sizing."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from medialens_shared.settings import DevSettings, Settings, unknown_variables

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
    with pytest.raises(ValidationError, match="MEDIALENS_POSTGRES_URL is the development default"):
        Settings(**values)


def test_production_defaults_name_both_unsafe_settings() -> None:
    """Production with every default lists both the guest account and the default database."""
    with pytest.raises(ValidationError) as caught:
        Settings(environment="production")
    assert "guest account" in str(caught.value)
    assert "development default" in str(caught.value)


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
