"""The one settings model of MediaLens, read from `MEDIALENS_*` environment variables.

Variables are named `MEDIALENS_<GROUP>_<FIELD>`: `MEDIALENS_POSTGRES_POOL_SIZE`, `MEDIALENS_MONGODB_URL`,
`MEDIALENS_DEV_API_KEYS`. Each group is a resource; nothing else in the code base reads the environment
for its settings (`telemetry` hands OpenTelemetry its own `OTEL_*` variables, and `logs` looks for
misspelt `MEDIALENS_*` ones to warn of).

Sizing the PostgreSQL pools: every process holds its own pool of at most `pool_size + max_overflow`
connections, so the stack needs `sum over processes (pool_size + max_overflow)` server connections. The
gateway, which serves the requests, has 30 + 0; the relay needs 2 + 2 and each analysis service
6 + 0 (a job holds a connection only for its status changes). One of each: 30 + 4 + 3 * 6 = 52, within
PostgreSQL's default `max_connections = 100`, leaving room for migrations, psql and a second gateway.
`MEDIALENS_POSTGRES_POOL_SIZE` / `_MAX_OVERFLOW` set one size for every process that reads them; with
replicas, keep `replicas * (pool_size + max_overflow)` summed over all deployments below `max_connections`.

Within a process, `pool_size` is shared by its two pools: SQLAlchemy's, for sessions, and the bare pool of
single statements (`DatabaseManager.connection`), which takes `BARE_SHARES` of it (the gateway two thirds:
its job reads, lists and submissions are bare statements; a service half: a job's claim and end; the relay
half: its outbox rounds). The overflow stays with the sessions. The sum is the same budget.
"""

from __future__ import annotations

import argparse
import inspect
import logging
import re
import sys
from collections.abc import Mapping
from fractions import Fraction
from pathlib import Path
from typing import Annotated, Literal, Self
from urllib.parse import urlsplit

import asyncpg
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

Environment = Literal["development", "test", "production"]


#: Default (pool_size, max_overflow) of each process, when the settings do not fix them.
#: The gateway keeps all of its 30 connections rather than 20 plus 10 overflow: under a steady load above
#: 20 requests in flight, overflow connections were opened and closed request after request (a server
#: process forked for each), which its profile showed. A service keeps its 6 open for the same reason: running
#: 8 light jobs at once, its 4 + 2 opened and closed an overflow connection every few jobs.
POOL_DEFAULTS: dict[str, tuple[int, int]] = {"gateway": (30, 0), "relay": (2, 2)}
WORKER_POOL_DEFAULT = (6, 0)
#: The share of each process's `pool_size` that its bare pool takes (rounded down; the sessions keep one).
BARE_SHARES: dict[str, Fraction] = {"gateway": Fraction(2, 3), "relay": Fraction(1, 2)}
WORKER_BARE_SHARE = Fraction(1, 2)


class Group(BaseModel):
    """A group of settings: numbers are finite (`inf` was taken by every float, and `..._SENT_RETENTION_S=inf`
    stopped the relay's upkeep at its first round)."""

    model_config = ConfigDict(allow_inf_nan=False)


def _with_scheme(url: str, schemes: tuple[str, ...]) -> str:
    """`url`, its scheme lowercased, when the scheme is one of `schemes`; else a refusal naming them.

    Checked at start: a wrong scheme was taken for another, or refused only later with a traceback.
    FastStream reads any URL as AMQP (a Redis URL in the broker's variable had it speak AMQP to Redis's
    port, `http://` to port 80), the Redis and MongoDB clients refused theirs as the pools were made,
    SQLAlchemy at the first connect. Lowercased: schemes are case-insensitive, but PyMongo compares them.
    """
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in schemes:
        *others, last = (f"{name}://" for name in schemes)
        raise ValueError(f"give a URL starting with {', '.join(others)} or {last}")
    return scheme.lower() + sep + rest


def _scheme_of(*schemes: str) -> AfterValidator:
    return AfterValidator(lambda url: SecretStr(_with_scheme(url.get_secret_value(), schemes)))


