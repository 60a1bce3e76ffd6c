"""read indexes: a repo's tasks by creation (the monthly appeal, the open tasks of a page) and
ledger transactions by time (the money that moved in a window of months)

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0007"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index(op.f("ix_task_repo_id_created_at"), "task", ["repo_id", "created_at"])
    op.create_index(op.f("ix_ledger_transaction_created_at"), "ledger_transaction",
                    ["created_at"])


def downgrade() -> None:
    op.drop_index(op.f("ix_ledger_transaction_created_at"), table_name="ledger_transaction")
    op.drop_index(op.f("ix_task_repo_id_created_at"), table_name="task")
