"""The README's settings table, rendered from the settings model: `python -m scripts.settings_doc`.

Writes the table between the `<!-- settings:start -->` and `<!-- settings:end -->` markers of README.md;
with `--check` it changes nothing and exits 1 when the README is out of date (tests/test_readme.py runs
that). Names, types and defaults come from `medialens_shared.settings`; the descriptions live here, and a
setting without one (or a description of a setting that is gone) is an error.
"""

from __future__ import annotations

import argparse
import sys
import types
import typing
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from pydantic import BaseModel, SecretStr
from pydantic.fields import FieldInfo

from medialens_shared.settings import POOL_DEFAULTS, WORKER_POOL_DEFAULT, Settings

README = Path(__file__).resolve().parents[1] / "README.md"
START, END = "<!-- settings:start -->", "<!-- settings:end -->"

_GATEWAY_POOL, _RELAY_POOL = POOL_DEFAULTS["gateway"], POOL_DEFAULTS["relay"]

DESCRIPTIONS: dict[str, str] = {
    "MEDIALENS_ENVIRONMENT": "`production` refuses development defaults (guest broker account, default "
    "database URL) and skips the dev API keys.",
    "MEDIALENS_POSTGRES_URL": "URL of the PostgreSQL database, read with SQLAlchemy's asyncpg driver: "
    "`postgresql+asyncpg://`, or `postgresql://` / `postgres://` as providers give them. TLS: `?ssl=` or "
    "libpq's `?sslmode=` (`disable`, `allow`, `prefer`, `require`, `verify-ca`, `verify-full`; the CA file "
    "in `PGSSLROOTCERT`). Another scheme or driver, or a query parameter asyncpg does not take, stops the "
    "start.",
    "MEDIALENS_POSTGRES_POOL_SIZE": "Connections each process keeps open, its sessions' pool and its bare "
    f"statements' pool together; unset: gateway {_GATEWAY_POOL[0]}, relay {_RELAY_POOL[0]}, each service "
    f"{WORKER_POOL_DEFAULT[0]} (see Sizing the PostgreSQL pools).",
    "MEDIALENS_POSTGRES_MAX_OVERFLOW": "Extra connections a process may open under load; unset: gateway "
    f"{_GATEWAY_POOL[1]}, relay {_RELAY_POOL[1]}, each service {WORKER_POOL_DEFAULT[1]}.",
    "MEDIALENS_POSTGRES_POOL_TIMEOUT": "Seconds to wait for a free pooled connection before failing.",
    "MEDIALENS_POSTGRES_POOL_RECYCLE": "Seconds after which a connection is replaced (-1: never).",
    "MEDIALENS_POSTGRES_POOL_PRE_PING": "Check a connection before handing it out.",
    "MEDIALENS_POSTGRES_CONNECT_TIMEOUT": "Seconds to wait for a new connection.",
    "MEDIALENS_MONGODB_URL": "MongoDB URL, `mongodb://` or `mongodb+srv://` (GridFS uploads and results). "
    "`make dev` and the tests start a local nx-27017 server when nothing answers on 27017; the services "
    "themselves connect to this URL only.",
    "MEDIALENS_MONGODB_DATABASE": "MongoDB database name.",
    "MEDIALENS_MONGODB_MAX_POOL_SIZE": "Most connections each process opens to MongoDB.",
    "MEDIALENS_MONGODB_MIN_POOL_SIZE": "Connections each process keeps open to MongoDB.",
    "MEDIALENS_MONGODB_TIMEOUT_MS": "Server selection and connect timeout, in milliseconds.",
    "MEDIALENS_REDIS_URL": "Redis URL, `redis://`, `rediss://` (TLS) or `unix://` (progress, job events, "
    "cancellation).",
    "MEDIALENS_REDIS_MAX_CONNECTIONS": "Most connections each process opens to Redis.",
    "MEDIALENS_REDIS_SOCKET_TIMEOUT": "Seconds a Redis command may take.",
    "MEDIALENS_REDIS_PREFIX": "Prefix of every key and channel, so several stacks (or test runs) can share "
    "one server.",
    "MEDIALENS_RABBITMQ_URL": "AMQP URL of RabbitMQ, `amqp://` or `amqps://` (TLS), vhost included.",
    "MEDIALENS_RABBITMQ_EXCHANGE": "Topic exchange of the jobs; queues are named after it.",
    "MEDIALENS_RABBITMQ_DELIVERY_LIMIT": "Deliveries after which a message that keeps failing goes to the "
    "dead-letter queue.",
    "MEDIALENS_RABBITMQ_PREFETCH": "Deliveries a service holds unacked: those waiting for one of its "
    "`MEDIALENS_WORKER_CONCURRENCY` slots (a running job's delivery is acked at its claim); unset: one per "
    "slot. Keep it low for long media jobs (a delivery waiting past the broker's consumer timeout closes "
    "the channel).",
    "MEDIALENS_RABBITMQ_PUBLISH_TIMEOUT": "Seconds to wait for the broker to confirm a publish.",
    "MEDIALENS_GATEWAY_HOST": "Address the gateway listens on (`0.0.0.0` in containers).",
    "MEDIALENS_GATEWAY_PORT": "Port the gateway listens on.",
    "MEDIALENS_GATEWAY_MAX_UPLOAD_BYTES": "Largest upload accepted (413 beyond, checked while streaming).",
    "MEDIALENS_GATEWAY_IDEMPOTENCY_TTL_S": "How long an Idempotency-Key is remembered.",
    "MEDIALENS_GATEWAY_CALLBACK_ALLOW_HTTP": "Allow `http://` callback URLs (development against a local "
    "receiver).",
    "MEDIALENS_GATEWAY_CALLBACK_ALLOW_PRIVATE": "Allow callback URLs on private, loopback or link-local "
    "addresses (never in production).",
    "MEDIALENS_GATEWAY_HEALTH_TIMEOUT_S": "Budget of each readiness check, in seconds.",
    "MEDIALENS_GATEWAY_ACCESS_LOG": "Log one line per request (uvicorn's access log); off by default, the "
    "HTTP metrics count requests.",
    "MEDIALENS_GATEWAY_TENANT_RATE_LIMIT": "Each tenant's request rate per gateway process, e.g. "
    "`100/second;3000/minute` (empty: no limit); past it, 429 RATE_LIMITED with Retry-After.",
    "MEDIALENS_GATEWAY_MAX_IN_FLIGHT": "Requests one gateway process serves at once (health checks aside); "
    "past it, 503 SERVICE_UNAVAILABLE with Retry-After (0: no bound).",
    "MEDIALENS_GATEWAY_EVENT_STREAMS_PER_TENANT": "Live-progress streams (`GET /v1/jobs/{id}/events`) one "
    "tenant may hold open on one gateway process; one more: 429 RATE_LIMITED with Retry-After. Open streams "
    "count toward the in-flight bound, so this keeps one tenant from taking every slot (0: no bound).",
    "MEDIALENS_GATEWAY_KEY_CACHE_TTL_S": "Seconds a gateway process trusts an API key it verified before it "
    "looks it up again, so a busy client costs no database round trip per request: a revoked key is refused "
    "within this time (0: every request looks it up).",
    "MEDIALENS_RELAY_BATCH_SIZE": "Outbox entries the relay publishes per round.",
    "MEDIALENS_RELAY_POLL_INTERVAL_S": "Seconds between two looks at the outbox when it is empty, unless a "
    "gateway's nudge comes first (a fallback: a submission nudges the relays).",
    "MEDIALENS_RELAY_BUSY_POLL_INTERVAL_S": "Seconds between two looks at the outbox after a round that "
    "published something (a burst of submissions is likely going on), unless a nudge comes first.",
    "MEDIALENS_RELAY_NUDGE_INTERVAL_S": "A gateway process wakes the relays (a Redis message) as soon as it "
    "has written an outbox entry, then at most once this often while it keeps writing: an idle system "
    "publishes a job within milliseconds. A relay starts rounds that publish at most once this often.",
    "MEDIALENS_RELAY_REAP_INTERVAL_S": "How often the relay looks for running jobs whose lease ran out.",
    "MEDIALENS_RELAY_SENT_RETENTION_S": "How long a sent outbox entry is kept (its send time gives the relay "
    "lag; handy when tracing a job) before the relay deletes it, so the table does not grow with every job "
    "ever submitted; 0 keeps every entry.",
    "MEDIALENS_RELAY_REPUBLISH_AFTER_S": "A job still queued this many seconds after it was queued is "
    "published again, in case its message was lost after the broker took it (a queue purged by hand, a "
    "dead-letter hop dropped); its duplicate, should the first message still come, is skipped. Longer than "
    "the longest retry delay (600 s), or 0: never.",
    "MEDIALENS_RELAY_JOB_RETENTION_S": "A finished job (succeeded, failed or cancelled) is deleted this many "
    "seconds after it finished, with its result, its parts (a composite job's) and the files it made "
    "(thumbnails, converted tables); its input upload stays, and a job owing a webhook waits for it. The "
    "row a deleted file leaves goes that long after its delete. 0: every job and row is kept (e.g. 2592000 "
    "keeps 30 days).",
    "MEDIALENS_WEBHOOK_MAX_ATTEMPTS": "Tries of a webhook delivery that keeps meeting 408, 429, 5xx or "
    "network errors before it is marked failed (any other answer, a redirect or another 4xx, fails at once).",
    "MEDIALENS_WEBHOOK_TIMEOUT_S": "Budget of one delivery try, in seconds: resolving the host, connecting, "
    "sending and reading the status.",
    "MEDIALENS_WEBHOOK_BACKOFF_BASE_S": "Wait before a delivery's second try, in seconds; each later wait "
    "doubles (with jitter) up to the cap.",
    "MEDIALENS_WEBHOOK_BACKOFF_CAP_S": "Longest wait between two tries of a delivery, in seconds.",
    "MEDIALENS_WEBHOOK_BATCH_SIZE": "Webhook deliveries one relay round sends at once.",
    "MEDIALENS_WORKER_HTTP_PORT": "Port of /health/live, /health/ready and /metrics of a service or the "
    "relay (unset: video 8101, audio 8102, data 8103, relay 8104; 0: any free port).",
    "MEDIALENS_WORKER_HTTP_HOST": "Address those endpoints listen on (`0.0.0.0` in a container, so probes "
    "reach them).",
    "MEDIALENS_WORKER_SHUTDOWN_GRACE_S": "Seconds a stopping service waits for its running job to finish "
    "before it releases the job's lease.",
    "MEDIALENS_WORKER_NAME": "A name the process keeps across restarts (in Kubernetes, the pod's name): "
    "one started under the name of one that died hands back that one's running jobs at once instead of "
    "after their leases. Unset: the host's name, and nothing is handed back at start.",
    "MEDIALENS_WORKER_CONCURRENCY": "Jobs a service runs at once (1 or 2 for the heavy media queues; each "
    "service's process sets its own).",
    "MEDIALENS_WORKER_MEMORY_TRIM_S": "At most this often, and only after a job ended, a service gives the "
    "memory its decoders freed back to the system (glibc's `malloc_trim`); 0: never.",
    "MEDIALENS_WORKER_CONSUMER_CHECK_S": "Seconds between two checks, on the broker, that the service's "
    "consumer is attached (readiness runs the same check).",
    "MEDIALENS_WORKER_CONSUMER_LOST_S": "A service whose consumer stays gone this long (the client did not "
    "restore it) stops and exits with code 75, for its orchestrator to start a fresh one; a service or the "
    "relay that RabbitMQ refused at start (login or virtual host) this long exits with code 78.",
    "MEDIALENS_WORKER_PROGRESS_INTERVAL_S": "Minimum seconds between two progress writes of one job.",
    "MEDIALENS_WORKER_SCRATCH_DIR": "Where a job's scratch directory is made, and its input copied for it "
    "alone when the input cache does not keep it (larger than the cache, or not matching its hash); both "
    "removed when the job ends (default: the system's temporary directory).",
    "MEDIALENS_WORKER_INPUT_CACHE_BYTES": "Disk space for job inputs kept by content hash, so that a file "
    "analysed again is not read from GridFS again (least recently used out; an input a running job reads "
    "stays, so the cache may hold more meanwhile); 0 keeps none.",
    "MEDIALENS_WORKER_INPUT_CACHE_DIR": "Where those inputs are kept, in a directory of the process removed "
    "at its stop (default: the system's temporary directory); jobs read their input there, in place, "
    "under their upload's name (a hard link per name).",
    "MEDIALENS_WORKER_LEASE_S": "How long a claimed job stays its worker's without a heartbeat (beats come "
    "every third of it); a job whose worker died runs again within this plus the relay's reap interval.",
    "MEDIALENS_WORKER_MAX_ATTEMPTS": "Tries of a job that keeps meeting passing faults before it fails with "
    "RETRIES_EXHAUSTED.",
    "MEDIALENS_WORKER_TABLE_MEMORY_LIMIT": "Memory a table job's engine (DuckDB) may use before it spills "
    "to the scratch directory.",
    "MEDIALENS_WORKER_TABLE_THREADS": "Threads a table job's engine may use.",
    "MEDIALENS_WORKER_TABLE_SPILL_LIMIT": "The most a table job's engine may spill to the scratch directory "
    "(a job past it fails as needing more memory than a job may use); unset: DuckDB's own bound, 90% of that "
    "disk's free space. Set it in a pod, whose scratch volume is smaller than the node's disk.",
    "MEDIALENS_WORKER_QUERY_TIME_LIMIT_S": "A data.query whose SQL runs longer than this fails with TIMEOUT.",
    "MEDIALENS_WORKER_QUERY_MAX_ANSWER_BYTES": (
        "Bytes of Parquet a data.query's answer may be stored as (a few bytes of SQL can ask for gigabytes); "
        "a larger answer is stopped while it is written and fails with INVALID_PARAMS."
    ),
    "MEDIALENS_WORKER_JOB_TIMEOUT_S": (
        "A job running longer than this, its input's fetch included, fails with TIMEOUT."
    ),
    "MEDIALENS_DEV_API_KEYS": "`tenant:key,tenant:key` pairs the gateway ensures exist at start "
    "(development and test only).",
    "MEDIALENS_LOG_LEVEL": "Log level of every process.",
    "MEDIALENS_LOG_FORMAT": "`text` (readable lines) or `json` (one object per line, for log collectors); "
    "unset: `json` in production, `text` elsewhere.",
}


