"""a task remembers that the bot's label was seen on its issue (Forgejo sends an issue's whole
label list, so a removal is told from that memory)

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | Sequence[str] | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Tasks of before are GitHub's and GitLab's, whose label removals arrive as such: false
    # changes nothing for them.
    with op.batch_alter_table("task") as batch:
        batch.add_column(sa.Column("labelled", sa.Boolean(), nullable=False,
                                   server_default=sa.false()))


def downgrade() -> None:
    with op.batch_alter_table("task") as batch:
        batch.drop_column("labelled")
