"""job_items.object_offset/object_length: an upload window's originals are stored as one shard object

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-01 16:50:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("job_items", schema=None) as batch_op:
        batch_op.add_column(sa.Column("object_offset", sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column("object_length", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("job_items", schema=None) as batch_op:
        batch_op.drop_column("object_length")
        batch_op.drop_column("object_offset")
