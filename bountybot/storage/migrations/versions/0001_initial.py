"""initial: every table, and on PostgreSQL the deferred check that ledger transactions balance

Revision ID: 0001
Revises:
Create Date: 2026-11-23

Written by hand (from an autogenerate draft) so it does not import the application: column types
are plain SQLAlchemy types (`UTCDateTime` is `DateTime(timezone=True)` in the database,
`StateString` a `String(20)`), and every constraint and index name is spelled out (`op.f`), as
`tables.NAMING_CONVENTION` would make it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Fires at COMMIT (deferred), once per entry written, changed or deleted in the transaction, and
# checks the ledger transactions those entries belong to: their entries must sum to zero in each
# currency. The table is named through TG_TABLE_SCHEMA so the check works in any schema.
LEDGER_BALANCED_FUNCTION = """
CREATE FUNCTION ledger_entry_check_balanced() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    ids bigint[];
    tid bigint;
    off text;
BEGIN
    IF TG_OP = 'INSERT' THEN
        ids := ARRAY[NEW.transaction_id];
    ELSIF TG_OP = 'DELETE' THEN
        ids := ARRAY[OLD.transaction_id];
    ELSE
        ids := ARRAY[OLD.transaction_id, NEW.transaction_id];
    END IF;
    FOREACH tid IN ARRAY ids LOOP
        EXECUTE format(
            'SELECT string_agg(currency || '' '' || total, '', '' ORDER BY currency) FROM ('
            'SELECT currency, sum(amount_minor) AS total FROM %I.%I'
            ' WHERE transaction_id = $1 GROUP BY currency HAVING sum(amount_minor) <> 0) AS off',
            TG_TABLE_SCHEMA, TG_TABLE_NAME)
            INTO off USING tid;
        IF off IS NOT NULL THEN
            RAISE EXCEPTION 'ledger transaction % does not balance: %', tid, off
                USING ERRCODE = 'check_violation';
        END IF;
    END LOOP;
    RETURN NULL;