#: The PostgreSQL URLs taken, each read with SQLAlchemy's asyncpg driver, the one installed: the bare
#: `postgres://` and `postgresql://` are what managed providers hand out.
POSTGRES_SCHEMES = ("postgresql+asyncpg", "postgresql", "postgres")
#: The values of asyncpg's `ssl` and libpq's `sslmode`: asyncpg implements each mode as libpq does (the root
#: certificate from PGSSLROOTCERT or ~/.postgresql/root.crt included), so one translates to the other as is.
SSL_MODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
#: The query parameters of a PostgreSQL URL: SQLAlchemy's asyncpg dialect passes each to `asyncpg.connect`
#: but its own statement cache size.
ASYNCPG_PARAMETERS = (
    frozenset(inspect.signature(asyncpg.connect).parameters) | {"prepared_statement_cache_size"}
) - {"dsn", "loop", "connection_class", "record_class", "server_settings"}  # objects, not text: no use here


def _asyncpg_url(url: SecretStr) -> SecretStr:
    """`url` as SQLAlchemy's asyncpg driver takes it, which every reader of it uses (the pools, the
    migrations, the tools): `postgres://` and `postgresql://` name that driver, libpq's `sslmode=` becomes
    asyncpg's `ssl=`. Each failed only at the first connect (no module named psycopg, no plugin `postgres`,
    an unexpected keyword argument `sslmode`), as did any query parameter asyncpg does not take: those are
    refused here. A URL already in that form is kept as it is written."""
    text = _with_scheme(url.get_secret_value(), POSTGRES_SCHEMES)
    authority = text.partition("://")[2].split("/", 1)[0].split("?", 1)[0]
    if authority.count("@") > 1:  # SQLAlchemy and urlsplit split `a:p@ss@db` differently: neither is sure
        raise ValueError("an @ in the user or password must be written %40")
    if "," in authority.rpartition("@")[2]:
        raise ValueError("several hosts are given as ?host=h1:5432&host=h2:5433, not h1,h2")
    try:
        parsed = make_url(text)
    except (ArgumentError, ValueError):  # their messages may quote the URL
        raise ValueError("not a URL SQLAlchemy can read (is the port a number?)") from None
    query = dict(parsed.query)
    if "sslmode" in query:
        if "ssl" in query:
            raise ValueError("give asyncpg's ssl= or libpq's sslmode=, not both")
        query["ssl"] = query.pop("sslmode")
    if unknown := sorted(set(query) - ASYNCPG_PARAMETERS):
        files = [
            f"PG{name.upper()}" for name in unknown if name in ("sslrootcert", "sslcert", "sslkey", "sslcrl")
        ]
        instead = f" (asyncpg reads {', '.join(files)} from the environment instead)" if files else ""
        raise ValueError(f"the asyncpg driver takes no query parameter {', '.join(unknown)}{instead}")
    ssl = query.get("ssl")
    if ssl is not None and (not isinstance(ssl, str) or ssl.replace("_", "-") not in SSL_MODES):
        raise ValueError(f"ssl= (or sslmode=) takes one of {', '.join(SSL_MODES)}")
    if parsed.drivername == POSTGRES_SCHEMES[0] and query == parsed.query:
        return SecretStr(text)
    normal = parsed.set(drivername=POSTGRES_SCHEMES[0], query=query)
    return SecretStr(normal.render_as_string(hide_password=False))


PostgresUrl = Annotated[SecretStr, AfterValidator(_asyncpg_url)]
MongoUrl = Annotated[SecretStr, _scheme_of("mongodb", "mongodb+srv")]
RedisUrl = Annotated[SecretStr, _scheme_of("redis", "rediss", "unix")]
RabbitUrl = Annotated[SecretStr, _scheme_of("amqp", "amqps")]


class PostgresSettings(Group):
    url: PostgresUrl = SecretStr("postgresql+asyncpg://postgres@127.0.0.1:5432/medialens")
    #: None: the process's default from POOL_DEFAULTS (gateway 30, relay 2, each service 6); the bare pool
    #: takes its `BARE_SHARES` of it.
    pool_size: int | None = Field(None, ge=2, le=200)  # at least one for sessions, one for bare statements
    #: None: the process's default from POOL_DEFAULTS (gateway 0, relay 2, each service 0).
    max_overflow: int | None = Field(None, ge=0, le=200)
    pool_timeout: float = Field(30.0, gt=0)
    pool_recycle: int = Field(3600, ge=-1)
    pool_pre_ping: bool = True
    connect_timeout: float = Field(5.0, gt=0)

    def pool_for(self, process: str) -> tuple[int, int]:
        """(pool_size, max_overflow) of `process`: the settings' values, else that process's default."""
        size, overflow = POOL_DEFAULTS.get(process, WORKER_POOL_DEFAULT)
        return (
            size if self.pool_size is None else self.pool_size,
            overflow if self.max_overflow is None else self.max_overflow,
        )

    def bare_size_for(self, process: str) -> int:
        """How many of `process`'s `pool_size` connections its bare pool takes (`BARE_SHARES`)."""
        size, _ = self.pool_for(process)
        share = BARE_SHARES.get(process, WORKER_BARE_SHARE)
        return min(int(size * share), size - 1)


