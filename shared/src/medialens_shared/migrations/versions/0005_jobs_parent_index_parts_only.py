"""The parent index holds the parts of composite jobs only.

Most jobs are no part of a composite job: every one of them had an entry under NULL in `ix_jobs_parent`,
updated at each of its status changes. Worse, a worker's claim and end select `id = ANY(...) AND parent_id
IS NULL`, and without statistics (a young table, before autovacuum's first analyze) the planner combined
the primary key with this index, reading every NULL entry for each statement: 35,000 entries per claim in
the benchmark, a cost growing with the table. Partial, the index cannot serve `parent_id IS NULL` and still
serves `parent_id = x` (a composite job's parts, the foreign key's ON DELETE SET NULL).

Built concurrently (writes go on meanwhile), then swapped in under the old name. Each step may run again
after an interruption: a build cut short leaves an invalid index behind, dropped before the next build.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    _swap("ix_jobs_parent_parts", where="parent_id IS NOT NULL")


def downgrade() -> None:
    _swap("ix_jobs_parent_all", where=None)


def _swap(building: str, *, where: str | None) -> None:
    """Build `building` on jobs.parent_id concurrently, then put it in `ix_jobs_parent`'s place."""
    with op.get_context().autocommit_block():
        op.drop_index(building, table_name="jobs", postgresql_concurrently=True, if_exists=True)
        op.create_index(
            building,
            "jobs",
            ["parent_id"],
            postgresql_where=sa.text(where) if where else None,
            postgresql_concurrently=True,
        )
        op.drop_index("ix_jobs_parent", table_name="jobs", postgresql_concurrently=True, if_exists=True)
    op.execute(f"ALTER INDEX {building} RENAME TO ix_jobs_parent")