def type_name(annotation: object) -> str:
    """`int`, `str | None`, `Literal['text', 'json']`..., as a reader would write them."""
    if annotation is SecretStr:
        return "str (secret)"
    if annotation is type(None):
        return "None"
    if isinstance(annotation, type) and not typing.get_args(annotation):
        return annotation.__name__
    if isinstance(annotation, types.UnionType):
        return " | ".join(type_name(arg) for arg in typing.get_args(annotation))
    return str(annotation).replace("typing.", "")


def default_text(value: object) -> str:
    if isinstance(value, SecretStr):
        value = mask_password(value.get_secret_value())
    if value is None:
        return "(unset)"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    return f"`{value}`"


def mask_password(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":****@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def settings_fields() -> list[tuple[str, FieldInfo]]:
    """Every setting as (environment variable, field), in the model's order."""
    fields: list[tuple[str, FieldInfo]] = []
    for group, info in Settings.model_fields.items():
        model = info.annotation
        if isinstance(model, type) and issubclass(model, BaseModel):
            fields += [(f"MEDIALENS_{group}_{name}".upper(), sub) for name, sub in model.model_fields.items()]
        else:
            fields.append((f"MEDIALENS_{group}".upper(), info))
    return fields


def render_table() -> str:
    rows = ["| Variable | Type | Default | Description |", "|---|---|---|---|"]
    for variable, info in settings_fields():
        description = DESCRIPTIONS.get(variable, "")
        cells = [f"`{variable}`", type_name(info.annotation), default_text(info.default), description]
        rows.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    return "\n".join(rows)


def problems() -> list[str]:
    """Settings without a description, and descriptions of settings that no longer exist."""
    names = [variable for variable, _ in settings_fields()]
    found = [f"{name} is not described in DESCRIPTIONS" for name in names if name not in DESCRIPTIONS]
    found += [f"{name} is described but is no setting" for name in DESCRIPTIONS if name not in names]
    return found


def render_readme(text: str) -> str:
    """`text` with the table between the markers replaced by the current one."""
    head, start, rest = text.partition(START)
    _, end, tail = rest.partition(END)
    if not start or not end:
        raise ValueError(f"README.md needs the markers {START} and {END}")
    return f"{head}{START}\n{render_table()}\n{END}{tail}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.settings_doc", description=__doc__)
    parser.add_argument("--check", action="store_true", help="exit 1 if README.md is out of date")
    args = parser.parse_args(argv)
    text = README.read_text(encoding="utf-8")
    wanted = render_readme(text)
    found = problems()
    for problem in found:
        print(problem, file=sys.stderr)
    if args.check:
        if wanted != text:
            print("README.md's settings table is out of date: run `uv run python -m scripts.settings_doc`")
            return 1
        return 1 if found else 0
    if wanted != text:
        README.write_text(wanted, encoding="utf-8")
        print("README.md's settings table updated")
    return 1 if found else 0


if __name__ == "__main__":
    raise SystemExit(main())