class MongoSettings(Group):
    url: MongoUrl = SecretStr("mongodb://127.0.0.1:27017")
    database: str = "medialens"
    max_pool_size: int = Field(20, ge=1)
    min_pool_size: int = Field(1, ge=0)
    timeout_ms: int = Field(5000, ge=100)


class RedisSettings(Group):
    url: RedisUrl = SecretStr("redis://127.0.0.1:6379/0")
    max_connections: int = Field(32, ge=1)
    socket_timeout: float = Field(5.0, gt=0)
    #: Prefix of every key and channel, so several stacks (or test runs) can share one server.
    prefix: str = "medialens"


class RabbitSettings(Group):
    url: RabbitUrl = SecretStr("amqp://guest:guest@127.0.0.1:5672/")
    exchange: str = "medialens.jobs"
    #: Deliveries after which a message that keeps failing goes to the dead-letter queue.
    delivery_limit: int = Field(5, ge=1)
    #: Deliveries a service's consumer holds at once; None: its `worker.concurrency`, one delivery ready
    #: for each slot (with fewer, the claims of light jobs queue behind one another, a broker round trip
    #: each). Keep it low for media queues: a delivery buffered behind a long job would outlast the
    #: broker's consumer timeout (30 min) unacked.
    prefetch: int | None = Field(None, ge=1, le=1000)
    publish_timeout: float = Field(10.0, gt=0)


class GatewaySettings(Group):
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    max_upload_bytes: int = Field(1024**3, ge=1)
    #: How long an Idempotency-Key is remembered.
    idempotency_ttl_s: int = Field(24 * 3600, ge=60)
    #: Allow `http://` callback URLs (development against a local receiver).
    callback_allow_http: bool = False
    #: Allow callback URLs on private, loopback or link-local addresses (never in production).
    callback_allow_private: bool = False
    #: Budget of each readiness check.
    health_timeout_s: float = Field(2.0, gt=0)
    #: One log line per request (uvicorn's access log). Off by default: the HTTP metrics count requests,
    #: and a formatted line per request cost a busy gateway a measurable share of its CPU.
    access_log: bool = False
    #: Each tenant's request rate per gateway process, in the `limits` library's notation (one or more of
    #: `N/second`, `N/minute`... joined by `;`); empty: no limit. Over it: 429 RATE_LIMITED.
    tenant_rate_limit: str = ""
    #: Requests one gateway process serves at once (health checks aside); past it the gateway sheds load
    #: with 503 SERVICE_UNAVAILABLE and Retry-After rather than queueing without bound. 0: no bound.
    max_in_flight: int = Field(1000, ge=0)
    #: Live-progress streams (`GET /v1/jobs/{id}/events`) one tenant may hold open on one gateway process;
    #: one more is refused with 429 RATE_LIMITED. Each open stream counts toward `max_in_flight` while it
    #: lasts, so without this bound one tenant's streams could take every slot from the others. 0: no bound.
    event_streams_per_tenant: int = Field(100, ge=0)
    #: How long a gateway process trusts an API key it verified before it looks it up again: a revoked
    #: key is refused within this time. 0: every request looks it up.
    key_cache_ttl_s: float = Field(30.0, ge=0)


