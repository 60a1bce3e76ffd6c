"""statements' indexes: a backer's pledges and a developer's payouts found by login without case

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | Sequence[str] | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_pledge_lower_backer", "pledge", [sa.text("lower(backer)")])
    op.create_index("ix_payout_lower_developer", "payout", [sa.text("lower(developer)")])


def downgrade() -> None:
    op.drop_index("ix_payout_lower_developer", table_name="payout")
    op.drop_index("ix_pledge_lower_backer", table_name="pledge")
