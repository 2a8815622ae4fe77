"""operating points: thresholds on jobs and tenants, and room for the "uncertain" verdict

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-02 15:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

WIDENED = (("job_items", "prediction"), ("feedback", "verdict"))


def upgrade() -> None:
    for table in ("jobs", "tenants"):
        op.add_column(table, sa.Column("fake_threshold", sa.Float(), nullable=True))
        op.add_column(table, sa.Column("real_threshold", sa.Float(), nullable=True))
    for table, column in WIDENED:
        with op.batch_alter_table(table) as batch:
            batch.alter_column(
                column,
                type_=sqlmodel.sql.sqltypes.AutoString(length=16),
                existing_type=sqlmodel.sql.sqltypes.AutoString(length=8),
                existing_nullable=True,
            )


def downgrade() -> None:
    for table, column in WIDENED:
        with op.batch_alter_table(table) as batch:
            batch.alter_column(
                column,
                type_=sqlmodel.sql.sqltypes.AutoString(length=8),
                existing_type=sqlmodel.sql.sqltypes.AutoString(length=16),
                existing_nullable=True,
            )
    for table in ("tenants", "jobs"):
        op.drop_column(table, "real_threshold")
        op.drop_column(table, "fake_threshold")
