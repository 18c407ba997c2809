"""Job leases (a claimed job's owner and lease) and delayed outbox entries (retries with backoff).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("worker", sa.Text))
    op.add_column("jobs", sa.Column("lease_expires_at", sa.DateTime(timezone=True)))
    op.create_index(
        "ix_jobs_running_lease", "jobs", ["lease_expires_at"], postgresql_where=sa.text("status = 'running'")
    )
    op.add_column("outbox", sa.Column("delay_s", sa.Integer, nullable=False, server_default=sa.text("0")))
    op.add_column("outbox", sa.Column("dead", sa.Boolean, nullable=False, server_default=sa.false()))


def downgrade() -> None:
    op.drop_column("outbox", "dead")
    op.drop_column("outbox", "delay_s")
    op.drop_index("ix_jobs_running_lease", table_name="jobs")
    op.drop_column("jobs", "lease_expires_at")
    op.drop_column("jobs", "worker")
