"""payments: the calls to the payment provider (payment_op) and developers' payout accounts

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-23
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_INDEXES = (
    ("forge", "login"), ("payment_intent",), ("payout_id",), ("pledge_id",), ("refund_id",),
    ("session_id",), ("state", "next_attempt_at"), ("task_id",),
)


def _when(name: str, nullable: bool = False) -> sa.Column[Any]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def _text(name: str, length: int = 255) -> sa.Column[Any]:
    return sa.Column(name, sa.String(length=length), nullable=True)


def upgrade() -> None:
    op.create_table(
        "payout_account",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("forge", sa.String(length=16), nullable=False),
        sa.Column("login", sa.String(length=255), nullable=False),
        sa.Column("account_id", sa.String(length=255), nullable=False),
        sa.Column("ready", sa.Boolean(), nullable=False),
        _when("created_at"),
        _when("updated_at"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_payout_account")),
        sa.UniqueConstraint("account_id", name=op.f("uq_payout_account_account_id")),
        sa.UniqueConstraint("forge", "login", name=op.f("uq_payout_account_forge_login")),
    )
    op.create_table(
        "payment_op",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("state", sa.String(length=20), nullable=False),
        sa.Column("idempotency_key", sa.String(length=255), nullable=False),
        sa.Column("task_id", sa.Integer(), nullable=True),
        sa.Column("pledge_id", sa.Integer(), nullable=True),
        sa.Column("payout_id", sa.Integer(), nullable=True),
        sa.Column("repo_id", sa.Integer(), nullable=True),
        sa.Column("number", sa.Integer(), nullable=True),
        _text("comment_id", 64),
        _text("forge", 16),
        _text("login"),
        sa.Column("amount_minor", sa.BigInteger(), nullable=True),
        _text("currency", 3),
        _text("session_id"),
        _text("payment_intent"),
        _text("refund_id"),
        _text("transfer_id"),
        _text("account_id"),
        sa.Column("url", sa.Text(), nullable=True),
        _text("status", 32),
        sa.Column("attempts", sa.Integer(), nullable=False),
        _when("next_attempt_at"),
        sa.Column("last_error", sa.Text(), nullable=True),
        _when("created_at"),
        _when("updated_at"),
        _when("done_at", nullable=True),
        sa.ForeignKeyConstraint(["payout_id"], ["payout.id"],
                                name=op.f("fk_payment_op_payout_id_payout")),
        sa.ForeignKeyConstraint(["pledge_id"], ["pledge.id"],
                                name=op.f("fk_payment_op_pledge_id_pledge")),
        sa.ForeignKeyConstraint(["repo_id"], ["repo.id"], name=op.f("fk_payment_op_repo_id_repo")),
        sa.ForeignKeyConstraint(["task_id"], ["task.id"], name=op.f("fk_payment_op_task_id_task")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_payment_op")),
        sa.UniqueConstraint("idempotency_key", name=op.f("uq_payment_op_idempotency_key")),
    )
    for columns in _INDEXES:
        op.create_index(op.f(f"ix_payment_op_{'_'.join(columns)}"), "payment_op", list(columns))


def downgrade() -> None:
    for columns in reversed(_INDEXES):
        op.drop_index(op.f(f"ix_payment_op_{'_'.join(columns)}"), table_name="payment_op")
    op.drop_table("payment_op")
    op.drop_table("payout_account")
