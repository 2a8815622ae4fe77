"""jobs.callback_sent_at: the webhook outbox's re-send clock

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01 13:40:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("callback_sent_at", sa.DateTime(timezone=True), nullable=True))
    # Pending webhooks are found by this state; the index keeps the sweeper's look-up cheap.
    op.create_index(
        "ix_jobs_callback_pending",
        "jobs",
        ["callback_status"],
        postgresql_where=sa.text("callback_status = 'pending'"),
        sqlite_where=sa.text("callback_status = 'pending'"),
    )


def downgrade() -> None:
    op.drop_index("ix_jobs_callback_pending", table_name="jobs")
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("callback_sent_at")
