"""job_items.source_url: images a caller names by URL, fetched by the workers

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-02 15:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision: str = "0016"
down_revision: str | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("job_items", sa.Column("source_url", sqlmodel.sql.sqltypes.AutoString(length=2048), nullable=True))


def downgrade() -> None:
    op.drop_column("job_items", "source_url")
