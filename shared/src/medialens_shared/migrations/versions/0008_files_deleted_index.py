"""An index of the deleted files by the time they were deleted, for the relay's retention.

`DELETE /v1/files/{id}` marks a file's row deleted and drops its bytes; the row stays, so that the jobs
that used the file still name it. With `relay.job_retention_s` set, `Relay.purge_deleted_files` removes the
rows deleted longer ago than that (and drops their bytes again, in case a gateway stopped between the two).
Partial, the index holds only the deleted files, oldest first for the look.

Built concurrently (writes go on meanwhile); a build cut short leaves an invalid index behind, dropped
before the next try.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.get_context().autocommit_block():
        op.drop_index("ix_files_deleted", table_name="files", postgresql_concurrently=True, if_exists=True)
        op.create_index(
            "ix_files_deleted",
            "files",
            ["deleted_at"],
            postgresql_where=sa.text("deleted_at IS NOT NULL"),
            postgresql_concurrently=True,
        )


def downgrade() -> None:
    with op.get_context().autocommit_block():
        op.drop_index("ix_files_deleted", table_name="files", postgresql_concurrently=True, if_exists=True)