class RelaySettings(Group):
    batch_size: int = Field(100, ge=1)
    poll_interval_s: float = Field(0.2, gt=0)
    #: Pause after a round that published something (more is likely on its way), instead of the above.
    busy_poll_interval_s: float = Field(0.02, gt=0)
    #: A gateway process that has written outbox entries wakes the relays at once (a Redis message),
    #: then at most once this often while it keeps writing: a pause ends early for new entries. A relay
    #: starts rounds that publish at most once this often, however many gateways nudge. As long as the
    #: busy poll by default: shorter cuts the wait under a steady flow (5 ms: p50 at 200 jobs/s 17 -> 7 ms)
    #: but costs saturated submissions (-7% `POST /v1/jobs` with the relay on the same two cores).
    nudge_interval_s: float = Field(0.02, ge=0)
    #: How often the relay looks for running jobs whose lease ran out.
    reap_interval_s: float = Field(2.0, gt=0)
    #: How long a sent outbox entry is kept before the relay deletes it; 0 keeps every entry.
    sent_retention_s: float = Field(86400.0, ge=0)
    #: A job still queued this long after it was last queued is published again (its message may be lost:
    #: a queue purged by hand, a dead-letter hop the broker dropped); 0: never. Longer than the longest
    #: retry delay, since a job waiting out its backoff is queued too.
    republish_after_s: float = Field(3600.0, ge=0)
    #: A finished job (succeeded, failed or cancelled) is deleted this long after it finished, with its
    #: result, its parts (a composite job's) and the files it made (thumbnails, converted tables): 0 keeps
    #: every job for ever. Uploads are the client's to delete; a job with a webhook still owed waits for it.
    #: The row a deleted file leaves (jobs still name it) goes that long after its delete.
    job_retention_s: float = Field(0.0, ge=0)

    @model_validator(mode="after")
    def _republish_after_the_longest_delay(self) -> Self:
        # Here, not at the top: the settings module imports nothing of the database's (outbox does).
        from medialens_shared.outbox import DELAY_TIERS_S

        if 0 < self.republish_after_s <= DELAY_TIERS_S[-1]:
            raise ValueError(
                f"republish_after_s must be 0 or longer than the longest retry delay ({DELAY_TIERS_S[-1]} s)"
            )
        return self


class WebhookSettings(Group):
    #: Tries of a delivery that keeps meeting 408, 429, 5xx or network errors before it is marked failed.
    max_attempts: int = Field(8, ge=1, le=50)
    #: Budget of one try, in seconds: resolving the host, connecting, sending and reading the status.
    timeout_s: float = Field(10.0, gt=0)
    #: Wait before the second try, in seconds; each later wait doubles (with jitter) up to the cap.
    backoff_base_s: float = Field(10.0, gt=0)
    #: Longest wait between two tries, in seconds.
    backoff_cap_s: float = Field(3600.0, gt=0)
    #: Deliveries one relay round sends at once.
    batch_size: int = Field(20, ge=1, le=500)


#: Default port of each process's operations endpoints (health, metrics), when the settings do not fix one.
OPS_PORTS: dict[str, int] = {"video": 8101, "audio": 8102, "data": 8103, "relay": 8104}


