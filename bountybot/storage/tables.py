"""The database tables (SQLModel): repos, tasks and their rows, the ledger, the inbox and outbox.

Conventions, the same on every table:
- money is an amount in minor units (`BigInteger`, signed only in the ledger) next to an ISO 4217
  `currency` (`String(3)`); never a float or a decimal;
- timestamps are aware UTC datetimes (`UTCDateTime`, `timestamptz` on PostgreSQL);
- states are their StrEnum values in a plain `VARCHAR` (`StateString`), read back as members;
- constraints and indexes are named by `NAMING_CONVENTION`, so migrations are deterministic.

The tables hang off their own `metadata` (not SQLModel's global one): only these tables are in
the migrations. A change here needs a new migration; `tests/test_migrations.py` compares the two.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from enum import StrEnum
from typing import Any, Protocol

from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    Date,
    Index,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy import false as sa_false
from sqlalchemy.orm import registry
from sqlmodel import Field, SQLModel

from bountybot.states import ClaimState, LinkState, PayoutState, PledgeState, TaskState
from bountybot.storage.types import StateString, UTCDateTime

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = MetaData(naming_convention=NAMING_CONVENTION)

LOGIN = 255  # GitHub logins are at most 39 characters, GitLab usernames 255
FORGE_ID = 64  # ids the forges hand out (repository ids, comment ids), kept as text


class DeliveryState(StrEnum):
    """Where a stored webhook delivery is: waiting for the worker, handled, or given up on."""

    PENDING = "pending"
    HANDLED = "handled"
    FAILED = "failed"


class OutboxState(StrEnum):
    """Where a queued forge write is: waiting (or retrying), sent, or dead after its retries."""

    PENDING = "pending"
    SENT = "sent"
    DEAD = "dead"
    # Not sent on purpose: a reaction when the write budget was short, before reactions waited
    # for the budget instead (none is skipped now; the state stays for the rows of then).
    SKIPPED = "skipped"


class PaymentOpState(StrEnum):
    """Where a call to the payment provider is: to make (or make again), waiting for the
    developer's payout account, made with an unknown outcome (asked about before anything else),
    done, refused by the provider, or given up after its retries."""

    PENDING = "pending"
    WAITING = "waiting"
    UNKNOWN = "unknown"
    DONE = "done"
    FAILED = "failed"
    DEAD = "dead"


class HasId(Protocol):
    id: int | None


def id_of(row: HasId) -> int:
    """A row's id, which exists once the row is flushed (asking before is a bug).

    SQLModel types ids `int | None` (None until the INSERT); this gives the `int` that foreign
    keys (`task_id: int`) expect, checked at run time rather than cast away.
    """
    if row.id is None:
        raise ValueError(f"{type(row).__name__} has no id yet: flush the session first")
    return row.id


def utcnow() -> datetime:
    """The default for `created_at`-like columns; code on a money path passes its clock's time."""
    return datetime.now(UTC)


def _money() -> Any:
    """An amount in minor units (cents): a 64-bit integer, so 2**31 cents is no limit."""
    return Field(sa_type=BigInteger)


def _currency() -> Any:
    """An ISO 4217 currency code (`EUR`)."""
    return Field(sa_type=String(3))


def _created() -> Any:
    return Field(default_factory=utcnow, sa_type=UTCDateTime())


def _updated() -> Any:
    return Field(
        default_factory=utcnow, sa_type=UTCDateTime(), sa_column_kwargs={"onupdate": utcnow}
    )


def _when() -> Any:
    """A nullable aware UTC timestamp."""
    return Field(default=None, sa_type=UTCDateTime())


def _login() -> Any:
    return Field(sa_type=String(LOGIN))


class Base(SQLModel, registry=registry(metadata=metadata)):
    """The base of bountybot's tables; its registry keeps them out of `SQLModel.metadata`."""


class Repo(Base, table=True):
    """A repository (GitHub) or project (GitLab), known by the forge's stable numeric id.

    `full_path` is only the current name: a rename updates it and breaks nothing. `locale` and
    `currency` override the bot's defaults for this repo when set.
    """

    __tablename__ = "repo"
    __table_args__ = (UniqueConstraint("forge", "forge_repo_id"),)

    id: int | None = Field(default=None, primary_key=True)
    forge: str = Field(sa_type=String(16))
    forge_repo_id: str = Field(sa_type=String(FORGE_ID))
    full_path: str = Field(sa_type=String(512))
    installation_id: str | None = Field(default=None, sa_type=String(FORGE_ID))
    locale: str | None = Field(default=None, sa_type=String(16))
    currency: str | None = Field(default=None, sa_type=String(3))
    # Private (GitHub `private`, GitLab visibility not public), as the forge last said: such a
    # repo's tasks, people and amounts stay out of the public API and export unless `published`
    # (turned on by the operator for the repo's maintainers: `bountybot repos publish`).
    private: bool = Field(default=False, sa_column_kwargs={"server_default": sa_false()})
    published: bool = Field(default=False, sa_column_kwargs={"server_default": sa_false()})
    created_at: datetime = _created()


