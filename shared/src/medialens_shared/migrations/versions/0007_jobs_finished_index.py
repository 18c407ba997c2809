"""An index of the finished jobs by the time they finished, for the relay's retention, and of what refers
to a job, for deleting it.

`Relay.expire_jobs` looks, every reaping round while `relay.job_retention_s` is set, for the jobs finished
longer ago than that, oldest first. Partial, the index holds only the finished jobs that are no part of
another (a composite job's parts go with it): the look reads the few entries past the retention, however
many jobs the table holds. A job enters the index when it ends (an update that already changes indexed
columns: its status and `updated_at`), and leaves it when it is deleted.

Deleting a job looks up what refers to it: the files it made (by `files.job_id`, no foreign key) and, for
the cascades, its idempotency keys and webhook deliveries. The deliveries have an index by job (migration
0003); the other two had none, so each deleted job would read those tables whole: two more indexes serve
them (the files' only over the files a job made, not the uploads). They cost the insert of a made file or
of a submission's Idempotency-Key one index entry each.

A worker's claim and a job's end select jobs by id and a status (queued, running) that the predicate
excludes, so the planner cannot read this index for them (the young-table pathology of migration 0005).

Built concurrently (writes go on meanwhile); a build cut short leaves an invalid index behind, dropped
before the next try.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

#: As `tables.FINISHED_JOBS` when this revision was written (a migration does not follow later code).
FINISHED_JOBS = "parent_id IS NULL AND status IN ('cancelled', 'failed', 'succeeded')"


#: (name, table, column, predicate or None) of each index this revision builds.
INDEXES = (
    ("ix_jobs_finished", "jobs", "finished_at", FINISHED_JOBS),
    ("ix_files_job", "files", "job_id", "job_id IS NOT NULL"),
    ("ix_idempotency_keys_job", "idempotency_keys", "job_id", None),
)


def upgrade() -> None:
    with op.get_context().autocommit_block():
        for name, table, column, predicate in INDEXES:
            op.drop_index(name, table_name=table, postgresql_concurrently=True, if_exists=True)
            op.create_index(
                name,
                table,
                [column],
                postgresql_where=sa.text(predicate) if predicate else None,
                postgresql_concurrently=True,
            )


def downgrade() -> None:
    with op.get_context().autocommit_block():
        for name, table, _, _ in INDEXES:
            op.drop_index(name, table_name=table, postgresql_concurrently=True, if_exists=True)
