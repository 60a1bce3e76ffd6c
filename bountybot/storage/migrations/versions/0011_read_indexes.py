"""read indexes for large books: a repo's tasks by state, a task's pledges, ledger and timeline
a page at a time, and the audit lines that end tasks (the monthly appeal)

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0011"
down_revision: str | Sequence[str] | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index(op.f("ix_task_repo_id_state_id"), "task", ["repo_id", "state", "id"])
    op.create_index(op.f("ix_pledge_task_id_id"), "pledge", ["task_id", "id"])
    op.create_index(op.f("ix_ledger_transaction_task_id_id"), "ledger_transaction",
                    ["task_id", "id"])
    op.create_index(op.f("ix_audit_event_task_id_action_id"), "audit_event",
                    ["task_id", "action", "id"])
    op.create_index(op.f("ix_audit_event_action_task_id_created_at"), "audit_event",
                    ["action", "task_id", "created_at"])


def downgrade() -> None:
    op.drop_index(op.f("ix_audit_event_action_task_id_created_at"), table_name="audit_event")
    op.drop_index(op.f("ix_audit_event_task_id_action_id"), table_name="audit_event")
    op.drop_index(op.f("ix_ledger_transaction_task_id_id"), table_name="ledger_transaction")
    op.drop_index(op.f("ix_pledge_task_id_id"), table_name="pledge")
    op.drop_index(op.f("ix_task_repo_id_state_id"), table_name="task")