class Task(Base, table=True):
    """One forge issue carrying the bounty label: the thing being funded.

    `goal_minor` (in `currency`) is what the task needs before it can be claimed, or null for a
    task without a goal. `award` is a maintainer's chosen split when the merged work is not the
    claimant's alone: a list of `{"login": str, "minor": int}`.
    """

    __tablename__ = "task"
    # (repo_id, created_at): a repo's tasks, for its pages and its monthly appeal; (repo_id,
    # state, id): a repo's open tasks, newest first, and the API's lists by repo and state.
    __table_args__ = (UniqueConstraint("repo_id", "number"), Index(None, "repo_id", "created_at"),
                      Index(None, "repo_id", "state", "id"))

    id: int | None = Field(default=None, primary_key=True)
    repo_id: int = Field(foreign_key="repo.id")
    number: int
    title: str = Field(default="", sa_type=Text)
    url: str = Field(default="", sa_type=Text)
    state: TaskState = Field(default=TaskState.OPEN, sa_type=StateString(TaskState), index=True)
    goal_minor: int | None = Field(default=None, sa_type=BigInteger)
    currency: str = _currency()
    deadline: date | None = Field(default=None, sa_type=Date)
    summary_comment_id: str | None = Field(default=None, sa_type=String(FORGE_ID))
    award: list[dict[str, Any]] | None = Field(default=None, sa_type=JSON)
    # A backer's or maintainer's /dispute during the release window holds the payouts until a
    # maintainer decides (/award or /cancel).
    disputed_by: str | None = Field(default=None, sa_type=String(LOGIN))
    dispute_reason: str | None = Field(default=None, sa_type=Text)
    disputed_at: datetime | None = _when()
    # The bot's label was seen on the issue: a forge that sends an issue's whole label list
    # (Forgejo) can then tell a removal from a list that never held it.
    labelled: bool = Field(default=False, sa_column_kwargs={"server_default": sa_false()})
    created_at: datetime = _created()
    updated_at: datetime = _updated()


class Pledge(Base, table=True):
    """Money a backer puts toward a task: `amount_minor` in `currency` (the task's)."""

    __tablename__ = "pledge"
    # A backer's statement finds their pledges by login without case (`lower(backer)`); a
    # task's pledges are read a page at a time in id order (task_id, id).
    __table_args__ = (CheckConstraint("amount_minor > 0", name="amount_positive"),
                      Index("ix_pledge_lower_backer", text("lower(backer)")),
                      Index(None, "task_id", "id"))

    id: int | None = Field(default=None, primary_key=True)
    task_id: int = Field(foreign_key="task.id", index=True)
    backer: str = _login()
    amount_minor: int = _money()
    currency: str = _currency()
    state: PledgeState = Field(default=PledgeState.PENDING, sa_type=StateString(PledgeState))
    comment_id: str | None = Field(default=None, sa_type=String(FORGE_ID))
    provider_ref: str | None = Field(default=None, sa_type=String(255))
    created_at: datetime = _created()
    updated_at: datetime = _updated()


class Claim(Base, table=True):
    """A developer's exclusive, time-limited right to be paid for a task.

    While the claim is in review the clock stops: `expires_at` is cleared and `paused_seconds`
    keeps the time that was left, to restart from if the link is closed unmerged.
    """

    __tablename__ = "claim"
    __table_args__ = (Index(None, "task_id", "state"), Index(None, "state", "expires_at"))

    id: int | None = Field(default=None, primary_key=True)
    task_id: int = Field(foreign_key="task.id")
    developer: str = _login()
    state: ClaimState = Field(default=ClaimState.ACTIVE, sa_type=StateString(ClaimState))
    created_at: datetime = _created()
    expires_at: datetime | None = _when()
    paused_seconds: int | None = None
    ended_at: datetime | None = _when()
    # When the claimant is reminded (half of `claim_days`); cleared once reminded.
    remind_at: datetime | None = _when()


