"""time and recovery: claim reminders, payout release and disputes, handled comments, sync cursors

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-23
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("claim") as batch:
        batch.add_column(sa.Column("remind_at", sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table("payout") as batch:
        batch.add_column(sa.Column("released_at", sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table("task") as batch:
        batch.add_column(sa.Column("disputed_by", sa.String(length=255), nullable=True))
        batch.add_column(sa.Column("dispute_reason", sa.Text(), nullable=True))
        batch.add_column(sa.Column("disputed_at", sa.DateTime(timezone=True), nullable=True))
    # Payouts created before release times existed were due at once.
    payout = sa.table("payout", sa.column("released_at", sa.DateTime(timezone=True)),
                      sa.column("created_at", sa.DateTime(timezone=True)))
    op.get_bind().execute(payout.update().values(released_at=payout.c.created_at))
    op.create_table(
        "handled_comment",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("forge", sa.String(length=16), nullable=False),
        sa.Column("comment_id", sa.String(length=64), nullable=False),
        sa.Column("revision", sa.String(length=255), nullable=False, server_default=""),
        sa.Column("task_id", sa.Integer(), nullable=True),
        sa.Column("handled_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["task_id"], ["task.id"],
                                name=op.f("fk_handled_comment_task_id_task")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_handled_comment")),
        sa.UniqueConstraint("forge", "comment_id", "revision",
                            name=op.f("uq_handled_comment_forge_comment_id_revision")),
    )
    op.create_table(
        "sync_cursor",
        sa.Column("repo_id", sa.Integer(), nullable=False),
        sa.Column("since", sa.DateTime(timezone=True), nullable=True),
        sa.Column("etags", sa.JSON(), nullable=False),
        sa.Column("leased_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("lease_owner", sa.String(length=64), nullable=True),
        sa.Column("synced_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(["repo_id"], ["repo.id"], name=op.f("fk_sync_cursor_repo_id_repo")),
        sa.PrimaryKeyConstraint("repo_id", name=op.f("pk_sync_cursor")),
    )
    op.create_index(op.f("ix_claim_state_expires_at"), "claim", ["state", "expires_at"])
    op.create_index(op.f("ix_payout_state_released_at"), "payout", ["state", "released_at"])


def downgrade() -> None:
    op.drop_index(op.f("ix_payout_state_released_at"), table_name="payout")
    op.drop_index(op.f("ix_claim_state_expires_at"), table_name="claim")
    op.drop_table("sync_cursor")
    op.drop_table("handled_comment")
    with op.batch_alter_table("task") as batch:
        batch.drop_column("disputed_at")
        batch.drop_column("dispute_reason")
        batch.drop_column("disputed_by")
    with op.batch_alter_table("payout") as batch:
        batch.drop_column("released_at")
    with op.batch_alter_table("claim") as batch:
        batch.drop_column("remind_at")