END;
$$
"""

LEDGER_BALANCED_TRIGGER = """
CREATE CONSTRAINT TRIGGER ledger_entry_balanced
AFTER INSERT OR UPDATE OR DELETE ON ledger_entry
DEFERRABLE INITIALLY DEFERRED
FOR EACH ROW EXECUTE FUNCTION ledger_entry_check_balanced()
"""


def _timestamp(name: str, nullable: bool = False) -> sa.Column[Any]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def _state(nullable: bool = False) -> sa.Column[Any]:
    return sa.Column("state", sa.String(length=20), nullable=nullable)


def _id(table: str) -> tuple[sa.Column[Any], sa.PrimaryKeyConstraint]:
    return (
        sa.Column("id", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f(f"pk_{table}")),
    )


def _task_fk(table: str, nullable: bool = False) -> tuple[sa.Column[Any], sa.ForeignKeyConstraint]:
    return (
        sa.Column("task_id", sa.Integer(), nullable=nullable),
        sa.ForeignKeyConstraint(["task_id"], ["task.id"], name=op.f(f"fk_{table}_task_id_task")),
    )


def upgrade() -> None:
    op.create_table(
        "repo",
        *_id("repo"),
        sa.Column("forge", sa.String(length=16), nullable=False),
        sa.Column("forge_repo_id", sa.String(length=64), nullable=False),
        sa.Column("full_path", sa.String(length=512), nullable=False),
        sa.Column("installation_id", sa.String(length=64), nullable=True),
        sa.Column("locale", sa.String(length=16), nullable=True),
        sa.Column("currency", sa.String(length=3), nullable=True),
        _timestamp("created_at"),
        sa.UniqueConstraint("forge", "forge_repo_id", name=op.f("uq_repo_forge_forge_repo_id")),
    )

    op.create_table(
        "task",
        *_id("task"),
        sa.Column("repo_id", sa.Integer(), nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("title", sa.Text(), nullable=False),
        sa.Column("url", sa.Text(), nullable=False),
        _state(),
        sa.Column("goal_minor", sa.BigInteger(), nullable=True),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("deadline", sa.Date(), nullable=True),
        sa.Column("summary_comment_id", sa.String(length=64), nullable=True),
        sa.Column("award", sa.JSON(), nullable=True),
        _timestamp("created_at"),
        _timestamp("updated_at"),
        sa.ForeignKeyConstraint(["repo_id"], ["repo.id"], name=op.f("fk_task_repo_id_repo")),
        sa.UniqueConstraint("repo_id", "number", name=op.f("uq_task_repo_id_number")),
    )
    op.create_index(op.f("ix_task_state"), "task", ["state"])

    op.create_table(
        "pledge",
        *_id("pledge"),
        *_task_fk("pledge"),
        sa.Column("backer", sa.String(length=255), nullable=False),
        sa.Column("amount_minor", sa.BigInteger(), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        _state(),
        sa.Column("comment_id", sa.String(length=64), nullable=True),
        sa.Column("provider_ref", sa.String(length=255), nullable=True),
        _timestamp("created_at"),
        _timestamp("updated_at"),
        sa.CheckConstraint("amount_minor > 0", name=op.f("ck_pledge_amount_positive")),
    )
    op.create_index(op.f("ix_pledge_task_id"), "pledge", ["task_id"])

    op.create_table(
        "claim",
        *_id("claim"),
        *_task_fk("claim"),
        sa.Column("developer", sa.String(length=255), nullable=False),
        _state(),
        _timestamp("created_at"),
        _timestamp("expires_at", nullable=True),
        sa.Column("paused_seconds", sa.Integer(), nullable=True),
        _timestamp("ended_at", nullable=True),
    )
    op.create_index(op.f("ix_claim_task_id_state"), "claim", ["task_id", "state"])

    op.create_table(
        "waiting",
        *_id("waiting"),
        *_task_fk("waiting"),
        sa.Column("login", sa.String(length=255), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        _timestamp("created_at"),
        sa.UniqueConstraint("task_id", "login", name=op.f("uq_waiting_task_id_login")),
    )

    op.create_table(
        "link",
        *_id("link"),
        *_task_fk("link"),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("author", sa.String(length=255), nullable=False),
        _state(),
        sa.Column("url", sa.Text(), nullable=True),
        _timestamp("updated_at"),
        sa.UniqueConstraint("task_id", "number", name=op.f("uq_link_task_id_number")),
    )

    op.create_table(
        "payout",
        *_id("payout"),
        *_task_fk("payout"),
        sa.Column("developer", sa.String(length=255), nullable=False),
        sa.Column("amount_minor", sa.BigInteger(), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        _state(),
        sa.Column("reference", sa.String(length=255), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        _timestamp("due_at", nullable=True),
        _timestamp("created_at"),
        _timestamp("paid_at", nullable=True),
        sa.CheckConstraint("amount_minor > 0", name=op.f("ck_payout_amount_positive")),
    )
    op.create_index(op.f("ix_payout_task_id"), "payout", ["task_id"])

    op.create_table(
        "ledger_transaction",
        *_id("ledger_transaction"),
        sa.Column("key", sa.String(length=255), nullable=False),
        sa.Column("kind", sa.String(length=64), nullable=False),
        *_task_fk("ledger_transaction", nullable=True),
        sa.Column("memo", sa.Text(), nullable=True),
        _timestamp("created_at"),
        sa.UniqueConstraint("key", name=op.f("uq_ledger_transaction_key")),
    )
    op.create_index(op.f("ix_ledger_transaction_task_id"), "ledger_transaction", ["task_id"])

    op.create_table(
        "ledger_entry",
        *_id("ledger_entry"),
        sa.Column("transaction_id", sa.Integer(), nullable=False),
        sa.Column("account", sa.String(length=320), nullable=False),
        sa.Column("amount_minor", sa.BigInteger(), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.ForeignKeyConstraint(
            ["transaction_id"],
            ["ledger_transaction.id"],
            name=op.f("fk_ledger_entry_transaction_id_ledger_transaction"),
        ),
    )
    op.create_index(op.f("ix_ledger_entry_account"), "ledger_entry", ["account"])
    op.create_index(op.f("ix_ledger_entry_transaction_id"), "ledger_entry", ["transaction_id"])

    op.create_table(
        "delivery",
        *_id("delivery"),
        sa.Column("forge", sa.String(length=16), nullable=False),
        sa.Column("delivery_id", sa.String(length=255), nullable=False),
        sa.Column("event", sa.String(length=64), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        _state(),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        _timestamp("received_at"),
        _timestamp("handled_at", nullable=True),
        sa.UniqueConstraint("forge", "delivery_id", name=op.f("uq_delivery_forge_delivery_id")),
    )
    op.create_index(op.f("ix_delivery_state_id"), "delivery", ["state", "id"])

    op.create_table(
        "outbox",
        *_id("outbox"),
        *_task_fk("outbox", nullable=True),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("dedup_key", sa.String(length=255), nullable=False),
        _state(),
        sa.Column("attempts", sa.Integer(), nullable=False),
        _timestamp("next_attempt_at"),
        sa.Column("last_error", sa.Text(), nullable=True),
        _timestamp("created_at"),
        _timestamp("sent_at", nullable=True),
        sa.UniqueConstraint("dedup_key", name=op.f("uq_outbox_dedup_key")),
    )
    op.create_index(op.f("ix_outbox_state_next_attempt_at"), "outbox", ["state", "next_attempt_at"])

    op.create_table(
        "audit_event",
        *_id("audit_event"),
        *_task_fk("audit_event", nullable=True),
        sa.Column("actor", sa.String(length=255), nullable=True),
        sa.Column("action", sa.String(length=64), nullable=False),
        sa.Column("detail", sa.JSON(), nullable=False),
        _timestamp("created_at"),
    )
    op.create_index(op.f("ix_audit_event_task_id"), "audit_event", ["task_id"])

    if op.get_bind().dialect.name == "postgresql":
        op.execute(LEDGER_BALANCED_FUNCTION)
        op.execute(LEDGER_BALANCED_TRIGGER)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER ledger_entry_balanced ON ledger_entry")
        op.execute("DROP FUNCTION ledger_entry_check_balanced()")
    # Children before parents; each table's indexes go with it.
    for table in (
        "audit_event",
        "outbox",
        "delivery",
        "ledger_entry",
        "ledger_transaction",
        "payout",
        "link",
        "waiting",
        "claim",
        "pledge",
        "task",
        "repo",
    ):
        op.drop_table(table)
