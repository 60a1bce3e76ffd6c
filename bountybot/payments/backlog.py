"""The payment operations as an operator sees them (`bountybot payments`): listed with their
tries and errors, and dead ones given another round (`bountybot payments retry`).

A revived operation keeps its idempotency key and comes back `unknown`, not `pending`: any of
its earlier tries may have reached Stripe (a timeout, a 5xx), and Stripe forgets a key after a
day, so the worker asks first (a transfer looks for its transfer group) and sends only when
nothing was made. Only `dead` operations come back: a `failed` one was refused by Stripe for
good, and the same request under the same key gets the same answer.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from bountybot.logs import event
from bountybot.payments.stripe_api import scrub
from bountybot.providers.base import PaymentKind
from bountybot.states import PayoutState, PledgeState
from bountybot.storage import tables as t
from bountybot.storage.uow import UnitOfWork

log = logging.getLogger(__name__)

OpState = t.PaymentOpState
Sessionmaker = async_sessionmaker[AsyncSession]
# Where each kind of operation may be found at Stripe: never its URL (a checkout page or an
# onboarding link is a one-time key to someone's payment or account).
PROVIDER_IDS = ("session_id", "payment_intent", "refund_id", "transfer_id", "account_id")


class RetryRefused(Exception):
    """Why the operations asked for cannot be retried, one sentence per operation."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


async def list_ops(sessionmaker: Sessionmaker,
                   states: frozenset[OpState] | None = None) -> list[t.PaymentOp]:
    """The payment operations, oldest first; only those in `states` if given."""
    stmt = select(t.PaymentOp).order_by(col(t.PaymentOp.id))
    if states is not None:
        stmt = stmt.where(col(t.PaymentOp.state).in_(states))
    async with sessionmaker() as session:
        return list((await session.exec(stmt)).all())


def target(op: t.PaymentOp) -> str:
    """What an operation is for: `payout 3, task 1`, `pledge 7, task 1`, `account github:dave`."""
    if op.kind == PaymentKind.ACCOUNT.value:
        return f"account {op.forge}:{op.login}"
    what = f"payout {op.payout_id}" if op.kind == PaymentKind.TRANSFER.value \
        else f"pledge {op.pledge_id}"
    return f"{what}, task {op.task_id}" if op.task_id is not None else what


def provider_ids(op: t.PaymentOp) -> list[str]:
    """The provider's ids an operation has, as they came (`tr_...`, `cs_...`)."""
    return [value for name in PROVIDER_IDS if (value := getattr(op, name))]


def error_line(op: t.PaymentOp, secrets: tuple[str, ...] = (), width: int = 100) -> str:
    """The last error on one line, with no secret in it."""
    return scrub(" ".join((op.last_error or "").split()), *secrets)[:width]


def refusal(op: t.PaymentOp, *, payout: t.Payout | None = None, task: t.Task | None = None,
            pledge: t.Pledge | None = None) -> str | None:
    """Why `op` may not have another round, or None if it may. `payout`, `task` and `pledge`
    are the rows it is for."""
    op_id = op.id
    if op.state == OpState.FAILED:
        return (f"payment operation {op_id} failed: Stripe refused it for good, and the same"
                " request would get the same answer")
    if op.state != OpState.DEAD:
        return f"payment operation {op_id} is {op.state}, not dead"
    if op.kind == PaymentKind.TRANSFER.value:
        if payout is None or payout.state not in (PayoutState.PENDING, PayoutState.FAILED):
            state = payout.state if payout is not None else "gone"
            reference = f" (reference {payout.reference})" if payout and payout.reference else ""
            return (f"payment operation {op_id}: payout {op.payout_id} is {state}{reference};"
                    " sending its transfer could pay twice")
        if payout.released_at is None or task is None or task.disputed_by is not None:
            return (f"payment operation {op_id}: payout {op.payout_id} is held (not released,"
                    " or disputed)")
    if op.kind == PaymentKind.CHECKOUT.value and (
            pledge is None or pledge.state != PledgeState.PENDING):
        state = pledge.state if pledge is not None else "gone"
        return (f"payment operation {op_id}: pledge {op.pledge_id} is {state}; there is no"
                " payment page to make (the backer may pledge again)")
    return None


@dataclass(frozen=True)
class Retried:
    """What `retry_dead` did: the operations revived, and why others were not."""

    revived: list[t.PaymentOp]
    refused: list[str]


async def retry_dead(sessionmaker: Sessionmaker, ids: list[int] | None = None, *,
                     now: datetime | None = None) -> Retried:
    """Give dead operations (all, or those of `ids`) another round of tries, now, under the
    same key, `unknown` so that the worker asks Stripe before sending anything (see the module).

    With `ids`, all or nothing: one that is not dead, or whose payout was paid (or pledge
    dropped) since, refuses the whole command (`RetryRefused`). Without, every dead operation
    that may come back does, and `refused` says why the others did not."""
    now = now or datetime.now(UTC)
    async with UnitOfWork(sessionmaker) as uow:
        s = uow.session
        stmt = select(t.PaymentOp).order_by(col(t.PaymentOp.id))
        stmt = stmt.where(col(t.PaymentOp.id).in_(ids)) if ids is not None \
            else stmt.where(t.PaymentOp.state == OpState.DEAD)
        rows = {t.id_of(row): row for row in (await s.exec(stmt.with_for_update())).all()}
        revived, refused = [], []
        for op_id in dict.fromkeys(ids if ids is not None else rows):
            op = rows.get(op_id)
            if op is None:
                refused.append(f"payment operation {op_id} does not exist")
                continue
            payout, task, pledge = await _for(s, op)
            why = refusal(op, payout=payout, task=task, pledge=pledge)
            if why is None:
                revived.append(op)
            else:
                refused.append(why)
        if ids is not None and refused:
            raise RetryRefused(refused)  # before anything changed: the unit of work rolls back
        for op in revived:
            op.state, op.attempts, op.next_attempt_at = OpState.UNKNOWN, 0, now
            event(log, "payments.revived", op=op.id, kind=op.kind, key=op.idempotency_key)
    return Retried(revived, refused)


async def _for(s: AsyncSession, op: t.PaymentOp
               ) -> tuple[t.Payout | None, t.Task | None, t.Pledge | None]:
    """The rows an operation is for, locked on PostgreSQL: a payout being marked paid by hand
    meanwhile waits for this revival, or this one sees it paid."""
    payout = await s.get(t.Payout, op.payout_id, with_for_update=True) \
        if op.payout_id is not None else None
    pledge = await s.get(t.Pledge, op.pledge_id) if op.pledge_id is not None else None
    task = await s.get(t.Task, op.task_id) if op.task_id is not None else None
    return payout, task, pledge
