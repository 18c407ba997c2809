"""The PostgreSQL tables, as SQLAlchemy Core metadata; Alembic's migrations create them.

PostgreSQL holds what must be transactional: tenants and keys, file metadata, jobs and their status, the
outbox, idempotency keys and webhook deliveries. File bytes live in GridFS and results in MongoDB.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    SmallInteger,
    Table,
    Text,
    false,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(column_0_label)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)


#: The jobs `Relay.expire_jobs` may delete once past their retention, those `ix_jobs_finished` holds: the
#: finished ones (the terminal statuses of `contracts.TERMINAL_STATUSES`) that are no part of another.
FINISHED_JOBS = "parent_id IS NULL AND status IN ('cancelled', 'failed', 'succeeded')"


def _created_at() -> Column[object]:
    return Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now())


tenants = Table(
    "tenants",
    metadata,
    Column("id", Text, primary_key=True),
    Column("name", Text, nullable=False),
    Column("webhook_secret", Text, nullable=False),
    _created_at(),
)

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("tenant_id", Text, ForeignKey("tenants.id", ondelete="CASCADE"), nullable=False),
    # SHA-256 of the key: keys are long random tokens, so a fast hash is enough and lookups stay O(1).
    Column("key_hash", Text, nullable=False, unique=True),
    Column("revoked_at", DateTime(timezone=True)),
    _created_at(),
)

files = Table(
    "files",
    metadata,
    Column("id", Text, primary_key=True),
    Column("tenant_id", Text, ForeignKey("tenants.id", ondelete="CASCADE"), nullable=False),
    Column("filename", Text, nullable=False),
    Column("content_type", Text, nullable=False),
    Column("size_bytes", BigInteger, nullable=False),
    Column("sha256", Text, nullable=False),
    Column("kind", Text, nullable=False),
    Column("storage_id", Text, nullable=False),
    Column("job_id", Text),
    Column("deleted_at", DateTime(timezone=True)),
    _created_at(),
    Index("ix_files_tenant_created", "tenant_id", text("created_at DESC"), text("id DESC")),
    # The files jobs made, found by their job when it expires (`Relay.expire_jobs`): see migration 0007.
    Index("ix_files_job", "job_id", postgresql_where=text("job_id IS NOT NULL")),
    # The rows of deleted files, removed past the retention (`Relay.purge_deleted_files`): migration 0008.
    Index("ix_files_deleted", "deleted_at", postgresql_where=text("deleted_at IS NOT NULL")),
)

jobs = Table(
    "jobs",
    metadata,
    Column("id", Text, primary_key=True),
    Column("tenant_id", Text, ForeignKey("tenants.id", ondelete="CASCADE"), nullable=False),
    Column("type", Text, nullable=False),
    Column("status", Text, nullable=False),
    Column("progress", Float, nullable=False, server_default=text("0")),
    Column("message", Text, nullable=False, server_default=text("''")),
    Column("file_id", Text),
    Column("params", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
    Column("labels", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
    Column("priority", SmallInteger, nullable=False, server_default=text("5")),
    Column("attempts", Integer, nullable=False, server_default=text("0")),
    Column("error_code", Text),
    Column("error_message", Text),
    Column("callback_url", Text),
    Column("parent_id", Text, ForeignKey("jobs.id", ondelete="SET NULL")),
    # The worker that claimed the running job, and until when its claim holds unless its heartbeat extends
    # it; the reaper requeues a running job whose lease ran out (its worker died or hung).
    Column("worker", Text),
    Column("lease_expires_at", DateTime(timezone=True)),
    _created_at(),
    Column("started_at", DateTime(timezone=True)),
    Column("finished_at", DateTime(timezone=True)),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Index("ix_jobs_tenant_created", "tenant_id", text("created_at DESC"), text("id DESC")),
    # The parts of composite jobs only: see migration 0005.
    Index("ix_jobs_parent", "parent_id", postgresql_where=text("parent_id IS NOT NULL")),
    Index("ix_jobs_running_lease", "lease_expires_at", postgresql_where=text("status = 'running'")),
    # The relay's backstop looks for jobs queued too long (`Relay.republish_stale`): see migration 0006.
    Index(
        "ix_jobs_queued_since",
        "updated_at",
        postgresql_where=text("status = 'queued' AND type <> 'media.analyze'"),
    ),
    # The relay deletes jobs finished past their retention (`Relay.expire_jobs`): see migration 0007.
    Index(
        "ix_jobs_finished",
        "finished_at",
        postgresql_where=text(FINISHED_JOBS),
    ),
)

outbox = Table(
    "outbox",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("job_id", Text, nullable=False),
    Column("routing_key", Text, nullable=False),
    Column("payload", JSONB, nullable=False),
    Column("headers", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
    # Seconds the message waits in a delay queue before it reaches its service (a retry's backoff).
    Column("delay_s", Integer, nullable=False, server_default=text("0")),
    # True: the message goes to the dead-letter exchange (a job given up on), for operators to see.
    Column("dead", Boolean, nullable=False, server_default=false()),
    Column("attempts", Integer, nullable=False, server_default=text("0")),
    Column("last_error", Text),
    Column("sent_at", DateTime(timezone=True)),
    _created_at(),
    Index("ix_outbox_unsent", "id", postgresql_where=text("sent_at IS NULL")),
    Index("ix_outbox_sent", "sent_at", postgresql_where=text("sent_at IS NOT NULL")),
)

idempotency_keys = Table(
    "idempotency_keys",
    metadata,
    Column("tenant_id", Text, ForeignKey("tenants.id", ondelete="CASCADE"), nullable=False),
    Column("key", Text, nullable=False),
    Column("request_hash", Text, nullable=False),
    Column("job_id", Text, ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False),
    _created_at(),
    PrimaryKeyConstraint("tenant_id", "key"),
    # For the cascade when a job is deleted (its retention): see migration 0007.
    Index("ix_idempotency_keys_job", "job_id"),
)

webhook_deliveries = Table(
    "webhook_deliveries",
    metadata,
    # The delivery id, sent as X-MediaLens-Delivery: a receiver drops a delivery it has seen already.
    Column("id", Text, primary_key=True),
    Column("job_id", Text, ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False),
    Column("tenant_id", Text, ForeignKey("tenants.id", ondelete="CASCADE"), nullable=False),
    Column("url", Text, nullable=False),
    # pending -> delivering -> succeeded | failed, or back to pending for a retry. A `delivering` row whose
    # next_attempt_at has passed was claimed by a relay that stopped mid-send: it is claimed again.
    Column("status", Text, nullable=False, server_default=text("'pending'")),
    Column("attempts", Integer, nullable=False, server_default=text("0")),
    Column("next_attempt_at", DateTime(timezone=True), server_default=func.now()),
    Column("last_status_code", Integer),
    Column("last_error", Text),
    # The job object at its terminal status: every try (and a redelivery) sends these same bytes.
    Column("payload", JSONB, nullable=False),
    _created_at(),
    Column("delivered_at", DateTime(timezone=True)),
    Index("ix_webhook_deliveries_due", "status", "next_attempt_at"),
    Index("ix_webhook_deliveries_job", "job_id", "created_at"),
)
