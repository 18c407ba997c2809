"""An index of the queued jobs by the time they were queued, for the relay's backstop.

`Relay.republish_stale` looks, every reaping round, for jobs still queued long after they were queued (their
message lost after the broker took it). Partial, the index holds only the queued jobs: a submission adds an
entry and its claim leaves it, and the look reads the few entries older than the threshold, however many
jobs the table holds.

Its predicate also leaves out the composite jobs (which the look skips: their parts are published, they are
not). That clause is what keeps a worker's claim off this index: the claim selects queued jobs by id, and
on a young table without statistics the planner would rather read an index of every queued job than the
primary key (as it did with the parent index, migration 0005); the claim says nothing of the type, so the
planner cannot use an index whose predicate needs it.

Built concurrently (writes go on meanwhile); a build cut short leaves an invalid index behind, dropped
before the next try.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.get_context().autocommit_block():
        op.drop_index("ix_jobs_queued_since", table_name="jobs", postgresql_concurrently=True, if_exists=True)
        op.create_index(
            "ix_jobs_queued_since",
            "jobs",
            ["updated_at"],
            postgresql_where=sa.text("status = 'queued' AND type <> 'media.analyze'"),
            postgresql_concurrently=True,
        )


def downgrade() -> None:
    with op.get_context().autocommit_block():
        op.drop_index("ix_jobs_queued_since", table_name="jobs", postgresql_concurrently=True, if_exists=True)
