"""model_versions and shadow_scores: the registry of fine-tuned detectors, one promoted at a time

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-02 23:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision: str = "0017"
down_revision: str | None = "0016"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    text = sqlmodel.sql.sqltypes.AutoString
    op.create_table(
        "model_versions",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("version", text(length=64), nullable=False),
        sa.Column("base_version", text(length=64), nullable=True),
        sa.Column("status", text(length=16), nullable=False),
        sa.Column("source", text(length=2048), nullable=False),
        sa.Column("data_fingerprint", text(length=64), nullable=True),
        sa.Column("recipe", sa.JSON(), nullable=False),
        sa.Column("command", text(length=2048), nullable=True),
        sa.Column("requested_by", text(length=255), nullable=False),
        sa.Column("progress", sa.JSON(), nullable=False),
        sa.Column("metrics", sa.JSON(), nullable=False),
        sa.Column("model_version", text(length=255), nullable=True),
        sa.Column("shadowing", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("error", text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("promoted_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("version"),
    )
    op.create_index(
        "uq_model_versions_promoted",
        "model_versions",
        ["status"],
        unique=True,
        postgresql_where=sa.text("status = 'promoted'"),
        sqlite_where=sa.text("status = 'promoted'"),
    )
    op.create_table(
        "shadow_scores",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("version", text(length=64), nullable=False),
        sa.Column("item_id", sa.Uuid(), nullable=False),
        sa.Column("live_version", text(length=255), nullable=True),
        sa.Column("live_probability", sa.Float(), nullable=False),
        sa.Column("fake_probability", sa.Float(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["item_id"], ["job_items.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("version", "item_id", name="uq_shadow_scores_version_item"),
    )
    op.create_index("ix_shadow_scores_version", "shadow_scores", ["version"])


def downgrade() -> None:
    op.drop_index("ix_shadow_scores_version", table_name="shadow_scores")
    op.drop_table("shadow_scores")
    op.drop_index("uq_model_versions_promoted", table_name="model_versions")
    op.drop_table("model_versions")