class WorkerSettings(Group):
    #: Port of /health/live, /health/ready and /metrics of a service or the relay (None: its default in
    #: OPS_PORTS; 0: any free port).
    http_port: int | None = Field(None, ge=0, le=65535)
    #: Address those endpoints listen on (0.0.0.0 in a container, so probes reach them).
    http_host: str = "127.0.0.1"
    #: Minimum seconds between two progress writes of one job.
    progress_interval_s: float = Field(0.5, ge=0)
    #: Where a job's scratch directory is made, and its input copied from GridFS for it alone when the
    #: input cache does not keep it (larger than `input_cache_bytes`, or not matching its hash); both
    #: removed when the job ends. None: the system's temporary directory.
    scratch_dir: str | None = None
    #: Disk space for inputs kept by content hash, so that a file analysed again is not read from GridFS
    #: again (`medialens_shared.inputcache`; more while running jobs hold more); 0 keeps none.
    input_cache_bytes: int = Field(512 * 2**20, ge=0)
    #: Where those inputs are kept (a directory of this process, removed at its stop), a directory per
    #: hash holding the file under each upload name jobs asked for (hard links); jobs read their input
    #: there, in place. None: the system's temporary directory.
    input_cache_dir: str | None = None
    #: How long a claimed job stays its worker's without a heartbeat (beats come every third of it);
    #: a job whose worker died runs again within this plus the relay's reap interval.
    lease_s: float = Field(15.0, ge=1)
    #: Tries of a job that keeps meeting passing faults before it fails with RETRIES_EXHAUSTED.
    max_attempts: int = Field(3, ge=1)
    #: Memory a table job's engine (DuckDB) may use before it spills to `scratch_dir`.
    table_memory_limit: str = "512MB"
    #: Threads a table job's engine may use.
    table_threads: int = Field(2, ge=1)
    #: The most a table job's engine may spill to `scratch_dir` (a job past it fails as needing more memory
    #: than a job may use); None: DuckDB's own bound, 90% of the free space of that disk. Set it in a pod,
    #: where that disk is the node's and the scratch volume is smaller (exceeding it evicts the pod).
    table_spill_limit: str | None = None
    #: A data.query whose SQL runs longer than this fails with TIMEOUT (its process is ended 2 s later if
    #: DuckDB does not stop: its optimizer heeds no interrupt).
    query_time_limit_s: float = Field(30.0, gt=0)
    #: Bytes of Parquet a data.query's answer may be stored as; a larger one is stopped while it is written
    #: and fails with INVALID_PARAMS.
    query_max_answer_bytes: int = Field(1024**3, ge=1)
    #: A job running longer than this, its input's fetch included, fails with TIMEOUT.
    job_timeout_s: float = Field(3600.0, gt=0)
    #: Seconds a stopping service waits for its running job to finish before it releases the job's lease.
    shutdown_grace_s: float = Field(30.0, ge=0)
    #: A name this process keeps across restarts (in Kubernetes, the pod's name). A process started under
    #: the name of one that died hands that one's running jobs back at once, instead of after their
    #: leases. Unset: the host's name, and nothing is handed back at start (several processes of a
    #: service may share a host).
    name: str | None = Field(None, min_length=1, max_length=100)
    #: Jobs a service runs at once. Deliveries are acked at the claim, so the broker's prefetch does not
    #: bound this: without it a worker would take every queued job at once.
    concurrency: int = Field(1, ge=1, le=64)
    #: At most this often, and only after a job ended, the service gives the memory its decoders freed
    #: back to the system (glibc's malloc_trim; see `medialens_shared.memtrim`). 0: never.
    memory_trim_s: float = Field(30.0, ge=0)
    #: Seconds between two checks, on the broker, that this process's consumer is attached.
    consumer_check_s: float = Field(5.0, gt=0)
    #: A service whose consumer stays gone this long (RabbitMQ's client did not restore it) stops and
    #: exits with code 75, for its orchestrator to start a fresh one; a service or the relay that RabbitMQ
    #: refused at start (its login or virtual host, `bus.refusal`) this long exits with code 78.
    consumer_lost_s: float = Field(60.0, gt=0)

    def ops_port(self, process: str) -> int:
        return OPS_PORTS.get(process, 8100) if self.http_port is None else self.http_port

    @field_validator("table_memory_limit", "table_spill_limit")
    @classmethod
    def _memory_size(cls, value: str | None) -> str | None:
        # Checked at start: a bad one failed every data job, as INVALID_PARAMS, the client's fault.
        if value is not None and not MEMORY_SIZE.fullmatch(value):
            raise ValueError("give a size such as 512MB, 2GB or 1.5GiB")
        return value


#: A memory size as DuckDB takes one (`memory_limit`): a number (group 1) and a unit (group 2, none for
#: bytes); the data service reads its limits with it too.
MEMORY_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]I?B|B)?\s*", re.IGNORECASE)


class DevSettings(Group):
    #: `tenant:key,tenant:key` pairs the gateway ensures exist at start (development and test only).
    api_keys: str = "dev:dev-key"

    def pairs(self) -> list[tuple[str, str]]:
        pairs = []
        for item in filter(None, (part.strip() for part in self.api_keys.split(","))):
            tenant, sep, key = item.partition(":")
            if not sep or not tenant or not key:
                raise ValueError(f"MEDIALENS_DEV_API_KEYS: {item!r} is not of the form tenant:key")
            pairs.append((tenant, key))
        return pairs