class Waiting(Base, table=True):
    """One place in a task's waiting list of `/claim`ers, in `position` order."""

    __tablename__ = "waiting"
    __table_args__ = (UniqueConstraint("task_id", "login"),)

    id: int | None = Field(default=None, primary_key=True)
    task_id: int = Field(foreign_key="task.id")
    login: str = _login()
    position: int
    created_at: datetime = _created()


class Link(Base, table=True):
    """A pull/merge request (by its number) that says it closes the task's issue. `repo_path`
    is empty for one of the task's own repo, else the path of the other repo it was opened in
    (on the same forge): such a link never pays by itself; a maintainer confirms it with
    `/award`."""

    __tablename__ = "link"
    __table_args__ = (UniqueConstraint("task_id", "repo_path", "number"),)

    id: int | None = Field(default=None, primary_key=True)
    task_id: int = Field(foreign_key="task.id")
    repo_path: str = Field(default="", sa_type=String(512),
                           sa_column_kwargs={"server_default": ""})
    number: int
    author: str = _login()
    state: LinkState = Field(default=LinkState.OPEN, sa_type=StateString(LinkState))
    url: str | None = Field(default=None, sa_type=Text)
    updated_at: datetime = _updated()


class Payout(Base, table=True):
    """Money released from a task's escrow to a developer: `amount_minor` in `currency`.

    `reference` is the manual payment reference or the provider's id; `due_at` is when it may be
    released (`release_after_days`); `attempts` and `last_error` track provider retries.
    """

    __tablename__ = "payout"
    # A developer's statement finds their payouts by login without case.
    __table_args__ = (CheckConstraint("amount_minor > 0", name="amount_positive"),
                      Index(None, "state", "released_at"),
                      Index("ix_payout_lower_developer", text("lower(developer)")))

    id: int | None = Field(default=None, primary_key=True)
    task_id: int = Field(foreign_key="task.id", index=True)
    developer: str = _login()
    amount_minor: int = _money()
    currency: str = _currency()
    state: PayoutState = Field(default=PayoutState.PENDING, sa_type=StateString(PayoutState))
    reference: str | None = Field(default=None, sa_type=String(255))
    attempts: int = 0
    last_error: str | None = Field(default=None, sa_type=Text)
    # When the payout may be paid: the merge plus `release_after_days`; a dispute on the task
    # holds it past that. `released_at` is set by the sweep that finds it due.
    due_at: datetime | None = _when()
    created_at: datetime = _created()
    paid_at: datetime | None = _when()
    released_at: datetime | None = _when()


class LedgerTransaction(Base, table=True):
    """One balanced money movement; its entries sum to zero in each currency.

    `key` makes it idempotent (`pledge.held:12`): the database refuses a second transaction with
    the same key, so a replayed event cannot move the same money twice. On PostgreSQL a deferred
    constraint trigger also refuses, at commit, entries that do not balance.
    """

    __tablename__ = "ledger_transaction"
    # A task's ledger, a page at a time in id order.
    __table_args__ = (Index(None, "task_id", "id"),)

    id: int | None = Field(default=None, primary_key=True)
    key: str = Field(sa_type=String(255), unique=True)
    kind: str = Field(sa_type=String(64))
    task_id: int | None = Field(default=None, foreign_key="task.id", index=True)
    memo: str | None = Field(default=None, sa_type=Text)
    # Indexed: the money that moved in a month is read by time.
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime(), index=True)


class LedgerEntry(Base, table=True):
    """One leg of a ledger transaction: a signed `amount_minor` into (+) or out of (-) `account`.

    Accounts are strings (`escrow:task:3`, `backer:github:alice`, `external`); balances are
    always summed from entries, never stored.
    """

    __tablename__ = "ledger_entry"

    id: int | None = Field(default=None, primary_key=True)
    transaction_id: int = Field(foreign_key="ledger_transaction.id", index=True)
    account: str = Field(sa_type=String(320), index=True)
    amount_minor: int = _money()
    currency: str = _currency()


