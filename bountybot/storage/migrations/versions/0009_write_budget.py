"""write budget: the start times of the forge writes of the last hour, per governor key, so
that every replica on PostgreSQL draws on one write budget per installation or token

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | Sequence[str] | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "write_budget",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("key", sa.String(length=255), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_write_budget")),
    )
    op.create_index(op.f("ix_write_budget_key_started_at"), "write_budget",
                    ["key", "started_at"])


def downgrade() -> None:
    op.drop_index(op.f("ix_write_budget_key_started_at"), table_name="write_budget")
    op.drop_table("write_budget")