class LogSettings(Group):
    level: str = "INFO"

    @field_validator("level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        if value.upper() not in logging.getLevelNamesMapping():
            raise ValueError("give one of DEBUG, INFO, WARNING, ERROR, CRITICAL")
        return value.upper()

    #: None: JSON lines in production, readable lines elsewhere.
    format: Literal["text", "json"] | None = None

    def json_for(self, environment: str) -> bool:
        return self.format == "json" or (self.format is None and environment == "production")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="MEDIALENS_",
        env_nested_delimiter="_",
        env_nested_max_split=1,
        extra="ignore",
        frozen=True,
    )

    environment: Environment = "development"
    postgres: PostgresSettings = PostgresSettings()
    mongodb: MongoSettings = MongoSettings()
    redis: RedisSettings = RedisSettings()
    rabbitmq: RabbitSettings = RabbitSettings()
    gateway: GatewaySettings = GatewaySettings()
    relay: RelaySettings = RelaySettings()
    webhook: WebhookSettings = WebhookSettings()
    worker: WorkerSettings = WorkerSettings()
    dev: DevSettings = DevSettings()
    log: LogSettings = LogSettings()

    @model_validator(mode="after")
    def _refuse_unsafe_production(self) -> Self:
        if self.environment != "production":
            self.dev.pairs()  # validates the format early
            return self
        unsafe = []
        # The AMQP client logs in as guest when the URL names no user (or no password): parsed, not matched.
        broker = urlsplit(self.rabbitmq.url.get_secret_value())
        if broker.username in (None, "", "guest") or broker.password in (None, "guest"):
            unsafe.append("MEDIALENS_RABBITMQ_URL uses the guest account (or names no user and password)")
        # The login as asyncpg reads it: from the URL's user info or its query (`?user=&password=`); over a
        # Unix socket (no host: `?host=/run/postgresql`) the server knows the process's user, no password.
        database = make_url(self.postgres.url.get_secret_value())
        user = database.username or database.query.get("user")
        password = database.password or database.query.get("password")
        if user in (None, "", "postgres") and not password and database.host:
            unsafe.append("MEDIALENS_POSTGRES_URL logs in as the superuser without a password (the default)")
        if self.gateway.callback_allow_private:
            unsafe.append("MEDIALENS_GATEWAY_CALLBACK_ALLOW_PRIVATE lets webhooks reach private addresses")
        if unsafe:
            raise ValueError("unsafe settings for production: " + "; ".join(unsafe))
        return self

    @property
    def is_development(self) -> bool:
        return self.environment != "production"


def load_settings(description: str | None = None) -> Settings:
    """The settings of this process, or its exit (code 2) with one line a bad setting, naming its variable
    (`MEDIALENS_POSTGRES_POOL_SIZE: ...`), never its value: pydantic's own message quotes the input, which
    held database passwords and API keys, and named `postgres.pool_size`.

    A process that takes no arguments gives its `description`: its command line is read first, so that
    `--help` says what it is and how it is configured, and exits, and any other argument is refused
    (`medialens-migrate --help` migrated a database, `medialens-gateway --help` served).
    """
    if description is not None:
        argparse.ArgumentParser(
            prog=_program(),
            description=f"{description} Configured by MEDIALENS_* environment variables only (README: "
            "Settings); a bad one stops it with exit code 2.",
        ).parse_args()
    try:
        return Settings()
    except ValidationError as exc:
        lines = [
            f"{_variable(error['loc'])}{error['msg'].removeprefix('Value error, ')}"
            for error in exc.errors(include_input=False)
        ]
        print("bad settings:\n  " + "\n  ".join(lines), file=sys.stderr)  # noqa: T201 - before logging
        raise SystemExit(2) from None


def _program() -> str:
    """How this process was started, for its usage line: its command's name, or `python -m <package>`
    (argparse of Python 3.11 names that `__main__.py`)."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    if spec is not None and spec.name:
        return f"python -m {spec.name.removesuffix('.__main__')}"
    return Path(sys.argv[0]).name


def _variable(loc: tuple[int | str, ...]) -> str:
    """The variable an error's location names (`MEDIALENS_POSTGRES_POOL_SIZE: `), nothing for the model's."""
    prefix = Settings.model_config.get("env_prefix", "")
    return f"{prefix}{'_'.join(str(part) for part in loc).upper()}: " if loc else ""


#: Variables of the project's tools rather than of its processes: the test fixtures', `make demo`'s and
#: the benchmarks'.
TOOL_VARIABLE_PREFIXES = ("MEDIALENS_TEST_", "MEDIALENS_DEMO_", "MEDIALENS_BENCH_")


def unknown_variables(environ: Mapping[str, str]) -> list[str]:
    """The `MEDIALENS_*` variables in `environ` that name no setting, sorted.

    The settings ignore a variable they do not know (`extra="ignore"`), so a misspelt one
    (`MEDIALENS_WORKER_SHUTDOWN_GRACE` for `..._GRACE_S`) would leave its setting at the default without a
    word: each process logs these at start.
    """
    known: set[str] = set()
    for name, field in Settings.model_fields.items():
        known.add(name)  # a group may also be given whole, as JSON
        group = field.annotation
        if isinstance(group, type) and issubclass(group, BaseModel):
            known |= {f"{name}_{member}" for member in group.model_fields}
    prefix = Settings.model_config.get("env_prefix", "")
    return sorted(
        variable
        for variable in environ
        if variable.upper().startswith(prefix)
        and not variable.upper().startswith(TOOL_VARIABLE_PREFIXES)
        and variable[len(prefix) :].lower() not in known
    )