class Delivery(Base, table=True):
    """A webhook delivery as received (the inbox): stored first, handled by a worker later.

    Unique by (forge, delivery_id), so a redelivery is a no-op. `payload` is the raw body.
    """

    __tablename__ = "delivery"
    __table_args__ = (
        UniqueConstraint("forge", "delivery_id"),
        Index(None, "state", "id"),
        Index(None, "topic", "id"),
    )

    id: int | None = Field(default=None, primary_key=True)
    forge: str = Field(sa_type=String(16))
    delivery_id: str = Field(sa_type=String(255))
    event: str = Field(sa_type=String(64))
    payload: str = Field(sa_type=Text)
    # What the delivery is about (`github:<repo id>:<issue or pull number>`), read at the door:
    # deliveries with the same topic are applied one after another in the order received,
    # whichever replica takes them. None when it is about no issue (a ping, an installation).
    topic: str | None = Field(default=None, sa_type=String(255))
    state: DeliveryState = Field(
        default=DeliveryState.PENDING, sa_type=StateString(DeliveryState)
    )
    error: str | None = Field(default=None, sa_type=Text)
    attempts: int = 0
    received_at: datetime = _created()
    handled_at: datetime | None = _when()
    # When a delivery that failed for a passing reason (the forge was down while asking who
    # maintains the repo) may be tried again; None means at once.
    next_attempt_at: datetime | None = _when()


class Outbox(Base, table=True):
    """A forge write (summary edit, reply, reaction, notice) waiting to be sent, with retries.

    Written in the same transaction as the state change that needs it; `dedup_key` is unique so
    the same message is never queued twice.
    """

    __tablename__ = "outbox"
    __table_args__ = (Index(None, "state", "next_attempt_at"), Index(None, "state", "lane", "id"))

    id: int | None = Field(default=None, primary_key=True)
    task_id: int | None = Field(default=None, foreign_key="task.id")
    kind: str = Field(sa_type=String(16))
    # Messages of one lane are sent one after another, in order: `summary:<task id>` for a
    # task's summary, `issue:<repo id>:<number>` for the replies, notices and reactions of an
    # issue. Indexed, so finding what waits ahead of a message costs one lookup.
    lane: str = Field(default="", sa_type=String(64))
    payload: dict[str, Any] = Field(default_factory=dict, sa_type=JSON)
    dedup_key: str = Field(sa_type=String(255), unique=True)
    state: OutboxState = Field(default=OutboxState.PENDING, sa_type=StateString(OutboxState))
    attempts: int = 0
    next_attempt_at: datetime = _created()
    last_error: str | None = Field(default=None, sa_type=Text)
    created_at: datetime = _created()
    sent_at: datetime | None = _when()


class AuditEvent(Base, table=True):
    """One line of the audit trail: a command or a transition, who did it, and its details."""

    __tablename__ = "audit_event"
    # (task_id, action, id): a task's timeline by kind of line, newest first; (action, task_id,
    # created_at): when each task ended (the monthly appeal), without reading every line.
    __table_args__ = (Index(None, "task_id", "action", "id"),
                      Index(None, "action", "task_id", "created_at"))

    id: int | None = Field(default=None, primary_key=True)
    task_id: int | None = Field(default=None, foreign_key="task.id", index=True)
    actor: str | None = Field(default=None, sa_type=String(LOGIN))
    action: str = Field(sa_type=String(64))
    detail: dict[str, Any] = Field(default_factory=dict, sa_type=JSON)
    created_at: datetime = _created()


class HandledComment(Base, table=True):
    """A comment (or an edit of it) whose commands were applied: the same comment arriving
    again, by a redelivery or by reconciliation, is then a no-op."""

    __tablename__ = "handled_comment"
    __table_args__ = (UniqueConstraint("forge", "comment_id", "revision"),)

    id: int | None = Field(default=None, primary_key=True)
    forge: str = Field(sa_type=String(16))
    comment_id: str = Field(sa_type=String(FORGE_ID))
    revision: str = Field(default="", sa_type=String(255), sa_column_kwargs={"server_default": ""})
    task_id: int | None = Field(default=None, foreign_key="task.id")
    handled_at: datetime = _created()


class SyncCursor(Base, table=True):
    """Where reconciliation left off for a repo: the time it read up to, the ETags of its list
    requests (an unchanged list costs no rate limit), and a lease so one replica syncs it."""

    __tablename__ = "sync_cursor"

    repo_id: int = Field(foreign_key="repo.id", primary_key=True)
    since: datetime | None = _when()
    etags: dict[str, Any] = Field(default_factory=dict, sa_type=JSON)
    leased_until: datetime | None = _when()
    lease_owner: str | None = Field(default=None, sa_type=String(64))
    synced_at: datetime | None = _when()
    last_error: str | None = Field(default=None, sa_type=Text)


