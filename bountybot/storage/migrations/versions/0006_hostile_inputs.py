"""hostile inputs: a delivery's topic (applied in order per issue), links from other repos,
private repos

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("delivery") as batch:
        batch.add_column(sa.Column("topic", sa.String(length=255), nullable=True))
    op.create_index(op.f("ix_delivery_topic_id"), "delivery", ["topic", "id"])
    with op.batch_alter_table("link") as batch:
        batch.add_column(sa.Column("repo_path", sa.String(length=512), nullable=False,
                                   server_default=""))
        batch.drop_constraint("uq_link_task_id_number", type_="unique")
        batch.create_unique_constraint(op.f("uq_link_task_id_repo_path_number"),
                                       ["task_id", "repo_path", "number"])
    with op.batch_alter_table("repo") as batch:
        batch.add_column(sa.Column("private", sa.Boolean(), nullable=False,
                                   server_default=sa.false()))
        batch.add_column(sa.Column("published", sa.Boolean(), nullable=False,
                                   server_default=sa.false()))


def downgrade() -> None:
    with op.batch_alter_table("repo") as batch:
        batch.drop_column("published")
        batch.drop_column("private")
    with op.batch_alter_table("link") as batch:
        batch.drop_constraint("uq_link_task_id_repo_path_number", type_="unique")
        batch.create_unique_constraint("uq_link_task_id_number", ["task_id", "number"])
        batch.drop_column("repo_path")
    op.drop_index(op.f("ix_delivery_topic_id"), table_name="delivery")
    with op.batch_alter_table("delivery") as batch:
        batch.drop_column("topic")
