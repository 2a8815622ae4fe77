"""job_items.status no longer indexed: every chunk's statements go by primary key

The index on a handful of statuses was the planner's pick for a chunk's ``id IN (...) AND status =
'queued'`` updates (an estimate of a few rows), and a scan of it visits every 'queued' entry in the
table, the dead versions of items long finished included until a vacuum removes them: each chunk cost
more than the one before (four times the Postgres CPU per image after twelve thousand items with
autovacuum off). Nothing else needs it: the sweeper reaches items through their job's state.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-02 02:40:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("job_items", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_job_items_status"))


def downgrade() -> None:
    with op.batch_alter_table("job_items", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_job_items_status"), ["status"], unique=False)