class PaymentOp(Base, table=True):
    """One call to the payment provider (`kind`: checkout, refund, transfer, account), written
    in the transaction of the decision that needs it and made after the commit by the payment
    worker, with retries.

    `idempotency_key` is unique and is the key the provider is sent (`bountybot:refund:pledge:7`),
    the same on every try, so a call is never made twice; for `account` it names the request
    (the comment that asked), and the account itself is created under
    `bountybot:account:<forge>:<login>`. While a worker makes the call, `next_attempt_at` is its
    lease; after it, the next try (or, for an open checkout, the next look at the session).
    `repo_id`, `number` and `comment_id` say where to answer with a link; `forge` and `login`
    name the developer of a transfer or account. The provider's ids are kept as they come
    (`session_id`, `payment_intent`, `refund_id`, `transfer_id`, `account_id`), with `status`, the
    provider object's own status as last seen (a session `open`, `complete`, `expired`...).
    """

    __tablename__ = "payment_op"
    __table_args__ = (Index(None, "state", "next_attempt_at"), Index(None, "forge", "login"))

    id: int | None = Field(default=None, primary_key=True)
    kind: str = Field(sa_type=String(16))
    state: PaymentOpState = Field(default=PaymentOpState.PENDING,
                                  sa_type=StateString(PaymentOpState))
    idempotency_key: str = Field(sa_type=String(255), unique=True)
    task_id: int | None = Field(default=None, foreign_key="task.id", index=True)
    pledge_id: int | None = Field(default=None, foreign_key="pledge.id", index=True)
    payout_id: int | None = Field(default=None, foreign_key="payout.id", index=True)
    repo_id: int | None = Field(default=None, foreign_key="repo.id")
    number: int | None = None
    comment_id: str | None = Field(default=None, sa_type=String(FORGE_ID))
    forge: str | None = Field(default=None, sa_type=String(16))
    login: str | None = Field(default=None, sa_type=String(LOGIN))
    amount_minor: int | None = Field(default=None, sa_type=BigInteger)
    currency: str | None = Field(default=None, sa_type=String(3))
    session_id: str | None = Field(default=None, sa_type=String(255), index=True)
    payment_intent: str | None = Field(default=None, sa_type=String(255), index=True)
    refund_id: str | None = Field(default=None, sa_type=String(255), index=True)
    transfer_id: str | None = Field(default=None, sa_type=String(255))
    account_id: str | None = Field(default=None, sa_type=String(255))
    url: str | None = Field(default=None, sa_type=Text)
    status: str | None = Field(default=None, sa_type=String(32))
    attempts: int = 0
    next_attempt_at: datetime = _created()
    last_error: str | None = Field(default=None, sa_type=Text)
    created_at: datetime = _created()
    updated_at: datetime = _updated()
    done_at: datetime | None = _when()


class PayoutAccount(Base, table=True):
    """Where a developer is paid: their Stripe connected account (Express), by forge and login.
    `ready` once Stripe says the account can receive transfers (`account.updated`)."""

    __tablename__ = "payout_account"
    __table_args__ = (UniqueConstraint("forge", "login"),)

    id: int | None = Field(default=None, primary_key=True)
    forge: str = Field(sa_type=String(16))
    # Lower case: forge logins are case-insensitive, and @Dave and @dave are paid to one account.
    login: str = _login()
    account_id: str = Field(sa_type=String(255), unique=True)
    ready: bool = False
    created_at: datetime = _created()
    updated_at: datetime = _updated()


class WriteBudget(Base, table=True):
    """One forge write started with a key's budget (a GitHub installation, a forge's token), on
    PostgreSQL: every replica's governor counts a key's rows of the last minute and hour, and adds
    its own, under one lock on the key (`bountybot.storage.write_budget`). Rows that have left
    the hour are deleted as writes are taken. Unused on SQLite (one process counts in memory)."""

    __tablename__ = "write_budget"
    __table_args__ = (Index(None, "key", "started_at"),)

    id: int | None = Field(default=None, primary_key=True)
    key: str = Field(sa_type=String(255))
    # The database's clock: one time for every replica (their own clocks differ).
    started_at: datetime = Field(sa_type=UTCDateTime())


TABLES = (
    Repo,
    Task,
    Pledge,
    Claim,
    Waiting,
    Link,
    Payout,
    LedgerTransaction,
    LedgerEntry,
    Delivery,
    Outbox,
    AuditEvent,
    HandledComment,
    SyncCursor,
    PaymentOp,
    PayoutAccount,
    WriteBudget,
)
