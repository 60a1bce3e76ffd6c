"""Payment operations in the database: the rows the decisions queue, and applying what the
provider reports back through the rules, in the caller's transaction (never committing).

Keys, built from our ids alone so that every try of one operation sends the same one (for
checkouts, refunds and transfers it is also the provider's idempotency key):

- `checkout`: `bountybot:checkout:pledge:<pledge id>`
- `refund`: `bountybot:refund:pledge:<pledge id>`
- `transfer`: `bountybot:transfer:payout:<payout id>`
- `account`: `bountybot:onboarding:<forge>:<comment id>[@<edit>]`, one per request; the
  account itself is created under `bountybot:account:<forge>:<login>`, one per person.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlmodel import col, func, select
from sqlmodel.ext.asyncio.session import AsyncSession

from bountybot.payments.stripe_api import idempotency_key
from bountybot.providers.base import PaymentKind, PaymentRequest
from bountybot.storage import tables as t
from bountybot.storage.dialect import insert_rows

log = logging.getLogger(__name__)

OpState = t.PaymentOpState


def op_key(kind: PaymentKind, *, forge: str, request: PaymentRequest) -> str:
    """The key of the operation a request asks for (see the module's table)."""
    if kind == PaymentKind.ACCOUNT:
        key = f"bountybot:onboarding:{forge}:{request.comment_id}"
        return (key + f"@{request.revision}" if request.revision else key)[:255]
    assert request.ref is not None and request.ref.id is not None
    noun = "payout" if kind == PaymentKind.TRANSFER else "pledge"
    return idempotency_key(kind.value, noun, request.ref.id)


def account_key(forge: str, login: str) -> str:
    """The key a developer's connected account is created under: one account per person."""
    return idempotency_key("account", forge, login.lower())


def op_values(kind: PaymentKind, key: str, now: datetime, *,
              state: t.PaymentOpState = t.PaymentOpState.PENDING, **columns: Any) -> dict[str, Any]:
    """The row of a new operation, due now."""
    return dict(kind=kind.value, idempotency_key=key, state=state, attempts=0,
                next_attempt_at=now, created_at=now, updated_at=now, **columns)


async def insert_ops(session: AsyncSession, rows: list[dict[str, Any]]) -> list[int]:
    """Insert operations, skipping those whose key is already there (a replayed decision, or
    two replicas queueing the same transfer); returns the ids of the rows written."""
    written = await insert_rows(session, t.PaymentOp, rows, skip_conflicts=True,
                                returning=(t.PaymentOp.id,))
    return [i for (i,) in written]


async def queue_requests(session: AsyncSession, repo: t.Repo, number: int, task_id: int | None,
                         requests: Sequence[PaymentRequest], now: datetime, *,
                         state: t.PaymentOpState = t.PaymentOpState.PENDING) -> list[int]:
    """Write the payment requests of a decision as operations (pending unless `state` says
    otherwise); a request already queued is not queued again. Returns the new rows' ids."""
    return await insert_ops(session, request_rows(repo, number, task_id, requests, now,
                                                  state=state))


def request_rows(repo: t.Repo, number: int, task_id: int | None,
                 requests: Sequence[PaymentRequest], now: datetime, *,
                 state: t.PaymentOpState = t.PaymentOpState.PENDING) -> list[dict[str, Any]]:
    """The payment operations of a decision's requests, as rows (`queue_requests`)."""
    rows = []
    for request in requests:
        kind = PaymentKind(request.kind)
        ref: Any = request.ref
        amount = getattr(ref, "amount", None)
        pledge = ref if kind in (PaymentKind.CHECKOUT, PaymentKind.REFUND) else None
        payout = ref if kind == PaymentKind.TRANSFER else None
        rows.append(op_values(
            kind, op_key(kind, forge=repo.forge, request=request), now, state=state,
            task_id=task_id, pledge_id=pledge.id if pledge else None,
            payout_id=payout.id if payout else None, repo_id=repo.id, number=number,
            comment_id=request.comment_id or (pledge.comment_id if pledge else None),
            forge=repo.forge, login=request.login or (payout.developer if payout else None),
            amount_minor=amount.minor if amount else None,
            currency=amount.currency if amount else None))
    return rows


async def ops_for(session: AsyncSession, **where: Any) -> list[t.PaymentOp]:
    """The operations whose columns equal `where` (e.g. `kind="refund", pledge_id=7`)."""
    stmt = select(t.PaymentOp).order_by(col(t.PaymentOp.id))
    for name, value in where.items():
        stmt = stmt.where(getattr(t.PaymentOp, name) == value)
    return list((await session.exec(stmt)).all())


async def payout_account(session: AsyncSession, forge: str,
                         login: str) -> t.PayoutAccount | None:
    """The payout account of `login` on `forge` (logins compared without case), if any."""
    return (await session.exec(select(t.PayoutAccount).where(
        t.PayoutAccount.forge == forge,
        func.lower(t.PayoutAccount.login) == login.lower()))).first()


async def release_waiting_transfers(session: AsyncSession, forge: str, login: str,
                                    now: datetime) -> int:
    """The developer's account is ready: their transfers waiting for it are due now."""
    waiting = [op for op in await ops_for(session, kind=PaymentKind.TRANSFER.value,
                                          state=OpState.WAITING, forge=forge)
               if (op.login or "").lower() == login.lower()]
    for op in waiting:
        op.state, op.next_attempt_at = OpState.PENDING, now
    return len(waiting)
