"""outbox lane: the indexed lane of each message (summary of a task, or an issue's comments)

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("outbox") as batch:
        batch.add_column(sa.Column("lane", sa.String(length=64), nullable=False,
                                   server_default=""))
    outbox = sa.table("outbox", sa.column("id", sa.Integer), sa.column("kind", sa.String),
                      sa.column("task_id", sa.Integer), sa.column("payload", sa.JSON),
                      sa.column("lane", sa.String))
    bind = op.get_bind()
    for row in bind.execute(sa.select(outbox.c.id, outbox.c.kind, outbox.c.task_id,
                                      outbox.c.payload)).all():
        payload = row.payload if isinstance(row.payload, dict) else json.loads(row.payload)
        lane = (f"summary:{row.task_id}" if row.kind == "summary"
                else f"issue:{payload.get('repo_id')}:{payload.get('number')}")
        bind.execute(outbox.update().where(outbox.c.id == row.id).values(lane=lane))
    op.create_index(op.f("ix_outbox_state_lane_id"), "outbox", ["state", "lane", "id"])


def downgrade() -> None:
    op.drop_index(op.f("ix_outbox_state_lane_id"), table_name="outbox")
    with op.batch_alter_table("outbox") as batch:
        batch.drop_column("lane")
